"""Loss-curve plots from metrics.jsonl files (matplotlib, headless)."""

from __future__ import annotations

import json
import logging
import re
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import font_manager  # noqa: E402

from .cjk import CJK_PUNCTUATION, FULL_WIDTH, IDEOGRAPHS, KANA  # noqa: E402

# Fonts with Chinese glyphs, tried after DejaVu Sans (which has none) glyph by glyph (matplotlib >= 3.6 falls back
# along the family list), so Chinese tokens in attention maps are characters, not empty boxes.
CJK_FAMILIES = ("Noto Sans CJK SC", "Noto Sans CJK JP", "Source Han Sans SC", "WenQuanYi Zen Hei",
                "WenQuanYi Micro Hei", "SimHei", "Microsoft YaHei", "PingFang SC", "AR PL UMing CN")
_CJK_FILE = re.compile(r"wqy|cjk|sourcehan|simhei|msyh|pingfang|uming", re.IGNORECASE)
_CJK_TEXT = re.compile(f"[{CJK_PUNCTUATION}{KANA}{IDEOGRAPHS}{FULL_WIDTH}]")
_cjk: list[str] | None = None


def cjk_fonts() -> list[str]:
    """The installed families of CJK_FAMILIES, found once per process (fonts installed after matplotlib built its
    font cache are picked up from the system font folders)."""
    global _cjk
    if _cjk is None:
        names = {f.name for f in font_manager.fontManager.ttflist}
        if not names & set(CJK_FAMILIES):
            for path in font_manager.findSystemFonts():
                if _CJK_FILE.search(Path(path).name):
                    try:
                        font_manager.fontManager.addfont(path)
                    except (OSError, RuntimeError, ValueError):  # an unreadable font file is not our problem
                        pass
            names = {f.name for f in font_manager.fontManager.ttflist}
        _cjk = [f for f in CJK_FAMILIES if f in names]
        if _cjk:
            matplotlib.rcParams["font.family"] = ["DejaVu Sans", *_cjk]
            # WenQuanYi's .ttc registers as weight 500; matplotlib would log "now using 500" for every label.
            logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
    return _cjk


def ready_for(labels: list[str]) -> None:
    """Set up the fonts for these labels; with Chinese in them and no Chinese font, one warning that says what to
    install (instead of matplotlib's one warning per missing glyph)."""
    if cjk_fonts() or not any(_CJK_TEXT.search(t) for t in labels):
        return
    warnings.filterwarnings("ignore", message="Glyph .* missing from font", category=UserWarning)
    warnings.warn("no font with Chinese characters found: Chinese labels in the figures show as boxes; install one "
                  "(Debian/Ubuntu: apt-get install fonts-wqy-zenhei or fonts-noto-cjk)", stacklevel=2)


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a metrics.jsonl file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_loss_curves(runs: dict[str, str | Path], out: str | Path, title: str = "loss") -> Path:
    """One figure: training loss (lines) and validation loss (markers) of each named run's metrics.jsonl."""
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for i, (name, path) in enumerate(runs.items()):
        rows = read_metrics(path)
        color = f"C{i}"
        train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
        if train:
            ax.plot(*zip(*train, strict=True), color=color, alpha=0.8, label=f"{name} train")
        for key in sorted({k for r in rows for k in r if k.startswith("val") and k.endswith("_loss")}):
            val = [(r["step"], r[key]) for r in rows if key in r]
            ax.plot(*zip(*val, strict=True), "o--", color=color, label=f"{name} {key}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats / predicted token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out)
    plt.close(fig)
    return out
