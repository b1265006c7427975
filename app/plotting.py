"""Figures of a job's stored results, rendered with matplotlib's Agg backend to PNG or SVG bytes.

Inputs are plain rows as the results endpoints serve them (no ORM, no FastAPI), so the same
functions serve the API and anyone holding downloaded results. Each call builds its own
``Figure`` (never pyplot's global state), so concurrent requests in the thread pool do not share
a figure.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

FORMATS = {"png": "image/png", "svg": "image/svg+xml"}
TOP_FRACTION = 0.05  # the paper's class-distribution figure looks at the top 5 % by value


def _figure(width: float = 6.4, height: float = 4.0):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _encode(fig, fmt: str) -> bytes:
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}")
    import matplotlib

    buf = io.BytesIO()
    # no timestamps or random SVG ids in the file, so the same results give the same bytes
    metadata = {"Date": None} if fmt == "svg" else {"Software": None}
    with matplotlib.rc_context({"svg.hashsalt": "hostcp"}):
        fig.savefig(buf, format=fmt, metadata=metadata)
    return buf.getvalue()


def render_curves(curves: Sequence[dict[str, Any]], *, fmt: str = "png",
                  title: str = "") -> bytes:
    """Held-out accuracy against the fraction of training points kept: the top points by value
    (``addition``), a random fraction (``random``) and the selected subset (``subset``, a single
    marker). Rows: ``curve, fraction, n_points, value``."""
    fig = _figure()
    ax = fig.add_subplot()
    styles = {"addition": ("C0", "o", "top by value"), "random": ("C7", "s", "random")}
    by_curve: dict[str, list[dict[str, Any]]] = {}
    for row in curves:
        by_curve.setdefault(row["curve"], []).append(row)
    for name, rows in sorted(by_curve.items()):
        rows = sorted(rows, key=lambda r: r["fraction"])
        xs = [r["fraction"] for r in rows]
        ys = [r["value"] for r in rows]
        if name == "subset":
            ax.scatter(xs, ys, marker="*", s=220, color="C3", zorder=3,
                       label=f"selected subset ({rows[0]['n_points']} points)")
            continue
        color, marker, label = styles.get(name, (None, "^", name))
        ax.plot(xs, ys, marker=marker, color=color, label=label)
    ax.set_xlabel("fraction of training points used")
    ax.set_ylabel("held-out accuracy")
    ax.set_xlim(0, 1.02)
    ax.grid(alpha=0.3)
    if by_curve:
        ax.legend(loc="lower right")
    else:
        ax.text(0.5, 0.5, "no curves stored", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title or "Accuracy curves")
    return _encode(fig, fmt)


def class_distribution(points: Sequence[dict[str, Any]], classes: Sequence[str],
                       top_fraction: float = TOP_FRACTION) -> dict[str, list[float]]:
    """Share of each class in the whole training set, the selected subset and the top
    ``top_fraction`` by value. Rows: ``label, rank, selected``."""
    import math

    n = len(points)
    k = max(1, math.ceil(top_fraction * n)) if n else 0
    groups = {"all": list(points), "selected": [p for p in points if p["selected"]],
              f"top {top_fraction:.0%}": [p for p in points if p["rank"] <= k]}
    out = {}
    for name, rows in groups.items():
        total = len(rows)
        out[name] = [sum(1 for p in rows if p["label"] == c) / total if total else 0.0
                     for c in classes]
    return out


def render_classes(points: Sequence[dict[str, Any]], classes: Sequence[str], *,
                   fmt: str = "png", title: str = "") -> bytes:
    """Grouped bars: class shares in the training set, the selected subset, the top 5 %."""
    return render_class_shares(class_distribution(points, classes), classes, fmt=fmt,
                               title=title)


def render_class_shares(shares: Mapping[str, Sequence[float]], classes: Sequence[str], *,
                        fmt: str = "png", title: str = "",
                        colors: Mapping[str, str] | None = None) -> bytes:
    """Grouped bars, one bar per named group of class shares (e.g. the training set, then the
    top 5 % by value of each method of a comparison job)."""
    import numpy as np

    colors = colors or {}
    fig = _figure(width=min(16.0, max(6.4, 1.2 + 0.35 * len(shares) * len(classes))))
    ax = fig.add_subplot()
    x = np.arange(len(classes))
    width = 0.8 / max(1, len(shares))
    for i, (name, values) in enumerate(shares.items()):
        ax.bar(x + (i - (len(shares) - 1) / 2) * width, values, width, label=name,
               color=colors.get(name))
    ax.set_xticks(x, [str(c) for c in classes], rotation=30 if len(classes) > 6 else 0)
    ax.set_ylabel("share of points")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title(title or "Class distribution")
    return _encode(fig, fmt)


def render_mislabels(points: Sequence[dict[str, Any]], *, fmt: str = "png",
                     title: str = "", n_suspected: int | None = None) -> bytes:
    """Mislabel score (low = suspect) in rank order, suspects highlighted. Rows: ``rank,
    score, suspected`` (every point, or an even sample of the ranks: then give the number of
    suspects in ``n_suspected``)."""
    rows = sorted(points, key=lambda p: p["rank"])
    fig = _figure()
    ax = fig.add_subplot()
    ranks = [p["rank"] for p in rows]
    scores = [p["score"] for p in rows]
    ax.plot(ranks, scores, color="C0", lw=1.5, label="mislabel score")
    sus = [p for p in rows if p["suspected"]]
    if sus:
        count = len(sus) if n_suspected is None else n_suspected
        ax.scatter([p["rank"] for p in sus], [p["score"] for p in sus], color="C3", s=12,
                   zorder=3, label=f"suspected ({count})")
    ax.set_xlabel("rank (1 = most suspect)")
    ax.set_ylabel("score (low = suspect)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(title or "Mislabel report")
    return _encode(fig, fmt)


def render_confusion(confusion: Mapping[str, Any], *, fmt: str = "png",
                     title: str = "") -> bytes:
    """The mislabel report's confusion estimate: expected counts of each given label (rows)
    by estimated true class (columns); off the diagonal, the labels it believes wrong.
    ``confusion``: ``given``, ``true`` (class names) and ``counts`` (rows of floats)."""
    import numpy as np

    given, true = list(confusion["given"]), list(confusion["true"])
    counts = np.asarray(confusion["counts"], dtype=float)
    side = 2.0 + 0.5 * max(len(given), len(true))
    fig = _figure(min(12.0, side + 1.5), min(10.0, side))
    ax = fig.add_subplot()
    im = ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(len(true)), true, rotation=45, ha="right")
    ax.set_yticks(range(len(given)), given)
    ax.set_xlabel("estimated true class")
    ax.set_ylabel("given label")
    if counts.size <= 400:  # numbers stay readable up to 20 classes
        top = counts.max() if counts.size else 0.0
        for (i, j), v in np.ndenumerate(counts):
            ax.text(j, i, f"{v:.0f}" if v >= 10 else f"{v:.1f}", ha="center", va="center",
                    fontsize=8, color="white" if v > top / 2 else "black")
    fig.colorbar(im, ax=ax, label="expected points")
    ax.set_title(title or "Given label vs estimated true class")
    return _encode(fig, fmt)


def flips_found(ranked_indices: Sequence[int], flipped: Sequence[int]) -> list[int]:
    """Cumulative number of truly flipped points among the first 1..n inspected."""
    truth = set(int(i) for i in flipped)
    found, out = 0, []
    for i in ranked_indices:
        found += int(i) in truth
        out.append(found)
    return out


def render_flips(ranked_indices: Sequence[int], flipped: Sequence[int], *, fmt: str = "png",
                 title: str = "") -> bytes:
    """Flips found against points inspected in mislabel order, with the random-inspection line
    (the paper's noisy-label figure). Needs the indices of the labels that were flipped."""
    return render_flips_by_method({"mislabel order": ranked_indices}, flipped, fmt=fmt,
                                  title=title)


def render_flips_by_method(orders: Mapping[str, Sequence[int]], flipped: Sequence[int], *,
                           fmt: str = "png", title: str = "") -> bytes:
    """One flips-found line per named inspection order (most suspect first), e.g. each
    compared method's values lowest first, and the random-inspection line."""
    m = len(set(flipped))
    fig = _figure()
    ax = fig.add_subplot()
    colors = method_colors(list(orders))
    for name, order in orders.items():
        n = len(order)
        found = flips_found(order, flipped)
        xs = [i / n for i in range(1, n + 1)]
        ax.plot(xs, [f / m if m else 0.0 for f in found], color=colors[name], label=name)
    ax.plot([0, 1], [0, 1], color="C7", ls="--", label="random inspection")
    ax.set_xlabel("fraction of training points inspected")
    ax.set_ylabel(f"fraction of the {m} flipped labels found")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(title or "Flipped labels found")
    return _encode(fig, fmt)


def method_colors(methods: Sequence[str]) -> dict[str, str]:
    """One colour per method, by position (grey, C7, is kept for the random baselines)."""
    cycle = [f"C{i}" for i in range(10) if i != 7]
    return {m: cycle[i % len(cycle)] for i, m in enumerate(methods)}


def render_comparison_curves(curves: Sequence[dict[str, Any]], methods: Sequence[str], *,
                             fmt: str = "png", title: str = "") -> bytes:
    """A comparison job's curves, one line per method: the addition curve (train on the top
    fraction by value; higher is better) and the removal curve (train without it; lower is
    better). Rows: ``curve`` (``<method>:addition`` or ``<method>:removal``), ``fraction``,
    ``value``."""
    fig = _figure(width=10.0)
    axes = fig.subplots(1, 2, sharey=True)
    colors = method_colors(methods)
    panels = (("addition", "fraction of training points kept (top by value)",
               "Addition: train on the top"),
              ("removal", "fraction of training points removed (top by value)",
               "Removal: train without the top"))
    for ax, (kind, xlabel, name) in zip(axes, panels, strict=True):
        drawn = 0
        for method in methods:
            rows = sorted((r for r in curves if r["curve"] == f"{method}:{kind}"),
                          key=lambda r: r["fraction"])
            if rows:
                ax.plot([r["fraction"] for r in rows], [r["value"] for r in rows], marker="o",
                        color=colors[method], label=method)
                drawn += 1
        ax.set_xlabel(xlabel)
        ax.set_xlim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.set_title(name)
        if drawn:
            ax.legend(loc="lower right" if kind == "addition" else "lower left")
        else:
            ax.text(0.5, 0.5, "no curves stored", ha="center", va="center",
                    transform=ax.transAxes)
    axes[0].set_ylabel("held-out accuracy")
    fig.suptitle(title or "Method comparison")
    return _encode(fig, fmt)
