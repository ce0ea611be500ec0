"""Baselines in the same harness as self-compression: ``python -m sgsc run METHOD``.

===================  ==========================================================  ==========
METHOD               what                                                        module
===================  ==========================================================  ==========
``uniform-ptq-B``    quantize the float model at B bits, per-channel symmetric   uniform
``uniform-qat-B``    the same, trained quantization-aware (B in 2,3,4,6,8,16)    uniform
``diffq``            DiffQ (Defossez et al. 2021), the ``diffq`` package          diffq
``cbtpe``            Hessian-pruned mixed-precision/width search, cluster TPE    cbtpe
``cbtpe-tpe``        the same search with Optuna's standard TPE                  cbtpe
===================  ==========================================================  ==========

``float`` and ``sc`` (plain self-compression) live in :mod:`sgsc.runs`.  Every method
returns the schema of :func:`sgsc.runs.run`.  This file holds only names, so that
``sgsc.runs`` can list the methods without importing the baselines (which import it).
"""

from __future__ import annotations

from pathlib import Path

UNIFORM_BITS = (2, 3, 4, 6, 8, 16)
METHODS = (
    *(f"uniform-ptq-{b}" for b in UNIFORM_BITS),
    *(f"uniform-qat-{b}" for b in UNIFORM_BITS),
    "diffq",
    "cbtpe",
    "cbtpe-tpe",
)


def run(method: str, data_name: str, *, seed: int = 0, out_dir: str | Path = "runs",
        device: str = "auto", progress: bool = True, float_overrides: dict | None = None,
        **overrides) -> dict:
    """Run baseline ``method``; ``overrides`` are TrainConfig fields or the method's own."""
    kw = dict(seed=seed, out_dir=out_dir, device=device, progress=progress,
              float_overrides=float_overrides, **overrides)
    if method.startswith("uniform-"):
        from sgsc.baselines import uniform

        return uniform.run(method, data_name, **kw)
    if method == "diffq":
        from sgsc.baselines import diffq

        return diffq.run(data_name, **kw)
    if method in ("cbtpe", "cbtpe-tpe"):
        from sgsc.baselines import cbtpe

        return cbtpe.run(method, data_name, **kw)
    raise ValueError(f"unknown baseline {method!r}; choose one of {', '.join(METHODS)}")
