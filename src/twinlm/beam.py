"""Beam search: per prompt, the ``num_beams`` best partial sequences by summed log-probability, several prompts at once.

The search drives the same Decoder as greedy decoding and sampling: its pre-allocated KV buffers, left-padded
batches and logits processors (repetition penalty and no-repeat-n-gram; the sampling warpers do not apply). Prompt
b owns rows b * num_beams ... (b + 1) * num_beams - 1; after each step the rows are reordered in place so that row
i continues the beam it was extended from.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch

from .decoding import Decoder, check_causal, fit_prompts
from .errors import ConfigError
from .model import LanguageModel
from .processors import NEG_INF, GenerationConfig

BeamResult = tuple[list[int], float, bool]  # (tokens, length-normalised score, ended by a stop token)


@dataclass(order=True)
class _Hypothesis:
    score: float
    tokens: list[int] = field(compare=False)
    stopped: bool = field(compare=False, default=True)


def _normalised(logprob: float, length: int, length_penalty: float) -> float:
    # Sum of log-probs divided by length**alpha: alpha > 0 favours longer sequences, alpha < 0 shorter ones.
    return logprob / (max(length, 1) ** length_penalty)


class _PromptBeams:
    """One prompt's search: its finished hypotheses, its live beams' scores and whether it is over."""

    def __init__(self, config: GenerationConfig) -> None:
        self.n = config.num_beams
        self.length_penalty = config.length_penalty
        self.early_stopping = config.early_stopping
        self.finished: list[_Hypothesis] = []
        # Every beam starts as the prompt; only beam 0 is live at first so the first step does not pick duplicates.
        self.scores = [0.0] + [NEG_INF] * (self.n - 1)
        self.done = False

    def advance(self, step: int, top_scores: list[float], top_idx: list[int], vocab: int, stop: set[int],
                tokens_of: Callable[[int], list[int]]) -> list[tuple[int, int]]:
        """Take the best extensions (beam, token) in order; stop tokens end hypotheses. [] when the search is over.

        ``tokens_of(beam)`` gives a live beam's tokens so far (read only when a hypothesis finishes).
        """
        beams: list[tuple[int, int]] = []
        scores: list[float] = []
        for score, idx in zip(top_scores, top_idx, strict=True):
            if score == NEG_INF:
                break
            beam, token = divmod(idx, vocab)
            if token in stop:
                # The stop token counts in the length (it was a decision) but not in the output.
                self.finished.append(_Hypothesis(_normalised(score, step + 1, self.length_penalty), tokens_of(beam)))
            else:
                beams.append((beam, token))
                scores.append(score)
            if len(beams) == self.n:
                break
        self.finished = sorted(self.finished, reverse=True)[:self.n]
        full = len(self.finished) >= self.n
        if not beams or (self.early_stopping and full) or (
                full and _normalised(max(scores), step + 1, self.length_penalty) <= self.finished[-1].score):
            # With length_penalty > 0 "no live beam can still win" is an estimate, as in the usual implementations.
            self.end(step, tokens_of)
            return []
        while len(beams) < self.n:  # fewer survivors than beams: pad with dead copies
            beams.append(beams[0])
            scores.append(NEG_INF)
        self.scores = scores
        return beams

    def end(self, length: int, tokens_of: Callable[[int], list[int]]) -> None:
        """Close the search: the live beams (``length`` tokens each) compete with the finished hypotheses."""
        self.done = True
        if length == 0:
            return
        for beam, score in enumerate(self.scores):
            if score > NEG_INF:
                self.finished.append(_Hypothesis(_normalised(score, length, self.length_penalty), tokens_of(beam),
                                                 stopped=False))

    def result(self) -> BeamResult:
        """The best hypothesis: (tokens, normalised score, ended by a stop token)."""
        if not self.finished:
            return [], 0.0, True
        best = max(self.finished)
        return best.tokens, best.score, best.stopped


@torch.inference_mode()
def beam_search_batch(model: LanguageModel, prompts: Sequence[Sequence[int]], config: GenerationConfig,
                      stop_ids: Sequence[int] = (), pad_id: int = 0) -> list[BeamResult]:
    """Beam search for several token-id prompts in one left-padded batch of len(prompts) * num_beams rows.

    Every step each of a prompt's ``num_beams`` live beams is extended by every token; the 2 * num_beams best
    extensions are considered in order, those ending in a stop token become finished hypotheses and the rest
    refill the beam. early_stopping=True ends a prompt's search as soon as num_beams hypotheses are finished;
    otherwise it ends when no live beam can still beat the worst kept hypothesis (with length_penalty > 0 that is
    an estimate). Returns, per prompt, (tokens, normalised score, ended by a stop token).
    """
    check_causal(model)
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ConfigError("every prompt needs at least one token (an empty prompt starts from BOS/EOS)")
    prompts = fit_prompts([list(p) for p in prompts], config.max_new_tokens, model.config.max_positions,
                          config.truncate)
    if config.do_sample:
        config = replace(config, temperature=0.0)  # beams are ranked by log-probability: no sampling warpers
    n, B = config.num_beams, len(prompts)
    stop = {int(i) for i in stop_ids}
    dec = Decoder(model, prompts, config, pad_id)
    dec.prefill()  # once per prompt; the rows are then copied to its beams
    dec.reorder(torch.arange(B, device=dec.device).repeat_interleave(n))
    searches = [_PromptBeams(config) for _ in range(B)]
    start = dec.prompt_len
    for step in range(config.max_new_tokens):
        logprobs = dec.processed_logits().log_softmax(-1)
        V = logprobs.size(-1)
        beam_scores = torch.tensor([s for search in searches for s in search.scores], device=dec.device)
        total = (beam_scores[:, None] + logprobs).reshape(B, n * V)
        top_scores, top_idx = total.topk(min(2 * n, n * V), dim=-1)
        top_scores, top_idx = top_scores.tolist(), top_idx.tolist()
        rows: list[list[int]] | None = None  # every row's new tokens, read from the device only when needed

        def tokens_of(row: int) -> list[int]:
            nonlocal rows
            if rows is None:
                rows = dec.ids[:, start:dec.length].tolist()
            return rows[row]

        index, tokens = [], []
        for b, search in enumerate(searches):
            chosen = [] if search.done else search.advance(step, top_scores[b], top_idx[b], V, stop,
                                                          lambda beam, b=b: tokens_of(b * n + beam))
            if not chosen:  # over (now or before): its rows idle on the pad token and are never read again
                search.scores = [NEG_INF] * n
                chosen = [(beam, pad_id) for beam in range(n)]
            index.extend(b * n + beam for beam, _ in chosen)
            tokens.extend(token for _, token in chosen)
        if all(search.done for search in searches):
            break
        dec.reorder(torch.tensor(index, device=dec.device))
        dec.feed(torch.tensor(tokens, device=dec.device))
    for b, search in enumerate(searches):
        if not search.done:
            search.end(dec.length - start, lambda beam, b=b: dec.ids[b * n + beam, start:dec.length].tolist())
    return [search.result() for search in searches]


def beam_search(model: LanguageModel, prompt: Sequence[int], config: GenerationConfig,
                stop_ids: Sequence[int] = ()) -> BeamResult:
    """The best continuation of one prompt under beam search: (tokens, normalised score, ended by a stop token)."""
    return beam_search_batch(model, [prompt], config, stop_ids)[0]
