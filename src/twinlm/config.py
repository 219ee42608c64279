"""Model configuration: one dataclass for both paradigms, named presets, config.json read/write."""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CheckpointError, ConfigError

ATTENTION_KINDS = ("bidirectional", "causal")
NORM_PLACEMENTS = ("pre", "post")
ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu")
ATTENTION_IMPLS = ("sdpa", "math")
NORM_TYPES = ("layernorm", "rmsnorm")
POSITIONS = ("learned", "rotary")
MLP_KINDS = ("standard", "swiglu")
# The words, once: an *objective* is what a model was trained on (mlm, clm or hybrid); the *mask* is how attention
# sees the sequence (bidirectional or causal); the *paradigm* is what the model can do (masked: fill blanks;
# causal: continue text). A hybrid model was trained both ways on the same weights, so it has both paradigms.
OBJECTIVES = ("mlm", "clm", "hybrid")
PARADIGMS = ("masked", "causal")
PARADIGMS_OF = {"mlm": ("masked",), "clm": ("causal",), "hybrid": ("masked", "causal")}
DEFAULT_OBJECTIVE = {"bidirectional": "mlm", "causal": "clm"}  # what a model without a recorded objective is


@dataclass
class ModelConfig:
    """Everything that fixes the shape and behaviour of the backbone.

    The two paradigms share every field but ``attention``: ``bidirectional`` for a masked LM,
    ``causal`` for a causal LM. Hybrid training flips it per step on the same weights. ``objective`` records what
    the weights were trained for (mlm, clm or hybrid; by default the one that matches ``attention``), and so which
    paradigms the model serves: check it with :func:`require`, never by testing strings.
    """

    vocab_size: int = 8192
    n_layers: int = 2
    d_model: int = 128
    n_heads: int = 4
    d_ff: int = 512
    max_positions: int = 256
    dropout: float = 0.0
    norm: str = "pre"  # "pre" (GPT-2) or "post" (BERT) layer-norm placement
    activation: str = "gelu"
    tie_embeddings: bool = True
    attention: str = "bidirectional"  # the default mask at inference
    objective: str | None = None  # mlm | clm | hybrid; None: derived from ``attention`` (mlm or clm)
    layer_norm_eps: float = 1e-5
    bias: bool = True
    type_vocab_size: int = 0  # BERT's segment embeddings; 0 means none
    head_transform: bool = False  # BERT's MLM head dense+act+norm before the tied decoder
    attn_impl: str = "sdpa"  # "sdpa" (fast) or "math" (the explicit equation, for reading and tests)
    pad_token_id: int = 0
    # Backbone options that let one backbone express BERT, RoBERTa, DistilBERT, GPT-2 and Llama-style models.
    head_bias: bool = True  # GPT-2 and Llama have no LM-head bias
    position_offset: int = 0  # RoBERTa: position ids start at padding_idx + 1 in its embedding table
    norm_type: str = "layernorm"  # "rmsnorm": Llama's scale-only RMS normalisation
    position: str = "learned"  # "rotary": RoPE on queries and keys instead of a position embedding table
    rope_theta: float = 10000.0
    mlp: str = "standard"  # "swiglu": down(silu(gate(x)) * up(x))
    n_kv_heads: int = 0  # grouped-query attention: key/value heads; 0 means n_heads
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes (e.g. origin), kept in config.json

    def __post_init__(self) -> None:
        self._check_types()
        if "objective" in self.extra:  # config.json files written before the typed field kept it among the notes
            extra = dict(self.extra)
            old = extra.pop("objective")  # always dropped, so it is never saved twice
            self.objective = self.objective or old
            self.extra = extra
        if self.objective is None:
            self.objective = DEFAULT_OBJECTIVE.get(self.attention)
        self.validate()

    def _check_types(self) -> None:
        """Raise ConfigError naming the first field of the wrong type (a config.json edited by hand or damaged)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            if default is None:  # an optional name (objective): None or text
                ok, want = value is None or isinstance(value, str), "a name or null"
            elif isinstance(default, bool):
                ok, want = isinstance(value, bool), "true or false"
            elif isinstance(default, int):
                ok, want = isinstance(value, numbers.Integral) and not isinstance(value, bool), "a whole number"
            elif isinstance(default, float):
                ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
                want = "a finite number"
            else:
                ok, want = isinstance(value, type(default)), f"a {type(default).__name__}"
            if not ok:
                shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
                raise ConfigError(f"config field '{f.name}' is {shown}; expected {want}")

    def validate(self) -> None:
        """Raise ConfigError naming the first field whose value cannot work."""
        self._check_types()
        for name in ("vocab_size", "n_layers", "d_model", "n_heads", "d_ff", "max_positions"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"config field '{name}' must be a positive integer, got {getattr(self, name)!r}")
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        choices = {
            "attention": ATTENTION_KINDS,
            "norm": NORM_PLACEMENTS,
            "activation": ACTIVATIONS,
            "attn_impl": ATTENTION_IMPLS,
            "norm_type": NORM_TYPES,
            "position": POSITIONS,
            "mlp": MLP_KINDS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                value = getattr(self, name)
                raise ConfigError(f"config field '{name}' is {value!r}; choose one of {', '.join(allowed)}")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"config field 'objective' is {self.objective!r}; choose one of {', '.join(OBJECTIVES)}")
        if self.objective != "hybrid" and DEFAULT_OBJECTIVE[self.attention] != self.objective:
            raise ConfigError(f"config fields disagree: objective={self.objective!r} needs attention="
                              f"{'bidirectional' if self.objective == 'mlm' else 'causal'!r}, got {self.attention!r}")
        if self.n_kv_heads < 0 or self.n_heads % self.kv_heads:
            raise ConfigError(f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads} (0 means n_heads)")
        if self.position_offset < 0:
            raise ConfigError(f"position_offset must be >= 0, got {self.position_offset}")
        if self.position == "rotary" and self.head_dim % 2:
            raise ConfigError(f"rotary positions need an even head dimension, got {self.head_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        """Number of key/value heads (grouped-query attention shares each among n_heads // kv_heads queries)."""
        return self.n_kv_heads or self.n_heads

    @property
    def paradigms(self) -> tuple[str, ...]:
        """What the model can do: ('masked',), ('causal',) or both for a hybrid."""
        return PARADIGMS_OF[self.objective]  # type: ignore[index]

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed (validated again); a new mask re-derives a non-hybrid objective."""
        if "attention" in changes and "objective" not in changes and self.objective != "hybrid":
            changes["objective"] = None
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": "twinlm", **dataclasses.asdict(self)}

    def save(self, folder: str | Path) -> Path:
        """Write config.json into ``folder`` and return its path."""
        path = Path(folder) / "config.json"
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k != "model_type"}
        unknown = sorted(set(data) - known)
        if unknown:
            names = ", ".join(k if k.isidentifier() else repr(k) for k in unknown)  # repr: one line, whatever the key
            raise ConfigError(f"{source}: unknown config field(s) {names}")
        try:
            return cls(**data)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    @classmethod
    def load(cls, folder: str | Path) -> ModelConfig:
        """Read config.json from a model folder (or the file itself)."""
        path = Path(folder)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise CheckpointError(f"{path}: no config.json here; pass a twinlm model or checkpoint folder")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{path}: not valid JSON ({exc}); the file is corrupted") from None
        if not isinstance(data, dict):
            raise CheckpointError(f"{path}: expected a JSON object of config fields; the file is corrupted")
        if data.get("model_type", "twinlm") != "twinlm":
            raise CheckpointError(
                f"{path}: model_type {data.get('model_type')!r} is not a twinlm config"
            )
        return cls.from_dict(data, source=str(path))


def require(model_or_config: Any, paradigm: str, action: str, instead: str = "") -> None:
    """Raise ConfigError unless the model serves ``paradigm`` ('masked' or 'causal'): the one paradigm check.

    ``action`` names what was asked ("fill-mask"); ``instead`` says what to do with this model.
    """
    config = getattr(model_or_config, "config", model_or_config)
    if paradigm not in PARADIGMS:
        raise ConfigError(f"paradigm must be one of {', '.join(PARADIGMS)}, got {paradigm!r}")
    if paradigm in config.paradigms:
        return
    need = "mlm or hybrid" if paradigm == "masked" else "clm or hybrid"
    have = config.paradigms[0]
    raise ConfigError(f"{action} needs a {paradigm} model (objective {need}); this one is a {have} model "
                      f"(objective {config.objective}){'; ' + instead if instead else ''}")


# Sizes follow the well-known models: base is BERT-base / GPT-2-124M.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(n_layers=2, d_model=128, n_heads=4, d_ff=512, max_positions=256),
    "mini": dict(n_layers=4, d_model=256, n_heads=4, d_ff=1024, max_positions=512),
    "small": dict(n_layers=6, d_model=512, n_heads=8, d_ff=2048, max_positions=512),
    "base": dict(n_layers=12, d_model=768, n_heads=12, d_ff=3072, max_positions=1024),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """The named preset with ``overrides`` applied (vocab_size, attention, ...)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return ModelConfig(**{**PRESETS[name], **overrides})
