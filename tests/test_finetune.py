"""Fine-tuning: readers and featurisers on constructed data, end-to-end runs that clearly beat chance, bad input."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from helpers import run_cli
from twinlm import checkpoint as ckpt
from twinlm.cli import main
from twinlm.config import ModelConfig
from twinlm.data import tasks as T
from twinlm.errors import ConfigError, DataError
from twinlm.finetune import FinetuneOptions, answer, classify, finetune_run, tag
from twinlm.heads import TaskModel
from twinlm.loading import load_task_model
from twinlm.model import LanguageModel
from twinlm.tokenizer import train_tokenizer
from twinlm.train import TrainConfig

POS = ["good", "great", "lovely", "superb", "fine"]
NEG = ["bad", "awful", "dull", "poor", "boring"]
FILL = ["the", "film", "was", "a", "story", "of", "and", "it", "plot", "acting", "very", "quite", "with", "cast"]
NAMES = ["alice", "bob", "carol", "dave", "erin", "frank"]
PLACES = ["paris", "london", "rome", "oslo", "lima"]


def _sentence(rng: random.Random, key: str) -> str:
    words = [rng.choice(FILL) for _ in range(rng.randint(4, 9))]
    words.insert(rng.randrange(len(words) + 1), key)
    return " ".join(words)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny random-init bidirectional model with a WordPiece tokenizer over the synthetic vocabulary."""
    folder = tmp_path_factory.mktemp("base")
    corpus = folder / "c.txt"
    corpus.write_text("\n\n".join(" ".join(FILL + POS + NEG + NAMES + PLACES + ["visited", "in", "12", "1999"])
                                   for _ in range(5)))
    tok = train_tokenizer([corpus], kind="wordpiece", vocab_size=200, min_frequency=1)
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(vocab_size=tok.vocab_size, n_layers=2, d_model=64, n_heads=4, d_ff=128,
                                      max_positions=128, pad_token_id=tok.pad_id))
    ckpt.save_model(folder / "model", model_state=model.state_dict(), config=model.config, tokenizer=tok)
    return folder / "model"


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"batch_size": 16, "lr": 3e-3, "warmup_steps": 5, "eval_every": None,
                          "save_every": None, "log_every": 5, "device": "cpu", "progress": False, **kw})


@pytest.fixture(scope="module")
def sentiment(tmp_path_factory) -> tuple[Path, Path]:
    rng = random.Random(0)
    folder = tmp_path_factory.mktemp("sent")
    for name, n in (("train", 320), ("dev", 120)):
        lines = ["sentence\tlabel"]
        for _ in range(n):
            label = rng.randint(0, 1)
            lines.append(f"{_sentence(rng, rng.choice(POS if label else NEG))}\t{label}")
        (folder / f"{name}.tsv").write_text("\n".join(lines) + "\n")
    return folder / "train.tsv", folder / "dev.tsv"


@pytest.fixture(scope="module")
def sst_run(tmp_path_factory, base, sentiment):
    out = tmp_path_factory.mktemp("sst_run")
    result, best = finetune_run(base, sentiment[0], sentiment[1], out, FinetuneOptions("classify", max_seq_len=32),
                                _cfg(), epochs=4)
    return out, result, best


def test_classification_clearly_beats_chance_and_keeps_the_best(sst_run, sentiment):
    out, result, best = sst_run
    assert best["accuracy"] > 0.9, best
    model, tok = load_task_model(out, "classify")
    preds = classify(model, tok, ["the film was good and lovely", "it was awful and dull"])
    assert [p["label"] for p in preds] == ["1", "0"] and all(0.5 < p["score"] <= 1 for p in preds)
    code = main(["evaluate", "--task", "classify", "--model", str(out), "--data", str(sentiment[1])])
    assert code == 0
    written = json.loads((out / "eval_dev.json").read_text())
    assert written["accuracy"] == pytest.approx(best["accuracy"])  # the best/ checkpoint is what evaluate loads


def test_head_tail_truncation_reads_the_end_of_long_texts_and_the_model_remembers_it(tmp_path, base):
    # The label word comes last, after more filler than --max-seq-len holds: cut at the head it is never seen.
    rng = random.Random(1)
    for name, n in (("train", 320), ("dev", 120)):
        rows = ["sentence\tlabel"]
        for _ in range(n):
            label = rng.randint(0, 1)
            filler = " ".join(rng.choice(FILL) for _ in range(30))
            rows.append(f"{filler} {rng.choice(POS if label else NEG)}\t{label}")
        (tmp_path / f"{name}.tsv").write_text("\n".join(rows) + "\n")
    scores = {}
    for how in ("head", "head-tail"):
        _, best = finetune_run(base, tmp_path / "train.tsv", tmp_path / "dev.tsv", tmp_path / how,
                               FinetuneOptions("classify", max_seq_len=16, truncation=how), _cfg(), epochs=4)
        scores[how] = best["accuracy"]
    assert scores["head"] < 0.7 and scores["head-tail"] > 0.9, scores
    model, tok = load_task_model(tmp_path / "head-tail", "classify")
    assert model.lm.config.extra["task"]["truncation"] == "head-tail"
    long = " ".join(["the film was a story of the cast"] * 5)
    assert [p["label"] for p in classify(model, tok, [f"{long} superb", f"{long} awful"])] == ["1", "0"]
    with pytest.raises(ConfigError, match="--pooling mean applies to --task classify only, not ner"):
        finetune_run(base, tmp_path / "train.tsv", None, tmp_path / "ner2", FinetuneOptions("ner", pooling="mean"),
                     _cfg(), epochs=1)
    with pytest.raises(ConfigError, match="--truncation head-tail applies to --task classify only, not ner"):
        finetune_run(base, tmp_path / "train.tsv", None, tmp_path / "ner",
                     FinetuneOptions("ner", truncation="head-tail"), _cfg(), epochs=1)


def test_mean_pooled_classifier_learns_and_is_loaded_mean_pooled(tmp_path, base, sentiment):
    _, best = finetune_run(base, sentiment[0], sentiment[1], tmp_path / "run",
                           FinetuneOptions("classify", max_seq_len=32, pooling="mean"), _cfg(), epochs=4)
    assert best["accuracy"] > 0.9, best
    model, tok = load_task_model(tmp_path / "run", "classify")
    assert model.pooling == "mean" and model.config.extra["task"]["pooling"] == "mean"
    code = main(["evaluate", "--task", "classify", "--model", str(tmp_path / "run"), "--data", str(sentiment[1])])
    assert code == 0 and json.loads((tmp_path / "run" / "eval_dev.json").read_text())["accuracy"] == pytest.approx(
        best["accuracy"])  # scored as it was trained: a [CLS] reading of these weights would not match


def test_causal_backbone_fine_tunes_too(tmp_path, base, sentiment):
    from twinlm.pipelines import load_pretrained

    lm, tok = load_pretrained(base)
    lm.config = lm.config.replace(attention="causal")
    ckpt.save_model(tmp_path / "causal", model_state=lm.state_dict(), config=lm.config, tokenizer=tok)
    _, best = finetune_run(tmp_path / "causal", sentiment[0], sentiment[1], tmp_path / "run",
                           FinetuneOptions("classify", max_seq_len=32), _cfg(), epochs=4)
    assert best["accuracy"] > 0.85, best


def _ner_file(path: Path, n: int, rng: random.Random) -> None:
    lines = []
    for _ in range(n):
        words, tags = [], []
        for w in _sentence(rng, "visited").split():
            words.append(w)
            tags.append("O")
            if w == "visited":
                name, place = rng.choice(NAMES), rng.choice(PLACES)
                words[-1:] = [name, "visited", place]
                tags[-1:] = ["B-PER", "O", "B-LOC"]
        lines += [f"{w} NN O {t}" for w, t in zip(words, tags, strict=True)] + [""]
    path.write_text("-DOCSTART- -X- -X- O\n\n" + "\n".join(lines))


def test_ner_learns_entities_and_tags_with_char_offsets(tmp_path, base):
    rng = random.Random(1)
    _ner_file(tmp_path / "train.conll", 200, rng)
    _ner_file(tmp_path / "dev.conll", 60, rng)
    _, best = finetune_run(base, tmp_path / "train.conll", tmp_path / "dev.conll", tmp_path / "run",
                           FinetuneOptions("ner", max_seq_len=32), _cfg(), epochs=4)
    assert best["f1"] > 0.9, best
    model, tok = load_task_model(tmp_path / "run", "ner")
    text = "the  film alice visited rome"
    found = tag(model, tok, text)
    assert [(e["type"], e["text"]) for e in found] == [("PER", "alice"), ("LOC", "rome")]
    assert all(text[e["start"]:e["end"]] == e["text"] for e in found)


def _squad(path: Path, n: int, rng: random.Random) -> None:
    paragraphs = []
    for i in range(n):
        year = rng.choice(["12", "1999"])
        words = _sentence(rng, year).split()
        context = " ".join(words)
        start = context.index(f" {year}") + 1 if not context.startswith(year + " ") else 0
        paragraphs.append({"context": context, "qas": [{"id": f"q{i}", "question": "when was the film",
                                                          "answers": [{"text": year, "answer_start": start}]}]})
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]}))


def test_qa_learns_spans_across_windows(tmp_path, base):
    rng = random.Random(2)
    _squad(tmp_path / "train.json", 120, rng)
    _squad(tmp_path / "dev.json", 60, rng)
    opts = FinetuneOptions("qa", max_seq_len=28, doc_stride=8)  # forces several windows per context
    _, best = finetune_run(base, tmp_path / "train.json", tmp_path / "dev.json", tmp_path / "run", opts, _cfg(),
                           epochs=4)
    assert best["exact_match"] > 80, best
    model, tok = load_task_model(tmp_path / "run", "qa")
    context = "the plot was quite dull and the film of 1999 was a story"
    pred = answer(model, tok, "when was the film", context)
    assert pred["answer"] == "1999" and context[pred["start"]:pred["end"]] == "1999"




def test_featurize_qa_with_real_vocab(tmp_path, base):
    from twinlm.pipelines import load_pretrained

    _, tok = load_pretrained(base)
    context = " ".join(FILL * 3) + " alice visited rome " + " ".join(FILL * 3)
    start = context.index("alice visited rome")
    ex = T.QAExample("q", "who", context, ["alice visited rome"], [start])
    feats = T.featurize_qa([ex], tok, max_len=24, doc_stride=6)
    assert len(feats) > 5
    hits = [f for f in feats if f["start_positions"] > 0]
    assert hits, "no window holds the answer"
    for f in hits:
        s, e = f["offsets"][f["start_positions"]][0], f["offsets"][f["end_positions"]][1]
        assert context[s:e] == "alice visited rome"
    # windows that do not hold the whole answer point at [CLS]
    assert all(f["end_positions"] == 0 for f in feats if f["start_positions"] == 0)


# -- bad input ---------------------------------------------------------------------------------------------------
def test_unknown_label_in_eval_file_names_label_and_line(tmp_path, base, sentiment):
    bad = tmp_path / "dev.tsv"
    bad.write_text("sentence\tlabel\nit was good\t1\nit was odd\t2\n")
    with pytest.raises(DataError, match=r"dev.tsv:3: label '2' was not in the training labels"):
        finetune_run(base, sentiment[0], bad, tmp_path / "run", FinetuneOptions("classify"), _cfg(), epochs=1)


def test_empty_text_is_an_error(tmp_path):
    bad = tmp_path / "t.tsv"
    bad.write_text("sentence\tlabel\nfine\t1\n  \t0\n")
    with pytest.raises(DataError, match=r"t.tsv:3: empty text"):
        T.read_classification(bad)


def test_misplaced_answer_moves_to_where_its_text_is_with_a_counted_warning(tmp_path):
    f = tmp_path / "s.json"
    f.write_text(json.dumps({"data": [{"paragraphs": [{"context": "abc def", "qas": [
        {"id": "1", "question": "q", "answers": [{"text": "def", "answer_start": 4},
                                                 {"text": "def", "answer_start": 0}]}]}]}]}))
    with pytest.warns(UserWarning, match=r"1 answer\(s\) are not at their answer_start"):
        examples = T.read_squad(f)
    assert examples[0].answers == ["def", "def"] and examples[0].starts == [4, 4]


def test_context_without_answer_in_any_window_is_handled(base):
    from twinlm.pipelines import load_pretrained

    _, tok = load_pretrained(base)
    context = " ".join(FILL)
    gold = " ".join(FILL[1:13])  # 12 words: longer than any window's room, so no window holds all of it
    ex = T.QAExample("q", "who", context, [gold], [context.index(gold)])
    feats = T.featurize_qa([ex], tok, max_len=14, doc_stride=3)
    assert len(feats) > 1
    assert all(f["start_positions"] == 0 == f["end_positions"] for f in feats)
    spans = T.best_spans(feats, torch.zeros(len(feats), 14), torch.zeros(len(feats), 14), [ex])
    assert spans["q"]["answer"] in context  # still a prediction, no crash


def test_task_mismatch_and_plain_lm_are_clear_errors(sst_run, base, tmp_path, capsys):
    out = sst_run[0]
    with pytest.raises(ConfigError, match="fine-tuned for --task classify, not --task ner"):
        load_task_model(out, "ner")
    assert main(["tag", "--model", str(out), "x"]) == 2
    assert "classify" in capsys.readouterr().err
    assert main(["classify", "--model", str(base), "x"]) == 2
    assert "fine-tune it first" in capsys.readouterr().err


def test_mismatched_tokenizer_and_checkpoint(tmp_path, sst_run):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(sst_run[0] / "best", folder)
    corpus = tmp_path / "c.txt"
    corpus.write_text("abc\n")
    train_tokenizer([corpus], kind="char", vocab_size=10).save(folder)
    (folder / "manifest.json").unlink()
    result = run_cli("classify", "--model", str(folder), "hello")
    assert result.returncode == 2 and "tokenizer" in result.stderr and "Traceback" not in result.stderr


def test_ner_reader_errors(tmp_path):
    f = tmp_path / "x.conll"
    f.write_text("EU\tB-ORG\nrejects\tO\n\n-DOCSTART-\tO\n\nBonn\tB-LOC\n")
    assert [(e.words, e.tags) for e in T.read_conll(f)] == [(["EU", "rejects"], ["B-ORG", "O"]), (["Bonn"], ["B-LOC"])]
    f.write_text("EU NNP B-NP ORG\n")
    with pytest.raises(DataError, match=r"x.conll:1: tag 'ORG' is not IOB2"):
        T.read_conll(f)


@pytest.mark.parametrize("kw", [dict(), dict(norm="pre", attention="causal"),
                                dict(norm="pre", norm_type="rmsnorm", position="rotary", mlp="swiglu",
                                     attention="causal", n_kv_heads=2)])
def test_classifier_reading_one_position_equals_the_full_forward(kw):
    torch.manual_seed(0)
    lm = LanguageModel(ModelConfig(vocab_size=50, n_layers=2, d_model=32, n_heads=4, d_ff=64, max_positions=32,
                                   **kw)).eval()
    model = TaskModel(lm, "classify", 3).eval()
    ids = torch.randint(1, 50, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 5:] = 0
    mask[2, 8:] = 0
    with torch.no_grad():
        got, _ = model(ids, mask)
        full = lm.hidden(ids, mask, attention=lm.config.attention)
        last = mask.sum(1) - 1 if lm.config.attention == "causal" else torch.zeros(3, dtype=torch.long)
        want = model.classifier(full[torch.arange(3), last])
        got2, _ = model(ids)
        plain = lm.hidden(ids, None, attention=lm.config.attention)
        want2 = model.classifier(plain[:, -1] if lm.config.attention == "causal" else plain[:, 0])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(got2, want2, rtol=0, atol=1e-5)


def test_a_note_about_the_starting_model_is_printed_once_per_process(capsys):
    from twinlm import finetune

    for _ in range(3):  # `twinlm glue` fine-tunes the same model 21 times; the note is worth reading once
        finetune._note("m: the checkpoint's own task-head tensors (pooler) are not used")
    finetune._note("m: another note")
    assert capsys.readouterr().out.splitlines() == [
        "note: m: the checkpoint's own task-head tensors (pooler) are not used", "note: m: another note"]
