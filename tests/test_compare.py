"""`twinlm compare`: a tiny end-to-end comparison, its numbers against the scorers, the mask pictures' pixels,
attention maps against the attention module, resume after a kill, and the CLI's flags."""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import peaked_model, shakespeare_excerpt
from twinlm import cli_compare, measures
from twinlm.compare import CompareOptions, TaskSpec, finetuning, load_results, measuring, pictures, run
from twinlm.compare import data as compare_data
from twinlm.compare.data import lines_of
from twinlm.compare.plan import PartStore, parts
from twinlm.errors import ConfigError
from twinlm.loading import load
from twinlm.scoring import perplexity, pseudo_perplexity


def test_a_tasks_dev_texts_are_left_out_of_pretraining(tmp_path):
    """A corpus document equal to a classification dev text (whitespace aside) never reaches the shards."""
    dev = tmp_path / "dev.tsv"
    dev.write_text("sentence\tlabel\nthe  dev review, word for word\t1\nnot in the corpus\t0\n")
    corpus = tmp_path / "corpus.txt"
    docs = [f"document number {i} about something" for i in range(40)]
    docs[5] = "the dev review,\nword for word"
    corpus.write_text("\n\n".join(docs) + "\n")
    opts = CompareOptions(corpus=[str(corpus)], out=str(tmp_path / "o"), vocab_size=300, progress=False,
                          tasks=[f"classify={dev}:{dev}"])
    info = compare_data.prepare(opts)
    trained = (tmp_path / "o" / "corpus" / "train.txt").read_text()
    assert info["excluded_task_texts"] == 1 and "dev review" not in trained and "document number 6 " in trained
    assert info["train_documents"] == 40 - 2 - 1  # every 20th held out, the dev text dropped


WORDS = "the king lord good night sweet love day hath come".split()


def _classify_file(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    rows = ["sentence\tlabel"]
    for i in range(n):
        rows.append(" ".join(rng.choice(WORDS) for _ in range(6)) + (" great\t1" if i % 2 else " awful\t0"))
    path.write_text("\n".join(rows) + "\n")
    return path


def tiny_options(folder: Path, **changes) -> CompareOptions:
    """Two objectives, rotary positions, 3 steps of 4 x 32 tokens, one seed, one tiny classify task."""
    folder.mkdir(parents=True, exist_ok=True)
    corpus = folder / "corpus.txt"
    if not corpus.exists():
        corpus.write_text(shakespeare_excerpt(30_000))
    task = f"classify={_classify_file(folder / 'train.tsv', 16, 0)}:{_classify_file(folder / 'dev.tsv', 8, 1)}"
    settings = dict(corpus=[str(corpus)], out=str(folder / "out"), vocab_size=320, objectives="mlm,clm",
                    positions="rotary", preset="tiny", tokens=3 * 4 * 32, batch_size=4, seq_len=32, eval_blocks=2,
                    seeds=1, tasks=[task], cloze_n=4, candidates_k=10, heldout_chars=200, n_prompts=2,
                    max_new_tokens=6, attention_tokens=10, finetune_epochs=1, device="cpu", progress=False)
    return CompareOptions(**{**settings, **changes})


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished tiny comparison (shared by the tests that read it; they copy it before changing it)."""
    opts = tiny_options(tmp_path_factory.mktemp("compare"))
    return run(opts, log=lambda _: None), opts


def test_tiny_compare_writes_every_report_file(finished):
    results, opts = finished
    out = Path(opts.out)
    for name in ("report.md", "report.html", "results.json", "compare.json"):
        assert (out / name).is_file(), name
    doc = json.loads((out / "results.json").read_text())
    assert doc["missing_parts"] == []
    figures = [*doc["files"]["masks"].values(), doc["files"]["loss_curves"], doc["files"]["task_bars"],
               *doc["files"]["attention"].values()]
    assert len(doc["files"]["attention"]) == 2
    for rel in figures:
        assert (out / rel).is_file() and (out / rel).stat().st_size > 0, rel
    md = (out / "report.md").read_text()
    assert md.index("The classic table, measured") < md.index("Which claims held")
    for rel in figures:
        assert f"]({rel})" in md
    page = (out / "report.html").read_text()
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == len(figures) and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http" not in page  # opens offline: nothing is fetched
    assert {c["id"].split(":")[0] for c in doc["claims"]} >= {"understanding", "next_word", "cloze", "pretraining"}


def test_results_equal_the_scorers_on_the_saved_models(finished):
    results, opts = finished
    out = Path(opts.out)
    doc = json.loads((out / "results.json").read_text())
    text = (out / doc["data"]["scored_text"]).read_text()
    items = measures.cloze_items(lines_of((out / doc["data"]["heldout_text"]).read_text()), opts.cloze_n, seed=0)
    train_lines = lines_of((out / doc["data"]["train_text"]).read_text())
    cands = measures.candidate_words(items, train_lines, k=opts.candidates_k)
    assert doc["baseline"]["unigram"] == measures.unigram_baseline(train_lines, items, candidates=cands)
    for name, paradigm in (("mlm-rotary", "masked"), ("clm-rotary", "causal")):
        entry = doc["models"][name]
        loaded = load(out / entry["pretrain"]["model"])
        model, tok = loaded.lm, loaded.tokenizer
        assert entry["pretrain"]["paradigms"] == [paradigm]
        if paradigm == "causal":
            assert entry["intrinsic"]["perplexity"] == pytest.approx(perplexity(model, tok, text).to_dict())
        else:
            assert entry["intrinsic"]["pseudo_perplexity"] == pytest.approx(pseudo_perplexity(model, tok, text))
        assert entry["intrinsic"]["cloze"][paradigm] == measures.cloze_accuracy(model, tok, items, cands,
                                                                                 paradigm=paradigm)
        assert entry["intrinsic"]["next_word"][paradigm] == measures.next_word_accuracy(
            model, tok, items, candidates=cands, paradigm=paradigm)
        gen = entry["generation"][paradigm]
        assert gen["distinct_2"] == measures.distinct_n(gen["samples"], 2)
        assert gen["repetition_4"] == measures.repetition_rate(gen["samples"], 4)
        assert entry["pretrain"]["tokens"] == doc["budget"]["tokens"] == 3 * 4 * 32  # the same tokens for both
    # the fine-tuning table is the mean of the per-seed part files
    store = PartStore(out)
    for model, entry in doc["tasks"]["classify"].items():
        assert entry["seeds"] == [store.get(f"finetune:classify:{model}:0")["score"]]
    assert set(doc["tasks"]["classify"]) == {"mlm-rotary", "clm-rotary", "random-bidirectional-rotary",
                                             "random-causal-rotary"}


def test_mask_pictures_are_the_masks(tmp_path):
    names = pictures.save_mask_pictures(tmp_path)
    masks = pictures.example_masks()
    T, pad = pictures.MASK_LENGTH, pictures.MASK_PADDING
    expected = {"bidirectional": torch.ones(T, T, dtype=torch.bool), "causal": torch.ones(T, T).tril().bool()}
    keys = torch.arange(T)[None, :] < T - pad
    expected["bidirectional_padding"] = expected["bidirectional"] & keys
    expected["causal_padding"] = expected["causal"] & keys
    for name, file in names.items():
        pixels = np.asarray(Image.open(tmp_path / file).convert("RGB"))
        assert pixels.shape == (T * pictures.CELL, T * pictures.CELL, 3)
        allowed = masks[name] == 0
        assert torch.equal(allowed, expected[name]), name  # the attention module's mask is the textbook one
        want = np.where(allowed.numpy()[..., None], pictures.ALLOWED, pictures.BLOCKED).astype(np.uint8)
        assert np.array_equal(pixels, want.repeat(pictures.CELL, 0).repeat(pictures.CELL, 1)), name
        assert np.array_equal(pictures.pixels_to_allowed(pixels), allowed.numpy())


@pytest.mark.parametrize("position", ["learned", "rotary"])
@pytest.mark.parametrize("kind", ["bidirectional", "causal"])
def test_attention_maps_reproduce_the_attention_output(kind, position):
    model = peaked_model(50, kind=kind, position=position)
    ids = torch.randint(0, 50, (1, 9)).tolist()[0]
    outputs = []
    hooks = [b.attn.register_forward_hook(lambda m, a, out: outputs.append(out[0])) for b in model.backbone.blocks]
    inputs = []
    hooks += [b.attn.register_forward_pre_hook(lambda m, a: inputs.append(a[0])) for b in model.backbone.blocks]
    maps = pictures.attention_maps(model, ids, kind)
    for h in hooks:
        h.remove()
    L, H, T = len(model.backbone.blocks), model.config.n_heads, len(ids)
    assert maps.shape == (L, H, T, T)
    assert torch.allclose(maps.sum(-1), torch.ones(L, H, T), atol=1e-5)
    if kind == "causal":
        assert float(maps.triu(1).abs().max()) == 0.0
    with torch.inference_mode():  # probabilities @ V through the out projection = the module's own output
        for layer, block in enumerate(model.backbone.blocks):
            v = block.attn.qkv(inputs[layer]).split([model.config.d_model] * 3, dim=-1)[2]
            v = v.view(1, T, H, -1).transpose(1, 2)
            y = (maps[layer][None] @ v).transpose(1, 2).reshape(1, T, -1)
            assert torch.allclose(block.attn.out(y), outputs[layer], atol=1e-5)


def test_resume_after_a_kill_runs_only_unfinished_parts(finished, tmp_path, monkeypatch):
    _, opts = finished
    out = tmp_path / "out"
    shutil.copytree(opts.out, out)
    store = PartStore(out)
    for part in ("generation:mlm-rotary", "generation:clm-rotary"):
        store.path(part).unlink()
    calls: list[str] = []

    def counting(name, fn, kill_on=None):
        def wrapped(*args, **kwargs):
            calls.append(name)
            if kill_on is not None and len([c for c in calls if c == name]) == kill_on:
                raise KeyboardInterrupt  # the process is killed while this part runs
            return fn(*args, **kwargs)
        return wrapped

    for name in ("pretrain", "intrinsic", "attention", "baseline"):
        monkeypatch.setattr(measuring, name, counting(name, getattr(measuring, name)))
    monkeypatch.setattr(measuring, "generation", counting("generation", measuring.generation, kill_on=2))
    monkeypatch.setattr(compare_data, "prepare", counting("data", compare_data.prepare))
    monkeypatch.setattr(finetuning, "finetune", counting("finetune", finetuning.finetune))
    with pytest.raises(KeyboardInterrupt):
        run(resume=out, log=lambda _: None)
    assert calls == ["generation", "generation"]
    assert store.done("generation:mlm-rotary") and not store.done("generation:clm-rotary")
    calls.clear()
    log: list[str] = []
    results = run(resume=out, log=log.append)
    assert calls == ["generation"]  # only the part that was killed runs again
    assert all(store.done(p) for p in parts(results.options))
    assert any("generation clm-rotary ..." in line for line in log)
    assert any("pretrain mlm-rotary" in line and "skipped" in line for line in log)
    assert load_results(out).models["clm-rotary"]["generation"]["prompts"]


def test_a_rerun_with_other_settings_is_refused(finished):
    _, opts = finished
    with pytest.raises(ConfigError, match="other settings"):
        run(tiny_options(Path(opts.out).parent, seeds=2), log=lambda _: None)


def test_task_spec_and_options():
    spec = TaskSpec.parse("ner=a/train.conll:a/dev.conll:3000")
    assert (spec.task, spec.train, spec.dev, spec.max_train_rows) == ("ner", "a/train.conll", "a/dev.conll", 3000)
    assert TaskSpec.parse("classify=t.tsv:d.tsv").max_train_rows is None
    for bad in ("pos=a:b", "classify=a.tsv", "classify"):
        with pytest.raises(ConfigError):
            TaskSpec.parse(bad)
    with pytest.raises(ConfigError, match="objective"):
        CompareOptions(corpus=[__file__], out="x", objectives="mlm,gpt")
    with pytest.raises(ConfigError, match="hybrid schedule"):
        CompareOptions(corpus=[__file__], out="x", hybrid="clm:4,xlm:2")
    with pytest.raises(ConfigError, match="not both"):
        CompareOptions(corpus=[__file__], out="x", tokens=10**6, time_budget=60)
    opts = CompareOptions(corpus=[__file__], out="x", objectives="mlm,clm,hybrid", positions="learned,rotary",
                          seeds=2, tasks=[f"classify={__file__}:{__file__}"])
    names = parts(opts)
    assert names[:3] == ["data", "budget", "baseline"] and len(names) == len(set(names))
    # 6 variants x (pretrain, intrinsic, generation, attention) + 1 task x (6 variants + 4 random) x 2 seeds
    assert len(names) == 3 + 6 * 4 + 10 * 2


def test_a_chinese_novel_without_blank_lines_is_held_out_in_chunks_and_cut_into_sentences(tmp_path):
    # The Chinese classics are one paragraph per line with no blank line: one "document" per file.
    line = "此开卷第一回也．作者自云：“因曾历过一番梦幻之后！”故将真事隐去。"
    novel = tmp_path / "novel.txt"
    novel.write_text("\n".join(f"{i}{line}" for i in range(3000)) + "\n")
    train, heldout = compare_data.split_corpus(CompareOptions(corpus=[str(novel)], out=str(tmp_path / "o")))
    pieces = train + heldout
    assert len(pieces) > 20 and len(heldout) == len(pieces) // 20
    lines = [x for c in pieces for x in c.split("\n")]  # cut at line ends, nothing lost or repeated
    assert sorted(lines) == sorted(novel.read_text().splitlines())
    assert sum(len(c) < compare_data.CHUNK_CHARS for c in pieces) <= 1  # only the last may be short
    # Sentences end after 。！？．(a closing quote kept with its sentence); no space is put between characters.
    assert compare_data.sentences(["甲。乙：“丙！”\n丁？", "The end. \"Go!\" Then\nhe left."]) == [
        "甲。", "乙：“丙！”", "丁？", "The end.", '"Go!"', "Then he left."]
    assert compare_data.join_lines("这是\n一行\nand English\nhere") == "这是一行 and English here"


def test_cli_flags_build_the_options(tmp_path):
    parser = argparse.ArgumentParser()
    cli_compare.add_arguments(parser)
    args = parser.parse_args(shlex.split(cli_compare.EXAMPLE)[2:])
    assert args.tokens == 2_000_000 and args.seeds == 3 and args.task == ["classify=train.tsv:dev.tsv"]
    corpus = tmp_path / "c.txt"
    corpus.write_text("text\n")
    args = parser.parse_args(["--corpus", str(corpus), "--out", str(tmp_path / "o"), "--objectives", "mlm,hybrid",
                              "--hybrid", "clm:1,mlm:3", "--positions", "rotary", "--preset", "mini",
                              "--time-budget", "90", "--no-random-init", "--vocab-size", "500"])
    opts = cli_compare.options_from_args(args)
    assert opts.objectives == ["mlm", "hybrid"] and opts.hybrid == "clm:1,mlm:3" and opts.positions == ["rotary"]
    assert (opts.preset, opts.time_budget, opts.random_init, opts.vocab_size) == ("mini", 90.0, False, 500)
    assert opts.seeds == 3 and opts.tokens is None  # defaults where no flag was given
    with pytest.raises(SystemExit):
        parser.parse_args(["--tokens", "5", "--time-budget", "3"])
    with pytest.raises(ConfigError, match="--corpus"):
        cli_compare.options_from_args(parser.parse_args(["--out", "x"]))
    assert not math.isnan(opts.learning_rate)


def test_time_budget_gives_every_model_the_slowest_ones_steps(tmp_path):
    from twinlm.compare.data import budget

    opts = CompareOptions(corpus=[__file__], out=str(tmp_path), objectives="mlm,clm", positions="rotary",
                          time_budget=30.0, batch_size=4, seq_len=32)
    timed = {"mlm-rotary": 0.5, "clm-rotary": 1.5}
    b = budget(opts, probe=lambda o, v: timed[v.name])
    assert b["steps"] == 20 and b["tokens"] == 20 * 4 * 32  # 30 s at the slower 1.5 s/step, for both models
    assert b["probe_seconds_per_step"] == timed and b["time_cap"] == 60.0
    assert budget(CompareOptions(corpus=[__file__], out=str(tmp_path), tokens=1000, batch_size=4,
                                 seq_len=32))["steps"] == 1000 // 128


def test_a_seeded_claim_is_settled_only_by_a_gap_wider_than_the_seed_spread():
    from twinlm.compare.claims import _seeded

    def e(mean, std, n=3):
        return {"mean": mean, "std": std, "n": n}

    clear_win = _seeded("x", "a beats b", e(0.60, 0.01), e(0.50, 0.02), "t")
    clear_loss = _seeded("x", "a beats b", e(0.50, 0.01), e(0.60, 0.02), "t")
    inside = _seeded("x", "a beats b", e(0.737, 0.008), e(0.728, 0.009), "t")  # ahead, but by less than the spread
    one_seed = _seeded("x", "a beats b", e(0.61, 0.0, 1), e(0.60, 0.0, 1), "t")
    assert (clear_win["held"], clear_win["verdict"]) == (True, "held")
    assert (clear_loss["held"], clear_loss["verdict"]) == (False, "did not hold")
    assert (inside["held"], inside["verdict"]) == (None, "not settled")
    assert (one_seed["held"], one_seed["verdict"]) == (True, "held")


def test_the_reports_command_line_parses_back_to_the_same_options(tmp_path):
    """The report's "Reproduce" command must carry every flag the run changed (the recipe too), or it reproduces
    another run."""
    import argparse
    import shlex

    from twinlm.cli_compare import add_arguments, options_from_args
    from twinlm.compare import CompareOptions
    from twinlm.compare.report import command_line

    for name in ("a.txt", "b c.txt", "t.tsv", "d.tsv"):
        (tmp_path / name).write_text("x\n")
    opts = CompareOptions(corpus=[str(tmp_path / "a.txt"), str(tmp_path / "b c.txt")], out=str(tmp_path / "out"),
                          vocab_size=500,
                          objectives=["mlm", "clm"], positions=["learned", "rotary"], preset="tiny", tokens=4096,
                          seeds=2, seq_len=64, batch_size=8, lr=1e-3, cloze_n=20, heldout_chars=500,
                          prompts=["It was", "don't stop"], finetune_epochs=1.0, finetune_lr=1e-3, max_eval_rows=50,
                          random_init=False, tasks=[f"classify={tmp_path}/t.tsv:{tmp_path}/d.tsv:100"])
    p = argparse.ArgumentParser()
    add_arguments(p)
    words = shlex.split(command_line(opts).replace("\\\n", " "))
    assert words[:2] == ["twinlm", "compare"]
    back = options_from_args(p.parse_args(words[2:]))
    assert back.to_dict() == opts.to_dict()


def test_chinese_tokens_in_attention_maps_are_drawn_or_one_warning_says_what_to_install(tmp_path, monkeypatch):
    import warnings

    from twinlm import plots

    maps, tokens = np.random.default_rng(0).random((1, 2, 3, 3)), ["电", "影", "棒"]
    if plots.cjk_fonts():  # a Chinese font is installed: every glyph is found, so matplotlib warns about none
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pictures.plot_attention(maps, tokens, "这部电影", tmp_path / "a.png")
        assert not [w for w in caught if "missing from font" in str(w.message)]
    monkeypatch.setattr(plots, "_cjk", [])  # as on a machine without one
    with pytest.warns(UserWarning, match="fonts-wqy-zenhei") as caught:
        pictures.plot_attention(maps, tokens, "这部电影", tmp_path / "b.png")
    assert len([w for w in caught if "Chinese" in str(w.message)]) == 1
