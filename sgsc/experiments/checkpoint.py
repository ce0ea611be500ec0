"""A run's record and its checkpoint on disk: what the Trainer has done, kept apart from
how it trains.

* :class:`RunRecord` -- the per-epoch history rows, the removals of dead channels, the
  code (and CPU) that trained each stretch, and the online selection on validation:
  a float run keeps its best epoch; a compressed run the *smallest* epoch (by storage
  bytes) whose validation score is within ``tolerance`` of the best seen -- selection
  never looks at the test set.
* :class:`RunFolder` -- ``checkpoint.pt`` (written atomically after every epoch, so a
  killed run resumes where the last epoch ended) and ``history.json`` of one run folder;
  a damaged checkpoint, or one of other settings, is a clear error and is left as it is.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sgsc.core.tasks import score
from sgsc.fileformat import atomic

CHECKPOINT = "checkpoint.pt"
HISTORY = "history.json"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from (damaged, or of other settings); the
    message names it and what to do.  The file is left as it is."""


def row_score(row: dict) -> float:
    """Validation score of a history row: accuracy, or minus the loss (nats) for text."""
    return score({k[4:]: v for k, v in row.items() if k.startswith("val_")})


@dataclass
class RunRecord:
    """History, removals, provenance and the selected state of one run (see module doc)."""

    history: list[dict] = field(default_factory=list)
    shrinks: list[dict] = field(default_factory=list)  # one row per removal of dead channels
    trained_by: list[dict] = field(default_factory=list)  # provenance.training_state entries
    best_score: float = -math.inf
    selected_epoch: int = 0
    selected_state: dict | None = None
    train_flops: float = 0.0  # 6 x forward MACs x examples, as the network shrank

    @property
    def selected(self) -> dict:
        """The history row of the selected epoch ({} before the first validation)."""
        return next((row for row in self.history if row["epoch"] == self.selected_epoch), {})

    def add(self, row: dict, state: Callable[[], dict], *, smallest: bool,
            tolerance: float) -> bool:
        """Append epoch ``row`` and update the selection; ``state()`` gives the model state
        to keep when this epoch is selected.  Returns whether it was."""
        self.history.append(row)
        score_now = row_score(row)
        self.best_score = max(self.best_score, score_now)
        if self.selected_state is None:
            take = True
        elif not smallest:
            take = score_now > row_score(self.selected)
        else:
            floor = self.best_score - tolerance
            current = self.selected
            take = score_now >= floor and (row["storage_bytes"] <= current["storage_bytes"]
                                           or row_score(current) < floor)
        if take:
            self.selected_epoch = row["epoch"]
            self.selected_state = copy.deepcopy(state())
        return take

    def checkpoint_state(self) -> dict[str, Any]:
        """The record as a checkpoint holds it (lists as JSON text: weights-only loading)."""
        return {"history": json.dumps(self.history), "best_score": self.best_score,
                "selected_epoch": self.selected_epoch, "selected_state": self.selected_state,
                "shrinks": json.dumps(self.shrinks), "trained_by": json.dumps(self.trained_by),
                "train_flops": self.train_flops}

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any]) -> RunRecord:
        """The record of a checkpoint (older ones lack shrinks and trained_by)."""
        # a checkpoint of code that did not record itself: say so rather than guess
        unrecorded = [{"version": None, "git_sha": "not recorded (checkpoint of earlier code)",
                       "sgsc_dirty": None}]
        return cls(history=json.loads(state["history"]),
                   shrinks=json.loads(state.get("shrinks", "[]")),
                   trained_by=json.loads(state.get("trained_by", json.dumps(unrecorded))),
                   best_score=state["best_score"], selected_epoch=state["selected_epoch"],
                   selected_state=state["selected_state"],
                   train_flops=float(state.get("train_flops", 0.0)))


class RunFolder:
    """``checkpoint.pt`` and ``history.json`` of one run; ``folder=None`` keeps nothing."""

    def __init__(self, folder: str | os.PathLike[str] | None) -> None:
        self.folder = Path(folder) if folder is not None else None

    def save(self, state: dict[str, Any]) -> None:
        """Write the checkpoint atomically (a kill mid-write leaves the previous one)."""
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic.torch_save(state, self.folder / CHECKPOINT)

    def load(self, config: dict[str, Any], device: torch.device) -> dict[str, Any] | None:
        """The checkpoint of a run with settings ``config``, or None when there is none.

        Raises:
            CheckpointError: the file is damaged or not an sgsc checkpoint.
            ValueError: it was written with other settings.
        """
        path = self.folder / CHECKPOINT if self.folder is not None else None
        if path is None or not path.exists():
            return None
        try:
            state = torch.load(path, map_location=device, weights_only=True)
        except Exception as err:  # a damaged checkpoint must not be silently ignored
            raise CheckpointError(f"checkpoint {path} cannot be read: it is damaged or not an "
                                  f"sgsc checkpoint ({type(err).__name__}); {self.advice}"
                                  ) from err
        if not isinstance(state, dict) or "config" not in state:
            raise CheckpointError(f"{path} is not an sgsc checkpoint; {self.advice}")
        if state["config"] != config:
            raise ValueError(f"checkpoint {path} was written with other settings; use another "
                             "--out directory or delete it to start again")
        return state

    def damaged(self, err: Exception) -> CheckpointError:
        """The error for a checkpoint that loaded but does not fit this run."""
        return CheckpointError(f"checkpoint {self.folder / CHECKPOINT} is incomplete or does "
                               f"not fit this run ({type(err).__name__}: {err}); {self.advice}")

    advice = "delete it to start this run again from scratch"

    def write_history(self, config: dict[str, Any], record: RunRecord,
                      **extra: Any) -> None:
        """``history.json``: settings, per-epoch rows, selection, removals, provenance and
        ``extra`` (the safety guidance's monitor record)."""
        if self.folder is None:
            return
        atomic.write_json({"config": config, "history": record.history,
                           "selected_epoch": record.selected_epoch, "shrinks": record.shrinks,
                           "trained_by": record.trained_by, "train_flops": record.train_flops,
                           **extra},
                          self.folder / HISTORY)
