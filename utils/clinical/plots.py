"""Pictures of clinical agreement and of the dropout definitions (PNG, matplotlib's Agg canvas).

The one module of the project that imports matplotlib. Figures are drawn on a
``matplotlib.figure.Figure`` with an Agg canvas (no pyplot, no display, no global backend):

* :func:`bland_altman_figure`: per measure, the difference predicted - true against their
  mean, with the mean difference (bias) and the 95 % limits of agreement
  ``bias +- 1.96 SD`` (Bland and Altman 1986);
* :func:`confusion_figure`: a confusion matrix of grades, counts in the cells;
* :func:`dropout_definitions_figure`: a lid's eyelid, glands and the regions of both
  dropout definitions (:mod:`utils.clinical.dropout`).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from utils.clinical.dropout import gland_bearing_region, span_regions
from utils.clinical.glands import as_mask

DPI = 120


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=DPI)
    return path


def limits_of_agreement(predicted: Sequence[float], true: Sequence[float]) -> dict[str, Any]:
    """Bland-Altman statistics over the pairs where both values are finite: ``n``, ``mean``
    and ``difference`` (float arrays), ``bias`` (mean difference), ``sd`` (its standard
    deviation, ddof 1; NaN for fewer than 2 pairs), ``lower`` and ``upper`` (``bias -+ 1.96 sd``)."""
    p, t = np.asarray(predicted, dtype=np.float64), np.asarray(true, dtype=np.float64)
    keep = np.isfinite(p) & np.isfinite(t)
    p, t = p[keep], t[keep]
    difference = p - t
    bias = float(difference.mean()) if difference.size else math.nan
    sd = float(difference.std(ddof=1)) if difference.size > 1 else math.nan
    return {"n": int(difference.size), "mean": (p + t) / 2, "difference": difference, "bias": bias, "sd": sd,
            "lower": bias - 1.96 * sd, "upper": bias + 1.96 * sd}


def bland_altman_figure(measures: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str | Path,
                        title: str) -> Path:
    """One Bland-Altman panel per entry ``label -> (predicted, true)``; a measure without a
    finite pair is a panel saying so. Returns the path written."""
    figure = Figure(figsize=(4.2 * len(measures), 3.8), layout="constrained")
    figure.suptitle(title, fontsize=10)
    for axes, (label, (predicted, true)) in zip(figure.subplots(1, len(measures), squeeze=False)[0],
                                               measures.items()):
        stats = limits_of_agreement(predicted, true)
        axes.set_title(f"{label} (n = {stats['n']})", fontsize=9)
        axes.set_xlabel(f"mean of predicted and true {label}", fontsize=8)
        axes.set_ylabel("predicted - true", fontsize=8)
        axes.tick_params(labelsize=7)
        if not stats["n"]:
            axes.text(0.5, 0.5, "not measured\n(no eyelid masks)", ha="center", va="center",
                      transform=axes.transAxes, fontsize=9)
            continue
        axes.scatter(stats["mean"], stats["difference"], s=12, alpha=0.7, color="tab:blue", edgecolors="none")
        axes.axhline(0.0, color="0.7", linewidth=0.8)
        axes.axhline(stats["bias"], color="tab:red", linewidth=1.2, label=f"bias {stats['bias']:+.3g}")
        if math.isfinite(stats["sd"]):
            for bound in ("lower", "upper"):
                axes.axhline(stats[bound], color="tab:red", linewidth=0.9, linestyle="--")
            axes.plot([], [], color="tab:red", linestyle="--", linewidth=0.9,
                      label=f"95 % limits {stats['lower']:+.3g}, {stats['upper']:+.3g}")
        axes.legend(fontsize=7, loc="best")
    return _save(figure, path)


def confusion_figure(confusion: Sequence[Sequence[int]], path: str | Path, title: str, rows: str,
                     columns: str, labels: Sequence[Any] = (0, 1, 2, 3)) -> Path:
    """A ``[K, K]`` confusion matrix (rows: ``rows``' grade, columns: ``columns``' grade) with
    the count and the row share in each cell. Returns the path written."""
    counts = np.asarray(confusion, dtype=np.int64)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    figure = Figure(figsize=(4.4, 4.0), layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    for (i, j), count in np.ndenumerate(counts):
        axes.text(j, i, f"{count}\n{share[i, j]:.0%}" if counts[i].sum() else "0", ha="center", va="center",
                  fontsize=8, color="white" if share[i, j] > 0.6 else "black")
    axes.set_xticks(range(len(labels)), [str(v) for v in labels])
    axes.set_yticks(range(len(labels)), [str(v) for v in labels])
    axes.set_xlabel(columns, fontsize=9)
    axes.set_ylabel(rows, fontsize=9)
    axes.set_title(title, fontsize=9)
    figure.colorbar(image, ax=axes, shrink=0.8, label="share of the row")
    return _save(figure, path)


def dropout_definitions_figure(glands: Any, eyelid: Any, path: str | Path, title: str = "") -> Path:
    """Three panels of one lid: the glands in the eyelid mask; the area definition (the
    gland-bearing region ``E & closing(G)`` and the rest of ``E``, its dropout); the span
    definition (the span ``S``, its gland-bearing part and its dropout, the rest of ``E`` not
    counted). Returns the path written."""
    glands, eyelid = as_mask(glands), as_mask(eyelid)
    area_kept = gland_bearing_region(glands, eyelid)
    span_kept, span, extent = span_regions(glands, eyelid)
    colours = ListedColormap(["black", "0.35", "tab:red", "tab:green", "white"])
    def layer(kept: np.ndarray, counted: np.ndarray) -> np.ndarray:
        out = np.where(eyelid, 1, 0)
        out[counted & ~kept] = 2
        out[kept] = 3
        out[glands] = 4
        return out
    area_lost = 1 - area_kept.sum() / eyelid.sum()
    span_lost = 1 - span_kept.sum() / span.sum()
    panels = [("glands (white) in the eyelid mask (grey)", np.where(glands, 4, np.where(eyelid, 1, 0))),
              (f"area: dropout {area_lost:.2f} = red / whole eyelid\n(green + white: glands and the gaps between "
               f"them)", layer(area_kept, eyelid)),
              (f"span: dropout {span_lost:.2f} = red / span (h = {extent:.2f})\n(grey: beyond the span, not "
               f"counted)", layer(span_kept, span))]
    height, width = glands.shape
    figure = Figure(figsize=(3.6 * len(panels), 3.6 * height / width + 0.8), layout="constrained")
    if title:
        figure.suptitle(title, fontsize=10)
    for axes, (label, picture) in zip(figure.subplots(1, len(panels)), panels):
        axes.imshow(picture, cmap=colours, vmin=0, vmax=4, interpolation="nearest")
        axes.set_title(label, fontsize=8)
        axes.set_axis_off()
    return _save(figure, path)
