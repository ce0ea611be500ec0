"""Figures: what each one draws, read back from the matplotlib artists."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.lines import Line2D

from sgsc.reporting import plots


def _runs(method: str, points: dict[float, tuple[float, float]], seeds=(0, 1)) -> list[dict]:
    """Rows of ``method`` at gamma -> (size, accuracy), each seed a little apart."""
    return [{"method": method, "gamma": g, "seed": s, "storage_bytes": size * (1 + 0.01 * s),
             "test_acc": acc + 0.001 * s} for g, (size, acc) in points.items() for s in seeds]


def _traces(fig) -> dict[str, Line2D]:
    """The line of each errorbar series, by its method (the label's first word)."""
    ax = fig.axes[0]
    handles, labels = ax.get_legend_handles_labels()
    return {label.split()[0]: handle.lines[0] for handle, label in
            zip(handles, labels, strict=True)}


def test_frontier_joins_the_points_of_each_method_with_several_and_zooms_to_sc_and_sgsc():
    rows = (_runs("sc", {0.05: (6000, 0.991), 0.4: (2200, 0.986)})
            + _runs("sgsc", {0.05: (12000, 0.988)})
            + _runs("diffq", {0.05: (9000, 0.985), 0.15: (5000, 0.975)})
            + _runs("uniform-ptq-2", {None: (3000, 0.62)}))
    fig = plots.frontier(rows, floor="auto")
    traces = _traces(fig)
    assert set(traces) == {"sc", "sgsc", "diffq"}  # ptq-2 is below the floor: no series
    assert traces["sc"].get_linestyle() == "-" and traces["diffq"].get_linestyle() == "-"
    assert traces["sgsc"].get_linestyle() == "None"  # one gamma: a point, not a line
    # the points are means over seeds, in order of size
    sizes, accuracies = (np.asarray(d, float) for d in traces["sc"].get_data())
    np.testing.assert_allclose(sizes, [2200 * 1.005, 6000 * 1.005])
    np.testing.assert_allclose(accuracies, [0.9865, 0.9915])
    # the auto floor sits just below sc's and sgsc's lowest run (0.986), above diffq's
    bottom = fig.axes[0].get_ylim()[0]
    assert 0.983 < bottom < 0.986
    notes = [t.get_text() for t in fig.axes[0].texts]
    assert sorted(notes) == ["diffq 0.976", "uniform-ptq-2 0.621"]  # means over seeds


def test_frontier_lines_can_be_chosen_and_floor_is_checked():
    rows = _runs("sc", {0.05: (6000, 0.99), 0.4: (2000, 0.98)}) + _runs(
        "diffq", {0.05: (9000, 0.98), 0.15: (5000, 0.97)})
    traces = _traces(plots.frontier(rows, lines=("sc",)))
    assert traces["diffq"].get_linestyle() == "None" and traces["sc"].get_linestyle() == "-"
    assert not plots.frontier(rows).axes[0].texts  # no floor: nothing moved to an edge
    with pytest.raises(ValueError, match="floor must be a number, 'auto' or None"):
        plots.frontier(rows, floor="low")


def test_pareto_draws_one_mean_per_method_with_the_seed_spread():
    rows = (_runs("sc", {0.05: (6000, 0.99)}, seeds=(0, 1, 2))
            + _runs("float", {None: (70000, 0.992)}))
    traces = _traces(plots.pareto(rows))
    assert set(traces) == {"sc", "float"}
    # the mean of 0.990, 0.991 and 0.992
    np.testing.assert_allclose(np.asarray(traces["sc"].get_ydata(), float), [0.991])


def test_method_colors_are_fixed_and_save_figure_writes_png_and_svg(tmp_path):
    from sgsc.experiments.defaults import METHODS

    # the frontier figure shows every method but float: no two alike
    colors = {m: plots.method_color(m) for m in METHODS if m != "float"}
    assert len(set(colors.values())) == len(colors), colors
    assert plots.method_color("my-method") == plots.method_color("my-method")
    paths = plots.save_figure(plots.pareto(_runs("sc", {0.05: (6000, 0.99)})), tmp_path, "p")
    assert [p.name for p in paths] == ["p.png", "p.svg"]
    assert paths[0].read_bytes()[:4] == b"\x89PNG" and b"<svg" in paths[1].read_bytes()[:500]


def test_per_class_draws_a_bar_per_class_and_method():
    table = [{"method": "sc", **{f"class_{i}": 0.99 - 0.001 * i for i in range(10)}},
             {"method": "sgsc", **{f"class_{i}": 0.98 for i in range(10)}}]
    ax = plots.per_class(table).axes[0]
    heights = sorted(round(p.get_height(), 4) for p in ax.patches)
    assert len(ax.patches) == 20 and heights[0] == 0.98 and heights[-1] == 0.99


def test_regime_answer_draws_each_regimes_interval_at_its_training_images():
    endpoints = [
        {"regime": "digits", "mean": 0.02, "ci_low": 0.01, "ci_high": 0.03, "margin": 0.002,
         "verdict": "sgsc better"},
        {"regime": "mnist", "mean": -0.005, "ci_low": -0.008, "ci_high": -0.002,
         "margin": 0.002, "verdict": "sgsc worse"},
        {"regime": "mnist-1k", "mean": None, "ci_low": None, "ci_high": None,
         "margin": 0.002, "verdict": "not enough matched seeds"}]
    fig = plots.regime_answer(endpoints, {"digits": 1257, "mnist": 55000, "mnist-1k": 1000})
    ax = fig.axes[0]
    points = [line for line in ax.get_lines() if line.get_marker() == "o"]
    assert [(line.get_xdata()[0], line.get_ydata()[0]) for line in points] == [
        (1257, pytest.approx(2.0)), (55000, pytest.approx(-0.5))]  # in points; no mean: none
    assert ax.get_xscale() == "log"
    band = ax.patches[0]  # the equivalence margin, in points
    assert (band.get_y(), band.get_y() + band.get_height()) == (pytest.approx(-0.2),
                                                                 pytest.approx(0.2))
    # every regime named, the one without a mean at its place with its verdict and no point
    assert sorted(t.get_text() for t in ax.texts) == [
        "digits\nsgsc better", "mnist\nsgsc worse", "mnist-1k\nnot enough matched seeds"]
    assert list(ax.get_xticks()) == [1000, 1257, 55000]


def test_q_against_steps_draws_one_line_per_run_without_missing_points():
    runs = {"digits": {"history": [{"step": 10, "Q": 8.0}, {"step": 20, "Q": None},
                                   {"step": 30, "Q": 2.0}]},
            "mnist": {"history": [{"step": 100, "Q": 4.0}]}}
    lines = plots.q_against_steps(runs).axes[0].get_lines()
    assert [(list(line.get_xdata()), list(line.get_ydata())) for line in lines] == [
        ([10, 30], [8.0, 2.0]), ([100], [4.0])]


def test_file_frontier_draws_a_line_per_method_budget_and_encoding():
    rows = [{"method": m, "epochs": 6, "variant": v, "file_bytes_mean": size * k,
             "test_acc_mean": acc} for m in ("sc", "sc-rate") for v, k in
            (("packed", 1.0), ("entropy", 0.8)) for size, acc in ((3000, 0.99), (2000, 0.98))]
    ax = plots.file_frontier(rows, target=0.99).axes[0]
    lines = [line for line in ax.get_lines() if line.get_label()[0] != "_"]
    assert len(lines) == 4
    first = lines[0]
    assert list(first.get_xdata()) == [2000, 3000] and list(first.get_ydata()) == [0.98, 0.99]
    assert any(list(line.get_ydata()) == [0.99, 0.99] for line in ax.get_lines())  # target
    by_label = {line.get_label(): line for line in lines}
    assert by_label["sc, 6 epochs, packed"].get_color() != \
        by_label["sc-rate, 6 epochs, packed"].get_color()  # methods told apart by colour
    assert by_label["sc, 6 epochs, packed"].get_linestyle() != \
        by_label["sc, 6 epochs, entropy"].get_linestyle()  # encodings by line style
    longer = plots.file_frontier(rows + [dict(rows[0], epochs=18)]).axes[0]
    assert {line.get_marker() for line in longer.get_lines()} == {"o", "s"}  # budgets
