"""One paper style for every figure, and a deterministic save.

Fonts are embedded as TrueType (Type 42) in PDF, SVG ids are salted with a constant, and
no file carries a timestamp or a software banner, so a rerun writes the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

PAPER_RC = {
    "font.family": "DejaVu Sans",
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "svg.fonttype": "path",
    "svg.hashsalt": "avfl",
    "figure.dpi": 100,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.02,
}

# Per-format metadata that would otherwise embed dates or version banners.
_METADATA = {
    ".png": {"Software": None},
    ".pdf": {"Creator": None, "Producer": None, "CreationDate": None},
    ".svg": {"Creator": None, "Date": None, "Format": None, "Type": None},
}


def paper_style():
    """Context manager applying the paper style."""
    return plt.rc_context(PAPER_RC)


def save_figure(fig, path: str | Path, dpi: int = 300) -> None:
    """Save `fig` to `path` (format from the suffix) without timestamps or banners."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, metadata=_METADATA.get(path.suffix.lower(), {}))
