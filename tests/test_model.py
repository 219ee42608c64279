"""The backbone: what each mask lets a position see, padding, tied weights, the architecture options, encode()."""

from __future__ import annotations

import pytest
import torch

from helpers import peaked_model
from twinlm.config import ModelConfig
from twinlm.model import LanguageModel, pool

V, D, H, F, P, L = 37, 32, 4, 64, 24, 2
ATOL = 1e-5


def make(**kw) -> LanguageModel:
    torch.manual_seed(kw.pop("seed", 0))
    cfg = ModelConfig(**{"vocab_size": V, "n_layers": L, "d_model": D, "n_heads": H, "d_ff": F, "max_positions": P,
                         **kw})
    return LanguageModel(cfg).eval()


def ids(b: int = 2, t: int = 10, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, V, (b, t), generator=g)


def changed_after(x: torch.Tensor, t: int) -> torch.Tensor:
    """x with every token after position t replaced by a different one."""
    y = x.clone()
    y[:, t + 1:] = (x[:, t + 1:] - 3 + 1) % (V - 3) + 3
    assert (y[:, t + 1:] != x[:, t + 1:]).all()
    return y


# --------------------------------------------------------------------------------------------------- the masks


@pytest.mark.parametrize("how", ["config", "override"])
@pytest.mark.parametrize("impl", ["sdpa", "math"])
def test_causal_position_ignores_the_tokens_after_it(how, impl):
    model = peaked_model(V, "causal" if how == "config" else "bidirectional", positions=P, attn_impl=impl)
    kw = {} if how == "config" else {"attention": "causal"}
    x, t = ids(), 4
    with torch.no_grad():
        a, b = model(x, **kw), model(changed_after(x, t), **kw)
    torch.testing.assert_close(a[:, :t + 1], b[:, :t + 1], atol=ATOL, rtol=0)
    assert (a[:, t + 1:] - b[:, t + 1:]).abs().amax() > 1e-2  # the changed positions themselves do change


@pytest.mark.parametrize("how", ["config", "override"])
def test_bidirectional_position_depends_on_the_tokens_after_it(how):
    model = peaked_model(V, "bidirectional" if how == "config" else "causal", positions=P)
    kw = {} if how == "config" else {"attention": "bidirectional"}
    x, t = ids(), 4
    with torch.no_grad():
        a, b = model(x, **kw), model(changed_after(x, t), **kw)
    for pos in range(t + 1):  # every earlier position sees the change
        assert (a[:, pos] - b[:, pos]).abs().amax() > 1e-2, pos


def test_causal_prefix_equals_the_prefix_alone():
    model = peaked_model(V, "causal", positions=P)
    x = ids(t=12)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[:, :7], model(x[:, :7]), atol=ATOL, rtol=0)


def test_the_two_masks_give_different_outputs_on_the_same_weights():
    one_layer = make(n_layers=1, attention="causal")
    x = ids()
    with torch.no_grad():
        causal, bidi = one_layer(x), one_layer(x, attention="bidirectional")
    # in one layer the last position sees every token under either mask; the first sees only itself if causal
    torch.testing.assert_close(causal[:, -1], bidi[:, -1], atol=ATOL, rtol=0)
    assert (causal[:, 0] - bidi[:, 0]).abs().amax() > 1e-4
    two_layers = peaked_model(V, "causal", positions=P)
    with torch.no_grad():  # deeper, the last position reads earlier states that did differ
        assert (two_layers(x)[:, -1] - two_layers(x, attention="bidirectional")[:, -1]).abs().amax() > 1e-2


# ------------------------------------------------------------------------------------------------------ padding


@pytest.mark.parametrize("kind", ["bidirectional", "causal"])
@pytest.mark.parametrize("impl", ["sdpa", "math"])
def test_right_padding_does_not_change_the_real_positions(kind, impl):
    model = peaked_model(V, kind, positions=P, attn_impl=impl)
    short, long = ids(1, 5, seed=2), ids(1, 9, seed=3)
    batch = torch.cat([torch.cat([short, ids(1, 4, seed=4)], 1), long])  # row 0: 5 real tokens + 4 pad slots
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, 5:] = 0
    other = batch.clone()
    other[0, 5:] = ids(1, 4, seed=5)  # different garbage in the padded slots
    with torch.no_grad():
        alone = model(short)
        padded, padded2 = model(batch, mask), model(other, mask)
        long_alone = model(long)
    torch.testing.assert_close(padded[0, :5], alone[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(padded2[0, :5], alone[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(padded[1], long_alone[0], atol=ATOL, rtol=0)  # the full row is unaffected
    if kind == "bidirectional":  # without the mask the padded tokens would be read
        with torch.no_grad():
            unmasked = model(batch)
        assert (unmasked[0, :5] - alone[0]).abs().amax() > 1e-2


def test_all_ones_mask_equals_no_mask():
    model = make()
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(model(x, torch.ones_like(x)), model(x), atol=ATOL, rtol=0)


def test_too_long_sequence_is_refused():
    model = make()
    with pytest.raises(ValueError, match=f"sequence of {P + 1} tokens exceeds max_positions={P}"):
        model(ids(1, P + 1))


# ------------------------------------------------------------------------------------------------- tied weights


def test_tied_embeddings_share_storage_and_are_saved_once():
    model = make(tie_embeddings=True)
    assert model.head.decoder is None
    assert model.head.weight is model.backbone.tok_emb.weight
    assert model.head.weight.data_ptr() == model.backbone.tok_emb.weight.data_ptr()
    assert not any("decoder" in k for k in model.state_dict())
    with torch.no_grad():
        model.backbone.tok_emb.weight[5].fill_(3.0)
    assert torch.equal(model.head.weight[5], torch.full((D,), 3.0))
    # tied: one (V, D) matrix fewer than untied
    assert make(tie_embeddings=False).num_parameters() - model.num_parameters() == V * D


def test_untied_decoder_is_its_own_matrix():
    model = make(tie_embeddings=False)
    assert model.head.weight is model.head.decoder.weight
    assert model.head.weight.data_ptr() != model.backbone.tok_emb.weight.data_ptr()
    assert "head.decoder.weight" in model.state_dict()


def test_tied_logits_are_hidden_times_embedding():
    model = make(tie_embeddings=True)
    x = ids()
    with torch.no_grad():
        h = model.hidden(x)
        expected = h @ model.backbone.tok_emb.weight.T + model.head.bias
        torch.testing.assert_close(model(x), expected, atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------------------- options: shapes, counts


def expected_params(*, tie=True, position="learned", kv_heads=H, mlp="standard", norm_type="layernorm", bias=True,
                    head_bias=True, norm="pre", head_transform=False, type_vocab=0, offset=0) -> int:
    """Parameter count written out from the architecture."""
    b = 1 if bias else 0
    norm_p = 2 * D if norm_type == "layernorm" else D
    kv = kv_heads * (D // H)
    attn = D * (D + 2 * kv) + b * (D + 2 * kv) + D * D + b * D
    ffn = (3 if mlp == "swiglu" else 2) * D * F + b * ((2 if mlp == "swiglu" else 1) * F + D)
    block = attn + ffn + 2 * norm_p
    n = V * D + L * block + norm_p  # embeddings, blocks, one final (pre) or embedding (post) norm
    n += (P + offset) * D if position == "learned" else 0
    n += 0 if tie else V * D
    n += V if head_bias else 0
    n += (D * D + D + norm_p) if head_transform else 0
    n += type_vocab * D
    return n


@pytest.mark.parametrize("options, kw", [
    ({}, {}),
    ({"tie_embeddings": False}, {"tie": False}),
    ({"position": "rotary"}, {"position": "rotary"}),
    ({"n_kv_heads": 1}, {"kv_heads": 1}),
    ({"n_kv_heads": 2}, {"kv_heads": 2}),
    ({"mlp": "swiglu", "activation": "silu"}, {"mlp": "swiglu"}),
    ({"norm_type": "rmsnorm"}, {"norm_type": "rmsnorm"}),
    ({"bias": False, "head_bias": False}, {"bias": False, "head_bias": False}),
    ({"norm": "post", "head_transform": True, "type_vocab_size": 2}, {"norm": "post", "head_transform": True,
                                                                      "type_vocab": 2}),
    ({"position_offset": 2}, {"offset": 2}),
    ({"position": "rotary", "n_kv_heads": 2, "mlp": "swiglu", "activation": "silu", "norm_type": "rmsnorm",
      "bias": False, "head_bias": False, "tie_embeddings": False},
     {"position": "rotary", "kv_heads": 2, "mlp": "swiglu", "norm_type": "rmsnorm", "bias": False,
      "head_bias": False, "tie": False}),
])
def test_options_give_the_right_parameter_count_and_shapes(options, kw):
    model = make(**options)
    assert model.num_parameters() == expected_params(**kw)
    x = ids(3, 7)
    with torch.no_grad():
        assert model(x).shape == (3, 7, V)
        assert model.hidden(x).shape == (3, 7, D)
        assert model.encode(x).shape == (3, D)
        assert torch.isfinite(model(x)).all()


def test_num_parameters_without_embeddings():
    learned, rotary = make(), make(position="rotary")
    assert learned.num_parameters(exclude_embeddings=True) == learned.num_parameters() - V * D - P * D
    assert rotary.num_parameters(exclude_embeddings=True) == rotary.num_parameters() - V * D
    assert learned.num_parameters(True) == rotary.num_parameters(True)


def test_module_choices_follow_the_config():
    model = make(norm_type="rmsnorm", mlp="swiglu", activation="silu", position="rotary", n_kv_heads=2)
    block = model.backbone.blocks[0]
    assert isinstance(block.norm1, torch.nn.RMSNorm) and isinstance(model.backbone.final_norm, torch.nn.RMSNorm)
    assert block.ffn.gate is not None and block.ffn.gate.weight.shape == (F, D)
    assert model.backbone.pos_emb is None
    assert block.attn.qkv.weight.shape == (D + 2 * 2 * (D // H), D)
    post = make(norm="post")
    assert post.backbone.final_norm is None and isinstance(post.backbone.emb_norm, torch.nn.LayerNorm)


def test_gqa_cache_holds_only_the_key_value_heads():
    model = make(attention="causal", n_kv_heads=2, position="rotary")
    with torch.no_grad():
        _, caches = model.backbone(ids(2, 6))
    assert len(caches) == L
    k, v = caches[0]
    assert k.shape == v.shape == (2, 2, 6, D // H)


def test_gqa_with_one_group_per_head_equals_multi_head():
    """n_kv_heads == n_heads is plain multi-head attention: the same weights give the same outputs."""
    a, b = make(n_kv_heads=0), make(n_kv_heads=H)
    b.load_state_dict(a.state_dict())
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), atol=ATOL, rtol=0)


def test_rotary_depends_only_on_relative_positions():
    rotary, learned = make(position="rotary", attention="causal"), make(attention="causal")
    x = ids(1, 8)
    pos = torch.arange(8).unsqueeze(0)
    with torch.no_grad():
        torch.testing.assert_close(rotary(x, position_ids=pos + 5), rotary(x, position_ids=pos), atol=1e-4, rtol=0)
        assert (learned(x, position_ids=pos + 5) - learned(x, position_ids=pos)).abs().amax() > 1e-3


def test_rotary_model_still_sees_order():
    model = peaked_model(V, "bidirectional", positions=P, position="rotary")
    x = ids(1, 8)
    with torch.no_grad():
        a, b = model(x), model(x.flip(1)).flip(1)  # the same tokens in reverse order
    assert (a - b).abs().amax() > 1e-2


def test_token_types_change_outputs_only_when_configured():
    typed, plain = make(type_vocab_size=2), make()
    x = ids()
    types = torch.ones_like(x)
    with torch.no_grad():
        assert (typed(x, token_type_ids=types) - typed(x)).abs().amax() > 1e-4
        torch.testing.assert_close(typed(x, token_type_ids=torch.zeros_like(x)), typed(x), atol=0, rtol=0)
        assert plain.backbone.type_emb is None


def test_position_offset_reads_later_rows_of_the_table():
    model = make(position_offset=2)
    table = model.backbone.pos_emb.weight
    assert table.shape == (P + 2, D)
    x = ids(1, 5)
    with torch.no_grad():
        before = model.hidden(x)
        table[:2].fill_(100.0)  # rows below the offset and after position 4 are never read
        table[7:].fill_(100.0)
        torch.testing.assert_close(model.hidden(x), before, atol=0, rtol=0)
        table[2:7].add_(torch.randn(5, D))  # rows offset .. offset + T are
        assert (model.hidden(x) - before).abs().amax() > 1e-3


def test_residual_projections_get_the_scaled_init():
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(vocab_size=V, n_layers=8, d_model=128, n_heads=4, d_ff=512, max_positions=P))
    scaled = model.backbone.blocks[0].ffn.down.weight.std().item()
    plain = model.backbone.blocks[0].ffn.up.weight.std().item()
    assert plain == pytest.approx(0.02, rel=0.05)
    assert scaled == pytest.approx(0.02 / 4, rel=0.05)  # 0.02 / sqrt(2 * 8)
    assert torch.count_nonzero(model.backbone.blocks[0].attn.qkv.bias) == 0


# ------------------------------------------------------------------------------------------------------ encode()


def test_encode_mean_pooling_ignores_padding():
    model = peaked_model(V, "causal", positions=P)  # encode() is bidirectional whatever the config says
    short, long = ids(1, 4, seed=6), ids(1, 7, seed=7)
    batch = torch.cat([torch.cat([short, ids(1, 3, seed=8)], 1), long])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0], [1] * 7])
    with torch.no_grad():
        pooled = model.encode(batch, mask)
        alone = model.encode(short)
        by_hand = model.hidden(short, attention="bidirectional")[0].mean(0)
    torch.testing.assert_close(pooled[0], alone[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(alone[0], by_hand, atol=ATOL, rtol=0)
    torch.testing.assert_close(pooled[1], model.encode(long)[0], atol=ATOL, rtol=0)


def test_pool_modes():
    h = torch.arange(2 * 4 * 3, dtype=torch.float).view(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    assert torch.equal(pool(h, mask, "cls"), h[:, 0])
    assert torch.equal(pool(h, mask, "last"), torch.stack([h[0, 1], h[1, 3]]))
    assert torch.equal(pool(h, mask, "mean"), torch.stack([h[0, :2].mean(0), h[1].mean(0)]))
    assert torch.equal(pool(h, None, "mean"), h.mean(1))
    assert torch.equal(pool(h, None, "last"), h[:, -1])
    assert pool(h, mask, "none") is h
    with pytest.raises(ValueError, match="pooling 'max' is unknown"):
        pool(h, mask, "max")


def test_encode_none_returns_every_position():
    model = make()
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(model.encode(x, pooling="none"), model.hidden(x, attention="bidirectional"),
                                   atol=0, rtol=0)


# ------------------------------------------------------------------------------------------------------ dropout


def test_dropout_is_off_in_eval_and_on_in_train():
    model = make(dropout=0.3)
    x = ids()
    with torch.no_grad():
        torch.manual_seed(1)
        a = model(x)
        torch.manual_seed(2)
        b = model(x)
        assert torch.equal(a, b)
        model.train()
        torch.manual_seed(1)
        c = model(x)
        torch.manual_seed(2)
        d = model(x)
    assert (c - d).abs().amax() > 1e-4
    assert (c - a).abs().amax() > 1e-4


def test_zero_dropout_train_mode_equals_eval():
    model = make(dropout=0.0)
    x = ids()
    with torch.no_grad():
        a = model(x)
        model.train()
        torch.testing.assert_close(model(x), a, atol=ATOL, rtol=0)
