"""Text generation, the public entry points: generate, generate_ids, stream (and mask_predict for masked models).

Causal decoding is a prefill pass over the (left-padded) prompts followed by one KV-cached position per step
(twinlm.decoding). Every step the raw next-token logits go through the logits processors (twinlm.processors):

    repetition penalty -> no-repeat-n-gram -> temperature -> top-k -> top-p -> min-p

and the next token is the argmax (greedy, ``temperature <= 0``) or a draw from the softmax with a seeded generator.
With ``num_beams > 1`` beam search (twinlm.beam) keeps the best partial sequences by summed log-probability instead.
A masked model generates by mask-predict (twinlm.masked).

The names the modules above define are re-exported here, so ``from twinlm.generate import GenerationConfig,
top_p, beam_search, mask_predict`` keeps working.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import torch

from .beam import beam_search, beam_search_batch
from .decoding import (
    Decoder,
    Generation,
    TruncationWarning,
    check_causal,
    encode_prompts,
    fit_prompts,
    head_logits,
    stop_ids_for,
)
from .errors import ConfigError
from .masked import mask_predict
from .model import LanguageModel
from .processors import (
    GenerationConfig,
    LogitsProcessor,
    apply_processors,
    build_processors,
    min_p,
    no_repeat_ngram,
    repetition_penalty,
    temperature,
    top_k,
    top_p,
)
from .textstream import TextStream, cut_at_stop
from .tokenizer import Tokenizer

__all__ = [
    "generate", "generate_ids", "stream", "mask_predict", "beam_search", "beam_search_batch", "GenerationConfig",
    "Generation", "TextStream", "TruncationWarning", "Decoder", "LogitsProcessor", "build_processors",
    "apply_processors", "repetition_penalty", "no_repeat_ngram", "temperature", "top_k", "top_p", "min_p",
    "check_causal", "encode_prompts", "fit_prompts", "head_logits",
]


def _resolve(config: GenerationConfig | None, overrides: dict[str, Any]) -> GenerationConfig:
    config = config or GenerationConfig()
    return replace(config, **overrides) if overrides else config


@torch.inference_mode()
def generate_ids(model: LanguageModel, prompts: Sequence[Sequence[int]], config: GenerationConfig | None = None,
                 pad_id: int = 0, stop_ids: Sequence[int] = (),
                 on_logits: Callable[[int, torch.Tensor], None] | None = None, **overrides: Any) -> list[list[int]]:
    """New token ids for each token-id prompt (no tokenizer needed); stops at ``stop_ids`` or max_new_tokens."""
    config = _resolve(config, overrides)
    check_causal(model)
    if not prompts:
        raise ConfigError("no prompts given")
    prompts = fit_prompts([list(p) for p in prompts], config.max_new_tokens, model.config.max_positions,
                          config.truncate)
    if config.num_beams > 1:
        return [tokens for tokens, _, _ in beam_search_batch(model, prompts, config, stop_ids, pad_id)]
    dec = Decoder(model, prompts, config, pad_id, stop_ids, on_logits)
    while not dec.done:
        dec.step()
    return [dec.new_tokens(b) for b in range(len(prompts))]


def _prepare(model: LanguageModel, tokenizer: Tokenizer, prompts: Sequence[str],
             config: GenerationConfig) -> list[list[int]]:
    check_causal(model)
    ids = encode_prompts(tokenizer, prompts)
    return fit_prompts(ids, config.max_new_tokens, model.config.max_positions, config.truncate)


@torch.inference_mode()
def generate(model: LanguageModel, tokenizer: Tokenizer, prompt: str | Sequence[str],
             config: GenerationConfig | None = None, **overrides: Any) -> Generation | list[Generation]:
    """Continue one prompt (returns a Generation) or a batch of prompts (returns a list), in one padded batch.

    Keyword overrides are GenerationConfig fields, e.g. ``generate(m, tok, "Once", max_new_tokens=20, top_p=0.9,
    temperature=0.8)``. ``temperature <= 0`` (the default) is greedy.
    """
    config = _resolve(config, overrides)
    single = isinstance(prompt, str)
    texts = [prompt] if single else list(prompt)
    if not texts:
        raise ConfigError("no prompts given")
    ids = _prepare(model, tokenizer, texts, config)
    stops = stop_ids_for(tokenizer, config)
    results: list[Generation] = []
    if config.num_beams > 1:
        beams = beam_search_batch(model, ids, config, stops, tokenizer.pad_id)
        for text, p, (toks, score, stopped) in zip(texts, ids, beams, strict=True):
            out, cut = cut_at_stop(tokenizer.decode(toks), config.stop_strings)
            results.append(Generation(text, out, toks, "stop" if stopped or cut else "length", len(p), score))
        return results[0] if single else results
    dec = Decoder(model, ids, config, tokenizer.pad_id, stops)
    cut_text: dict[int, str] = {}
    while not dec.done:
        dec.step()
        if config.stop_strings:
            for b in range(len(texts)):
                if bool(dec.finished[b]):
                    continue
                out, hit = cut_at_stop(tokenizer.decode(dec.new_tokens(b)), config.stop_strings)
                if hit:
                    cut_text[b] = out
                    dec.finish(b)
    for b, (text, p) in enumerate(zip(texts, ids, strict=True)):
        toks = dec.new_tokens(b)
        out = cut_text.get(b)
        if out is None:
            out, _ = cut_at_stop(tokenizer.decode(toks), config.stop_strings)
        results.append(Generation(text, out, toks, "stop" if bool(dec.stopped[b]) else "length", len(p)))
    return results[0] if single else results


@torch.inference_mode()
def stream(model: LanguageModel, tokenizer: Tokenizer, prompt: str, config: GenerationConfig | None = None,
           **overrides: Any) -> Iterator[str]:
    """Yield the continuation of ``prompt`` in pieces as tokens are decoded; the pieces join to generate()'s text."""
    config = _resolve(config, overrides)
    if config.num_beams > 1:
        # A beam's best sequence is only known at the end, so there is nothing to stream early.
        yield generate(model, tokenizer, prompt, config).text  # type: ignore[union-attr]
        return
    ids = _prepare(model, tokenizer, [prompt], config)
    dec = Decoder(model, ids, config, tokenizer.pad_id, stop_ids_for(tokenizer, config))
    text = TextStream(tokenizer, config.stop_strings)
    while not dec.done:
        token = int(dec.step()[0])
        if bool(dec.stopped[0]):
            break  # the stop token itself is not part of the text
        piece = text.push([token])
        if piece:
            yield piece
        if text.stopped:
            dec.finish(0)
            break
    piece = text.finish()
    if piece:
        yield piece
