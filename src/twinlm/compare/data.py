"""The shared inputs of a comparison: one tokenizer, one prepared corpus, the held-out text and the token budget."""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path
from typing import Any

from ..data.corpus import prepare_corpus
from ..data.exclude import text_key, without_excluded
from ..data.readers import iter_documents
from ..data.tasks import read_classification
from ..errors import DataError
from ..pretrain import PretrainOptions
from ..tokenizer import is_cjk, load_tokenizer, train_tokenizer
from ..train import TrainConfig
from .plan import DEFAULT_STEPS, CompareOptions, Variant, variants

# A sentence ends after . ! or ? (maybe closed by a quote) and whitespace, or right after Chinese 。！？ or the
# full-width period ．, a closing quote or bracket included: Chinese puts no space between sentences.
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"'”’)]))\s+"
                           r"|(?<=[。！？．])(?![”’」』）])\s*|(?<=[。！？．][”’」』）])\s*")
CHUNK_CHARS = 4000  # a longer document (a novel with no blank lines) is held out in chunks of about this size
PROBE_STEPS = 8  # steps timed per variant to turn --time-budget into a number of steps


def paths(out: str | Path) -> dict[str, Path]:
    out = Path(out)
    return {"tokenizer": out / "tokenizer", "data": out / "data", "train_text": out / "corpus" / "train.txt",
            "heldout_text": out / "corpus" / "heldout.txt", "scored_text": out / "corpus" / "heldout_scored.txt"}


def chunks(doc: str, size: int = CHUNK_CHARS) -> list[str]:
    """``doc`` cut at line ends into pieces of at least ``size`` characters (the last may be shorter)."""
    out, piece, n = [], [], 0
    for line in doc.splitlines():
        piece.append(line)
        n += len(line) + 1
        if n >= size:
            out.append("\n".join(piece))
            piece, n = [], 0
    if piece:
        out.append("\n".join(piece))
    return out


def split_corpus(opts: CompareOptions) -> tuple[list[str], list[str]]:
    """(training documents, held-out documents): --heldout's documents, else every Nth document of the corpus.

    Documents are paragraphs (blank-line separated); one longer than CHUNK_CHARS counts as its chunks, so a novel
    written one paragraph per line with no blank lines (the Chinese classics) still has every Nth piece held out.
    """
    train, heldout = [], []
    docs = (c for f in opts.corpus for d in iter_documents(f) for c in chunks(d))
    for i, doc in enumerate(docs):
        if opts.heldout is None and i % opts.heldout_every == opts.heldout_every - 1:
            heldout.append(doc)
        else:
            train.append(doc)
    if opts.heldout is not None:
        heldout = list(iter_documents(opts.heldout))
    return train, heldout


def lines_of(text: str) -> list[str]:
    """The non-empty lines of a text, stripped."""
    return [s.strip() for s in text.splitlines() if s.strip()]


def join_lines(doc: str) -> str:
    """A document's hard-wrapped lines as one line: a space between words, none between Chinese characters."""
    out = ""
    for line in (x.strip() for x in doc.splitlines()):
        if not line:
            continue
        glue = "" if not out or (is_cjk(out[-1]) and is_cjk(line[0])) else " "
        out += glue + " ".join(line.split())
    return out


def sentences(documents: list[str]) -> list[str]:
    """One line per sentence: a document's lines joined, then cut after . ! or ? (and a closing quote) and
    whitespace, or after Chinese 。！？．."""
    out = []
    for doc in documents:
        out += [s.strip() for s in _SENTENCE_END.split(join_lines(doc)) if s.strip()]
    return out


def task_dev_texts(opts: CompareOptions) -> frozenset[str]:
    """The texts of every classification task's dev split (as data.exclude keys).

    The pretraining corpus must not contain them: public review sets share rows (most of ChnSentiCorp's dev reviews
    are rows of the online-shopping train split), and a model that has read the dev texts is scored unfairly.
    """
    return frozenset(text_key(e.text) for t in opts.tasks if t.task == "classify" for e in read_classification(t.dev))


def prepare(opts: CompareOptions) -> dict[str, Any]:
    """Part 'data': split off the held-out text, train (or load) the tokenizer, prepare the shards.

    Training documents equal to a classification task's dev text are dropped (and counted).
    """
    p = paths(opts.out)
    train_docs, heldout_docs = split_corpus(opts)
    excluded = [0]
    train_docs = list(without_excluded(train_docs, task_dev_texts(opts), excluded))
    if not heldout_docs:
        raise DataError("no held-out text: the corpus has fewer documents than heldout_every; pass --heldout FILE")
    p["train_text"].parent.mkdir(parents=True, exist_ok=True)
    p["train_text"].write_text("\n\n".join(train_docs) + "\n")
    heldout_lines = sentences(heldout_docs)
    p["heldout_text"].write_text("\n".join(heldout_lines) + "\n")
    scored, size = [], 0
    for line in heldout_lines:  # the slice scored for (pseudo-)perplexity: whole lines up to heldout_chars
        if scored and size + len(line) + 1 > opts.heldout_chars:
            break
        scored.append(line)
        size += len(line) + 1
    p["scored_text"].write_text("\n".join(scored))
    if opts.tokenizer:
        tok = load_tokenizer(opts.tokenizer)
    else:
        tok = train_tokenizer([p["train_text"]], kind="bpe", vocab_size=opts.vocab_size)
    shutil.rmtree(p["tokenizer"], ignore_errors=True)
    p["tokenizer"].mkdir(parents=True)
    tok.save(p["tokenizer"])
    shutil.rmtree(p["data"], ignore_errors=True)  # a folder left by a killed run is rebuilt from scratch
    meta = prepare_corpus([p["train_text"]], tok, p["data"], val_fraction=0.05, workers=1, progress=opts.progress)
    return {"tokenizer": "tokenizer", "data": "data", "train_text": "corpus/train.txt",
            "heldout_text": "corpus/heldout.txt", "scored_text": "corpus/heldout_scored.txt",
            "vocab_size": tok.vocab_size, "train_documents": len(train_docs), "heldout_documents": len(heldout_docs),
            "heldout_lines": len(heldout_lines), "scored_chars": len(p["scored_text"].read_text()),
            "excluded_task_texts": excluded[0],
            "train_tokens": meta.n_train, "val_tokens": meta.n_val}


def train_config(opts: CompareOptions, steps: int, cap: float | None) -> TrainConfig:
    """The one pretraining recipe every variant gets (only objective and position differ)."""
    return TrainConfig(max_steps=steps, batch_size=opts.batch_size, lr=opts.learning_rate,
                       warmup_steps=max(1, min(100, steps // 20)), eval_every=max(1, steps // 8),
                       save_every=max(50, steps // 4), keep_last=1, log_every=max(1, min(10, steps // 20)),
                       time_budget=cap, seed=opts.seed, device=opts.device, progress=opts.progress)


def pretrain_options(opts: CompareOptions, variant: Variant, eval_blocks: int | None = None) -> PretrainOptions:
    return PretrainOptions(objective=variant.objective, seq_len=opts.seq_len, mask_prob=opts.mask_prob,
                           hybrid=opts.hybrid if variant.objective == "hybrid" else None,
                           eval_blocks=eval_blocks or opts.eval_blocks)


def budget(opts: CompareOptions, probe=None) -> dict[str, Any]:
    """Part 'budget': the optimizer steps every variant trains for (the same tokens for all).

    --tokens N: N / (batch x seq_len) steps. --time-budget S: each variant is timed for a few steps and the steps
    are what the slowest one does in S seconds, so no variant trains longer than S and all see the same tokens.
    """
    per_step = opts.tokens_per_step
    if opts.tokens is not None:
        steps, how, timing = max(1, opts.tokens // per_step), f"--tokens {opts.tokens:,}", {}
    elif opts.time_budget is not None:
        timing = {v.name: (probe or probe_step_seconds)(opts, v) for v in variants(opts)}
        slowest = max(timing.values())
        steps = max(1, math.floor(opts.time_budget / slowest))
        how = f"--time-budget {opts.time_budget:g} s at the slowest variant's {slowest:.3f} s/step"
    else:
        steps, how, timing = DEFAULT_STEPS, f"default {DEFAULT_STEPS} steps", {}
    return {"steps": steps, "tokens": steps * per_step, "tokens_per_step": per_step, "how": how,
            "probe_seconds_per_step": timing,
            # a variant that runs far slower than probed (a busy machine) stops at this cap and says so
            "time_cap": None if opts.time_budget is None else 2.0 * opts.time_budget}


def probe_step_seconds(opts: CompareOptions, variant: Variant) -> float:
    """Seconds per optimizer step of ``variant``: the median of PROBE_STEPS timed steps on a throwaway model."""
    from ..runs import pretrain_run

    folder = Path(opts.out) / "probe" / variant.name
    shutil.rmtree(folder, ignore_errors=True)
    cfg = TrainConfig(max_steps=PROBE_STEPS, batch_size=opts.batch_size, lr=opts.learning_rate, warmup_steps=1,
                      eval_every=None, save_every=None, log_every=1, seed=opts.seed, device=opts.device,
                      progress=False)
    result = pretrain_run(paths(opts.out)["data"], folder, opts.preset, pretrain_options(opts, variant, 1), cfg,
                          model_overrides={"position": variant.position})
    shutil.rmtree(folder, ignore_errors=True)
    return opts.tokens_per_step / max(result.tokens_per_s, 1e-9)
