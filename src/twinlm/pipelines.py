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
    """A model folder itself, a run's best/ (fine-tuning), its newest valid checkpoint, or hf:ORG/NAME."""
    from .hf import resolve_hf_path

    path = resolve_hf_path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such model folder; pass the --out folder of a training run")
    if (path / "config.json").is_file():
        return path
    if (path / "best" / "config.json").is_file():
        return path / "best"
    latest = ckpt.latest_checkpoint(path)
    if latest is None:
        raise CheckpointError(f"{path}: no config.json, no best/ and no complete checkpoint-* folder inside")
    return latest


def load_pretrained(path: str | Path, device: str = "cpu") -> tuple[LanguageModel, Tokenizer]:
    """(model in eval mode, tokenizer) from a model/checkpoint/run folder, with vocabulary checks."""
    folder = resolve_model_dir(path)
    from .hf import is_hf_folder

    if is_hf_folder(folder):
        return _load_hf_pretrained(folder, device)
    config = ModelConfig.load(folder)
    tokenizer = load_tokenizer(folder)
    check_vocab(tokenizer, config.vocab_size, folder)
    model = LanguageModel(config)
    state = ckpt.load_model_state(folder)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{folder}: weights do not fit config.json ({str(exc).splitlines()[0]})") from None
    return model.to(device).eval(), tokenizer


def check_vocab(tokenizer: Tokenizer, vocab_size: int, folder: str | Path) -> None:
    """Refuse a tokenizer whose ids do not match the embedding rows (twinlm's own appended [MASK] excepted)."""
    n = tokenizer.vocab_size
    # Loading GPT-2-style files appends one [MASK] after the vocabulary so masked training works; a causal
    # model never produces it, so one surplus id that is exactly that mask is fine.
    if n == vocab_size or (n == vocab_size + 1 and tokenizer.mask_id == vocab_size):
        return
    raise CheckpointError(
        f"{folder}: tokenizer has {n} tokens but the model's vocab_size (embedding rows) is {vocab_size}; "
        "the tokenizer files do not belong to this checkpoint"
    )


def _load_hf_pretrained(folder: Path, device: str) -> tuple[LanguageModel, Tokenizer]:
    """A Hugging Face model folder: imported weights and the folder's own tokenizer."""
    from .hf import load_hf

    tokenizer = load_tokenizer(folder)
    model, _ = load_hf(folder, device=device)
    check_vocab(tokenizer, model.config.vocab_size, folder)
    return model, tokenizer


@dataclass
class MaskPrediction:
    token: str
    token_id: int
    score: float
    sequence: str


def _special_ids(tokenizer: Tokenizer, vocab: int) -> list[int]:
    """The tokenizer's special ids that exist among the model's ``vocab`` logits."""
    return [i for i in tokenizer.special_ids if i < vocab]


def _nth_mask(ids: list[int], pos: int, dropped: set[int]) -> int:
    """Index of position ``pos`` of ``ids`` once the ``dropped`` tokens are removed."""
    return sum(1 for t in ids[:pos] if t not in dropped)


def _mask_positions(model: LanguageModel, tokenizer: Tokenizer, text: str) -> tuple[list[int], list[int]]:
    """The framed ids of ``text`` and the positions of its [MASK] tokens, after the fill-mask input checks."""
    trained_as = model.config.extra.get("objective")
    if model.config.attention == "causal" and trained_as != "hybrid":
        raise ConfigError("fill-mask needs a masked (bidirectional) or hybrid model; this one is a causal LM "
                          "(use `twinlm sample` or `twinlm generate` with it)")
    mask_token = tokenizer.id_to_token(tokenizer.mask_id)
    if mask_token not in text:
        raise ConfigError(f"the text has no {mask_token} token to fill: {text!r}")
    ids = tokenizer.encode(text, add_special=True)
    if len(ids) > model.config.max_positions:
        raise ConfigError(f"the text is {len(ids)} tokens; the model takes at most {model.config.max_positions}")
    positions = [i for i, t in enumerate(ids) if t == tokenizer.mask_id]
    if not positions:
        raise ConfigError(f"the text has no {mask_token} token to fill after tokenization: {text!r}")
    return ids, positions


@torch.no_grad()
def fill_mask(model: LanguageModel, tokenizer: Tokenizer, text: str, top_k: int = 5) -> list[list[MaskPrediction]]:
    """Top-k predictions for each [MASK] in ``text`` (bidirectional attention), each with the filled sentence.

    Every mask is predicted independently given the text with all masks in place; fill_mask_joint fills them
    together. In a prediction's sequence the other masks stay as the mask token.
    """
    ids, mask_positions = _mask_positions(model, tokenizer, text)
    device = next(model.parameters()).device
    x = torch.tensor([ids], device=device)
    positions = torch.tensor(mask_positions, device=device)
    logits = model.head(model.hidden(x, attention="bidirectional")[0, positions]).float()
    logits[:, _special_ids(tokenizer, logits.size(-1))] = float("-inf")  # a blank is filled with text, never [MASK]
    probs = logits.softmax(-1)
    if top_k < 1:
        raise ConfigError(f"top_k must be a positive integer, got {top_k}")
    hidden_specials = set(tokenizer.special_ids) - {tokenizer.mask_id}
    results = []
    for row, pos in zip(probs, positions.tolist(), strict=True):
        scores, top = row.topk(min(top_k, row.numel()))
        preds = []
        for score, tid in zip(scores.tolist(), top.tolist(), strict=True):
            filled = [t for t in ids if t not in hidden_specials]  # drop [CLS]/[SEP]/EOS, keep the other masks
            filled[_nth_mask(ids, pos, hidden_specials)] = tid
            preds.append(MaskPrediction(tokenizer.decode([tid]), tid, score,
                                        tokenizer.decode(filled, skip_special=False)))
        results.append(preds)
    return results


def sample(model: LanguageModel, tokenizer: Tokenizer, prompt: str, max_new_tokens: int = 50,
           temperature: float = 0.0, top_k: int | None = None, seed: int = 0, stop_at_eos: bool = True) -> str:
    """A continuation of ``prompt`` under the causal mask: greedy at temperature 0, else seeded sampling.

    A thin wrapper over twinlm.generate.generate, which has every other decoding option.
    """
    from .generate import generate

    if model.config.attention == "bidirectional" and model.config.extra.get("objective") != "hybrid":
        raise ConfigError("sample needs a causal or hybrid model; this one is a masked LM (use `twinlm fill-mask`, "
                          "or mask-predict generation: `twinlm generate --mask-predict`)")
    out = generate(model, tokenizer, prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                   seed=seed, stop_at_eos=stop_at_eos)
    return out.text  # type: ignore[union-attr]


@dataclass
class JointFill:
    """A text with every [MASK] filled together: the ids, the tokens chosen per mask (in text order) and their
    probabilities when they were chosen."""

    sequence: str
    tokens: list[str]
    token_ids: list[int]
    scores: list[float]


@torch.no_grad()
def fill_mask_joint(model: LanguageModel, tokenizer: Tokenizer, text: str) -> JointFill:
    """The most likely joint filling of every [MASK] by iterative unmasking.

    Each round predicts all remaining blanks given the text and the blanks filled so far, and fixes only the single
    most confident one, so later choices see earlier ones (independent per-mask argmaxes can disagree with each
    other, e.g. "New [MASK] [MASK]" -> "New York York").
    """
    ids, positions = _mask_positions(model, tokenizer, text)
    device = next(model.parameters()).device
    x = torch.tensor([ids], device=device)
    remaining = list(positions)
    chosen: dict[int, tuple[int, float]] = {}
    while remaining:
        pos = torch.tensor(remaining, device=device)
        logits = model.head(model.hidden(x, attention="bidirectional")[0, pos]).float()
        logits[:, _special_ids(tokenizer, logits.size(-1))] = float("-inf")
        p, tok = logits.softmax(-1).max(-1)
        best = int(p.argmax())
        x[0, remaining[best]] = tok[best]
        chosen[remaining[best]] = (int(tok[best]), float(p[best]))
        remaining.pop(best)
    token_ids = [chosen[q][0] for q in positions]
    return JointFill(tokenizer.decode(x[0].tolist(), skip_special=True), [tokenizer.decode([t]) for t in token_ids],
                     token_ids, [chosen[q][1] for q in positions])


def describe(model: LanguageModel) -> dict[str, Any]:
    """A one-line summary of a model for tables."""
    c = model.config
    return {"attention": c.attention, "layers": c.n_layers, "d_model": c.d_model, "parameters": model.num_parameters()}
