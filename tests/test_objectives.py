"""Masking statistics over >= 100k tokens, whole-word integrity, CLM targets, sparse MLM loss, hybrid schedules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from twinlm.config import ModelConfig
from twinlm.errors import ConfigError
from twinlm.model import LanguageModel
from twinlm.objectives import (
    IGNORE_INDEX,
    HybridSchedule,
    MLMMasker,
    clm_labels,
    clm_loss,
    mlm_loss,
    projected_cross_entropy,
)

VOCAB = 1000
SPECIAL = [0, 1, 2, 3, 4]  # pad, unk, cls, sep, mask
MASK_ID = 4


def _batch(rows=240, L=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (rows, L), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3  # [CLS] ... [SEP]
    ids[::7, L // 3] = 3  # a separator inside some rows
    am = torch.ones_like(ids)
    am[1::5, L * 3 // 4:] = 0
    ids[am == 0] = 0
    return ids, am


def _continuation():
    # tokens 500..999 continue a word (like '##ing'), 5..499 start one
    table = np.zeros(VOCAB, dtype=bool)
    table[500:] = True
    return table


def test_selection_rate_and_80_10_10_split():
    ids, am = _batch()
    masker = MLMMasker(MASK_ID, VOCAB, SPECIAL, mask_prob=0.15)
    corrupted, labels = masker(ids, am, torch.Generator().manual_seed(1))
    selectable = am.bool() & (ids > 4)
    assert selectable.sum() > 100_000
    selected = labels != IGNORE_INDEX
    assert not (selected & ~selectable).any(), "special or padding token selected"
    assert abs(selected.sum() / selectable.sum() - 0.15) < 0.01
    n = selected.sum().item()
    as_mask = (corrupted[selected] == MASK_ID).sum().item() / n
    unchanged = (corrupted[selected] == ids[selected]).sum().item() / n
    random = 1 - as_mask - unchanged
    assert abs(as_mask - 0.8) < 0.015 and abs(unchanged - 0.1) < 0.015 and abs(random - 0.1) < 0.015
    assert torch.equal(labels[selected], ids[selected])
    assert torch.equal(corrupted[~selected], ids[~selected])
    assert (corrupted[selected] > 4).logical_or(corrupted[selected] == MASK_ID).all(), "random token was special"


def test_masking_is_seeded():
    ids, am = _batch(rows=4)
    masker = MLMMasker(MASK_ID, VOCAB, SPECIAL)
    a = masker(ids, am, torch.Generator().manual_seed(9))
    b = masker(ids, am, torch.Generator().manual_seed(9))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def _words_intact(ids, selected, table):
    for row, sel in zip(ids.tolist(), selected.tolist(), strict=True):
        for t in range(1, len(row)):
            if row[t] > 4 and row[t - 1] > 4 and table[row[t]]:
                assert sel[t] == sel[t - 1], "whole-word masking split a word"


@pytest.mark.parametrize("fixed", [False, True])
def test_whole_word_masking_never_splits_a_word(fixed):
    ids, am = _batch(rows=200)
    table = _continuation()
    masker = MLMMasker(MASK_ID, VOCAB, SPECIAL, whole_word=True, fixed_count=fixed, continuation=table)
    selected = masker.select(ids, am, torch.Generator().manual_seed(2))
    _words_intact(ids, selected, table)
    if fixed:  # at most k tokens per row, and short of k by less than one (rare, long) word
        k = round(0.15 * int((am.bool() & (ids > 4)).sum(1).max()))
        assert (selected.sum(1) <= k).all() and (selected.sum(1) >= k - 12).all()
    else:
        rate = selected.sum() / (am.bool() & (ids > 4)).sum()
        assert abs(rate - 0.15) < 0.01


@pytest.mark.parametrize("fixed", [False, True])
def test_whole_word_masking_with_per_position_word_starts(fixed):
    """Flags stored at prepare time (e.g. jieba words) replace the vocabulary table: words follow the flags."""
    ids, am = _batch(rows=200)
    flags = torch.rand(ids.shape, generator=torch.Generator().manual_seed(5)) < 0.4  # words of 2.5 tokens on average
    no_table = MLMMasker(MASK_ID, VOCAB, SPECIAL, whole_word=True, fixed_count=fixed)
    selected = no_table.select(ids, am, torch.Generator().manual_seed(2), word_starts=flags)
    selectable = am.bool() & (ids > 4)
    assert not (selected & ~selectable).any()
    # A position that continues a word (no flag, after a selectable token) shares the selection of the one before.
    inside = selectable[:, 1:] & selectable[:, :-1] & ~flags[:, 1:]
    assert inside.sum() > 50_000
    assert torch.equal(selected[:, 1:][inside], selected[:, :-1][inside])
    if fixed:
        k = round(0.15 * int(selectable.sum(1).max()))
        assert (selected.sum(1) <= k).all() and (selected.sum(1) >= k - 15).all()
    else:  # words are chosen independently with p = 0.15; the fraction's sd is about 0.0023 here
        assert abs(selected.sum() / selectable.sum() - 0.15) < 0.01
    # The flags win over a table: a masker with one selects the same positions from the same draws.
    with_table = MLMMasker(MASK_ID, VOCAB, SPECIAL, whole_word=True, fixed_count=fixed, continuation=_continuation())
    assert torch.equal(with_table.select(ids, am, torch.Generator().manual_seed(2), word_starts=flags), selected)


def test_word_starts_misuse_is_a_clear_error():
    ids, _ = _batch(rows=2, L=16)
    flags = torch.ones_like(ids, dtype=torch.bool)
    with pytest.raises(ConfigError, match="without whole_word=True"):
        MLMMasker(MASK_ID, VOCAB, SPECIAL).select(ids, None, word_starts=flags)
    with pytest.raises(ConfigError, match=r"word_starts has shape \(2, 15\), the input ids \(2, 16\)"):
        MLMMasker(MASK_ID, VOCAB, SPECIAL, whole_word=True).select(ids, None, word_starts=flags[:, 1:])
    with pytest.raises(ConfigError, match="needs word-start flags or the tokenizer's continuation table"):
        MLMMasker(MASK_ID, VOCAB, SPECIAL, whole_word=True).select(ids, None)


def test_whole_word_with_real_tokenizers(shared_data):
    from twinlm.tokenizer import load_tokenizer

    text = ("The unbelievably enthusiastic researchers tokenized extraordinarily complicated sentences "
            "about photosynthesis and electroencephalography. ") * 40
    for folder in ("tokenizers/bert-base-uncased", "tokenizers/gpt2"):
        tok = load_tokenizer(shared_data / folder)
        table = tok.continuation_table()
        ids = torch.tensor([tok.encode(text)[:500]])
        masker = MLMMasker(tok.mask_id, tok.vocab_size, tok.special_ids, mask_prob=0.3, whole_word=True,
                           continuation=table)
        for seed in range(20):
            sel = masker.select(ids, None, torch.Generator().manual_seed(seed))
            row = ids[0].tolist()
            for t in range(1, len(row)):
                if table[row[t]]:
                    assert sel[0, t] == sel[0, t - 1], (folder, tok.id_to_token(row[t]))


def test_fixed_count_gives_static_shapes():
    ids, _ = _batch(rows=16, L=128)
    masker = MLMMasker(MASK_ID, VOCAB, SPECIAL, fixed_count=True)
    selected = masker.select(ids, None, torch.Generator().manual_seed(0))
    k = round(0.15 * int((ids > 4).sum(1).max()))
    assert (selected.sum(1) == k).all()


def _model(kind="bidirectional"):
    torch.manual_seed(0)
    return LanguageModel(ModelConfig(vocab_size=VOCAB, n_layers=1, d_model=32, n_heads=2, d_ff=64,
                                     max_positions=64, attention=kind))


def test_sparse_mlm_loss_equals_dense_loss():
    model = _model()
    ids, _ = _batch(rows=4, L=64)
    corrupted, labels = MLMMasker(MASK_ID, VOCAB, SPECIAL)(ids, None, torch.Generator().manual_seed(0))
    dense = F.cross_entropy(model(corrupted).flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
    assert torch.allclose(mlm_loss(model, corrupted, labels), dense, atol=1e-6)


def test_clm_labels_keep_eos_when_pad_equals_eos():
    eos = 7
    ids = torch.tensor([[5, 6, eos, eos, eos]])  # text, EOS, then two pads that use the EOS id
    am = torch.tensor([[1, 1, 1, 0, 0]])
    labels = clm_labels(ids, am)
    assert labels.tolist() == [[6, eos, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]]


def test_clm_loss_is_mean_next_token_nll_and_ignores_padding():
    model = _model("causal")
    ids = torch.randint(5, VOCAB, (2, 10), generator=torch.Generator().manual_seed(0))
    am = torch.ones_like(ids)
    am[1, 6:] = 0
    logp = model(ids, am, attention="causal").log_softmax(-1)
    terms = [-logp[b, t, ids[b, t + 1]] for b in range(2) for t in range(9) if am[b, t + 1]]
    assert torch.allclose(clm_loss(model, ids, am), torch.stack(terms).mean(), atol=1e-5)
    # changing padded tokens changes nothing
    other = ids.clone()
    other[1, 6:] = 9
    assert torch.allclose(clm_loss(model, ids, am), clm_loss(model, other, am), atol=1e-6)


def test_hybrid_phases_follow_the_spec():
    sched = HybridSchedule.parse("clm:4,mlm:16,clm:4")
    objs = [sched.objective_at(s, 240) for s in range(240)]
    assert objs[:40] == ["clm"] * 40 and objs[40:200] == ["mlm"] * 160 and objs[200:] == ["clm"] * 40


def test_hybrid_ratio_is_exact_and_deterministic():
    sched = HybridSchedule.parse(mlm_ratio=0.25)
    objs = [sched.objective_at(s, 1000) for s in range(1000)]
    assert objs.count("mlm") == 250 and objs[:4].count("mlm") == 1


@pytest.mark.parametrize("spec", ["clm4", "xlm:2", "mlm:0", "mlm:-1,clm:2"])
def test_bad_hybrid_spec_is_a_clear_error(spec):
    with pytest.raises(ConfigError, match="OBJECTIVE:LENGTH"):
        HybridSchedule.parse(spec)


@pytest.mark.parametrize("objective", ["mlm", "clm"])
def test_both_objectives_learn_a_copy_task(objective):
    """Rows repeat a random 4-token pattern: a masked (or next) token is readable 4 positions away."""
    torch.manual_seed(0)
    V = 32
    model = LanguageModel(ModelConfig(vocab_size=V, n_layers=2, d_model=64, n_heads=4, d_ff=128, max_positions=64))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    masker = MLMMasker(1, V, [0, 1])
    g = torch.Generator().manual_seed(0)

    def rows(n):
        return torch.randint(2, V, (n, 4), generator=g).repeat(1, 8)

    def step_loss(x):
        if objective == "mlm":
            return mlm_loss(model, *masker(x, None, g))
        return clm_loss(model, x)

    for _ in range(120):
        step_loss(rows(32)).backward()
        opt.step()
        opt.zero_grad()
    x = rows(128)
    with torch.no_grad():
        if objective == "mlm":
            corrupted, labels = masker(x, None, g)
            where = labels != IGNORE_INDEX
            accuracy = (model(corrupted).argmax(-1)[where] == labels[where]).float().mean()
        else:  # positions 4.. can be copied from one period back
            accuracy = (model(x, attention="causal").argmax(-1)[:, 3:-1] == x[:, 4:]).float().mean()
    assert accuracy > 0.9, float(accuracy)


@pytest.mark.parametrize("head_transform,head_bias,chunk", [(False, False, 16), (True, True, 7), (False, True, 1000)])
def test_projected_cross_entropy_equals_full_logits_loss_and_gradients(head_transform, head_bias, chunk):
    """The chunked loss that never holds the (N, vocab) logits: same value and same gradients, in float64."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=97, d_model=32, n_heads=4, d_ff=64, head_transform=head_transform,
                      head_bias=head_bias)
    model = LanguageModel(cfg).double()
    if head_bias:
        torch.nn.init.normal_(model.head.bias)
    hidden = torch.randn(50, 32, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 97, (50,))
    labels[::7] = IGNORE_INDEX
    params = [hidden, model.head.weight] + [p for p in model.head.parameters()]
    ours = projected_cross_entropy(model.head, hidden, labels, chunk=chunk)
    ref = F.cross_entropy(model.head(hidden), labels, ignore_index=IGNORE_INDEX)
    assert abs(ours.item() - ref.item()) < 1e-12
    g_ours = torch.autograd.grad(2.5 * ours, params)
    g_ref = torch.autograd.grad(2.5 * ref, params)
    for a, b in zip(g_ours, g_ref, strict=True):
        assert torch.allclose(a, b, atol=1e-12), float((a - b).abs().max())
    with torch.no_grad():  # evaluation path: no gradient buffers, same value
        assert abs(float(projected_cross_entropy(model.head, hidden, labels)) - float(ref)) < 1e-12


def test_projected_cross_entropy_under_bf16_autocast_tracks_fp32():
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(vocab_size=300, d_model=32, n_heads=4, d_ff=64))
    hidden = torch.randn(64, 32, requires_grad=True)
    labels = torch.randint(0, 300, (64,))
    ref = F.cross_entropy(model.head(hidden), labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = projected_cross_entropy(model.head, hidden, labels)
    assert ours.dtype == torch.float32 and abs(ours.item() - ref.item()) < 0.02
    ours.backward()
    assert model.head.weight.grad.dtype == torch.float32 and hidden.grad.dtype == torch.float32
