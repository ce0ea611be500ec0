"""Safety guidance (Zbeeb et al. 2025) as one object for any training loop.

:class:`SafetyGuidance` is to the preservation set what :class:`~sgsc.SelfCompression`
is to the size term: built once from the float model, the compressed one and the
training set, it gives the loss a term and the loop a hook::

    sc = SelfCompression(model)
    guard = SafetyGuidance(float_model, sc, train_set, size=1000, feedback=FeedbackConfig())
    guard.calibrate()                  # the monitor's float level: a short float fine-tune
    loss_fn = CompressionLoss(sc, guard, gamma=0.05, l1_weights=0.3, lambda_pres=1.0)
    for x, y in DataLoader(guard.task_dataset, batch_size=128, shuffle=True):
        loss = loss_fn(x, y)           # task + L1 + dead bias + gamma*Q + lambda*preservation
        ...; optimizer.step()
        guard.step(optimizer)          # monitor + feedback every `every` steps

``train_set`` may be any map-style ``Dataset`` of ``(x, y)`` (torchvision's MNIST with
``ToTensor()`` included): it is read into tensors once (:func:`sgsc.core.tasks.as_tensor_dataset`).

What it does, and why:

* **Preservation set** (:func:`sgsc.core.preservation.build_preservation_set`): critical
  training examples the float model picks by Grad-CAM saliency, top-2 margin and k-means
  diversity.
* **Monitor held out from every loss.**  With feedback on, a seeded share
  (``monitor_fraction``) of the set becomes the monitor; the rest is the loss part.  The
  monitor rows are also removed from the task data (``task_dataset``), so no loss term ever
  trains on them: a monitor of examples the loss fits would be memorised and could not
  see damage.
* **A fair float level.**  The trigger is relative to the float model's monitor loss --
  but the float model trained on those rows, and any model that stops seeing them
  forgets some of that (on MNIST a float fine-tune without them takes the monitor loss
  from 0.18 to about 0.45 in 200 steps, with no compression at all).  So the level is
  measured on a copy of the float model fine-tuned for ``calibration_steps`` with the
  run's learning rate and batch size on ``task_dataset``: the float model in the
  compressed model's situation, minus the compression (or the float model's own level,
  when that is higher: compression is never asked to beat the model it starts from).
  That fine-tune is a training loop of its own, so it runs when asked
  (:meth:`SafetyGuidance.calibrate`), or at the first :meth:`~SafetyGuidance.step` of a
  loop that did not ask -- never inside the constructor.
* **BatchNorm left alone.**  The preservation forward runs in eval mode (``bn="eval"``):
  BatchNorm normalises with the running statistics the task batches maintain, and the
  64 hard examples never enter those statistics; dropout is off for them.  ``bn="frozen"``
  normalises with the preservation batch's own statistics instead and puts the running
  statistics back afterwards.
* **Feedback** (:class:`sgsc.core.feedback.FeedbackController`): refines the quantization of
  the channels whose change lowers the monitor loss, within a bit budget.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import Dataset, TensorDataset

from sgsc.core.compress import SelfCompression
from sgsc.core.feedback import FeedbackConfig, FeedbackController, FeedbackEvent, Reading
from sgsc.core.preservation import PreservationSet, build_preservation_set
from sgsc.core.tasks import as_tensor_dataset, evaluate, is_language_model, task_loss
from sgsc.structure.prune import PruneResult

BN_MODES = ("eval", "frozen")


class SafetyGuidance:
    """The preservation term and the feedback controller of one compressed model.

    Args:
        float_model: the float reference (same architecture as ``compression.model``);
            it picks the preservation set and sets the monitor's reference level.
        compression: the :class:`SelfCompression` being trained.
        train_set: the training split, any map-style Dataset of ``(x, y)``; never
            validation or test data.
        size: preservation-set size, when ``preservation`` is not given.
        preservation: an already chosen :class:`PreservationSet` of ``train_set``.
        feedback: a :class:`FeedbackConfig`, or None for the preservation term alone (then
            the whole set enters the loss and no monitor is held out).
        batch_size: preservation examples per :meth:`preservation_loss` call.
        augment: shift each preservation image by up to one pixel per call.
        bn: ``"eval"`` or ``"frozen"`` (see the module docstring).
        seed: seeds the set's choice, its split and the batch sampling.
        device: where the examples go (default: the compressed model's device).
        lr, task_batch_size: the weights' learning rate and the batch size of the run,
            which the calibration fine-tune of the float level uses.
        validation_set: the validation split, when the feedback should log its loss
            before and after every attempted restore (never used to decide one).
        float_level: the calibrated float level, when it is already known (the
            :attr:`float_level` of an earlier build with the same arguments, e.g. to
            reopen a finished run); None: :meth:`calibrate` measures it, or the first
            :meth:`step` does.
    """

    def __init__(self, float_model: nn.Module, compression: SelfCompression,
                 train_set: Dataset, *, size: int | None = None,
                 preservation: PreservationSet | None = None,
                 feedback: FeedbackConfig | None = None, batch_size: int = 64,
                 augment: bool = False, bn: str = "eval", seed: int = 0,
                 device: str | torch.device | None = None, lr: float = 1e-3,
                 task_batch_size: int = 128, progress: bool = False,
                 float_level: float | None = None,
                 validation_set: Dataset | None = None) -> None:
        _check_inputs(float_model, compression, train_set, size, preservation, feedback,
                      batch_size, bn, lr, task_batch_size)
        train_set = as_tensor_dataset(train_set, "train_set", progress=progress)
        if float_level is not None and feedback is None:
            raise ValueError("float_level is the feedback's monitor level; without feedback "
                             "there is no monitor: drop float_level")
        self.compression = compression
        self.model = compression.model
        self.train_set = train_set
        self.batch_size, self.augment, self.bn = batch_size, augment, bn
        self.feedback = feedback
        self.device = torch.device(device) if device is not None else _device_of(self.model)
        if preservation is None:
            preservation = build_preservation_set(float_model, train_set, size, seed=seed,
                                                  device=_device_of(float_model),
                                                  progress=progress)
        self.preservation = preservation
        if feedback is None:
            self.loss_part, self.monitor_part = preservation, None
        else:
            self.loss_part, self.monitor_part = preservation.split(
                feedback.monitor_fraction, seed=seed)
        self.loss_set = self.loss_part.subset(train_set)
        self.monitor_set = self.monitor_part.subset(train_set) if self.monitor_part else None
        self.generator = torch.Generator().manual_seed(seed + 1)
        self.steps = 0
        self.controller: FeedbackController | None = None  # made by calibrate()
        self.float_monitor_loss = None  # the float model's own level, before calibration
        self._float_model, self._seed = float_model, seed
        self._validation = (as_tensor_dataset(validation_set, "validation_set")
                            if validation_set is not None else None)
        self._lr, self._task_batch_size = lr, task_batch_size
        if feedback is not None:
            self.float_monitor_loss = self._monitor_reading(float_model).loss
            if float_level is not None:
                self._start_controller(float_level)

    # ------------------------------------------------------------------ data

    @property
    def monitor_indices(self) -> np.ndarray:
        """Rows of ``train_set`` held out as the monitor (empty without feedback)."""
        return (self.monitor_part.indices if self.monitor_part is not None
                else np.zeros(0, dtype=np.int64))

    @functools.cached_property
    def task_dataset(self) -> TensorDataset:
        """``train_set`` without the monitor rows: what the task loss may train on."""
        if self.monitor_part is None:
            return self.train_set
        keep = np.ones(len(self.train_set), dtype=bool)
        keep[self.monitor_indices] = False
        rows = torch.from_numpy(np.flatnonzero(keep))
        return TensorDataset(*(t[rows] for t in self.train_set.tensors))

    def _batch(self) -> tuple[Tensor, Tensor]:
        n = len(self.loss_set)
        idx = torch.randint(n, (min(self.batch_size, n),), generator=self.generator)
        x, y = self.loss_set.tensors[0][idx], self.loss_set.tensors[1][idx]
        if self.augment and x.dim() == 4:  # images: shift by up to one pixel
            dx, dy = torch.randint(-1, 2, (2,), generator=self.generator).tolist()
            x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
        return x.to(self.device), y.to(self.device)

    # ------------------------------------------------------------------ the loss term

    def preservation_loss(self) -> Tensor:
        """The task loss on a batch of the loss part, differentiable, BatchNorm untouched."""
        x, y = self._batch()
        with _batchnorm_guard(self.model, self.bn):
            return task_loss(self.model, x, y)

    # ------------------------------------------------------------------ the monitor

    def _monitor_reading(self, model: nn.Module) -> Reading:
        metrics = evaluate(model, self.monitor_set, _device_of(model))
        return Reading(metrics["loss"], metrics.get("accuracy"))

    def monitor(self) -> Reading:
        """The compressed model's loss (and accuracy) on the monitor, in eval mode."""
        if self.monitor_set is None:
            raise ValueError("this SafetyGuidance has no monitor: it was built with "
                             "feedback=None")
        return self._monitor_reading(self.model)

    def calibrate(self, steps: int | None = None) -> float:
        """Measure the monitor's float level and start the feedback controller; returns
        the level.

        A copy of the float model trains ``steps`` steps (default
        ``feedback.calibration_steps``) on ``task_dataset`` with the run's learning rate
        and batch size, and its monitor loss is the level -- or the float model's own, when
        that is higher (see the module docstring).  Random numbers come from a generator
        of its own, so calibrating never moves the run's.
        """
        if self.feedback is None:
            raise ValueError("this SafetyGuidance has no feedback, so no monitor to calibrate")
        steps = self.feedback.calibration_steps if steps is None else steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
        level = max(self._fine_tuned_level(steps), self.float_monitor_loss)
        self._start_controller(level)
        return level

    def _fine_tuned_level(self, steps: int) -> float:
        """The monitor loss of a float copy trained ``steps`` steps on ``task_dataset``."""
        if steps == 0:
            return self.float_monitor_loss
        model = copy.deepcopy(self._float_model).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=self._lr, weight_decay=0.0)
        data = self.task_dataset
        generator = torch.Generator().manual_seed(self._seed + 2)
        device = _device_of(model)
        for _ in range(steps):
            idx = torch.randint(len(data), (min(self._task_batch_size, len(data)),),
                                generator=generator)
            x, y = (t[idx].to(device) for t in data.tensors[:2])
            loss = task_loss(model, x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return self._monitor_reading(model).loss

    def _start_controller(self, level: float) -> None:
        validation = None
        if self._validation is not None:
            def validation() -> float:
                return evaluate(self.model, self._validation, _device_of(self.model))["loss"]
        self.controller = FeedbackController(self.compression, self.monitor,
                                             self._monitor_loss, level, self.feedback,
                                             validation=validation)

    def _monitor_loss(self) -> Tensor:
        """The monitor loss with gradients, in eval mode (the controller prices restores)."""
        was_training = self.model.training
        self.model.eval()
        x, y = (t.to(self.device) for t in self.monitor_set.tensors)
        loss = task_loss(self.model, x, y)
        self.model.train(was_training)
        return loss

    # ------------------------------------------------------------------ the hook

    @property
    def float_level(self) -> float | None:
        """The calibrated float level of the monitor loss (None without feedback, or before
        :meth:`calibrate`)."""
        return None if self.controller is None else self.controller.float_level

    @property
    def bits_spent(self) -> int:
        """Bits the feedback's restores have added to the file so far."""
        return 0 if self.controller is None else self.controller.bits_spent

    def monitor_record(self) -> dict:
        """What a run's history keeps of the monitor: every check, every restore, the float
        model's own level and the calibrated one, and which training rows it held out
        ({} without feedback)."""
        if self.feedback is None:
            return {}
        return {"feedback": [asdict(e) for e in self.events], "feedback_checks": self.checks,
                "feedback_attempts": self.attempts,
                "float_monitor_loss": self.float_monitor_loss, "float_level": self.float_level,
                "monitor_indices": self.monitor_indices.tolist()}

    @property
    def events(self) -> list[FeedbackEvent]:
        return [] if self.controller is None else self.controller.events

    @property
    def checks(self) -> list[dict]:
        return [] if self.controller is None else self.controller.checks

    @property
    def attempts(self) -> list[dict]:
        """Every measured restore, kept or rolled back (:class:`FeedbackController`)."""
        return [] if self.controller is None else self.controller.attempts

    def start(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Read the monitor before training (the first healthy snapshot), calibrating first
        if nobody did; the first :meth:`step` does it if nobody called it."""
        if self.feedback is None:
            return
        if self.controller is None:
            self.calibrate()
        if not self.controller.checks:
            self.controller.check(0, optimizer)

    def step(self, optimizer: torch.optim.Optimizer | None = None) -> FeedbackEvent | None:
        """Call after every optimizer step: every ``every`` steps it reads the monitor and
        restores precision when needed (pass the optimizer so restored entries lose
        their Adam moments).  Returns the event, if one happened."""
        if self.feedback is None:
            self.steps += 1
            return None
        self.start(optimizer)  # no-op once the monitor has been read
        self.steps += 1
        return self.controller.maybe_check(self.steps, optimizer)

    def removable(self) -> dict[str, Tensor]:
        """Module name -> zero-bit channels nothing can bring back (training may remove
        them): the optimizer cannot, since a bit depth at or below 0 gets no gradient, and
        the controller only revives channels of its last healthy snapshot."""
        zero = {n: b.detach() <= 0 for n, b in self.compression.bit_depths().items()}
        if self.controller is None:
            return zero
        revivable = self.controller.revivable()
        return {n: m & ~revivable[n] if n in revivable else m for n, m in zero.items()}

    def pruned(self, result: PruneResult) -> None:
        """Tell the controller which channels a prune removed."""
        if self.controller is not None:
            self.controller.pruned(result)

    def state_dict(self) -> dict:
        """Steps, the sampling generator, the monitor split and the controller's state."""
        return {"steps": self.steps, "generator": self.generator.get_state(),
                "monitor_indices": self.monitor_indices.tolist(),
                "controller": None if self.controller is None else self.controller.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Resume from :meth:`state_dict`.  A saved controller is restored even where this
        object has not calibrated yet: its level is in the state, and calibrating again
        would start the run's restore budget from zero."""
        if state["monitor_indices"] != self.monitor_indices.tolist():
            raise ValueError("this state was saved with another monitor split; build the "
                             "SafetyGuidance with the same preservation set and seed")
        saved = state["controller"]
        if saved is not None and self.feedback is None:
            raise ValueError("this state was saved with feedback; build the SafetyGuidance "
                             "with the same FeedbackConfig to resume it")
        self.steps = int(state["steps"])
        self.generator.set_state(state["generator"])
        if saved is not None:
            if self.controller is None:
                self._start_controller(float(saved["float_level"]))
            self.controller.load_state_dict(saved)


@contextmanager
def _batchnorm_guard(model: nn.Module, mode: str) -> Iterator[None]:
    """Run a forward without touching BatchNorm running statistics (see module doc)."""
    if mode == "eval":
        was_training = model.training
        model.eval()
        try:
            yield
        finally:
            model.train(was_training)
        return
    # The forward updates the running statistics in place, and autograd keeps those tensors
    # for the backward, so they cannot be written back afterwards: the forward updates
    # throw-away copies and the originals are put back untouched.
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    saved = [dict(m._buffers) for m in norms]
    for m, buffers in zip(norms, saved, strict=True):
        for k, v in buffers.items():
            if v is not None:
                m._buffers[k] = v.clone()
    try:
        yield
    finally:
        for m, buffers in zip(norms, saved, strict=True):
            m._buffers.update(buffers)


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _architecture(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Every parameter's shape, by name as the unwrapped model spells it."""
    shapes = {}
    for name, param in model.named_parameters():
        name = name.replace(".parametrizations.weight.original", ".weight")
        if name.startswith("parametrizations.weight.original"):
            name = "weight"
        if ".parametrizations." in name or name.startswith("parametrizations."):
            continue  # bit depths and exponents
        shapes[name] = tuple(param.shape)
    return shapes


def _check_inputs(float_model: nn.Module, compression: SelfCompression,
                  train_set: Dataset, size: int | None,
                  preservation: PreservationSet | None, feedback: FeedbackConfig | None,
                  batch_size: int, bn: str, lr: float, task_batch_size: int) -> None:
    """Every bad setting named before anything is computed."""
    if not isinstance(compression, SelfCompression):
        raise ValueError("compression must be a SelfCompression wrapping the model being "
                         f"trained, got {type(compression).__name__}")
    if float_model is compression.model:
        raise ValueError("float_model is the compressed model itself; pass a separate copy "
                         "of the float reference (copy.deepcopy before wrapping)")
    ours, theirs = _architecture(compression.model), _architecture(float_model)
    if ours != theirs or is_language_model(float_model) != is_language_model(compression.model):
        differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        raise ValueError("the float reference has another architecture than the compressed "
                         f"model (parameters that differ: {', '.join(differ[:5]) or 'kind'}); "
                         "pass the float model the compressed one was copied from")
    try:
        rows = len(train_set)
    except TypeError:
        rows = 0
    if not rows or isinstance(train_set, TensorDataset):
        as_tensor_dataset(train_set, "train_set")  # the error that says what is expected
    if feedback is not None:
        if not isinstance(feedback, FeedbackConfig):
            raise ValueError(f"feedback must be a FeedbackConfig or None, got {feedback!r}")
        if not compression.names:
            raise ValueError("feedback needs quantized layers, but the SelfCompression wraps "
                             "no Conv/Linear layer; set feedback=None")
    if preservation is None:
        check_preservation_size(size, rows, feedback)
    elif size is not None and size != len(preservation):
        raise ValueError(f"size={size} but the given preservation set has {len(preservation)} "
                         "rows; pass one of them")
    else:
        check_preservation_size(len(preservation), rows, feedback, "the preservation set's size")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if bn not in BN_MODES:
        raise ValueError(f"bn must be one of {BN_MODES}, got {bn!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < float("inf"):
        raise ValueError(f"lr must be a positive finite learning rate, got {lr!r}")
    if isinstance(task_batch_size, bool) or not isinstance(task_batch_size, int) \
            or task_batch_size < 1:
        raise ValueError(f"task_batch_size must be a positive integer, got {task_batch_size!r}")


def check_preservation_size(size: object, train_rows: int, feedback: FeedbackConfig | None,
                            name: str = "size") -> None:
    """A ValueError naming ``name`` unless a preservation set of ``size`` rows fits a
    training split of ``train_rows`` and, with ``feedback``, splits into a monitor and a
    loss part that are both non-empty."""
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= train_rows:
        raise ValueError(f"{name} must be an integer between 1 and the {train_rows} rows of "
                         f"the training split, got {size!r}")
    if feedback is not None and min(size * feedback.monitor_fraction,
                                    size * (1 - feedback.monitor_fraction)) < 1:
        raise ValueError(f"{name}={size} with monitor_fraction={feedback.monitor_fraction} "
                         "leaves no monitor or no loss part; use a larger preservation set")
