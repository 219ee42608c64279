"""The README's claims, checked against a comparison's numbers and said in plain words.

Each claim gives a ``verdict`` ("held", "did not hold", "not settled" or "not comparable"), ``held`` (True, False,
or None when not settled or not comparable) and a sentence with the numbers. Fine-tuning claims are judged by the
spread over seeds: a difference larger than the two standard deviations together is "clear"; a smaller one settles
nothing ("not settled"), whichever mean is ahead, except for "matches" claims, which a gap within the spread supports.
"""

from __future__ import annotations

import math
from typing import Any

from .plan import variants
from .results import Results

NAMES = {"mlm": "MLM", "clm": "CLM", "hybrid": "hybrid"}


def fmt(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def spread(entry: dict[str, Any]) -> str:
    if entry["n"] == 1:
        return f"{entry['mean']:.3f} (1 seed)"
    return f"{entry['mean']:.3f} ± {entry['std']:.3f} ({entry['n']} seeds)"


def _verdict(a: dict[str, Any], b: dict[str, Any]) -> str:
    if a["n"] < 2 or b["n"] < 2:
        return "one seed, so no spread to judge it by"
    return "a clear gap" if _clear(a, b) else "within the seed spread"


def _clear(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """True when the means differ by more than the seed spread (or there is one seed, so no spread to go by)."""
    return a["n"] < 2 or b["n"] < 2 or abs(a["mean"] - b["mean"]) > a["std"] + b["std"]


def _claim(cid: str, claim: str, held: bool | None, text: str, verdict: str | None = None) -> dict[str, Any]:
    if verdict is None:
        verdict = {True: "held", False: "did not hold", None: "not comparable"}[held]
    return {"id": cid, "claim": claim, "held": held, "verdict": verdict, "text": text}


def _seeded(cid: str, claim: str, a: dict[str, Any], b: dict[str, Any], text: str) -> dict[str, Any]:
    """The claim "a beats b" over seeds: held or not only when the gap is clear, else not settled."""
    if not _clear(a, b):
        return _claim(cid, claim, None, text, "not settled")
    return _claim(cid, claim, a["mean"] > b["mean"], text)


def _pairs(res: Results, a: str, b: str) -> list[tuple[str, str, str]]:
    """(position, name of a, name of b) for every position where both objectives were trained."""
    names = {(v.objective, v.position): v.name for v in variants(res.options)}
    return [(p, names[(a, p)], names[(b, p)]) for p in res.options.positions if (a, p) in names and (b, p) in names]


def understanding(res: Results) -> list[dict[str, Any]]:
    out = []
    for task, models in res.tasks.items():
        for pos, mlm, clm in _pairs(res, "mlm", "clm"):
            if mlm not in models or clm not in models:
                continue
            a, b = models[mlm], models[clm]
            ahead = "MLM is ahead" if a["mean"] > b["mean"] else ("CLM is ahead" if b["mean"] > a["mean"] else "a tie")
            out.append(_seeded(f"understanding:{task}:{pos}", f"bidirectional context wins {task}", a, b,
                               f"{task} ({a['metric']}, {pos} positions): MLM {spread(a)} vs CLM {spread(b)}: "
                               f"{ahead}, {_verdict(a, b)}."))
    return out


def generation(res: Results) -> list[dict[str, Any]]:
    out = []
    for pos, mlm, clm in _pairs(res, "mlm", "clm"):
        c_nw = res.metric(clm, "intrinsic", "next_word", "causal", "top1")
        m_nw = res.metric(mlm, "intrinsic", "next_word", "masked", "top1")
        if not (math.isnan(c_nw) or math.isnan(m_nw)):
            out.append(_claim(f"next_word:{pos}", "causal context wins next-word prediction", c_nw > m_nw,
                              f"next-word top-1 ({pos}): CLM {fmt(c_nw)} vs MLM {fmt(m_nw)} (a [MASK] at the end)."))
        bpb = res.metric(clm, "intrinsic", "perplexity", "bits_per_byte")
        pbpb = res.metric(mlm, "intrinsic", "pseudo_perplexity", "pseudo_bits_per_byte")
        if not math.isnan(bpb):
            out.append(_claim(f"bits_per_byte:{pos}", "causal models assign text a probability (bits per byte)", None,
                              f"bits per byte ({pos}): CLM {fmt(bpb)}; an MLM has no left-to-right probability, its "
                              f"pseudo-bits per byte {fmt(pbpb)} see both sides of every token, so the two are not "
                              "comparable (not a win either way)."))
        m_cl = res.metric(mlm, "intrinsic", "cloze", "masked", "top1")
        c_cl = res.metric(clm, "intrinsic", "cloze", "causal", "top1")
        if not (math.isnan(m_cl) or math.isnan(c_cl)):
            out.append(_claim(f"cloze:{pos}", "bidirectional context wins cloze (fill the blank)", m_cl > c_cl,
                              f"cloze top-1 ({pos}): MLM {fmt(m_cl)} vs CLM {fmt(c_cl)} (ranking the candidates by "
                              "the whole sentence's likelihood)."))
    return out


def hybrid(res: Results) -> list[dict[str, Any]]:
    out = []
    for pos, hyb, mlm in _pairs(res, "hybrid", "mlm"):
        h, m = (res.metric(hyb, "intrinsic", "cloze", "masked", "top1"),
                res.metric(mlm, "intrinsic", "cloze", "masked", "top1"))
        if not (math.isnan(h) or math.isnan(m)):
            out.append(_claim(f"hybrid_cloze:{pos}", "the hybrid keeps the MLM's cloze", h >= m,
                              f"cloze top-1 ({pos}): hybrid {fmt(h)} vs MLM {fmt(m)}."))
    for pos, hyb, clm in _pairs(res, "hybrid", "clm"):
        h, c = (res.metric(hyb, "intrinsic", "next_word", "causal", "top1"),
                res.metric(clm, "intrinsic", "next_word", "causal", "top1"))
        hb, cb = (res.metric(hyb, "intrinsic", "perplexity", "bits_per_byte"),
                  res.metric(clm, "intrinsic", "perplexity", "bits_per_byte"))
        if not (math.isnan(h) or math.isnan(c)):
            out.append(_claim(f"hybrid_next_word:{pos}", "the hybrid keeps the CLM's next-word prediction", h >= c,
                              f"next-word top-1 ({pos}): hybrid {fmt(h)} vs CLM {fmt(c)}; bits per byte hybrid "
                              f"{fmt(hb)} vs CLM {fmt(cb)}."))
        for task, models in res.tasks.items():
            others = [models[n] for n in (clm, hyb.replace("hybrid", "mlm")) if n in models]
            if hyb in models and others:
                best = max(others, key=lambda e: e["mean"])
                # "matches": a gap within the seed spread supports it; only a clear gap below refutes it
                held = models[hyb]["mean"] >= best["mean"] or not _clear(models[hyb], best)
                out.append(_claim(f"hybrid_task:{task}:{pos}", f"the hybrid matches the better of MLM and CLM on "
                                  f"{task}", held, f"{task} ({pos}): hybrid {spread(models[hyb])} vs the better "
                                  f"single objective {spread(best)}, {_verdict(models[hyb], best)}."))
    return out


def positions(res: Results) -> list[dict[str, Any]]:
    """How much each objective loses without rotary positions (learned table instead): validation loss gap."""
    out, gaps = [], {}
    if not {"learned", "rotary"} <= set(res.options.positions):
        return out
    for objective in res.options.objectives:
        lk = res.models.get(f"{objective}-learned", {}).get("pretrain", {}).get("val", {})
        rk = res.models.get(f"{objective}-rotary", {}).get("pretrain", {}).get("val", {})
        keys = [k for k in lk if k.endswith("_loss") and k in rk]
        if keys:
            gaps[objective] = {k: lk[k] - rk[k] for k in keys}
            words = "; ".join(f"{k} learned {lk[k]:.3f} vs rotary {rk[k]:.3f}" for k in keys)
            held = any(g > 0.05 for g in gaps[objective].values())
            out.append(_claim(f"positions:{objective}", f"{NAMES[objective]} needs rotary (relative) positions: a "
                              "learned table costs it over 0.05 nats", held, f"{NAMES[objective]}: {words}."))
    if "mlm" in gaps and "clm" in gaps:
        m, c = max(gaps["mlm"].values()), max(gaps["clm"].values())
        out.append(_claim("positions:mask", "the causal mask carries word order by itself, the bidirectional one "
                          "does not", m > c, f"learned-table penalty in validation loss: MLM {m:+.3f}, CLM {c:+.3f}"
                          f" nats ({'larger for the MLM' if m > c else 'not larger for the MLM'})."))
    return out


def pretraining(res: Results) -> list[dict[str, Any]]:
    out = []
    for task, models in res.tasks.items():
        for v in variants(res.options):
            entry = models.get(v.name)
            base = models.get(f"random-{entry['attention']}-{v.position}") if entry else None
            if entry and base:
                out.append(_seeded(f"pretraining:{task}:{v.name}", f"pretraining helps {task}", entry, base,
                                   f"{task}: {v.name} {spread(entry)} vs the same backbone from random weights "
                                   f"{spread(base)}, {_verdict(entry, base)}."))
    return out


def above_unigram(res: Results) -> list[dict[str, Any]]:
    base = res.baseline.get("unigram", {}).get("top1", float("nan"))
    out = []
    for name, entry in res.models.items():
        for paradigm, acc in entry.get("intrinsic", {}).get("cloze", {}).items():
            out.append(_claim(f"unigram:{name}:{paradigm}", "the model reads the context (beats the unigram guess)",
                              acc["top1"] > base, f"cloze top-1 of {name} ({paradigm}) {fmt(acc['top1'])} vs always "
                              f"guessing the most frequent word {fmt(base)}."))
    return out


def check_claims(res: Results) -> list[dict[str, Any]]:
    """Every claim that this comparison measured."""
    return [*understanding(res), *generation(res), *hybrid(res), *positions(res), *pretraining(res),
            *above_unigram(res)]
