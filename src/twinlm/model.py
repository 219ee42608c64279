"""The one Transformer backbone shared by masked and causal language models, and its tied LM head.

Read top to bottom: embeddings -> N blocks (attention + feed-forward, pre- or post-norm) -> final norm -> LM head.
The attention kind ('bidirectional' or 'causal') is a config default that every call may override, which is how
hybrid training alternates paradigms on the same weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .attention import KVCache, Rotary, SelfAttention, cache_length, gather_rows, rotary_tables
from .config import ModelConfig

ACTIVATION_FNS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}


def device_of(module: nn.Module) -> torch.device:
    """The device that holds a module's parameters (where its inputs must go)."""
    return next(module.parameters()).device


def make_norm(config: ModelConfig) -> nn.Module:
    """The configured normalisation: LayerNorm (BERT, GPT-2) or scale-only RMSNorm (Llama)."""
    if config.norm_type == "rmsnorm":
        return nn.RMSNorm(config.d_model, eps=config.layer_norm_eps)
    return nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)


class FeedForward(nn.Module):
    """Position-wise MLP: down(act(up(x))), or with mlp='swiglu' down(act(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate = nn.Linear(config.d_model, config.d_ff, bias=config.bias) if config.mlp == "swiglu" else None
        self.up = nn.Linear(config.d_model, config.d_ff, bias=config.bias)
        self.down = nn.Linear(config.d_ff, config.d_model, bias=config.bias)
        self.act = ACTIVATION_FNS[config.activation]
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate is not None:
            return self.drop(self.down(self.act(self.gate(x)) * self.up(x)))
        return self.drop(self.down(self.act(self.up(x))))


class Block(nn.Module):
    """One Transformer layer. Pre-norm: x + f(norm(x)); post-norm (BERT): norm(x + f(x))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.pre_norm = config.norm == "pre"
        self.attn = SelfAttention(config)
        self.norm1 = make_norm(config)
        self.ffn = FeedForward(config)
        self.norm2 = make_norm(config)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, kind: str, attention_mask: torch.Tensor | None,
                past: KVCache | None, rope: Rotary | None = None,
                rows: torch.Tensor | None = None) -> tuple[torch.Tensor, KVCache]:
        """rows (B,): compute only position rows[b] of each row (see SelfAttention); the output is (B, 1, D)."""
        if self.pre_norm:
            a, cache = self.attn(self.norm1(x), kind, attention_mask, past, rope, rows)
            x = x if rows is None else gather_rows(x, rows)
            x = x + self.drop(a)
            return x + self.ffn(self.norm2(x)), cache
        a, cache = self.attn(x, kind, attention_mask, past, rope, rows)
        x = x if rows is None else gather_rows(x, rows)
        x = self.norm1(x + self.drop(a))
        return self.norm2(x + self.ffn(x)), cache


class Transformer(nn.Module):
    """Embeddings and blocks: token ids -> contextual hidden states (B, T, d_model)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        # Rotary models (Llama) have no position table. RoBERTa's table has position_offset extra leading rows
        # (its padding_idx + 1), so position p reads row p + offset.
        self.pos_emb = (
            nn.Embedding(config.max_positions + config.position_offset, config.d_model)
            if config.position == "learned" else None
        )
        self.type_emb = nn.Embedding(config.type_vocab_size, config.d_model) if config.type_vocab_size else None
        # Post-norm (BERT) normalises the embeddings; pre-norm (GPT-2) normalises after the last block.
        self.emb_norm = make_norm(config) if config.norm == "post" else None
        self.final_norm = make_norm(config) if config.norm == "pre" else None
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        attention: str | None = None,
        past: list[KVCache] | None = None,
        rows: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[KVCache]]:
        """Hidden states and the per-layer (k, v) cache. ``attention`` overrides the config's mask kind.

        position_ids (B or 1, T) are 0-based positions; by default they continue after the cached keys.
        rows (B,): only position rows[b] of each row is wanted (a pooling head): the last block computes just
        those and the hidden states are (B, 1, D). Every other block still runs on all positions (they are keys).
        rows (N, 2) of (row, position) pairs: the same for N examples packed in the rows; the states are (N, 1, D).
        segment_ids (B, T): several examples packed in one row, numbered 1, 2, ... (0 is padding). A position sees
        only its own example (a block-diagonal mask in place of attention_mask) and, unless position_ids are
        given, its positions restart at 0, so each example computes what it would alone.
        """
        kind = attention or self.config.attention
        B, T = input_ids.shape
        start = cache_length(past[0]) if past else 0
        if start + T > self.config.max_positions:
            raise ValueError(f"sequence of {start + T} tokens exceeds max_positions={self.config.max_positions}")
        if segment_ids is not None:
            if past:
                raise ValueError("segment_ids (packed rows) compute full sequences; they do not take a KV cache")
            attention_mask = segment_ids[:, :, None] == segment_ids[:, None, :]
            if position_ids is None:
                position_ids = segment_positions(segment_ids)
        if position_ids is None:
            position_ids = torch.arange(start, start + T, device=input_ids.device).unsqueeze(0)
        x = self.tok_emb(input_ids)
        rope = None
        if self.pos_emb is not None:
            x = x + self.pos_emb(position_ids + self.config.position_offset)
        else:
            rope = rotary_tables(position_ids, self.config.head_dim, self.config.rope_theta, x.dtype)
        if self.type_emb is not None:
            types = token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)
            x = x + self.type_emb(types)
        if self.emb_norm is not None:
            x = self.emb_norm(x)
        x = self.drop(x)
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None  # no padding: let SDPA take its mask-free fast path
        caches: list[KVCache] = []
        for i, block in enumerate(self.blocks):
            last = rows if i == len(self.blocks) - 1 else None
            x, cache = block(x, kind, attention_mask, past[i] if past else None, rope, last)
            caches.append(cache)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x, caches


def segment_positions(segment_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) 0-based positions that restart wherever the segment id changes (each packed example from 0)."""
    T = segment_ids.size(1)
    index = torch.arange(T, device=segment_ids.device).expand_as(segment_ids)
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    return index - torch.where(starts, index, 0).cummax(dim=1).values


class LMHead(nn.Module):
    """Hidden states -> vocabulary logits; the decoder matrix is the token embedding when tied."""

    def __init__(self, config: ModelConfig, embedding: nn.Embedding) -> None:
        super().__init__()
        self.embedding = [embedding]  # a list so the tied weight is not registered (and saved) twice
        if config.head_transform:
            self.dense = nn.Linear(config.d_model, config.d_model)
            self.act = ACTIVATION_FNS[config.activation]
            self.norm = make_norm(config)
        else:
            self.dense = None
        self.decoder = None if config.tie_embeddings else nn.Linear(config.d_model, config.vocab_size, bias=False)
        # GPT-2 and Llama have no output bias; head_bias=False drops the parameter so exports stay exact.
        self.bias = nn.Parameter(torch.zeros(config.vocab_size)) if config.head_bias else None

    @property
    def weight(self) -> torch.Tensor:
        """The (vocab, d_model) decoder matrix: the token embedding when tied."""
        return self.embedding[0].weight if self.decoder is None else self.decoder.weight

    def transform(self, h: torch.Tensor) -> torch.Tensor:
        """BERT's dense + activation + norm before the decoder (identity without a head transform)."""
        return h if self.dense is None else self.norm(self.act(self.dense(h)))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(self.transform(h), self.weight, self.bias)


class LanguageModel(nn.Module):
    """Backbone + LM head. The same class is the masked LM and the causal LM; config.attention says which."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = Transformer(config)
        self.head = LMHead(config, self.backbone.tok_emb)
        self.apply(self._init_weights)
        # GPT-2's scaled init of residual projections keeps the residual stream's variance flat with depth.
        for name, p in self.named_parameters():
            if name.endswith(("attn.out.weight", "ffn.down.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               attention: str | None = None, **kwargs) -> torch.Tensor:
        """Final hidden states (B, T, d_model), without the vocabulary projection."""
        return self.backbone(input_ids, attention_mask, attention=attention, **kwargs)[0]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                attention: str | None = None, **kwargs) -> torch.Tensor:
        """Logits (B, T, vocab) at every position."""
        return self.head(self.hidden(input_ids, attention_mask, attention, **kwargs))

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               pooling: str = "mean", attention: str = "bidirectional", **kwargs) -> torch.Tensor:
        """Encoder features: pooled (B, d_model) with pooling 'mean' | 'cls' | 'last', or (B, T, d_model) for 'none'.

        Bidirectional by default, as sentence encoders (e.g. all-MiniLM-L6-v2 with mean pooling) are used.
        """
        h = self.hidden(input_ids, attention_mask, attention, **kwargs)
        return pool(h, attention_mask, pooling)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.backbone.tok_emb.weight.numel()
            if self.backbone.pos_emb is not None:
                n -= self.backbone.pos_emb.weight.numel()
        return n


POOLINGS = ("mean", "cls", "last", "none")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, how: str = "mean") -> torch.Tensor:
    """Reduce hidden states (B, T, D) to (B, D) over non-padding positions: 'mean', 'cls' (first), 'last'."""
    if how == "none":
        return hidden
    if how == "cls":
        return hidden[:, 0]
    mask = torch.ones(hidden.shape[:2], device=hidden.device) if attention_mask is None else attention_mask
    mask = mask.to(hidden.dtype)
    if how == "mean":
        return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1e-9)
    if how == "last":
        # the last non-padding position of each row (right padding)
        last = (mask.sum(1).long() - 1).clamp(min=0)
        return hidden[torch.arange(hidden.size(0), device=hidden.device), last]
    raise ValueError(f"pooling {how!r} is unknown; choose one of {', '.join(POOLINGS)}")
