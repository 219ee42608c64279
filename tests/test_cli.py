"""The command line: help with examples, and every user mistake as one clear line without a traceback."""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import types
from pathlib import Path

import pytest

from helpers import prepared_corpus, run_cli
from twinlm import cli_registry
from twinlm.cli import main
from twinlm.cli_registry import Command, build_parser, commands
from twinlm.errors import ConfigError


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return prepared_corpus(tmp_path_factory.mktemp("cli"), kind="bpe", n_chars=30_000)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data) -> dict[str, Path]:
    runs = {}
    for objective in ("mlm", "clm"):
        out = tmp_path_factory.mktemp(objective)
        code = main(["pretrain", "--objective", objective, "--data", str(data), "--out", str(out), "--seq-len", "32",
                     "--batch-size", "4", "--max-steps", "4", "--eval-every", "4", "--no-progress"])
        assert code == 0
        runs[objective] = out
    return runs


def one_line_error(capsys, argv: list[str], *needles: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("twinlm: error:"), err
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def test_every_command_is_listed_and_its_help_shows_its_examples(capsys):
    registered = commands()
    assert {"quickstart", "pretrain", "finetune", "generate", "score"} <= set(registered)
    top = build_parser().format_help()
    for name, command in registered.items():
        assert re.search(rf"^  {re.escape(name)} +\S", top, re.MULTILINE), f"{name} missing from `twinlm --help`"
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert command.help in out
        for example in command.examples:
            assert example in out, f"`twinlm {name} --help` does not show: {example}"


def test_every_example_parses_with_the_real_parser():
    parser = build_parser()
    examples = [(name, ex) for name, c in commands().items() for ex in c.examples]
    examples.append(("quickstart", cli_registry.START_HERE))
    for name, example in examples:
        argv = shlex.split(example, comments=True)
        assert argv[0] == "twinlm", example
        try:
            args = parser.parse_args(argv[1:])
        except SystemExit:
            pytest.fail(f"example does not parse: {example}")
        assert args.command == name, example


def test_commands_reject_missing_or_misnamed_examples():
    def nothing(_: object) -> None:
        return None

    with pytest.raises(ValueError, match="non-empty"):
        Command("x", "x", examples=(), add_arguments=nothing, run=nothing)
    with pytest.raises(ValueError, match="non-empty"):
        Command("x", "x", examples="twinlm x --a", add_arguments=nothing, run=nothing)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="does not start with"):
        Command("x", "x", examples=("twinlm y --a",), add_arguments=nothing, run=nothing)


def _plugin(monkeypatch, *new: Command) -> None:
    """Register a module of commands the way a new cli_*.py module would be."""
    module = types.ModuleType("twinlm.cli_plugin")
    module.COMMANDS = list(new)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "twinlm.cli_plugin", module)
    monkeypatch.setitem(cli_registry.COMMAND_MODULES, "cli_plugin", "plugins")


def test_a_new_module_adds_a_command_with_one_line_errors(monkeypatch, capsys):
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("--times", type=int, required=True)

    def run(args: argparse.Namespace) -> None:
        if args.times < 1:
            raise ConfigError(f"--times must be at least 1, got {args.times}")
        print("hi " * args.times)

    _plugin(monkeypatch, Command("hello", "say hi", examples=("twinlm hello --times 2",),
                                 add_arguments=add_arguments, run=run))
    assert re.search(r"^plugins:\n  hello +say hi$", build_parser().format_help(), re.MULTILINE)
    assert main(["hello", "--times", "2"]) == 0
    assert capsys.readouterr().out.strip() == "hi hi"
    one_line_error(capsys, ["hello", "--times", "0"], "--times must be at least 1")


def test_a_command_name_registered_twice_is_refused(monkeypatch):
    def nothing(_: object) -> None:
        return None

    _plugin(monkeypatch, Command("sample", "again", examples=("twinlm sample --x",), add_arguments=nothing,
                                 run=nothing))
    with pytest.raises(ValueError, match="'sample' is registered twice"):
        build_parser()


def test_fill_mask_and_sample_run_on_trained_models(capsys, trained):
    assert main(["fill-mask", "--model", str(trained["mlm"]), "--json", "--top-k", "3", "To be or not to [MASK]."]) == 0
    preds = json.loads(capsys.readouterr().out)
    assert len(preds) == 1 and len(preds[0]) == 3
    scores = [p["score"] for p in preds[0]]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0
    assert main(["sample", "--model", str(trained["clm"]), "--prompt", "ROMEO:", "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out.startswith("ROMEO:")


def test_unknown_preset(capsys, data, tmp_path):
    one_line_error(capsys, ["pretrain", "--objective", "mlm", "--preset", "huge", "--data", str(data),
                            "--out", str(tmp_path)], "huge", "tiny")


def test_unknown_objective(capsys, data, tmp_path):
    one_line_error(capsys, ["pretrain", "--objective", "plm", "--data", str(data), "--out", str(tmp_path)],
                   "plm", "mlm, clm, hybrid")


def test_seq_len_above_max_positions(capsys, data, tmp_path):
    one_line_error(capsys, ["pretrain", "--objective", "clm", "--data", str(data), "--out", str(tmp_path),
                            "--seq-len", "4096"], "max_positions=256", "--seq-len")


def test_missing_corpus_file(capsys, tmp_path):
    one_line_error(capsys, ["prepare", str(tmp_path / "nope.txt"), "--tokenizer", str(tmp_path), "--out",
                            str(tmp_path / "d")])


def test_empty_corpus_file(capsys, tmp_path, data):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    one_line_error(capsys, ["prepare", str(empty), "--tokenizer", str(data), "--out", str(tmp_path / "d")],
                   "empty.txt", "empty")


def test_non_utf8_corpus_names_file_and_offset(capsys, tmp_path, data):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"good line\nbad \xe9 line\n")
    one_line_error(capsys, ["prepare", str(bad), "--tokenizer", str(data), "--out", str(tmp_path / "d")],
                   "latin1.txt", "byte offset 14")
    with pytest.warns(UserWarning, match="byte offset 14"):
        assert main(["prepare", str(bad), "--tokenizer", str(data), "--out", str(tmp_path / "d"),
                     "--skip-bad-lines", "--val-fraction", "0"]) == 0


def test_jsonl_line_without_text_field(capsys, tmp_path, data):
    f = tmp_path / "docs.jsonl"
    f.write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    one_line_error(capsys, ["prepare", str(f), "--tokenizer", str(data), "--out", str(tmp_path / "d")],
                   "docs.jsonl:2", "--text-field")


def test_prepare_exclude_reports_where(capsys, tmp_path, data):
    corpus = tmp_path / "c.txt"
    corpus.write_text("first review here\n\nthe dev review\n\nthird one\n")
    dev = tmp_path / "dev.txt"
    dev.write_text("the  dev review\n")
    assert main(["prepare", str(corpus), "--tokenizer", str(data), "--out", str(tmp_path / "d"), "--val-fraction",
                 "0", "--exclude", str(dev), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert f"1 document left out: their text is in {dev}" in out and "2 documents" in out
    assert main(["tokenizer", "train", str(corpus), "--kind", "char", "--out", str(tmp_path / "t"),
                 "--exclude", str(dev)]) == 0
    assert f"1 document left out: their text is in {dev}" in capsys.readouterr().out
    one_line_error(capsys, ["prepare", str(corpus), "--tokenizer", str(data), "--out", str(tmp_path / "e"),
                            "--exclude", str(tmp_path / "gone.tsv")], "gone.tsv", "--exclude")


def test_data_folder_that_is_not_prepared(capsys, tmp_path):
    one_line_error(capsys, ["pretrain", "--objective", "mlm", "--data", str(tmp_path), "--out", str(tmp_path / "o")],
                   "twinlm prepare")


def test_vocabulary_checkpoint_mismatch(capsys, tmp_path, trained):
    import shutil

    from twinlm.loading import resolve
    from twinlm.tokenizer import train_tokenizer

    folder = tmp_path / "model"
    shutil.copytree(resolve(trained["mlm"]), folder)
    (folder / "manifest.json").unlink()
    (folder / "trainer_state.json").unlink()
    (folder / "optimizer.safetensors").unlink()
    corpus = tmp_path / "c.txt"
    corpus.write_text("abc def\n\nghi jkl\n")
    train_tokenizer([corpus], kind="char", vocab_size=10).save(folder)
    one_line_error(capsys, ["fill-mask", "--model", str(folder), "a [MASK] b"], "vocab_size", "tokenizer")


def test_corrupted_checkpoint_falls_back_and_truncated_single_one_is_an_error(capsys, tmp_path, data):
    out = tmp_path / "run"
    args = ["pretrain", "--objective", "clm", "--data", str(data), "--out", str(out), "--seq-len", "32",
            "--batch-size", "2", "--max-steps", "4", "--save-every", "2", "--no-progress", "--eval-every", "100"]
    assert main(args) == 0
    newest = out / "checkpoint-0000004" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])  # truncate the newest
    with pytest.warns(UserWarning, match="checkpoint-0000004"):
        assert main(["sample", "--model", str(out), "--prompt", "A", "--max-new-tokens", "2"]) == 0
    capsys.readouterr()
    one_line_error(capsys, ["sample", "--model", str(out / "checkpoint-0000004"), "--prompt", "A"],
                   "model.safetensors", "truncated")


def test_each_paradigm_refuses_the_other_ones_job(capsys, trained):
    one_line_error(capsys, ["fill-mask", "--model", str(trained["clm"]), "a [MASK] b"], "a causal model", "sample")
    one_line_error(capsys, ["sample", "--model", str(trained["mlm"]), "--prompt", "A"], "a masked model", "fill-mask")


def test_fill_mask_without_mask_and_causal_prompt_too_long(capsys, trained):
    one_line_error(capsys, ["fill-mask", "--model", str(trained["mlm"]), "no mask here"], "[MASK]")
    one_line_error(capsys, ["sample", "--model", str(trained["clm"]), "--prompt", "A", "--max-new-tokens", "5000"],
                   "max_positions")


def test_console_script_runs_as_a_process(tmp_path):
    result = run_cli("pretrain", "--objective", "mlm", "--preset", "nope", "--data", str(tmp_path), "--out",
                     str(tmp_path / "o"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("twinlm: error:")
    assert run_cli("--help").stdout.count("quickstart") >= 1


def test_pretrain_init_starts_from_the_weights_with_the_new_paradigm(capsys, tmp_path, data, trained):
    import torch

    from twinlm.loading import load

    out = tmp_path / "more"
    # An MLM goes on as a CLM: the weights carry over, the attention and objective follow --objective.
    assert main(["pretrain", "--objective", "clm", "--init", str(trained["mlm"]), "--data", str(data), "--out",
                 str(out), "--seq-len", "32", "--batch-size", "4", "--max-steps", "2", "--lr", "1e-12",
                 "--eval-every", "100", "--no-progress"]) == 0
    before, after = load(trained["mlm"]), load(out)
    assert (after.config.attention, after.config.objective) == ("causal", "clm")
    assert after.config.n_layers == before.config.n_layers and after.config.position == before.config.position
    # lr 1e-12: two Adam steps move a weight by ~2e-12, so the weights are the init's (loaded, not re-drawn).
    for name, tensor in before.model.state_dict().items():
        assert torch.allclose(tensor, after.model.state_dict()[name], rtol=0, atol=1e-9), name
    run = json.loads((out / "run.json").read_text())
    assert run["init"] == str(trained["mlm"]) and run["preset"] is None


def test_pretrain_init_refuses_an_architecture_flag_and_a_foreign_tokenizer(capsys, tmp_path, data, trained):
    one_line_error(capsys, ["pretrain", "--objective", "mlm", "--init", str(trained["mlm"]), "--data", str(data),
                            "--out", str(tmp_path / "a"), "--position", "rotary"], "--position rotary", "drop")
    other = prepared_corpus(tmp_path / "other", kind="char", n_chars=5_000)
    one_line_error(capsys, ["pretrain", "--objective", "mlm", "--init", str(trained["mlm"]), "--data", str(other),
                            "--out", str(tmp_path / "b")], "--init", "tokenizer differs")
