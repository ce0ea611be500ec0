"""A notebook's start and finish, in two calls instead of fifteen lines in each notebook.

    run = session.start("01_mnist_cnn", profile=profile, device=device, force=force,
                        threads=threads, report_dir=report_dir, seed=seed, seeds=seeds)
    ...
    run.finish(["mnist"], budget=budget)

:func:`start` checks every parameter against the profile (a typo stops the notebook
before anything trains, naming the valid values), sets the thread count, quiets the
progress-bar warning of a kernel without widgets, and starts the clock;
:meth:`Session.finish` records how the notebook ran (:func:`provenance.save_run_info`:
parameters, git state, packages, hardware, data checksums) and says where its figures
and metrics went.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sgsc.experiments import profiles, provenance

# what profiles.check_parameters knows how to check, besides profile/device/force/threads
CHECKED = ("seed", "seeds", "methods", "epochs", "float_epochs")


@dataclass
class Session:
    """One notebook run: its name, profile, parameters, report folder and start time."""

    notebook: str
    profile: profiles.Profile
    parameters: dict[str, Any]
    report_dir: Path
    started: float = field(default_factory=time.perf_counter)

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self.started

    def finish(self, datasets: list[str], **recorded: Any) -> Path:
        """Write ``metrics/<notebook>__run.json`` (the parameters, and ``recorded``: what the
        notebook derived from them, such as its budget) and print where everything went."""
        path = provenance.save_run_info(self.report_dir, self.notebook,
                                        self.parameters | recorded, datasets)
        print(f"{self.notebook} finished in {self.elapsed_s:.0f} s; "
              f"figures and metrics in {self.report_dir.resolve()}")
        return path


def start(notebook: str, *, profile: str, report_dir: str, device: str = "auto",
          force: int = 0, threads: int = 0, **parameters: Any) -> Session:
    """Check the notebook's parameters, set the threads, start the clock (module doc)."""
    warnings.filterwarnings("ignore", message="IProgress not found")  # plain bars are fine
    checked = {k: v for k, v in parameters.items() if k in CHECKED}
    chosen = profiles.check_parameters(profile=profile, device=device, force=force,
                                       threads=threads, **checked)
    profiles.set_threads(threads)
    recorded = {"profile": profile, "device": device, "force": force, "threads": threads,
                **parameters}
    return Session(notebook, chosen, recorded, Path(report_dir))


def check_answer(number: int, answer: Any, expected: Any, tolerance: float = 0.0) -> str:
    """A tutorial exercise's verdict, as a sentence: not answered yet (``answer`` is None),
    right (equal, or within ``tolerance`` for numbers), or not yet, with the right answer
    withheld so the student can try again."""
    if answer is None:
        return f"exercise {number}: not answered yet -- set answer_{number} and run this cell"
    if isinstance(expected, (int, float)) and not isinstance(expected, bool):
        try:
            right = abs(float(answer) - expected) <= tolerance
        except (TypeError, ValueError):
            right = False
    else:
        right = str(answer).strip().lower() == str(expected).strip().lower()
    return (f"exercise {number}: right ({answer!r})" if right else
            f"exercise {number}: not yet ({answer!r}) -- look again at the cell above")


def section_timings(executed: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Seconds of compute per section (``## `` heading) of a notebook papermill executed,
    from the duration it records for every cell; code before the first heading is "setup".
    What ``docs/TEACHING.md`` quotes for the tutorial."""
    import json

    rows: list[dict[str, Any]] = [{"section": "setup", "seconds": 0.0}]
    for cell in json.loads(Path(executed).read_text())["cells"]:
        text = "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            heading = next((line[3:].strip() for line in text.splitlines()
                            if line.startswith("## ")), None)
            if heading:
                rows.append({"section": heading, "seconds": 0.0})
        elif cell["cell_type"] == "code":
            duration = cell.get("metadata", {}).get("papermill", {}).get("duration") or 0.0
            rows[-1]["seconds"] += duration
    return [r | {"seconds": round(r["seconds"], 1)} for r in rows]
