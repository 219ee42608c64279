"""Config mapping both ways: a Hugging Face config.json <-> the twinlm ModelConfig that computes the same model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..config import ModelConfig
from ..errors import CheckpointError, ConfigError
from .names import CAUSAL_FAMILIES, SUPPORTED_FAMILIES

# Hugging Face activation names -> twinlm's; "gelu" is the exact erf form in both.
_ACT_IN = {
    "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu",
    "silu": "silu", "swish": "silu",
}
# gelu_pytorch_tanh is F.gelu(approximate="tanh"), bit-identical to twinlm's gelu_tanh.
_ACT_OUT = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu", "silu": "silu"}


def _act(name: Any, where: str) -> str:
    """twinlm's name for a Hugging Face activation; ConfigError listing the ones twinlm reads."""
    if name not in _ACT_IN:
        raise ConfigError(f"{where}: activation {name!r} is not supported; twinlm reads {', '.join(_ACT_IN)}")
    return _ACT_IN[name]


def _rope_theta(c: Mapping[str, Any], where: str) -> float:
    """RoPE base from either config layout (transformers 4: rope_theta/rope_scaling; 5: rope_parameters)."""
    params = c.get("rope_parameters") or {}
    scaling = c.get("rope_scaling") or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind != "default":
        raise ConfigError(f"{where}: rope_type {kind!r} is not supported (only the default rotary embedding)")
    return float(params.get("rope_theta", c.get("rope_theta", 10000.0)))


def config_from_hf(c: Mapping[str, Any], *, has_head: bool, tied: bool, where: str = "config.json") -> ModelConfig:
    """The twinlm ModelConfig that computes what the Hugging Face config ``c`` describes."""
    family = c.get("model_type")
    origin = {"hf": {"model_type": family, "architectures": c.get("architectures")}}
    try:
        if family in ("bert", "roberta"):
            if c.get("position_embedding_type", "absolute") != "absolute":
                raise ConfigError(f"{where}: position_embedding_type {c['position_embedding_type']!r} is not "
                                  "supported (only 'absolute')")
            offset = int(c.get("pad_token_id", 1)) + 1 if family == "roberta" else 0
            return ModelConfig(
                vocab_size=c["vocab_size"], n_layers=c["num_hidden_layers"], d_model=c["hidden_size"],
                n_heads=c["num_attention_heads"], d_ff=c["intermediate_size"],
                max_positions=c["max_position_embeddings"] - offset, position_offset=offset,
                norm="post", activation=_act(c.get("hidden_act", "gelu"), where), attention="bidirectional",
                layer_norm_eps=float(c.get("layer_norm_eps", 1e-12)), type_vocab_size=int(c.get("type_vocab_size", 2)),
                head_transform=has_head, tie_embeddings=tied, pad_token_id=int(c.get("pad_token_id") or 0),
                extra=origin,
            )
        if family == "distilbert":
            return ModelConfig(
                vocab_size=c["vocab_size"], n_layers=c["n_layers"], d_model=c["dim"], n_heads=c["n_heads"],
                d_ff=c["hidden_dim"], max_positions=c["max_position_embeddings"], norm="post",
                activation=_act(c.get("activation", "gelu"), where), attention="bidirectional",
                layer_norm_eps=1e-12,  # fixed in DistilBERT's code, not in its config
                head_transform=has_head, tie_embeddings=tied, pad_token_id=int(c.get("pad_token_id") or 0),
                extra=origin,
            )
        if family == "gpt2":
            if not c.get("scale_attn_weights", True) or c.get("scale_attn_by_inverse_layer_idx", False):
                raise ConfigError(f"{where}: non-standard GPT-2 attention scaling is not supported")
            d = c["n_embd"]
            return ModelConfig(
                vocab_size=c["vocab_size"], n_layers=c["n_layer"], d_model=d, n_heads=c["n_head"],
                d_ff=c.get("n_inner") or 4 * d, max_positions=c["n_positions"], norm="pre",
                activation=_act(c.get("activation_function", "gelu_new"), where), attention="causal",
                layer_norm_eps=float(c.get("layer_norm_epsilon", 1e-5)), head_bias=False, tie_embeddings=tied,
                pad_token_id=int(c.get("pad_token_id") or c.get("eos_token_id") or 0), extra=origin,
            )
        if family == "llama":
            d, heads = c["hidden_size"], c["num_attention_heads"]
            if c.get("head_dim") not in (None, d // heads):
                raise ConfigError(f"{where}: head_dim {c['head_dim']} != hidden_size / num_attention_heads "
                                  "is not supported")
            if bool(c.get("attention_bias", False)) != bool(c.get("mlp_bias", False)):
                raise ConfigError(f"{where}: attention_bias and mlp_bias must agree (twinlm has one 'bias' flag)")
            return ModelConfig(
                vocab_size=c["vocab_size"], n_layers=c["num_hidden_layers"], d_model=d, n_heads=heads,
                n_kv_heads=int(c.get("num_key_value_heads") or heads), d_ff=c["intermediate_size"],
                max_positions=c.get("max_position_embeddings", 2048), norm="pre", norm_type="rmsnorm",
                position="rotary", rope_theta=_rope_theta(c, where), mlp="swiglu",
                activation=_act(c.get("hidden_act", "silu"), where), attention="causal",
                layer_norm_eps=float(c.get("rms_norm_eps", 1e-6)), bias=bool(c.get("attention_bias", False)),
                head_bias=False, tie_embeddings=tied, pad_token_id=int(c.get("pad_token_id") or 0), extra=origin,
            )
    except KeyError as exc:
        raise ConfigError(f"{where}: field {exc.args[0]!r} is missing from the {family} config") from None
    except (TypeError, ValueError, AttributeError) as exc:  # a field of the wrong JSON type
        raise ConfigError(f"{where}: a field of the {family} config has the wrong type ({exc})") from None
    except ConfigError as exc:  # from ModelConfig's own checks, which do not know the file
        raise ConfigError(str(exc) if str(exc).startswith(where) else f"{where}: {exc}") from None
    raise CheckpointError(f"{where}: model_type {family!r} is not supported; twinlm imports "
                          f"{', '.join(SUPPORTED_FAMILIES)}")


_ARCH = {
    ("bert", True): "BertForMaskedLM", ("bert", False): "BertModel",
    ("roberta", True): "RobertaForMaskedLM", ("roberta", False): "RobertaModel",
    ("distilbert", True): "DistilBertForMaskedLM", ("distilbert", False): "DistilBertModel",
    ("gpt2", True): "GPT2LMHeadModel", ("llama", True): "LlamaForCausalLM",
}


def check_exportable(config: ModelConfig, family: str, head_bias_zero: bool) -> None:
    """Raise ConfigError naming every config field the family cannot express."""
    c = config
    want: dict[str, Any] = {"position": "learned", "norm_type": "layernorm", "mlp": "standard", "bias": True}
    if family in ("bert", "roberta", "distilbert"):
        want.update(norm="post")
    if family == "distilbert":
        want.update(type_vocab_size=0, layer_norm_eps=1e-12)
    if family == "roberta":
        want.update(position_offset=c.pad_token_id + 1)
    else:
        want.update(position_offset=0)
    if family == "gpt2":
        want.update(norm="pre", type_vocab_size=0)
    if family == "llama":
        want = {"norm": "pre", "norm_type": "rmsnorm", "position": "rotary", "mlp": "swiglu", "type_vocab_size": 0,
                "position_offset": 0}
    bad = [f"{k}={getattr(c, k)!r} (needs {v!r})" for k, v in want.items() if getattr(c, k) != v]
    if c.activation not in _ACT_OUT:
        bad.append(f"activation={c.activation!r}")
    if family in CAUSAL_FAMILIES and c.head_transform:
        bad.append("head_transform=True (needs False)")
    if family in CAUSAL_FAMILIES and not head_bias_zero:
        bad.append("a non-zero LM-head bias (the family has none)")
    if family == "llama" and c.activation != "silu":
        bad.append(f"activation={c.activation!r} (needs 'silu')")
    if bad:
        raise ConfigError(f"this model cannot be exported as {family}: {'; '.join(bad)}")


def hf_config_from(config: ModelConfig, family: str) -> dict[str, Any]:
    """The Hugging Face config.json (as a dict) for a twinlm config of ``family``."""
    c = config
    act = _ACT_OUT[c.activation]
    arch = _ARCH[(family, c.head_transform or family in CAUSAL_FAMILIES)]
    base: dict[str, Any] = {"model_type": family, "architectures": [arch], "vocab_size": c.vocab_size,
                            "pad_token_id": c.pad_token_id, "tie_word_embeddings": c.tie_embeddings}
    if family in ("bert", "roberta"):
        base.update(hidden_size=c.d_model, num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads,
                    intermediate_size=c.d_ff, hidden_act=act,
                    max_position_embeddings=c.max_positions + c.position_offset,
                    # type_vocab_size 0 becomes one all-zero type row: adding zeros changes nothing
                    type_vocab_size=max(c.type_vocab_size, 1), layer_norm_eps=c.layer_norm_eps,
                    position_embedding_type="absolute", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    elif family == "distilbert":
        base.update(dim=c.d_model, n_layers=c.n_layers, n_heads=c.n_heads, hidden_dim=c.d_ff, activation=act,
                    max_position_embeddings=c.max_positions, sinusoidal_pos_embds=False, dropout=0.0,
                    attention_dropout=0.0)
    elif family == "gpt2":
        base.update(n_embd=c.d_model, n_layer=c.n_layers, n_head=c.n_heads, n_inner=c.d_ff, n_positions=c.max_positions,
                    activation_function=act, layer_norm_epsilon=c.layer_norm_eps, resid_pdrop=0.0, embd_pdrop=0.0,
                    attn_pdrop=0.0)
    elif family == "llama":
        base.update(hidden_size=c.d_model, num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads,
                    num_key_value_heads=c.kv_heads, intermediate_size=c.d_ff, hidden_act=act,
                    max_position_embeddings=c.max_positions, rms_norm_eps=c.layer_norm_eps,
                    rope_theta=c.rope_theta, rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},
                    attention_bias=c.bias, mlp_bias=c.bias, head_dim=c.head_dim)
    return base
