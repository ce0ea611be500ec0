"""The notebooks: committed clean, parameterized, and runnable end to end (quick profile).

Each notebook is executed once with papermill in its ``quick`` profile (the 8x8 digits and
a few epochs; well under a minute each) into a temporary folder; the figures and metrics
it promises must exist, and the report built from them must pass the same number check as
``test_report``.  Invalid parameters must stop a notebook before any training starts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest
from test_report import check_index

from sgsc.experiments import data
from sgsc.reporting import compare, report

papermill = pytest.importorskip("papermill")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
# every parameter run_all.sh passes (papermill warns of, and ignores, an unknown one)
REQUIRED_PARAMETERS = ("profile", "device", "force", "threads", "out_dir", "report_dir")
# What each notebook must leave in the report folder (figures as PNG and SVG).
EXPECTED = {
    "00_tutorial": {"figures": ("quantizer", "layer", "training", "preservation"),
                    "metrics": ("results", "run")},
    "01_mnist_cnn": {"figures": ("pareto", "frontier", "training", "bit_depths",
                                 "preservation", "per_class"),
                     "metrics": ("runs", "summary", "search_runs", "study_runs", "ablation",
                                 "matched_size", "tuning", "bit_depths", "per_class", "run")},
    "02_char_transformer": {"figures": ("pareto", "frontier", "training"),
                            "metrics": ("runs", "summary", "frontier_runs", "matched_size",
                                        "samples", "run")},
    "03_sweeps": {"figures": ("accuracy", "storage"),
                  "metrics": ("runs", "summary", "spread_test_acc", "spread_epoch_swing",
                              "stability", "variance", "run")},
    "04_cbtpe_search": {"figures": ("race",),
                        "metrics": ("runs", "summary", "race", "race_summary", "run")},
    "05_paper_claims": {"figures": (), "metrics": ("claims", "size_at_target", "targets",
                                                    "run")},
    "06_regimes": {"figures": ("answer", "q_steps"),
                   "metrics": ("tuning", "all_runs", "runs", "endpoint", "secondary",
                               "run")},
    "07_file_budget": {"figures": ("frontier",),
                       "metrics": ("runs", "variants", "smallest", "best", "coder", "sections",
                                   "layers", "run")},
    "08_operating_point": {"figures": ("accuracy", "text_loss"),
                           "metrics": ("runs", "summary", "text_runs", "text_summary",
                                       "missing", "run")},
}
NEEDS_DATA = {"02_char_transformer": "names", "08_operating_point": "names"}


def _notebooks() -> list[str]:
    return sorted(p.stem for p in NOTEBOOKS.glob("[0-9]*.ipynb"))


def _missing_data(name: str) -> str | None:
    """Why a notebook cannot run here (its data set is not available), or None."""
    dataset = NEEDS_DATA.get(name)
    if dataset is None:
        return None
    root = os.environ.get(data.DATA_DIR_ENV)
    files = data.FILES[dataset]
    if root and all(data.locate(f, Path(root)) is not None for f in files):
        return None
    return f"{dataset} data not found (set {data.DATA_DIR_ENV})"


def _execute(name: str, output: Path, **parameters) -> None:
    papermill.execute_notebook(str(NOTEBOOKS / f"{name}.ipynb"), str(output),
                               parameters=parameters, cwd=str(NOTEBOOKS),
                               kernel_name="python3", progress_bar=False, log_output=False)


# ----------------------------------------------------------------------------- as committed


@pytest.mark.parametrize("name", _notebooks())
def test_notebook_is_committed_without_outputs_and_is_parameterized(name):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), \
        f"{name} has outputs: clear them (jupyter nbconvert --clear-output --inplace)"
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name} needs exactly one cell tagged 'parameters'"
    # the install cell first (it does nothing where sgsc is installed), then the parameters
    assert 'find_spec("sgsc") is None' in code[0].source and "pip" in code[0].source
    assert code.index(tagged[0]) == 1, "the parameters cell must come before any other code"
    for parameter in REQUIRED_PARAMETERS:
        assert f"\n{parameter} = " in f"\n{tagged[0].source}", f"{name} lacks {parameter}"
    assert name in EXPECTED, f"add {name} to EXPECTED in this test"
    # nbformat 4.5 cells carry ids (a missing one will be an error in later nbformat;
    # nbformat.read fills them in, so the file itself is read)
    raw = json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())
    assert all(c.get("id") for c in raw["cells"]), f"{name} has cells without an id"


@pytest.mark.parametrize("name", _notebooks())
def test_notebook_opens_with_launch_links_to_the_projects_repository(name):
    import tomllib

    repository = tomllib.loads((NOTEBOOKS.parent / "pyproject.toml").read_text())[
        "project"]["urls"]["Repository"]
    slug = repository.removeprefix("https://github.com/")
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    first = nb.cells[0].source
    assert f"colab.research.google.com/github/{slug}/blob/main/notebooks/{name}.ipynb" in first
    assert f"mybinder.org/v2/gh/{slug}/HEAD?labpath=notebooks%2F{name}.ipynb" in first
    install = next(c for c in nb.cells if c.cell_type == "code").source
    assert f"git+{repository}" in install


# ----------------------------------------------------------------------------- executed


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[Path, dict[str, str | None]]:
    """Every notebook executed in the quick profile into one report folder.

    Returns the folder and, per notebook, None (ran) or why it was skipped.
    """
    root = tmp_path_factory.mktemp("notebooks")
    report_dir = root / "reports" / "quick"
    report_dir.mkdir(parents=True)
    skipped: dict[str, str | None] = {}
    for name in _notebooks():
        skipped[name] = _missing_data(name)
        if skipped[name] is None:
            _execute(name, report_dir / f"{name}.ipynb", profile="quick",
                     out_dir=str(root / "runs"), report_dir=str(report_dir))
    return report_dir, skipped


@pytest.mark.slow
@pytest.mark.parametrize("name", _notebooks())
def test_quick_profile_writes_figures_and_metrics(quick, name):
    report_dir, skipped = quick
    if skipped[name]:
        pytest.skip(skipped[name])
    for figure in EXPECTED[name]["figures"]:
        for suffix in ("png", "svg"):
            path = report_dir / "figures" / f"{name}_{figure}.{suffix}"
            assert path.stat().st_size > 0, f"missing {path.name}"
    for table in EXPECTED[name]["metrics"]:
        assert (report_dir / "metrics" / f"{name}__{table}.json").exists(), table
    info = report.load_table(report_dir, f"{name}__run")
    assert info["parameters"]["profile"] == "quick"
    executed = nbformat.read(report_dir / f"{name}.ipynb", as_version=4)
    errors = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors


@pytest.mark.slow
def test_the_tutorial_checks_its_three_exercises(quick):
    report_dir, _ = quick
    executed = nbformat.read(report_dir / "00_tutorial.ipynb", as_version=4)
    checks = {c.id: "".join(o.get("text", "") for o in c.outputs)
              for c in executed.cells if c.cell_type == "code" and c.id.startswith("exercise")}
    assert sorted(checks) == ["exercise-1", "exercise-2", "exercise-3"]
    for number in (1, 2, 3):
        assert f"exercise {number}: not answered yet" in checks[f"exercise-{number}"]


@pytest.mark.slow
def test_report_of_the_quick_profile(quick):
    report_dir, skipped = quick
    index = report.build_report(report_dir, "quick")
    assert check_index(index) == []
    text = index.read_text()
    for name in _notebooks():  # a notebook skipped for lack of data has no section
        assert (f'id="{name}"' in text) == (skipped[name] is None), name


@pytest.mark.slow
def test_every_compressed_model_a_notebook_trained_is_kept_as_its_file(quick):
    """Each run a notebook's runs tables name that left a model file (every method but the
    float) is kept in the report's models/ as that very file (byte for byte: a run of the
    same settings another study trained never stands in for it), and the kept files
    verify against the report."""
    from sgsc.experiments import store

    report_dir, skipped = quick
    manifest = store.read_manifest(report_dir)
    trained: dict[str, list[tuple[Path, str]]] = {}
    for table in sorted((report_dir / "metrics").glob("*runs.json")):
        for row in json.loads(table.read_text()):
            folder = NOTEBOOKS / row["run_dir"] if row.get("run_dir") else None
            if folder and row.get("method") != "float" and (folder / store.PACKED).exists():
                trained.setdefault(table.name.split("__")[0], []).append(
                    (folder, store.kept_path(row)))
    ran = {name for name, why in skipped.items() if why is None}
    assert {"01_mnist_cnn", "03_sweeps", "04_cbtpe_search", "06_regimes", "07_file_budget",
            "08_operating_point"} & ran <= set(trained)
    for name, runs in trained.items():
        for folder, kept in runs:
            assert kept in manifest, (name, kept)
            assert (report_dir / store.MODELS / kept).read_bytes() == \
                (folder / store.PACKED).read_bytes(), (name, kept)
    # the notebooks measured on their device and threads: a borderline logit may flip
    rows = list(store.verify_models(report_dir, sample=12, seed=1, tolerance=2))
    assert rows and all(row["ok"] for row in rows), [r for r in rows if not r["ok"]]


@pytest.mark.slow
def test_an_unfinished_study_is_listed_not_computed_and_nothing_trains(quick, tmp_path):
    """06 with train_missing=False on the quick study less one sgsc run: the regime is
    listed as not finished with exactly that run, nothing is computed from it, and the
    run is still missing afterwards."""
    import shutil

    report_dir, _ = quick
    runs = tmp_path / "runs"
    shutil.copytree(report_dir.parent.parent / "runs", runs)
    source = report_dir.parent.parent / "runs"
    study_run = next(Path(r["run_dir"]) for r in report.load_table(report_dir, "06_regimes__runs")
                     if r["method"] == "sgsc" and r["seed"] == 1)
    gone = runs / study_run.resolve().relative_to(source.resolve()) / "result.json"
    gone.unlink()
    out = tmp_path / "report"
    out.mkdir()
    _execute("06_regimes", out / "06_regimes.ipynb", profile="quick", out_dir=str(runs),
             report_dir=str(out), train_missing=False)
    missing = report.load_table(out, "06_regimes__missing")
    assert [(m["regime"], m["method"], m["seed"]) for m in missing] == [("digits", "sgsc", 1)]
    [row] = report.load_table(out, "06_regimes__endpoint")
    assert row["verdict"] == compare.NOT_FINISHED and row["mean"] is None
    assert report.load_table(out, "06_regimes__runs") == []
    assert not gone.exists()  # reopening only: nothing trained it


@pytest.mark.slow
@pytest.mark.parametrize("name", _notebooks())
def test_invalid_parameters_stop_before_any_training(tmp_path, name):
    runs = tmp_path / "runs"
    with pytest.raises(papermill.PapermillExecutionError) as err:
        _execute(name, tmp_path / "out.ipynb", profile="papr", device="gpu",
                 out_dir=str(runs), report_dir=str(tmp_path / "report"))
    message = str(err.value)
    assert "profile must be one of 'quick', 'paper', 'full', not 'papr'" in message
    assert "device must be one of 'auto', 'cpu', 'cuda', not 'gpu'" in message
    assert not runs.exists(), "a run folder was created before the parameters were checked"


# ----------------------------------------------------------------------------- helpers


def test_figures_are_saved_as_png_and_svg(tmp_path):
    from matplotlib.figure import Figure

    from sgsc.reporting import plots

    history = {"history": [{"epoch": 1, "step": 10, "val_accuracy": 0.9, "Q": 7.0,
                            "storage_bytes": 900},
                           {"epoch": 2, "step": 20, "val_accuracy": 0.92, "Q": 6.0,
                            "storage_bytes": 800}],
               "selected_epoch": 2, "feedback_events": [{"step": 15}]}
    rows = [{"method": "float", "storage_bytes": 4000, "test_acc": 0.9},
            {"method": "sc", "storage_bytes": 900, "test_acc": 0.91},
            {"method": "sc", "storage_bytes": 800, "test_acc": 0.89}]
    figures = {
        "quantizer": plots.quantizer_curves([(8, -7), (2, -1), (0, 0)]),
        "curves": plots.training_curves({"sc s0": history}),
        "pareto": plots.pareto(rows),
        "frontier": plots.frontier(rows + [{"method": "uniform-ptq-2", "storage_bytes": 500,
                                            "test_acc": 0.5}], floor=0.85),
        "per_class": plots.per_class([{"method": "sc", "class_0": 0.9, "class_1": 1.0}]),
    }
    for name, fig in figures.items():
        assert isinstance(fig, Figure)
        png, svg = plots.save_figure(fig, tmp_path, name)
        assert png.read_bytes()[:4] == b"\x89PNG" and b"<svg" in svg.read_bytes()[:400]
    # panels only for what was logged (no preservation accuracy here)
    assert len(figures["curves"].axes) == 3
    # a point far below the zoomed axis is drawn at its edge, not where it squashes the rest
    (ax,) = figures["frontier"].axes
    assert ax.get_ylim()[0] >= 0.84 and any("0.500" in t.get_text() for t in ax.texts)
    # "auto": just below sc's lowest run (0.89), so PTQ-2 at 0.5 sits at the edge
    (ax,) = plots.frontier(rows + [{"method": "uniform-ptq-2", "storage_bytes": 500,
                                     "test_acc": 0.5}], floor="auto").axes
    assert 0.88 < ax.get_ylim()[0] < 0.89 and any("0.500" in t.get_text() for t in ax.texts)
