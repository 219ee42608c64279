"""Bag-of-characters baselines for the Chinese classification sets in ../shared/data/zh.

    python benchmarks/zh_baselines.py                      # all three tasks, train split -> dev split
    python benchmarks/zh_baselines.py --tasks chnsenticorp --max-train-rows 2000

Each text becomes TF-IDF weights of its character 1- and 2-grams (sublinear tf, grams seen in at least 2 training
texts), fed to a logistic regression (scikit-learn, a dev extra) with scikit-learn's default C=1 (--C changes it):
nothing is tuned on the dev split. SAGA suits TF-IDF rows (unit length): on online_shopping it fits in a fraction
of the 62 s of CPU lbfgs takes, to the same dev accuracy (0.900 vs 0.901). The files
are read by twinlm's own classification reader and scored with twinlm's accuracy and macro-F1, so the figures sit in
the same table as `twinlm finetune` on the same files. Prints one JSON object: per task the rows, classes, the
majority-class accuracy, accuracy and macro-F1 on dev, the wall time and this process's CPU time (the wall time
of a busy machine says little). Measured: 32 s of CPU in all, 27 s of it online_shopping's 56,773 rows.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import SHARED_DATA  # noqa: E402

from twinlm.data.tasks import read_classification  # noqa: E402
from twinlm.evaluate import accuracy, macro_f1  # noqa: E402

ZH = SHARED_DATA / "zh"
# task -> (train file, dev file, label column)
TASKS = {
    "chnsenticorp": ("sentiment/chnsenticorp_htl_train.tsv", "sentiment/chnsenticorp_htl_dev.tsv", "label"),
    "waimai": ("sentiment/waimai_10k_train.tsv", "sentiment/waimai_10k_dev.tsv", "label"),
    "online_shopping_topic": ("topic/online_shopping_train.tsv", "topic/online_shopping_dev.tsv", "category"),
}


TOL = 1e-4


def run_task(name: str, c: float, max_train_rows: int | None) -> dict:
    """Fit on the train split, score on the dev split."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    train_file, dev_file, column = TASKS[name]
    start, cpu = time.perf_counter(), time.process_time()
    train = read_classification(ZH / train_file, label_column=column, max_rows=max_train_rows)
    dev = read_classification(ZH / dev_file, label_column=column)
    vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    x_train = vectorizer.fit_transform([ex.text for ex in train])
    y_train = [ex.label for ex in train]
    regression = LogisticRegression(C=c, solver="saga", tol=TOL, max_iter=2000).fit(x_train, y_train)
    preds = list(regression.predict(vectorizer.transform([ex.text for ex in dev])))
    gold = [ex.label for ex in dev]
    majority = Counter(y_train).most_common(1)[0][0]
    return {"train": f"{train_file} ({len(train)} rows)", "dev": f"{dev_file} ({len(dev)} rows)",
            "label_column": column, "classes": len(set(gold) | set(y_train)), "features": x_train.shape[1], "C": c,
            "majority_accuracy": round(accuracy([majority] * len(gold), gold), 4),
            "accuracy": round(accuracy(preds, gold), 4), "macro_f1": round(macro_f1(preds, gold), 4),
            "wall_s": round(time.perf_counter() - start, 2), "cpu_s": round(time.process_time() - cpu, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--C", type=float, default=1.0, help="the regression's inverse regularisation strength")
    parser.add_argument("--max-train-rows", type=int, default=None, help="first N training rows only (a quick run)")
    args = parser.parse_args()
    if not ZH.is_dir():
        sys.exit(f"{ZH}: the Chinese data is absent (set TWINLM_SHARED_DATA to point at shared/data)")
    import sklearn

    start, cpu = time.perf_counter(), time.process_time()
    results = {name: run_task(name, args.C, args.max_train_rows) for name in args.tasks}
    print(json.dumps({"benchmark": "zh_baselines",
                      "model": "TF-IDF character 1-2 grams + logistic regression",
                      "split": "train -> dev", "tasks": results, "wall_s": round(time.perf_counter() - start, 2),
                      "cpu_s": round(time.process_time() - cpu, 2),
                      "sklearn": sklearn.__version__, "python": platform.python_version()},
                     indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
