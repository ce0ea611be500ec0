"""Figures of the notebooks.  Each function returns a ``matplotlib.figure.Figure`` built
without pyplot (so it works headless and never leaks open figures); a notebook shows it
as the last expression of a cell and keeps it with :func:`save_figure`."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from sgsc.core.quant import init_exponent_maxabs, quantize
from sgsc.reporting.report import FIGURES, mean_std

# One colour per method of sgsc.experiments.defaults.METHODS, no two alike (the frontier
# figure shows them all): sc and sgsc strong, their halves greens, sc-rate dark purple, PTQ
# browns and greys, QAT oranges and pinks, DiffQ olive, CB-TPE purple and plain TPE cyan
# (matplotlib's tab20).
METHOD_COLORS = {
    "float": "#444444", "sc": "#1f77b4", "sgsc": "#d62728", "sc-rate": "#7b3294",
    "sc-pres": "#2ca02c", "sc-feedback": "#98df8a",
    "uniform-ptq-2": "#c49c94", "uniform-ptq-3": "#8c564b", "uniform-ptq-4": "#7f7f7f",
    "uniform-ptq-6": "#c7c7c7", "uniform-ptq-8": "#c5b0d5", "uniform-ptq-16": "#dbdb8d",
    "uniform-qat-2": "#ff7f0e", "uniform-qat-3": "#ffbb78", "uniform-qat-4": "#e377c2",
    "uniform-qat-6": "#ff9896", "uniform-qat-8": "#aec7e8", "uniform-qat-16": "#9edae5",
    "diffq": "#bcbd22", "cbtpe": "#9467bd", "cbtpe-tpe": "#17becf",
}
_EXTRA_COLORS = ("#f7b6d2", "#8b0000", "#556b2f", "#00008b")


def method_color(method: str) -> str:
    """A fixed colour per method, so every figure agrees (other names: one of a few
    more, by a hash of the name)."""
    if method in METHOD_COLORS:
        return METHOD_COLORS[method]
    return _EXTRA_COLORS[sum(map(ord, method)) % len(_EXTRA_COLORS)]


def save_figure(fig: Figure, report_dir: str | os.PathLike[str], name: str) -> list[Path]:
    """Write ``fig`` as PNG and SVG to ``<report_dir>/figures/<name>.{png,svg}``."""
    folder = Path(report_dir) / FIGURES
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}.png", folder / f"{name}.svg"]
    fig.savefig(paths[0], dpi=120, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    return paths


# ----------------------------------------------------------------------------- the quantizer


def quantizer_curves(settings: Sequence[tuple[float, float]], *, w_max: float = 1.0,
                     points: int = 2001) -> Figure:
    """``q(w)`` against ``w`` for several (bit depth, exponent) pairs, one panel each."""
    w = torch.linspace(-w_max, w_max, points).view(-1, 1)  # one channel, many weights
    cols = min(len(settings), 3)
    rows = math.ceil(len(settings) / cols)
    fig = Figure(figsize=(3.6 * cols, 3.0 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (b, e) in zip(axes, settings, strict=False):
        q = quantize(w.T, torch.tensor([float(b)]), torch.tensor([float(e)])).ravel()
        ax.plot(w.ravel(), w.ravel(), color="#bbbbbb", lw=1, label="w")
        ax.plot(w.ravel(), q, color="#d62728", lw=1.5, label="q(w)")
        levels = len(torch.unique(q))
        ax.set_title(f"b = {b:g}, e = {e:g}: {levels} value{'s' * (levels > 1)}, "
                     f"{math.ceil(max(b, 0))} bits stored", fontsize=9)
        ax.set_xlabel("w")
        ax.grid(alpha=0.3)
    for ax in axes[len(settings):]:
        ax.set_axis_off()
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def layer_quantization(weight: torch.Tensor, bits: Sequence[float], *,
                       channel: int = 0) -> Figure:
    """One channel of a trained layer: its weights, and their quantized values at several
    bit depths (exponent chosen so that the largest weight just fits)."""
    row = weight.detach().reshape(weight.shape[0], -1)[channel : channel + 1].float()
    fig = Figure(figsize=(3.6 * len(bits), 3.0))
    axes = fig.subplots(1, len(bits), squeeze=False).ravel()
    order = torch.argsort(row.ravel())
    for ax, b in zip(axes, bits, strict=True):
        e = init_exponent_maxabs(row, float(b))
        q = quantize(row, torch.tensor([float(b)]), e)
        error = (q - row).abs().mean().item()
        ax.plot(row.ravel()[order], "o", ms=3, color="#999999", label="w")
        ax.plot(q.ravel()[order], "_", ms=9, mew=2, color="#d62728", label="q(w)")
        ax.set_title(f"b = {b:g}: {len(torch.unique(q))} distinct values, "
                     f"mean |q - w| = {error:.3g}", fontsize=8)
        ax.set_xlabel("weights of the channel, sorted")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- training


def _epoch_of_step(history: Sequence[dict], step: float) -> float:
    """Fractional epoch of an optimizer step, from the (step, epoch) pairs of the history."""
    steps = [0] + [row["step"] for row in history]
    epochs = [0] + [row["epoch"] for row in history]
    return float(np.interp(step, steps, epochs))


CURVES = (("val_accuracy", "validation accuracy", "linear"),
          ("Q", "Q (bits per weight)", "linear"),
          ("storage_bytes", "storage (bytes)", "log"),
          ("monitor_loss", "monitor loss (held-out critical examples)", "linear"))


def training_curves(runs: Mapping[str, dict], *, curves: Sequence[tuple[str, str, str]]
                    = CURVES) -> Figure:
    """Per-epoch curves of several runs (label -> ``history.json`` contents).

    Feedback events are marked as dotted vertical lines in the run's colour; curves a run
    does not log (Q of a float run) are absent from that panel, and panels no run logs
    (preservation accuracy without SGSC) are left out.
    """
    logged = {k for run in runs.values() for row in run["history"] for k, v in row.items()
              if v is not None}
    curves = [c for c in curves if c[0] in logged] or list(curves[:1])
    fig = Figure(figsize=(4.0 * len(curves), 3.2))
    axes = fig.subplots(1, len(curves), squeeze=False).ravel()
    for label, run in runs.items():
        history = run["history"]
        method = label.split()[0]
        color = method_color(method)
        epochs = [row["epoch"] for row in history]
        for ax, (key, _, _) in zip(axes, curves, strict=True):
            values = [row.get(key) for row in history]
            if any(v is not None for v in values):
                ax.plot(epochs, [np.nan if v is None else v for v in values], "o-", ms=3,
                        color=color, label=label)
            for event in run.get("feedback", []):
                ax.axvline(_epoch_of_step(history, event["step"]), color=color, ls=":",
                           lw=1)
            selected = run.get("selected_epoch")
            if selected:
                row = history[selected - 1]
                if row.get(key) is not None:
                    ax.plot([selected], [row[key]], "*", ms=10, color=color)
    last = max((row["epoch"] for run in runs.values() for row in run["history"]), default=1)
    for ax, (_, title, scale) in zip(axes, curves, strict=True):
        ax.set_xlim(0.5, last + 0.5)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_yscale(scale)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("training curves (★ selected epoch, dotted lines: feedback events)",
                 fontsize=9)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- results


def pareto(rows: Sequence[dict], *, x: str = "storage_bytes", y: str = "test_acc",
           xlabel: str = "storage (bytes, log scale)", ylabel: str = "test accuracy") -> Figure:
    """Each run as a dot; per method the mean with ±1 std error bars (log x)."""
    fig = Figure(figsize=(5.5, 4.0))
    ax = fig.subplots()
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for method in methods:
        members = [r for r in rows if r["method"] == method and r.get(y) is not None]
        xs = [float(r[x]) for r in members]
        ys = [float(r[y]) for r in members]
        color = method_color(method)
        ax.scatter(xs, ys, s=14, alpha=0.5, color=color)
        (mx, sx), (my, sy) = mean_std(xs), mean_std(ys)
        if mx is not None:
            ax.errorbar([mx], [my], xerr=[sx], yerr=[sy], fmt="o", ms=7, capsize=3,
                        color=color, label=f"{method} (n={len(members)})")
    _size_axes(ax, xlabel, ylabel)
    fig.tight_layout()
    return fig


def _size_axes(ax: Any, xlabel: str, ylabel: str) -> None:
    """Log-size x axis with plain byte counts as labels, grid, legend to the right."""
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))


def frontier(rows: Sequence[dict], *, lines: Sequence[str] | None = None,
             zoom: Sequence[str] = ("sc", "sgsc"), x: str = "storage_bytes",
             y: str = "test_acc", by: str = "gamma",
             xlabel: str = "file size (bytes, log scale)", ylabel: str = "test accuracy",
             floor: float | str | None = None) -> Figure:
    """Accuracy against size: every run a small dot, each (method, ``by``) point the mean
    with ±1 std over seeds in both directions, and a line through a method's points by
    size -- for the methods of ``lines``, or (``None``) every method with points at two
    or more values of ``by``; the other methods as points only.  ``floor`` zooms the y
    axis to where the methods differ: points below it are drawn at the edge as open
    triangles (with their value written beside them), so they cannot squash the axis.
    ``floor="auto"``: just below the lowest run of the ``zoom`` methods."""
    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.subplots()
    measured = [r for r in rows if r.get(y) is not None]
    methods = list(dict.fromkeys(r["method"] for r in measured))
    if lines is None:
        lines = [m for m in methods if len({r.get(by) for r in measured if r["method"] == m}) > 1]
    if floor == "auto":
        lowest = [float(r[y]) for r in measured if r["method"] in zoom]
        floor = min(lowest) - 0.1 * (max(lowest) - min(lowest) or 0.01) if lowest else None
    elif floor is not None and not isinstance(floor, (int, float)):
        raise ValueError(f"floor must be a number, 'auto' or None, not {floor!r}")
    for method in methods:
        color = method_color(method)
        mine = [r for r in measured if r["method"] == method]
        groups: dict[Any, list[dict]] = {}
        for r in mine:
            groups.setdefault(r.get(by), []).append(r)
        points = []
        for members in groups.values():
            (mx, sx), (my, sy) = (mean_std([float(r[x]) for r in members]),
                                  mean_std([float(r[y]) for r in members]))
            points.append((mx, my, sx or 0.0, sy or 0.0))
        points.sort()
        shown = [p for p in points if floor is None or p[1] >= floor]
        low = [p for p in points if floor is not None and p[1] < floor]
        dots = [(float(r[x]), float(r[y])) for r in mine if floor is None or r[y] >= floor]
        if dots:
            ax.scatter(*zip(*dots, strict=True), s=10, alpha=0.35, color=color)
        if shown:
            ax.errorbar([p[0] for p in shown], [p[1] for p in shown],
                        xerr=[p[2] for p in shown], yerr=[p[3] for p in shown],
                        fmt="o-" if method in lines else "s", ms=5, capsize=2, lw=1.2,
                        color=color, label=f"{method} ({len(mine)} runs)")
        for px, py, _, _ in low:
            ax.plot([px], [floor], "v", mfc="none", ms=8, color=color)
            ax.annotate(f"{method} {py:.3f}", (px, floor), textcoords="offset points",
                        xytext=(4, 4), fontsize=7, color=color)
    if floor is not None:
        ax.set_ylim(bottom=floor - 0.002)
    _size_axes(ax, xlabel, ylabel)
    fig.tight_layout()
    return fig


def bit_depth_heatmaps(layers_by_run: Mapping[str, dict[str, dict[str, Any]]]) -> Figure:
    """Per run: a layer x channel map of stored bit depths (pruned channels shown as 0,
    after the stored ones), from :func:`sgsc.experiments.store.stored_bit_depths`."""
    n = len(layers_by_run)
    fig = Figure(figsize=(7.5, 0.6 + 1.7 * n), layout="constrained")
    axes = fig.subplots(n, 1, squeeze=False).ravel()
    top = max((int(layer["bits"].max()) for layers in layers_by_run.values()
               for layer in layers.values() if len(layer["bits"])), default=8)
    image = None
    for ax, (label, layers) in zip(axes, layers_by_run.items(), strict=True):
        width = max(layer["channels"] for layer in layers.values())
        grid = np.full((len(layers), width), np.nan)
        for i, layer in enumerate(layers.values()):
            bits = layer["bits"]
            grid[i, : len(bits)] = bits
            grid[i, len(bits): layer["channels"]] = 0
        image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=top,
                          interpolation="nearest")
        ax.set_yticks(range(len(layers)), list(layers), fontsize=7)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("channel (stored, then pruned = 0)", fontsize=8)
    if image is not None:
        fig.colorbar(image, ax=list(axes), label="bits per weight")
    return fig


def per_class(table: Sequence[dict], *, classes: Sequence[str] | None = None) -> Figure:
    """Grouped bars: accuracy per class (``class_0`` ... columns) for each table row
    (labelled by its ``method``)."""
    columns = [k for k in table[0] if k.startswith("class_")]
    labels = classes or [c.removeprefix("class_") for c in columns]
    fig = Figure(figsize=(8.0, 3.4))
    ax = fig.subplots()
    width = 0.8 / len(table)
    for i, row in enumerate(table):
        positions = np.arange(len(columns)) + (i - (len(table) - 1) / 2) * width
        ax.bar(positions, [row[c] for c in columns], width=width, label=row["method"],
               color=method_color(row["method"]))
    low = min(row[c] for row in table for c in columns)
    ax.set_ylim(max(0.0, low - 0.05), 1.0)
    ax.set_xticks(range(len(columns)), labels)
    ax.set_xlabel("class")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=8, ncols=min(len(table), 6), loc="upper center",
              bbox_to_anchor=(0.5, -0.2))
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- studies


def sweep_axes(rows: Sequence[dict], *, y: str = "test_acc", ylabel: str = "test accuracy"
               ) -> Figure:
    """One panel per swept setting (rows of :func:`sgsc.experiments.studies.sweep_rows`): per
    method, the mean of ``y`` over seeds with ±1 std, against the setting's value (log x)."""
    axes_names = list(dict.fromkeys(r["axis"] for r in rows))
    fig = Figure(figsize=(3.2 * max(1, len(axes_names)), 3.2))
    panels = np.atleast_1d(fig.subplots(1, max(1, len(axes_names)), sharey=True))
    for ax, axis in zip(panels, axes_names, strict=False):
        members = [r for r in rows if r["axis"] == axis and r.get(y) is not None]
        for method in dict.fromkeys(r["method"] for r in members):
            values = sorted({float(r["value"]) for r in members if r["method"] == method})
            stats = [mean_std([float(r[y]) for r in members
                               if r["method"] == method and float(r["value"]) == v])
                     for v in values]
            ax.errorbar(values, [m for m, _ in stats], yerr=[s for _, s in stats], fmt="o-",
                        ms=4, capsize=3, color=method_color(method), label=method)
        ax.set_xscale("log", base=2)
        ticks = sorted({float(r["value"]) for r in members})
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks], fontsize=8)
        ax.minorticks_off()
        ax.set_xlabel(axis)
        ax.grid(alpha=0.3)
    panels[0].set_ylabel(ylabel)
    handles = {}
    for ax in panels:  # every method once, whichever panels it appears in
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    fig.tight_layout()
    fig.legend(handles.values(), handles.keys(), fontsize=8, loc="upper left",
               bbox_to_anchor=(1.0, 0.95))
    return fig


def search_race(curves: Mapping[str, Sequence[Sequence[dict]]],
                points: Mapping[str, Sequence[dict]] | None = None) -> Figure:
    """Best objective so far against trials (mean ± std over seeds) and against training
    seconds (one line per seed), per sampler (curves of
    :func:`sgsc.experiments.studies.best_so_far`).
    ``points``: other methods' runs as single markers (``trial`` / ``train_s`` /
    ``value`` each), e.g. one self-compression run."""
    fig = Figure(figsize=(10.0, 3.8))
    by_trial, by_time = fig.subplots(1, 2, sharey=True)
    for sampler, seeds in curves.items():
        color = method_color(sampler)
        n = min(len(c) for c in seeds)
        values = np.array([[p["best_value"] for p in c[:n]] for c in seeds])
        trials = np.arange(1, n + 1)
        mean, std = values.mean(axis=0), values.std(axis=0)
        by_trial.plot(trials, mean, color=color, label=f"{sampler} (n={len(seeds)})")
        by_trial.fill_between(trials, mean - std, mean + std, color=color, alpha=0.2)
        for curve in seeds:
            by_time.plot([p["train_s"] for p in curve], [p["best_value"] for p in curve],
                         color=color, alpha=0.7, drawstyle="steps-post")
    for method, marks in (points or {}).items():
        color = method_color(method)
        by_trial.scatter([m["trial"] for m in marks], [m["value"] for m in marks], marker="*",
                         s=90, color=color, label=method, zorder=3)
        by_time.scatter([m["train_s"] for m in marks], [m["value"] for m in marks],
                        marker="*", s=90, color=color, zorder=3)
    by_trial.set_xlabel("trials")
    by_trial.set_ylabel("best objective so far")
    by_time.set_xlabel("training time (s)")
    for ax in (by_trial, by_time):
        ax.grid(alpha=0.3)
    by_trial.legend(fontsize=8)
    fig.tight_layout()
    return fig


def regime_answer(endpoints: Sequence[dict], train_rows: Mapping[str, int]) -> Figure:
    """The study's answer: sgsc minus sc test accuracy at equal size (points), with its
    95 % interval over seeds, against the regime's training images (log x); the shaded
    band is the equivalence margin.  A regime without a mean (not finished) is named at
    its place on the axis, with no point."""
    fig = Figure(figsize=(6.4, 3.8))
    ax = fig.subplots()
    margin = max((e.get("margin") or 0.0 for e in endpoints), default=0.0) * 100
    ax.axhspan(-margin, margin, color="#dddddd", label=f"±{margin:g} points (equivalence)")
    ax.axhline(0.0, color="#444444", lw=0.8)
    placed = sorted(((train_rows[e["regime"]], e) for e in endpoints
                     if e["regime"] in train_rows), key=lambda item: item[0])
    xs = [x for x, _ in placed]
    for i, (x, e) in enumerate(placed):
        # labels go right of the point, but left of the last one and of one whose right
        # neighbour is close on the log axis (1,000 and 1,257 images)
        left = i == len(xs) - 1 or xs[i + 1] < 1.5 * x
        side = {"ha": "right", "xytext": (-6, 0)} if left else {"ha": "left", "xytext": (6, 0)}
        if e.get("mean") is None:
            ax.annotate(f"{e['regime']}\n{e.get('verdict') or 'no mean'}", (x, 0.0),
                        textcoords="offset points", va="center", fontsize=7,
                        color="#777777", **side)
            ax.plot([x], [0.0], marker="x", color="#777777", ls="none")
            continue
        low = (e["ci_low"] if e["ci_low"] is not None else e["mean"]) * 100
        high = (e["ci_high"] if e["ci_high"] is not None else e["mean"]) * 100
        ax.errorbar([x], [e["mean"] * 100], yerr=[[e["mean"] * 100 - low],
                                                  [high - e["mean"] * 100]],
                    fmt="o", color=method_color("sgsc"), capsize=4)
        ax.annotate(f"{e['regime']}\n{e['verdict']}", (x, e["mean"] * 100),
                    textcoords="offset points", va="center", fontsize=7, **side)
    ax.set_xscale("log")
    if xs:  # ticks at the regimes' sizes, written out (close ones on two lines)
        ax.set_xlim(min(xs) / 2, max(xs) * 2)
        ax.set_xticks(xs, [("\n" if i and x < 1.5 * xs[i - 1] else "") + f"{x:,}"
                           for i, x in enumerate(xs)], fontsize=7)
        ax.minorticks_off()
    ax.set_xlabel("training images (log scale)")
    ax.set_ylabel("sgsc − sc test accuracy at equal size\n(percentage points, 95 % CI)")
    ax.legend(loc="lower right", fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def q_against_steps(histories: Mapping[str, dict]) -> Figure:
    """``Q`` (bits per weight) against optimizer steps, one run per regime: whether the
    bit depths settled within the budget."""
    fig = Figure(figsize=(6.4, 3.6))
    ax = fig.subplots()
    for label, run in histories.items():
        rows = [r for r in run["history"] if r.get("Q") is not None]
        ax.plot([r["step"] for r in rows], [r["Q"] for r in rows], "o-", ms=2, label=label)
    ax.set_xlabel("optimizer steps")
    ax.set_ylabel("Q (bits per weight)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def file_frontier(rows: Sequence[dict], target: float | None = None) -> Figure:
    """Test accuracy against file bytes (log x), one line per method, budget and encoding
    (the means over seeds at each gamma): colour by method, line style by encoding, marker
    by budget (circles the shortest); ``target`` as a dashed line.  The legend sits below
    the axes, where it hides no point."""
    fig = Figure(figsize=(7.0, 5.2))
    ax = fig.subplots()
    styles = {"packed": "-", "entropy": (0, (6, 2)), "grid": (0, (2, 1)),
              "grid+entropy": (0, (3, 1, 1, 1, 1, 1)), "narrow": ":", "narrow+entropy": "-."}
    budgets = sorted({r["epochs"] for r in rows}, key=lambda e: (e is None, e or 0))
    markers = dict(zip(budgets, "osD^v", strict=False))
    for (method, epochs, variant) in dict.fromkeys((r["method"], r["epochs"], r["variant"])
                                                   for r in rows):
        points = sorted((r["file_bytes_mean"], r["test_acc_mean"]) for r in rows
                        if (r["method"], r["epochs"], r["variant"]) == (method, epochs,
                                                                         variant))
        ax.plot(*zip(*points, strict=True), marker=markers.get(epochs, "o"), ms=4,
                ls=styles.get(variant, "-"), color=method_color(method),
                label=f"{method}, {epochs} epochs, {variant}")
    if target is not None:
        ax.axhline(target, color="#444444", ls="--", lw=0.8)
    _size_axes(ax, "file bytes (log scale)", "test accuracy (mean over seeds)")
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.16),
              frameon=False)
    fig.tight_layout()
    return fig
