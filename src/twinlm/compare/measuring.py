"""Parts that pretrain one variant and measure it: intrinsic scores, generated samples, attention maps.

Every measure is the library's own (twinlm.scoring, twinlm.measures, twinlm.generate), run on the saved model,
so a number in results.json is what those functions give on the folder it names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import measures
from ..loading import load
from ..scoring import perplexity, pseudo_perplexity
from ..train import resolve_device
from .data import lines_of, paths, pretrain_options, train_config
from .pictures import attention_maps
from .plan import CompareOptions, Variant

TOP = (1, 5)
KIND_OF = {"masked": "bidirectional", "causal": "causal"}


def load_variant(opts: CompareOptions, model_path: str) -> tuple[Any, Any]:
    """(language model in eval mode, tokenizer) of a pretrained variant, on the comparison's device."""
    loaded = load(Path(opts.out) / model_path, device=resolve_device(opts.device))
    return loaded.lm, loaded.tokenizer


def pretrain(opts: CompareOptions, variant: Variant, budget: dict[str, Any]) -> dict[str, Any]:
    """Part 'pretrain:<variant>': train it for the budget's steps; a killed run resumes from its checkpoint."""
    from ..runs import pretrain_run

    run_dir = Path(opts.out) / "runs" / variant.name
    cfg = train_config(opts, budget["steps"], budget["time_cap"])
    result = pretrain_run(paths(opts.out)["data"], run_dir, opts.preset, pretrain_options(opts, variant), cfg,
                          resume="auto", model_overrides={"position": variant.position})
    model, _ = load_variant(opts, str(Path(result.checkpoint).relative_to(opts.out)))
    return {"objective": variant.objective, "position": variant.position,
            "model": str(Path(result.checkpoint).relative_to(opts.out)), "run_dir": f"runs/{variant.name}",
            "paradigms": list(model.config.paradigms), "parameters": model.num_parameters(),
            "steps": result.step, "tokens": result.step * opts.tokens_per_step, "wall_s": round(result.elapsed_s, 2),
            "tokens_per_s": round(result.tokens_per_s, 1), "val": result.metrics,
            "stopped_early": result.stopped_early}


def cloze_set(opts: CompareOptions) -> list[measures.ClozeItem]:
    """The held-out cloze items (the same for every model and both jobs)."""
    lines = lines_of(paths(opts.out)["heldout_text"].read_text())
    return measures.cloze_items(lines, opts.cloze_n, seed=opts.seed)


def baseline(opts: CompareOptions) -> dict[str, Any]:
    """Part 'baseline': the shared candidate words and the unigram guess every model must beat."""
    train_lines = lines_of(paths(opts.out)["train_text"].read_text())
    items = cloze_set(opts)
    candidates = measures.candidate_words(items, train_lines, k=opts.candidates_k)
    return {"items": len(items), "candidates": candidates,
            "unigram": measures.unigram_baseline(train_lines, items, top=TOP, candidates=candidates)}


def intrinsic(opts: CompareOptions, pre: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """Part 'intrinsic:<variant>': held-out (pseudo-)perplexity and bits per byte, cloze and next-word accuracy
    for every paradigm the model has (a hybrid is measured both ways)."""
    model, tok = load_variant(opts, pre["model"])
    text = paths(opts.out)["scored_text"].read_text()
    items, cands = cloze_set(opts), base["candidates"]
    out: dict[str, Any] = {"paradigms": list(model.config.paradigms)}
    if "causal" in model.config.paradigms:
        out["perplexity"] = perplexity(model, tok, text).to_dict()
    if "masked" in model.config.paradigms:
        out["pseudo_perplexity"] = pseudo_perplexity(model, tok, text)
    out["cloze"] = {p: measures.cloze_accuracy(model, tok, items, cands, TOP, paradigm=p)
                    for p in model.config.paradigms}
    out["next_word"] = {p: measures.next_word_accuracy(model, tok, items, TOP, candidates=cands, paradigm=p)
                        for p in model.config.paradigms}
    return out


def prompts(opts: CompareOptions) -> list[str]:
    """The generation prompts: --prompts, else the first five words (Chinese: characters) of evenly spread held-out
    lines."""
    if opts.prompts:
        return list(opts.prompts)
    lines = [s for s in lines_of(paths(opts.out)["heldout_text"].read_text())
             if len(measures.units(s)) >= 8 and not s.startswith("=")]
    step = max(1, len(lines) // max(opts.n_prompts, 1))
    return [measures.first_units(s, 5) for s in lines[::step][:opts.n_prompts]]


def generation(opts: CompareOptions, pre: dict[str, Any]) -> dict[str, Any]:
    """Part 'generation:<variant>': the same prompts continued causally (sampling, temperature 0.8, top-k 40)
    and by mask-predict (masked), whichever the model can do, with distinct-n and the repetition rate."""
    from ..generate import generate, mask_predict

    model, tok = load_variant(opts, pre["model"])
    given = prompts(opts)
    out: dict[str, Any] = {"prompts": given}
    for paradigm in model.config.paradigms:
        if paradigm == "causal":
            gens = generate(model, tok, given, max_new_tokens=opts.max_new_tokens, temperature=0.8, top_k=40,
                            seed=opts.seed, truncate="left")
            texts, how = [g.text for g in gens], "sampling (temperature 0.8, top-k 40)"
        else:
            texts = [mask_predict(model, tok, p, max_new_tokens=opts.max_new_tokens, steps=10).text for p in given]
            how = "mask-predict (10 iterations)"
        out[paradigm] = {"how": how, "samples": texts, "distinct_1": measures.distinct_n(texts, 1),
                         "distinct_2": measures.distinct_n(texts, 2),
                         "repetition_4": measures.repetition_rate(texts, 4)}
    return out


def attention(opts: CompareOptions, pre: dict[str, Any]) -> dict[str, Any]:
    """Part 'attention:<variant>': attention probabilities of one held-out sentence, per mask the model has."""
    model, tok = load_variant(opts, pre["model"])
    sentence = next((s for s in lines_of(paths(opts.out)["heldout_text"].read_text()) if len(measures.units(s)) >= 6),
                    "the first line")
    ids = tok.encode(sentence)[:opts.attention_tokens]
    tokens = [tok.decode([i]) for i in ids]
    maps = {}
    for paradigm in model.config.paradigms:
        maps[KIND_OF[paradigm]] = [[[[round(p, 4) for p in row] for row in head] for head in layer]
                                   for layer in attention_maps(model, ids, KIND_OF[paradigm]).tolist()]
    return {"sentence": tok.decode(ids), "tokens": tokens, "maps": maps}
