"""`twinlm glue`: each task's reader on real rows, GLUE's metrics against scikit-learn and scipy, dead runs, the
combined score, and a tiny run end to end that a second invocation continues without retraining what is done."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.metrics import f1_score, matthews_corrcoef

from twinlm import checkpoint as ckpt
from twinlm import cli_glue
from twinlm.cli import main
from twinlm.config import ModelConfig
from twinlm.data import tasks as T
from twinlm.errors import ConfigError, DataError, TrainingDiverged
from twinlm.glue import metrics as M
from twinlm.glue import run as glue_run
from twinlm.glue.report import summarize, table
from twinlm.glue.run import GlueOptions, check_label_order, sample_rows
from twinlm.glue.tasks import TASKS, parse_tasks, read_file, read_splits, skip_reason
from twinlm.model import LanguageModel
from twinlm.tokenizer import train_tokenizer
from twinlm.train import TrainResult


# -- readers on the real files ----------------------------------------------------------------------------------
def test_cola_has_no_header_and_four_columns(shared_data):
    train, dev, _, _ = read_splits(TASKS["cola"], shared_data)
    assert (len(train), len(dev)) == (8551, 1043)  # dev.tsv has no final line break: its last row still counts
    first = train[0]
    assert (first.text, first.pair, first.label, first.line) == (
        "Our friends won't buy this analysis, let alone the next one we propose.", None, "1", 1)
    drank = next(ex for ex in train if ex.text == "They drank the pub.")
    assert drank.label == "0"  # column 2, not the original-label column ('*')
    assert {ex.label for ex in train} == set(TASKS["cola"].labels) and TASKS["cola"].labels == ("0", "1")


def test_mrpc_header_starts_with_a_bom_and_quotes_are_text(shared_data):
    path = shared_data / "glue/MRPC/train.tsv"
    assert path.read_bytes().startswith(b"\xef\xbb\xbfQuality\t")
    train = read_file(TASKS["mrpc"], path)
    assert len(train) == 3668
    first = train[0]
    assert first.label == "1" and first.line == 2
    assert first.text.startswith('Amrozi accused his brother, whom he called "the witness"')
    assert first.pair.startswith('Referring to him as only "the witness"')
    dev = read_file(TASKS["mrpc"], shared_data / "glue/MRPC/dev.tsv")
    assert len(dev) == 408 and dev[0].pair.startswith('"The foodservice pie business')  # a lone quote is kept
    assert sum(ex.label == "1" for ex in dev) == 279


def test_stsb_is_a_regression_on_0_to_5(shared_data):
    train, dev, _, _ = read_splits(TASKS["stsb"], shared_data)
    assert (len(train), len(dev)) == (5749, 1500)
    assert TASKS["stsb"].labels is None and TASKS["stsb"].problem == "regression"
    assert (train[0].text, train[0].pair, train[0].label) == ("A plane is taking off.", "An air plane is taking off.",
                                                             5.0)
    assert train[1].label == pytest.approx(3.8)
    assert min(ex.label for ex in train) == 0.0 and max(ex.label for ex in train) == 5.0


def test_string_and_numeric_labels_keep_the_task_order(shared_data):
    rte_train, rte_dev, _, _ = read_splits(TASKS["rte"], shared_data)
    assert TASKS["rte"].labels == ("entailment", "not_entailment")  # GLUE's order: entailment is 0
    assert rte_train[0].label == "not_entailment"  # the first row's label does not become index 0
    assert (len(rte_train), len(rte_dev)) == (2490, 277)
    assert sum(ex.label == "entailment" for ex in rte_dev) == 146
    wnli_train, wnli_dev, _, _ = read_splits(TASKS["wnli"], shared_data)
    assert TASKS["wnli"].labels == ("0", "1") and wnli_train[0].label == "1"
    assert (len(wnli_train), len(wnli_dev)) == (635, 71)
    sst_train, sst_dev, _, _ = read_splits(TASKS["sst2"], shared_data)
    assert (len(sst_train), len(sst_dev)) == (65349, 872)
    assert sst_train[0].text == "hide new secretions from the parental units" and sst_train[0].label == "0"
    for name, rows in (("rte", rte_train), ("wnli", wnli_train), ("sst2", sst_train)):
        check_label_order(TASKS[name], rows, name)  # finetune's derived order is the task's
        assert T.label_list(rows, "single_label") == list(TASKS[name].labels)


def test_qnli_and_mnli_are_skipped_with_the_reason(shared_data):
    assert skip_reason(TASKS["qnli"], shared_data) == "no train split here (only glue/QNLI/dev.tsv)"
    assert "MNLI" in skip_reason(TASKS["mnli"], shared_data)
    qnli_dev = read_file(TASKS["qnli"], shared_data / "glue/QNLI/dev.tsv")
    assert len(qnli_dev) == 5463 and {ex.label for ex in qnli_dev} == set(TASKS["qnli"].labels)
    with pytest.raises(DataError, match="QNLI: no train split"):
        read_splits(TASKS["qnli"], shared_data)


def test_qqp_sample_splits_90_10_the_same_way_every_time(shared_data):
    assert TASKS["qqp"].title == "QQP (train sample)"
    train, dev, _, dev_source = read_splits(TASKS["qqp"], shared_data)
    assert (len(train), len(dev)) == (21146, 2350) and "10%" in dev_source
    assert not {(e.text, e.pair) for e in train} & {(e.text, e.pair) for e in dev}
    again = read_splits(TASKS["qqp"], shared_data)[1]
    assert [e.line for e in again] == [e.line for e in dev]


def test_qqp_split_does_not_depend_on_row_order(tmp_path):
    rows = [f"{i}\t{i}\t{i + 1}\tquestion {i} one\tquestion {i} two\t{i % 2}" for i in range(200)]
    for name, order in (("a", rows), ("b", rows[::-1])):
        (tmp_path / name / "glue/QQP").mkdir(parents=True)
        (tmp_path / name / "glue/QQP/train_subset.tsv").write_text(
            "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n" + "\n".join(order) + "\n")
    dev_a = read_splits(TASKS["qqp"], tmp_path / "a")[1]
    dev_b = read_splits(TASKS["qqp"], tmp_path / "b")[1]
    assert len(dev_a) == 20 and {e.text for e in dev_a} == {e.text for e in dev_b}


# -- reader errors and the label order -------------------------------------------------------------------------
def _rte_file(path: Path, labels: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("index\tsentence1\tsentence2\tlabel\n"
                    + "".join(f"{i}\tpremise {i}\thypothesis {i}\t{label}\n" for i, label in enumerate(labels)))
    return path


def test_bad_rows_name_the_file_line_and_what_is_wrong(tmp_path):
    bad = _rte_file(tmp_path / "rte.tsv", ["entailment", "maybe"])
    with pytest.raises(DataError, match=r"rte.tsv:3: label 'maybe' is not one of RTE's labels"):
        read_file(TASKS["rte"], bad)
    cola = tmp_path / "cola.tsv"
    cola.write_text("gj04\t1\t\tFine.\ngj04\t1\tMissing a column.\n")
    with pytest.raises(DataError, match=r"cola.tsv:2: 3 tab-separated columns, expected 4"):
        read_file(TASKS["cola"], cola)
    mrpc = tmp_path / "mrpc.tsv"
    mrpc.write_text("\ufefflabel\t#1 String\t#2 String\n1\ta\tb\n")
    with pytest.raises(DataError, match=r"no column 'Quality' \(columns: label, #1 String, #2 String\)"):
        read_file(TASKS["mrpc"], mrpc)
    stsb = tmp_path / "stsb.tsv"
    stsb.write_text("sentence1\tsentence2\tscore\na\tb\thigh\n")
    with pytest.raises(DataError, match=r"stsb.tsv:2: score 'high' is not a number"):
        read_file(TASKS["stsb"], stsb)


def test_label_order_comes_from_the_task_and_a_sample_missing_a_label_is_refused(tmp_path):
    rows = read_file(TASKS["rte"], _rte_file(tmp_path / "rte.tsv", ["not_entailment"] * 5 + ["entailment"] * 5))
    check_label_order(TASKS["rte"], rows, "rte.tsv")
    one_sided = [ex for ex in rows if ex.label == "not_entailment"]
    with pytest.raises(ConfigError, match="hold no example of label 'entailment'; raise --max-train-rows"):
        check_label_order(TASKS["rte"], one_sided, "rte.tsv")
    sample = sample_rows(rows, 4)
    assert len(sample) == 4 and sample == sample_rows(rows, 4)  # fixed, whatever the seed of the run
    assert [ex.line for ex in sample] == sorted(ex.line for ex in sample)  # kept in file order


def test_task_names_parse_and_match_the_cli():
    assert parse_tasks("RTE, sts-b,rte") == ["rte", "stsb"]
    with pytest.raises(ConfigError, match="unknown task 'mnli-mm'"):
        parse_tasks("mnli-mm")
    assert cli_glue.TASK_NAMES == ",".join(TASKS)


# -- metrics ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("classes", [2, 3])
def test_mcc_and_f1_match_scikit_learn(classes):
    rng = np.random.default_rng(classes)
    for _ in range(20):
        gold = [str(x) for x in rng.integers(0, classes, 50)]
        pred = [str(x) if rng.random() < 0.6 else str(rng.integers(0, classes)) for x in gold]
        assert M.matthews_corrcoef(pred, gold) == pytest.approx(matthews_corrcoef(gold, pred), abs=1e-12)
        if classes == 2:
            assert M.binary_f1(pred, gold) == pytest.approx(f1_score(gold, pred, pos_label="1"), abs=1e-12)
            assert M.accuracy(pred, gold) == pytest.approx(np.mean(np.array(pred) == np.array(gold)))
    constant = ["1"] * 30
    gold = [str(x) for x in rng.integers(0, 2, 30)]
    assert M.matthews_corrcoef(constant, gold) == matthews_corrcoef(gold, constant) == 0.0


def test_pearson_and_spearman_match_scipy_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.normal(size=60)
        y = 0.5 * x + rng.normal(size=60)
        assert M.pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)
        tied_x, tied_y = np.round(x * 2) / 2, rng.integers(0, 5, 60).astype(float)  # many ties on both sides
        assert M.spearman(tied_x, tied_y) == pytest.approx(stats.spearmanr(tied_x, tied_y)[0], abs=1e-12)
        assert M.average_ranks(tied_x) == pytest.approx(stats.rankdata(tied_x))
    assert np.isnan(M.pearson([1.0, 1.0, 1.0], [0.0, 1.0, 2.0]))


def test_dead_runs_are_detected():
    assert M.dead_run(["1"] * 10, regression=False) == "predicted one class ('1') for every dev row"
    assert M.dead_run(["1"] * 9 + ["0"], regression=False) is None
    assert M.dead_run([2.5] * 10, regression=True) == "predicted the same score (2.500) for every dev row"
    assert M.dead_run([2.5, 2.6], regression=True) is None
    assert M.dead_run([float("nan"), 1.0], regression=True) == "predicted a non-finite score"


def _record(task: str, seed: int, values: dict[str, float | None], dead: str | None = None) -> dict:
    score = None if None in values.values() else float(np.mean(list(values.values())))
    return {"task": task, "title": TASKS[task].title, "seed": seed, "metrics": values, "score": score, "dead": dead,
            "predicted": {}, "train_s": 1.0, "run_dir": f"runs/{task}/seed{seed}", "dev_rows": 10, "steps": 1}


def test_combined_score_averages_two_metric_tasks_first_and_leaves_dead_runs_out(tmp_path):
    class Opts:
        model, seeds = "models/mini", 3

        @staticmethod
        def recipe():
            return {"epochs": 3.0, "lr": 5e-5, "batch_size": 32, "max_train_rows": None, "max_seq_len": 128}

    records = {
        "cola": [_record("cola", 0, {"mcc": 0.40}), _record("cola", 1, {"mcc": 0.0}, "predicted one class ('1') "
                                                                             "for every dev row"),
                 _record("cola", 2, {"mcc": 0.50})],
        "mrpc": [_record("mrpc", s, {"f1": 0.90, "accuracy": v}) for s, v in enumerate((0.80, 0.84, 0.82))],
        "stsb": [_record("stsb", s, {"pearson": 0.80, "spearman": 0.70}) for s in range(3)],
        "wnli": [_record("wnli", s, {"accuracy": 0.563}, "predicted one class ('0') for every dev row")
                 for s in range(3)],
    }
    data = {n: {"train_rows": 100, "train_rows_available": 100, "dev_rows": 10, "train_source": "x",
                "dev_source": "y"} for n in records}
    summary = summarize(Opts, records, data, {"qnli": "no train split here"})
    cola = summary["tasks"]["cola"]
    assert cola["score"]["mean"] == pytest.approx(0.45) and cola["score"]["n"] == 2  # the dead seed is out
    assert cola["score"]["std"] == pytest.approx(np.std([0.40, 0.50], ddof=1))
    assert cola["dead_seeds"] == {1: "predicted one class ('1') for every dev row"}
    assert summary["tasks"]["mrpc"]["score"]["mean"] == pytest.approx((0.90 + 0.82) / 2)
    assert summary["tasks"]["mrpc"]["metric_stats"]["accuracy"]["std"] == pytest.approx(0.02)
    glue = summary["glue_score"]
    assert glue["tasks"] == ["cola", "mrpc", "stsb"] and "wnli" in glue["left_out"]
    assert glue["score"] == pytest.approx((0.45 + 0.86 + 0.75) / 3)  # STS-B: (80 + 70) / 2 first
    md = table(summary)
    assert "| CoLA | Matthews corr. |" in md and "40.0, 0.0 **DEAD**, 50.0" in md and "45.0 ± 7.1" in md
    assert "1 of 3 seeds dead (seed 1: predicted one class ('1') for every dev row); left out of the mean" in md
    assert "| QNLI | accuracy | - | skipped | | | no train split here |" in md
    assert "**68.7**" in md and "Left out of the average: WNLI (every seed dead" in md


# -- a tiny run end to end --------------------------------------------------------------------------------------
WORDS = ["a", "man", "woman", "dog", "is", "not", "running", "eating", "the", "park", "food", "in", "plays", "music"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    """(model folder, data folder): a tiny random encoder and RTE / STS-B / QNLI files in GLUE's layouts."""
    root = tmp_path_factory.mktemp("glue")
    corpus = root / "c.txt"
    corpus.write_text("\n".join(" ".join(WORDS) for _ in range(5)))
    tok = train_tokenizer([corpus], kind="wordpiece", vocab_size=120, min_frequency=1)
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(vocab_size=tok.vocab_size, n_layers=1, d_model=32, n_heads=2, d_ff=64,
                                      max_positions=64, pad_token_id=tok.pad_id))
    ckpt.save_model(root / "model", model_state=model.state_dict(), config=model.config, tokenizer=tok)
    rng = random.Random(0)

    def sentence() -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8)))

    data = root / "data"
    for split, n in (("train", 60), ("dev", 30)):
        _rte_file(data / f"glue/RTE/{split}.tsv", [rng.choice(["entailment", "not_entailment"]) for _ in range(n)])
        stsb = data / f"glue/STS-B/{split}.tsv"
        stsb.parent.mkdir(parents=True, exist_ok=True)
        stsb.write_text("index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
                        + "".join(f"{i}\tmain\tx\t2012\t{i:04d}\tnone\tnone\t{sentence()}\t{sentence()}\t"
                                  f"{rng.uniform(0, 5):.3f}\n" for i in range(n)))
    _rte_file(data / "glue/QNLI/dev.tsv", ["entailment", "not_entailment"])
    return root / "model", data


def _glue(model: Path, data: Path, out: Path, *more: str) -> int:
    return main(["glue", "--model", str(model), "--out", str(out), "--tasks", "rte,stsb,qnli", "--data-dir",
                 str(data), "--epochs", "1", "--max-train-rows", "32", "--max-seq-len", "32", "--batch-size", "32",
                 "--device", "cpu", "--no-progress", *more])


def _from_predictions(out: Path, run_dir: str) -> tuple[list[str], list[str]]:
    lines = (out / run_dir / "predictions.tsv").read_text().splitlines()
    assert lines[0] == "source_line\tgold\tprediction"
    gold, pred = zip(*[line.split("\t")[1:] for line in lines[1:]], strict=True)
    return list(gold), list(pred)


def test_glue_runs_end_to_end_and_a_second_invocation_skips_finished_pairs(tiny, tmp_path, capsys, monkeypatch):
    model, data = tiny
    out = tmp_path / "glue"
    assert _glue(model, data, out, "--seeds", "1") == 0
    printed = capsys.readouterr().out
    assert "QNLI: skipped (no train split here (only glue/QNLI/dev.tsv))" in printed
    assert "[glue 1/2] RTE seed 0: accuracy " in printed and f"-> {out / 'runs/rte/seed0'}" in printed
    assert "[glue 2/2] STS-B seed 0: Pearson " in printed

    results = json.loads((out / "results.json").read_text())
    assert list(results["tasks"]) == ["rte", "stsb"] and results["skipped"] == {
        "qnli": "no train split here (only glue/QNLI/dev.tsv)"}
    rte = results["tasks"]["rte"]
    assert (rte["train_rows"], rte["train_rows_available"], rte["dev_rows"]) == (32, 60, 30)
    seed0 = rte["seeds"][0]
    gold, pred = _from_predictions(out, seed0["run_dir"])
    assert len(gold) == 30 and set(pred) <= {"entailment", "not_entailment"}
    assert seed0["metrics"]["accuracy"] == pytest.approx(np.mean(np.array(gold) == np.array(pred)))
    assert (seed0["dead"] is not None) == (len(set(pred)) == 1)
    assert seed0["predicted"] == {lbl: pred.count(lbl) for lbl in ("entailment", "not_entailment")}
    stsb = results["tasks"]["stsb"]["seeds"][0]
    gold_s, pred_s = _from_predictions(out, stsb["run_dir"])
    gold_f, pred_f = np.array(gold_s, dtype=float), np.array(pred_s, dtype=float)
    assert stsb["metrics"]["pearson"] == pytest.approx(stats.pearsonr(pred_f, gold_f)[0], abs=1e-6)
    assert stsb["metrics"]["spearman"] == pytest.approx(stats.spearmanr(pred_f, gold_f)[0], abs=1e-6)
    assert stsb["score"] == pytest.approx((stsb["metrics"]["pearson"] + stsb["metrics"]["spearman"]) / 2)
    assert results["glue_score"]["tasks"] == [t for t in ("rte", "stsb") if results["tasks"][t]["score"]["mean"]
                                             is not None]
    md = (out / "results.md").read_text()
    assert "| RTE | accuracy | 32 / 30 |" in md and "| STS-B | Pearson / Spearman | 32 / 30 |" in md
    assert "| QNLI | accuracy | - | skipped |" in md and "GLUE-style average" in md
    png = (out / "glue.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    assert not list((out / "runs/rte/seed0").glob("checkpoint-*"))  # the weights are gone, the results stay
    first_result = (out / "runs/rte/seed0/result.json").read_bytes()

    trained = []
    real = glue_run.finetune_run

    def spy(init, train_file, eval_file, out_dir, *args, **kwargs):
        trained.append(Path(out_dir).relative_to(out).as_posix())
        return real(init, train_file, eval_file, out_dir, *args, **kwargs)

    monkeypatch.setattr(glue_run, "finetune_run", spy)
    assert _glue(model, data, out, "--seeds", "2", "--tasks", "rte") == 0
    printed = capsys.readouterr().out
    assert trained == ["runs/rte/seed1"]  # seed 0 was not retrained
    assert "[glue 1/2] RTE seed 0: done before, skipped" in printed and "[glue 2/2] RTE seed 1: " in printed
    assert (out / "runs/rte/seed0/result.json").read_bytes() == first_result
    again = json.loads((out / "results.json").read_text())
    assert list(again["tasks"]) == ["rte"] and [s["seed"] for s in again["tasks"]["rte"]["seeds"]] == [0, 1]
    assert again["tasks"]["rte"]["seeds"][0] == seed0

    assert _glue(model, data, out, "--seeds", "2", "--lr", "1e-3") == 2  # another recipe in the same folder
    assert "holds a glue run with other settings (--lr: 5e-05 there, 0.001 now)" in capsys.readouterr().err


def test_user_mistakes_are_one_line(tiny, tmp_path, capsys):
    model, data = tiny
    assert main(["glue", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "nope: no such model folder" in capsys.readouterr().err
    assert main(["glue", "--model", str(model), "--out", str(tmp_path / "o"), "--data-dir", str(data),
                 "--tasks", "qnli"]) == 2
    assert "none of the tasks (qnli) can run" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--seeds must be at least 1"):
        GlueOptions(model=str(model), out=str(tmp_path / "o"), data_dir=str(data), seeds=0)


def test_a_diverged_seed_is_a_dead_run_not_a_crash(tiny, tmp_path, monkeypatch):
    model, data = tiny
    opts = GlueOptions(model=str(model), out=str(tmp_path / "o"), data_dir=str(data), tasks=["rte"], seeds=1)

    def diverge(*args, **kwargs):
        raise TrainingDiverged("loss became nan at step 3; stopped without saving. The last good checkpoint ...")

    monkeypatch.setattr(glue_run, "finetune_run", diverge)
    record = glue_run.run_pair(opts, TASKS["rte"], 0, glue_run.prepare_task(opts, TASKS["rte"]))
    assert record["dead"] == "training diverged (loss became nan at step 3)"
    assert record["metrics"] == {"accuracy": None} and record["score"] is None
    assert json.loads((tmp_path / "o/runs/rte/seed0/result.json").read_text()) == record  # done: not retried


def test_an_interrupted_pair_is_not_scored_or_marked_done(tiny, tmp_path, monkeypatch):
    model, data = tiny
    opts = GlueOptions(model=str(model), out=str(tmp_path / "o"), data_dir=str(data), tasks=["rte"], seeds=1)
    stopped = TrainResult(tmp_path / "o/runs/rte/seed0", tmp_path / "ckpt", 3, {}, 0.0, 1.0, "interrupted")
    monkeypatch.setattr(glue_run, "finetune_run", lambda *a, **k: (stopped, {}))
    with pytest.raises(KeyboardInterrupt):
        glue_run.run_pair(opts, TASKS["rte"], 0, glue_run.prepare_task(opts, TASKS["rte"]))
    assert glue_run.read_result(opts.out, "rte", 0) is None  # a rerun resumes this pair


def test_schedule_flags_reach_the_trainer_and_bad_ones_are_refused(tiny, tmp_path, monkeypatch, capsys):
    model, data = tiny
    seen = []

    def capture(init, train_file, eval_file, out_dir, fopts, cfg, **kwargs):
        seen.append(cfg)
        raise TrainingDiverged("stop here: only the settings are under test")

    monkeypatch.setattr(glue_run, "finetune_run", capture)
    assert main(["glue", "--model", str(model), "--out", str(tmp_path / "o"), "--data-dir", str(data), "--tasks",
                 "rte", "--seeds", "1", "--max-train-rows", "32", "--device", "cpu", "--no-progress",
                 "--warmup-steps", "7", "--min-lr-ratio", "0", "--layer-lr-decay", "0.8"]) == 0
    (cfg,) = seen
    assert (cfg.warmup_steps, cfg.min_lr_ratio, cfg.layer_lr_decay, cfg.seed) == (7, 0.0, 0.8, 0)
    capsys.readouterr()
    assert main(["glue", "--model", str(model), "--out", str(tmp_path / "p"), "--data-dir", str(data),
                 "--layer-lr-decay", "1.5"]) == 2
    assert "--layer-lr-decay must be in (0, 1]" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--min-lr-ratio must be in"):
        GlueOptions(model=str(model), out=str(tmp_path / "q"), data_dir=str(data), min_lr_ratio=-0.1)
    with pytest.raises(ConfigError, match="--warmup-steps must be at least 0"):
        GlueOptions(model=str(model), out=str(tmp_path / "q"), data_dir=str(data), warmup_steps=-1)


def test_a_folder_saved_before_a_recipe_key_existed_resumes_with_its_default(tiny, tmp_path):
    model, data = tiny
    out = tmp_path / "old"
    opts = GlueOptions(model=str(model), out=str(out), data_dir=str(data), tasks=["rte"])
    old_recipe = {k: v for k, v in opts.recipe().items() if k not in ("min_lr_ratio", "layer_lr_decay")}
    out.mkdir()
    (out / glue_run.SETTINGS_FILE).write_text(json.dumps({"recipe": old_recipe}))
    glue_run.check_recipe(opts)  # the defaults are what the old run used: it continues
    changed = GlueOptions(model=str(model), out=str(out), data_dir=str(data), tasks=["rte"], min_lr_ratio=0.0)
    with pytest.raises(ConfigError, match=r"\(--min-lr-ratio: 0.1 there, 0.0 now\)"):
        glue_run.check_recipe(changed)
