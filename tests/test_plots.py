"""plots.py: the loss-curve PNG is written, is a real picture, and plots the numbers of each metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.colors import to_rgb

from twinlm import plots

MLM = [{"step": 0, "loss": 5.0}, {"step": 10, "loss": 4.0}, {"step": 10, "val_mlm_loss": 4.5},
       {"step": 20, "loss": 3.0}, {"step": 20, "val_mlm_loss": 3.5}]
CLM = [{"step": 0, "loss": 6.0}, {"step": 10, "loss": 5.5, "lr": 1e-3}, {"step": 10, "val_clm_loss": 5.8,
                                                                       "val_mlm_loss": 6.2}]


def metrics(folder: Path, name: str, rows: list[dict]) -> Path:
    path = folder / f"{name}.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    return path


@pytest.fixture
def runs(tmp_path) -> dict[str, Path]:
    return {"mlm": metrics(tmp_path, "mlm", MLM), "clm": metrics(tmp_path, "clm", CLM)}


@pytest.fixture
def captured(monkeypatch) -> list:
    """The figures plot_loss_curves closes, kept open for inspection."""
    figures: list = []
    close = plt.close
    monkeypatch.setattr(plots.plt, "close", figures.append)
    yield figures
    for fig in figures:
        close(fig)


def test_read_metrics_skips_blank_lines(runs):
    assert plots.read_metrics(runs["mlm"]) == MLM


def test_png_is_written_at_its_size_and_is_not_blank(tmp_path, runs):
    out = plots.plot_loss_curves(runs, tmp_path / "loss.png", title="mlm vs clm")
    assert out == tmp_path / "loss.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = mpimg.imread(out)
    assert image.shape[:2] == (round(4.2 * 120), 7 * 120)  # figsize (7, 4.2) at dpi 120
    rgb = image[..., :3]
    assert (rgb < 0.9).any(axis=-1).mean() > 0.01  # ink: axes, text and lines, on a white page
    assert rgb.std() > 0.05


def colour_pixels(image: np.ndarray, colour: str, tol: float = 0.06) -> int:
    return int((np.abs(image[..., :3] - np.array(to_rgb(colour))) < tol).all(-1).sum())


def test_each_run_is_drawn_in_its_own_colour(tmp_path, runs):
    both = mpimg.imread(plots.plot_loss_curves(runs, tmp_path / "both.png"))
    only_mlm = mpimg.imread(plots.plot_loss_curves({"mlm": runs["mlm"]}, tmp_path / "one.png"))
    assert colour_pixels(both, "C0") > 50 and colour_pixels(both, "C1") > 50
    assert colour_pixels(only_mlm, "C0") > 50
    assert colour_pixels(only_mlm, "C1") < colour_pixels(both, "C1") / 10  # no second run, no second colour


def test_the_plotted_lines_are_the_metrics(tmp_path, runs, captured):
    plots.plot_loss_curves(runs, tmp_path / "loss.png", title="mlm vs clm")
    assert len(captured) == 1
    (ax,) = captured[0].axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"mlm train", "mlm val_mlm_loss", "clm train", "clm val_clm_loss", "clm val_mlm_loss"}
    assert list(lines["mlm train"].get_xdata()) == [0, 10, 20]
    assert list(lines["mlm train"].get_ydata()) == [5.0, 4.0, 3.0]
    assert list(lines["mlm val_mlm_loss"].get_xdata()) == [10, 20]
    assert list(lines["mlm val_mlm_loss"].get_ydata()) == [4.5, 3.5]
    assert list(lines["clm val_clm_loss"].get_ydata()) == [5.8] and list(lines["clm val_mlm_loss"].get_ydata()) == [6.2]
    assert lines["mlm val_mlm_loss"].get_marker() == "o" and lines["mlm train"].get_marker() in ("None", None, "")
    # one colour per run
    assert {lines[k].get_color() for k in ("mlm train", "mlm val_mlm_loss")} == {"C0"}
    assert {lines[k].get_color() for k in ("clm train", "clm val_clm_loss", "clm val_mlm_loss")} == {"C1"}
    assert ax.get_title() == "mlm vs clm" and ax.get_xlabel() == "optimizer step"
    assert "cross-entropy" in ax.get_ylabel()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert sorted(legend) == sorted(lines)


def test_a_run_with_only_validation_rows(tmp_path, captured):
    path = metrics(tmp_path, "v", [{"step": 5, "val_loss": 2.0}, {"step": 9, "val_loss": 1.5}])
    plots.plot_loss_curves({"v": path}, tmp_path / "v.png")
    (ax,) = captured[0].axes
    assert [(ln.get_label(), list(ln.get_ydata())) for ln in ax.get_lines()] == [("v val_loss", [2.0, 1.5])]


def test_figures_are_closed(tmp_path, runs):
    before = set(plt.get_fignums())
    for i in range(3):
        plots.plot_loss_curves(runs, tmp_path / f"{i}.png")
    assert set(plt.get_fignums()) == before
