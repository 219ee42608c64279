"""The served models: which endpoints each one supports, and the (batched) inference calls behind them.

Every call goes through twinlm's Python API (twinlm.finetune, twinlm.pipelines, twinlm.scoring, LanguageModel.encode)
so the API answers exactly what Python answers for the same input.
"""

from __future__ import annotations

import time
from concurrent.futures import Executor
from typing import Any

import torch

from ..heads import TaskModel
from ..loading import Loaded
from .batcher import Batcher
from .errors import ApiError
from .generation import Engine
from .limits import Limits
from .metrics import Metrics

TASK_ENDPOINT = {"classify": "classify", "qa": "answer", "ner": "tag"}
ENDPOINTS = ("completions", "embeddings", "fill-mask", "mask-predict", "classify", "answer", "tag", "score",
             "tokenize")


def endpoints_of(loaded: Loaded) -> list[str]:
    """What a model can serve: its task's endpoint for a fine-tuned model; otherwise by paradigm."""
    task = (loaded.info.get("task") or {}).get("task") if isinstance(loaded.model, TaskModel) else None
    if task:
        return [TASK_ENDPOINT[task], "embeddings", "tokenize"]
    out = ["embeddings", "score", "tokenize"]
    if "masked" in loaded.config.paradigms:
        out += ["fill-mask", "mask-predict"]
    if "causal" in loaded.config.paradigms:
        out += ["completions"]
    return out


class Served:
    """One model given at start, with its batchers and (for causal models) its decoding loop."""

    def __init__(self, name: str, loaded: Loaded, limits: Limits, metrics: Metrics,
                 executor: Executor | None = None) -> None:
        if loaded.tokenizer is None:
            raise ValueError(f"model {name!r} has no tokenizer; add tokenizer files to its folder to serve it")
        self.name, self.loaded, self.limits = name, loaded, limits
        self.model, self.tokenizer, self.config = loaded.model, loaded.tokenizer, loaded.config
        self.lm = loaded.lm
        self.task = (loaded.info.get("task") or {}).get("task") if isinstance(loaded.model, TaskModel) else None
        self.endpoints = endpoints_of(loaded)
        self.created = int(time.time())
        fns = {"classify": self._classify, "answer": self._answer, "tag": self._tag, "embeddings": self._embed,
               "fill-mask": self._fill_mask, "score": self._score, "mask-predict": self._mask_predict}
        self.batchers = {op: Batcher(name, op, fn, limits, metrics, executor)
                         for op, fn in fns.items() if op in self.endpoints}
        self.engine = (Engine(name, self.lm, self.tokenizer, limits.max_streams, limits.max_queue, metrics,
                              limits.retry_after_s) if "completions" in self.endpoints else None)

    @property
    def kind(self) -> str:
        if self.task:
            return f"{self.task} model"
        return f"{' + '.join(self.config.paradigms)} model (objective {self.config.objective})"

    def describe(self) -> dict[str, Any]:
        c = self.config
        task = self.loaded.info.get("task") if self.task else None
        return {"name": self.name, "paradigms": list(c.paradigms), "objective": c.objective,
                "attention": c.attention, "task": self.task, "labels": (task or {}).get("labels"),
                "endpoints": self.endpoints, "max_positions": c.max_positions, "vocab_size": c.vocab_size,
                "parameters": self.lm.num_parameters(), "mask_token": self.tokenizer.id_to_token(
                    self.tokenizer.mask_id), "format": self.loaded.info.get("format")}

    async def run(self, op: str, inputs: list[Any], timeout: float | None = None) -> list[Any]:
        return await self.batchers[op].submit(inputs, timeout)

    # ------------------------------------------------------------------ batch functions (worker thread)

    def _classify(self, items: list[tuple[str, str | None]]) -> list[dict[str, Any]]:
        from ..finetune import classify

        texts = [t for t, _ in items]
        pairs = [p or "" for _, p in items] if any(p for _, p in items) else None
        return classify(self.model, self.tokenizer, texts, pairs, batch_size=max(len(items), 1))

    def _answer(self, items: list[tuple[str, str]]) -> list[dict[str, Any]]:
        from ..finetune import answer

        out = answer(self.model, self.tokenizer, [q for q, _ in items], [c for _, c in items],
                     batch_size=max(len(items), 1))
        return list(out)  # type: ignore[arg-type]

    def _tag(self, texts: list[str]) -> list[list[dict[str, Any]]]:
        from ..finetune import tag

        return list(tag(self.model, self.tokenizer, list(texts), batch_size=max(len(texts), 1)))  # type: ignore

    @torch.inference_mode()
    def _embed(self, rows: list[list[int]]) -> list[list[float]]:
        """Mean-pooled final hidden states (LanguageModel.encode) under the model's own mask, right-padded."""
        device = next(self.lm.parameters()).device
        width = max(len(r) for r in rows)
        x = torch.full((len(rows), width), self.tokenizer.pad_id, dtype=torch.long, device=device)
        mask = torch.zeros_like(x)
        for i, r in enumerate(rows):
            x[i, :len(r)] = torch.tensor(r, device=device)
            mask[i, :len(r)] = 1
        vecs = self.lm.encode(x, mask if len(rows) > 1 else None, attention=self.config.attention)
        return vecs.float().cpu().tolist()

    def _fill_mask(self, items: list[tuple[str, int]]) -> list[Any]:
        from .batched import fill_mask_many

        return fill_mask_many(self.lm, self.tokenizer, items)

    def _mask_predict(self, items: list[tuple[str, int, int]]) -> list[Any]:
        from .batched import mask_predict_many

        return mask_predict_many(self.lm, self.tokenizer, items)

    def _score(self, items: list[tuple[str, str]]) -> list[Any]:
        from .batched import score_many

        return score_many(self.lm, self.tokenizer, items)


class Registry:
    """The models given at start, by name; picks the model for a request or says which one could serve it."""

    def __init__(self, served: dict[str, Served]) -> None:
        self.served = served

    def pick(self, name: str | None, endpoint: str) -> Served:
        able = [n for n, s in self.served.items() if endpoint in s.endpoints]
        if name is None:
            if not able:
                raise ApiError(400, f"no model served here supports {endpoint}; served: {self._list()}", "model")
            return self.served[able[0]]
        if name not in self.served:
            raise ApiError(404, f"model {name!r} is not served here; served: {self._list()}", "model",
                           type="model_not_found")
        model = self.served[name]
        if endpoint not in model.endpoints:
            could = (f"use model {', '.join(repr(n) for n in able)} instead" if able
                     else "no model served here can")
            raise ApiError(400, f"model {name!r} is a {model.kind} and cannot serve {endpoint} (it serves "
                                f"{', '.join(model.endpoints)}); {could}", "model")
        return model

    def _list(self) -> str:
        return ", ".join(f"{n} ({', '.join(s.endpoints)})" for n, s in self.served.items()) or "none"
