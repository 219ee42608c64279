"""Metrics against hand-computed values and against seqeval."""

from __future__ import annotations

import random

import pytest

from twinlm.evaluate import accuracy, entities, entity_metrics, macro_f1, normalize_answer, squad_f1, squad_metrics


def test_accuracy_and_macro_f1_by_hand():
    pred = ["a", "a", "b", "b", "c"]
    gold = ["a", "b", "b", "b", "a"]
    assert accuracy(pred, gold) == pytest.approx(3 / 5)
    # a: tp1 fp1 fn1 -> 0.5 ; b: tp2 fp0 fn1 -> 0.8 ; c: tp0 fp1 fn0 -> 0
    assert macro_f1(pred, gold) == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_squad_normalisation_and_scores():
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert normalize_answer("an apple, a pear") == "apple pear"
    assert squad_f1("Denver Broncos", "the Denver Broncos") == 1.0
    # pred tokens {denver, broncos, team}, gold {broncos}: p=1/3 r=1 -> f1 = 0.5
    assert squad_f1("Denver Broncos team", "Broncos") == pytest.approx(0.5)
    m = squad_metrics({"q1": "Denver Broncos", "q2": "Carolina"}, {"q1": ["Broncos", "Denver Broncos"],
                                                                  "q2": ["Carolina Panthers"]})
    assert m["exact_match"] == pytest.approx(50.0)
    assert m["f1"] == pytest.approx((1.0 + 2 / 3) / 2 * 100)


def test_entities_by_hand():
    tags = ["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-ORG", "I-PER", "B-MISC"]
    assert entities(tags) == {("PER", 0, 1), ("LOC", 3, 4), ("ORG", 5, 5), ("PER", 6, 6), ("MISC", 7, 7)}
    m = entity_metrics([["B-PER", "I-PER", "O"]], [["B-PER", "O", "O"]])
    assert m == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_entity_metrics_match_seqeval_on_random_sequences():
    seqeval = pytest.importorskip("seqeval.metrics", reason="seqeval (a dev extra) is not installed")
    rng = random.Random(0)
    tags = ["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-ORG", "B-ORG"]
    gold = [[rng.choice(tags) for _ in range(rng.randint(1, 15))] for _ in range(300)]
    pred = [[t if rng.random() < 0.7 else rng.choice(tags) for t in row] for row in gold]
    ours = entity_metrics(pred, gold)
    assert ours["precision"] == pytest.approx(seqeval.precision_score(gold, pred))
    assert ours["recall"] == pytest.approx(seqeval.recall_score(gold, pred))
    assert ours["f1"] == pytest.approx(seqeval.f1_score(gold, pred))
