"""`twinlm quickstart`: one tokenizer, one corpus, a tiny MLM and a tiny CLM with the same budget, side by side."""

from __future__ import annotations

import gzip
import shutil
import time
from importlib import resources
from pathlib import Path

from .data.corpus import prepare_corpus
from .pipelines import fill_mask, load_pretrained, sample
from .plots import plot_loss_curves
from .pretrain import PretrainOptions
from .runs import pretrain_run
from .tokenizer import train_tokenizer
from .train import TrainConfig

FILL_MASK_SENTENCES = [
    "To be, or not to [MASK]: that is the question.",
    "O Romeo, Romeo! wherefore art thou [MASK]?",
    "My lord, the [MASK] is come.",
]
PROMPT = "ROMEO:\n"
VOCAB_SIZE = 2048  # small: on 2 CPU cores the vocabulary projection dominates the step


def embedded_corpus(dest: Path) -> Path:
    """Unpack the Tiny Shakespeare text that ships inside the package (public domain) into ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with resources.files("twinlm").joinpath("assets/tinyshakespeare.txt.gz").open("rb") as src:
        with gzip.open(src) as unzipped, dest.open("wb") as out:
            shutil.copyfileobj(unzipped, out)
    return dest


def quickstart(out: str | Path, corpus: str | Path | None = None, time_budget: float = 120.0,
               max_steps: int = 600, seed: int = 0, progress: bool = True) -> dict:
    """Run the whole comparison; returns the table rows. Everything is written under ``out``."""
    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    text = Path(corpus) if corpus else embedded_corpus(out / "corpus" / "tinyshakespeare.txt")
    print(f"[1/4] training a byte-level BPE tokenizer ({VOCAB_SIZE} tokens, with [MASK]) on {text}")
    tokenizer = train_tokenizer([text], kind="bpe", vocab_size=VOCAB_SIZE)
    tokenizer.save(out / "tokenizer")
    print("[2/4] tokenizing into memory-mapped train/validation shards")
    meta = prepare_corpus([text], tokenizer, out / "data", val_fraction=0.1, progress=progress)
    print(f"      {meta.n_train:,} train and {meta.n_val:,} validation tokens in {out / 'data'}")

    rows = {}
    for objective in ("mlm", "clm"):
        print(f"[3/4] pretraining the tiny {objective.upper()} (budget: {max_steps} steps or {time_budget:.0f} s)")
        cfg = TrainConfig(max_steps=max_steps, batch_size=16, lr=3e-3, warmup_steps=30, eval_every=100,
                          save_every=max_steps, log_every=10, time_budget=time_budget, seed=seed, device="cpu",
                          progress=progress)
        opts = PretrainOptions(objective=objective, seq_len=128, eval_blocks=64)
        result = pretrain_run(out / "data", out / objective, "tiny", opts, cfg)
        model, _ = load_pretrained(out / objective)
        rows[objective] = {
            "objective": objective.upper(),
            "attention": model.config.attention,
            "parameters": model.num_parameters(),
            "steps": result.step,
            "tokens/s": result.tokens_per_s,
            "val loss": result.metrics["val_loss"],
            "val ppl": result.metrics["val_ppl"],
            "checkpoint": str(result.checkpoint),
        }

    print("[4/4] comparing\n")
    _print_table(list(rows.values()))
    print("\nNote: MLM loss is over masked tokens (15%) seeing both sides; CLM loss is over every next token seeing "
          "only the left. Lower is better within a column, not across paradigms.\n")
    mlm, tok = load_pretrained(out / "mlm")
    print("MLM fill-mask (top 3):")
    for sentence in FILL_MASK_SENTENCES:
        preds = fill_mask(mlm, tok, sentence, top_k=3)[0]
        print(f"  {sentence}\n    -> " + ", ".join(f"{p.token!r} {p.score:.2f}" for p in preds))
    clm, tok = load_pretrained(out / "clm")
    continuation = sample(clm, tok, PROMPT, max_new_tokens=60, temperature=0.8, top_k=40, seed=seed)
    print(f"\nCLM continuation of {PROMPT!r} (temperature 0.8, top-k 40):\n{PROMPT}{continuation}\n")

    curve = plot_loss_curves({"MLM": out / "mlm" / "metrics.jsonl", "CLM": out / "clm" / "metrics.jsonl"},
                             out / "loss_curves.png", title="Tiny MLM vs tiny CLM on Tiny Shakespeare")
    print("Where everything went:")
    print(f"  tokenizer      {out / 'tokenizer'}")
    print(f"  corpus shards  {out / 'data'}")
    for objective, row in rows.items():
        print(f"  {objective.upper()} checkpoint {row['checkpoint']}")
        print(f"  {objective.upper()} metrics    {out / objective / 'metrics.jsonl'}")
    print(f"  loss curves    {curve}")
    print(f"\nquickstart finished in {time.perf_counter() - started:.0f} s")
    return rows


def _print_table(rows: list[dict]) -> None:
    cols = ["objective", "attention", "parameters", "steps", "tokens/s", "val loss", "val ppl"]
    fmt = {"parameters": "{:,}", "tokens/s": "{:,.0f}", "val loss": "{:.3f}", "val ppl": "{:.1f}"}
    cells = [[fmt.get(c, "{}").format(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
