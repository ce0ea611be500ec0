"""A notebook's start and finish: parameters checked before anything runs, run info written."""

from __future__ import annotations

import json

import pytest
import torch

from sgsc.experiments import session


def test_start_checks_sets_threads_and_finish_records_the_run(tmp_path, capsys):
    threads = torch.get_num_threads()
    try:
        run = session.start("00_tutorial", profile="quick", report_dir=str(tmp_path),
                            threads=1, seed=0, seeds=[0, 1], n_samples=3)
        assert torch.get_num_threads() == 1 and run.profile.name == "quick"
        path = run.finish(["digits"], budget={"epochs": 2})
    finally:
        torch.set_num_threads(threads)
    info = json.loads(path.read_text())
    assert info["notebook"] == "00_tutorial"
    assert info["parameters"] == {"profile": "quick", "device": "auto", "force": 0,
                                  "threads": 1, "seed": 0, "seeds": [0, 1], "n_samples": 3,
                                  "budget": {"epochs": 2}}
    assert info["data"][0]["dataset"] == "digits" and info["hardware"]["cpu"]
    assert "00_tutorial finished in" in capsys.readouterr().out


def test_a_typo_stops_the_notebook_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match="profile must be one of.*'papr'"):
        session.start("01_mnist_cnn", profile="papr", report_dir=str(tmp_path))
    with pytest.raises(ValueError, match="seeds\\[0\\] must be a non-negative integer"):
        session.start("01_mnist_cnn", profile="quick", report_dir=str(tmp_path), seeds=[-1])
    assert not (tmp_path / "metrics").exists()


@pytest.mark.parametrize("answer, expected, tolerance, verdict", [
    (None, 0.5, 0, "not answered yet"), (0.5, 0.5, 0, "right"), (0.49, 0.5, 0.02, "right"),
    (0.4, 0.5, 0.02, "not yet"), ("Smaller ", "smaller", 0, "right"),
    ("larger", "smaller", 0, "not yet"), ("half", 0.5, 0, "not yet")])
def test_exercises_are_checked(answer, expected, tolerance, verdict):
    assert verdict in session.check_answer(1, answer, expected, tolerance)


def test_the_teaching_page_quotes_the_tutorials_recorded_timings():
    """docs/TEACHING.md's compute times are the committed executed tutorial's, re-read."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    executed = root / "reports" / "paper" / "00_tutorial.ipynb"
    if not executed.exists():
        pytest.skip("no committed executed tutorial")
    text = (root / "docs" / "TEACHING.md").read_text()
    block = text.split("<!-- timings:", 1)[1].split("<!-- /timings -->", 1)[0]
    rows = [line.strip("| ").split(" | ") for line in block.splitlines()[3:] if line]
    expected = session.section_timings(executed)
    assert rows == [[r["section"], f"{r['seconds']:.1f}"] for r in expected]
    assert {r["section"] for r in expected} >= {"setup", "Exercises"}
