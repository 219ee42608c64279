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

from .attention import KVCache, SelfAttention
from .config import ModelConfig

ACTIVATION_FNS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}


class FeedForward(nn.Module):
    """Position-wise MLP: Linear(d, d_ff) -> activation -> Linear(d_ff, d)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.up = nn.Linear(config.d_model, config.d_ff, bias=config.bias)
        self.down = nn.Linear(config.d_ff, config.d_model, bias=config.bias)
        self.act = ACTIVATION_FNS[config.activation]
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.down(self.act(self.up(x))))


class Block(nn.Module):
    """One Transformer layer. Pre-norm: x + f(norm(x)); post-norm (BERT): norm(x + f(x))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.pre_norm = config.norm == "pre"
        self.attn = SelfAttention(config)
        self.norm1 = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.ffn = FeedForward(config)
        self.norm2 = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, kind: str, attention_mask: torch.Tensor | None,
                past: KVCache | None) -> tuple[torch.Tensor, KVCache]:
        if self.pre_norm:
            a, cache = self.attn(self.norm1(x), kind, attention_mask, past)
            x = x + self.drop(a)
            return x + self.ffn(self.norm2(x)), cache
        a, cache = self.attn(x, kind, attention_mask, past)
        x = self.norm1(x + self.drop(a))
        return self.norm2(x + self.ffn(x)), cache


class Transformer(nn.Module):
    """Embeddings and blocks: token ids -> contextual hidden states (B, T, d_model)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.max_positions, config.d_model)
        self.type_emb = nn.Embedding(config.type_vocab_size, config.d_model) if config.type_vocab_size else None
        # Post-norm (BERT) normalises the embeddings; pre-norm (GPT-2) normalises after the last block.
        self.emb_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps) if config.norm == "post" else None
        self.final_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps) if config.norm == "pre" else None
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
    ) -> tuple[torch.Tensor, list[KVCache]]:
        """Hidden states and the per-layer (k, v) cache. ``attention`` overrides the config's mask kind."""
        kind = attention or self.config.attention
        B, T = input_ids.shape
        start = past[0][0].size(2) if past else 0
        if start + T > self.config.max_positions:
            raise ValueError(f"sequence of {start + T} tokens exceeds max_positions={self.config.max_positions}")
        if position_ids is None:
            position_ids = torch.arange(start, start + T, device=input_ids.device).unsqueeze(0)
        x = self.tok_emb(input_ids) + self.pos_emb(position_ids)
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
            x, cache = block(x, kind, attention_mask, past[i] if past else None)
            caches.append(cache)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x, caches


class LMHead(nn.Module):
    """Hidden states -> vocabulary logits; the decoder matrix is the token embedding when tied."""

    def __init__(self, config: ModelConfig, embedding: nn.Embedding) -> None:
        super().__init__()
        self.embedding = [embedding]  # a list so the tied weight is not registered (and saved) twice
        if config.head_transform:
            self.dense = nn.Linear(config.d_model, config.d_model)
            self.act = ACTIVATION_FNS[config.activation]
            self.norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        else:
            self.dense = None
        self.decoder = None if config.tie_embeddings else nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.dense is not None:
            h = self.norm(self.act(self.dense(h)))
        weight = self.embedding[0].weight if self.decoder is None else self.decoder.weight
        return F.linear(h, weight, self.bias)


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

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.backbone.pos_emb.weight.numel() + self.backbone.tok_emb.weight.numel()
        return n
