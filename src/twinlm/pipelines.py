"""Inference API: load a trained model folder, fill masks (MLM), sample continuations (CLM)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import checkpoint as ckpt
from .config import ModelConfig
from .errors import CheckpointError, ConfigError
from .model import LanguageModel
from .tokenizer import Tokenizer, load_tokenizer


def resolve_model_dir(path: str | Path) -> Path:
    """A model folder itself, or a run folder whose newest valid checkpoint is taken."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such model folder; pass the --out folder of a training run")
    if (path / "config.json").is_file():
        return path
    latest = ckpt.latest_checkpoint(path)
    if latest is None:
        raise CheckpointError(f"{path}: no config.json and no complete checkpoint-* folder inside")
    return latest


def load_pretrained(path: str | Path, device: str = "cpu") -> tuple[LanguageModel, Tokenizer]:
    """(model in eval mode, tokenizer) from a model/checkpoint/run folder, with vocabulary checks."""
    folder = resolve_model_dir(path)
    config = ModelConfig.load(folder)
    tokenizer = load_tokenizer(folder)
    if tokenizer.vocab_size != config.vocab_size:
        raise CheckpointError(
            f"{folder}: tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is "
            f"{config.vocab_size}; the tokenizer files do not belong to this checkpoint"
        )
    model = LanguageModel(config)
    state = ckpt.load_model_state(folder)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{folder}: weights do not fit config.json ({str(exc).splitlines()[0]})") from None
    return model.to(device).eval(), tokenizer


@dataclass
class MaskPrediction:
    token: str
    token_id: int
    score: float
    sequence: str


@torch.no_grad()
def fill_mask(model: LanguageModel, tokenizer: Tokenizer, text: str, top_k: int = 5) -> list[list[MaskPrediction]]:
    """Top-k predictions for each [MASK] in ``text`` (bidirectional attention), each with the filled sentence."""
    trained_as = model.config.extra.get("objective")
    if model.config.attention == "causal" and trained_as != "hybrid":
        raise ConfigError("fill-mask needs a masked (bidirectional) or hybrid model; this one is a causal LM "
                          "(use `twinlm sample` with it)")
    mask_token = tokenizer.id_to_token(tokenizer.mask_id)
    if mask_token not in text:
        raise ConfigError(f"the text has no {mask_token} token to fill: {text!r}")
    ids = tokenizer.encode(text, add_special=True)
    if len(ids) > model.config.max_positions:
        raise ConfigError(f"the text is {len(ids)} tokens; the model takes at most {model.config.max_positions}")
    device = next(model.parameters()).device
    x = torch.tensor([ids], device=device)
    positions = (x[0] == tokenizer.mask_id).nonzero().squeeze(1)
    logits = model.head(model.hidden(x, attention="bidirectional")[0, positions]).float()
    logits[:, tokenizer.special_ids] = float("-inf")  # a blank is filled with text, never with [MASK] or [PAD]
    probs = logits.softmax(-1)
    results = []
    for row, pos in zip(probs, positions.tolist(), strict=True):
        scores, top = row.topk(top_k)
        preds = []
        for score, tid in zip(scores.tolist(), top.tolist(), strict=True):
            filled = list(ids)
            filled[pos] = tid
            preds.append(MaskPrediction(tokenizer.decode([tid]), tid, score,
                                        tokenizer.decode(filled, skip_special=True)))
        results.append(preds)
    return results


@torch.no_grad()
def sample(model: LanguageModel, tokenizer: Tokenizer, prompt: str, max_new_tokens: int = 50,
           temperature: float = 0.0, top_k: int | None = None, seed: int = 0, stop_at_eos: bool = True) -> str:
    """A continuation of ``prompt`` under the causal mask: greedy at temperature 0, else seeded sampling."""
    if model.config.attention == "bidirectional":
        raise ConfigError("sample needs a causal or hybrid model; this one is a masked LM (use `twinlm fill-mask`; "
                          "mask-predict generation for masked models is planned)")
    ids = tokenizer.encode(prompt) if prompt else [tokenizer.eos_id]
    limit = model.config.max_positions
    if len(ids) + max_new_tokens > limit:
        raise ConfigError(
            f"prompt ({len(ids)} tokens) + max_new_tokens ({max_new_tokens}) exceeds max_positions={limit}"
        )
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.tensor([ids], device=device)
    hidden, cache = model.backbone(x, attention="causal")
    out: list[int] = []
    for _ in range(max_new_tokens):
        logits = model.head(hidden[:, -1]).float()
        if temperature <= 0:
            nxt = int(logits.argmax(-1))
        else:
            logits = logits / temperature
            if top_k:
                kth = logits.topk(min(top_k, logits.size(-1))).values[..., -1, None]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = int(torch.multinomial(logits.softmax(-1), 1, generator=gen))
        if stop_at_eos and nxt == tokenizer.eos_id:
            break
        out.append(nxt)
        hidden, cache = model.backbone(torch.tensor([[nxt]], device=device), attention="causal", past=cache)
    return tokenizer.decode(out, skip_special=True)


def describe(model: LanguageModel) -> dict[str, Any]:
    """A one-line summary of a model for tables."""
    c = model.config
    return {"attention": c.attention, "layers": c.n_layers, "d_model": c.d_model, "parameters": model.num_parameters()}
