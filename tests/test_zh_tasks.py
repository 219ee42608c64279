"""Chinese through the task commands: word splitting, QA/NER offsets, the QA metric choice, the real zh files.

A tiny random-init model with a WordPiece tokenizer trained on a little Chinese text is enough here: what is
checked is the plumbing (offsets, metric names, label names), not what a model learns. Tests on the real files in
../shared/data/zh skip when they are absent.
"""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path

import pytest
import torch

from twinlm import checkpoint as ckpt
from twinlm.cli import main
from twinlm.config import ModelConfig
from twinlm.data import tasks as T
from twinlm.errors import ConfigError
from twinlm.evaluate import cmrc_metrics, entities, squad_metrics
from twinlm.finetune import FinetuneOptions, answer, build_data, check_metric, qa_metric, score_task, tag
from twinlm.heads import TaskModel
from twinlm.model import LanguageModel
from twinlm.tokenizer import train_tokenizer

NAMES = ["张伟", "王芳", "李娜", "刘洋", "陈静"]
CITIES = ["北京", "上海", "广州", "深圳", "杭州"]
FOODS = ["饺子", "米饭", "面条", "火锅"]
MANUAL = "要重置，按住电源按钮 10 秒钟。设备会重新启动，然后显示Nexon标志。"


def _story(rng: random.Random) -> tuple[str, str, str]:
    """(context, question, answer): a few short sentences, the answer a city."""
    name, city = rng.choice(NAMES), rng.choice(CITIES)
    context = f"{name}住在{city}。{name}喜欢吃{rng.choice(FOODS)}，每天早上去公园跑步。"
    return context, f"{name}住在哪里？", city


def _squad_file(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    paragraphs = [{"context": c, "qas": [{"id": f"q{i}", "question": q,
                                          "answers": [{"text": a, "answer_start": c.index(a)}]}]}
                  for i, (c, q, a) in enumerate(rows)]
    path.write_text(json.dumps({"version": "v1.0", "data": [{"paragraphs": paragraphs}]}, ensure_ascii=False),
                    encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def zh_tok(tmp_path_factory):
    corpus = tmp_path_factory.mktemp("zh_tok") / "c.txt"
    rng = random.Random(0)
    lines = [" ".join(_story(rng)) for _ in range(60)] + [MANUAL, "这部电影很棒！糟糕的体验，再也不来了。"]
    corpus.write_text("\n".join(lines), encoding="utf-8")
    return train_tokenizer([corpus], kind="wordpiece", vocab_size=300, min_frequency=1)


def _lm(tok) -> LanguageModel:
    torch.manual_seed(0)
    return LanguageModel(ModelConfig(vocab_size=tok.vocab_size, n_layers=1, d_model=32, n_heads=4, d_ff=64,
                                     max_positions=128, pad_token_id=tok.pad_id))


def _task_model(tok, task: str, labels: list[str], **info) -> TaskModel:
    model = TaskModel(_lm(tok), task, len(labels)).eval()
    model.lm.config = model.lm.config.replace(extra={"task": {"task": task, "labels": labels, "max_seq_len": 64,
                                                              **info}})
    return model


# ------------------------------------------------------------------------------------------- splitting raw text


def test_word_spans_split_cjk_into_characters_and_keep_ascii_words_whole():
    text = "在Nexon公司，“张伟”说：EU rejects 2006年\u3000计划。"
    words = [text[a:b] for a, b in T.word_spans(text)]
    assert words == ["在", "Nexon", "公", "司", "，", "“", "张", "伟", "”", "说", "：", "EU", "rejects", "2006",
                     "年", "计", "划", "。"]
    english = "EU  rejects German call ."
    assert [english[a:b] for a, b in T.word_spans(english)] == english.split()


def test_bpe_ner_words_get_no_space_around_chinese_characters():
    class Bpe:
        kind = "bpe"
    assert T.ner_words(Bpe(), ["在", "Nexon", "公", "EU", "rejects"]) == ["在", "Nexon", "公", "EU", " rejects"]


# ------------------------------------------------------------------------------------------------- tag offsets


def _biased_ner(tok, labels: list[str], winner: str) -> TaskModel:
    """An NER model whose head ignores the text and always picks ``winner``: its output is fully predictable."""
    model = _task_model(tok, "ner", labels)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.zero_()
        model.classifier.bias[labels.index(winner)] = 10.0
    return model


NER_LABELS = ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


def test_tag_on_raw_chinese_reports_each_character_with_offsets_into_the_original(zh_tok):
    text = "张伟在 Nexon公司工作。"
    found = tag(_biased_ner(zh_tok, NER_LABELS, "B-PER"), zh_tok, text)  # every word its own entity
    assert [(e["text"], e["start"], e["end"]) for e in found] == [
        ("张", 0, 1), ("伟", 1, 2), ("在", 2, 3), ("Nexon", 4, 9), ("公", 9, 10), ("司", 10, 11), ("工", 11, 12),
        ("作", 12, 13), ("。", 13, 14)]
    assert all(e["type"] == "PER" and 0.99 < e["score"] <= 1 for e in found)


def test_tag_joins_characters_into_one_entity_without_inserting_spaces(zh_tok):
    text = "  北京大学 Nexon。"
    (only,) = tag(_biased_ner(zh_tok, NER_LABELS, "I-ORG"), zh_tok, text)  # I- continues: one chunk
    assert only == {**only, "text": "北京大学 Nexon。", "type": "ORG", "start": 2, "end": len(text)}
    assert text[only["start"]:only["end"]] == only["text"]


# ------------------------------------------------------------------------------------------------- QA offsets


def test_best_spans_return_chinese_answers_from_the_original_context(zh_tok):
    ex = T.QAExample("q", "如何重置我的设备？", MANUAL, ["按住电源按钮 10 秒钟"], [MANUAL.index("按住")])
    (feat,) = T.featurize_qa([ex], zh_tok, max_len=96)
    s, e = feat["start_positions"], feat["end_positions"]
    assert s > 0 and MANUAL[feat["offsets"][s][0]:feat["offsets"][e][1]] == "按住电源按钮 10 秒钟"
    start_logits, end_logits = torch.zeros(1, len(feat["input_ids"])), torch.zeros(1, len(feat["input_ids"]))
    start_logits[0, s], end_logits[0, e] = 5.0, 5.0
    span = T.best_spans([feat], start_logits, end_logits, [ex])["q"]
    assert span["answer"] == "按住电源按钮 10 秒钟" and MANUAL[span["start"]:span["end"]] == span["answer"]


def test_answer_on_chinese_is_a_span_of_the_context_with_no_spaces_added(zh_tok):
    context = "张伟住在北京。张伟喜欢吃饺子，每天早上去公园跑步。"
    pred = answer(_task_model(zh_tok, "qa", ["start", "end"]), zh_tok, "张伟住在哪里？", context)
    assert pred["answer"] and context[pred["start"]:pred["end"]] == pred["answer"] and " " not in pred["answer"]


# ------------------------------------------------------------------------------------------- metric choice


def test_qa_metric_auto_picks_cmrc_for_chinese_contexts_and_the_flag_overrides():
    zh = [T.QAExample("a", "谁？", "张伟住在北京。Nexon 2006"), T.QAExample("b", "谁？", "张伟住在北京。Nexon 2006")]
    en = [T.QAExample("c", "who?", "Alice lives in Paris, 北京.")]  # 2 Han of 21 characters
    assert T.han_fraction([zh[0].context]) == pytest.approx(6 / 16)
    assert (qa_metric("auto", zh), qa_metric("auto", en)) == ("cmrc", "squad")
    assert (qa_metric("squad", zh), qa_metric("cmrc", en)) == ("squad", "cmrc")
    with pytest.raises(ConfigError, match="--metric 'bleu' is unknown"):
        qa_metric("bleu", zh)
    with pytest.raises(ConfigError, match="--metric cmrc applies to --task qa only, not classify"):
        check_metric(FinetuneOptions("classify", metric="cmrc"))


def test_score_task_names_the_metric_it_used(zh_tok, tmp_path):
    rng = random.Random(3)
    path = _squad_file(tmp_path / "dev.json", [_story(rng) for _ in range(6)])
    model = _task_model(zh_tok, "qa", ["start", "end"])
    for choice, names, scorer in (("auto", ["cmrc_exact_match", "cmrc_f1"], cmrc_metrics),
                                  ("squad", ["exact_match", "f1"], squad_metrics)):
        opts = FinetuneOptions("qa", max_seq_len=64, metric=choice)
        data, _ = build_data(path, zh_tok, opts, ["start", "end"], False, None)
        metrics, preds = score_task(model, data, zh_tok, opts)
        assert list(metrics) == names
        golds = {ex.qid: ex.answers for ex in data.examples}
        assert metrics == scorer({ex.qid: p["answer"] for ex, p in zip(data.examples, preds, strict=True)}, golds)


def test_finetune_and_evaluate_on_chinese_qa_report_cmrc_unless_told_otherwise(zh_tok, tmp_path, capsys):
    rng = random.Random(4)
    train = _squad_file(tmp_path / "train.json", [_story(rng) for _ in range(16)])
    dev = _squad_file(tmp_path / "dev.json", [_story(rng) for _ in range(6)])
    lm = _lm(zh_tok)
    ckpt.save_model(tmp_path / "base", model_state=lm.state_dict(), config=lm.config, tokenizer=zh_tok)
    assert main(["finetune", "--task", "qa", "--init", str(tmp_path / "base"), "--train", str(train), "--eval",
                 str(dev), "--out", str(tmp_path / "run"), "--epochs", "1", "--max-seq-len", "64",
                 "--batch-size", "8", "--device", "cpu", "--no-progress"]) == 0
    best = json.loads((tmp_path / "run" / "best_metrics.json").read_text())
    assert {"cmrc_exact_match", "cmrc_f1"} <= set(best) and "f1" not in best
    capsys.readouterr()
    assert main(["evaluate", "--task", "qa", "--model", str(tmp_path / "run"), "--data", str(dev)]) == 0
    printed = capsys.readouterr().out
    assert f"cmrc_f1: {best['cmrc_f1']:.4f}" in printed  # evaluate loads best/, the checkpoint best_metrics names
    assert main(["evaluate", "--task", "qa", "--model", str(tmp_path / "run"), "--data", str(dev),
                 "--metric", "squad", "--out", str(tmp_path / "squad.json")]) == 0
    assert set(json.loads((tmp_path / "squad.json").read_text())) == {"task", "data", "exact_match", "f1"}


# ---------------------------------------------------------------------------------------------- the real files


@pytest.fixture(scope="module")
def zh_data() -> Path:
    from conftest import shared_data_dir

    path = shared_data_dir() / "zh"
    if not (path / "qa" / "cmrc2018_trial.json").is_file():
        pytest.skip(f"the Chinese data {path} is absent (set TWINLM_SHARED_DATA to point at shared/data)")
    return path


@pytest.fixture(scope="module")
def real_tok(zh_data, tmp_path_factory):
    """WordPiece trained on 300 ChnSentiCorp reviews: CMRC's encyclopedia text then has real pieces and [UNK]s."""
    lines = (zh_data / "sentiment" / "chnsenticorp_htl_train.tsv").read_text(encoding="utf-8").splitlines()[1:301]
    corpus = tmp_path_factory.mktemp("real_tok") / "c.txt"
    corpus.write_text("\n".join(line.split("\t")[0] for line in lines), encoding="utf-8")
    return train_tokenizer([corpus], kind="wordpiece", vocab_size=1500, min_frequency=1)


def test_msra_reader_on_a_real_slice(zh_data):
    examples = T.read_conll(zh_data / "ner" / "msra_dev.conll", max_rows=40)
    assert len(examples) == 40 and all(len(w) == 1 for ex in examples for w in ex.words)
    assert [ex.line for ex in examples[:3]] == [1, 41, 68]
    assert "".join(examples[1].words) == "如果毛泽东同志没有说过的我们都不能干，那现在怎么办？"
    sentence = "".join(examples[2].words)
    assert sorted((kind, sentence[a:b + 1]) for kind, a, b in entities(examples[2].tags)) == [
        ("PER", "毛泽东"), ("PER", "邓小平")]
    assert set(T.ner_labels(examples)) <= set(NER_LABELS)


def test_cmrc_answer_offsets_map_back_exactly_on_a_real_slice(zh_data, real_tok):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the trial file's few misplaced answers are moved (tested elsewhere)
        examples = T.read_squad(zh_data / "qa" / "cmrc2018_trial.json")[:60]
    feats = T.featurize_qa(examples, real_tok, max_len=128, doc_stride=64)
    labelled = [f for f in feats if f["start_positions"] > 0]
    assert len({f["example"] for f in labelled}) >= 50  # only answers longer than a window's overlap are missed
    for f in labelled:
        ex = examples[f["example"]]
        s, e = f["offsets"][f["start_positions"]][0], f["offsets"][f["end_positions"]][1]
        assert ex.context[s:e] == ex.answers[0].strip()


def test_cmrc_dev_keeps_every_question_and_its_three_references(zh_data):
    with pytest.warns(UserWarning, match="do not occur in their context"):
        examples = T.read_squad(zh_data / "qa" / "cmrc2018_dev_articles_000-599.json")
    assert len(examples) == 2246  # the README's count: none dropped, so scores divide by the official total
    assert sum(len(ex.answers) == 3 for ex in examples) > 2200
    assert qa_metric("auto", examples[:50]) == "cmrc"


def test_online_shopping_categories_print_as_chinese(zh_data, real_tok, tmp_path, capsys):
    rows = (zh_data / "topic" / "online_shopping_train.tsv").read_text(encoding="utf-8").splitlines()
    small = tmp_path / "shop.tsv"
    small.write_text("\n".join(rows[:1] + rows[1::1500]) + "\n", encoding="utf-8")  # 38 rows
    lm = _lm(real_tok)
    ckpt.save_model(tmp_path / "base", model_state=lm.state_dict(), config=lm.config, tokenizer=real_tok)
    assert main(["finetune", "--task", "classify", "--init", str(tmp_path / "base"), "--train", str(small),
                 "--label-column", "category", "--out", str(tmp_path / "run"), "--epochs", "1",
                 "--max-seq-len", "32", "--batch-size", "16", "--device", "cpu", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["classify", "--model", str(tmp_path / "run"), "这部电影很棒！"]) == 0
    printed = capsys.readouterr().out
    out = json.loads(printed)
    assert out["text"] == "这部电影很棒！" and "\\u" not in printed  # the characters themselves, not \u escapes
    categories = {"书籍", "平板", "手机", "水果", "洗发水", "热水器", "蒙牛", "衣服", "计算机", "酒店"}
    assert out["label"] in printed and out["label"] in categories
