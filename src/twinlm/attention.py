"""Attention: the two masks M and the equation softmax(QK^T / sqrt(d_k) + M) V.

This module is where the paradigms differ. A masked LM uses the bidirectional mask (every position sees every
non-padding position); a causal LM uses the causal mask

    M_ij = 0      if i >= j
    M_ij = -inf   otherwise

added to the scores before the softmax. Padding adds -inf on padded key columns for both. Two implementations
compute the same thing: ``math_attention`` spells the equation out; ``sdpa_attention`` hands it to PyTorch's fused
``scaled_dot_product_attention``. Tests assert they agree.

-inf is represented by the dtype's most negative finite number so that a fully masked row (a left-padding query
under the causal mask) gives a finite, ignorable output rather than NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig


def neg_inf(dtype: torch.dtype) -> float:
    """The additive value that stands for -inf in mask M."""
    return torch.finfo(dtype).min


def causal_mask(q_len: int, k_len: int, device: torch.device | None = None, dtype=torch.float32) -> torch.Tensor:
    """Additive causal mask M of shape (q_len, k_len): 0 where key j <= query i, -inf above the diagonal.

    With a KV cache the queries are the last ``q_len`` of ``k_len`` positions, so query i sits at k_len - q_len + i.
    """
    offset = k_len - q_len
    i = torch.arange(q_len, device=device).unsqueeze(1) + offset
    j = torch.arange(k_len, device=device).unsqueeze(0)
    mask = torch.zeros(q_len, k_len, device=device, dtype=dtype)
    return mask.masked_fill(j > i, neg_inf(dtype))


def padding_mask(attention_mask: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """Additive mask of shape (B, 1, 1, K) from a (B, K) 1/0 attention mask: -inf on padded key columns.

    A (B, Q, K) mask says per query which keys it may see (packed rows: each example sees only itself) and gives
    (B, 1, Q, K).
    """
    keep = attention_mask.to(torch.bool)
    keep = keep[:, None, None, :] if keep.dim() == 2 else keep[:, None]
    zeros = torch.zeros(keep.shape, dtype=dtype, device=attention_mask.device)
    return zeros.masked_fill(~keep, neg_inf(dtype))


def build_mask(
    kind: str,
    q_len: int,
    k_len: int,
    attention_mask: torch.Tensor | None,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor | None:
    """The full additive M for ``kind`` ('bidirectional' or 'causal'), broadcastable to (B, H, Q, K), or None."""
    mask = None
    if kind == "causal":
        mask = causal_mask(q_len, k_len, device, dtype)[None, None]
    if attention_mask is not None:
        pad = padding_mask(attention_mask, dtype)
        mask = pad if mask is None else torch.maximum(mask + pad, torch.tensor(neg_inf(dtype), device=device))
    return mask


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                   dropout_p: float = 0.0) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d_k) + M) V, written out; q, k, v are (B, H, T, d_k)."""
    d_k = q.size(-1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(d_k)
    if mask is not None:
        scores = scores + mask
    weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    return weights @ v


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                   dropout_p: float = 0.0, is_causal: bool = False) -> torch.Tensor:
    """The same equation through torch's fused kernel (flash / memory-efficient / math, chosen by torch)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal)


def gather_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(B, 1, ...): position rows[b] of each row b of x (B, T, ...); or, for rows (N, 2) of (row, position)
    pairs (several examples packed in one row), (N, 1, ...): position p of row r for each pair."""
    if rows.dim() == 2:
        return x[rows[:, 0], rows[:, 1]].unsqueeze(1)
    return x[torch.arange(x.size(0), device=x.device), rows].unsqueeze(1)


Rotary = tuple[torch.Tensor, torch.Tensor]


class KVBuffer:
    """One layer's key/value cache pre-allocated for ``capacity`` positions: a decoding step writes its keys and
    values in place, where a (k, v) tuple cache would copy the whole cache with torch.cat at every step."""

    def __init__(self, batch: int, heads: int, capacity: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device | str) -> None:
        self.k = torch.empty(batch, heads, capacity, head_dim, dtype=dtype, device=device)
        self.v = torch.empty_like(self.k)
        self.length = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (B, H, T, d) new keys/values after the cached ones; return views of all of them."""
        end = self.length + k.size(2)
        if end > self.k.size(2):
            raise ValueError(f"KV buffer holds {self.k.size(2)} positions; {end} were asked for")
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def reorder(self, index: torch.Tensor) -> None:
        """Make row i hold the cached keys/values of row ``index[i]`` (beam search); index may change the row count.

        Only the filled positions are copied, and with the same row count they are written back into the same
        pre-allocated storage.
        """
        live = self.length
        if index.numel() == self.k.size(0):
            # index_select returns a fresh tensor, so rows that read and write the same storage cannot clash.
            self.k[:, :, :live] = self.k[:, :, :live].index_select(0, index)
            self.v[:, :, :live] = self.v[:, :, :live].index_select(0, index)
            return
        k = self.k.new_empty((index.numel(), *self.k.shape[1:]))
        v = torch.empty_like(k)
        k[:, :, :live] = self.k[:, :, :live].index_select(0, index)
        v[:, :, :live] = self.v[:, :, :live].index_select(0, index)
        self.k, self.v = k, v

    @classmethod
    def stacked(cls, parts: Sequence[tuple[KVBuffer, int]], capacity: int) -> KVBuffer:
        """One buffer of ``capacity`` positions holding the rows of every (buffer, offset) part in order, each
        part's filled positions moved ``offset`` positions to the right (continuous batching aligns batches so)."""
        first = parts[0][0].k
        out = cls(sum(p.k.size(0) for p, _ in parts), first.size(1), capacity, first.size(3), first.dtype,
                  first.device)
        # The padding in front of a part is masked, but its keys must be finite: 0 * NaN would still be NaN.
        out.k.zero_()
        out.v.zero_()
        row = 0
        for part, offset in parts:
            rows, end = part.k.size(0), offset + part.length
            out.k[row:row + rows, :, offset:end] = part.k[:, :, :part.length]
            out.v[row:row + rows, :, offset:end] = part.v[:, :, :part.length]
            out.length, row = max(out.length, end), row + rows
        return out

    def trim(self, n: int) -> None:
        """Forget the first ``n`` positions (key columns no row uses any more): a view, nothing is copied."""
        self.k, self.v = self.k[:, :, n:], self.v[:, :, n:]
        self.length = max(self.length - n, 0)


KVCache = tuple[torch.Tensor, torch.Tensor] | KVBuffer


def cache_length(cache: KVCache) -> int:
    """Positions held by a layer's cache (a (k, v) tuple or a KVBuffer)."""
    return cache.length if isinstance(cache, KVBuffer) else cache[0].size(2)


def rotary_tables(position_ids: torch.Tensor, head_dim: int, theta: float = 10000.0,
                  dtype: torch.dtype = torch.float32) -> Rotary:
    """(cos, sin) of shape (B, T, head_dim) for rotary position embeddings at ``position_ids`` (B, T).

    Frequency i is theta^(-2i/d); each is used for two dimensions, laid out as two halves (the "rotate half"
    convention of GPT-NeoX and Hugging Face Llama, whose q/k weights are stored for it).
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=position_ids.device).float() / head_dim))
    angles = position_ids.float()[..., None] * inv_freq  # computed in fp32: bf16 angles lose whole turns
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (x_i, x_{i+d/2}) pair of x (B, H, T, d) by its position's angle."""
    half = x.size(-1) // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused QKV projection; the mask kind is chosen per call.

    With ``n_kv_heads`` < ``n_heads`` (grouped-query attention) the fused projection yields n_heads query heads
    and n_kv_heads key/value heads, each key/value head serving n_heads // n_kv_heads query heads. The cache
    holds the un-repeated key/value heads, already rotated when rotary positions are used.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.kv_heads = config.kv_heads
        self.head_dim = config.head_dim
        self.impl = config.attn_impl
        self.dropout = config.dropout
        kv_dim = self.kv_heads * self.head_dim
        self.qkv = nn.Linear(config.d_model, config.d_model + 2 * kv_dim, bias=config.bias)
        self.out = nn.Linear(config.d_model, config.d_model, bias=config.bias)

    def forward(
        self,
        x: torch.Tensor,
        kind: str,
        attention_mask: torch.Tensor | None = None,
        past: KVCache | None = None,
        rope: Rotary | None = None,
        rows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, KVCache]:
        """x: (B, T, D); attention_mask: (B, K) over all keys (past + new); returns (output, (k, v)).

        rows (B,): compute the output only at position rows[b] of each row (keys and values still come from every
        position), so the output is (B, 1, D): what a head that reads one position needs from the last block.
        rows (N, 2) of (row, position) pairs does the same for N examples packed in B rows: output (N, 1, D), each
        query seeing the keys of its own row that attention_mask (B, T, T) lets it see.
        attention_mask may be (B, T, K): per query, the keys it may see (packed rows; no KV cache).
        """
        B, T, D = x.shape
        kv_dim = self.kv_heads * self.head_dim
        if rows is None:
            q, k, v = self.qkv(x).split([D, kv_dim, kv_dim], dim=-1)
        else:
            if past is not None:
                raise ValueError("rows= computes a full sequence; it does not take a KV cache")
            w, bias = self.qkv.weight, self.qkv.bias
            q = F.linear(gather_rows(x, rows), w[:D], None if bias is None else bias[:D])
            k, v = F.linear(x, w[D:], None if bias is None else bias[D:]).split([kv_dim, kv_dim], dim=-1)
            position = rows
            if rows.dim() == 2:  # packed: each example's query reads the keys of its own row
                which, position = rows[:, 0], rows[:, 1]
                k, v = k[which], v[which]
                if rope is not None:
                    rope = tuple(r.expand(B, -1, -1)[which] for r in rope)
                if attention_mask is not None:
                    attention_mask = (attention_mask[which, position] if attention_mask.dim() == 3
                                      else attention_mask[which])
                B, rows = which.numel(), position
            elif attention_mask is not None and attention_mask.dim() == 3:
                attention_mask = attention_mask[torch.arange(B, device=x.device), rows]
            if kind == "causal":  # the query sits at rows[b], not at the end: mask the keys after it explicitly
                after = torch.arange(T, device=x.device)[None, :] > position[:, None]
                keep = ~after if attention_mask is None else attention_mask.bool() & ~after
                attention_mask, kind = keep, "bidirectional"
        q = q.view(B, q.size(1), self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        if rope is not None:
            q_rope = rope if rows is None else tuple(gather_rows(r.expand(B, -1, -1), rows) for r in rope)
            q, k = apply_rotary(q, *q_rope), apply_rotary(k, *rope)
        if isinstance(past, KVBuffer):
            k, v = past.append(k, v)
            cache: KVCache = past
        else:
            if past is not None:
                k = torch.cat([past[0], k], dim=2)
                v = torch.cat([past[1], v], dim=2)
            cache = (k, v)
        if self.kv_heads != self.n_heads:
            repeat = self.n_heads // self.kv_heads
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        K, T = k.size(2), q.size(2)
        dropout_p = self.dropout if self.training else 0.0
        if self.impl == "sdpa" and attention_mask is None and (kind == "bidirectional" or T == K or T == 1):
            # Fast path: no explicit mask tensor, the kernel applies the causal triangle itself; one new query
            # (a decoding step) is the last position and sees every key, so it needs no mask at all.
            y = sdpa_attention(q, k, v, None, dropout_p, is_causal=(kind == "causal" and T > 1))
        else:
            mask = build_mask(kind, T, K, attention_mask, x.device, q.dtype)
            attend = sdpa_attention if self.impl == "sdpa" else math_attention
            y = attend(q, k, v, mask, dropout_p)
        y = y.transpose(1, 2).reshape(B, T, D)
        return self.out(y), cache
