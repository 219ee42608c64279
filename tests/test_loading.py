"""twinlm.loading: where a model lives (folder, run, checkpoint, hf:ORG/NAME), what load() returns, the two checks.

The Hugging Face hub is always a fake here: nothing touches the network.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from twinlm import checkpoint as ckpt
from twinlm import loading
from twinlm.config import ModelConfig
from twinlm.errors import CheckpointError, ConfigError
from twinlm.heads import TaskModel
from twinlm.loading import check_vocab, fit_weights, load, load_pretrained, load_task_model, resolve, resolve_hf_path
from twinlm.model import LanguageModel
from twinlm.tokenizer import train_tokenizer

TEXT = "the cat sat on the mat\nthe dog ran in the fog\n"


class NoNetwork:
    """The hub every test gets unless it installs its own: any call fails the test."""

    def snapshot_download(self, *args, **kwargs):
        raise AssertionError(f"the test tried the Hugging Face hub: {args} {kwargs}")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    monkeypatch.setattr(loading, "_hub", lambda: NoNetwork())
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    corpus = tmp_path_factory.mktemp("tok") / "c.txt"
    corpus.write_text(TEXT)
    return train_tokenizer([corpus], kind="char", vocab_size=0)


def tiny_lm(vocab: int, seed: int = 0, **kw) -> LanguageModel:
    torch.manual_seed(seed)
    return LanguageModel(ModelConfig(vocab_size=vocab, n_layers=1, d_model=16, n_heads=2, d_ff=32,
                                     max_positions=32, **kw))


def save(folder: Path, model, tok, config: ModelConfig | None = None) -> Path:
    return ckpt.save_model(folder, model_state=model.state_dict(), config=config or model.config, tokenizer=tok)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tok) -> Path:
    return save(tmp_path_factory.mktemp("m") / "model", tiny_lm(tok.vocab_size), tok)


def corrupt(folder: Path) -> None:
    """Flip one byte of the weights: same size, wrong hash."""
    path = folder / ckpt.MODEL_FILE
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------------------------------------------ resolve()


def test_resolve_a_model_folder_is_itself(model_dir):
    assert resolve(model_dir) == model_dir
    assert resolve(str(model_dir)) == model_dir


def test_resolve_a_run_prefers_best(tmp_path, tok):
    lm = tiny_lm(tok.vocab_size)
    save(tmp_path / "run" / "checkpoint-0000010", lm, tok)
    save(tmp_path / "run" / "checkpoint-0000020", lm, tok)
    assert resolve(tmp_path / "run") == tmp_path / "run" / "checkpoint-0000020"
    save(tmp_path / "run" / "best", lm, tok)
    assert resolve(tmp_path / "run") == tmp_path / "run" / "best"


def test_resolve_skips_a_corrupted_newer_checkpoint(tmp_path, tok):
    lm = tiny_lm(tok.vocab_size)
    for step in (5, 10, 20):
        save(tmp_path / f"checkpoint-{step:07d}", lm, tok)
    corrupt(tmp_path / "checkpoint-0000020")
    with pytest.warns(UserWarning, match="skipping checkpoint .*checkpoint-0000020"):
        assert resolve(tmp_path) == tmp_path / "checkpoint-0000010"


def test_resolve_skips_an_interrupted_checkpoint(tmp_path, tok):
    lm = tiny_lm(tok.vocab_size)
    save(tmp_path / "checkpoint-0000001", lm, tok)
    save(tmp_path / "checkpoint-0000002", lm, tok)
    (tmp_path / "checkpoint-0000002" / ckpt.MANIFEST).unlink()  # killed before the manifest was written
    with pytest.warns(UserWarning, match="incomplete checkpoint"):
        assert resolve(tmp_path) == tmp_path / "checkpoint-0000001"


def test_resolve_errors(tmp_path, tok):
    with pytest.raises(CheckpointError, match="no such model folder; pass the --out folder"):
        resolve(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json, no best/ and no complete checkpoint"):
        resolve(tmp_path / "empty")
    save(tmp_path / "broken" / "checkpoint-0000003", tiny_lm(tok.vocab_size), tok)
    corrupt(tmp_path / "broken" / "checkpoint-0000003")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CheckpointError, match="no complete checkpoint"):
            resolve(tmp_path / "broken")


# --------------------------------------------------------------------------------------------------------- load()


def test_load_a_language_model(model_dir, tok):
    loaded = load(model_dir)
    assert type(loaded.model) is LanguageModel and loaded.lm is loaded.model
    assert not loaded.model.training
    assert loaded.config == ModelConfig.load(model_dir)
    assert loaded.tokenizer.vocab_size == tok.vocab_size
    assert loaded.info["format"] == "twinlm" and loaded.info["task"] is None
    assert loaded.info["folder"] == str(model_dir) and loaded.info["source"] == str(model_dir)
    saved = ckpt.load_model_state(model_dir)
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name


def test_load_a_run_reports_where_it_found_the_model(tmp_path, tok):
    save(tmp_path / "run" / "best", tiny_lm(tok.vocab_size), tok)
    loaded = load(tmp_path / "run")
    assert loaded.info["source"] == str(tmp_path / "run")
    assert loaded.info["folder"] == str(tmp_path / "run" / "best")


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory, tok) -> Path:
    lm = tiny_lm(tok.vocab_size)
    model = TaskModel(lm, "classify", 3, "multi_label")
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([0.1, 0.2, 0.3]))
    config = lm.config.replace(extra={"task": {"task": "classify", "labels": ["a", "b", "c"],
                                               "problem": "multi_label"}})
    return ckpt.save_model(tmp_path_factory.mktemp("t") / "task", model_state=model.state_dict(), config=config,
                           tokenizer=tok)


def test_load_a_fine_tuned_folder_gives_a_task_model(task_dir):
    loaded = load(task_dir)
    assert isinstance(loaded.model, TaskModel)
    assert loaded.model.task == "classify" and loaded.model.problem == "multi_label"
    assert loaded.model.classifier.out_features == 3
    assert torch.equal(loaded.model.classifier.bias, torch.tensor([0.1, 0.2, 0.3]))
    assert isinstance(loaded.lm, LanguageModel) and loaded.lm is loaded.model.lm
    assert loaded.info["task"]["labels"] == ["a", "b", "c"]
    assert not loaded.model.training
    assert load(task_dir, task="classify").model.task == "classify"


def test_task_mismatch_errors(task_dir, model_dir):
    with pytest.raises(ConfigError, match="fine-tuned for --task classify, not --task ner"):
        load(task_dir, task="ner")
    with pytest.raises(CheckpointError, match="without a task head; fine-tune it first.*--task qa"):
        load(model_dir, task="qa")
    with pytest.raises(CheckpointError, match="fine-tuned for --task classify; use it with"):
        load_pretrained(task_dir)
    with pytest.raises(CheckpointError, match="without a task head"):
        load_task_model(model_dir)
    model, tokenizer = load_task_model(task_dir, "classify")
    assert isinstance(model, TaskModel) and tokenizer is not None


def test_load_pretrained_returns_the_lm_and_tokenizer(model_dir, tok):
    model, tokenizer = load_pretrained(model_dir)
    assert isinstance(model, LanguageModel) and tokenizer.vocab_size == tok.vocab_size


def test_weights_from_another_config_are_refused_naming_the_tensor(tmp_path, tok):
    lm = tiny_lm(tok.vocab_size)
    bigger = lm.config.replace(d_ff=48)
    folder = ckpt.save_model(tmp_path / "m", model_state=lm.state_dict(), config=bigger, tokenizer=tok)
    with pytest.raises(CheckpointError, match=r"tensor 'backbone\.blocks\.0\.ffn\.up\.weight' has shape \(32, 16\), "
                                              r"the model needs \(48, 16\) \(and 2 more\)"):
        load(folder)


def test_a_tokenizer_that_does_not_fit_is_refused(tmp_path, tok):
    folder = save(tmp_path / "m", tiny_lm(tok.vocab_size + 5), tok)
    with pytest.raises(CheckpointError, match=f"tokenizer has {tok.vocab_size} tokens but the model's vocab_size "
                                              f"\\(embedding rows\\) is {tok.vocab_size + 5}"):
        load(folder)


def test_missing_tokenizer_is_an_error_or_a_note(tmp_path, tok):
    folder = save(tmp_path / "m", tiny_lm(tok.vocab_size), None)
    with pytest.raises(CheckpointError, match="no tokenizer here"):
        load(folder)
    loaded = load(folder, tokenizer_required=False)
    assert loaded.tokenizer is None
    assert len(loaded.info["notes"]) == 1 and "no usable tokenizer" in loaded.info["notes"][0]


# ---------------------------------------------------------------------------------------------------- fit_weights


@pytest.fixture
def lm() -> LanguageModel:
    return tiny_lm(20)


def one_line_error(model, state) -> str:
    with pytest.raises(CheckpointError) as exc:
        fit_weights(model, state, "somewhere")
    message = str(exc.value)
    assert "\n" not in message and message.startswith("somewhere: weights do not fit the model's config: ")
    return message


def test_fit_weights_loads_a_matching_state(lm):
    other = tiny_lm(20, seed=1)
    fit_weights(lm, other.state_dict(), "x")
    for name, tensor in lm.state_dict().items():
        assert torch.equal(tensor, other.state_dict()[name]), name


def test_fit_weights_names_the_first_missing_tensor(lm):
    state = lm.state_dict()
    names = list(state)
    del state[names[1]], state[names[4]]
    assert f"tensor '{names[1]}' is missing (and 1 more)" in one_line_error(lm, state)
    state = lm.state_dict()
    del state[names[2]]
    message = one_line_error(lm, state)
    assert f"tensor '{names[2]}' is missing;" in message and "more" not in message


def test_fit_weights_names_the_first_unexpected_tensor(lm):
    state = {**lm.state_dict(), "head.decoder.weight": torch.zeros(20, 16)}
    message = one_line_error(lm, state)
    assert "tensor 'head.decoder.weight' is not part of this model;" in message


def test_fit_weights_names_the_first_mis_shaped_tensor(lm):
    state = lm.state_dict()
    state["backbone.tok_emb.weight"] = torch.zeros(21, 16)
    message = one_line_error(lm, state)
    assert "tensor 'backbone.tok_emb.weight' has shape (21, 16), the model needs (20, 16);" in message


def test_fit_weights_reports_missing_before_unexpected_and_leaves_the_model_alone(lm):
    before = {k: v.clone() for k, v in lm.state_dict().items()}
    state = {k: torch.zeros_like(v) for k, v in lm.state_dict().items()}
    state.pop("head.bias")
    state["extra.weight"] = torch.zeros(1)
    assert "tensor 'head.bias' is missing;" in one_line_error(lm, state)
    for name, tensor in lm.state_dict().items():
        assert torch.equal(tensor, before[name]), name  # nothing was half-loaded


# ----------------------------------------------------------------------------------------------------- check_vocab


def fake_tok(n: int, mask_id: int) -> SimpleNamespace:
    return SimpleNamespace(vocab_size=n, mask_id=mask_id)


def test_check_vocab():
    check_vocab(fake_tok(100, 3), 100, "f")
    check_vocab(fake_tok(101, 100), 100, "f")  # twinlm's appended [MASK] after a GPT-2 vocabulary
    with pytest.raises(CheckpointError, match="f: tokenizer has 101 tokens but the model's vocab_size"):
        check_vocab(fake_tok(101, 3), 100, "f")  # one surplus id that is not the mask
    with pytest.raises(CheckpointError, match="has 99 tokens .* is 100"):
        check_vocab(fake_tok(99, 3), 100, "f")
    with pytest.raises(CheckpointError, match="has 102 tokens"):
        check_vocab(fake_tok(102, 100), 100, "f")


# ----------------------------------------------------------------------------------------------------- hf:ORG/NAME


class FakeHub:
    """snapshot_download that serves ``cached`` from the 'cache' and ``remote`` over the 'network'."""

    def __init__(self, cached: Path | None = None, remote: Path | Exception | None = None) -> None:
        self.cached, self.remote, self.calls = cached, remote, []

    def snapshot_download(self, repo_id, local_files_only=False, cache_dir=None, allow_patterns=None):
        self.calls.append({"repo_id": repo_id, "local_files_only": local_files_only, "cache_dir": cache_dir,
                           "allow_patterns": allow_patterns})
        if local_files_only:
            if self.cached is None:
                raise FileNotFoundError(f"{repo_id} is not in the cache")
            return str(self.cached)
        if isinstance(self.remote, Exception):
            raise self.remote
        if self.remote is None:
            raise AssertionError("downloaded although the model was cached or offline")
        return str(self.remote)


def use_hub(monkeypatch, hub) -> None:
    monkeypatch.setattr(loading, "_hub", lambda: hub)


def test_hf_ref_from_the_cache_does_not_download(monkeypatch, model_dir):
    hub = FakeHub(cached=model_dir)
    use_hub(monkeypatch, hub)
    assert resolve_hf_path("hf:org/name") == model_dir
    assert len(hub.calls) == 1 and hub.calls[0]["local_files_only"] is True
    assert hub.calls[0]["repo_id"] == "org/name"
    assert all(not p.endswith((".bin", ".pt", ".pth", ".ckpt")) for p in hub.calls[0]["allow_patterns"])
    assert "*.safetensors" in hub.calls[0]["allow_patterns"]


def test_hf_ref_downloads_when_online(monkeypatch, model_dir):
    hub = FakeHub(cached=None, remote=model_dir)
    use_hub(monkeypatch, hub)
    assert resolve_hf_path("hf:org/name/", cache_dir="/tmp/c") == model_dir
    assert [c["local_files_only"] for c in hub.calls] == [True, False]
    assert all(c["repo_id"] == "org/name" and c["cache_dir"] == "/tmp/c" for c in hub.calls)


@pytest.mark.parametrize("value", ["0", "", "false"])
def test_hf_hub_offline_unset_values_still_download(monkeypatch, model_dir, value):
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    use_hub(monkeypatch, FakeHub(cached=None, remote=model_dir))
    assert resolve_hf_path("hf:org/name") == model_dir


@pytest.mark.parametrize("value", ["no", "off", "FALSE"])
def test_hf_hub_offline_false_spellings_of_the_hub_still_download(monkeypatch, model_dir, value):
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    use_hub(monkeypatch, FakeHub(cached=None, remote=model_dir))
    assert resolve_hf_path("hf:org/name") == model_dir


@pytest.mark.parametrize("value", ["1", "ON", "yes", "true"])
def test_hf_ref_offline_says_so_and_what_to_pass(monkeypatch, value):
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    hub = FakeHub(cached=None, remote=None)  # remote None: a download attempt fails the test
    use_hub(monkeypatch, hub)
    with pytest.raises(CheckpointError) as exc:
        resolve_hf_path("hf:org/name")
    message = str(exc.value)
    assert message.startswith("hf:org/name: not in the local Hugging Face cache and HF_HUB_OFFLINE is set")
    assert "huggingface-cli download org/name" in message and "pass its folder" in message
    assert "\n" not in message
    assert len(hub.calls) == 1  # only the cache was asked


def test_hf_ref_download_failure_is_one_line(monkeypatch):
    use_hub(monkeypatch, FakeHub(cached=None, remote=OSError("Connection refused\n  at socket.connect\n  ...")))
    with pytest.raises(CheckpointError) as exc:
        resolve_hf_path("hf:org/name")
    message = str(exc.value)
    assert "\n" not in message
    assert "the download failed (OSError: Connection refused)" in message
    assert "huggingface-cli download org/name" in message and "pass its folder" in message
    assert exc.value.__cause__ is None and exc.value.__suppress_context__


def test_hf_ref_without_huggingface_hub(monkeypatch):
    monkeypatch.setattr(loading, "_hub", lambda: None)
    with pytest.raises(CheckpointError, match="huggingface_hub is not installed.*pass the model's folder"):
        resolve_hf_path("hf:org/name")


def test_hf_ref_without_a_name():
    with pytest.raises(CheckpointError, match="say which model"):
        resolve_hf_path("hf:")


def test_a_plain_path_never_asks_the_hub(tmp_path):
    assert resolve_hf_path(tmp_path) == tmp_path  # the autouse NoNetwork hub would fail the test


def test_load_through_an_hf_ref(monkeypatch, model_dir):
    use_hub(monkeypatch, FakeHub(cached=model_dir))
    loaded = load("hf:org/name")
    assert isinstance(loaded.model, LanguageModel)
    assert loaded.info["source"] == "hf:org/name" and loaded.info["folder"] == str(model_dir)
