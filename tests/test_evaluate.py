"""Metrics against hand-computed values and against seqeval."""

from __future__ import annotations

import random

import pytest

from twinlm.evaluate import (
    accuracy,
    cmrc_exact,
    cmrc_f1,
    cmrc_metrics,
    cmrc_segments,
    entities,
    entity_metrics,
    macro_f1,
    normalize_answer,
    squad_f1,
    squad_metrics,
)


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


# -- CMRC 2018: expected values worked out by hand from the official cmrc2018_evaluate.py rules ----------------
def test_cmrc_mixed_segmentation():
    # each Chinese character alone, English words and numbers whole and lower-cased, white space gone
    assert cmrc_segments("韩国Nexon公司 3.5km 10秒") == ["韩", "国", "nexon", "公", "司", "3.5km", "10", "秒"]
    # listed punctuation is a token of its own, or (for F1) skipped without ending the English run it sits in
    assert cmrc_segments("《红楼梦》abc-def") == ["《", "红", "楼", "梦", "》", "abc", "-", "def"]
    assert cmrc_segments("《红楼梦》abc-def", drop_punctuation=True) == ["红", "楼", "梦", "abcdef"]
    # ASCII , is not on the official list: it stays a token even for F1
    assert cmrc_segments("北京,上海", drop_punctuation=True) == ["北", "京", ",", "上", "海"]


@pytest.mark.parametrize("pred, gold, em, f1", [
    ("按住电源按钮 10 秒钟。", "按住电源按钮 10 秒钟", 1.0, 1.0),  # 。 removed
    ("“红楼梦”", "《红楼梦》", 1.0, 1.0),  # full-width quotes and book-title marks removed
    ("按住电源按钮10秒钟", "按住电源按钮 10 秒钟", 0.0, 1.0),  # EM keeps inner spaces (official); F1 drops them
    ("NEXON", " nexon ", 1.0, 1.0),  # lower-cased, stripped
    ("韩国Nexon公司", "Nexon", 0.0, 1 / 3),  # 1 of 5 tokens: p=1/5, r=1
    ("Nexo", "Nexon", 0.0, 0.0),  # an English word is one token: no partial credit
    ("红楼梦,", "红楼梦", 0.0, 6 / 7),  # ASCII comma counts: p=3/4, r=1
    ("甲乙丙丁", "甲丙丁乙", 0.0, 0.5),  # longest common *substring* 丙丁 (a subsequence would give 3)
    ("", "北京", 0.0, 0.0),  # empty prediction
    ("。", "北京", 0.0, 0.0),  # nothing left after punctuation
])
def test_cmrc_exact_and_f1_by_hand(pred, gold, em, f1):
    assert cmrc_exact(pred, gold) == em
    assert cmrc_f1(pred, gold) == pytest.approx(f1)


def test_cmrc_metrics_take_the_best_reference_and_average_in_percent():
    golds = {"q1": ["4分钟内", "四分钟", "4分"], "q2": ["北京", "北京市"], "q3": ["上海"]}
    preds = {"q1": "4分钟", "q2": "北京市。"}  # q3 unanswered: counts as 0, as in the official total
    # q1: 4分钟内 p=1 r=3/4 -> 6/7; 四分钟 p=r=2/3 -> 2/3; 4分 p=2/3 r=1 -> 4/5; best 6/7, no exact match
    # q2: exact after removing 。 -> EM 1, F1 1
    m = cmrc_metrics(preds, golds)
    assert m == {"cmrc_exact_match": pytest.approx(100 / 3), "cmrc_f1": pytest.approx(100 * (6 / 7 + 1) / 3)}
    # no reference at all (SQuAD v2 style): only an empty prediction matches, as with squad_metrics
    assert cmrc_metrics({}, {"q": []}) == {"cmrc_exact_match": 100.0, "cmrc_f1": 100.0}
    assert cmrc_metrics({"q": "北京"}, {"q": []}) == {"cmrc_exact_match": 0.0, "cmrc_f1": 0.0}
