"""The twinlm <-> Hugging Face tensor-name tables: one declarative table per family, used in both directions.

A table lists *parts* (an embedding, a linear layer, a norm, ...) in four sections: the base model's embeddings,
one transformer block (repeated per layer), the final norm, and the LM head. :func:`entries` expands a table for
one config into :class:`Entry` rows, one per twinlm tensor, which import and export walk in the same order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..config import ModelConfig
from ..errors import CheckpointError

# Part kinds. tensor: one tensor, named in full; linear: .weight (+ .bias); conv1d: GPT-2's Conv1D, a linear stored
# transposed; qkv: twinlm's fused QKV from three HF linears; norm: .weight (+ .bias for LayerNorm, not RMSNorm).
TENSOR, LINEAR, CONV1D, QKV, NORM = "tensor", "linear", "conv1d", "qkv", "norm"


@dataclass(frozen=True)
class Entry:
    """One twinlm tensor and the Hugging Face tensor(s) it is made of.

    op: 'copy'; 'cat' (twinlm's fused QKV is the HF q, k, v concatenated along dim 0); 't' (GPT-2's Conv1D
    stores (in, out), the transpose of nn.Linear's (out, in)).
    """

    twin: str
    hf: tuple[str, ...]
    op: str = "copy"


@dataclass(frozen=True)
class Part:
    """One twinlm module (or tensor) and its Hugging Face name(s), relative to the section it sits in."""

    kind: str
    twin: str
    hf: tuple[str, ...]
    bias: bool | None = True  # linears and QKV: None means config.bias decides (Llama); True/False are fixed
    when: str | None = None  # "token_types": only with type_vocab_size; "untied": only without tied embeddings


@dataclass(frozen=True)
class Table:
    """Every tensor name of one family; HF names of ``base``, ``block`` and ``final`` sit under the model prefix."""

    prefix: str  # the base model's prefix inside a task (*For*) model
    base: tuple[Part, ...]  # embeddings: twin names under "backbone."
    layer: str  # the HF name of block {i}
    block: tuple[Part, ...]  # twin names under "backbone.blocks.{i}.", HF names under ``layer``
    final: tuple[Part, ...]  # after the blocks: twin names under "backbone."
    head: tuple[Part, ...]  # the LM head, when the file has one: twin names under "head.", HF names absolute
    extra_heads: tuple[str, ...]  # task-head tensors (pooler, classifier, QA) handed back, not imported

    @property
    def word_embedding(self) -> str:
        """HF name (under the prefix) of the word embedding, which a tied decoder shares."""
        return self.base[0].hf[0]

    @property
    def decoder(self) -> str:
        """HF name of the LM-head decoder weight, stored only when it is not tied."""
        return next(p.hf[0] for p in self.head if p.twin == "decoder.weight")


def _t(twin: str, hf: str, when: str | None = None) -> Part:
    return Part(TENSOR, twin, (hf,), when=when)


def _lin(twin: str, hf: str, bias: bool | None = True) -> Part:
    return Part(LINEAR, twin, (hf,), bias)


def _norm(twin: str, hf: str) -> Part:
    return Part(NORM, twin, (hf,))


def _qkv(twin: str, hf: str, names: tuple[str, str, str], bias: bool | None = True) -> Part:
    return Part(QKV, twin, tuple(hf + n for n in names), bias)


def _post_norm_layer(attn: str, qkv: tuple[str, str, str], attn_out: str, norm1: str, up: str, down: str,
                     norm2: str) -> tuple[Part, ...]:
    """The block of BERT, RoBERTa and DistilBERT: attention, norm, feed-forward, norm (only the names differ)."""
    return (_qkv("attn.qkv", attn, qkv), _lin("attn.out", attn_out), _norm("norm1", norm1),
            _lin("ffn.up", up), _lin("ffn.down", down), _norm("norm2", norm2))


def _encoder_embeddings(token_types: bool) -> tuple[Part, ...]:
    """Word and position embeddings (+ token types) and their LayerNorm, as BERT-like encoders name them."""
    out = [_t("tok_emb.weight", "embeddings.word_embeddings.weight"),
           _t("pos_emb.weight", "embeddings.position_embeddings.weight")]
    if token_types:
        out.append(_t("type_emb.weight", "embeddings.token_type_embeddings.weight", "token_types"))
    return (*out, _norm("emb_norm", "embeddings.LayerNorm"))


def _mlm_head(dense: str, norm: str, bias: str, decoder: str) -> tuple[Part, ...]:
    """BERT-style MLM head: dense + activation + norm, then the decoder (tied unless stored) and its bias."""
    return (_lin("dense", dense), _norm("norm", norm), _t("bias", bias), _t("decoder.weight", decoder, "untied"))


_BERT_LAYER = _post_norm_layer("attention.self.", ("query", "key", "value"), "attention.output.dense",
                               "attention.output.LayerNorm", "intermediate.dense", "output.dense", "output.LayerNorm")

TABLES: dict[str, Table] = {
    "bert": Table(
        prefix="bert.", base=_encoder_embeddings(True), layer="encoder.layer.{i}.", block=_BERT_LAYER, final=(),
        head=_mlm_head("cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm",
                       "cls.predictions.bias", "cls.predictions.decoder.weight"),
        extra_heads=("pooler.", "bert.pooler.", "classifier.", "qa_outputs.", "cls.seq_relationship."),
    ),
    "roberta": Table(
        prefix="roberta.", base=_encoder_embeddings(True), layer="encoder.layer.{i}.", block=_BERT_LAYER, final=(),
        head=_mlm_head("lm_head.dense", "lm_head.layer_norm", "lm_head.bias", "lm_head.decoder.weight"),
        extra_heads=("pooler.", "roberta.pooler.", "classifier.", "qa_outputs."),
    ),
    "distilbert": Table(
        prefix="distilbert.", base=_encoder_embeddings(False), layer="transformer.layer.{i}.",
        block=_post_norm_layer("attention.", ("q_lin", "k_lin", "v_lin"), "attention.out_lin", "sa_layer_norm",
                               "ffn.lin1", "ffn.lin2", "output_layer_norm"),
        final=(),
        head=_mlm_head("vocab_transform", "vocab_layer_norm", "vocab_projector.bias", "vocab_projector.weight"),
        extra_heads=("pre_classifier.", "classifier.", "qa_outputs."),
    ),
    "gpt2": Table(
        prefix="transformer.", base=(_t("tok_emb.weight", "wte.weight"), _t("pos_emb.weight", "wpe.weight")),
        layer="h.{i}.",
        block=(_norm("norm1", "ln_1"), Part(CONV1D, "attn.qkv", ("attn.c_attn",)),
               Part(CONV1D, "attn.out", ("attn.c_proj",)), _norm("norm2", "ln_2"),
               Part(CONV1D, "ffn.up", ("mlp.c_fc",)), Part(CONV1D, "ffn.down", ("mlp.c_proj",))),
        final=(_norm("final_norm", "ln_f"),),
        head=(_t("decoder.weight", "lm_head.weight", "untied"),),
        extra_heads=("score.", "qa_outputs."),
    ),
    "llama": Table(
        prefix="model.", base=(_t("tok_emb.weight", "embed_tokens.weight"),), layer="layers.{i}.",
        block=(_norm("norm1", "input_layernorm"), _qkv("attn.qkv", "self_attn.", ("q_proj", "k_proj", "v_proj"), None),
               _lin("attn.out", "self_attn.o_proj", None), _norm("norm2", "post_attention_layernorm"),
               _lin("ffn.gate", "mlp.gate_proj", None), _lin("ffn.up", "mlp.up_proj", None),
               _lin("ffn.down", "mlp.down_proj", None)),
        final=(_norm("final_norm", "norm"),),
        head=(_t("decoder.weight", "lm_head.weight", "untied"),),
        extra_heads=("score.", "qa_outputs."),
    ),
}
SUPPORTED_FAMILIES = tuple(TABLES)
# Decoder-only families: their LM head is only the decoder (tied or stored), always present, no MLM transform.
CAUSAL_FAMILIES = ("gpt2", "llama")

# Buffers some Hugging Face versions saved alongside the weights; they carry no learned values.
IGNORED = re.compile(r"(^|\.)(position_ids|attn\.bias|attn\.masked_bias|rotary_emb\.inv_freq)$")
# Tied copies of the decoder (and its bias) that older transformers versions saved next to the word embedding.
TIED_COPIES = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias", "lm_head.decoder.weight",
               "lm_head.decoder.bias", "vocab_projector.weight", "lm_head.weight")
# Any of these prefixes in a file means it carries an LM head (GPT-2 and Llama always count as having one).
HEAD_MARKERS = ("cls.predictions.", "lm_head.", "vocab_transform.")


def table(family: str) -> Table:
    """The name table of ``family``; CheckpointError for a family twinlm does not know."""
    if family not in TABLES:
        raise CheckpointError(f"model family {family!r} is not supported; choose one of "
                              f"{', '.join(SUPPORTED_FAMILIES)}")
    return TABLES[family]


def _expand(part: Part, twin: str, hf: str, config: ModelConfig) -> list[Entry]:
    """The Entry rows of one part, its names prefixed by ``twin`` and ``hf``."""
    absent = {"token_types": not config.type_vocab_size, "untied": config.tie_embeddings}
    if part.when is not None and absent[part.when]:
        return []
    t, names = twin + part.twin, tuple(hf + n for n in part.hf)
    if part.kind == TENSOR:
        return [Entry(t, names)]
    if part.kind == NORM:
        out = [Entry(f"{t}.weight", (f"{names[0]}.weight",))]
        has_bias = config.norm_type == "layernorm"  # RMSNorm has a scale only
    else:
        op = {LINEAR: "copy", CONV1D: "t", QKV: "cat"}[part.kind]
        out = [Entry(f"{t}.weight", tuple(f"{n}.weight" for n in names), op)]
        has_bias = config.bias if part.bias is None else part.bias
    if has_bias:  # biases are vectors: GPT-2's Conv1D bias needs no transpose, a QKV bias is still concatenated
        out.append(Entry(f"{t}.bias", tuple(f"{n}.bias" for n in names), "cat" if part.kind == QKV else "copy"))
    return out


def entries(family: str, config: ModelConfig, prefix: str, has_head: bool) -> list[Entry]:
    """The twinlm <-> HF rows of ``family`` for ``config`` (``prefix``: 'bert.', 'model.' or '' for a bare model)."""
    tab = table(family)
    out: list[Entry] = []
    for part in tab.base:
        out += _expand(part, "backbone.", prefix, config)
    for i in range(config.n_layers):
        for part in tab.block:
            out += _expand(part, f"backbone.blocks.{i}.", prefix + tab.layer.format(i=i), config)
    for part in tab.final:
        out += _expand(part, "backbone.", prefix, config)
    if has_head:
        for part in tab.head:
            out += _expand(part, "head.", "", config)
    return out


def qkv_sizes(config: ModelConfig) -> list[int]:
    """Rows of the q, k and v parts of twinlm's fused QKV (k and v are smaller under grouped-query attention)."""
    kv = config.kv_heads * config.head_dim
    return [config.d_model, kv, kv]
