"""Timing shared by the benchmarks: calls interleaved, so drifting machine load (another
process, a CPU clock that changes) hits every variant alike, and medians compared.

The benchmarks are scripts run from the checkout (``python benchmarks/NAME.py``); Python
puts this folder on ``sys.path`` for them, so they import this module as ``timing``.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def interleaved(steps: dict[str, Callable[[], object]], rounds: int, warmup: int,
                sync: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """Seconds of every call of each step, ``rounds`` calls each after ``warmup``.

    Each round calls every step once; the order rotates by one step a round (with two
    steps: a, b, then b, a), so each step takes every place in a round in turn.  ``sync``
    (e.g. ``torch.cuda.synchronize``) runs before and after each timed call, so that a
    GPU's queued work is counted where it was issued.
    """
    names = list(steps)
    for _ in range(warmup):
        for name in names:
            steps[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(rounds):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            if sync is not None:
                sync()
            start = time.perf_counter()
            steps[name]()
            if sync is not None:
                sync()
            times[name].append(time.perf_counter() - start)
    return times
