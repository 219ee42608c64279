"""Task heads: output shapes per task and problem, losses equal to the hand-written formulas, the pooled position."""

from __future__ import annotations

import math

import pytest
import torch

from twinlm.config import ModelConfig
from twinlm.errors import ConfigError
from twinlm.heads import TaskLoss, TaskModel, pooled_rows
from twinlm.model import LanguageModel

V, D = 41, 32


def task_model(task: str, num_labels: int = 3, problem: str = "single_label", attention: str = "bidirectional",
               **kw) -> TaskModel:
    torch.manual_seed(0)
    lm = LanguageModel(ModelConfig(vocab_size=V, n_layers=2, d_model=D, n_heads=4, d_ff=64, max_positions=32,
                                   attention=attention, **kw))
    model = TaskModel(lm, task, num_labels, problem)
    with torch.no_grad():  # a head with visible outputs: the default init is near zero
        model.classifier.weight.normal_(0, 1.0)
        model.classifier.bias.normal_(0, 0.5)
    return model.eval()


def batch(b: int = 3, t: int = 9, lengths: tuple[int, ...] = (9, 6, 4)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, V, (b, t), generator=g)
    mask = torch.zeros(b, t, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    return ids.masked_fill(mask == 0, 0), mask


def log_softmax_by_hand(x: torch.Tensor) -> torch.Tensor:
    return x - x.exp().sum(-1, keepdim=True).log()


# ----------------------------------------------------------------------------------------------------- classify


def test_single_label_shape_and_loss():
    model = task_model("classify", 3)
    ids, mask = batch()
    labels = torch.tensor([0, 2, 1])
    with torch.no_grad():
        logits, loss = model(ids, mask, labels=labels)
    assert logits.shape == (3, 3)
    expected = -torch.stack([log_softmax_by_hand(logits[i])[labels[i]] for i in range(3)]).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert model(ids, mask)[1] is None  # no labels, no loss


def test_multi_label_loss_is_mean_binary_cross_entropy():
    model = task_model("classify", 4, "multi_label")
    ids, mask = batch()
    labels = torch.tensor([[1, 0, 0, 1], [0, 0, 0, 0], [1, 1, 1, 0]], dtype=torch.float)
    with torch.no_grad():
        logits, loss = model(ids, mask, labels=labels)
    assert logits.shape == (3, 4)
    p = torch.sigmoid(logits.double())
    expected = -(labels * p.log() + (1 - labels) * (1 - p).log()).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_regression_has_one_output_and_mse_loss():
    model = task_model("classify", 7, "regression")  # num_labels is ignored for regression
    ids, mask = batch()
    labels = torch.tensor([0.5, -1.0, 3.0])
    with torch.no_grad():
        logits, loss = model(ids, mask, labels=labels)
    assert logits.shape == (3, 1)
    expected = ((logits[:, 0] - labels) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("attention", ["bidirectional", "causal"])
def test_classifier_reads_cls_or_the_last_real_token(attention):
    model = task_model("classify", 3, attention=attention)
    ids, mask = batch()
    with torch.no_grad():
        logits, _ = model(ids, mask)
        hidden = model.lm.hidden(ids, mask, attention=attention)  # every position, no shortcut
    rows = [0, 0, 0] if attention == "bidirectional" else [8, 5, 3]
    expected = model.classifier(hidden[torch.arange(3), torch.tensor(rows)])
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)


def test_causal_classifier_ignores_padding_after_the_last_token():
    model = task_model("classify", 3, attention="causal")
    ids, mask = batch()
    other = ids.clone()
    other[mask == 0] = 7  # different padding ids
    with torch.no_grad():
        torch.testing.assert_close(model(ids, mask)[0], model(other, mask)[0], atol=1e-5, rtol=0)


def test_pooled_rows():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    assert pooled_rows((2, 4), mask, "bidirectional", torch.device("cpu")).tolist() == [0, 0]
    assert pooled_rows((2, 4), mask, "causal", torch.device("cpu")).tolist() == [2, 3]
    assert pooled_rows((2, 4), None, "causal", torch.device("cpu")).tolist() == [3, 3]


def test_token_types_are_used_only_by_a_backbone_that_has_them():
    ids, mask = batch()
    types = torch.ones_like(ids)
    plain = task_model("classify", 3)
    with torch.no_grad():
        torch.testing.assert_close(plain(ids, mask, types)[0], plain(ids, mask)[0], atol=0, rtol=0)
    typed = task_model("classify", 3, type_vocab_size=2)
    with torch.no_grad():
        assert (typed(ids, mask, types)[0] - typed(ids, mask)[0]).abs().amax() > 1e-4


# ----------------------------------------------------------------------------------------------------------- qa


def test_qa_shape_and_loss_with_padding_excluded():
    model = task_model("qa")
    ids, mask = batch()
    starts, ends = torch.tensor([2, 1, 0]), torch.tensor([4, 5, 3])
    with torch.no_grad():
        logits, loss = model(ids, mask, start_positions=starts, end_positions=ends)
    assert logits.shape == (3, 9, 2)
    total = 0.0
    for i, n in enumerate((9, 6, 4)):  # the softmax runs over the real tokens only
        s, e = log_softmax_by_hand(logits[i, :n, 0]), log_softmax_by_hand(logits[i, :n, 1])
        total += -(s[starts[i]] + e[ends[i]]) / 2
    assert loss.item() == pytest.approx(total.item() / 3, rel=1e-4)


def test_qa_without_positions_has_no_loss():
    model = task_model("qa")
    ids, mask = batch()
    assert model(ids, mask, start_positions=torch.tensor([1, 1, 1]))[1] is None


def test_qa_ignores_index_minus_100():
    model = task_model("qa")
    ids, mask = batch()
    with torch.no_grad():
        logits, loss = model(ids, mask, start_positions=torch.tensor([2, -100, -100]),
                             end_positions=torch.tensor([3, -100, -100]))
    s, e = log_softmax_by_hand(logits[0, :, 0]), log_softmax_by_hand(logits[0, :, 1])
    assert loss.item() == pytest.approx((-(s[2] + e[3]) / 2).item(), rel=1e-4)


# ---------------------------------------------------------------------------------------------------------- ner


def test_ner_shape_and_loss_skip_ignored_labels():
    model = task_model("ner", 5)
    ids, mask = batch()
    labels = torch.full((3, 9), -100)
    labels[0, 1], labels[0, 4], labels[1, 2], labels[2, 1] = 3, 0, 4, 1
    with torch.no_grad():
        logits, loss = model(ids, mask, labels=labels)
    assert logits.shape == (3, 9, 5)
    picked = [(0, 1, 3), (0, 4, 0), (1, 2, 4), (2, 1, 1)]
    expected = -sum(log_softmax_by_hand(logits[b, t])[c] for b, t, c in picked) / len(picked)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_ner_labels_on_ignored_positions_do_not_matter():
    model = task_model("ner", 5)
    ids, mask = batch()
    labels = torch.full((3, 9), -100)
    labels[1, 3] = 2
    with torch.no_grad():
        logits, loss = model(ids, mask, labels=labels)
        _, loss_again = model(ids, mask, labels=labels)
    assert loss.item() == pytest.approx(-log_softmax_by_hand(logits[1, 3])[2].item(), rel=1e-5)
    assert loss_again.item() == loss.item()


# -------------------------------------------------------------------------------------------------- the module


def test_unknown_task_and_problem_are_config_errors():
    lm = LanguageModel(ModelConfig(vocab_size=V, n_layers=1, d_model=D, n_heads=4, d_ff=64, max_positions=16))
    with pytest.raises(ConfigError, match="unknown task 'summarize'; choose one of classify, qa, ner"):
        TaskModel(lm, "summarize", 2)
    with pytest.raises(ConfigError, match="unknown problem type 'ranking'"):
        TaskModel(lm, "classify", 2, "ranking")


def test_head_sizes_and_init():
    lm = LanguageModel(ModelConfig(vocab_size=V, n_layers=1, d_model=D, n_heads=4, d_ff=64, max_positions=16))
    torch.manual_seed(0)
    assert TaskModel(lm, "classify", 6).classifier.weight.shape == (6, D)
    assert TaskModel(lm, "ner", 9).classifier.weight.shape == (9, D)
    assert TaskModel(lm, "qa", 9).classifier.weight.shape == (2, D)
    head = TaskModel(lm, "classify", 6, "regression").classifier
    assert head.weight.shape == (1, D) and torch.count_nonzero(head.bias) == 0
    assert TaskModel(lm, "ner", 9).config is lm.config and TaskModel(lm, "ner", 9).attention == "bidirectional"


def test_task_loss_is_the_models_loss_and_trains():
    model = task_model("classify", 2)
    ids, mask = batch()
    labels = torch.tensor([1, 0, 1])
    wrapped = TaskLoss(model)
    with torch.no_grad():
        assert wrapped(input_ids=ids, attention_mask=mask, labels=labels).item() == model(ids, mask,
                                                                                           labels=labels)[1].item()
    model.train()
    loss = wrapped(input_ids=ids, attention_mask=mask, labels=labels)
    loss.backward()
    assert model.classifier.weight.grad is not None and model.classifier.weight.grad.abs().sum() > 0
    assert model.lm.backbone.tok_emb.weight.grad is not None  # the backbone is fine-tuned too
    assert math.isfinite(loss.item())
