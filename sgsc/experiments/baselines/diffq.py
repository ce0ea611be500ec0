"""DiffQ (Défossez, Adi & Synnaeve 2021, "Differentiable Model Compression via Pseudo
Quantization Noise") through the authors' own ``diffq`` package.

The package is an optional extra (``pip install sgsc[baselines]``) and is licensed
CC-BY-NC 4.0 (non-commercial); sgsc only calls it.

How it runs here:

* ``DiffQuantizer(model, min_size=0, group_size=8, min_bits=2, max_bits=15, init_bits=8)``
  on a copy of the float model, so every parameter tensor, however small, is quantized --
  except those whose size is not a multiple of ``group_size`` (diffq cannot group them;
  they stay float32 and are listed in the result).  Its bit parameters get their own
  optimizer group through ``setup_optimizer`` (lr ``lr_bits``, no weight decay).
* Training is :class:`sgsc.experiments.train.Trainer` with the data set's compression budget; the
  size term is DiffQ's differentiable ``model_size()`` rescaled from MB to *bits per
  parameter*, weighted by the same ``gamma`` as self-compression's Q.  (DiffQ's own
  penalty is ``lambda * model_size()`` in MB; ours is that with
  ``lambda = gamma * 2^23 / n_params``, which makes gamma mean the same thing in both.)
  Validation runs in eval mode, where diffq swaps in its true quantized weights.
* Selection: like ``sc``, the smallest epoch (by ``true_model_size()``) whose validation
  score is within ``select_tolerance`` of the best.

Measured twice:

* DiffQ's own account: ``diffq_val_acc``/``diffq_test_acc`` of its quantized model and
  ``diffq_true_model_size_bytes`` (``true_model_size()``, parameters only, no buffers).
* Ours (``storage_bytes``, ``val_acc``, ``test_acc``): DiffQ's learned widths carried
  over to our format -- per output channel of each conv/linear weight, the largest
  (rounded) width of the diffq groups it overlaps -- on the trained weights, quantized
  symmetrically per channel (:class:`~sgsc.experiments.baselines.fixed.FixedBits`), exported with
  ``save_compressed`` and read back.  DiffQ's grid is per-group min-max (asymmetric); ours
  is symmetric per channel, so the two accuracies can differ; both are reported.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from sgsc.core.compress import QUANTIZABLE
from sgsc.core.loss import CompressionLoss
from sgsc.core.tasks import evaluate
from sgsc.experiments import harness
from sgsc.experiments.baselines.common import (
    Reference,
    packed_result,
    reference,
    split_overrides,
)
from sgsc.experiments.baselines.fixed import FixedBits
from sgsc.experiments.defaults import train_config
from sgsc.experiments.train import Trainer

INSTALL_HINT = ("the diffq baseline needs the optional 'diffq' package: "
                "pip install 'sgsc[baselines]' (or pip install diffq==0.2.4)")
SUFFIX = "_diffq"  # diffq's name suffix for its bit parameters


@dataclass
class DiffQConfig:
    """DiffQ's own settings (training settings are the data set's compression budget)."""

    group_size: int = 8
    min_bits: float = 2.0
    max_bits: float = 15.0
    init_bits: float = 8.0
    lr_bits: float = 1e-3  # diffq's recommendation for Adam

    def __post_init__(self) -> None:
        if self.group_size < 1:
            raise ValueError(f"group_size must be a positive integer, got {self.group_size!r}")
        if not 1 <= self.min_bits < self.init_bits < self.max_bits <= 15:
            raise ValueError("need 1 <= min_bits < init_bits < max_bits <= 15, got "
                             f"{self.min_bits}, {self.init_bits}, {self.max_bits}")
        if self.lr_bits <= 0:
            raise ValueError(f"lr_bits must be positive, got {self.lr_bits!r}")


# Digits trains for few steps (20 epochs of 40 batches): diffq's lr of 1e-3 would barely
# move its bit logits there, so the tiny data set gets a larger one.
DATA_DEFAULTS: dict[str, dict] = {"digits": {"lr_bits": 1e-2}}


def import_diffq() -> ModuleType:
    """The ``diffq`` module, or a clear error saying how to install it."""
    try:
        import diffq
    except ImportError as err:
        raise ValueError(INSTALL_HINT) from err
    return diffq


class DiffQTrainer(Trainer):
    """The sgsc Trainer with a DiffQuantizer attached after its optimizer was built.

    diffq requires its bit parameters to be absent from the optimizer when
    ``setup_optimizer`` adds them as a group of their own, so the quantizer is attached
    after ``Trainer.__init__``; the learning-rate schedule is rebuilt to cover that group.
    """

    def __init__(self, model: nn.Module, train, val, config, settings: DiffQConfig,
                 out_dir: Path | None = None) -> None:
        super().__init__(model, train, val, config, out_dir=out_dir)
        self.n_params = sum(p.numel() for p in self.model.parameters())
        self.excluded = _ungroupable(self.model, settings.group_size)
        self.quantizer = import_diffq().DiffQuantizer(
            self.model, min_size=0.0, group_size=settings.group_size,
            min_bits=settings.min_bits, max_bits=settings.max_bits,
            init_bits=settings.init_bits, exclude=self.excluded)
        self.quantizer.setup_optimizer(self.optimizer, lr=settings.lr_bits)
        schedule = self.scheduler.lr_lambdas[0]
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.select_smallest = True  # as for sc: the smallest epoch within tolerance
        self.loss = CompressionLoss(self.model, gamma=config.gamma,
                                    l1_weights=config.l1_weights,
                                    l1_dead_bias=config.l1_dead_bias, size=self.size_bits)

    def size_bits(self) -> Tensor:
        """DiffQ's differentiable model size in bits per parameter: MB -> bits / params, so
        that config.gamma weighs it like Q (see module doc)."""
        return self.quantizer.model_size() * (8 * 2**20) / self.n_params

    def epoch_metrics(self, train_metrics: dict[str, float]) -> dict:
        row = super().epoch_metrics(train_metrics)
        row["storage_bytes"] = self.true_bytes()
        row["mean_bits"] = self.mean_bits()
        return row

    def true_bytes(self) -> int:
        """``true_model_size()`` (MB, parameters only) in bytes."""
        return math.ceil(self.quantizer.true_model_size() * 2**20)

    @torch.no_grad()
    def mean_bits(self) -> float:
        """Average rounded width over diffq's quantized parameters."""
        total = count = 0.0
        for qp in self.quantizer._qparams:
            if qp.other is None:
                bits = self.quantizer._get_bits(qp.logit).round().clamp(1, 15)
                total += float(bits.sum()) * qp.param.numel() / bits.numel()
                count += qp.param.numel()
        return total / count if count else 0.0

    @torch.no_grad()
    def channel_bits(self) -> dict[str, Tensor]:
        """Module name -> per-output-channel width of its weight: the largest rounded width
        of the diffq groups that the channel's entries fall in."""
        out = {}
        for qp in self.quantizer._qparams:
            if (qp.name != "weight" or qp.other is not None
                    or not isinstance(qp.module, QUANTIZABLE)):
                continue
            bits = self.quantizer._get_bits(qp.logit).round().clamp(1, 15)
            per_entry = bits.repeat_interleave(self.quantizer.group_size)
            rows = per_entry.view(qp.param.shape[0], -1).amax(dim=1)
            out[_module_name(self.model, qp.module)] = rows.cpu()
        return out


def _ungroupable(model: nn.Module, group_size: int) -> list[str]:
    """Full names of parameters diffq cannot split into groups of ``group_size``."""
    return [name for name, p in model.named_parameters() if p.numel() % group_size]


def _module_name(model: nn.Module, module: nn.Module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name
    raise ValueError("diffq quantized a module that is not part of the model")


def run(data_name: str, *, seed: int = 0, out_dir: str | Path = "runs", device: str = "auto",
        progress: bool = True, float_overrides: dict | None = None,
        **overrides: Any) -> dict:
    """Train DiffQ from the float model of ``seed``; returns the ``runs`` result schema."""
    import_diffq()  # fail before training the float model
    start = time.perf_counter()
    own, train = split_overrides("diffq", overrides, DiffQConfig)
    settings = DiffQConfig(**(DATA_DEFAULTS.get(data_name, {}) | own))
    ref = reference(data_name, seed, out_dir, device, progress, float_overrides)
    config = train_config("diffq", data_name, seed=seed, device=device, progress=progress,
                               **train)
    out = ref.run_folder("diffq", config, dataclasses.asdict(settings))
    if (reopened := harness.finished(out, start)) is not None:
        return reopened
    trainer = DiffQTrainer(ref.copy(), ref.splits.train, ref.splits.val, config, settings,
                           out_dir=out)
    trained = trainer.fit()
    model = trainer.model.eval()
    own_account = {
        "diffq_true_model_size_bytes": trainer.true_bytes(),
        "diffq_mean_bits": trainer.mean_bits(),
        "diffq_float_params": trainer.excluded,
        **harness.prefixed("diffq_val", evaluate(model, ref.splits.val, ref.device)),
        **harness.prefixed("diffq_test", evaluate(model, ref.splits.test, ref.device)),
    }
    fixed = to_fixed_bits(ref, trainer)
    result = {"params": {**dataclasses.asdict(config), "diffq": dataclasses.asdict(settings)},
              "selected_epoch": trained.selected_epoch, "train_s": round(trained.wall_s, 2),
              "train_flops": trained.train_flops,
              "trained_by": trained.trained_by, **own_account,
              "mean_bits": fixed.mean_bits(), **packed_result(fixed.sc, out, ref)}
    return harness.finish("diffq", data_name, seed, result, start, out)


def to_fixed_bits(ref: Reference, trainer: DiffQTrainer) -> FixedBits:
    """DiffQ's trained weights and learned widths in our format (see the module doc).

    Weights diffq left in float32 (not groupable) are left unquantized here too.
    """
    trainer.quantizer.unquantize()  # the stored (master) weights, not diffq's grid
    state = {k: v for k, v in trainer.model.state_dict().items() if not k.endswith(SUFFIX)}
    model = ref.copy()
    model.load_state_dict(state)
    widths = trainer.channel_bits()
    layers = [n for n, m in model.named_modules() if isinstance(m, QUANTIZABLE)]
    floats = tuple(n for n in layers if n not in widths)
    return FixedBits(model, widths, exclude=floats)
