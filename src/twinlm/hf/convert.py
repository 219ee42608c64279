"""Import and export: a Hugging Face folder <-> a twinlm config and state dict, every tensor accounted for.

Import checks every tensor's shape and refuses missing or unexpected tensors by name; tensors of task heads
(pooler, classifiers, QA) are handed back in ``info["extra_tensors"]`` for fine-tuning to pick up.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..config import ModelConfig
from ..errors import CheckpointError, ConfigError
from ..model import LanguageModel
from .configs import check_exportable, config_from_hf, hf_config_from
from .files import read_hf_config, read_hf_weights
from .names import (
    CAUSAL_FAMILIES,
    HEAD_MARKERS,
    IGNORED,
    SUPPORTED_FAMILIES,
    TIED_COPIES,
    entries,
    qkv_sizes,
    table,
)


def _prefix(family: str, state: Mapping[str, torch.Tensor]) -> str:
    """'bert.' (etc.) when the file holds a task model around the base model, '' for a bare base model."""
    p = table(family).prefix
    return p if any(k.startswith(p) for k in state) else ""


def _head_layout(family: str, c: Mapping[str, Any], state: Mapping[str, torch.Tensor],
                 prefix: str) -> tuple[bool, bool]:
    """(has an LM head, decoder tied to the word embeddings) as stored in the file."""
    names = table(family)
    emb = state.get(prefix + names.word_embedding)
    has_head = family in CAUSAL_FAMILIES or any(k.startswith(HEAD_MARKERS) for k in state)
    if not has_head:
        # No MLM head means no decoder to untie (a BertModel saved with tie_word_embeddings=False); the
        # placeholder head reuses the word embedding, so it must be tied or it would expect a decoder weight.
        return has_head, True
    decoder = state.get(names.decoder)
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
    for entry in entries(family, config, prefix, has_head):
        missing = [n for n in entry.hf if n not in remaining]
        if missing:
            raise CheckpointError(f"{folder}: tensor '{missing[0]}' is missing (a {family} model needs it)")
        parts = [remaining.pop(n) for n in entry.hf]
        want = expected[entry.twin]
        if entry.op == "cat":
            sizes = qkv_sizes(config)
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
    for name in sorted(remaining):
        if IGNORED.search(name) or (name in TIED_COPIES and (config.tie_embeddings or name.endswith("bias"))):
            continue
        if name.startswith(table(family).extra_heads):
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


def export_hf_state(model: LanguageModel, family: str) -> dict[str, torch.Tensor]:
    """The Hugging Face state dict of ``model`` as a ``family`` model (tied tensors written once)."""
    if family not in SUPPORTED_FAMILIES:
        raise ConfigError(f"family {family!r} is not supported; choose one of {', '.join(SUPPORTED_FAMILIES)}")
    config = model.config
    twin = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    bias = twin.get("head.bias")
    check_exportable(config, family, bias is None or not bool(bias.any()))
    if family in ("bert", "roberta") and not config.type_vocab_size:
        twin["backbone.type_emb.weight"] = torch.zeros(1, config.d_model)
        config = config.replace(type_vocab_size=1)
    # a bare base model (no MLM head) is written without the task-model prefix, as transformers saves BertModel
    has_head = config.head_transform or family in CAUSAL_FAMILIES
    prefix = table(family).prefix if has_head else ""
    out: dict[str, torch.Tensor] = {}
    for entry in entries(family, config, prefix, has_head):
        tensor = twin[entry.twin]
        if entry.op == "cat":
            for name, part in zip(entry.hf, tensor.split(qkv_sizes(config), dim=0), strict=True):
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
