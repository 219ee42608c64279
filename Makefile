# Every target does its own set-up on a fresh machine: .venv, the pinned CPU torch wheel, then twinlm[dev].
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.twinlm-installed

.PHONY: demo test test-dist lint bench clean setup

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The pinned wheel is the local CPU build: a bare torch requirement could pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/twinlm quickstart --out runs/quickstart

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest -m "not dist"

# The multi-process tests alone: FSDP/DDP equivalence, resharding, a killed sharded save, two-node launch.
test-dist: $(STAMP)
	$(PY) -m pytest -m dist

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
