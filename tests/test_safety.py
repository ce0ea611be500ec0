"""SafetyGuidance: a monitor no loss sees, BatchNorm left alone, a user's own loop, bad input."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from sgsc.core.compress import SelfCompression
from sgsc.core.feedback import FeedbackConfig
from sgsc.core.loss import CompressionLoss
from sgsc.core.preservation import PreservationSet
from sgsc.core.safety import SafetyGuidance
from sgsc.core.tasks import evaluate
from sgsc.experiments.models import CNNConfig, build_model
from sgsc.experiments.train import TrainConfig, Trainer


@pytest.fixture(scope="module")
def float_state(digits):
    torch.manual_seed(0)
    model = build_model("mnist_cnn", **dataclasses.asdict(CNNConfig.for_digits()))
    Trainer(model, digits.train, digits.val,
            TrainConfig(epochs=4, batch_size=32, lr=3e-3, progress=False)).fit()
    return model.state_dict()


def _pair(float_state):
    """(float reference, its SelfCompression copy) of the digits CNN."""
    reference = build_model("mnist_cnn", **dataclasses.asdict(CNNConfig.for_digits()))
    reference.load_state_dict(float_state)
    reference.eval()
    return reference, SelfCompression(copy.deepcopy(reference))


def _guard(digits, float_state, **kw):
    reference, sc = _pair(float_state)
    kw = {"size": 100, "feedback": FeedbackConfig(), "seed": 0} | kw
    return SafetyGuidance(reference, sc, digits.train, **kw)


def test_monitor_is_held_out_of_the_loss_part_and_the_task_data(digits, float_state):
    guard = _guard(digits, float_state)
    monitor, loss_part = set(guard.monitor_indices), set(guard.loss_part.indices)
    assert len(monitor) == 30 and len(loss_part) == 70 and not monitor & loss_part
    assert monitor | loss_part == set(guard.preservation.indices)
    # each rule is represented in the monitor in proportion
    counts = guard.monitor_part.counts()
    assert all(9 <= n <= 11 for n in counts.values()), counts
    task = guard.task_dataset
    assert len(task) == len(digits.train) - 30
    task_rows = {r.numpy().tobytes() for r in task.tensors[0]}
    for i in guard.monitor_indices:
        assert digits.train.tensors[0][i].numpy().tobytes() not in task_rows
    assert torch.equal(guard.loss_set.tensors[0],
                       digits.train.tensors[0][torch.from_numpy(guard.loss_part.indices)])


def test_without_feedback_the_whole_set_enters_the_loss(digits, float_state):
    guard = _guard(digits, float_state, feedback=None)
    assert guard.monitor_set is None and len(guard.monitor_indices) == 0
    assert len(guard.loss_set) == 100 and guard.task_dataset is digits.train
    assert guard.step() is None and guard.events == []


def test_monitor_rows_never_reach_any_loss_of_a_training_run(digits, float_state, monkeypatch):
    """Every input of every loss forward of a real run is recorded and traced to its row."""
    guard = _guard(digits, float_state, feedback=FeedbackConfig(every=5))
    row_of = {r.numpy().tobytes(): i for i, r in enumerate(digits.train.tensors[0])}
    seen: set[int] = set()
    recording = {"on": False}

    def record(module, args):
        if recording["on"]:
            seen.update(row_of.get(r.numpy().tobytes(), -1) for r in args[0])

    original = CompressionLoss.terms

    def recorded_loss_terms(self, x, y):
        recording["on"] = True
        try:
            return original(self, x, y)
        finally:
            recording["on"] = False

    monkeypatch.setattr(CompressionLoss, "terms", recorded_loss_terms)
    hook = guard.model.register_forward_pre_hook(record)
    config = TrainConfig(epochs=2, batch_size=32, gamma=0.1, lr_quant=0.5, lambda_pres=1.0,
                         feedback=guard.feedback, progress=False)
    Trainer(guard.model, digits.train, digits.val, config, compression=guard.compression,
            safety=guard).fit()
    hook.remove()
    assert guard.checks, "the monitor was read during the run"
    assert not seen & set(guard.monitor_indices.tolist())
    assert set(guard.loss_part.indices.tolist()) <= seen  # the loss part did train
    assert -1 not in seen


@pytest.mark.parametrize("bn", ["eval", "frozen"])
def test_the_preservation_term_leaves_batchnorm_statistics_alone(digits, float_state, bn):
    guard = _guard(digits, float_state, bn=bn)
    model = guard.model.train()
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    guard.preservation_loss().backward()
    for key, value in model.named_buffers():
        assert torch.equal(value, buffers[key]), key
    assert model.training  # the mode is put back
    # the guard is what keeps them: a plain train-mode forward moves them
    model(guard.loss_set.tensors[0][:64])
    assert not torch.equal(model.bn1.running_mean, buffers["bn1.running_mean"])


def test_frozen_and_eval_modes_normalise_differently(digits, float_state):
    """The two BN modes are real alternatives: eval uses running, frozen batch statistics."""
    losses = {}
    for bn in ("eval", "frozen"):
        guard = _guard(digits, float_state, bn=bn)
        guard.model.train()
        losses[bn] = guard.preservation_loss().item()
    assert losses["eval"] != pytest.approx(losses["frozen"], rel=1e-4)


def test_the_float_level_is_the_reference_on_the_monitor(digits, float_state):
    reference, sc = _pair(float_state)
    raw = SafetyGuidance(reference, sc, digits.train, size=100, seed=0,
                         feedback=FeedbackConfig(calibration_steps=0))
    expected = evaluate(reference, raw.monitor_set, torch.device("cpu"))["loss"]
    assert raw.calibrate() == raw.float_level
    assert raw.float_level == pytest.approx(expected) == raw.float_monitor_loss
    # the compressed copy starts at 8 bits: within a hair of the float model
    assert abs(raw.monitor().loss - expected) < 0.01


def test_calibration_trains_a_copy_without_the_monitor(digits, float_state):
    """The level is the float copy's after steps on task_dataset (here pushed up by a large
    learning rate), seeded, never below the float model's own; the reference is untouched."""
    reference, sc = _pair(float_state)
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    shaken = SafetyGuidance(reference, sc, digits.train, size=100, seed=0,
                            feedback=FeedbackConfig(calibration_steps=30), lr=0.05,
                            task_batch_size=32)
    assert shaken.float_level is None and shaken.controller is None  # nothing trained yet
    rng = torch.get_rng_state()
    shaken.calibrate()
    assert torch.equal(torch.get_rng_state(), rng)  # the run's random numbers do not move
    assert all(torch.equal(v, before[k]) for k, v in reference.state_dict().items())
    assert shaken.float_level > shaken.float_monitor_loss + 0.01
    again = _guard(digits, float_state, feedback=FeedbackConfig(calibration_steps=30), lr=0.05,
                   task_batch_size=32)
    again.calibrate()
    assert again.float_level == shaken.float_level
    assert again.controller.trigger_level == pytest.approx(again.float_level + 0.05)
    still = _guard(digits, float_state, feedback=FeedbackConfig(calibration_steps=30), lr=1e-9)
    still.calibrate()
    assert still.float_level == pytest.approx(still.float_monitor_loss, abs=0.02)  # BN stats


def test_the_constructor_trains_nothing_and_the_first_step_calibrates(digits, float_state,
                                                                       monkeypatch):
    calls = []
    original = SafetyGuidance.calibrate
    monkeypatch.setattr(SafetyGuidance, "calibrate",
                        lambda self, steps=None: calls.append(steps) or original(self, steps))
    guard = _guard(digits, float_state, feedback=FeedbackConfig(calibration_steps=5))
    assert calls == [] and guard.float_level is None
    guard.step()
    assert calls == [None] and guard.float_level is not None and guard.checks
    guard.step()
    assert calls == [None]  # once
    with pytest.raises(ValueError, match="no feedback"):
        _guard(digits, float_state, feedback=None).calibrate()


def test_a_known_float_level_skips_the_calibration(digits, float_state, monkeypatch):
    """Reopening a run passes the level it calibrated: no fine-tune, the same trigger."""
    calibrated = _guard(digits, float_state, feedback=FeedbackConfig(calibration_steps=30),
                        lr=0.05, task_batch_size=32)
    calibrated.calibrate()

    def no_calibration(*args, **kwargs):
        raise AssertionError("the calibration ran although the level was given")

    monkeypatch.setattr(SafetyGuidance, "calibrate", no_calibration)
    reopened = _guard(digits, float_state, feedback=FeedbackConfig(calibration_steps=30),
                      lr=0.05, task_batch_size=32, float_level=calibrated.float_level)
    assert reopened.controller.trigger_level == calibrated.controller.trigger_level
    with pytest.raises(ValueError, match="without feedback there is no monitor"):
        _guard(digits, float_state, feedback=None, float_level=0.5)


def test_a_users_own_loop_compresses_and_every_restore_helps(digits, float_state):
    """The README loop, on digits: size falls, accuracy holds, restores lower the monitor.

    Margins from this loop over seeds 0-4 (float model and loop seeded alike): the size
    ratio was 0.44-0.51 (mean 0.47, sd 0.03), the accuracy 0.04-0.10 below the float
    model's (mean 0.07, sd 0.02); the bounds sit 3.5 sd beyond the mean, because another
    CPU gives other numbers for the same seed."""
    reference, sc = _pair(float_state)
    model = sc.model
    guard = SafetyGuidance(reference, sc, digits.train, size=100,
                           feedback=FeedbackConfig(every=20, threshold=0.02), seed=0)
    optimizer = torch.optim.AdamW(sc.param_groups(lr_quant=0.5))
    bits_before = sc.storage_bits()
    torch.manual_seed(0)
    for _ in range(6):
        for x, y in DataLoader(guard.task_dataset, batch_size=32, shuffle=True):
            loss = (F.cross_entropy(model(x), y) + 0.5 * sc.size_loss()
                    + 1.0 * guard.preservation_loss())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            guard.step(optimizer)
    assert sc.storage_bits() < 0.6 * bits_before
    cpu = torch.device("cpu")
    float_accuracy = evaluate(reference, digits.val, cpu)["accuracy"]
    assert evaluate(model, digits.val, cpu)["accuracy"] > float_accuracy - 0.15
    assert guard.checks and guard.events, "the monitor fired at lr_quant 0.5"
    for event in guard.events:
        assert event.monitor_loss_after < event.monitor_loss_before
    assert guard.controller.bits_spent <= guard.controller.budget_bits(
        guard.controller.config.run_budget)


def test_state_round_trip_restores_sampling_and_controller(digits, float_state):
    quiet = FeedbackConfig(threshold=10.0)  # never restores: both models stay alike
    guard = _guard(digits, float_state, feedback=quiet)
    guard.preservation_loss()
    guard.step()
    state = guard.state_dict()
    expected = guard.preservation_loss()
    again = _guard(digits, float_state, feedback=quiet)
    assert again.controller is None  # not calibrated: the saved controller comes back
    again.load_state_dict(state)
    assert again.steps == 1 and torch.equal(again.preservation_loss(), expected)
    saved = guard.controller.state_dict()
    assert again.controller.float_level == saved["float_level"]
    assert again.controller.checks == saved["checks"]
    assert again.controller.bits_spent == saved["bits_spent"]
    again.start()  # resuming does not calibrate again (that would reset the budget)
    assert again.controller.checks == saved["checks"]
    without = _guard(digits, float_state, feedback=None)
    with pytest.raises(ValueError, match="saved with feedback"):
        without.load_state_dict(state | {"monitor_indices": []})
    other = _guard(digits, float_state, seed=1, feedback=quiet)
    with pytest.raises(ValueError, match="another monitor split"):
        other.load_state_dict(state)


# ----------------------------------------------------------------------------- bad input


def test_a_preservation_set_larger_than_the_training_split_is_refused(digits, float_state):
    with pytest.raises(ValueError, match="size must be an integer between 1 and the"):
        _guard(digits, float_state, size=len(digits.train) + 1)


def test_a_float_reference_of_another_architecture_is_refused(digits, float_state):
    _, sc = _pair(float_state)
    other = build_model("mnist_cnn", **dataclasses.asdict(
        CNNConfig.for_digits(widths=(8, 16, 32, 32))))
    with pytest.raises(ValueError, match="another architecture.*conv1"):
        SafetyGuidance(other, sc, digits.train, size=50)


def test_feedback_on_a_model_without_quantizers_is_refused(digits):
    reference = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.ReLU())
    sc = SelfCompression(copy.deepcopy(reference))
    with pytest.raises(ValueError, match="no Conv/Linear"):
        SafetyGuidance(reference, sc, digits.train, size=10, feedback=FeedbackConfig())


def test_the_compressed_model_itself_is_not_a_reference(digits, float_state):
    _, sc = _pair(float_state)
    with pytest.raises(ValueError, match="separate copy"):
        SafetyGuidance(sc.model, sc, digits.train, size=10)


@pytest.mark.parametrize("kw, name", [({"size": 0}, "size"), ({"batch_size": 0}, "batch_size"),
                                      ({"bn": "train"}, "bn"), ({"lr": 0.0}, "lr"),
                                      ({"task_batch_size": 0}, "task_batch_size"),
                                      ({"size": 2, "feedback": FeedbackConfig(
                                          monitor_fraction=0.1)}, "monitor_fraction")])
def test_bad_settings_are_named(digits, float_state, kw, name):
    with pytest.raises(ValueError, match=name):
        _guard(digits, float_state, **kw)


def test_a_given_set_of_another_size_is_refused(digits, float_state):
    chosen = PreservationSet(np.arange(20), np.array(["saliency"] * 20))
    with pytest.raises(ValueError, match="size=10 but the given preservation set has 20"):
        _guard(digits, float_state, preservation=chosen, size=10)


def test_bad_inputs_fail_before_any_scoring(digits, float_state, monkeypatch):
    import sgsc.core.safety

    def never(*args, **kwargs):
        raise AssertionError("the preservation set was scored before validation")

    monkeypatch.setattr(sgsc.core.safety, "build_preservation_set", never)
    with pytest.raises(ValueError, match="bn"):
        _guard(digits, float_state, bn="nope")
    with pytest.raises(ValueError, match="TensorDataset"):
        reference, sc = _pair(float_state)
        SafetyGuidance(reference, sc, TensorDataset(torch.zeros(0, 1, 8, 8),
                                                    torch.zeros(0, dtype=torch.long)), size=1)


def test_removable_spares_what_the_controller_could_revive(digits, float_state):
    guard = _guard(digits, float_state, feedback=FeedbackConfig(threshold=0.0, run_budget=0.05))
    sc = guard.compression
    guard.start()  # healthy snapshot: every channel alive
    with torch.no_grad():
        sc.bit_depths()["conv2"][:4] = 0.0
    assert not guard.removable()["conv2"].any()  # alive in the snapshot: may come back
    without = _guard(digits, float_state, feedback=None)
    with torch.no_grad():
        without.compression.bit_depths()["conv2"][:4] = 0.0
    assert without.removable()["conv2"][:4].all()  # nothing can revive them
    guard.controller.bits_spent = guard.controller.budget_bits(0.05)  # budget spent
    assert guard.removable()["conv2"][:4].all() and not guard.removable()["conv2"][4:].any()


def test_a_prune_cuts_the_controllers_snapshot_alike(digits, float_state):
    guard = _guard(digits, float_state, feedback=FeedbackConfig(threshold=0.0, run_budget=0.0))
    sc = guard.compression
    guard.start()
    with torch.no_grad():
        sc.bit_depths()["conv2"][:4] = 0.0
    result = sc.prune(digits.train.tensors[0][:1], dead_rows=guard.removable())
    guard.pruned(result)
    snapshot = guard.controller.state_dict()["snapshot"]
    assert snapshot["conv2.b"].shape == sc.bit_depths()["conv2"].shape == (12,)
    assert snapshot["conv2.e"].shape == (12,)


def test_safety_guidance_runs_on_a_torchvision_style_dataset(digits, float_state):
    """Items (image tensor, int label), as torchvision's MNIST with ToTensor() gives them:
    read once into tensors, the same preservation set and monitor as the TensorDataset's."""

    class TorchvisionStyle(torch.utils.data.Dataset):
        def __len__(self):
            return len(digits.train)

        def __getitem__(self, i):
            x, y = digits.train[i]
            return x, int(y)

    reference, sc = _pair(float_state)
    guard = SafetyGuidance(reference, sc, TorchvisionStyle(), size=100,
                           feedback=FeedbackConfig(calibration_steps=5), seed=0)
    twin = _guard(digits, float_state, feedback=FeedbackConfig(calibration_steps=5))
    assert guard.monitor_indices.tolist() == twin.monitor_indices.tolist()
    assert torch.equal(guard.task_dataset.tensors[0], twin.task_dataset.tensors[0])
    guard.preservation_loss().backward()
    guard.step()
    assert guard.float_level == twin.calibrate()
