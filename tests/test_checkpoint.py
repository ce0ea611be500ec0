"""A run's record and its checkpoint: online selection on validation, round trips, and clear
errors for a checkpoint that cannot be resumed (left as it is)."""

from __future__ import annotations

import json

import pytest
import torch

from sgsc.experiments.checkpoint import (
    CHECKPOINT,
    HISTORY,
    CheckpointError,
    RunFolder,
    RunRecord,
    row_score,
)


def _row(epoch, acc, size):
    return {"epoch": epoch, "val_accuracy": acc, "val_loss": 1 - acc, "storage_bytes": size}


def test_a_compressed_run_keeps_its_smallest_epoch_within_tolerance_of_the_best():
    record = RunRecord()
    states = iter(range(10))
    for row in (_row(1, 0.90, 900), _row(2, 0.95, 800), _row(3, 0.946, 500),
                _row(4, 0.90, 300)):
        record.add(row, lambda: {"state": next(states)}, smallest=True, tolerance=0.005)
    assert record.selected_epoch == 3 and record.selected_state == {"state": 2}
    assert record.selected == record.history[2] and record.best_score == 0.95


def test_a_float_run_keeps_its_best_epoch_and_text_scores_by_loss():
    record = RunRecord()
    for row in (_row(1, 0.90, 9), _row(2, 0.95, 9), _row(3, 0.94, 9)):
        record.add(row, dict, smallest=False, tolerance=0.005)
    assert record.selected_epoch == 2
    assert row_score({"val_loss": 1.5}) == -1.5 and row_score(_row(1, 0.9, 1)) == 0.9


def test_the_record_survives_a_checkpoint_and_older_ones_say_who_trained_them():
    record = RunRecord(history=[_row(1, 0.9, 5)], shrinks=[{"step": 50}],
                       trained_by=[{"git_sha": "abc"}], best_score=0.9, selected_epoch=1,
                       selected_state={"w": torch.ones(2)})
    again = RunRecord.from_checkpoint(record.checkpoint_state())
    assert again.history == record.history and again.shrinks == record.shrinks
    assert again.trained_by == record.trained_by and again.selected_epoch == 1
    old = {k: v for k, v in record.checkpoint_state().items()
           if k not in ("shrinks", "trained_by")}
    assert RunRecord.from_checkpoint(old).trained_by[0]["git_sha"].startswith("not recorded")


def test_the_folder_saves_loads_and_refuses_what_it_cannot_resume(tmp_path):
    folder = RunFolder(tmp_path)
    assert folder.load({"lr": 1}, torch.device("cpu")) is None
    folder.save({"config": {"lr": 1}, "epoch": 2})
    assert folder.load({"lr": 1}, torch.device("cpu"))["epoch"] == 2
    with pytest.raises(ValueError, match="other settings"):
        folder.load({"lr": 2}, torch.device("cpu"))
    (tmp_path / CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read.*delete it"):
        folder.load({"lr": 1}, torch.device("cpu"))
    assert (tmp_path / CHECKPOINT).read_bytes() == b"not a checkpoint"  # nothing lost
    folder.write_history({"lr": 1}, RunRecord(history=[_row(1, 0.9, 5)]), feedback=[])
    written = json.loads((tmp_path / HISTORY).read_text())
    assert written["config"] == {"lr": 1} and written["feedback"] == []
    nowhere = RunFolder(None)
    nowhere.save({"config": {}})
    assert nowhere.load({}, torch.device("cpu")) is None
