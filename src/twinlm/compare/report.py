"""report.md, a self-contained report.html (pictures embedded as base64, opens offline) and results.json.

The report is built once as a list of blocks (heading, paragraph, table, list, picture, code) and rendered twice, so
the Markdown and the HTML always say the same thing.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import math
import shlex
from pathlib import Path
from typing import Any

import numpy as np

from . import pictures
from .claims import NAMES, check_claims, fmt, spread
from .plan import variants, write_json_atomic
from .results import Results

FIGURES = "figures"
CLAIMED = {"mlm": ("bidirectional: both sides of every token", "masked tokens (MLM)", "bidirectional mask",
                   "understanding: cloze, classification, NER, QA"),
           "clm": ("left to right", "next token (CLM)", "causal mask", "generation: next word, bits per byte, text"),
           "hybrid": ("both, phase by phase", "CLM and MLM phases (AntLM)", "causal and bidirectional masks",
                      "both, if the claim holds")}


class Doc:
    def __init__(self) -> None:
        self.blocks: list[tuple[str, Any]] = []

    def add(self, kind: str, value: Any) -> None:
        self.blocks.append((kind, value))

    def markdown(self) -> str:
        out = []
        for kind, v in self.blocks:
            if kind in ("h1", "h2", "h3"):
                out.append("#" * int(kind[1]) + " " + v)
            elif kind == "p":
                out.append(v)
            elif kind == "list":
                out.append("\n".join(f"- {item}" for item in v))
            elif kind == "table":
                head, rows = v
                out.append("\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                                     + ["| " + " | ".join(str(c).replace("|", "/") for c in r) + " |" for r in rows]))
            elif kind == "img":
                out.append(f"![{v[1]}]({v[0]})\n\n*{v[1]}*")
            elif kind == "code":
                out.append("```\n" + v + "\n```")
        return "\n\n".join(out) + "\n"

    def html(self, root: Path, title: str) -> str:
        e = html.escape
        body = []
        for kind, v in self.blocks:
            if kind in ("h1", "h2", "h3"):
                body.append(f"<{kind}>{e(v)}</{kind}>")
            elif kind == "p":
                body.append(f"<p>{_inline(v)}</p>")
            elif kind == "list":
                body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in v) + "</ul>")
            elif kind == "table":
                head, rows = v
                body.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"
                            + "".join("<tr>" + "".join(f"<td>{_inline(str(c))}</td>" for c in r) + "</tr>"
                                      for r in rows) + "</table>")
            elif kind == "img":
                data = base64.b64encode((root / v[0]).read_bytes()).decode()
                body.append(f'<figure><img alt="{e(v[1])}" src="data:image/png;base64,{data}">'
                            f"<figcaption>{e(v[1])}</figcaption></figure>")
            elif kind == "code":
                body.append(f"<pre>{e(v)}</pre>")
        style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
                 "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}td,th{border:1px solid #ccc;"
                 "padding:4px 8px;vertical-align:top}th{background:#f3f3f3}img{max-width:100%}figure{margin:1em 0}"
                 "figcaption{font-size:0.85em;color:#555}pre{background:#f6f6f6;padding:8px;white-space:pre-wrap}"
                 ".mask img{image-rendering:pixelated;width:192px}")
        return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{e(title)}</title><style>{style}"
                f"</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _inline(text: str) -> str:
    """Markdown's **bold** and `code` in a line of HTML-escaped text."""
    parts = html.escape(text).split("**")
    text = "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))
    parts = text.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _pm(entry: dict[str, Any] | None) -> str:
    return "n/a" if not entry else spread(entry)


def classic_table(res: Results) -> tuple[list[str], list[list[str]]]:
    """The textbook table (context, objective, attention, strength), each row's cells with its measured numbers."""
    head = ["model", "context direction", "objective", "attention", "main strength (claimed)",
            "measured: understanding", "measured: generation"]
    rows = []
    for v in variants(res.options):
        m = res.models[v.name]
        ctx, obj, att, strength = CLAIMED[v.objective]
        val = m.get("pretrain", {}).get("val", {})
        losses = ", ".join(f"{k.removeprefix('val_').removesuffix('loss').strip('_') or 'val'} {x:.3f}"
                           for k, x in val.items() if k.endswith("_loss"))
        und = []
        for p, acc in m.get("intrinsic", {}).get("cloze", {}).items():
            und.append(f"cloze top-1 {fmt(acc['top1'])} ({p})")
        und += [f"{t} {_pm(models.get(v.name))}" for t, models in res.tasks.items()]
        gen = []
        for p, acc in m.get("intrinsic", {}).get("next_word", {}).items():
            gen.append(f"next-word top-1 {fmt(acc['top1'])} ({p})")
        bpb = res.metric(v.name, "intrinsic", "perplexity", "bits_per_byte")
        if not math.isnan(bpb):
            gen.append(f"bits/byte {fmt(bpb)}")
        for p, g in m.get("generation", {}).items():
            if isinstance(g, dict):
                gen.append(f"{p} samples: distinct-2 {fmt(g['distinct_2'], 2)}, repetition {fmt(g['repetition_4'], 2)}")
        rows.append([f"**{NAMES[v.objective]}** ({v.position})", ctx, f"{obj}; validation loss: {losses or 'n/a'}",
                     att, strength, "; ".join(und) or "n/a", "; ".join(gen) or "n/a"])
    return head, rows


def numbers_table(res: Results) -> tuple[list[str], list[list[str]]]:
    head = ["model", "steps", "tokens", "wall s", "tokens/s", "bits/byte", "perplexity", "pseudo-ppl",
            "cloze top-1/5 masked", "cloze top-1/5 causal", "next-word top-1/5 masked", "next-word top-1/5 causal"]
    rows = []
    for name, m in res.models.items():
        pre, intr = m.get("pretrain", {}), m.get("intrinsic", {})

        def acc(job: str, p: str, intr=intr) -> str:
            a = intr.get(job, {}).get(p)
            return f"{a['top1']:.3f} / {a['top5']:.3f}" if a else "-"
        early = " (stopped early)" if pre.get("stopped_early") else ""
        rows.append([name, f"{pre.get('steps', 'n/a')}{early}", f"{pre.get('tokens', 0):,}", fmt(pre.get("wall_s",
                     float("nan")), 1), f"{pre.get('tokens_per_s', 0):,.0f}",
                     fmt(res.metric(name, "intrinsic", "perplexity", "bits_per_byte")),
                     fmt(res.metric(name, "intrinsic", "perplexity", "perplexity"), 1),
                     fmt(res.metric(name, "intrinsic", "pseudo_perplexity", "pseudo_perplexity"), 1),
                     acc("cloze", "masked"), acc("cloze", "causal"), acc("next_word", "masked"),
                     acc("next_word", "causal")])
    return head, rows


def draw(res: Results) -> dict[str, Any]:
    """Every picture of the report, under OUT/figures; returns their paths relative to OUT."""
    folder = res.out / FIGURES
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, Any] = {"masks": {k: f"{FIGURES}/{v}" for k, v in pictures.save_mask_pictures(folder).items()}}
    curves = {}
    for name, m in res.models.items():
        pre = m.get("pretrain")
        if pre:
            curves[name] = pictures.paradigm_curves(res.out / pre["run_dir"] / "metrics.jsonl", m["objective"],
                                                    res.options.hybrid, pre["steps"], res.options.tokens_per_step)
    if curves:
        pictures.plot_paradigm_curves(curves, folder / "loss_curves.png")
        files["loss_curves"] = f"{FIGURES}/loss_curves.png"
    if any(res.tasks.values()):
        pictures.plot_task_bars({t: m for t, m in res.tasks.items() if m}, folder / "task_bars.png")
        files["task_bars"] = f"{FIGURES}/task_bars.png"
    files["attention"] = {}
    for name, part in res.attention_parts().items():
        for kind, maps in part["maps"].items():
            path = folder / f"attention_{name}_{kind}.png"
            pictures.plot_attention(np.array(maps), part["tokens"], f"{name}, {kind} mask: {part['sentence']!r}",
                                    path)
            files["attention"][f"{name}:{kind}"] = f"{FIGURES}/{path.name}"
    return files


def build(res: Results) -> Doc:
    o, d = res.options, Doc()
    d.add("h1", "Which paradigm for which job? MLM, CLM and hybrid on one corpus and one budget")
    b = res.budget
    d.add("p", f"Corpus: {', '.join('`' + Path(c).name + '`' for c in o.corpus)}; preset `{o.preset}`; one tokenizer "
               f"({res.data.get('vocab_size', 'n/a')} tokens) and one backbone for every model; each model trained on "
               f"the same {b.get('tokens', 0):,} tokens ({b.get('steps', 'n/a')} steps of {o.batch_size} x "
               f"{o.seq_len}; {b.get('how', 'n/a')}). Wall time is reported, not equalised. Held-out text: "
               f"{res.data.get('heldout_lines', 'n/a')} sentences ({res.data.get('heldout_documents', 'n/a')} "
               "documents) never trained on."
               + (f" {res.data['excluded_task_texts']:,} corpus documents equal to a fine-tuning task's dev text were "
                  "left out of pretraining." if res.data.get("excluded_task_texts") else ""))
    if res.missing:
        d.add("p", f"**Partial report**: {len(res.missing)} parts have not run yet ({', '.join(res.missing[:6])}"
                   f"{', ...' if len(res.missing) > 6 else ''}); rerun or `--resume` to finish them.")
    d.add("h2", "The classic table, measured")
    d.add("table", classic_table(res))
    d.add("h2", "Which claims held on this corpus and budget")
    d.add("list", [f"**{c['verdict']}**: {c['claim']}. {c['text']}" for c in res.claims] or ["nothing measured yet"])
    d.add("h2", "All numbers")
    d.add("table", numbers_table(res))
    u = res.baseline.get("unigram")
    if u:
        d.add("p", f"Unigram baseline (always the most frequent training words, same {u['candidates']} candidate "
                   f"words, {u['n']} held-out cloze items): top-1 {u['top1']:.3f}, top-5 {u['top5']:.3f}. Cloze: "
                   "one held-out word hidden, both sides in view; next word: only the left side.")
    if res.tasks:
        d.add("h2", "Fine-tuning")
        d.add("p", f"Each model fine-tuned with one recipe: {o.finetune_epochs:g} epochs, lr {o.finetune_lr:g}, "
                   f"batch {o.finetune_batch_size}, {o.seeds} seed(s); the score is the dev metric after the last "
                   "epoch. `random-*` rows are the same backbone from random weights (what pretraining bought).")
        rows = [[t, n, e["attention"], e["metric"], _pm(e), ", ".join(f"{s:.3f}" for s in e["seeds"]),
                 fmt(e["wall_s"], 0)] for t, models in res.tasks.items() for n, e in models.items()]
        d.add("table", (["task", "model", "mask", "metric", "mean ± std", "per seed", "wall s"], rows))
        if "task_bars" in res.files:
            d.add("img", (res.files["task_bars"], "dev score per task, mean over seeds, error bar one std"))
    if "loss_curves" in res.files:
        d.add("h2", "Loss curves")
        d.add("img", (res.files["loss_curves"], "training (thin) and validation (dots) loss against training "
                                                "tokens, one axis per paradigm; losses compare within an axis only"))
    d.add("h2", "The masks M")
    d.add("p", f"softmax(QK^T/sqrt(d_k) + M)V: rows are queries i, columns keys j, {pictures.MASK_LENGTH} positions, "
               f"the padded examples with the last {pictures.MASK_PADDING} padded. Blue: M_ij = 0 (i sees j); grey: "
               "M_ij = -inf. Drawn from `twinlm.attention.build_mask` itself, one cell per entry.")
    for name, path in res.files.get("masks", {}).items():
        d.add("img", (path, f"mask M: {name.replace('_', ' + ')}"))
    if res.files.get("attention"):
        d.add("h2", "Attention maps")
        d.add("p", "One held-out sentence; attention probabilities per layer (rows) and head (columns), queries down, "
                   "keys across.")
        for key, path in res.files["attention"].items():
            d.add("img", (path, f"attention of {key.replace(':', ', ')} mask"))
    d.add("h2", "Samples from the same prompts")
    for name, m in res.models.items():
        for g in m.get("generation", {}).values():
            if not isinstance(g, dict):
                continue
            d.add("h3", f"{name}: {g['how']}")
            d.add("p", f"distinct-1 {g['distinct_1']:.3f}, distinct-2 {g['distinct_2']:.3f}, 4-gram repetition "
                       f"{g['repetition_4']:.3f} over {len(g['samples'])} samples")
            d.add("code", "\n".join(f"{pr} || {s.strip()}" for pr, s in
                                    zip(m["generation"]["prompts"], g["samples"], strict=True)))
    d.add("h2", "Reproduce")
    d.add("code", command_line(o))
    d.add("p", f"The full configuration is in `{o.out}/compare.json`; `twinlm compare --resume {o.out}` finishes or "
               "re-reports it, skipping finished parts.")
    return d


def command_line(o) -> str:
    q = shlex.quote  # a path with a space must survive a copy into the shell
    parts = ["twinlm compare", *[f"--corpus {q(str(c))}" for c in o.corpus], f"--out {q(str(o.out))}"]
    parts.append(f"--tokenizer {q(str(o.tokenizer))}" if o.tokenizer else f"--vocab-size {o.vocab_size}")
    parts += [f"--objectives {','.join(o.objectives)}", f"--positions {','.join(o.positions)}", f"--preset {o.preset}"]
    if "hybrid" in o.objectives:
        parts.append(f"--hybrid {o.hybrid}")
    if o.tokens is not None:
        parts.append(f"--tokens {o.tokens}")
    if o.time_budget is not None:
        parts.append(f"--time-budget {o.time_budget:g}")
    parts.append(f"--seeds {o.seeds}")
    for t in o.tasks:
        spec = f"{t.task}={t.train}:{t.dev}" + (f":{t.max_train_rows}" if t.max_train_rows else "")
        parts.append(f"--task {q(spec)}")
    if o.heldout:
        parts.append(f"--heldout {q(str(o.heldout))}")
    # The recipe flags, wherever the run left the default: without them the command would not reproduce the run.
    default = {f.name: f.default for f in dataclasses.fields(o)}  # not an instance: its files need not exist
    flags = {"seq_len": "--seq-len", "batch_size": "--batch-size", "lr": "--lr", "cloze_n": "--cloze-items",
             "heldout_chars": "--heldout-chars", "finetune_epochs": "--finetune-epochs",
             "finetune_lr": "--finetune-lr", "max_eval_rows": "--max-eval-rows"}
    for name, flag in flags.items():
        value = getattr(o, name)
        if value is not None and value != default[name]:
            parts.append(f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}")
    parts += [f"--prompt {q(text)}" for text in o.prompts or []]
    if not o.random_init:
        parts.append("--no-random-init")
    return " \\\n  ".join(parts)


def write(res: Results) -> dict[str, Path]:
    """Draw the pictures, check the claims and write report.md, report.html and results.json into OUT."""
    res.files = draw(res)
    res.claims = check_claims(res)
    doc = build(res)
    out = {"md": res.out / "report.md", "html": res.out / "report.html", "json": res.out / "results.json"}
    out["md"].write_text(doc.markdown())
    out["html"].write_text(doc.html(res.out, "twinlm compare"))
    res.files.update({"report_md": "report.md", "report_html": "report.html", "results_json": "results.json"})
    write_json_atomic(out["json"], res.to_dict())
    return out
