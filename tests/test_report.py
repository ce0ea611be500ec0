"""sgsc.reporting.report: parameters, metrics files, and an index.html whose numbers are the files'.

The page is checked with an independent HTML parser: every number shown must be a
``<span class="num">`` whose text is the value its ``data-src`` names (file and key), every
string from a metrics file (SHAs, versions, timestamps, claims) a ``<span class="val">``
holding exactly that string, and no number may appear anywhere else in the page's text.
"""

from __future__ import annotations

import csv
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from sgsc.experiments import provenance, regimes, studies
from sgsc.reporting import compare, report

NUMBER = re.compile(r"(?<![\w.])[-+−]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?(?![\w.])")


class _Page(HTMLParser):
    """Numbers with their sources, and the text outside numbers and code."""

    def __init__(self) -> None:
        super().__init__()
        self.numbers: list[tuple[str, str]] = []  # (data-src, text) of span.num
        self.values: list[tuple[str, str]] = []  # (data-src, text) of span.val
        self.loose_text: list[str] = []
        self.links: list[str] = []
        self._stack: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("a", "img"):
            self.links.append(attrs.get("href") or attrs.get("src") or "")
        if tag in ("meta", "img", "br"):
            return
        kind = attrs.get("class") if attrs.get("class") in ("num", "val") else None
        self._stack.append((tag, kind))
        if kind is not None:
            self._target(kind).append((attrs.get("data-src", ""), ""))

    def _target(self, kind: str) -> list[tuple[str, str]]:
        return self.numbers if kind == "num" else self.values

    def handle_endtag(self, tag):
        while self._stack:
            if self._stack.pop()[0] == tag:
                break

    def handle_data(self, data):
        inside = [t for t, _ in self._stack]
        if any(t in ("style", "title", "code") for t in inside):
            return
        kind = self._stack[-1][1] if self._stack else None
        if kind is not None:
            target = self._target(kind)
            src, text = target[-1]
            target[-1] = (src, text + data)
        else:
            self.loose_text.append(data)


def _expected_text(value: object) -> str:
    """What the page must show for a non-numeric value."""
    return value if isinstance(value, str) else json.dumps(value)


def check_index(index: Path) -> list[str]:
    """Problems of a report page: numbers (and strings) that do not match their source,
    numbers without a source, and links to files that do not exist."""
    page = _Page()
    page.feed(index.read_text())
    problems = []
    files: dict[str, object] = {}

    def source(src: str) -> tuple[bool, object]:
        file, _, key = src.partition("#")
        if file not in files:
            path = index.parent / file
            if not path.exists():
                problems.append(f"{src}: no such file")
                return False, None
            files[file] = json.loads(path.read_text())
        try:
            return True, report.lookup(files[file], key)
        except (KeyError, IndexError, ValueError, TypeError):
            problems.append(f"{src}: no such key")
            return False, None

    for src, text in page.numbers:
        found, value = source(src)
        if not found:
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            problems.append(f"{src}: {value!r} is not a number")
        elif report.fmt(value) != text:
            problems.append(f"{src}: page shows {text!r}, file holds {value!r}")
    for src, text in page.values:
        found, value = source(src)
        if found and _expected_text(value) != text:
            problems.append(f"{src}: page shows {text!r}, file holds {value!r}")
    for text in page.loose_text:
        for match in NUMBER.findall(text):
            problems.append(f"number {match!r} without a source in {text.strip()[:60]!r}")
    for link in page.links:
        if link and not link.startswith(("#", "http")) and not (index.parent / link).exists():
            problems.append(f"broken link {link}")
    if not page.numbers:
        problems.append("the page shows no numbers at all")
    return problems


# ----------------------------------------------------------------------------- fixtures


RUNS = [
    {"method": "float", "data": "digits", "seed": 0, "test_acc": 0.95, "storage_bytes": 18424},
    {"method": "float", "data": "digits", "seed": 1, "test_acc": 0.93, "storage_bytes": 18424},
    {"method": "sc", "data": "digits", "seed": 0, "test_acc": 0.96, "storage_bytes": 4883,
     "Q": 4.7628},
    {"method": "sc", "data": "digits", "seed": 1, "test_acc": 0.9, "storage_bytes": 5101,
     "Q": 5.1},
]


def _png() -> bytes:
    """A real (tiny) PNG, as the notebooks' figures are."""
    import io

    from matplotlib.figure import Figure

    buffer = io.BytesIO()
    Figure(figsize=(1, 1)).savefig(buffer, format="png")
    return buffer.getvalue()


@pytest.fixture()
def report_dir(tmp_path: Path) -> Path:
    """A report folder as the notebooks leave it (tables, run info, a figure, timings)."""
    folder = tmp_path / "quick"
    rows = report.compare_to_float(RUNS)
    report.save_table(rows, folder, "01_mnist_cnn__runs")
    report.save_table(report.summarize(rows, "method", ["test_acc", "storage_bytes",
                                                        "compression", "Q"]),
                      folder, "01_mnist_cnn__summary")
    report.save_json({"notebook": "01_mnist_cnn", "parameters": {"seeds": [0, 1], "force": 0},
                      "git": {"sha": "0123abc", "dirty": False},
                      "hardware": {"cpu_count": 2, "torch_threads": 1, "gpu": "none"},
                      "finished": "2025-01-02T03:04:05+00:00",
                      "data": [{"dataset": "digits", "file": "x", "sha256": "ab12",
                                "verified": True}]},
                     folder, "01_mnist_cnn__run")
    report.save_json([{"notebook": "01_mnist_cnn", "wall_s": 12.5, "status": "ok"}],
                     folder, report.TIMINGS)
    (folder / "figures").mkdir()
    (folder / "figures" / "01_mnist_cnn_pareto.png").write_bytes(_png())
    report.save_table([{"method": "sgsc", "gamma": 0.05, "metric": "test_acc", "matched": 2,
                        "difference": 0.001, "ci_low": -0.01, "ci_high": 0.012,
                        "confidence": 0.95, "verdict": "inconclusive"}],
                      folder, "01_mnist_cnn__matched_size")
    (folder / "figures" / "01_mnist_cnn_frontier.png").write_bytes(_png())
    (folder / "01_mnist_cnn.html").write_text("<html></html>")
    return folder


# ----------------------------------------------------------------------------- the page


def test_the_file_sentence_names_a_missing_setting_once_with_its_seeds(tmp_path):
    report.save_table([{"method": "sc", "epochs": 6, "gamma": 0.1, "variant": "packed",
                        "coding": "packed", "precision": "exact", "seeds": 3,
                        "test_acc_mean": 0.991, "file_bytes_mean": 2000.0,
                        "reaches_target": True, "smallest_at_target": True}],
                      tmp_path, "07_file_budget__smallest")
    requests = [regimes.request("mnist", "sc", seed, 0.1, epochs=54) for seed in (0, 1)]
    requests.append(regimes.request("mnist", "sc-rate", 2, 0.4))
    missing = regimes.unfinished(requests, [None] * 3)
    missing.append({"request": "the regime study on mnist: 3 runs"})
    report.save_table(missing, tmp_path, "07_file_budget__missing")
    [files] = report.answer_sentences(tmp_path)
    assert files.endswith(" Not yet among the models compared: mnist sc {'epochs': 54, "
                          "'gamma': 0.1} (seeds 0, 1); mnist sc-rate {'gamma': 0.4} (seed 2); "
                          "the regime study on mnist: 3 runs.")


def test_every_number_on_the_page_comes_from_a_metrics_file(report_dir):
    index = report.build_report(report_dir, "quick")
    assert index == report_dir / "index.html"
    assert check_index(index) == []
    text = index.read_text()
    # The headline: mean ± std of each method, from the summary file.
    summary = report.load_table(report_dir, "01_mnist_cnn__summary")
    sc = next(r for r in summary if r["method"] == "sc")
    assert report.fmt(sc["test_acc_mean"]) == "0.93"
    assert f">{report.fmt(sc['test_acc_mean'])}</span> ± <span" in text
    assert "01_mnist_cnn.html" in text and "figures/01_mnist_cnn_pareto.png" in text


def test_the_checker_catches_a_number_that_differs_from_its_file(report_dir):
    index = report.build_report(report_dir, "quick")
    runs = json.loads((report_dir / "metrics" / "01_mnist_cnn__runs.json").read_text())
    runs[2]["test_acc"] = 0.5
    (report_dir / "metrics" / "01_mnist_cnn__runs.json").write_text(json.dumps(runs))
    problems = check_index(index)
    assert len(problems) == 1 and "#2/test_acc" in problems[0]


def test_the_checker_catches_a_string_that_differs_from_its_file(report_dir):
    index = report.build_report(report_dir, "quick")
    index.write_text(index.read_text().replace(">0123abc<", ">0123abd<"))
    assert check_index(index) == [
        "metrics/01_mnist_cnn__run.json#git/sha: page shows '0123abd', file holds '0123abc'"]


def test_the_checker_catches_a_number_without_a_source(report_dir):
    index = report.build_report(report_dir, "quick")
    index.write_text(index.read_text().replace("<h3>summary", "<h3>summary of 3 seeds"))
    assert any("'3' without a source" in p for p in check_index(index))


def test_provenance_and_timings_are_shown(report_dir):
    text = report.build_report(report_dir, "quick", provenance.build_info()).read_text()
    for verbatim in ("0123abc", "2025-01-02T03:04:05+00:00", "ab12", "torch"):
        assert verbatim in text
    assert 'data-src="metrics/timings.json#0/wall_s">12.5<' in text
    assert 'data-src="metrics/01_mnist_cnn__run.json#hardware/cpu_count">2<' in text
    assert 'data-src="metrics/01_mnist_cnn__run.json#git/sha">0123abc<' in text
    build = json.loads((report_dir / "metrics" / "report.json").read_text())
    assert build["profile"] == "quick" and "sha" in build["git"]


def test_a_report_needs_metrics(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the notebooks"):
        report.build_report(tmp_path / "paper")


def test_cli_builds_the_report(report_dir, capsys):
    from sgsc.cli import main

    assert main(["report", "--profile", "quick", "--reports", str(report_dir.parent)]) == 0
    assert "index.html" in capsys.readouterr().out
    assert main(["report", "--profile", "fast", "--reports", str(report_dir.parent)]) == 2
    assert "profile must be one of 'quick', 'paper', 'full'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- pieces


@pytest.mark.parametrize(("value", "text"), [
    (18424, "18,424"), (0.95123, "0.9512"), (4.7628, "4.763"), (6136.5, "6,136"),
    (1e-5, "1.00e-05"), (None, "–"), (True, "yes"), (0.0, "0"), (-0.04259, "-0.04259"),
])
def test_fmt(value, text):
    assert report.fmt(value) == text


def test_save_table_writes_the_same_table_as_json_and_csv(tmp_path):
    rows = [{"method": "sc", "acc": 0.9, "nan": math.nan, "counts": {"a": 1}},
            {"method": "sgsc", "acc": 0.8, "extra": 3}]
    json_path, csv_path = report.save_table(rows, tmp_path, "t")
    assert json.loads(json_path.read_text()) == [
        {"method": "sc", "acc": 0.9, "nan": None, "counts": {"a": 1}},
        {"method": "sgsc", "acc": 0.8, "extra": 3}]
    with csv_path.open() as handle:
        table = list(csv.DictReader(handle))
    assert [r["method"] for r in table] == ["sc", "sgsc"]
    assert table[0]["counts"] == '{"a": 1}' and table[1]["extra"] == "3"
    assert report.load_table(tmp_path, "t")[1]["extra"] == 3


def test_summarize_and_compare_to_float():
    rows = report.compare_to_float(RUNS)
    sc0 = rows[2]
    assert sc0["compression"] == pytest.approx(18424 / 4883)
    assert sc0["test_acc_drop"] == pytest.approx(0.95 - 0.96)
    summary = {r["method"]: r for r in report.summarize(rows, "method", ["test_acc", "Q"])}
    assert summary["sc"]["n"] == 2
    assert summary["sc"]["test_acc_mean"] == pytest.approx(0.93)
    assert summary["sc"]["test_acc_std"] == pytest.approx(math.sqrt(2 * 0.03**2))
    assert summary["float"]["Q_mean"] is None
    assert report.mean_std([0.5]) == (0.5, 0.0)


def test_the_answer_comes_first(report_dir):
    text = report.build_report(report_dir, "quick").read_text()
    answer = text.index("The answer")
    assert answer < text.index("<h2>contents") < text.index('<h2 id="01_mnist_cnn"')
    assert answer < text.index("figures/01_mnist_cnn_frontier.png") < text.index("<h2>contents")
    assert answer < text.index("01_mnist_cnn__matched_size.json") < text.index("<h2>contents")


def test_the_report_renders_in_a_real_browser(report_dir):
    import shutil

    if shutil.which("chromium") is None:
        pytest.skip("no chromium on this machine (Debian: apt install chromium)")
    report.build_report(report_dir, "quick")
    seen = report.check_in_browser(report_dir)
    assert seen["title"] == "sgsc report (quick)"
    assert seen["images"] == 3 and seen["broken"] == []  # the frontier is in the answer too
    assert seen["headings"][0] == "The answer" and seen["tables"] > 3
    (report_dir / "figures" / "01_mnist_cnn_frontier.png").write_bytes(b"\x89PNG broken")
    broken = report.check_in_browser(report_dir)["broken"]
    assert set(broken) == {"figures/01_mnist_cnn_frontier.png"} and len(broken) == 2


def test_the_committed_paper_report_matches_its_metrics():
    index = Path(__file__).resolve().parents[1] / "reports" / "paper" / "index.html"
    if not index.exists():
        pytest.skip("no committed paper report")
    assert check_index(index) == []


def test_the_report_says_which_cpus_trained_its_runs(report_dir):
    rows = [{"method": "sc", "seed": s, "run_dir": f"runs/digits/sc-s{s}-abc", "threads": 1,
             "trained_on": cpu} for s, cpu in enumerate(["CPU A", "CPU A", "CPU B"])]
    rows += [{"method": "uniform-ptq-4", "seed": 0, "run_dir": "runs/digits/p", "threads": 1,
              "trained_on": ""},
             {"method": "sc", "seed": 9, "run_dir": "runs/digits/old", "threads": 1}]
    report.save_table(rows, report_dir, "03_sweeps__runs")
    report.save_table(rows[:1], report_dir, "03_sweeps__again")  # one run, counted once
    assert report.trained_on_table(report_dir) == [
        {"trained_on": "CPU A", "threads": 1, "runs": 2},
        {"trained_on": "CPU B", "threads": 1, "runs": 1},
        {"trained_on": "nothing trained", "threads": 1, "runs": 1},
        {"trained_on": "not recorded (older result)", "threads": 1, "runs": 1}]
    text = report.build_report(report_dir, "quick").read_text()
    assert "the CPUs that trained these runs" in text
    assert 'data-src="metrics/report_trained_on.json#0/trained_on">CPU A<' in text
    run_info = provenance.run_info("01_mnist_cnn", {}, [])
    assert run_info["hardware"]["cpu"] == provenance.cpu_model()
    assert {"blas", "onednn", "cpu_capability"} <= set(run_info["hardware"])


def test_the_answer_is_said_in_words_from_the_metrics(report_dir):
    """The first screen's sentences come from the matched-size table and are stored, so the
    page cites them like every number; they say which way the interval falls."""
    text = report.build_report(report_dir, "quick").read_text()
    [sentence] = report.answer_sentences(report_dir)
    assert "includes zero at every γ (0.05)" in sentence and "1 value of γ" in sentence
    assert 'data-src="metrics/report_answer.json#sentences/0"' in text
    assert text.index("report_answer.json") < text.index("01_mnist_cnn_frontier.png")
    report.save_table([{"method": "sgsc", "gamma": 0.1, "metric": "test_acc", "matched": 3,
                        "difference": -0.004, "ci_low": -0.006, "ci_high": -0.002,
                        "verdict": "refuted"}], report_dir, "01_mnist_cnn__matched_size")
    [worse] = report.answer_sentences(report_dir)
    assert "less accurate" in worse and "0.40 to 0.40 points lower" in worse
    assert check_index(report.build_report(report_dir, "quick")) == []


def test_the_transformer_sentence_gives_loss_intervals_and_the_unmatched_gammas(report_dir):
    """Loss in nats per character with its interval; a higher loss is sgsc worse; a gamma no
    sc run could match is named, not dropped."""
    rows = [{"method": "sgsc", "gamma": 0.03, "metric": "test_loss", "matched": 0,
             "difference": None, "ci_low": None, "ci_high": None, "verdict": "inconclusive"},
            {"method": "sgsc", "gamma": 0.1, "metric": "test_loss", "matched": 2,
             "difference": 0.009, "ci_low": 0.001, "ci_high": 0.017, "verdict": "refuted"},
            {"method": "sgsc", "gamma": 1.0, "metric": "test_loss", "matched": 2,
             "difference": -0.002, "ci_low": -0.021, "ci_high": 0.017,
             "verdict": "inconclusive"}]
    report.save_table(rows, report_dir, "02_char_transformer__matched_size")
    assert report.answer_sentences(report_dir)[-1] == (
        "On the character transformer (names; 2 seeds, 95 % t-intervals not adjusted across "
        "γ), sgsc's test loss minus sc's in a file of the same size, in nats per character: "
        "+0.009 at γ 0.1 [+0.001, +0.017] (sgsc worse); −0.002 at γ 1 [−0.021, +0.017] "
        "(interval includes zero); at γ 0.03 no sc run of the same size to compare with.")


def test_the_readme_says_what_the_committed_report_says():
    """README's results block is answer_sentences of reports/paper, written by
    ``python -m sgsc report --readme README.md``: never typed in."""
    root = Path(__file__).resolve().parents[1]
    text = (root / "README.md").read_text()
    block = text.split(report.README_START, 1)[1].split(report.README_END, 1)[0]
    assert block.strip().splitlines() == report.answer_sentences(root / "reports" / "paper")
    cost = text.split(report.COST_START, 1)[1].split(report.COST_END, 1)[0]
    assert cost.strip().splitlines() == report.cost_sentence(root / "reports" / "paper")


def test_writing_the_readme_block_needs_its_markers(report_dir, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# x\n")
    with pytest.raises(ValueError, match="no results block"):
        report.write_readme_results(readme, report_dir)
    readme.write_text(f"# x\n{report.README_START}\nold\n{report.README_END}\ntail\n")
    assert report.write_readme_results(readme, report_dir)
    assert not report.write_readme_results(readme, report_dir)  # unchanged the second time
    assert readme.read_text().endswith(f"{report.README_END}\ntail\n")


def test_the_regime_answer_says_where_sgsc_helps_even_where_it_helps_nowhere(report_dir):
    """The headline names the regimes of each verdict, and says "in no data regime" when
    sgsc is better in none; a Holm p just above 0.05 is not printed as 0.05."""
    def row(regime, verdict, holm_p):
        return {"regime": regime, "train_rows": 1000, "seeds": 5, "mean": -0.001,
                "ci_low": -0.002, "ci_high": 0.001, "t_p": holm_p, "holm_p": holm_p,
                "sign_flip_p": 0.0625, "equivalence_p": 0.01, "margin": 0.002,
                "verdict": verdict, "dominated": 0, "sgsc_runs": 20, "per_seed": {}}

    report.save_table([row("digits", "equivalent", 0.5), row("mnist-1k", "inconclusive", 0.0504),
                       row("mnist-4k", "inconclusive", 0.3)], report_dir, "06_regimes__endpoint")
    sentence = report.answer_sentences(report_dir)[0]
    assert sentence.startswith(
        "In a file of the same size, safety-guided self-compression is more accurate than "
        "plain self-compression in no data regime, equivalent within ±0.2 points on digits "
        "and inconclusive on mnist-1k and mnist-4k — ")
    assert "Holm p 0.0504): inconclusive" in sentence


def test_the_regime_answer_and_the_smallest_file_lead_the_sentences(report_dir):
    """With the regime study's endpoint (06) and the file table (07), the first sentence is
    every regime's mean, interval and verdict, the second the smallest files at the
    target -- or that none reaches it; MNIST's 01 sentence gives way (three at most)."""
    report.save_table([
        {"regime": "digits", "train_rows": 1257, "seeds": 5, "mean": 0.021, "ci_low": 0.011,
         "ci_high": 0.031, "t_p": 0.004, "holm_p": 0.012, "sign_flip_p": 0.0625,
         "equivalence_p": 0.9, "margin": 0.002, "verdict": "sgsc better", "dominated": 0,
         "sgsc_runs": 20, "per_seed": {"0": 0.02}},
        {"regime": "mnist", "train_rows": 55000, "seeds": 5, "mean": -0.005,
         "ci_low": -0.007, "ci_high": -0.003, "t_p": 0.001, "holm_p": 0.004,
         "sign_flip_p": 0.0625, "equivalence_p": 0.99, "margin": 0.002,
         "verdict": "sgsc worse", "dominated": 12, "sgsc_runs": 20, "per_seed": {"0": -0.005}},
        {"regime": "mnist-1k", "train_rows": 1000, "seeds": 3, "mean": None, "ci_low": None,
         "ci_high": None, "t_p": None, "holm_p": None, "sign_flip_p": None,
         "equivalence_p": None, "margin": 0.002, "verdict": compare.NOT_FINISHED, "dominated": 0,
         "sgsc_runs": 0, "per_seed": {}}], report_dir, "06_regimes__endpoint")
    smallest = [{"method": "sc-rate", "epochs": 18, "gamma": 0.15, "variant": v,
                 "coding": studies.variant_coding(v), "precision": studies.variant_precision(v),
                 "seeds": 3, "test_acc_mean": acc, "file_bytes_mean": size,
                 "reaches_target": acc >= 0.99, "smallest_at_target": acc >= 0.99}
                for v, size, acc in (("packed", 2890.3, 0.9904), ("entropy", 2411.0, 0.9904),
                                     ("narrow+entropy", 2100.0, 0.9891),
                                     ("grid", 1990.0, 0.9904))]  # packed, but not exact
    report.save_table(smallest, report_dir, "07_file_budget__smallest")
    regime, files = report.answer_sentences(report_dir)
    assert regime.startswith("In a file of the same size, safety-guided self-compression is "
                             "more accurate than plain self-compression on digits and less "
                             "accurate on mnist — sgsc − sc per regime (mean over 5 seeds")
    assert ("digits (1,257 training images, +2.10 points [+1.10, +3.10], Holm p 0.012): "
            "sgsc better") in regime
    assert ("mnist (55,000 training images, −0.50 points [−0.70, −0.30], Holm p 0.004): "
            "sgsc worse") in regime
    assert "mnist-1k (1,000" not in regime and "mean over 5 seeds" in regime
    assert regime.endswith("Not finished yet, so not computed: mnist-1k (Holm's correction "
                           "counts it with p = 1).")
    assert files == ("The smallest MNIST files at 99.0 % test accuracy (mean of 3 seeds): "
                     "2,890 bytes packed (sc-rate, γ 0.15, 18 epochs, 99.04 %) and 2,411 bytes "
                     "entropy coded (sc-rate, γ 0.15, 18 epochs, 99.04 %).")
    smallest[0]["seeds_at_target"] = 2  # the mean reaches the target, one seed does not
    report.save_table(smallest, report_dir, "07_file_budget__smallest")
    assert report.answer_sentences(report_dir)[1].startswith(
        "The smallest MNIST files at 99.0 % test accuracy (mean of 3 seeds): 2,890 bytes "
        "packed (sc-rate, γ 0.15, 18 epochs, 99.04 %, 2 of 3 seeds at or above it) and ")
    smallest[0] |= {"test_acc_ci_low": 0.9895, "test_acc_ci_high": 0.9913}
    smallest[1] |= {"test_acc_ci_low": 0.9901, "test_acc_ci_high": 0.9907}
    report.save_table(smallest, report_dir, "07_file_budget__smallest")
    assert report.answer_sentences(report_dir)[1] == (
        "The smallest MNIST files at 99.0 % test accuracy (mean of 3 seeds, its 95 % interval "
        "over seeds in brackets): 2,890 bytes packed (sc-rate, γ 0.15, 18 epochs, 99.04 % "
        "[98.95, 99.13], 2 of 3 seeds at or above it) and 2,411 bytes entropy coded (sc-rate, "
        "γ 0.15, 18 epochs, 99.04 % [99.01, 99.07]). The interval of the packed file's "
        "reaches below 99.0 %: the target is met on the mean, not surely.")
    for row in smallest:
        row.pop("test_acc_ci_low", None), row.pop("test_acc_ci_high", None)
    del smallest[0]["seeds_at_target"]
    report.save_table(smallest, report_dir, "07_file_budget__smallest")
    report.save_table([{"request": "the regime study on mnist: 19 runs (its frontiers are "
                                   "left out)"}], report_dir, "07_file_budget__missing")
    assert report.answer_sentences(report_dir)[1] == files + (
        " Not yet among the models compared: the regime study on mnist: 19 runs (its "
        "frontiers are left out).")
    report.save_table([], report_dir, "07_file_budget__missing")
    budgets = [{"method": "sc", "gamma": 0.15, "epochs": e, "seeds": 3, "val_acc_mean": 0.98,
                "test_acc_mean": acc, "seeds_at_target": k, "packed_bytes_mean": size,
                "coded_bytes_mean": size - 200, "coding": "entropy"}
               for e, size, acc, k in ((18, 1936.4, 0.9897, 2), (6, 2699.0, 0.98883, 0))]
    budgets.append(budgets[0] | {"method": "sc-rate"})  # one budget only: no clause
    # a budget still missing a seed is no clause either, beside a finished one
    budgets.append(budgets[1] | {"method": "sc-rate", "seeds": 2, "complete": False})
    report.save_table(budgets, report_dir, "07_file_budget__budgets")
    assert report.answer_sentences(report_dir)[1] == files + (
        " Longer compression budgets: sc at γ 0.15, 6 and 18 epochs: 2,699 and 1,936 bytes "
        "packed (2,499 and 1,736 entropy coded) at 98.88 % and 98.97 % test accuracy (seeds "
        "at 99.0 % or above: 0 and 2 of 3).")
    budgets[0] |= {"coded_bytes_mean": None, "seeds_at_target": 3}
    budgets[1] |= {"seeds_at_target": 3}
    report.save_table(budgets, report_dir, "07_file_budget__budgets")
    assert report.answer_sentences(report_dir)[1].endswith(  # no coded file at 18 epochs
        "(2,499 and — entropy coded) at 98.88 % and 98.97 % test accuracy.")
    coder = [{"method": "sc", "models": 12, "coded_saving_mean": 0.1012,
              "coded_saving_min": 0.057, "coded_saving_max": 0.179, "coded_at_target": 0,
              "floor_saving_mean": 0.148, "floor_saving_min": 0.099, "floor_saving_max": 0.232,
              "floor_at_target": 0}]
    report.save_table(coder, report_dir, "07_file_budget__coder")
    assert report.answer_sentences(report_dir)[1].endswith(
        "98.97 % test accuracy. Entropy coding shrinks the packed file of sc by 10.1 % on "
        "average (5.7 to 17.9 %; 0 of 12 models by a quarter or more; the codes' entropy "
        "floor lies 14.8 % below packed).")
    for row in smallest:
        row["reaches_target"] = row["smallest_at_target"] = False
    report.save_table(smallest, report_dir, "07_file_budget__smallest")
    assert report.answer_sentences(report_dir)[1].startswith(
        "No MNIST file reaches 99.0 % test accuracy (mean of 3 seeds); the most accurate is "
        "2,890 bytes packed")
    text = report.build_report(report_dir, "quick").read_text()
    assert text.index("06_regimes__endpoint.json") < text.index("01_mnist_cnn__matched_size")
    assert check_index(report.build_report(report_dir, "quick")) == []


def test_the_cost_sentence_says_core_hours_and_worker_wall_times(report_dir, tmp_path):
    notebooks = [{"notebook": "01_mnist_cnn", "runs": 10, "train_s": 36_000.0,
                  "longest_run_s": 1_800.0, "vs_floor": 1.4, "train_flops": 1e15,
                  "peak_gflops": 97.4},
                 {"notebook": "02_char_transformer", "runs": 5, "train_s": 900.0,
                  "longest_run_s": 300.0, "train_flops": 0, "peak_gflops": 300.0}]
    total = {"notebook": "all", "runs": 200, "train_s": 360_000.0, "longest_run_s": 9_000.0,
             "vs_floor": 1.43, "runs_with_flops": 150, "train_s_with_flops": 90_000.0,
             "peak_gflops": 97.4}
    report.save_table([*notebooks, total], report_dir, "05_paper_claims__compute")
    [sentence] = report.cost_sentence(report_dir)
    # 100 core-hours: 12.5 h on 8 workers, 6.25 on 16, and on 64 the longest run's 2.5 h;
    # the ratio covers the runs with FLOPs, a quarter of the time: the sentence says so --
    # and the peak of the machine that ran them (02 recorded no FLOPs: its peak is moot)
    assert ("100.0 core-hours (200 runs) (1.4× the time their FLOPs need at the matmul "
            "peak of the machine each notebook ran on (97 GFLOP/s on one core); the 150 "
            "runs that recorded their FLOPs, 25 % of the training time)") in sentence
    notebooks[1] |= {"train_flops": 1e14, "peak_gflops": 184.2}  # 02 ran on a faster one
    report.save_table([*notebooks, total], report_dir, "05_paper_claims__compute")
    assert "each notebook ran on (97 to 184 GFLOP/s on one core)" in \
        report.cost_sentence(report_dir)[0]
    report.save_table([notebooks[0], total], report_dir, "05_paper_claims__compute")
    assert "about 12.5 h on 8, 6.2 h on 16, 2.5 h on 64 single-threaded workers" in sentence
    readme = tmp_path / "README.md"
    readme.write_text(f"{report.README_START}\n{report.README_END}\n"
                      f"{report.COST_START}\nold\n{report.COST_END}\n")
    assert report.write_readme_results(readme, report_dir)
    assert f"{report.COST_START}\n{sentence}\n{report.COST_END}" in readme.read_text()
    report.save_table([{"regime": "mnist", "stage": "two", "method": "sc", "seed": 3,
                        "overrides": "{'gamma': 0.4}"}], report_dir, "06_regimes__missing")
    [partial] = report.cost_sentence(report_dir)
    assert partial == sentence + (" The regime study's runs not finished yet (mnist) are "
                                  "not counted.")
