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

``float`` and ``sc`` (plain self-compression) live in :mod:`sgsc.experiments.runs`, which dispatches
to these modules.  Every method returns the schema of :func:`sgsc.experiments.runs.run`.  This file
holds only names, so that :mod:`sgsc.experiments.defaults` can list the methods without importing
the baselines (which build on :mod:`sgsc.experiments.harness`, never on ``runs``).
"""

from __future__ import annotations

UNIFORM_BITS = (2, 3, 4, 6, 8, 16)
METHODS = (
    *(f"uniform-ptq-{b}" for b in UNIFORM_BITS),
    *(f"uniform-qat-{b}" for b in UNIFORM_BITS),
    "diffq",
    "cbtpe",
    "cbtpe-tpe",
)

