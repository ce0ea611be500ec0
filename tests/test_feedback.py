"""Feedback controller: drift detection, interventions, logging, optimizer consistency."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from sgsc.compress import SelfCompression
from sgsc.feedback import FeedbackConfig, FeedbackController
from sgsc.models import CNNConfig, build_model
from sgsc.train import TrainConfig, Trainer, evaluate, task_loss


@pytest.fixture(scope="module")
def trained(digits):
    """A small CNN trained on digits (float), the state every test starts from."""
    torch.manual_seed(0)
    model = build_model("mnist_cnn", **dataclasses.asdict(CNNConfig.for_digits()))
    Trainer(model, digits.train, digits.val,
            TrainConfig(epochs=6, batch_size=32, lr=3e-3, progress=False)).fit()
    return model.state_dict()


def _controller(digits, state, **config):
    model = build_model("mnist_cnn", **dataclasses.asdict(CNNConfig.for_digits()))
    model.load_state_dict(state)
    model.eval()
    sc = SelfCompression(model)
    pres = digits.train  # stands in for a preservation set: only its quality matters here

    def metrics():
        m = evaluate(model, pres, torch.device("cpu"))
        return m["accuracy"], m["loss"]

    def loss():
        x, y = pres.tensors
        return task_loss(model, x, y)

    return sc, FeedbackController(sc, metrics, loss, FeedbackConfig(**config))


def _damage(sc: SelfCompression) -> None:
    """Starve most channels of bits: a constructed drop in preservation accuracy."""
    with torch.no_grad():
        for name, b in sc.bit_depths().items():
            if name != "fc":
                b.fill_(1.0)
                b[::3] = 0.0


def test_no_intervention_without_a_drop(digits, trained):
    sc, fb = _controller(digits, trained)
    assert fb.check(0) is None and fb.check(1) is None
    assert fb.events == [] and len(fb.checks) == 2


def test_rollback_fires_logs_and_recovers(digits, trained):
    sc, fb = _controller(digits, trained, policy="rollback", threshold=0.02)
    assert fb.check(0) is None
    healthy = fb.reference_accuracy
    before = {n: b.detach().clone() for n, b in sc.bit_depths().items()}
    _damage(sc)
    damaged, _ = fb.evaluate()
    assert damaged < healthy - 0.02  # the damage really is a drop
    event = fb.check(50)
    assert event is not None and fb.events == [event]
    assert event.step == 50 and event.accuracy == pytest.approx(damaged)
    assert event.reference == pytest.approx(healthy)
    assert event.channels_restored > 0 and event.bits_added > 0
    for name, b in sc.bit_depths().items():
        assert torch.equal(b, before[name])
    recovered, _ = fb.evaluate()
    assert recovered == pytest.approx(healthy)


def test_sensitivity_policy_revives_dead_channels_and_adds_bits(digits, trained):
    sc, fb = _controller(digits, trained, policy="sensitivity", restore_fraction=0.1)
    fb.check(0)
    _damage(sc)
    damaged, _ = fb.evaluate()
    dead_before = sum(int((b <= 0).sum()) for b in sc.bit_depths().values())
    bits_before = sum(float(b.detach().clamp(min=0).sum()) for b in sc.bit_depths().values())
    event = fb.check(10)
    assert event is not None and event.policy == "sensitivity"
    dead_after = sum(int((b <= 0).sum()) for b in sc.bit_depths().values())
    bits_after = sum(float(b.detach().clamp(min=0).sum()) for b in sc.bit_depths().values())
    assert dead_after == 0 < dead_before  # every channel zeroed since the snapshot is back
    assert bits_after - bits_before == pytest.approx(event.bits_added, rel=1e-5)
    recovered, _ = fb.evaluate()
    assert recovered > damaged


def test_slow_drift_triggers_against_best_not_previous():
    values = iter([0.90, 0.89, 0.88, 0.87, 0.86])
    sc = SelfCompression(torch.nn.Sequential(torch.nn.Linear(4, 3)))
    fb = FeedbackController(sc, lambda: (next(values), 0.0), lambda: sc.size_loss(),
                            FeedbackConfig(threshold=0.025, policy="rollback"))
    fired = [fb.check(step) is not None for step in range(5)]
    # each step drops 0.01 from the previous one; only the distance to the best counts
    assert fired == [False, False, False, True, True]


def test_start_reference_ignores_later_improvements():
    values = iter([0.80, 0.95, 0.79, 0.77])
    sc = SelfCompression(torch.nn.Sequential(torch.nn.Linear(4, 3)))
    fb = FeedbackController(sc, lambda: (next(values), 0.0), lambda: sc.size_loss(),
                            FeedbackConfig(threshold=0.02, reference="start", policy="rollback"))
    assert [fb.check(s) is not None for s in range(4)] == [False, False, False, True]


def test_restored_entries_lose_their_adam_moments(digits, trained):
    sc, fb = _controller(digits, trained, policy="rollback")
    optimizer = torch.optim.Adam(sc.param_groups())
    x, y = digits.train.tensors
    (task_loss(sc.model, x[:64], y[:64]) + 0.1 * sc.size_loss()).backward()
    optimizer.step()
    fb.check(0)
    fc_moments = optimizer.state[sc.bit_depths()["fc"]]["exp_avg"].clone()
    assert torch.count_nonzero(fc_moments) > 0
    _damage(sc)  # every channel outside fc changes
    fb.check(1, optimizer)
    for name, b in sc.bit_depths().items():
        moments = optimizer.state[b]["exp_avg"]
        if name == "fc":  # untouched by the rollback: its momentum is kept
            assert torch.equal(moments, fc_moments)
        else:
            assert torch.count_nonzero(moments) == 0


def test_maybe_check_only_every_k_steps():
    calls = []
    sc = SelfCompression(torch.nn.Sequential(torch.nn.Linear(4, 3)))
    fb = FeedbackController(sc, lambda: (calls.append(1) or 1.0, 0.0), lambda: sc.size_loss(),
                            FeedbackConfig(every=5))
    for step in range(1, 21):
        fb.maybe_check(step)
    assert len(calls) == 4


def test_state_round_trip(digits, trained):
    sc, fb = _controller(digits, trained, policy="rollback")
    fb.check(0)
    _damage(sc)
    fb.check(1)
    sc2, fb2 = _controller(digits, trained, policy="rollback")
    fb2.load_state_dict(fb.state_dict())
    assert fb2.events == fb.events and fb2.reference_accuracy == fb.reference_accuracy


@pytest.mark.parametrize("bad", [{"every": 0}, {"threshold": 1.5}, {"policy": "magic"},
                                 {"reference": "yesterday"}, {"restore_bits": 0}])
def test_bad_config_is_rejected(bad):
    with pytest.raises(ValueError):
        FeedbackConfig(**bad)
