"""The comparison's pictures: the masks M, attention maps, loss curves per paradigm, per-task bars.

The mask pictures are drawn cell by cell from the very tensors :mod:`twinlm.attention` adds to the scores
(``build_mask``), so the picture is the mask: each of the T x T cells is a ``CELL`` x ``CELL`` block of one colour,
ALLOWED where M_ij = 0 (query i sees key j), BLOCKED where M_ij = -inf. The attention maps are the probabilities of
the attention module's math path, softmax(QK^T / sqrt(d_k) + M), read per layer and head.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.image  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

from ..attention import apply_rotary, build_mask, math_attention, neg_inf  # noqa: E402
from ..model import device_of  # noqa: E402
from ..objectives import HybridSchedule  # noqa: E402
from ..plots import read_metrics, ready_for  # noqa: E402

CELL = 24  # pixels per mask cell
ALLOWED = (49, 112, 206)  # blue: M_ij = 0, the query sees the key
BLOCKED = (236, 236, 236)  # light grey: M_ij = -inf
MASK_LENGTH, MASK_PADDING = 8, 2  # the example: 8 positions, the last 2 of them padding


# --------------------------------------------------------------------------------------------- masks


def example_masks(length: int = MASK_LENGTH, padding: int = MASK_PADDING) -> dict[str, torch.Tensor]:
    """The (T, T) additive masks of the four cases, from attention.build_mask (the mask the model adds)."""
    full = torch.ones(1, length, dtype=torch.long)
    padded = full.clone()
    padded[0, length - padding:] = 0
    cases = {"bidirectional": ("bidirectional", full), "causal": ("causal", full),
             "bidirectional_padding": ("bidirectional", padded), "causal_padding": ("causal", padded)}
    out = {}
    for name, (kind, attention_mask) in cases.items():
        m = build_mask(kind, length, length, attention_mask, torch.device("cpu"), torch.float32)
        out[name] = m.expand(1, 1, length, length)[0, 0].clone()
    return out


def mask_pixels(mask: torch.Tensor, cell: int = CELL) -> np.ndarray:
    """(T*cell, T*cell, 3) uint8 picture of an additive mask: ALLOWED where M = 0, BLOCKED where M = -inf."""
    blocked = (mask <= neg_inf(mask.dtype) / 2).numpy()
    rgb = np.where(blocked[..., None], np.array(BLOCKED, np.uint8), np.array(ALLOWED, np.uint8)).astype(np.uint8)
    return rgb.repeat(cell, axis=0).repeat(cell, axis=1)


def pixels_to_allowed(pixels: np.ndarray, cell: int = CELL) -> np.ndarray:
    """The inverse: (T, T) bool, True where a cell has the ALLOWED colour (read from each cell's centre)."""
    centre = pixels[cell // 2::cell, cell // 2::cell, :3]
    return np.all(centre == np.array(ALLOWED, dtype=pixels.dtype), axis=-1)


def save_mask_pictures(folder: Path) -> dict[str, str]:
    """Write mask_<case>.png for each case (lossless PNG, exact pixels); returns case -> file name."""
    folder.mkdir(parents=True, exist_ok=True)
    names = {}
    for name, mask in example_masks().items():
        path = folder / f"mask_{name}.png"
        matplotlib.image.imsave(path, mask_pixels(mask))
        names[name] = path.name
    return names


# --------------------------------------------------------------------------------------------- attention maps


@torch.inference_mode()
def attention_maps(model: torch.nn.Module, ids: list[int], kind: str) -> torch.Tensor:
    """(layers, heads, T, T) attention probabilities of one sequence under mask ``kind``.

    Each layer's input to its attention module is caught by a hook; its queries and keys are formed as the module
    forms them (fused projection, rotary when used, grouped heads repeated) and the probabilities come out of
    attention.math_attention itself, given the identity as values (softmax(QK^T/sqrt(d) + M) @ I).
    """
    seen: list[tuple[torch.Tensor, Any]] = []

    def catch(module, args, kwargs):
        rope = args[4] if len(args) > 4 else kwargs.get("rope")
        seen.append((args[0], rope))

    blocks = model.backbone.blocks
    hooks = [b.attn.register_forward_pre_hook(catch, with_kwargs=True) for b in blocks]
    try:
        device = device_of(model)
        model.hidden(torch.tensor([ids], device=device), attention=kind)
    finally:
        for h in hooks:
            h.remove()
    maps = []
    for block, (x, rope) in zip(blocks, seen, strict=True):
        attn = block.attn
        B, T, D = x.shape
        kv = attn.kv_heads * attn.head_dim
        q, k, _ = attn.qkv(x).split([D, kv, kv], dim=-1)
        q = q.view(B, T, attn.n_heads, attn.head_dim).transpose(1, 2)
        k = k.view(B, T, attn.kv_heads, attn.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        k = k.repeat_interleave(attn.n_heads // attn.kv_heads, dim=1)
        mask = build_mask(kind, T, T, None, x.device, q.dtype)
        eye = torch.eye(T, dtype=q.dtype, device=x.device).expand(B, attn.n_heads, T, T)
        maps.append(math_attention(q, k, eye, mask)[0].float().cpu())
    return torch.stack(maps)


def plot_attention(maps: np.ndarray, tokens: list[str], title: str, path: Path) -> Path:
    """One small heat map per (layer, head): rows are queries, columns keys."""
    layers, heads = maps.shape[:2]
    size = 1.9
    labels = [t.replace("\n", "\\n") for t in tokens]
    ready_for(labels)  # Chinese tokens need a font with Chinese glyphs, set before any text is made
    fig, axes = plt.subplots(layers, heads, figsize=(heads * size + 0.6, layers * size + 0.8), dpi=110,
                             squeeze=False)
    for li in range(layers):
        for hi in range(heads):
            ax = axes[li][hi]
            ax.imshow(maps[li, hi], cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if hi == 0:
                ax.set_ylabel(f"layer {li + 1}", fontsize=8)
            if li == 0:
                ax.set_title(f"head {hi + 1}", fontsize=8)
    if len(labels) <= 24:
        ax = axes[-1][0]
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=5)
        axes[0][0].set_yticks(range(len(labels)), labels, fontsize=5)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------- curves and bars


def paradigm_curves(metrics_file: Path, objective: str, hybrid: str | None, steps: int,
                    tokens_per_step: int) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """{paradigm: {"train": [(tokens, loss)], "val": [(tokens, loss)]}} from a pretraining run's metrics.jsonl.

    A hybrid's training loss is split by the objective its schedule gave each logged step.
    """
    schedule = HybridSchedule.parse(hybrid) if objective == "hybrid" else None
    paradigm_of = {"mlm": "masked", "clm": "causal"}
    out: dict[str, dict[str, list]] = {}
    for row in read_metrics(metrics_file):
        x = row["step"] * tokens_per_step
        if "loss" in row:
            obj = schedule.objective_at(row["step"] - 1, steps) if schedule else objective
            out.setdefault(paradigm_of[obj], {"train": [], "val": []})["train"].append((x, row["loss"]))
        for key, value in row.items():
            if key == "val_loss":
                out.setdefault(paradigm_of[objective], {"train": [], "val": []})["val"].append((x, value))
            elif key in ("val_mlm_loss", "val_clm_loss"):
                out.setdefault(paradigm_of[key[4:7]], {"train": [], "val": []})["val"].append((x, value))
    return out


def plot_paradigm_curves(curves: dict[str, dict[str, dict[str, list]]], path: Path) -> Path:
    """Two axes, masked and causal: each model's training loss (line) and validation loss (markers)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    for ax, paradigm in zip(axes, ("masked", "causal"), strict=True):
        for i, (name, by_paradigm) in enumerate(curves.items()):
            data = by_paradigm.get(paradigm)
            if not data:
                continue
            if data["train"]:
                ax.plot(*zip(*data["train"], strict=True), color=f"C{i}", alpha=0.45, linewidth=1)
            if data["val"]:
                ax.plot(*zip(*data["val"], strict=True), "o-", color=f"C{i}", label=name, markersize=3)
        what = "masked-token loss (MLM objective)" if paradigm == "masked" else "next-token loss (CLM objective)"
        ax.set_title(f"{paradigm}: {what}", fontsize=10)
        ax.set_xlabel("training tokens")
        ax.set_ylabel("cross-entropy (nats / predicted token)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_task_bars(tasks: dict[str, dict[str, dict[str, Any]]], path: Path) -> Path:
    """One axis per task: each model's mean score over seeds, the error bar one standard deviation."""
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(5.5, 0.6 * max(len(m) for m in tasks.values()) + 2)
                                                     * len(tasks), 4.4), dpi=110, squeeze=False)
    for ax, (task, models) in zip(axes[0], tasks.items(), strict=True):
        names = list(models)
        means = [models[n]["mean"] for n in names]
        stds = [models[n]["std"] for n in names]
        colors = ["0.7" if n.startswith("random") else f"C{i}" for i, n in enumerate(names)]
        ax.bar(range(len(names)), [0 if math.isnan(m) else m for m in means], yerr=stds, capsize=4, color=colors)
        ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
        metric = next(iter(models.values()))["metric"] if models else ""
        ax.set_title(f"{task}: dev {metric} (mean ± std over seeds)", fontsize=10)
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
