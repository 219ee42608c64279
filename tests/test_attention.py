"""The explicit equation and SDPA agree; the causal mask is causal and the bidirectional one is not."""

from __future__ import annotations

import pytest
import torch

from helpers import cached_logits
from twinlm.attention import KVBuffer, build_mask, causal_mask, math_attention, sdpa_attention
from twinlm.config import ModelConfig
from twinlm.model import LanguageModel


def _padded_batch(vocab: int, B: int = 3, T: int = 12):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 8:] = 0  # right padding
    mask[2, :4] = 0  # left padding
    return ids, mask


def test_causal_mask_values():
    m = causal_mask(3, 3)
    assert (m.diagonal() == 0).all() and m[0, 1] < -1e30 and m[2, 0] == 0
    # with a cache the 2 queries are the last of 5 keys
    m = causal_mask(2, 5)
    assert (m[0, :4] == 0).all() and m[0, 4] < -1e30 and (m[1] == 0).all()


@pytest.mark.parametrize("kind", ["bidirectional", "causal"])
def test_math_equals_sdpa_kernel(kind):
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 4, 10, 16, generator=g) for _ in range(3))
    am = torch.ones(2, 10, dtype=torch.long)
    am[1, 7:] = 0
    mask = build_mask(kind, 10, 10, am, q.device, q.dtype)
    diff = (math_attention(q, k, v, mask) - sdpa_attention(q, k, v, mask)).abs().max()
    assert diff < 1e-5


@pytest.mark.parametrize("kind", ["bidirectional", "causal"])
@pytest.mark.parametrize("norm", ["pre", "post"])
def test_model_math_path_equals_sdpa_path_with_padding(kind, norm):
    cfg = ModelConfig(vocab_size=50, n_layers=2, d_model=32, n_heads=4, d_ff=64, max_positions=16,
                      attention=kind, norm=norm)
    torch.manual_seed(0)
    fast = LanguageModel(cfg).eval()
    slow = LanguageModel(cfg.replace(attn_impl="math")).eval()
    slow.load_state_dict(fast.state_dict())
    ids, mask = _padded_batch(50)
    with torch.no_grad():
        a, b = fast(ids, mask), slow(ids, mask)
        real = mask.bool()
        assert (a[real] - b[real]).abs().max() < 1e-5
        # no mask at all: the kernel's own is_causal path must agree too
        assert (fast(ids) - slow(ids)).abs().max() < 1e-5


def _tiny(kind: str) -> LanguageModel:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=50, n_layers=2, d_model=32, n_heads=4, d_ff=64, max_positions=32, attention=kind)
    return LanguageModel(cfg).eval()


@pytest.mark.parametrize("impl", ["sdpa", "math"])
def test_causal_outputs_ignore_the_future(impl):
    model = _tiny("causal")
    model.backbone.blocks[0].attn.impl = impl
    model.backbone.blocks[1].attn.impl = impl
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 50, (2, 20), generator=g)
    with torch.no_grad():
        base = model(ids)
        for t in (0, 5, 18):
            changed = ids.clone()
            changed[:, t + 1:] = torch.randint(0, 50, changed[:, t + 1:].shape, generator=g)
            out = model(changed)
            assert (out[:, : t + 1] - base[:, : t + 1]).abs().max() < 1e-6
            assert (out[:, t + 1:] - base[:, t + 1:]).abs().max() > 1e-4


def test_bidirectional_outputs_see_the_future():
    model = _tiny("bidirectional")
    ids = torch.randint(0, 50, (1, 20), generator=torch.Generator().manual_seed(4))
    changed = ids.clone()
    changed[0, 15] = (changed[0, 15] + 1) % 50
    with torch.no_grad():
        diff = (model(ids)[0, :15] - model(changed)[0, :15]).abs().max()
    assert diff > 1e-4


def test_attention_kind_is_a_per_call_choice_on_the_same_weights():
    model = _tiny("bidirectional")
    ids = torch.randint(0, 50, (1, 10), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        as_causal = model(ids, attention="causal")
        ref = _tiny("causal")(ids)
    assert torch.allclose(as_causal, ref, atol=1e-6)


def test_kv_cache_matches_full_forward():
    model = _tiny("causal")
    ids = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        full = model(ids)
    steps, _ = cached_logits(model, ids, 10)
    assert (steps - full).abs().max() < 1e-5


def test_preallocated_kv_buffer_equals_the_concatenating_cache():
    """The decoder's in-place KVBuffer gives the same logits as the (k, v) tuples it replaces, and refuses overflow."""
    model = _tiny("causal")
    c = model.config
    ids = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        full = model(ids)
    past = [KVBuffer(2, c.kv_heads, 16, c.head_dim, torch.float32, "cpu") for _ in range(c.n_layers)]
    steps, cache = cached_logits(model, ids, 10, past=past)
    assert all(a is b for a, b in zip(cache, past, strict=True)) and past[0].length == 16
    assert (steps - full).abs().max() < 1e-5
    with torch.no_grad(), pytest.raises(ValueError, match="holds 16 positions"):
        model.backbone(ids[:, :1], past=cache)
