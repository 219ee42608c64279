"""The two objectives and their mix.

Masked LM (BERT):   L_MLM = - sum_{i in M} log P(x_i | X without M)
    M is a random ~15% of the non-special positions; of those 80% become [MASK], 10% a random token, 10% stay.
    The loss is taken only at positions in M, so the hidden states of those positions are gathered *before*
    the vocabulary projection (sparse prediction): the projection is the most expensive matmul of a small model.
Causal LM (GPT):    L_CLM = - sum_t log P(x_t | x_<t)
    Logits at position t-1 predict token t. Padding is known from the attention mask, never from the pad id, so
    that EOS stays a target when pad id == EOS id (otherwise the model never learns to stop).
Hybrid (AntLM, arXiv 2412.03275): alternate objective *and* attention mask by training phase on the same weights,
    e.g. "clm:4,mlm:16,clm:4", or mix them per step with a ratio.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from .config import OBJECTIVES
from .errors import ConfigError

IGNORE_INDEX = -100
ATTENTION_FOR = {"mlm": "bidirectional", "clm": "causal"}


@dataclass
class MLMMasker:
    """Chooses the masked set M and applies the 80/10/10 corruption.

    mask_prob: selection probability p. whole_word: select whole words (all sub-tokens of a word or none), using
    ``continuation`` (bool per vocab id: True if the token continues the previous word), or, when a call passes
    ``word_starts`` (bool per position, e.g. flags a word segmenter stored at prepare time), those instead; the
    table may then be None. fixed_count: exactly round(p * L) tokens per row (L = selectable tokens of the longest
    row) so shapes stay static; with whole_word the count is the largest number of whole words that fits in it.
    """

    mask_id: int
    vocab_size: int
    special_ids: list[int]
    mask_prob: float = 0.15
    whole_word: bool = False
    fixed_count: bool = False
    continuation: np.ndarray | None = None
    replace_prob: float = 0.8
    random_prob: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 < self.mask_prob < 1.0:
            raise ConfigError(f"mask probability must be in (0, 1), got {self.mask_prob}")
        is_special = torch.zeros(self.vocab_size, dtype=torch.bool)
        is_special[torch.tensor(sorted(set(self.special_ids)), dtype=torch.long)] = True
        self._is_special = is_special
        self._random_pool = torch.nonzero(~is_special).squeeze(1)  # random replacements are never special tokens
        cont = torch.zeros(self.vocab_size, dtype=torch.bool)
        if self.continuation is not None:
            cont[: len(self.continuation)] = torch.as_tensor(self.continuation[: self.vocab_size], dtype=torch.bool)
        self._continuation = cont & ~is_special

    def _begins(self, input_ids: torch.Tensor, word_starts: torch.Tensor | None) -> torch.Tensor:
        """Bool (B, L): positions that begin a word, from the per-position flags or else the vocabulary table."""
        if word_starts is not None:
            if not self.whole_word:
                raise ConfigError("word_starts given to a masker built without whole_word=True")
            if word_starts.shape != input_ids.shape:
                raise ConfigError(f"word_starts has shape {tuple(word_starts.shape)}, the input ids "
                                  f"{tuple(input_ids.shape)}; gather both with the same block starts")
            return word_starts.bool()
        if self.continuation is None:
            raise ConfigError("whole-word masking needs word-start flags or the tokenizer's continuation table")
        return ~self._continuation[input_ids]

    def select(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
               generator: torch.Generator | None = None, word_starts: torch.Tensor | None = None) -> torch.Tensor:
        """Boolean (B, L): the positions in M. Special and padding positions are never selected.

        word_starts (whole_word only): per-position word starts that replace the vocabulary continuation table.
        """
        selectable = ~self._is_special[input_ids]
        if attention_mask is not None:
            selectable &= attention_mask.bool()
        B, L = input_ids.shape
        u = torch.rand(B, L, generator=generator)
        if self.whole_word or word_starts is not None:
            # A word starts at every selectable token that begins one, or that follows a special token (a block
            # cut mid-word, or a word after [SEP]).
            prev_special = torch.ones(B, L, dtype=torch.bool)
            prev_special[:, 1:] = ~selectable[:, :-1]
            starts = selectable & (self._begins(input_ids, word_starts) | prev_special)
            positions = torch.arange(L).expand(B, L)
            word_start = torch.cummax(torch.where(starts, positions, torch.zeros_like(positions)), dim=1).values
            u = u.gather(1, word_start)  # every token of a word shares its first token's draw
        u = u.masked_fill(~selectable, 2.0)
        if not self.fixed_count:
            return u < self.mask_prob
        k = max(1, round(self.mask_prob * int(selectable.sum(1).max())))
        # Rank tokens by their draw; the stable sort keeps a word's tokens (equal draws) together and in order.
        order = torch.argsort(u, dim=1, stable=True)
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(L).expand(B, L).contiguous())
        chosen = (rank < k) & selectable
        if self.whole_word:
            # Keep a word only if all of its tokens made the cut: never split a word at the boundary.
            word_id = torch.cumsum(starts.long(), dim=1)
            dropped = torch.zeros(B, L + 1, dtype=torch.long)
            dropped.scatter_add_(1, word_id, (selectable & ~chosen).long())
            chosen &= dropped.gather(1, word_id) == 0
        return chosen

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 generator: torch.Generator | None = None,
                 word_starts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(corrupted input ids, labels): labels hold the original id in M and -100 elsewhere."""
        selected = self.select(input_ids, attention_mask, generator, word_starts)
        labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
        r = torch.rand(input_ids.shape, generator=generator)
        to_mask = selected & (r < self.replace_prob)
        to_random = selected & (r >= self.replace_prob) & (r < self.replace_prob + self.random_prob)
        pick = torch.randint(len(self._random_pool), input_ids.shape, generator=generator)
        corrupted = torch.where(to_mask, torch.full_like(input_ids, self.mask_id), input_ids)
        corrupted = torch.where(to_random, self._random_pool[pick], corrupted)
        return corrupted, labels


class _ProjectedCrossEntropy(torch.autograd.Function):
    """mean_i CE(h_i W^T + b, y_i) computed over row chunks, its gradients taken in the same pass.

    The plain path materialises the (N, vocab) logits, their log-softmax and its gradient: three tensors of 400 MB
    for 2,048 GPT-2 positions. Here each chunk's logits become their own gradient in place,
    dL/dlogits = (softmax(logits) - onehot(y)) / n, which is folded straight into dL/dh and dL/dW; the backward pass
    only scales those by the incoming gradient (the loss is a scalar). Same FLOPs, a fraction of the memory traffic.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor,
                chunk: int) -> torch.Tensor:
        compute = torch.get_autocast_dtype(hidden.device.type) if torch.is_autocast_enabled(hidden.device.type) \
            else hidden.dtype
        acc = torch.promote_types(compute, torch.float32)  # softmax and sums never below fp32
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        valid = labels != IGNORE_INDEX
        count = valid.sum().clamp(min=1).to(acc)
        targets = labels.clamp(min=0)
        w = weight.to(compute)
        grad_h = torch.zeros_like(hidden) if need_grad else None
        grad_w = torch.zeros_like(weight, dtype=acc) if need_grad else None
        grad_b = torch.zeros_like(bias, dtype=acc) if need_grad and bias is not None else None
        total = torch.zeros((), dtype=acc, device=hidden.device)
        same = compute == acc  # fp32 (or fp64): every product can be written in place, no temporaries
        rows = torch.arange(min(chunk, hidden.size(0)), device=hidden.device)
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, hidden.size(0), chunk):
                h = hidden[start:start + chunk].to(compute)
                y, keep = targets[start:start + chunk], valid[start:start + chunk]
                n = len(y)
                # The logits are held transposed, (vocab, chunk): on CPU W @ h^T is faster than h @ W^T for these
                # shapes, and a chunk of 128 columns stays in a large L3 cache for the passes below.
                logits = (w @ h.t()).to(acc)
                if bias is not None:
                    logits += bias.to(acc)[:, None]
                picked = logits[y, rows[:n]]
                # log-sum-exp in place: m + log(sum(exp(logits - m))), leaving exp(logits - m) behind
                top = logits.amax(dim=0)
                probs = logits.sub_(top).exp_()
                norm = probs.sum(dim=0)
                lse = top + norm.log()
                total += ((lse - picked) * keep).sum()
                if not need_grad:
                    continue
                # dL/dlogits = (softmax - onehot(y)) * keep / count, still in the same buffer
                scale = keep.to(acc) / count
                probs.mul_(scale / norm)
                probs[y, rows[:n]] -= scale
                if same:
                    torch.mm(probs.t(), w, out=grad_h[start:start + chunk])
                    grad_w.addmm_(probs, h)
                else:
                    g = probs.to(compute)
                    grad_h[start:start + chunk] = (g.t() @ w).to(grad_h.dtype)
                    grad_w += (g @ h).to(acc)
                if grad_b is not None:
                    grad_b += probs.sum(1)
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return total / count

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        w_dtype, b_dtype = ctx.dtypes
        return (grad_h * grad_out.to(grad_h.dtype), (grad_w * grad_out).to(w_dtype),
                None if grad_b is None else (grad_b * grad_out).to(b_dtype), None, None)


def projected_cross_entropy(head: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor,
                            chunk: int | None = None) -> torch.Tensor:
    """Mean cross-entropy of the LM head's logits at (N, d_model) hidden rows against (N,) labels (-100: skip).

    Equals F.cross_entropy(head(hidden), labels, ignore_index=-100) without ever holding the (N, vocab) logits.
    ``chunk`` rows at a time: by default on CPU about 4M logits per chunk (128 rows of GPT-2's vocabulary, which
    trained faster per step than larger chunks, the logits staying in cache; a small vocabulary gets one chunk, no
    loop overhead) and 4,096 rows on a GPU (large matmuls, few kernel launches, still a fraction of the full logits'
    memory).
    """
    if chunk is None:
        chunk = max(128, 2**22 // head.weight.size(0)) if hidden.device.type == "cpu" else 4096
    return _ProjectedCrossEntropy.apply(head.transform(hidden), head.weight, head.bias, labels, chunk)


def mlm_loss(model: torch.nn.Module, input_ids: torch.Tensor, labels: torch.Tensor,
             attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of -log P(x_i | X without M) over the masked positions, projecting only those hidden states."""
    hidden = model.hidden(input_ids, attention_mask, attention="bidirectional")
    where = labels != IGNORE_INDEX
    # Sparse prediction: only the masked rows reach the vocabulary projection. With nothing masked the loss is a
    # zero that still has a graph (no host-side check, so a compiled step does not sync on it).
    return projected_cross_entropy(model.head, hidden[where], labels[where])


def clm_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Targets for next-token prediction: labels[t] = x[t+1]; -100 where x[t+1] is padding or past the end."""
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[:, :-1] = input_ids[:, 1:]
    if attention_mask is not None:
        # Padding is read from the mask, not from the token id: EOS == pad must still be learned as a target.
        labels[:, :-1] = labels[:, :-1].masked_fill(~attention_mask[:, 1:].bool(), IGNORE_INDEX)
    return labels


def clm_loss(model: torch.nn.Module, input_ids: torch.Tensor,
             attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of -log P(x_t | x_<t) over the non-padding targets, under the causal mask."""
    hidden = model.hidden(input_ids, attention_mask, attention="causal")
    labels = clm_labels(input_ids, attention_mask)
    return projected_cross_entropy(model.head, hidden.flatten(0, 1), labels.flatten())


_PHASE = re.compile(r"^(mlm|clm):(\d+(?:\.\d+)?)$")


@dataclass
class HybridSchedule:
    """Which objective a training step uses: alternating phases (AntLM) or a per-step mixing ratio.

    ``phases`` like "clm:4,mlm:16,clm:4" gives relative lengths (AntLM counts epochs; here the lengths are spread
    over the run's total steps in proportion, which is the same thing when the run is measured in epochs).
    ``mlm_ratio`` in [0, 1] instead interleaves deterministically: exactly that fraction of steps are MLM.
    """

    phases: list[tuple[str, float]] | None = None
    mlm_ratio: float | None = None

    @classmethod
    def parse(cls, spec: str | None = None, mlm_ratio: float | None = None) -> HybridSchedule:
        """Parse 'clm:4,mlm:16,clm:4'; raise ConfigError naming the bad part."""
        if mlm_ratio is not None:
            if not 0.0 <= mlm_ratio <= 1.0:
                raise ConfigError(f"--mlm-ratio must be in [0, 1], got {mlm_ratio}")
            if spec:
                raise ConfigError("give either a hybrid schedule or --mlm-ratio, not both")
            return cls(mlm_ratio=mlm_ratio)
        spec = spec or "clm:4,mlm:16,clm:4"
        phases = []
        for part in spec.replace(" ", "").split(","):
            m = _PHASE.match(part)
            if not m or float(m.group(2)) <= 0:
                raise ConfigError(f"hybrid schedule part {part!r} is not OBJECTIVE:LENGTH (e.g. 'clm:4,mlm:16')")
            phases.append((m.group(1), float(m.group(2))))
        return cls(phases=phases)

    def objective_at(self, step: int, total_steps: int) -> str:
        """'mlm' or 'clm' for optimizer step ``step`` (0-based) of ``total_steps``."""
        if self.mlm_ratio is not None:
            r = self.mlm_ratio
            return "mlm" if int((step + 1) * r) > int(step * r) else "clm"
        total = sum(length for _, length in self.phases)
        position = (step + 0.5) / max(total_steps, 1) * total
        edge = 0.0
        for objective, length in self.phases:
            edge += length
            if position < edge:
                return objective
        return self.phases[-1][0]


def resolve_objective(name: str) -> str:
    """Validate an objective name."""
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}")
    return name
