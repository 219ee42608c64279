"""Fine-tuning on understanding tasks through the one trainer, evaluation, and the inference API.

A fine-tuned model is a TaskModel (backbone + head). Its config.json records the task in ``extra['task']``
(task, labels, problem type, max_seq_len), so `evaluate` and the inference functions know what it was trained for.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .data import tasks as T
from .errors import ConfigError, DataError
from .evaluate import classification_metrics, cmrc_metrics, entities, entity_metrics, squad_metrics
from .heads import TASKS, TaskLoss, TaskModel, check_pooling
from .loading import Loaded, check_task, load
from .model import LanguageModel, device_of
from .tokenizer import Tokenizer
from .train import TrainConfig, Trainer, TrainResult

BEST_METRIC = {"classify": "accuracy", "qa": "f1", "ner": "f1"}
QA_METRICS = ("auto", "squad", "cmrc")
CMRC_HAN_SHARE = 0.3  # auto: contexts with more than this share of Han characters are scored with CMRC's metric


def check_metric(opts: FinetuneOptions) -> None:
    """A --metric other than auto is a QA choice, --truncation other than head and --pooling other than auto are
    classification ones: anything else, or another task, is a ConfigError."""
    check_pooling(opts.pooling, opts.task)  # before any data is read; TaskModel checks it again for API users
    if opts.truncation not in T.TRUNCATION:
        raise ConfigError(f"--truncation {opts.truncation!r} is unknown; choose one of {', '.join(T.TRUNCATION)}")
    if opts.truncation != "head" and opts.task != "classify":
        raise ConfigError(f"--truncation {opts.truncation} applies to --task classify only, not {opts.task}")
    if opts.metric not in QA_METRICS:
        raise ConfigError(f"--metric {opts.metric!r} is unknown; choose one of {', '.join(QA_METRICS)}")
    if opts.metric != "auto" and opts.task != "qa":
        raise ConfigError(f"--metric {opts.metric} applies to --task qa only, not {opts.task}")


def qa_metric(choice: str, examples: list) -> str:
    """'squad' or 'cmrc': the choice itself, or for 'auto' CMRC 2018's metric when the contexts are Chinese."""
    if choice not in QA_METRICS:
        raise ConfigError(f"--metric {choice!r} is unknown; choose one of {', '.join(QA_METRICS)}")
    if choice != "auto":
        return choice
    contexts = list(dict.fromkeys(ex.context for ex in examples))  # each paragraph once, however many questions
    return "cmrc" if T.han_fraction(contexts) > CMRC_HAN_SHARE else "squad"


@dataclass
class FinetuneOptions:
    task: str
    max_seq_len: int = 128
    doc_stride: int = 128
    max_answer_len: int = 30
    problem: str = "single_label"
    text_column: str | None = None
    pair_column: str | None = None
    label_column: str = "label"
    max_train_rows: int | None = None
    max_eval_rows: int | None = None
    labels: list[str] | None = None  # the label order, fixed by the task (GLUE); None: sorted labels of the data
    eval_batch_size: int = 64
    dropout: float | None = 0.1  # backbone dropout while fine-tuning (BERT's 0.1); None keeps the checkpoint's
    metric: str = "auto"  # qa: squad | cmrc | auto (CMRC 2018's for Chinese contexts, SQuAD's otherwise)
    batching: str = "length"  # training batches: length (grouped, little padding) | random | pack (see train_batches)
    truncation: str = "head"  # classify: which tokens an over-long text keeps: head | head-tail (see T.cut_tokens)
    pooling: str = "auto"  # classify: auto ([CLS] or the last token, by attention) | mean (see heads.mean_pooled)


@dataclass
class TaskData:
    """Examples and features of one file for one task."""

    task: str
    examples: list
    features: list[dict[str, Any]]
    source: str


def task_info(model: nn.Module) -> dict[str, Any] | None:
    """The 'task' entry of a model's config, or None for a plain language model."""
    return model.config.extra.get("task")


def build_data(path: str | Path, tokenizer: Tokenizer, opts: FinetuneOptions, labels: list[str] | None,
               train: bool, max_rows: int | None) -> tuple[TaskData, list[str]]:
    """Read and featurise ``path``; labels None means: derive them from this (training) file."""
    path = Path(path)
    if opts.task == "classify":
        examples = T.read_classification(path, opts.text_column, opts.label_column, opts.pair_column, opts.problem,
                                         max_rows)
        labels = labels or T.label_list(examples, opts.problem)
        feats = T.featurize_classification(examples, tokenizer, labels, opts.problem, opts.max_seq_len, str(path),
                                           opts.truncation)
    elif opts.task == "qa":
        examples = T.read_squad(path)[:max_rows] if max_rows else T.read_squad(path)
        labels = labels or ["start", "end"]
        feats = T.featurize_qa(examples, tokenizer, opts.max_seq_len, opts.doc_stride, train=True)
    elif opts.task == "ner":
        examples = T.read_conll(path, max_rows)
        labels = labels or T.ner_labels(examples)
        feats = T.featurize_ner(examples, tokenizer, labels, opts.max_seq_len, str(path))
    else:
        raise ConfigError(f"unknown task {opts.task!r}; choose one of {', '.join(TASKS)}")
    return TaskData(opts.task, examples, feats, str(path)), labels


def length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Row indices per inference batch: rows sorted by length, then cut every ``batch_size``."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


BATCHING = ("length", "random", "pack")
POOL_BATCHES = 50  # length grouping sorts pools of this many batches (Hugging Face's group_by_length uses 50 too)


def check_batching(opts: FinetuneOptions) -> None:
    """An unknown --batching, or packing a task whose rows cannot be packed, is a ConfigError."""
    if opts.batching not in BATCHING:
        raise ConfigError(f"--batching {opts.batching!r} is unknown; choose one of {', '.join(BATCHING)}")
    if opts.batching == "pack" and opts.task == "qa":
        raise ConfigError("--batching pack: question answering reads positions inside each window, so its rows "
                          "cannot be packed; use --batching length")


def train_batches(lengths: list[int] | np.ndarray, batch_size: int, seed: int, epoch: int,
                  how: str = "length", pool: int = POOL_BATCHES) -> list[np.ndarray]:
    """One epoch of training batches (row indices): every row exactly once, in an order seeded by (seed, epoch).

    'random' (and 'pack', which packs each random batch) cuts a permutation every ``batch_size`` rows. 'length' cuts
    the permutation into pools of ``pool`` batches, sorts each pool by length and cuts it into batches, then shuffles
    all the batches: a batch holds random rows of similar length (so dynamic padding adds little), and which
    lengths come when is random, so the epoch stays an unbiased pass over the data. Only the epoch's last batch
    can be short.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if how != "length":
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    lengths = np.asarray(lengths)
    span = batch_size * pool
    batches = []
    for i in range(0, len(order), span):
        chunk = order[i:i + span]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size))
    return [batches[k] for k in rng.permutation(len(batches))]


def pack_examples(lengths: list[int], width: int) -> list[list[int]]:
    """Indices of whole examples per row of at most ``width`` tokens, first fit by decreasing length."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        fit = next((r for r, free in enumerate(room) if lengths[i] <= free), None)
        if fit is None:
            rows.append([i])
            room.append(width - lengths[i])
        else:
            rows[fit].append(i)
            room[fit] -= lengths[i]
    return rows


def pack_collate(features: list[dict[str, Any]], pad_id: int, width: int) -> dict[str, torch.Tensor]:
    """Several examples per row (see pack_examples): segment_ids number them 1, 2, ... in each row (0: padding),
    position_ids restart at 0 for each, and sequence labels follow the examples in row-major order, which is the
    order TaskModel returns their logits in. Token labels (NER) are packed like the ids."""
    rows = pack_examples([len(f["input_ids"]) for f in features], width)
    used = max(sum(len(features[i]["input_ids"]) for i in row) for row in rows)
    shape = (len(rows), used)
    ids = torch.full(shape, pad_id, dtype=torch.long)
    segments, positions, types = torch.zeros(shape, dtype=torch.long), torch.zeros(shape, dtype=torch.long), None
    token_labels = "labels" in features[0] and isinstance(features[0]["labels"], list) and "word_ids" in features[0]
    labels = torch.full(shape, T.IGNORE, dtype=torch.long) if token_labels else None
    if "token_type_ids" in features[0]:
        types = torch.zeros(shape, dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for s, i in enumerate(row, 1):
            f, n = features[i], len(features[i]["input_ids"])
            ids[r, at:at + n] = torch.tensor(f["input_ids"])
            segments[r, at:at + n] = s
            positions[r, at:at + n] = torch.arange(n)
            if types is not None:
                types[r, at:at + n] = torch.tensor(f["token_type_ids"])
            if labels is not None:
                labels[r, at:at + n] = torch.tensor(f["labels"])
            at += n
    batch = {"input_ids": ids, "attention_mask": (segments != 0).long(), "segment_ids": segments,
             "position_ids": positions}
    if types is not None:
        batch["token_type_ids"] = types
    if labels is not None:
        batch["labels"] = labels
    elif "labels" in features[0]:  # one label per example: collate them in the packed order
        batch["labels"] = T.collate([features[i] for row in rows for i in row], pad_id)["labels"]
    return batch


@torch.inference_mode()  # lighter than no_grad (no version counters, no view tracking); logits are only read
def predict_logits(model: TaskModel, features: list[dict[str, Any]], pad_id: int, batch_size: int = 64,
                   autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                   ) -> list[torch.Tensor]:
    """Logits per feature (unpadded), batching length-sorted rows so little compute goes to padding."""
    was_training = model.training
    model.eval()
    device = device_of(model)
    out: list[torch.Tensor | None] = [None] * len(features)
    for idx in length_batches([len(f["input_ids"]) for f in features], batch_size):
        batch = T.collate([{k: v for k, v in features[j].items() if k in ("input_ids", "token_type_ids")}
                           for j in idx], pad_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast():
            logits, _ = model(**batch)
        logits = logits.float().cpu()
        for row, j in enumerate(idx):
            out[j] = logits[row] if model.task == "classify" else logits[row, :len(features[j]["input_ids"])]
    model.train(was_training)
    return out  # type: ignore[return-value]


def score_task(model: TaskModel, data: TaskData, tokenizer: Tokenizer, opts: FinetuneOptions,
               autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
               ) -> tuple[dict[str, float], list[Any]]:
    """(metrics, predictions) of a model on labelled data."""
    info = task_info(model)
    labels = info["labels"]
    logits = predict_logits(model, data.features, tokenizer.pad_id, opts.eval_batch_size, autocast)
    if data.task == "classify":
        problem = info.get("problem", "single_label")
        if problem == "regression":
            preds = [float(x.squeeze()) for x in logits]
            gold = [float(ex.label) for ex in data.examples]
            mse = float(np.mean((np.array(preds) - np.array(gold)) ** 2))
            pearson = float(np.corrcoef(preds, gold)[0, 1]) if len(preds) > 1 else 0.0
            return {"mse": mse, "pearson": pearson}, preds
        if problem == "multi_label":
            preds = [",".join(lbl for lbl, z in zip(labels, x.tolist(), strict=True) if z > 0) for x in logits]
            gold = [",".join(sorted(ex.label.split(","), key=labels.index)) for ex in data.examples]
            return classification_metrics(preds, gold), preds
        preds = [labels[int(x.argmax())] for x in logits]
        return classification_metrics(preds, [ex.label for ex in data.examples]), preds
    if data.task == "qa":
        starts = _pad_stack([x[:, 0] for x in logits])
        ends = _pad_stack([x[:, 1] for x in logits])
        spans = T.best_spans(data.features, starts, ends, data.examples, opts.max_answer_len,
                             allow_impossible=any(ex.impossible for ex in data.examples))
        preds = {qid: s["answer"] for qid, s in spans.items()}
        golds = {ex.qid: ex.answers for ex in data.examples}
        scorer = cmrc_metrics if qa_metric(opts.metric, data.examples) == "cmrc" else squad_metrics
        return scorer(preds, golds), [spans[ex.qid] for ex in data.examples]
    preds = [_word_tags(f, x, labels) for f, x in zip(data.features, logits, strict=True)]
    gold = [ex.tags for ex in data.examples]
    metrics = entity_metrics(preds, gold)
    flat = [(p == g) for ps, gs in zip(preds, gold, strict=True) for p, g in zip(ps, gs, strict=True)]
    metrics["token_accuracy"] = sum(flat) / max(len(flat), 1)
    return metrics, preds


def _pad_stack(rows: list[torch.Tensor]) -> torch.Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), float("-inf"))
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def _word_tags(feature: dict[str, Any], logits: torch.Tensor, labels: list[str]) -> list[str]:
    """One tag per word, read from its first sub-token; words cut off by truncation get 'O'."""
    tags = ["O"] * feature["n_words"]
    seen = set()
    best = logits.argmax(-1).tolist()  # one argmax for the row: per word it costs a tensor op each
    for pos, w in enumerate(feature["word_ids"]):
        if w is not None and w not in seen:
            seen.add(w)
            tags[w] = labels[best[pos]]
    return tags


class FinetuneTask:
    """Trainer task: shuffled epochs over the training features (batched as opts.batching says, see
    train_batches); every batch a pure function of its step."""

    find_unused_parameters = True  # the pretrained LM head gets no gradient here; DDP must be told

    def __init__(self, train: TaskData, evaluation: TaskData | None, tokenizer: Tokenizer, opts: FinetuneOptions,
                 batch_size: int, grad_accum: int, seed: int) -> None:
        check_batching(opts)
        self.train, self.eval, self.tokenizer, self.opts = train, evaluation, tokenizer, opts
        self.batch_size, self.grad_accum, self.seed = batch_size, grad_accum, seed
        self.lengths = np.array([len(f["input_ids"]) for f in train.features])
        self._plan: tuple[int, int, list[np.ndarray]] | None = None  # (epoch, world, batches): the current epoch

    def loss_module(self, model: nn.Module) -> nn.Module:
        return TaskLoss(model)

    def epoch_batches(self, epoch: int, world: int = 1) -> list[np.ndarray]:
        """The global batches (batch_size rows per process) of one epoch, computed once per epoch."""
        if self._plan is None or self._plan[:2] != (epoch, world):
            batches = train_batches(self.lengths, self.batch_size * world, self.seed, epoch, self.opts.batching)
            self._plan = (epoch, world, batches)
        return self._plan[2]

    def batch(self, step: int, micro: int, rank: int, world: int) -> dict[str, Any]:
        per_epoch = math.ceil(len(self.lengths) / (self.batch_size * world))
        epoch, index = divmod(step * self.grad_accum + micro, per_epoch)
        rows = self.epoch_batches(epoch, world)[index]
        if world > 1:  # each rank its share of the global batch; a last batch of fewer rows than ranks repeats
            rows = np.array_split(np.resize(rows, max(len(rows), world)), world)[rank]
        keep = ("input_ids", "token_type_ids", "labels", "start_positions", "end_positions", "word_ids")
        feats = [{k: v for k, v in self.train.features[i].items() if k in keep} for i in rows]
        if self.opts.batching == "pack":
            return pack_collate(feats, self.tokenizer.pad_id, self.opts.max_seq_len)
        return T.collate(feats, self.tokenizer.pad_id)

    def tokens(self, batch: dict[str, Any]) -> int:
        return int(batch["attention_mask"].sum())

    def targets(self, batch: dict[str, Any]) -> int:
        """What the batch's mean loss is over: its labelled tokens (ner) or its examples (classify, qa), so that
        accumulated micro-batches of different sizes weigh by their share (Trainer._weights)."""
        if self.opts.task == "ner":
            return int((batch["labels"] != T.IGNORE).sum())
        if self.opts.task == "qa":
            return int((batch["start_positions"] != T.IGNORE).sum())
        return len(batch["labels"])

    def evaluate(self, model: nn.Module, autocast: Callable[[], contextlib.AbstractContextManager]) -> dict:
        if self.eval is None:
            return {}
        return score_task(model, self.eval, self.tokenizer, self.opts, autocast)[0]


# -- loading --------------------------------------------------------------------------------------------------
def load_init(path: str | Path, task: str) -> tuple[LanguageModel, Tokenizer, dict | None, Loaded]:
    """The backbone to start from: a twinlm model/run folder, a fine-tuned model of the same task, or a Hugging
    Face folder. Returns (language model, tokenizer, previous task info with its state or None, the Loaded)."""
    loaded = load(path)
    previous = loaded.info["task"]
    if previous:
        check_task(previous, task, loaded.info["folder"], path)
        previous = {**previous, "state": loaded.model.state_dict()}
    return loaded.lm, loaded.tokenizer, previous, loaded  # type: ignore[return-value]


def set_dropout(lm: LanguageModel, p: float) -> None:
    """Set every dropout rate of a built model (modules and attention) and record it in its config."""
    if not 0.0 <= p < 1.0:
        raise ConfigError(f"--dropout must be in [0, 1), got {p}")
    for module in lm.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
        elif hasattr(module, "dropout") and isinstance(module.dropout, float):
            module.dropout = p  # SelfAttention keeps its attention-dropout rate as a float
    lm.config = lm.backbone.config = lm.config.replace(dropout=p)


# -- the run --------------------------------------------------------------------------------------------------
_NOTED: set[str] = set()


def _note(text: str) -> None:
    """Print a note about the starting model once per process: `glue` and `compare` fine-tune it many times."""
    if text not in _NOTED:
        _NOTED.add(text)
        print(f"note: {text}")


def finetune_run(init: str | Path, train_file: str | Path, eval_file: str | Path | None, out_dir: str | Path,
                 opts: FinetuneOptions, cfg: TrainConfig, epochs: float = 3.0,
                 resume: str | None = None) -> tuple[TrainResult, dict[str, float]]:
    """Fine-tune ``init`` on ``train_file``, evaluating on ``eval_file`` each epoch and keeping out/best."""
    if opts.task not in TASKS:
        raise ConfigError(f"unknown task {opts.task!r}; choose one of {', '.join(TASKS)}")
    check_metric(opts)
    check_batching(opts)
    lm, tokenizer, previous, loaded = load_init(init, opts.task)
    for note in loaded.info["notes"]:
        _note(f"{init}: {note}")
    if loaded.info.get("extra_tensors"):
        # A Hugging Face task head (e.g. BERT's pooler + classifier) computes from other features than twinlm's
        # head, so its weights are not copied in: the head starts fresh, as the note says.
        heads = ", ".join(sorted(loaded.info["extra_tensors"]))
        _note(f"{init}: the checkpoint's own task-head tensors ({heads}) are not used; twinlm's task head starts "
              "from random weights")
    if opts.max_seq_len > lm.config.max_positions:
        raise ConfigError(f"--max-seq-len {opts.max_seq_len} is above the model's max_positions="
                          f"{lm.config.max_positions}")
    labels = previous["labels"] if previous else opts.labels
    train, labels = build_data(train_file, tokenizer, opts, labels, True, opts.max_train_rows)
    evaluation = build_data(eval_file, tokenizer, opts, labels, False, opts.max_eval_rows)[0] if eval_file else None
    torch.manual_seed(cfg.seed)
    if opts.dropout is not None:
        set_dropout(lm, opts.dropout)
    model = TaskModel(lm, opts.task, len(labels), opts.problem, opts.pooling)
    if previous:
        model.load_state_dict(previous["state"])
    model.lm.config = lm.config.replace(extra={**lm.config.extra, "task": {
        "task": opts.task, "labels": labels, "problem": opts.problem, "max_seq_len": opts.max_seq_len,
        "doc_stride": opts.doc_stride, "max_answer_len": opts.max_answer_len, "truncation": opts.truncation,
        "pooling": opts.pooling}})
    model.lm.backbone.config = model.lm.config
    world = int(os.environ.get("WORLD_SIZE", "1"))
    steps_per_epoch = max(1, math.ceil(len(train.features) / (cfg.batch_size * cfg.grad_accum * world)))
    cfg.max_steps = max(1, round(epochs * steps_per_epoch))
    if cfg.eval_every is None:
        cfg.eval_every = steps_per_epoch
    if cfg.save_every is not None:
        cfg.save_every = min(cfg.save_every, cfg.max_steps)
    if evaluation is not None and cfg.best_metric is None:
        cfg.best_metric = BEST_METRIC[opts.task] if opts.problem != "regression" else "mse"
        if opts.task == "qa" and qa_metric(opts.metric, evaluation.examples) == "cmrc":
            cfg.best_metric = "cmrc_f1"
        cfg.greater_is_better = cfg.best_metric != "mse"
    task = FinetuneTask(train, evaluation, tokenizer, opts, cfg.batch_size, cfg.grad_accum, cfg.seed)
    trainer = Trainer(model, task, cfg, out_dir, tokenizer=tokenizer,
                      run_info={"task": opts.task, "init": str(init), "options": asdict(opts)})
    result = trainer.train(resume=resume)
    best = {}
    best_file = Path(out_dir) / "best_metrics.json"
    if best_file.exists():
        best = json.loads(best_file.read_text())
    return result, best


# -- inference ------------------------------------------------------------------------------------------------
def _opts_for(model: TaskModel) -> FinetuneOptions:
    info = task_info(model)
    return FinetuneOptions(task=info["task"], max_seq_len=info.get("max_seq_len", 128),
                           doc_stride=info.get("doc_stride", 128), max_answer_len=info.get("max_answer_len", 30),
                           problem=info.get("problem", "single_label"), truncation=info.get("truncation", "head"))


def classify(model: TaskModel, tokenizer: Tokenizer, texts: list[str], pairs: list[str] | None = None,
             batch_size: int = 64) -> list[dict[str, Any]]:
    """Label and probability for each text (multi-label: every label above 0.5; regression: the score)."""
    info, opts = task_info(model), _opts_for(model)
    if info["task"] != "classify":
        raise ConfigError(f"this model was fine-tuned for {info['task']}, not classification")
    feats = []
    for i, text in enumerate(texts):
        if not text or not text.strip():
            raise DataError(f"text {i} is empty")
        ids, types = T.encode_pair(tokenizer, text, pairs[i] if pairs else None, opts.max_seq_len, opts.truncation)
        feats.append({"input_ids": ids, "token_type_ids": types})
    out = []
    for logits in predict_logits(model, feats, tokenizer.pad_id, batch_size):
        if opts.problem == "regression":
            out.append({"label": "score", "score": float(logits.squeeze())})
        elif opts.problem == "multi_label":
            probs = logits.sigmoid().tolist()
            out.append({"labels": [lbl for lbl, p in zip(info["labels"], probs, strict=True) if p > 0.5],
                        "scores": dict(zip(info["labels"], probs, strict=True))})
        else:
            probs = logits.softmax(-1)
            out.append({"label": info["labels"][int(probs.argmax())], "score": float(probs.max())})
    return out


def answer(model: TaskModel, tokenizer: Tokenizer, question: str | list[str], context: str | list[str],
           batch_size: int = 64) -> dict[str, Any] | list[dict[str, Any]]:
    """The best answer span: {'answer', 'start', 'end' (character offsets in the context), 'score'}."""
    info, opts = task_info(model), _opts_for(model)
    if info["task"] != "qa":
        raise ConfigError(f"this model was fine-tuned for {info['task']}, not question answering")
    single = isinstance(question, str)
    questions = [question] if single else list(question)
    contexts = [context] * len(questions) if isinstance(context, str) else list(context)
    examples = [T.QAExample(str(i), q, c) for i, (q, c) in enumerate(zip(questions, contexts, strict=True))]
    feats = T.featurize_qa(examples, tokenizer, opts.max_seq_len, opts.doc_stride, train=False)
    logits = predict_logits(model, feats, tokenizer.pad_id, batch_size)
    spans = T.best_spans(feats, _pad_stack([x[:, 0] for x in logits]), _pad_stack([x[:, 1] for x in logits]),
                         examples, opts.max_answer_len)
    results = [spans[ex.qid] for ex in examples]
    return results[0] if single else results


def tag(model: TaskModel, tokenizer: Tokenizer, text: str | list[str], batch_size: int = 64,
        ) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
    """Entities with character offsets: [{'text', 'type', 'start', 'end', 'score'}] (words: T.word_spans, white
    space apart and each CJK character alone)."""
    info, opts = task_info(model), _opts_for(model)
    if info["task"] != "ner":
        raise ConfigError(f"this model was fine-tuned for {info['task']}, not NER")
    single = isinstance(text, str)
    texts = [text] if single else list(text)
    spans = [T.word_spans(t) for t in texts]
    examples = [T.NERExample([t[s:e] for s, e in sp] or [""], ["O"] * max(len(sp), 1), 0)
                for t, sp in zip(texts, spans, strict=True)]
    feats = T.featurize_ner(examples, tokenizer, info["labels"], opts.max_seq_len)
    results = []
    for t, sp, f, logits in zip(texts, spans, feats, predict_logits(model, feats, tokenizer.pad_id, batch_size),
                                strict=True):
        probs = logits.softmax(-1)
        tags = _word_tags(f, logits, info["labels"]) if sp else []
        first = {}
        for pos, w in enumerate(f["word_ids"]):
            if w is not None and w not in first:
                first[w] = pos
        found = []
        for kind, a, b in sorted(entities(tags), key=lambda x: x[1]):
            score = float(np.mean([float(probs[first[w]].max()) for w in range(a, b + 1) if w in first] or [0.0]))
            start, end = sp[a][0], sp[b][1]
            found.append({"text": t[start:end], "type": kind, "start": start, "end": end, "score": score})
        results.append(found)
    return results[0] if single else results
