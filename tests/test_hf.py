"""Hugging Face interoperability: parity with transformers for each family, export round trips, bad input."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from helpers import cached_logits
from twinlm.errors import CheckpointError, ConfigError
from twinlm.hf import SUPPORTED_FAMILIES, config_from_hf, export_hf, import_hf_state
from twinlm.hf.names import entries, table
from twinlm.loading import load_hf, resolve_hf_path
from twinlm.model import LanguageModel
from twinlm.pipelines import load_pretrained

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

TOL = 1e-4  # every parity check: max abs difference of logits (or hidden states) against transformers
VOCAB = 101


def _tiny_hf(family: str, **overrides):
    """A tiny random Hugging Face model of ``family`` (fixed seed, 2 layers) with an LM head."""
    torch.manual_seed(0)
    T = transformers
    if family == "bert":
        cfg = T.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=64, type_vocab_size=2, **overrides)
        model = T.BertForMaskedLM(cfg)
    elif family == "roberta":
        cfg = T.RobertaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=64, max_position_embeddings=66, pad_token_id=1, type_vocab_size=1,
                              **overrides)
        model = T.RobertaForMaskedLM(cfg)
    elif family == "distilbert":
        cfg = T.DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                 max_position_embeddings=64, **overrides)
        model = T.DistilBertForMaskedLM(cfg)
    elif family == "gpt2":
        cfg = T.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, **overrides)
        model = T.GPT2LMHeadModel(cfg)
    elif family == "llama":
        cfg = T.LlamaConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, intermediate_size=96, max_position_embeddings=64,
                            rope_theta=10000.0, **overrides)
        model = T.LlamaForCausalLM(cfg)
    else:
        raise ValueError(family)
    # Random init leaves biases and norms at 0/1; perturb every parameter so each mapping is exercised.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def _batch(family: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A right-padded batch of two rows (lengths 12 and 7) that avoids the pad id in real positions."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (2, 12), generator=gen)
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 7:] = 0
    pad = 1 if family == "roberta" else 0
    ids[1, 7:] = pad
    return ids, mask


def _hf_logits(model, ids, mask) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def _diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    keep = mask.bool()
    return float((a[keep] - b[keep]).abs().max())


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory) -> dict[str, tuple[Path, object]]:
    """Each family saved once as a Hugging Face folder, with the live transformers model."""
    out = {}
    for family in SUPPORTED_FAMILIES:
        folder = tmp_path_factory.mktemp(family)
        model = _tiny_hf(family)
        model.save_pretrained(folder)
        out[family] = (folder, model)
    return out


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_parity_logits(hf_folders, family):
    folder, hf_model = hf_folders[family]
    twin, info = load_hf(folder)
    assert info["family"] == family and not twin.training
    ids, mask = _batch(family)
    with torch.no_grad():
        ours = twin(ids, mask)
    diff = _diff(ours, _hf_logits(hf_model, ids, mask), mask)
    assert diff < TOL, f"{family}: max abs logit diff {diff}"


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_export_round_trip(hf_folders, family, tmp_path):
    folder, hf_model = hf_folders[family]
    twin, _ = load_hf(folder)
    out = export_hf(twin, None, tmp_path / "export", family)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == family and cfg["architectures"]
    auto = transformers.AutoModelForCausalLM if family in ("gpt2", "llama") else transformers.AutoModelForMaskedLM
    reloaded = auto.from_pretrained(out).eval()
    ids, mask = _batch(family)
    diff = _diff(_hf_logits(reloaded, ids, mask), _hf_logits(hf_model, ids, mask), mask)
    assert diff < TOL
    # and back again: the exported folder imports to the same twinlm tensors
    again, _ = load_hf(out)
    for name, tensor in twin.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name]), name


# Tiny Hugging Face configs (as config.json dicts) of each family, for checks that need no transformers model.
_TINY_CONFIGS = {
    "bert": dict(vocab_size=11, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16,
                 max_position_embeddings=20),
    "roberta": dict(vocab_size=11, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16,
                    max_position_embeddings=20, pad_token_id=1, type_vocab_size=1),
    "distilbert": dict(vocab_size=11, dim=8, n_layers=2, n_heads=2, hidden_dim=16, max_position_embeddings=20),
    "gpt2": dict(vocab_size=11, n_embd=8, n_layer=2, n_head=2, n_positions=20),
    "llama": dict(vocab_size=11, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                  intermediate_size=12, max_position_embeddings=20),
}
# (family, has an LM head, tied decoder, config overrides): every layout an import can produce.
_LAYOUTS = [(f, True, tied, {}) for f in SUPPORTED_FAMILIES for tied in (True, False)]
_LAYOUTS += [(f, False, True, {}) for f in ("bert", "roberta", "distilbert")]
_LAYOUTS += [("bert", True, True, {"type_vocab_size": 0}), ("llama", True, False, {"attention_bias": True,
                                                                                    "mlp_bias": True})]


@pytest.mark.parametrize("family, has_head, tied, overrides", _LAYOUTS)
def test_name_table_maps_every_tensor_exactly_once(family, has_head, tied, overrides):
    c = {"model_type": family, **_TINY_CONFIGS[family], **overrides}
    config = config_from_hf(c, has_head=has_head, tied=tied)
    with torch.device("meta"):
        names = list(LanguageModel(config).state_dict())
    rows = entries(family, config, table(family).prefix, has_head)
    twin = [row.twin for row in rows]
    assert len(twin) == len(set(twin)), f"a twinlm tensor is mapped twice: {sorted(twin)}"
    # without an MLM head in the file, only the head bias is left out: import fills it with zeros
    unmapped = {"head.bias"} if not has_head and family not in ("gpt2", "llama") else set()
    assert set(twin) == set(names) - unmapped
    hf = [name for row in rows for name in row.hf]
    assert len(hf) == len(set(hf)), "a Hugging Face tensor feeds two twinlm tensors"
    assert all(row.op in ("copy", "cat", "t") and len(row.hf) == (3 if row.op == "cat" else 1) for row in rows)


def test_bert_without_prefix_and_without_head(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=64)
    bare = transformers.BertModel(cfg).eval()
    bare.save_pretrained(tmp_path)
    twin, info = load_hf(tmp_path)
    assert info["lm_head"] == "missing" and info["prefix"] == ""
    assert set(info["extra_tensors"]) == {"pooler.dense.weight", "pooler.dense.bias"}
    assert any("no MLM head" in n for n in info["notes"])
    ids, mask = _batch("bert")
    with torch.no_grad():
        ours = twin.hidden(ids, mask)
        theirs = bare(input_ids=ids, attention_mask=mask).last_hidden_state
    assert _diff(ours, theirs, mask) < TOL


def test_bare_bert_saved_untied_imports(tmp_path):
    # Regression: without an MLM head there is no decoder to untie, so tie_word_embeddings=False must not
    # make the import expect 'head.decoder.weight'.
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=64, tie_word_embeddings=False)
    bare = transformers.BertModel(cfg).eval()
    bare.save_pretrained(tmp_path)
    twin, info = load_hf(tmp_path)
    assert info["lm_head"] == "missing" and info["tied"]
    ids, mask = _batch("bert")
    with torch.no_grad():
        ours = twin.hidden(ids, mask)
        theirs = bare(input_ids=ids, attention_mask=mask).last_hidden_state
    assert _diff(ours, theirs, mask) < TOL


def test_classifier_head_tensors_are_extras(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=64, num_labels=3)
    transformers.BertForSequenceClassification(cfg).save_pretrained(tmp_path)
    _, _, info = import_hf_state(tmp_path)
    assert info["prefix"] == "bert."
    assert info["extra_tensors"]["classifier.weight"].shape == (3, 32)
    assert "bert.pooler.dense.weight" in info["extra_tensors"]


def _greedy(model: LanguageModel, ids: torch.Tensor, n: int) -> list[int]:
    """Greedy decoding with the twinlm KV cache (one token per step after the prompt)."""
    out = []
    with torch.no_grad():
        hidden, cache = model.backbone(ids, attention="causal")
        for _ in range(n):
            nxt = int(model.head(hidden[:, -1]).argmax(-1))
            out.append(nxt)
            hidden, cache = model.backbone(torch.tensor([[nxt]]), attention="causal", past=cache)
    return out


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_greedy_generation_matches_transformers(hf_folders, family):
    folder, hf_model = hf_folders[family]
    twin, _ = load_hf(folder)
    prompt = torch.tensor([[5, 17, 42, 8]])
    with torch.no_grad():
        theirs = hf_model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=20,
                                   do_sample=False, pad_token_id=0)[0, 4:].tolist()
    assert _greedy(twin, prompt, 20) == theirs


def test_rotary_cache_equals_full_forward(hf_folders):
    twin, _ = load_hf(hf_folders["llama"][0])
    ids = torch.randint(3, VOCAB, (2, 10), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = twin(ids)
    steps, _ = cached_logits(twin, ids, 4)
    assert (steps - full).abs().max() < 1e-5
    # explicit position ids give the same as the cache offset
    with torch.no_grad():
        _, cache = twin.backbone(ids[:, :9])
        explicit, _ = twin.backbone(ids[:, 9:], past=cache, position_ids=torch.tensor([[9]]))
    assert (twin.head(explicit)[:, 0] - full[:, 9]).abs().max() < 1e-5


def test_minilm_matches_transformers_and_ranks_paraphrase(shared_data):
    folder = shared_data / "checkpoints" / "all-MiniLM-L6-v2"
    if not (folder / "model.safetensors").is_file():
        pytest.skip(f"{folder} has no model.safetensors")
    model, tok = load_pretrained(folder)
    sentences = ["A man is playing a guitar.", "Someone is playing the guitar.",
                 "The central bank raised interest rates by half a percentage point."]
    rows = [tok.encode(s, add_special=True) for s in sentences]
    width = max(map(len, rows))
    ids = torch.tensor([r + [tok.pad_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    bert = transformers.BertModel.from_pretrained(folder).eval()
    with torch.no_grad():
        ours = model.hidden(ids, mask)
        theirs = bert(input_ids=ids, attention_mask=mask).last_hidden_state
        diff = _diff(ours, theirs, mask)
        emb = torch.nn.functional.normalize(model.encode(ids, mask, pooling="mean"), dim=-1)
    assert diff < TOL
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.3, sim


def test_gpt2_tokenizer_folder_loads_with_model(shared_data, tmp_path):
    gpt2_tok = shared_data / "tokenizers" / "gpt2"
    cfg = transformers.GPT2Config(vocab_size=50257, n_embd=16, n_layer=1, n_head=2, n_positions=32)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path)
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes((gpt2_tok / name).read_bytes())
    model, tok = load_pretrained(tmp_path)
    assert model.config.attention == "causal" and tok.decode(tok.encode("Hello world")) == "Hello world"


# --------------------------------------------------------------------------- bad input


def test_folder_without_config(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        load_hf(tmp_path)


def test_unsupported_model_type_lists_supported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(CheckpointError, match="'t5' is not supported.*bert, roberta, distilbert, gpt2, llama"):
        load_hf(tmp_path)


def test_truncated_safetensors_header(hf_folders, tmp_path):
    (tmp_path / "config.json").write_text((hf_folders["bert"][0] / "config.json").read_text())
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", 10_000) + b'{"a": {')
    with pytest.raises(CheckpointError, match="model.safetensors: not a readable safetensors file"):
        load_hf(tmp_path)


class _Evil:
    def __reduce__(self):
        return (print, ("this would have run",))


def test_pickle_bin_only_weights_only(hf_folders, tmp_path):
    folder, hf_model = hf_folders["bert"]
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    torch.save(hf_model.state_dict(), tmp_path / "pytorch_model.bin")
    twin, _ = load_hf(tmp_path)  # a plain state dict passes weights_only loading
    ids, mask = _batch("bert")
    with torch.no_grad():
        assert _diff(twin(ids, mask), _hf_logits(hf_model, ids, mask), mask) < TOL
    torch.save({"x": _Evil()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"pytorch_model.bin: refused.*weights_only=True"):
        load_hf(tmp_path)
    # a pickle renamed to .safetensors is not read as one
    (tmp_path / "pytorch_model.bin").rename(tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_hf(tmp_path)


def _copy_folder(src: Path, dst: Path, state_edit=None, config_edit=None) -> Path:
    from safetensors.torch import load_file, save_file

    dst.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((src / "config.json").read_text())
    if config_edit:
        config_edit(cfg)
    (dst / "config.json").write_text(json.dumps(cfg))
    state = load_file(str(src / "model.safetensors"))
    if state_edit:
        state_edit(state)
    save_file(state, str(dst / "model.safetensors"))
    return dst


def test_missing_unexpected_and_misshapen_tensors_are_named(hf_folders, tmp_path):
    src = hf_folders["gpt2"][0]
    name = "transformer.h.1.mlp.c_fc.weight"
    bad = _copy_folder(src, tmp_path / "missing", state_edit=lambda s: s.pop(name))
    with pytest.raises(CheckpointError, match=f"tensor '{name}' is missing"):
        load_hf(bad)
    bad = _copy_folder(src, tmp_path / "extra", state_edit=lambda s: s.update({"transformer.h.9.foo": torch.ones(2)}))
    with pytest.raises(CheckpointError, match="unexpected tensor 'transformer.h.9.foo'"):
        load_hf(bad)
    bad = _copy_folder(src, tmp_path / "shape", config_edit=lambda c: c.update(n_inner=48))
    with pytest.raises(CheckpointError, match=r"tensor 'transformer.h.0.mlp.c_fc.weight' has shape \(32, 128\)"):
        load_hf(bad)


def test_tokenizer_vocab_must_match_embedding(hf_folders, tmp_path, shared_data):
    bad = _copy_folder(hf_folders["bert"][0], tmp_path / "m")
    (bad / "vocab.txt").write_bytes((shared_data / "tokenizers" / "bert-base-uncased" / "vocab.txt").read_bytes())
    with pytest.raises(CheckpointError, match=r"tokenizer has 30522 tokens but .* \(embedding rows\) is 101"):
        load_pretrained(bad)


def test_hf_ref_offline_says_not_in_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pytest.importorskip("huggingface_hub")
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache.*pass its folder"):
        resolve_hf_path("hf:nobody/nothing", cache_dir=tmp_path)
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache"):
        load_pretrained("hf:nobody/nothing-at-all-here")


def test_export_refuses_what_the_family_cannot_express():
    from twinlm.config import preset

    model = LanguageModel(preset("tiny", vocab_size=50, attention="causal"))
    with torch.no_grad():
        model.head.bias.fill_(0.5)
    with pytest.raises(ConfigError, match="cannot be exported as gpt2: .*activation.*|non-zero LM-head bias"):
        export_hf(model, None, "/nonexistent/never-written", "gpt2")
    with pytest.raises(ConfigError, match="cannot be exported as llama: norm_type='layernorm'"):
        export_hf(model, None, "/nonexistent/never-written", "llama")
    with pytest.raises(ConfigError, match="family 't5' is not supported"):
        export_hf(model, None, "/nonexistent/never-written", "t5")


# --------------------------------------------------------------------------- the convert command


def test_cli_convert_both_ways(hf_folders, tmp_path, shared_data, capsys):
    from twinlm.cli import main

    # a tiny BERT with the real uncased vocabulary, so the tokenizer files travel too
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=64)
    hf_model = transformers.BertForMaskedLM(cfg).eval()
    src = tmp_path / "hf"
    hf_model.save_pretrained(src)
    (src / "vocab.txt").write_bytes((shared_data / "tokenizers" / "bert-base-uncased" / "vocab.txt").read_bytes())
    assert main(["convert", "--from-hf", str(src), "--out", str(tmp_path / "twin")]) == 0
    assert "imported bert" in capsys.readouterr().out
    model, tok = load_pretrained(tmp_path / "twin")  # a plain twinlm model folder now
    assert (tmp_path / "twin" / "manifest.json").is_file() and model.config.head_transform
    assert main(["convert", "--to-hf", str(tmp_path / "twin"), "--out", str(tmp_path / "back")]) == 0
    assert "exported" in capsys.readouterr().out
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "back")
    text = "The quick brown fox jumps over the lazy dog."
    assert hf_tok(text)["input_ids"] == tok.encode(text, add_special=True)
    assert hf_tok.mask_token_id == tok.mask_id == 103
    reloaded = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "back").eval()
    ids = torch.tensor([tok.encode(text, add_special=True)])
    with torch.no_grad():
        assert (reloaded(input_ids=ids).logits - hf_model(input_ids=ids).logits).abs().max() < TOL


def test_cli_convert_errors_are_one_line(tmp_path, capsys):
    from twinlm.cli import main

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "whisper"}))
    assert main(["convert", "--from-hf", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("twinlm: error:") and "bert, roberta" in err and len(err.splitlines()) == 1


def test_sharded_safetensors_index(tmp_path):
    hf_model = _tiny_hf("gpt2")
    hf_model.save_pretrained(tmp_path, max_shard_size="30KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    twin, _ = load_hf(tmp_path)
    ids, mask = _batch("gpt2")
    with torch.no_grad():
        assert _diff(twin(ids, mask), _hf_logits(hf_model, ids, mask), mask) < TOL


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_native_twinlm_model_exports(family, tmp_path):
    from twinlm.config import preset

    options = dict(head_bias=False, attention="causal", activation="gelu_tanh")
    if family == "llama":
        options.update(norm_type="rmsnorm", position="rotary", mlp="swiglu", n_kv_heads=2, bias=False,
                       activation="silu", tie_embeddings=False)
    torch.manual_seed(0)
    model = LanguageModel(preset("tiny", vocab_size=VOCAB, n_layers=1, **options)).eval()
    export_hf(model, None, tmp_path, family)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids, mask = _batch(family)
    with torch.no_grad():
        diff = _diff(model(ids, mask), _hf_logits(hf_model, ids, mask), mask)
    assert diff < TOL


def test_sentencepiece_only_tokenizer_is_a_clear_error(tmp_path):
    from twinlm.tokenizer import load_tokenizer

    (tmp_path / "tokenizer.model").write_bytes(b"\x00")
    with pytest.raises(CheckpointError, match="SentencePiece tokenizer.model.*tokenizer.json"):
        load_tokenizer(tmp_path)


def test_token_classifier_trains_step_for_step_like_transformers(hf_folders):
    """Same weights, head, batch and AdamW, dropout off: five updates leave the same losses and weights.

    Rules the model, the loss (tag on first sub-tokens, -100 elsewhere) and the gradients out when twinlm's and the
    Hugging Face loop's fine-tuning scores differ (benchmarks/finetune_vs_hf.py): what remains is the recipe.
    """
    from twinlm.heads import TaskModel

    folder, _ = hf_folders["bert"]
    lm, _ = load_hf(folder)
    torch.manual_seed(0)
    twin = TaskModel(lm, "ner", 5).eval()
    hf = transformers.BertForTokenClassification.from_pretrained(folder, num_labels=5).eval()
    with torch.no_grad():
        hf.classifier.weight.copy_(twin.classifier.weight)
        hf.classifier.bias.copy_(twin.classifier.bias)
    ids, mask = _batch("bert")
    labels = torch.randint(0, 5, ids.shape, generator=torch.Generator().manual_seed(2))
    labels[:, 0], labels[:, 3], labels[mask == 0] = -100, -100, -100  # [CLS], a later sub-token, padding
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.01) for m in (twin, hf)]
    losses: list[tuple[float, float]] = []
    for _ in range(5):
        pair = (twin(ids, mask, labels=labels)[1],
                hf(input_ids=ids, attention_mask=mask, labels=labels).loss)
        for opt, loss in zip(optimizers, pair, strict=True):
            opt.zero_grad()
            loss.backward()
            opt.step()
        losses.append((pair[0].item(), pair[1].item()))
    assert losses[-1][0] < losses[0][0] - 0.01  # the updates did something
    for mine, theirs in losses:
        assert mine == pytest.approx(theirs, abs=TOL)
    assert _diff(twin.classifier.weight, hf.classifier.weight, torch.ones_like(hf.classifier.weight)) < TOL
