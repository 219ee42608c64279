"""Faster fine-tuning computes the same thing: packed rows equal the examples alone, length-grouped epochs visit
every row once in a seeded random order, and the pooled-only last block equals the full block's pooled row."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from twinlm.config import ModelConfig
from twinlm.data import tasks as T
from twinlm.errors import ConfigError
from twinlm.finetune import (
    FinetuneOptions,
    FinetuneTask,
    TaskData,
    check_batching,
    pack_collate,
    pack_examples,
    train_batches,
)
from twinlm.heads import TaskModel, packed_rows
from twinlm.model import LanguageModel, segment_positions

VOCAB, PAD = 60, 0
ATOL = 1e-5  # fp32: packing changes only the order of the sums inside each matmul, not what is summed


def _model(task: str, attention: str = "bidirectional", position: str = "learned", labels: int = 3,
           pooling: str = "auto") -> TaskModel:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=VOCAB, n_layers=2, d_model=32, n_heads=4, d_ff=64, max_positions=64,
                      attention=attention, position=position, type_vocab_size=2, dropout=0.0, pad_token_id=PAD)
    model = TaskModel(LanguageModel(cfg), task, labels, pooling=pooling)
    model.dropout.p = 0.0  # the head's own dropout: off, so train mode is deterministic
    return model


def _features(task: str, lengths: list[int], seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    feats = []
    for n in lengths:
        ids = torch.randint(1, VOCAB, (n,), generator=g).tolist()
        types = [0] * (n // 2) + [1] * (n - n // 2)  # a sentence pair: token types must follow each example
        if task == "classify":
            feats.append({"input_ids": ids, "token_type_ids": types,
                          "labels": int(torch.randint(0, 3, (1,), generator=g))})
        else:
            tags = torch.randint(0, 3, (n,), generator=g).tolist()
            tags[0] = tags[-1] = T.IGNORE
            feats.append({"input_ids": ids, "token_type_ids": types, "labels": tags, "word_ids": [None] * n})
    return feats


@pytest.mark.parametrize("attention", ["bidirectional", "causal"])
@pytest.mark.parametrize("task", ["classify", "ner"])
@pytest.mark.parametrize("position", ["learned", "rotary"])
def test_packed_batch_gives_the_same_logits_loss_and_gradients_as_the_padded_examples(task, attention, position):
    lengths = [9, 3, 14, 5, 2, 7, 11, 4]
    feats = _features(task, lengths)
    width = 16
    model = _model(task, attention, position).train()  # train mode, dropout 0: the training computation
    padded = T.collate(feats, PAD)
    packed = pack_collate(feats, PAD, width)
    rows = pack_examples(lengths, width)
    assert packed["input_ids"].size(0) == len(rows) < len(feats)  # several examples share a row
    assert packed["input_ids"].size(1) <= width

    logits_a, loss_a = model(**padded)
    grads_a = torch.autograd.grad(loss_a, list(model.parameters()), allow_unused=True)
    logits_b, loss_b = model(**packed)
    grads_b = torch.autograd.grad(loss_b, list(model.parameters()), allow_unused=True)

    torch.testing.assert_close(loss_b, loss_a, atol=ATOL, rtol=0)
    order = [i for row in rows for i in row]  # the packed (row-major) order of the examples
    if task == "classify":
        torch.testing.assert_close(logits_b, logits_a[order], atol=ATOL, rtol=0)
    else:
        for r, row in enumerate(rows):
            at = 0
            for i in row:
                n = lengths[i]
                torch.testing.assert_close(logits_b[r, at:at + n], logits_a[i, :n], atol=ATOL, rtol=0)
                at += n
    for ga, gb in zip(grads_a, grads_b, strict=True):
        if ga is None:  # e.g. position rows no example reaches
            assert gb is None or gb.abs().max() < ATOL
        else:
            torch.testing.assert_close(gb, ga, atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("attention", ["bidirectional", "causal"])
def test_mean_pooling_averages_each_examples_own_tokens_padded_packed_or_alone(attention):
    lengths = [9, 3, 14, 5, 2, 7]
    feats = _features("classify", lengths)
    model = _model("classify", attention, pooling="mean").eval()
    with torch.no_grad():
        padded = model(**T.collate(feats, PAD))[0]
        alone = torch.cat([model(**T.collate([f], PAD))[0] for f in feats])
        packed = model(**pack_collate(feats, PAD, 16))[0]
        one = T.collate(feats[:1], PAD)
        states = model.features(one["input_ids"], one["attention_mask"], one["token_type_ids"])
        by_hand = model.classifier(states.mean(1))
        cls = _model("classify", attention)(**T.collate(feats, PAD))[0]
    torch.testing.assert_close(padded, alone, atol=ATOL, rtol=0)  # padding never enters the mean
    order = [i for row in pack_examples(lengths, 16) for i in row]
    torch.testing.assert_close(packed, padded[order], atol=ATOL, rtol=0)  # nor do the other examples of a row
    torch.testing.assert_close(alone[:1], by_hand, atol=ATOL, rtol=0)
    assert not torch.allclose(cls, padded, atol=1e-3)  # a different reading from the [CLS]/last-token one


def test_pack_layout_segments_positions_and_labels():
    feats = _features("classify", [5, 3, 4])
    batch = pack_collate(feats, PAD, width=8)
    # first fit by decreasing length: [5, 3] fill one row of 8, [4] opens a second
    assert pack_examples([5, 3, 4], 8) == [[0, 1], [2]]
    assert batch["segment_ids"].tolist() == [[1, 1, 1, 1, 1, 2, 2, 2], [1, 1, 1, 1, 0, 0, 0, 0]]
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2]
    assert batch["attention_mask"].sum().item() == 12
    assert batch["labels"].tolist() == [feats[0]["labels"], feats[1]["labels"], feats[2]["labels"]]
    assert batch["input_ids"][1, :4].tolist() == feats[2]["input_ids"]
    # the model derives the same positions from the segments (padding restarts too; its positions are never read)
    assert segment_positions(batch["segment_ids"]).tolist() == [[0, 1, 2, 3, 4, 0, 1, 2], [0, 1, 2, 3, 0, 1, 2, 3]]
    assert packed_rows(batch["segment_ids"], "bidirectional").tolist() == [[0, 0], [0, 5], [1, 0]]
    assert packed_rows(batch["segment_ids"], "causal").tolist() == [[0, 4], [0, 7], [1, 3]]


@pytest.mark.parametrize("n,batch_size", [(1000, 32), (97, 8), (5, 8)])
def test_length_grouping_visits_every_row_exactly_once_per_epoch(n, batch_size):
    lengths = np.random.default_rng(0).integers(2, 60, n)
    for epoch in range(3):
        batches = train_batches(lengths, batch_size, seed=1, epoch=epoch, pool=4)
        seen = np.concatenate(batches)
        assert sorted(seen.tolist()) == list(range(n))
        assert sum(len(b) < batch_size for b in batches) <= 1  # only one short batch per epoch


def test_length_grouping_is_seeded_shuffled_and_pads_less():
    lengths = np.random.default_rng(0).integers(2, 60, 2000)

    def flat(seed: int, epoch: int, how: str = "length") -> list[int]:
        return np.concatenate(train_batches(lengths, 32, seed, epoch, how)).tolist()

    assert flat(0, 0) == flat(0, 0)  # a pure function of (seed, epoch): exact resume
    assert flat(0, 0) != flat(0, 1) and flat(0, 0) != flat(1, 0)
    batches = train_batches(lengths, 32, 0, 0)
    # the batch order is shuffled: lengths do not come sorted through the epoch
    longest = [int(lengths[b].max()) for b in batches]
    assert longest != sorted(longest) and longest != sorted(longest, reverse=True)

    def computed(how: str) -> int:
        return sum(len(b) * int(lengths[b].max()) for b in train_batches(lengths, 32, 0, 0, how))

    assert computed("length") < 0.7 * computed("random")
    assert computed("length") < 1.1 * lengths.sum()


def test_accumulated_ner_micro_batches_weigh_by_their_labelled_tokens(tmp_path):
    """Two micro-batches of 3 and 30 labelled tokens: the step equals one batch of both (the mean over 33 tokens)."""
    from twinlm.train import TrainConfig, Trainer

    feats = _features("ner", [4, 5, 16, 18])
    data = TaskData("ner", [None] * 4, feats, "mem")
    pad = type("Tok", (), {"pad_id": PAD})()
    task = FinetuneTask(data, None, pad, FinetuneOptions("ner", batching="random"), batch_size=2, grad_accum=2, seed=0)
    parts = [T.collate(feats[:2], PAD), T.collate(feats[2:], PAD)]
    assert [task.targets(p) for p in parts] == [sum(t != T.IGNORE for f in fs for t in f["labels"])
                                                for fs in (feats[:2], feats[2:])]

    class Fixed(FinetuneTask):
        def batch(self, step, micro, rank, world):
            return self.parts[micro]

    results = []
    for name, batches in (("accumulated", parts), ("whole", [T.collate(feats, PAD)])):
        fixed = Fixed(data, None, pad, FinetuneOptions("ner", batching="random"), 2, len(batches), 0)
        fixed.parts = batches
        cfg = TrainConfig(max_steps=1, batch_size=2, grad_accum=len(batches), grad_clip=0.0, eval_every=None,
                          save_every=None, device="cpu", progress=False)
        trainer = Trainer(_model("ner"), fixed, cfg, tmp_path / name)
        grads = {}
        trainer.optimizer.step = lambda g=grads, t=trainer: g.update(
            {n: p.grad.clone() for n, p in t.model.named_parameters() if p.grad is not None})
        results.append((trainer._train_step()[0], grads))
    (loss_a, grads_a), (loss_w, grads_w) = results
    assert loss_a == pytest.approx(loss_w, rel=1e-5) and grads_a.keys() == grads_w.keys()
    assert all(torch.allclose(grads_a[k], grads_w[k], atol=1e-6) for k in grads_w)


def test_the_task_gives_each_rank_its_share_of_every_row_once_per_epoch():
    feats = [{"input_ids": [1] * (2 + i % 17), "labels": i} for i in range(103)]
    data = TaskData("classify", [None] * len(feats), feats, "mem")
    task = FinetuneTask(data, None, type("Tok", (), {"pad_id": PAD})(), FinetuneOptions("classify"),
                        batch_size=8, grad_accum=2, seed=0)
    per_epoch = len(task.epoch_batches(0, world=2))  # global batches of 16 rows: 7 per epoch
    seen = [task.batch(step, micro, rank, 2)["labels"].tolist()
            for step in range(4) for micro in range(2) for rank in range(2)][:per_epoch * 2]
    assert sorted(x for part in seen for x in part) == list(range(103))
    assert min(len(part) for part in seen) >= 3  # the short last batch is shared out too

    packing = FinetuneTask(data, None, task.tokenizer, FinetuneOptions("classify", max_seq_len=32, batching="pack"),
                           batch_size=8, grad_accum=1, seed=0)
    batch = packing.batch(0, 0, 0, 1)
    # the same 8 random rows as unpacked batching takes, in fewer, fuller rows
    assert sorted(batch["labels"].tolist()) == sorted(train_batches(packing.lengths, 8, 0, 0, "random")[0].tolist())
    assert batch["input_ids"].size(0) < 8 and batch["segment_ids"].max() > 1


def test_batching_choices_are_checked():
    with pytest.raises(ConfigError, match="--batching 'sorted' is unknown"):
        check_batching(FinetuneOptions("classify", batching="sorted"))
    with pytest.raises(ConfigError, match="cannot be packed"):
        check_batching(FinetuneOptions("qa", batching="pack"))
    model = _model("qa")
    batch = pack_collate(_features("classify", [3, 4]), PAD, 8)
    with pytest.raises(ConfigError, match="cannot be packed"):
        model(batch["input_ids"], batch["attention_mask"], segment_ids=batch["segment_ids"])


@pytest.mark.parametrize("attention", ["bidirectional", "causal"])
def test_pooled_only_last_block_equals_the_full_blocks_pooled_row(attention):
    """Forward and gradients: the classifier's last block computes only the pooled position, also in training."""
    model = _model("classify", attention).train()
    feats = _features("classify", [7, 12, 4])
    batch = T.collate(feats, PAD)
    ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    rows = torch.tensor([0, 0, 0]) if attention == "bidirectional" else mask.sum(1) - 1
    probe = torch.randn(model.config.d_model, generator=torch.Generator().manual_seed(3))

    full = model.features(ids, mask, types)[torch.arange(3), rows]
    grads_full = torch.autograd.grad((full @ probe).square().sum(), list(model.lm.parameters()), allow_unused=True)
    pooled = model.features(ids, mask, types, rows)[:, 0]
    grads_pooled = torch.autograd.grad((pooled @ probe).square().sum(), list(model.lm.parameters()),
                                       allow_unused=True)

    torch.testing.assert_close(pooled, full, atol=ATOL, rtol=0)
    for (name, _), ga, gb in zip(model.lm.named_parameters(), grads_full, grads_pooled, strict=True):
        assert (ga is None) == (gb is None), name
        if ga is not None:
            torch.testing.assert_close(gb, ga, atol=ATOL, rtol=1e-4, msg=name)
