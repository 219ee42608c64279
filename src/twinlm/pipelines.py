"""Inference API: fill masks (masked models), sample continuations (causal models); load_pretrained from loading.

The masked-model functions live in twinlm.masked and decoding in twinlm.generate; this module gathers the short
entry points.
"""

from __future__ import annotations

from typing import Any

from .config import require
from .generate import generate
from .loading import load_pretrained
from .masked import JointFill, MaskPrediction, fill_mask, fill_mask_joint
from .model import LanguageModel
from .tokenizer import Tokenizer

__all__ = ["load_pretrained", "fill_mask", "fill_mask_joint", "sample", "MaskPrediction", "JointFill", "describe"]


def sample(model: LanguageModel, tokenizer: Tokenizer, prompt: str, max_new_tokens: int = 50,
           temperature: float = 0.0, top_k: int | None = None, seed: int = 0, stop_at_eos: bool = True) -> str:
    """A continuation of ``prompt`` under the causal mask: greedy at temperature 0, else seeded sampling.

    A thin wrapper over twinlm.generate.generate, which has every other decoding option.
    """
    require(model, "causal", "sample", "use `twinlm fill-mask`, or mask-predict generation: "
            "`twinlm generate --mask-predict`")
    out = generate(model, tokenizer, prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                   seed=seed, stop_at_eos=stop_at_eos)
    return out.text  # type: ignore[union-attr]


def describe(model: LanguageModel) -> dict[str, Any]:
    """A one-line summary of a model for tables."""
    c = model.config
    return {"attention": c.attention, "layers": c.n_layers, "d_model": c.d_model, "parameters": model.num_parameters()}
