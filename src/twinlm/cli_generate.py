"""`twinlm generate` and `twinlm score`: decoding (streamed, batched from JSONL, beam, mask-predict) and scoring."""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import warnings
from pathlib import Path
from typing import Any

from .cli_registry import Command
from .errors import ConfigError, DataError


def _generate_arguments(ge: argparse.ArgumentParser) -> None:
    ge.add_argument("--model", required=True, help="run, checkpoint or model folder")
    src = ge.add_mutually_exclusive_group()
    src.add_argument("--prompt", default=None, help="the text to continue (empty: start from BOS/EOS)")
    src.add_argument("--prompts-file", default=None,
                     help='JSONL, one prompt per line: {"prompt": "..."} or a JSON string; writes JSONL results')
    ge.add_argument("--out", default=None, help="with --prompts-file: JSONL output file (default: stdout)")
    ge.add_argument("--batch-size", type=int, default=8, help="with --prompts-file: prompts decoded together")
    ge.add_argument("--stream", action="store_true", help="print text as it is decoded")
    g = ge.add_argument_group("decoding")
    g.add_argument("--max-new-tokens", type=int, default=60)
    g.add_argument("--temperature", type=float, default=0.0, help="<= 0: greedy (argmax); > 0: sample")
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--top-p", type=float, default=None, help="nucleus mass in (0, 1]")
    g.add_argument("--min-p", type=float, default=None, help="keep tokens with p >= min_p * max p")
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--no-repeat-ngram", type=int, default=0, metavar="N")
    g.add_argument("--num-beams", type=int, default=1)
    g.add_argument("--length-penalty", type=float, default=1.0)
    g.add_argument("--early-stopping", action="store_true")
    g.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop string (repeatable)")
    g.add_argument("--stop-id", action="append", type=int, default=[], metavar="ID", help="stop token id")
    g.add_argument("--ignore-eos", action="store_true", help="do not stop at the end-of-text token")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--truncate", default="error", choices=["error", "left"],
                   help="a prompt too long for max_positions: error, or cut from the left with a warning")
    g.add_argument("--mask-predict", action="store_true",
                   help="masked model: fill --max-new-tokens [MASK]s after the prompt by iterative unmasking")
    g.add_argument("--steps", type=int, default=10, help="mask-predict iterations")


def _score_arguments(sc: argparse.ArgumentParser) -> None:
    sc.add_argument("--model", required=True)
    sc.add_argument("--data", required=True, help="UTF-8 text file (.txt, .txt.gz) scored as one text")
    sc.add_argument("--paradigm", default=None, choices=["causal", "masked"],
                    help="default: the model's own (a hybrid model can do either)")
    sc.add_argument("--window", type=int, default=None, help="causal: tokens per window (default max_positions)")
    sc.add_argument("--stride", type=int, default=None, help="causal: new tokens scored per window (default half)")
    sc.add_argument("--batch-size", type=int, default=8)
    sc.add_argument("--per-token", action="store_true", help="also print each token's log-probability")
    sc.add_argument("--json", action="store_true")


def _config(args: argparse.Namespace):
    from .generate import GenerationConfig

    return GenerationConfig(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        min_p=args.min_p, repetition_penalty=args.repetition_penalty, no_repeat_ngram_size=args.no_repeat_ngram,
        num_beams=args.num_beams, length_penalty=args.length_penalty, early_stopping=args.early_stopping,
        stop_strings=tuple(args.stop), stop_token_ids=tuple(args.stop_id), stop_at_eos=not args.ignore_eos,
        seed=args.seed, truncate=args.truncate,
    )


def _read_prompts(path: str) -> list[str]:
    """Prompts of a JSONL file: each line a JSON string or an object with a "prompt" (or "text") field."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{file}: no such prompts file")
    prompts = []
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{file}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            raise DataError(f"{file}:{n}: not a JSON line; write one JSON string or object per line") from None
        if isinstance(item, dict):
            item = item.get("prompt", item.get("text"))
        if not isinstance(item, str):
            raise DataError(f'{file}:{n}: expected a JSON string or an object with a "prompt" string field')
        prompts.append(item)
    if not prompts:
        raise DataError(f"{file}: no prompts in this file")
    return prompts


def cmd_generate(args: argparse.Namespace) -> None:
    """Run `twinlm generate`."""
    from .generate import TruncationWarning, generate, mask_predict, stream
    from .pipelines import load_pretrained

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    config = _config(args)
    if args.mask_predict and (args.stream or args.num_beams > 1 or config.do_sample):
        raise ConfigError("--mask-predict is its own decoding; it takes no --stream, --num-beams or sampling flags")
    model, tok = load_pretrained(args.model)
    prompts = _read_prompts(args.prompts_file) if args.prompts_file else [args.prompt or ""]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TruncationWarning)
        if args.mask_predict:
            results = [mask_predict(model, tok, p, args.max_new_tokens, args.steps) for p in prompts]
        elif args.stream and not args.prompts_file:
            print(prompts[0], end="", flush=True)
            for piece in stream(model, tok, prompts[0], config):
                _flush_warnings(caught)
                print(piece, end="", flush=True)
            print()
            _flush_warnings(caught)
            return
        else:
            results = []
            for i in range(0, len(prompts), args.batch_size):
                out = generate(model, tok, prompts[i:i + args.batch_size], config)
                results.extend(out)  # type: ignore[arg-type]
        _flush_warnings(caught)
    if not args.prompts_file:
        print(results[0].prompt + results[0].text)
        return
    lines = [json.dumps({"prompt": r.prompt, "text": r.text, "finish_reason": r.finish_reason,
                         "new_tokens": len(r.token_ids)}, ensure_ascii=False) for r in results]
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"{len(lines)} generations -> {args.out}", file=sys.stderr)
    else:
        print("\n".join(lines))


def _flush_warnings(caught: list) -> None:
    """Print recorded warnings as one line each (the CLI never shows a warning's source line)."""
    for w in caught:
        print(f"twinlm: warning: {w.message}", file=sys.stderr)
    caught.clear()


def _read_text(path: str) -> str:
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{file}: no such file to score")
    raw = gzip.decompress(file.read_bytes()) if file.name.endswith(".gz") else file.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{file}: not UTF-8 text ({exc.reason} at byte offset {exc.start})") from None
    if not text.strip():
        raise DataError(f"{file}: empty; nothing to score")
    return text


def cmd_score(args: argparse.Namespace) -> None:
    """Run `twinlm score`."""
    from .pipelines import load_pretrained
    from .scoring import default_paradigm, perplexity, pseudo_perplexity, score

    model, tok = load_pretrained(args.model)
    text = _read_text(args.data)
    paradigm = args.paradigm or default_paradigm(model)
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    result: dict[str, Any]
    if paradigm == "causal":
        result = {"paradigm": "causal", **perplexity(model, tok, text, args.window, args.stride,
                                                     args.batch_size).to_dict()}
    else:
        if args.window is not None or args.stride is not None:
            raise ConfigError("--window and --stride apply to causal scoring; a masked model is scored per token")
        result = {"paradigm": "masked", **pseudo_perplexity(model, tok, text, batch_size=max(args.batch_size, 32))}
    result["file"] = args.data
    if args.per_token:
        scores = score(model, tok, text, paradigm, args.window, args.stride, args.batch_size)
        result["per_token"] = [[t, round(lp, 4)] for t, lp in zip(scores.tokens, scores.logprobs, strict=True)]
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
        return
    for key, value in result.items():
        if key != "per_token":
            print(f"{key:22} {value:.4f}" if isinstance(value, float) else f"{key:22} {value}")
    for token, lp in result.get("per_token", []):
        print(f"{lp:10.4f}  {token!r}")


COMMANDS = [
    Command("generate", "continue prompts with a causal model (or mask-predict with a masked one)",
            examples=('twinlm generate --model runs/clm --prompt "ROMEO:" --max-new-tokens 60 --top-p 0.9 '
                      "--temperature 0.8 --stream",
                      "twinlm generate --model runs/clm --prompts-file prompts.jsonl --out generations.jsonl "
                      "--num-beams 4",
                      'twinlm generate --model runs/mlm --prompt "Once upon a time" --mask-predict '
                      "--max-new-tokens 20 --steps 10"),
            add_arguments=_generate_arguments, run=cmd_generate),
    Command("score", "perplexity and bits per byte (causal) or pseudo-perplexity (masked) of a text",
            examples=("twinlm score --model runs/clm --data ../shared/data/text/wikitext-2/test.raw.txt --stride 128",
                      "twinlm score --model runs/mlm --data held_out.txt --json   # pseudo-perplexity"),
            add_arguments=_score_arguments, run=cmd_score),
]
