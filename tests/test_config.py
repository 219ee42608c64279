"""ModelConfig: presets, validation that names the field, config.json round-trip, the typed objective and require()."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from twinlm.config import PRESETS, ModelConfig, preset, require
from twinlm.errors import CheckpointError, ConfigError

SMALL = dict(vocab_size=50, n_layers=1, d_model=16, n_heads=2, d_ff=32, max_positions=16)


def small(**kw) -> ModelConfig:
    return ModelConfig(**{**SMALL, **kw})


# ----------------------------------------------------------------------------------------------------- presets


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_has_its_sizes_and_takes_overrides(name):
    cfg = preset(name, vocab_size=123, attention="causal")
    for key, value in PRESETS[name].items():
        assert getattr(cfg, key) == value, key
    assert cfg.vocab_size == 123
    assert cfg.attention == "causal" and cfg.objective == "clm"


def test_presets_grow_in_size():
    widths = [PRESETS[n]["d_model"] for n in ("tiny", "mini", "small", "base")]
    depths = [PRESETS[n]["n_layers"] for n in ("tiny", "mini", "small", "base")]
    assert widths == sorted(widths) and len(set(widths)) == 4
    assert depths == sorted(depths)
    base = preset("base")
    assert (base.n_layers, base.d_model, base.n_heads, base.d_ff) == (12, 768, 12, 3072)  # BERT-base / GPT-2-124M


def test_unknown_preset_names_it_and_the_choices():
    with pytest.raises(ConfigError, match="unknown preset 'huge'") as exc:
        preset("huge")
    for name in PRESETS:
        assert name in str(exc.value)


def test_preset_override_is_validated():
    with pytest.raises(ConfigError, match="n_heads"):
        preset("tiny", n_heads=3)  # 128 % 3 != 0


# -------------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize("field", ["vocab_size", "n_layers", "d_model", "n_heads", "d_ff", "max_positions"])
@pytest.mark.parametrize("value", [0, -4])
def test_non_positive_sizes_name_the_field(field, value):
    with pytest.raises(ConfigError, match=f"'{field}' must be a positive integer, got {value}"):
        small(**{field: value})


@pytest.mark.parametrize("field, value", [
    ("attention", "sideways"), ("norm", "middle"), ("activation", "tanh"), ("attn_impl", "flash"),
    ("norm_type", "batchnorm"), ("position", "alibi"), ("mlp", "moe"), ("objective", "seq2seq"),
])
def test_unknown_choice_names_the_field_the_value_and_the_choices(field, value):
    with pytest.raises(ConfigError) as exc:
        small(**{field: value})
    message = str(exc.value)
    assert f"'{field}'" in message and repr(value) in message and "choose one of" in message


def test_indivisible_heads_name_both_fields():
    with pytest.raises(ConfigError, match="d_model=18 must be divisible by n_heads=4"):
        small(d_model=18, n_heads=4)


@pytest.mark.parametrize("kv", [3, -1])
def test_bad_kv_heads(kv):
    with pytest.raises(ConfigError, match="n_kv_heads"):
        small(n_heads=4, d_model=16, n_kv_heads=kv)


def test_valid_kv_heads_and_its_default():
    assert small(n_heads=4, n_kv_heads=2).kv_heads == 2
    assert small(n_heads=4, n_kv_heads=0).kv_heads == 4


def test_rotary_needs_even_head_dim():
    with pytest.raises(ConfigError, match="rotary.*even head dimension, got 3"):
        small(d_model=12, n_heads=4, position="rotary")
    assert small(d_model=12, n_heads=4).head_dim == 3  # learned positions do not care


@pytest.mark.parametrize("dropout", [-0.1, 1.0, 1.5])
def test_dropout_range(dropout):
    with pytest.raises(ConfigError, match="dropout"):
        small(dropout=dropout)


def test_negative_position_offset():
    with pytest.raises(ConfigError, match="position_offset"):
        small(position_offset=-1)


# ------------------------------------------------------------------------------------------ config.json round trip


def test_save_load_round_trip(tmp_path: Path):
    cfg = small(attention="causal", norm="post", activation="silu", norm_type="rmsnorm", position="rotary",
                mlp="swiglu", n_kv_heads=1, rope_theta=500.0, tie_embeddings=False, extra={"origin": "test"})
    path = cfg.save(tmp_path)
    assert path == tmp_path / "config.json"
    data = json.loads(path.read_text())
    assert data["model_type"] == "twinlm" and data["objective"] == "clm" and data["extra"] == {"origin": "test"}
    assert ModelConfig.load(tmp_path) == cfg
    assert ModelConfig.load(path) == cfg  # the file itself works too


def test_from_dict_unknown_field_names_it_and_the_source():
    with pytest.raises(ConfigError, match=r"here\.json: unknown config field\(s\) colour, wings"):
        ModelConfig.from_dict({**SMALL, "wings": 2, "colour": "red"}, source="here.json")


def test_load_refuses_missing_corrupt_and_foreign(tmp_path: Path):
    with pytest.raises(CheckpointError, match="no config.json here"):
        ModelConfig.load(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        ModelConfig.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    with pytest.raises(CheckpointError, match="model_type 'bert' is not a twinlm config"):
        ModelConfig.load(tmp_path)


def test_load_validates_values(tmp_path: Path):
    (tmp_path / "config.json").write_text(json.dumps({**SMALL, "attention": "sideways"}))
    with pytest.raises(ConfigError, match="'attention'"):
        ModelConfig.load(tmp_path)


# ------------------------------------------------------------------------------------------------ the objective


def test_objective_defaults_from_attention():
    assert small().attention == "bidirectional" and small().objective == "mlm"
    assert small(attention="causal").objective == "clm"
    assert small(attention="causal", objective="hybrid").objective == "hybrid"
    assert small(attention="bidirectional", objective="hybrid").objective == "hybrid"


@pytest.mark.parametrize("objective, attention", [("mlm", "causal"), ("clm", "bidirectional")])
def test_objective_that_disagrees_with_the_mask_is_an_error(objective, attention):
    with pytest.raises(ConfigError, match=f"objective='{objective}' needs attention=.*got '{attention}'"):
        small(objective=objective, attention=attention)


def test_old_config_json_with_objective_in_extra(tmp_path: Path):
    old = {"model_type": "twinlm", **SMALL, "attention": "causal", "extra": {"objective": "hybrid", "origin": "v0"}}
    (tmp_path / "config.json").write_text(json.dumps(old))
    cfg = ModelConfig.load(tmp_path)
    assert cfg.objective == "hybrid"
    assert cfg.extra == {"origin": "v0"}
    # written back, the objective is the typed field and the note is gone
    (tmp_path / "again").mkdir()
    data = json.loads(cfg.save(tmp_path / "again").read_text())
    assert data["objective"] == "hybrid" and data["extra"] == {"origin": "v0"}


def test_old_extra_objective_does_not_mutate_the_callers_dict():
    notes = {"objective": "hybrid"}
    cfg = small(extra=notes)
    assert cfg.objective == "hybrid" and cfg.extra == {}
    assert notes == {"objective": "hybrid"}


def test_old_extra_objective_is_validated_against_the_mask():
    with pytest.raises(ConfigError, match="objective='clm'"):
        small(attention="bidirectional", extra={"objective": "clm"})


def test_typed_objective_wins_and_the_old_note_is_removed():
    cfg = ModelConfig.from_dict({**SMALL, "objective": "mlm", "extra": {"objective": "hybrid"}})
    assert cfg.objective == "mlm"
    assert "objective" not in cfg.extra


def test_replace_rederives_a_non_hybrid_objective():
    mlm = small()
    clm = mlm.replace(attention="causal")
    assert (clm.attention, clm.objective) == ("causal", "clm")
    assert (mlm.attention, mlm.objective) == ("bidirectional", "mlm")  # the original is untouched
    back = clm.replace(attention="bidirectional")
    assert back.objective == "mlm" and back == mlm


def test_replace_keeps_hybrid_and_explicit_objectives():
    hybrid = small(attention="causal", objective="hybrid")
    assert hybrid.replace(attention="bidirectional").objective == "hybrid"
    assert small().replace(n_layers=3).objective == "mlm"
    assert small().replace(attention="causal", objective="hybrid").objective == "hybrid"
    with pytest.raises(ConfigError, match="disagree"):
        small().replace(attention="causal", objective="mlm")


def test_replace_is_validated():
    with pytest.raises(ConfigError, match="'d_model' must be a positive integer"):
        small().replace(d_model=0)


def test_paradigms():
    assert small().paradigms == ("masked",)
    assert small(attention="causal").paradigms == ("causal",)
    assert set(small(objective="hybrid").paradigms) == {"masked", "causal"}


# ---------------------------------------------------------------------------------------------------- require()


@pytest.mark.parametrize("paradigm", ["masked", "causal"])
@pytest.mark.parametrize("attention", ["bidirectional", "causal"])
def test_require_passes_for_hybrid_both_ways(paradigm, attention):
    cfg = small(attention=attention, objective="hybrid")
    assert require(cfg, paradigm, "anything") is None
    assert require(SimpleNamespace(config=cfg), paradigm, "anything") is None  # a model works as well


def test_require_passes_for_the_matching_paradigm():
    require(small(), "masked", "fill-mask")
    require(small(attention="causal"), "causal", "generate")


def test_require_message_for_a_causal_model_asked_to_fill_masks():
    with pytest.raises(ConfigError) as exc:
        require(small(attention="causal"), "masked", "fill-mask", "use `twinlm generate`")
    assert str(exc.value) == ("fill-mask needs a masked model (objective mlm or hybrid); this one is a causal model "
                              "(objective clm); use `twinlm generate`")


def test_require_message_for_a_masked_model_asked_to_generate():
    model = SimpleNamespace(config=small())
    with pytest.raises(ConfigError) as exc:
        require(model, "causal", "generate")
    assert str(exc.value) == ("generate needs a causal model (objective clm or hybrid); this one is a masked model "
                              "(objective mlm)")


def test_require_refuses_an_unknown_paradigm():
    with pytest.raises(ConfigError, match="paradigm must be one of masked, causal, got 'seq2seq'"):
        require(small(), "seq2seq", "translate")
