"""Every data set's defaults in one place: its model, its float and compression budgets,
the safety terms' coefficients, and the methods that exist.

:func:`train_config` turns them into the :class:`~sgsc.experiments.train.TrainConfig` of a
method on a data set (with overrides); a data set may override the safety terms under ``"sgsc"``.
Generic defaults (what a setting means when nobody chooses it) stay with the settings
themselves (:class:`~sgsc.experiments.train.TrainConfig`,
:class:`~sgsc.core.feedback.FeedbackConfig`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sgsc.core.feedback import FeedbackConfig
from sgsc.experiments.baselines import METHODS as BASELINE_METHODS  # names only: no import cycle
from sgsc.experiments.models import MODEL_REGISTRY, CNNConfig
from sgsc.experiments.train import TrainConfig

# Safety-guided self-compression and its two halves, for the ablation: sc plus the
# preservation loss alone (no monitor, no feedback), and sc plus the feedback alone.
SAFETY_METHODS = ("sgsc", "sc-pres", "sc-feedback")
# Baselines (uniform-ptq-B, uniform-qat-B, diffq, cbtpe, cbtpe-tpe): see sgsc.experiments.baselines.
# sc-rate: self-compression whose size term estimates the entropy-coded file
# (SelfCompression.rate_loss) instead of ceil(b) bits per weight; opt-in.
RATE_METHODS = ("sc-rate",)
METHODS = ("float", "sc", *RATE_METHODS, *SAFETY_METHODS, *BASELINE_METHODS)

# Defaults per data set: model, float budget, compression budget and coefficients;
# "sgsc" overrides SGSC_EXTRA for that data set.
DEFAULTS: dict[str, dict] = {
    "digits": {
        "model": ("mnist_cnn", dataclasses.asdict(CNNConfig.for_digits())),
        "float": {"epochs": 20, "batch_size": 32, "lr": 3e-3},
        "compress": {"epochs": 20, "batch_size": 32, "lr": 1e-3, "lr_quant": 0.05,
                     "gamma": 0.1},
        "preservation_size": 100,
    },
    "mnist": {
        "model": ("mnist_cnn", dataclasses.asdict(CNNConfig())),
        "float": {"epochs": 3, "batch_size": 128, "lr": 3e-3},
        # SCNN's lr on b and e: fast descent, kept stable by the preservation loss,
        # the feedback controller and the cosine schedule
        "compress": {"epochs": 6, "batch_size": 128, "lr": 1e-3, "lr_quant": 0.5,
                     "gamma": 0.05},
        "preservation_size": 1000,
    },
    # The data-scale regimes (docs/PREREGISTRATION.md): MNIST's CNN on 1,000 and 4,000
    # class-balanced training images, budgeted by optimizer steps -- about 2,000 at batch
    # 32, float and compression alike (1k: 32 steps an epoch, 4k: 125) -- with a
    # preservation set of a tenth or less of the training rows, as on the digits.
    "mnist-1k": {
        "model": ("mnist_cnn", dataclasses.asdict(CNNConfig())),
        # validated every 7 of 63 epochs (9 times): 5,000 validation images each epoch
        # would cost 1.6x the 2,000 training steps
        "float": {"epochs": 63, "batch_size": 32, "lr": 3e-3, "eval_every": 7},
        "compress": {"epochs": 63, "batch_size": 32, "lr": 1e-3, "lr_quant": 0.5,
                     "gamma": 0.05, "eval_every": 7},
        "preservation_size": 100,
    },
    "mnist-4k": {
        "model": ("mnist_cnn", dataclasses.asdict(CNNConfig())),
        "float": {"epochs": 16, "batch_size": 32, "lr": 3e-3, "eval_every": 2},
        "compress": {"epochs": 16, "batch_size": 32, "lr": 1e-3, "lr_quant": 0.5,
                     "gamma": 0.05, "eval_every": 2},
        "preservation_size": 300,
    },
    "names": {
        "model": ("char_transformer", {"block_size": 32}),
        "float": {"epochs": 10, "batch_size": 64, "lr": 3e-3},
        # at lr_quant 0.05 / gamma 0.02 ten epochs left 28 % of the float size; SCNN's
        # lr_quant and a stronger size term reach under 10 % at the float model's loss
        "compress": {"epochs": 10, "batch_size": 64, "lr": 1e-3, "lr_quant": 0.5,
                     "gamma": 0.1},
        "preservation_size": 500,
        # an LM never fits its preservation set: at lambda 1 those 500 names pulled
        # validation loss up 0.16 nats; 0.1 keeps it near plain self-compression's
        "sgsc": {"lambda_pres": 0.1},
    },
    "tinyshakespeare": {
        "model": ("char_transformer", {"block_size": 32}),
        "float": {"epochs": 1, "batch_size": 64, "lr": 3e-3},
        "compress": {"epochs": 1, "batch_size": 64, "lr": 1e-3, "lr_quant": 0.05,
                     "gamma": 0.02},
        "preservation_size": 500,
    },
}
# Self-compression removes its dead channels as it trains (see Trainer._maybe_shrink).
SC_EXTRA = {"shrink_every": 50}
# L1: chosen on validation (notebook 01's "choices on validation"); see README.
SGSC_EXTRA = {"lambda_pres": 1.0, "l1_weights": 0.3,
              "feedback": dataclasses.asdict(FeedbackConfig())}


def check_method(method: str, data_name: str) -> None:
    """A ValueError naming the valid choices unless ``method`` and ``data_name`` exist."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if data_name not in DEFAULTS:
        raise ValueError(f"unknown data set {data_name!r}; choose one of "
                         f"{', '.join(DEFAULTS)}")


def train_config(method: str, data_name: str, **overrides: Any) -> TrainConfig:
    """The default TrainConfig of ``method`` on ``data_name``, with overrides applied."""
    check_method(method, data_name)
    stage = "float" if method == "float" else "compress"
    values = dict(DEFAULTS[data_name][stage])
    if method in ("sc", *RATE_METHODS, *SAFETY_METHODS):
        values |= SC_EXTRA
    if method in RATE_METHODS:
        values |= {"size_term": "rate"}
    if method in SAFETY_METHODS:  # the safety terms, and a data set's own choices for them
        values |= SGSC_EXTRA | DEFAULTS[data_name].get("sgsc", {})
        # The halves add one mechanism each to sc; the L1 term belongs to the full method.
        if method == "sc-pres":
            values |= {"feedback": None, "l1_weights": 0.0}
        elif method == "sc-feedback":
            values |= {"lambda_pres": 0.0, "l1_weights": 0.0}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)}; valid: "
                         f"{', '.join(sorted(fields))}")
    return TrainConfig(**(values | {k: v for k, v in overrides.items() if v is not None}))


def configure_model(data_name: str, config: dict[str, Any] | None) -> tuple[str, dict]:
    """From now on (in this process), ``sgsc.experiments.runs`` builds the model of
    ``data_name`` with ``config`` fields overridden -- e.g. a one-layer transformer for a
    quick profile.
    Returns the previous ``(model name, config)`` entry, to restore it.

    The architecture is part of each run's folder key (:func:`sgsc.experiments.harness.run_folder`),
    so such runs never resume or reuse runs of another architecture.
    """
    entry = DEFAULTS[data_name]
    previous = entry["model"]
    if config:
        name, base = previous
        fields = {f.name for f in dataclasses.fields(MODEL_REGISTRY[name].config_class)}
        unknown = sorted(set(config) - fields)
        if unknown:
            raise ValueError(f"unknown {name} setting(s) {', '.join(unknown)}; valid: "
                             f"{', '.join(sorted(fields))}")
        entry["model"] = (name, base | config)
    return previous


@contextmanager
def model_overrides(data_name: str, config: dict[str, Any] | None) -> Iterator[None]:
    """:func:`configure_model` for the duration of a ``with`` block."""
    previous = configure_model(data_name, config)
    try:
        yield
    finally:
        DEFAULTS[data_name]["model"] = previous
