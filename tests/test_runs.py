"""Runs by name: the result schema, reruns, the safety methods' settings, checks before
training, run folders."""

from __future__ import annotations

import dataclasses
import json

import pytest

import sgsc
from sgsc.core.safety import SafetyGuidance
from sgsc.experiments import defaults, runs


@pytest.fixture(scope="module")
def sgsc_digits(tmp_path_factory):
    """The default sgsc run on digits, and the float run it started from."""
    out = tmp_path_factory.mktemp("runs")
    compressed = runs.run("sgsc", "digits", out_dir=out, progress=False)
    reference = runs.run("float", "digits", out_dir=out, progress=False)
    return compressed, reference, out


def test_sgsc_compresses_3_5x_and_keeps_accuracy(sgsc_digits):
    """Over seeds 0-4 the counted size was 0.22-0.24 of the float model's (sd 0.009), the
    file 0.24-0.26 (sd 0.008), and validation accuracy moved -0.007 to +0.007 (sd 0.006)
    from the float model's; the bounds (1/3.5, -0.02) sit 3.5 sd or more beyond the mean."""
    compressed, reference, _ = sgsc_digits
    assert compressed["storage_bits_counted"] * 3.5 <= reference["storage_bytes"] * 8
    assert compressed["storage_bytes"] * 3.5 <= reference["storage_bytes"]  # the real file
    assert compressed["val_acc"] >= reference["val_acc"] - 0.02



def test_result_schema(sgsc_digits):
    compressed, reference, _ = sgsc_digits
    for row in (compressed, reference):
        for key in ("method", "data", "seed", "val_acc", "test_acc", "storage_bytes",
                    "live_weights", "wall_s", "params"):
            assert key in row, key
    assert compressed["preservation_size"] == runs.DEFAULTS["digits"]["preservation_size"]
    assert sum(compressed["preservation_counts"].values()) == compressed["preservation_size"]



def test_rerun_reloads_and_keeps_the_training_time(sgsc_digits):
    compressed, reference, out = sgsc_digits
    again = runs.run("sgsc", "digits", out_dir=out, progress=False)
    assert again["train_s"] == compressed["train_s"] > 0  # from the checkpoint
    assert again["test_acc"] == compressed["test_acc"]
    assert runs.run("float", "digits", out_dir=out, progress=False)["train_s"] == \
        reference["train_s"] > 0



def test_reopening_a_finished_run_neither_rechooses_nor_recalibrates(sgsc_digits,
                                                                     monkeypatch):
    """The preservation set and the calibrated level are kept in the float run's folder,
    the result in the run's own: a rerun of a finished run trains, measures and rebuilds
    nothing."""
    compressed, _, out = sgsc_digits
    [float_dir] = out.glob("digits/float-s0-*")
    assert list(float_dir.glob("preservation-n*-s0.json"))

    def refuse(*args, **kwargs):
        raise AssertionError("rebuilt although it was saved")

    monkeypatch.setattr(runs, "build_preservation_set", refuse)
    monkeypatch.setattr(SafetyGuidance, "calibrate", refuse)
    again = runs.run("sgsc", "digits", out_dir=out, progress=False)
    assert again["run_dir"] == compressed["run_dir"]
    assert again["preservation_counts"] == compressed["preservation_counts"]
    assert again["test_acc"] == compressed["test_acc"]
    assert again["storage_bytes"] == compressed["storage_bytes"]


def test_a_damaged_saved_preservation_set_is_chosen_again(sgsc_digits):
    compressed, _, out = sgsc_digits
    [saved] = out.glob("digits/float-s0-*/preservation-n*-s0.json")
    kept = json.loads(saved.read_text())
    saved.write_text('{"indices": [1, 2')  # a write cut short
    again = runs.run("sgsc", "digits", out_dir=out, progress=False)
    assert again["run_dir"] == compressed["run_dir"]
    assert json.loads(saved.read_text()) == kept


def test_history_logs_every_loss_term(sgsc_digits):
    _, _, out = sgsc_digits
    [history_file] = out.glob("digits/sgsc-*/history.json")
    history = json.loads(history_file.read_text())
    row = history["history"][-1]
    for key in ("train_task", "train_l1", "train_size", "train_dead_bias", "train_preservation",
                "val_loss", "val_accuracy", "pres_accuracy", "monitor_loss", "Q", "storage_bytes",
                "live_weights"):
        assert key in row, key
    config = history["config"]
    assert config["gamma"] > 0 and config["lambda_pres"] > 0 and config["l1_weights"] > 0
    assert row["train_l1"] > 0
    assert history["feedback_checks"], "the controller read the monitor"
    # storage falls during training: compression comes from the loss
    assert history["history"][-1]["storage_bytes"] < history["history"][0]["storage_bytes"]



def test_run_folder_keys_settings_model_and_code_version(tmp_path, monkeypatch):
    root = tmp_path / "digits"
    config = runs.train_config("sc", "digits")

    def folder(cfg=config, *extra):
        return runs.run_folder(root, "sc", 0, cfg, *extra)

    base = folder()
    assert base.parent == root and base.name.startswith("sc-s0-")
    assert folder(dataclasses.replace(config, device="cpu", progress=False)) == base
    others = {folder(dataclasses.replace(config, gamma=0.5)), folder(config, "float-s0-x")}
    with defaults.model_overrides("digits", {"widths": (4, 4, 4, 4)}):
        others.add(folder())
    monkeypatch.setattr(sgsc, "__version__", "999")
    others.add(folder())
    assert base not in others and len(others) == 4



def test_ablation_methods_switch_one_safety_half_off():
    full = runs.train_config("sgsc", "mnist")
    assert full.lambda_pres > 0 and full.feedback is not None
    pres_only = runs.train_config("sc-pres", "mnist")
    assert pres_only.lambda_pres == full.lambda_pres and pres_only.feedback is None
    feedback_only = runs.train_config("sc-feedback", "mnist")
    assert feedback_only.lambda_pres == 0 and feedback_only.feedback == full.feedback
    assert runs.train_config("sc", "mnist").feedback is None



def test_bad_preservation_settings_fail_before_any_training(tmp_path, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("training started before the settings were checked")

    monkeypatch.setattr(runs, "train_float", no_training)
    with pytest.raises(ValueError, match="preservation_size must be an integer between 1"):
        runs.run("sgsc", "digits", out_dir=tmp_path, preservation_size=10**6, progress=False)
    with pytest.raises(ValueError, match="monitor_fraction"):
        runs.run("sgsc", "digits", out_dir=tmp_path, progress=False,
                 feedback={"monitor_fraction": 1.5})
    with pytest.raises(ValueError, match="event_budget"):
        runs.run("sgsc", "digits", out_dir=tmp_path, progress=False,
                 feedback={"event_budget": -1.0})
    with pytest.raises(ValueError, match="sc uses no preservation set"):
        runs.run("sc", "digits", out_dir=tmp_path, preservation_size=10, progress=False)



def test_init_bits_sets_the_starting_bit_depth(tmp_path):
    def bits_after_one_epoch(init_bits: float) -> float:
        result = runs.run("sc", "digits", out_dir=tmp_path, progress=False, epochs=1,
                          float_overrides={"epochs": 1}, gamma=0.0, lr_quant=0.0,
                          init_bits=init_bits)
        return result["Q"]

    assert bits_after_one_epoch(3.0) == pytest.approx(3.0, abs=0.01)
    assert bits_after_one_epoch(12.0) == pytest.approx(12.0, abs=0.01)



def test_a_data_set_can_override_the_safety_defaults():
    assert runs.train_config("sgsc", "names").lambda_pres == 0.1  # DEFAULTS["names"]["sgsc"]
    assert runs.train_config("sgsc", "mnist").lambda_pres == runs.SGSC_EXTRA["lambda_pres"]
    assert runs.train_config("sc", "names").lambda_pres == 0.0  # sc has no safety terms
    assert runs.train_config("sgsc", "names", lambda_pres=2.0).lambda_pres == 2.0


def test_a_finished_run_reopens_from_its_result_with_every_metric(sgsc_digits, monkeypatch):
    compressed, _, out = sgsc_digits
    assert len(compressed["test_class_acc"]) == 10 and compressed["train_flops"] > 0
    assert compressed["trained_on"] and compressed["feedback_attempts"] >= \
        compressed["feedback_events"]

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run was measured again")

    monkeypatch.setattr(runs, "evaluate", refuse)
    monkeypatch.setattr(runs, "save_compressed", refuse)
    again = runs.run("sgsc", "digits", out_dir=out, progress=False)
    assert again["reopened"] and again["train_s"] == compressed["train_s"]
    assert again["test_class_acc"] == compressed["test_class_acc"]


def test_safety_runs_of_a_seed_share_one_calibration(sgsc_digits, monkeypatch):
    compressed, _, out = sgsc_digits
    [float_dir] = out.glob("digits/float-s0-*")
    [cache] = float_dir.glob("calibration-*.json")
    level = json.loads(cache.read_text())["float_level"]

    def refuse(*args, **kwargs):
        raise AssertionError("calibrated again although the float folder keeps the level")

    monkeypatch.setattr(SafetyGuidance, "calibrate", refuse)
    other = runs.run("sgsc", "digits", out_dir=out, progress=False, gamma=0.3, epochs=1)
    pres = json.loads((out / "digits" / other["run_dir"].rsplit("/", 1)[-1]
                       / "preservation.json").read_text())
    assert pres["float_level"] == level


def test_reopen_only_returns_finished_runs_and_none_for_the_rest_writing_nothing(
        sgsc_digits, tmp_path):
    compressed, reference, out = sgsc_digits
    before = sorted(p for p in out.rglob("*"))
    again = runs.run("sgsc", "digits", out_dir=out, progress=False, reopen_only=True)
    assert again["reopened"] and again["test_acc"] == compressed["test_acc"]
    assert runs.run("float", "digits", out_dir=out, progress=False,
                    reopen_only=True)["test_acc"] == reference["test_acc"]
    assert runs.run("sc", "digits", out_dir=out, progress=False, gamma=0.77,
                    reopen_only=True) is None
    assert sorted(p for p in out.rglob("*")) == before  # nothing trained, nothing written
    # no float reference yet: nothing to reopen, and no folder made for one
    assert runs.run("sc", "digits", out_dir=tmp_path, progress=False, reopen_only=True) is None
    assert not any(tmp_path.iterdir())
