"""What every method's run shares: run folders, the checks before training, the result."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from sgsc.experiments import defaults, harness


def test_a_run_folder_key_changes_with_the_thread_count(tmp_path):
    config = defaults.train_config("sc", "digits")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = harness.run_folder(tmp_path / "digits", "sc", 0, config)
        torch.set_num_threads(2)
        two = harness.run_folder(tmp_path / "digits", "sc", 0, config)
    finally:
        torch.set_num_threads(before)
    assert one != two and one.parent == two.parent and one.name.startswith("sc-s0-")
    same = dataclasses.replace(config, device="cpu", progress=False)
    torch.set_num_threads(1)
    try:
        assert harness.run_folder(tmp_path / "digits", "sc", 0, same) == one
    finally:
        torch.set_num_threads(before)


def test_finish_writes_the_row_with_threads_and_code(tmp_path):
    row = harness.finish("sc", "digits", 3, {"test_acc": 0.9, "params": {"gamma": 0.1}}, 0.0,
                         tmp_path / "f")
    assert row["method"] == "sc" and row["seed"] == 3 and row["test_acc"] == 0.9
    assert row["threads"] == torch.get_num_threads() and row["code"]["version"]
    assert row["params"] == {"gamma": 0.1, "threads": torch.get_num_threads()}
    assert json.loads((tmp_path / "f" / "result.json").read_text()) == row


def test_check_run_is_what_run_checks_before_training():
    config, size = harness.check_run("sgsc", "digits")
    assert config.lambda_pres > 0 and size == defaults.DEFAULTS["digits"]["preservation_size"]
    assert harness.check_run("float", "digits")[1] == 0
    assert harness.check_run("uniform-ptq-4", "digits")[0].gamma >= 0
    with pytest.raises(ValueError, match="float uses no preservation set"):
        harness.check_run("float", "digits", preservation_size=10)
    with pytest.raises(ValueError, match="float reference's settings"):
        harness.check_run("sc", "digits", float_overrides={"epochs": 0})


def test_prefixed_names_metrics_as_results_do():
    assert harness.prefixed("val", {"accuracy": 0.5, "loss": 1.0}) == {"val_acc": 0.5,
                                                                       "val_loss": 1.0}


def test_a_reopened_run_names_the_folder_it_was_reopened_from(tmp_path):
    """A result stores the folder as its trainer named it (relative to that process's
    working directory); reopened from elsewhere, run_dir is where it is now, so that what
    reads the folder (a history, a model file) finds it."""
    import time

    folder = tmp_path / "digits" / "sc-s0-abc"
    folder.mkdir(parents=True)
    (folder / harness.RESULT).write_text(json.dumps(
        {"method": "sc", "test_acc": 0.9, "test_class_acc": [0.9] * 10,
         "run_dir": "runs/paper/digits/sc-s0-abc"}))
    reopened = harness.finished(folder, time.perf_counter())
    assert reopened["run_dir"] == str(folder) and reopened["reopened"]
