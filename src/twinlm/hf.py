"""Hugging Face interoperability: import and export BERT, RoBERTa, DistilBERT, GPT-2 and Llama-style folders.

Every family is one explicit name map (``_entries``) between twinlm's state dict and the Hugging Face one, used in
both directions. Import checks every tensor's shape and refuses missing or unexpected tensors by name; tensors of
task heads (pooler, classifiers, QA) are handed back in ``info["extra_tensors"]`` for fine-tuning to pick up.
Weights are read from safetensors (single or sharded); a ``pytorch_model.bin`` is read only through
``torch.load(weights_only=True)``, so nothing is ever unpickled into arbitrary objects.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .config import ModelConfig
from .errors import CheckpointError, ConfigError
from .model import LanguageModel

SUPPORTED_FAMILIES = ("bert", "roberta", "distilbert", "gpt2", "llama")

# Hugging Face activation names -> twinlm's; "gelu" is the exact erf form in both.
_ACT_IN = {
    "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu",
    "silu": "silu", "swish": "silu",
}
# gelu_pytorch_tanh is F.gelu(approximate="tanh"), bit-identical to twinlm's gelu_tanh.
_ACT_OUT = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu", "silu": "silu"}

# Buffers some Hugging Face versions saved alongside the weights; they carry no learned values.
_IGNORED = re.compile(r"(^|\.)(position_ids|attn\.bias|attn\.masked_bias|rotary_emb\.inv_freq)$")

# Task-head tensors that are not part of the backbone or LM head, per family (prefixes after any model prefix).
_EXTRA_HEADS = {
    "bert": ("pooler.", "bert.pooler.", "classifier.", "qa_outputs.", "cls.seq_relationship."),
    "roberta": ("pooler.", "roberta.pooler.", "classifier.", "qa_outputs."),
    "distilbert": ("pre_classifier.", "classifier.", "qa_outputs."),
    "gpt2": ("score.", "qa_outputs."),
    "llama": ("score.", "qa_outputs."),
}
# The prefix of the base model's tensors inside a *For* (task) model.
_MODEL_PREFIX = {"bert": "bert.", "roberta": "roberta.", "distilbert": "distilbert.", "gpt2": "transformer.",
                 "llama": "model."}


@dataclass(frozen=True)
class Entry:
    """One twinlm tensor and the Hugging Face tensor(s) it is made of.

    op: 'copy'; 'cat' (twinlm's fused QKV is the HF q, k, v concatenated along dim 0); 't' (GPT-2's Conv1D
    stores (in, out), the transpose of nn.Linear's (out, in)).
    """

    twin: str
    hf: tuple[str, ...]
    op: str = "copy"


# --------------------------------------------------------------------------- reading files


def read_hf_config(folder: str | Path) -> dict[str, Any]:
    """The parsed config.json of a Hugging Face model folder, with a supported ``model_type``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such folder; pass a Hugging Face model folder")
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder}: no config.json here; a Hugging Face model folder needs one")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc}); the file is corrupted") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    model_type = data.get("model_type")
    if model_type not in SUPPORTED_FAMILIES:
        raise CheckpointError(
            f"{path}: model_type {model_type!r} is not supported; twinlm imports {', '.join(SUPPORTED_FAMILIES)}"
        )
    return data


def is_hf_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds a config.json written by Hugging Face (any model_type other than twinlm's)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return False
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and data.get("model_type", "twinlm") != "twinlm"


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises Rust-side error types for every kind of bad file
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({exc}); the file is truncated or is not safetensors "
            "(a PyTorch pickle must be named pytorch_model.bin)"
        ) from None


def _load_torch_bin(path: Path) -> dict[str, torch.Tensor]:
    """A pickled state dict, loaded only with weights_only=True (tensors and plain containers, no code)."""
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for forbidden globals, others for damaged files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: refused: it cannot be loaded with torch.load(weights_only=True) ({first}); twinlm never "
            "unpickles arbitrary objects; convert it to model.safetensors where you trust it"
        ) from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors")
    return dict(state)


def _load_index(index: Path, loader) -> dict[str, torch.Tensor]:
    """Tensors of a sharded checkpoint listed by a *.index.json weight_map."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{index}: not a valid shard index ({exc})") from None
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        path = index.parent / shard
        if not path.is_file():
            raise CheckpointError(f"{index}: shard '{shard}' is missing")
        state.update(loader(path))
    missing = sorted(set(weight_map) - set(state))
    if missing:
        raise CheckpointError(f"{index}: tensor '{missing[0]}' is listed but absent from its shard")
    return state


def read_hf_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a Hugging Face folder: model.safetensors, a sharded index, or a weights-only pytorch_model.bin."""
    folder = Path(folder)
    candidates = [
        ("model.safetensors", _load_safetensors),
        ("model.safetensors.index.json", lambda p: _load_index(p, _load_safetensors)),
        ("pytorch_model.bin", _load_torch_bin),
        ("pytorch_model.bin.index.json", lambda p: _load_index(p, _load_torch_bin)),
    ]
    for name, loader in candidates:
        if (folder / name).is_file():
            return loader(folder / name)
    raise CheckpointError(
        f"{folder}: no weights here; looked for model.safetensors, model.safetensors.index.json, pytorch_model.bin"
    )


# --------------------------------------------------------------------------- configs


def _act(name: Any, where: str) -> str:
    if name not in _ACT_IN:
        raise ConfigError(f"{where}: activation {name!r} is not supported; twinlm reads {', '.join(_ACT_IN)}")
    return _ACT_IN[name]


def _rope_theta(c: Mapping[str, Any], where: str) -> float:
    """RoPE base from either config layout (transformers 4: rope_theta/rope_scaling; 5: rope_parameters)."""
    params = c.get("rope_parameters") or {}
    scaling = c.get("rope_scaling") or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind != "default":
        raise ConfigError(f"{where}: rope_type {kind!r} is not supported (only the default rotary embedding)")
    return float(params.get("rope_theta", c.get("rope_theta", 10000.0)))


def config_from_hf(c: Mapping[str, Any], *, has_head: bool, tied: bool, where: str = "config.json") -> ModelConfig:
    """The twinlm ModelConfig that computes what the Hugging Face config ``c`` describes."""
    family = c.get("model_type")
    origin = {"hf": {"model_type": family, "architectures": c.get("architectures")}}
    try:
        if family in ("bert", "roberta"):
            if c.get("position_embedding_type", "absolute") != "absolute":
                raise ConfigError(f"{where}: position_embedding_type {c['position_embedding_type']!r} is not "
                                  "supported (only 'absolute')")
            offset = int(c.get("pad_token_id", 1)) + 1 if family == "roberta" else 0
            return ModelConfig(
                vocab_size=c["vocab_size"], n_layers=c["num_hidden_layers"], d_model=c["hidden_size"],
                n_heads=c["num_attention_heads"], d_ff=c["intermediate_size"],
                max_positions=c["max_position_embeddings"] - offset, position_offset=offset,
                norm="post", activation=_act(c.get("hidden_act", "gelu"), where), attention="bidirectional",
                layer_norm_eps=float(c.get("layer_norm_eps", 1e-12)), type_vocab_size=int(c.get("type_vocab_size", 2)),
                head_transform=has_head, tie_embeddings=tied, pad_token_id=int(c.get("pad_token_id") or 0),
                extra=origin,
            )
        if family == "distilbert":
            return ModelConfig(
                vocab_size=c["vocab_size"], n_layers=c["n_layers"], d_model=c["dim"], n_heads=c["n_heads"],
                d_ff=c["hidden_dim"], max_positions=c["max_position_embeddings"], norm="post",
                activation=_act(c.get("activation", "gelu"), where), attention="bidirectional",
                layer_norm_eps=1e-12,  # fixed in DistilBERT's code, not in its config
                head_transform=has_head, tie_embeddings=tied, pad_token_id=int(c.get("pad_token_id") or 0),
                extra=origin,
            )
        if family == "gpt2":
            if not c.get("scale_attn_weights", True) or c.get("scale_attn_by_inverse_layer_idx", False):
                raise ConfigError(f"{where}: non-standard GPT-2 attention scaling is not supported")
            d = c["n_embd"]
            return ModelConfig(
                vocab_size=c["vocab_size"], n_layers=c["n_layer"], d_model=d, n_heads=c["n_head"],
                d_ff=c.get("n_inner") or 4 * d, max_positions=c["n_positions"], norm="pre",
                activation=_act(c.get("activation_function", "gelu_new"), where), attention="causal",
                layer_norm_eps=float(c.get("layer_norm_epsilon", 1e-5)), head_bias=False, tie_embeddings=tied,
                pad_token_id=int(c.get("pad_token_id") or c.get("eos_token_id") or 0), extra=origin,
            )
        if family == "llama":
            d, heads = c["hidden_size"], c["num_attention_heads"]
            if c.get("head_dim") not in (None, d // heads):
                raise ConfigError(f"{where}: head_dim {c['head_dim']} != hidden_size / num_attention_heads "
                                  "is not supported")
            if bool(c.get("attention_bias", False)) != bool(c.get("mlp_bias", False)):
                raise ConfigError(f"{where}: attention_bias and mlp_bias must agree (twinlm has one 'bias' flag)")
            return ModelConfig(
                vocab_size=c["vocab_size"], n_layers=c["num_hidden_layers"], d_model=d, n_heads=heads,
                n_kv_heads=int(c.get("num_key_value_heads") or heads), d_ff=c["intermediate_size"],
                max_positions=c.get("max_position_embeddings", 2048), norm="pre", norm_type="rmsnorm",
                position="rotary", rope_theta=_rope_theta(c, where), mlp="swiglu",
                activation=_act(c.get("hidden_act", "silu"), where), attention="causal",
                layer_norm_eps=float(c.get("rms_norm_eps", 1e-6)), bias=bool(c.get("attention_bias", False)),
                head_bias=False, tie_embeddings=tied, pad_token_id=int(c.get("pad_token_id") or 0), extra=origin,
            )
    except KeyError as exc:
        raise ConfigError(f"{where}: field {exc.args[0]!r} is missing from the {family} config") from None
    raise CheckpointError(f"{where}: model_type {family!r} is not supported; twinlm imports "
                          f"{', '.join(SUPPORTED_FAMILIES)}")


# --------------------------------------------------------------------------- name maps


def _linear(twin: str, hf: str, bias: bool, op: str = "copy") -> list[Entry]:
    out = [Entry(f"{twin}.weight", (f"{hf}.weight",), op)]
    if bias:
        out.append(Entry(f"{twin}.bias", (f"{hf}.bias",)))
    return out


def _qkv(twin: str, hf: str, names: tuple[str, str, str], bias: bool) -> list[Entry]:
    out = [Entry(f"{twin}.weight", tuple(f"{hf}{n}.weight" for n in names), "cat")]
    if bias:
        out.append(Entry(f"{twin}.bias", tuple(f"{hf}{n}.bias" for n in names), "cat"))
    return out


def _norm(twin: str, hf: str, config: ModelConfig, weight: str = "weight", bias: str = "bias") -> list[Entry]:
    out = [Entry(f"{twin}.weight", (f"{hf}.{weight}",))]
    if config.norm_type == "layernorm":
        out.append(Entry(f"{twin}.bias", (f"{hf}.{bias}",)))
    return out


def _entries(family: str, config: ModelConfig, prefix: str, has_head: bool) -> list[Entry]:
    """The explicit twinlm <-> Hugging Face tensor map of one family (``prefix``: 'bert.', 'model.' or '')."""
    p, c, e = prefix, config, []
    if family in ("bert", "roberta"):
        e += [Entry("backbone.tok_emb.weight", (f"{p}embeddings.word_embeddings.weight",)),
              Entry("backbone.pos_emb.weight", (f"{p}embeddings.position_embeddings.weight",))]
        if c.type_vocab_size:
            e.append(Entry("backbone.type_emb.weight", (f"{p}embeddings.token_type_embeddings.weight",)))
        e += _norm("backbone.emb_norm", f"{p}embeddings.LayerNorm", c)
        for i in range(c.n_layers):
            t, h = f"backbone.blocks.{i}.", f"{p}encoder.layer.{i}."
            e += _qkv(t + "attn.qkv", h + "attention.self.", ("query", "key", "value"), True)
            e += _linear(t + "attn.out", h + "attention.output.dense", True)
            e += _norm(t + "norm1", h + "attention.output.LayerNorm", c)
            e += _linear(t + "ffn.up", h + "intermediate.dense", True)
            e += _linear(t + "ffn.down", h + "output.dense", True)
            e += _norm(t + "norm2", h + "output.LayerNorm", c)
        if has_head:
            if family == "bert":
                hp, dense, norm, bias = "cls.predictions.", "transform.dense", "transform.LayerNorm", "bias"
                decoder = "cls.predictions.decoder.weight"
            else:
                hp, dense, norm, bias, decoder = "lm_head.", "dense", "layer_norm", "bias", "lm_head.decoder.weight"
            e += _linear("head.dense", hp + dense, True)
            e += _norm("head.norm", hp + norm, c)
            e.append(Entry("head.bias", (hp + bias,)))
            if not c.tie_embeddings:
                e.append(Entry("head.decoder.weight", (decoder,)))
        return e
    if family == "distilbert":
        e += [Entry("backbone.tok_emb.weight", (f"{p}embeddings.word_embeddings.weight",)),
              Entry("backbone.pos_emb.weight", (f"{p}embeddings.position_embeddings.weight",))]
        e += _norm("backbone.emb_norm", f"{p}embeddings.LayerNorm", c)
        for i in range(c.n_layers):
            t, h = f"backbone.blocks.{i}.", f"{p}transformer.layer.{i}."
            e += _qkv(t + "attn.qkv", h + "attention.", ("q_lin", "k_lin", "v_lin"), True)
            e += _linear(t + "attn.out", h + "attention.out_lin", True)
            e += _norm(t + "norm1", h + "sa_layer_norm", c)
            e += _linear(t + "ffn.up", h + "ffn.lin1", True)
            e += _linear(t + "ffn.down", h + "ffn.lin2", True)
            e += _norm(t + "norm2", h + "output_layer_norm", c)
        if has_head:
            e += _linear("head.dense", "vocab_transform", True)
            e += _norm("head.norm", "vocab_layer_norm", c)
            e.append(Entry("head.bias", ("vocab_projector.bias",)))
            if not c.tie_embeddings:
                e.append(Entry("head.decoder.weight", ("vocab_projector.weight",)))
        return e
    if family == "gpt2":
        e += [Entry("backbone.tok_emb.weight", (f"{p}wte.weight",)),
              Entry("backbone.pos_emb.weight", (f"{p}wpe.weight",))]
        for i in range(c.n_layers):
            t, h = f"backbone.blocks.{i}.", f"{p}h.{i}."
            e += _norm(t + "norm1", h + "ln_1", c)
            e += _linear(t + "attn.qkv", h + "attn.c_attn", True, "t")
            e += _linear(t + "attn.out", h + "attn.c_proj", True, "t")
            e += _norm(t + "norm2", h + "ln_2", c)
            e += _linear(t + "ffn.up", h + "mlp.c_fc", True, "t")
            e += _linear(t + "ffn.down", h + "mlp.c_proj", True, "t")
        e += _norm("backbone.final_norm", f"{p}ln_f", c)
        if not c.tie_embeddings:
            e.append(Entry("head.decoder.weight", ("lm_head.weight",)))
        return e
    if family == "llama":
        e.append(Entry("backbone.tok_emb.weight", (f"{p}embed_tokens.weight",)))
        for i in range(c.n_layers):
            t, h = f"backbone.blocks.{i}.", f"{p}layers.{i}."
            e += _norm(t + "norm1", h + "input_layernorm", c)
            e += _qkv(t + "attn.qkv", h + "self_attn.", ("q_proj", "k_proj", "v_proj"), c.bias)
            e += _linear(t + "attn.out", h + "self_attn.o_proj", c.bias)
            e += _norm(t + "norm2", h + "post_attention_layernorm", c)
            e += _linear(t + "ffn.gate", h + "mlp.gate_proj", c.bias)
            e += _linear(t + "ffn.up", h + "mlp.up_proj", c.bias)
            e += _linear(t + "ffn.down", h + "mlp.down_proj", c.bias)
        e += _norm("backbone.final_norm", f"{p}norm", c)
        if not c.tie_embeddings:
            e.append(Entry("head.decoder.weight", ("lm_head.weight",)))
        return e
    raise CheckpointError(f"model family {family!r} is not supported; choose one of {', '.join(SUPPORTED_FAMILIES)}")


def _qkv_sizes(config: ModelConfig) -> list[int]:
    kv = config.kv_heads * config.head_dim
    return [config.d_model, kv, kv]


# --------------------------------------------------------------------------- import


def _prefix(family: str, state: Mapping[str, torch.Tensor]) -> str:
    """'bert.' (etc.) when the file holds a task model around the base model, '' for a bare base model."""
    p = _MODEL_PREFIX[family]
    return p if any(k.startswith(p) for k in state) else ""


def _head_layout(family: str, c: Mapping[str, Any], state: Mapping[str, torch.Tensor],
                 prefix: str) -> tuple[bool, bool]:
    """(has an MLM-transform head, decoder tied to the word embeddings) as stored in the file."""
    word = {"bert": "embeddings.word_embeddings.weight", "roberta": "embeddings.word_embeddings.weight",
            "distilbert": "embeddings.word_embeddings.weight", "gpt2": "wte.weight",
            "llama": "embed_tokens.weight"}[family]
    emb = state.get(prefix + word)
    decoder_name = {"bert": "cls.predictions.decoder.weight", "roberta": "lm_head.decoder.weight",
                    "distilbert": "vocab_projector.weight", "gpt2": "lm_head.weight",
                    "llama": "lm_head.weight"}[family]
    has_head = family in ("gpt2", "llama") or any(
        k.startswith(("cls.predictions.", "lm_head.", "vocab_transform.")) for k in state
    )
    decoder = state.get(decoder_name)
    default_tied = family != "llama"
    tied = bool(c.get("tie_word_embeddings", default_tied))
    if decoder is not None and emb is not None:
        # The file is the truth: an identical copy is a tied weight saved twice, a different one is untied.
        tied = decoder.shape == emb.shape and bool(torch.equal(decoder, emb))
    return has_head, tied


def import_hf_state(folder: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """(twinlm config, twinlm state dict, info) of a Hugging Face model folder; every tensor is accounted for."""
    folder = Path(folder)
    c = read_hf_config(folder)
    family = c["model_type"]
    hf_state = read_hf_weights(folder)
    prefix = _prefix(family, hf_state)
    has_head, tied = _head_layout(family, c, hf_state, prefix)
    config = config_from_hf(c, has_head=has_head, tied=tied, where=str(folder / "config.json"))
    with torch.device("meta"):  # shapes only: no memory, no random init
        expected = {k: tuple(v.shape) for k, v in LanguageModel(config).state_dict().items()}
    # Consume a copy so the caller's view of the file is never mutated.
    remaining = dict(hf_state)
    state: dict[str, torch.Tensor] = {}
    for entry in _entries(family, config, prefix, has_head):
        missing = [n for n in entry.hf if n not in remaining]
        if missing:
            raise CheckpointError(f"{folder}: tensor '{missing[0]}' is missing (a {family} model needs it)")
        parts = [remaining.pop(n) for n in entry.hf]
        want = expected[entry.twin]
        if entry.op == "cat":
            sizes = _qkv_sizes(config)
            for name, part, size in zip(entry.hf, parts, sizes, strict=True):
                if tuple(part.shape) != (size, *want[1:]):
                    raise CheckpointError(f"{folder}: tensor '{name}' has shape {tuple(part.shape)}, "
                                          f"expected {(size, *want[1:])} from config.json")
            tensor = torch.cat(parts, dim=0)
        else:
            tensor = parts[0].t() if entry.op == "t" else parts[0]
            if tuple(tensor.shape) != want:
                shape = tuple(parts[0].shape)
                wanted = tuple(reversed(want)) if entry.op == "t" else want
                raise CheckpointError(f"{folder}: tensor '{entry.hf[0]}' has shape {shape}, "
                                      f"expected {wanted} from config.json")
        state[entry.twin] = tensor.contiguous()
    notes: list[str] = []
    if "head.bias" in expected and "head.bias" not in state:
        # No MLM head in the file (e.g. a sentence encoder): logits use the tied embeddings and a zero bias.
        state["head.bias"] = torch.zeros(config.vocab_size)
        notes.append("no MLM head in the checkpoint: the LM head is the tied word embedding with a zero bias "
                     "(untrained); use hidden states / encode() or fine-tune")
    extra: dict[str, torch.Tensor] = {}
    # Tied copies of the decoder (and its bias) saved by older transformers versions are already accounted for.
    tied_copies = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias", "lm_head.decoder.weight",
                   "lm_head.decoder.bias", "vocab_projector.weight", "lm_head.weight")
    for name in sorted(remaining):
        if _IGNORED.search(name) or (name in tied_copies and (config.tie_embeddings or name.endswith("bias"))):
            continue
        if name.startswith(_EXTRA_HEADS[family]):
            extra[name] = remaining[name]
            continue
        raise CheckpointError(f"{folder}: unexpected tensor '{name}' (not part of a {family} model twinlm knows)")
    if extra:
        heads = sorted({(n[len(prefix):] if prefix and n.startswith(prefix) else n).split(".")[0] for n in extra})
        notes.append(f"task-head tensors kept in info['extra_tensors']: {', '.join(heads)}")
    info = {
        "family": family,
        "source": str(folder),
        "architectures": c.get("architectures"),
        "prefix": prefix,
        "lm_head": "pretrained" if has_head else "missing",
        "tied": config.tie_embeddings,
        "notes": notes,
        "extra_tensors": extra,
        "hf_config": c,
    }
    return config, state, info


# --------------------------------------------------------------------------- export


_ARCH = {
    ("bert", True): "BertForMaskedLM", ("bert", False): "BertModel",
    ("roberta", True): "RobertaForMaskedLM", ("roberta", False): "RobertaModel",
    ("distilbert", True): "DistilBertForMaskedLM", ("distilbert", False): "DistilBertModel",
    ("gpt2", True): "GPT2LMHeadModel", ("llama", True): "LlamaForCausalLM",
}


def _check_exportable(config: ModelConfig, family: str, head_bias_zero: bool) -> None:
    """Raise ConfigError naming every config field the family cannot express."""
    c = config
    want: dict[str, Any] = {"position": "learned", "norm_type": "layernorm", "mlp": "standard", "bias": True}
    if family in ("bert", "roberta", "distilbert"):
        want.update(norm="post")
    if family == "distilbert":
        want.update(type_vocab_size=0, layer_norm_eps=1e-12)
    if family == "roberta":
        want.update(position_offset=c.pad_token_id + 1)
    else:
        want.update(position_offset=0)
    if family == "gpt2":
        want.update(norm="pre", type_vocab_size=0)
    if family == "llama":
        want = {"norm": "pre", "norm_type": "rmsnorm", "position": "rotary", "mlp": "swiglu", "type_vocab_size": 0,
                "position_offset": 0}
    bad = [f"{k}={getattr(c, k)!r} (needs {v!r})" for k, v in want.items() if getattr(c, k) != v]
    if c.activation not in _ACT_OUT:
        bad.append(f"activation={c.activation!r}")
    if family in ("gpt2", "llama") and c.head_transform:
        bad.append("head_transform=True (needs False)")
    if family in ("gpt2", "llama") and not head_bias_zero:
        bad.append("a non-zero LM-head bias (the family has none)")
    if family == "llama" and c.activation != "silu":
        bad.append(f"activation={c.activation!r} (needs 'silu')")
    if bad:
        raise ConfigError(f"this model cannot be exported as {family}: {'; '.join(bad)}")


def hf_config_from(config: ModelConfig, family: str) -> dict[str, Any]:
    """The Hugging Face config.json (as a dict) for a twinlm config of ``family``."""
    c = config
    act = _ACT_OUT[c.activation]
    arch = _ARCH[(family, c.head_transform or family in ("gpt2", "llama"))]
    base: dict[str, Any] = {"model_type": family, "architectures": [arch], "vocab_size": c.vocab_size,
                            "pad_token_id": c.pad_token_id, "tie_word_embeddings": c.tie_embeddings}
    if family in ("bert", "roberta"):
        base.update(hidden_size=c.d_model, num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads,
                    intermediate_size=c.d_ff, hidden_act=act,
                    max_position_embeddings=c.max_positions + c.position_offset,
                    # type_vocab_size 0 becomes one all-zero type row: adding zeros changes nothing
                    type_vocab_size=max(c.type_vocab_size, 1), layer_norm_eps=c.layer_norm_eps,
                    position_embedding_type="absolute", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    elif family == "distilbert":
        base.update(dim=c.d_model, n_layers=c.n_layers, n_heads=c.n_heads, hidden_dim=c.d_ff, activation=act,
                    max_position_embeddings=c.max_positions, sinusoidal_pos_embds=False, dropout=0.0,
                    attention_dropout=0.0)
    elif family == "gpt2":
        base.update(n_embd=c.d_model, n_layer=c.n_layers, n_head=c.n_heads, n_inner=c.d_ff, n_positions=c.max_positions,
                    activation_function=act, layer_norm_epsilon=c.layer_norm_eps, resid_pdrop=0.0, embd_pdrop=0.0,
                    attn_pdrop=0.0)
    elif family == "llama":
        base.update(hidden_size=c.d_model, num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads,
                    num_key_value_heads=c.kv_heads, intermediate_size=c.d_ff, hidden_act=act,
                    max_position_embeddings=c.max_positions, rms_norm_eps=c.layer_norm_eps,
                    rope_theta=c.rope_theta, rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},
                    attention_bias=c.bias, mlp_bias=c.bias, head_dim=c.head_dim)
    return base


def export_hf_state(model: LanguageModel, family: str) -> dict[str, torch.Tensor]:
    """The Hugging Face state dict of ``model`` as a ``family`` model (tied tensors written once)."""
    if family not in SUPPORTED_FAMILIES:
        raise ConfigError(f"family {family!r} is not supported; choose one of {', '.join(SUPPORTED_FAMILIES)}")
    config = model.config
    twin = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    bias = twin.get("head.bias")
    _check_exportable(config, family, bias is None or not bool(bias.any()))
    if family in ("bert", "roberta") and not config.type_vocab_size:
        twin["backbone.type_emb.weight"] = torch.zeros(1, config.d_model)
        config = config.replace(type_vocab_size=1)
    has_head = config.head_transform or family in ("gpt2", "llama")
    prefix = _MODEL_PREFIX[family] if has_head else ""
    out: dict[str, torch.Tensor] = {}
    for entry in _entries(family, config, prefix, config.head_transform):
        tensor = twin[entry.twin]
        if entry.op == "cat":
            for name, part in zip(entry.hf, tensor.split(_qkv_sizes(config), dim=0), strict=True):
                out[name] = part.contiguous()
        else:
            out[entry.hf[0]] = (tensor.t() if entry.op == "t" else tensor).contiguous()
    return out


def _write_tokenizer(tokenizer: Any, folder: Path, family: str) -> None:
    """tokenizer.json (+ twinlm sidecar) and the tokenizer_config.json / special_tokens_map.json AutoTokenizer reads."""
    tokenizer.save(folder)
    names = {"pad": "pad_token", "unk": "unk_token", "cls": "cls_token", "sep": "sep_token", "mask": "mask_token",
             "bos": "bos_token", "eos": "eos_token"}
    specials = {names[role]: tok for role, tok in tokenizer.special.items() if tok is not None}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 1_000_000, **specials}
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")


def export_hf(model: LanguageModel, tokenizer: Any | None, folder: str | Path, family: str,
              extra_tensors: Mapping[str, torch.Tensor] | None = None) -> Path:
    """Write a Hugging Face folder (config.json, model.safetensors, tokenizer files) that AutoModel* loads."""
    folder = Path(folder)
    state = export_hf_state(model, family)
    config = hf_config_from(model.config, family)
    if tokenizer is not None and tokenizer.vocab_size > model.config.vocab_size + 1:
        raise CheckpointError(f"tokenizer has {tokenizer.vocab_size} tokens but the model's embedding has "
                              f"{model.config.vocab_size} rows; they do not belong together")
    for name, tensor in (extra_tensors or {}).items():
        if name in state:
            raise CheckpointError(f"extra tensor '{name}' would overwrite a model tensor")
        state[name] = tensor.detach().cpu().contiguous()
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / ".model.safetensors.tmp"
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, folder / "model.safetensors")  # never leave a half-written weights file under the real name
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if tokenizer is not None:
        _write_tokenizer(tokenizer, folder, family)
    return folder


def family_of(config: ModelConfig) -> str | None:
    """The Hugging Face family a twinlm config was imported from, if any."""
    hf = config.extra.get("hf") if isinstance(config.extra, dict) else None
    return hf.get("model_type") if isinstance(hf, dict) else None
