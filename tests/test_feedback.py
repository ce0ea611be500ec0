"""Feedback controller: restores that lower the monitor loss, within budget, finer not wider."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from sgsc.core.compress import SelfCompression
from sgsc.core.feedback import FeedbackConfig, FeedbackController, Reading
from sgsc.core.quant import quantize
from sgsc.core.tasks import evaluate, task_loss
from sgsc.experiments.models import CNNConfig, build_model
from sgsc.experiments.train import TrainConfig, Trainer


@pytest.fixture(scope="module")
def trained(digits):
    """A small CNN trained on digits (float), the state every test starts from."""
    torch.manual_seed(0)
    model = build_model("mnist_cnn", **dataclasses.asdict(CNNConfig.for_digits()))
    Trainer(model, digits.train, digits.val,
            TrainConfig(epochs=6, batch_size=32, lr=3e-3, progress=False)).fit()
    return model.state_dict()


def _controller(digits, state, rows=slice(0, 300), **config):
    """A controller whose monitor is 300 training rows, the float level measured on them."""
    model = build_model("mnist_cnn", **dataclasses.asdict(CNNConfig.for_digits()))
    model.load_state_dict(state)
    model.eval()
    x, y = (t[rows] for t in digits.train.tensors)
    monitor_set = torch.utils.data.TensorDataset(x, y)
    float_level = evaluate(model, monitor_set, torch.device("cpu"))["loss"]
    sc = SelfCompression(model)

    def reading():
        m = evaluate(model, monitor_set, torch.device("cpu"))
        return Reading(m["loss"], m["accuracy"])

    def loss():
        return task_loss(model, x, y)

    return sc, FeedbackController(sc, reading, loss, float_level, FeedbackConfig(**config))


def _damage(sc: SelfCompression, seed: int) -> None:
    """Coarsen every channel to 2-3 bits at its range, and kill a seeded third of the rows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, q in sc.quantizers.items():
            if name == "fc":
                continue
            bits = 2.0 + torch.randint(0, 2, q.bit_depth.shape, generator=generator).float()
            q.exponent += q.bit_depth - bits  # the same range, fewer levels
            q.bit_depth.copy_(bits)
            dead = torch.rand(q.bit_depth.shape, generator=generator) < 1 / 3
            q.bit_depth[dead] = 0.0


def _bits(sc):
    return {n: q.bit_depth.detach().clone() for n, q in sc.quantizers.items()}


def _exps(sc):
    return {n: q.exponent.detach().clone() for n, q in sc.quantizers.items()}


@pytest.mark.parametrize("policy", ["refine", "rollback"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_a_restore_lowers_the_monitor_loss_within_its_budget(digits, trained, policy, seed):
    sc, fb = _controller(digits, trained, policy=policy, threshold=0.02, event_budget=0.05)
    assert fb.check(0) is None  # undamaged: at the float level, a healthy snapshot
    _damage(sc, seed)
    damaged = fb.monitor().loss
    assert damaged > fb.trigger_level
    bits_before = sc.storage_bits()
    event = fb.check(50)
    assert event is not None and fb.events == [event]
    assert event.monitor_loss_before == pytest.approx(damaged)
    assert event.monitor_loss_after < event.monitor_loss_before
    assert fb.monitor().loss == pytest.approx(event.monitor_loss_after)  # what is logged is so
    assert event.predicted_change < 0
    assert sc.storage_bits() - bits_before == event.bits_added
    assert 0 < event.bits_added <= fb.budget_bits(0.05)
    assert event.channels == sum(event.channels_by_layer.values()) > 0


def test_refine_halves_the_step_and_keeps_the_range(digits, trained):
    sc, fb = _controller(digits, trained, policy="refine", threshold=0.02, event_budget=1.0)
    fb.check(0)
    _damage(sc, 0)
    bits, exps = _bits(sc), _exps(sc)
    raw = {n: w.detach() for n, w in sc.raw_weights().items()}
    assert fb.check(1) is not None
    refined = 0
    for name, q in sc.quantizers.items():
        changed = (q.bit_depth != bits[name]).nonzero().flatten()
        for i in changed.tolist():
            if bits[name][i] <= 0:
                continue  # revived channels: see the next test
            refined += 1
            assert q.bit_depth[i] == bits[name][i] + 1 and q.exponent[i] == exps[name][i] - 1
            old = quantize(raw[name][i:i + 1], bits[name][i:i + 1], exps[name][i:i + 1])
            new = quantize(raw[name][i:i + 1], q.bit_depth[i:i + 1].detach(),
                           q.exponent[i:i + 1].detach())
            # twice the levels over the same range: the error can only shrink
            assert (new - raw[name][i]).abs().max() <= (old - raw[name][i]).abs().max() + 1e-7
            assert len(new.unique()) >= len(old.unique())
    assert refined > 0


def test_refine_revives_a_dead_channel_at_k_bits_not_its_old_depth(digits, trained):
    sc, fb = _controller(digits, trained, policy="refine", threshold=0.02, event_budget=1.0,
                         restore_bits=2)
    fb.check(0)
    healthy_bits, healthy_exps = _bits(sc), _exps(sc)
    _damage(sc, 1)
    dead = {n: b <= 0 for n, b in _bits(sc).items()}
    assert fb.check(1) is not None
    revived = 0
    for name, q in sc.quantizers.items():
        b, e = q.bit_depth.detach(), q.exponent.detach()
        back = dead[name] & (b > 0)
        revived += int(back.sum())
        # 8-bit channels of the healthy model come back at 2 bits over their old range
        assert torch.all(b[back] == 2)
        old_top = healthy_exps[name][back] + healthy_bits[name][back]
        assert torch.allclose(e[back] + b[back], old_top)
    assert revived > 0


def test_no_restore_when_none_lowers_the_monitor(digits, trained):
    sc, fb = _controller(digits, trained, policy="refine", threshold=0.02, backtracks=2)
    fb.check(0)
    _damage(sc, 2)
    bits, exps = _bits(sc), _exps(sc)
    real = fb.monitor
    level = real().loss
    # A monitor that reads worse after any change: every attempt must be undone.
    fb.monitor = lambda: Reading(level + (0.0 if _same(sc, bits) else 1.0), None)
    assert fb.check(1) is None and fb.events == []
    assert fb.checks[-1]["action"] == "no restore lowered the monitor loss"
    assert _same(sc, bits) and all(torch.equal(q.exponent, exps[n])
                                   for n, q in sc.quantizers.items())
    fb.monitor = real


def _same(sc, bits):
    return all(torch.equal(q.bit_depth, bits[n]) for n, q in sc.quantizers.items())


def test_the_run_budget_caps_all_events(digits, trained):
    sc, fb = _controller(digits, trained, threshold=0.0, event_budget=0.01, run_budget=0.02)
    fb.check(0)
    _damage(sc, 3)
    events = [fb.check(step) for step in range(1, 8)]
    spent = sum(e.bits_added for e in events if e is not None)
    assert 0 < spent <= fb.budget_bits(0.02) and fb.bits_spent == spent
    assert all(e.bits_added <= fb.budget_bits(0.01) for e in events if e is not None)
    assert fb.checks[-1]["action"] in ("budget spent", "no restore lowered the monitor loss")


def test_zero_budget_restores_nothing(digits, trained):
    sc, fb = _controller(digits, trained, threshold=0.0, run_budget=0.0)
    fb.check(0)
    _damage(sc, 0)
    bits = _bits(sc)
    assert fb.check(1) is None and _same(sc, bits)
    assert fb.checks[-1]["action"] == "budget spent"


def test_trigger_is_the_float_level_plus_threshold():
    values = iter([0.50, 0.59, 0.61])
    sc = SelfCompression(torch.nn.Sequential(torch.nn.Linear(4, 3)))
    fb = FeedbackController(sc, lambda: Reading(next(values)), lambda: sc.size_loss(),
                            float_level=0.5, config=FeedbackConfig(threshold=0.1))
    assert fb.trigger_level == pytest.approx(0.6)
    fb.check(0), fb.check(1), fb.check(2)
    assert [c["action"] for c in fb.checks[:2]] == ["healthy", "healthy"]
    assert fb.checks[2]["action"] != "healthy"  # above 0.6: the controller acted


def test_restored_entries_lose_their_adam_moments(digits, trained):
    sc, fb = _controller(digits, trained, policy="rollback", threshold=0.02, event_budget=1.0)
    optimizer = torch.optim.Adam(sc.param_groups())
    x, y = digits.train.tensors
    (task_loss(sc.model, x[:64], y[:64]) + 0.1 * sc.size_loss()).backward()
    optimizer.step()
    fb.check(0)
    moments = {n: optimizer.state[q.bit_depth]["exp_avg"].clone()
               for n, q in sc.quantizers.items()}
    _damage(sc, 0)
    bits = _bits(sc)
    assert fb.check(1, optimizer) is not None
    for name, q in sc.quantizers.items():
        changed = q.bit_depth != bits[name]
        state = optimizer.state[q.bit_depth]["exp_avg"]
        assert torch.count_nonzero(state[changed]) == 0
        assert torch.equal(state[~changed], moments[name][~changed])


def test_maybe_check_only_every_k_steps():
    calls = []
    sc = SelfCompression(torch.nn.Sequential(torch.nn.Linear(4, 3)))
    fb = FeedbackController(sc, lambda: calls.append(1) or Reading(0.0), lambda: sc.size_loss(),
                            float_level=0.0, config=FeedbackConfig(every=5))
    for step in range(1, 21):
        fb.maybe_check(step)
    assert len(calls) == 4


def test_state_round_trip(digits, trained):
    sc, fb = _controller(digits, trained, threshold=0.02)
    fb.check(0)
    _damage(sc, 0)
    fb.check(1)
    _, fb2 = _controller(digits, trained, threshold=0.02)
    fb2.load_state_dict(fb.state_dict())
    assert fb2.events == fb.events and fb2.bits_spent == fb.bits_spent > 0
    assert fb2.float_level == fb.float_level


def test_a_model_without_quantizers_is_refused():
    sc = SelfCompression(torch.nn.Sequential(torch.nn.ReLU()))
    with pytest.raises(ValueError, match="quantized layers"):
        FeedbackController(sc, lambda: Reading(0.0), lambda: torch.zeros(()), 0.0)


@pytest.mark.parametrize("bad, name", [
    ({"every": 0}, "every"), ({"threshold": -0.1}, "threshold"),
    ({"threshold": math.nan}, "threshold"), ({"policy": "sensitivity"}, "policy"),
    ({"restore_bits": 0}, "restore_bits"), ({"restore_bits": 1.5}, "restore_bits"),
    ({"event_budget": -1}, "event_budget"), ({"run_budget": -0.5}, "run_budget"),
    ({"monitor_fraction": 0}, "monitor_fraction"), ({"monitor_fraction": 1.0},
                                                    "monitor_fraction"),
    ({"backtracks": -1}, "backtracks")])
def test_bad_config_is_rejected_naming_the_setting(bad, name):
    with pytest.raises(ValueError, match=name):
        FeedbackConfig(**bad)


class _TwoPaths(torch.nn.Module):
    """Two one-channel layers whose restores cost 8 bits (``wide``) and 1 bit (``narrow``)."""

    def __init__(self):
        super().__init__()
        self.wide = torch.nn.Linear(8, 1, bias=False)
        self.narrow = torch.nn.Linear(1, 1, bias=False)

    def forward(self, x):
        return self.wide(x[:, :8]) + self.narrow(x[:, 8:])


@pytest.mark.parametrize("allowance, chosen", [(8, {"narrow"}), (9, {"narrow", "wide"})])
def test_the_allowance_goes_to_the_most_decrease_per_bit_first(allowance, chosen):
    """Known decreases and costs: ``wide`` lowers the monitor loss more (0.1 against 0.05)
    but per added bit less (0.0125 against 0.05), so within 8 bits only ``narrow`` is
    refined; a controller that ranked by total decrease, or least per bit first, would
    spend the 8 bits on ``wide``."""
    model = _TwoPaths()
    sc = SelfCompression(model, init_bits=2)
    with torch.no_grad():
        for layer in (model.wide, model.narrow):
            layer.parametrizations.weight.original.fill_(0.75)
        for q in sc.quantizers.values():  # 2 bits, step 0.5: 0.75 is stored as 0.5
            q.bit_depth.fill_(2.0)
            q.exponent.fill_(-1.0)
    # A monitor loss linear in the quantized weights, so first order is exact: refining
    # 0.5 -> 0.75 changes it by slope * 0.25 per weight.
    slopes = {"wide": -0.05, "narrow": -0.2}

    def monitor_loss():
        return sum(s * model.get_submodule(n).weight.sum() for n, s in slopes.items())

    def monitor():
        with torch.no_grad():
            return Reading(float(monitor_loss()))

    total = sc.total_weights  # 9
    fb = FeedbackController(sc, monitor, monitor_loss, float_level=-10.0,
                            config=FeedbackConfig(threshold=0.0, event_budget=allowance / total,
                                                  run_budget=1.0, backtracks=0))
    bits = _bits(sc)
    event = fb.check(1)
    assert event is not None
    changed = {n for n, q in sc.quantizers.items() if not torch.equal(q.bit_depth, bits[n])}
    assert changed == chosen
    costs = {"wide": 8, "narrow": 1}
    assert event.bits_added == sum(costs[n] for n in chosen)
    expected = sum(slopes[n] * 0.25 * costs[n] for n in chosen)
    assert event.predicted_change == pytest.approx(expected)
    assert event.monitor_loss_after - event.monitor_loss_before == pytest.approx(expected)


def test_every_attempt_is_logged_with_the_validation_loss_kept_or_not(digits, trained):
    """The log the feedback's effect is judged on holds the rolled-back attempts too: a
    restore judged only where it was kept would look good by construction."""
    from sgsc.experiments.runs import feedback_effect

    sc, fb = _controller(digits, trained, policy="refine", threshold=0.02, backtracks=2)
    val_x, val_y = digits.val.tensors

    def validation():
        with torch.no_grad():
            return task_loss(sc.model, val_x, val_y).item()

    fb.validation = validation
    fb.check(0)
    _damage(sc, 2)
    damaged_val = validation()
    bits = _bits(sc)
    real = fb.monitor
    level = real().loss
    fb.monitor = lambda: Reading(level + (0.0 if _same(sc, bits) else 1.0), None)
    assert fb.check(1) is None
    fb.monitor = real
    rolled_back = list(fb.attempts)
    assert len(rolled_back) >= 2 and not any(a["kept"] for a in rolled_back)
    assert [a["attempt"] for a in rolled_back] == list(range(1, len(rolled_back) + 1))
    assert all(a["val_loss_before"] == pytest.approx(damaged_val) for a in rolled_back)
    assert all(a["val_loss_after"] != a["val_loss_before"] for a in rolled_back)  # measured

    event = fb.check(2)  # the real monitor: now a restore is kept
    assert event is not None and fb.attempts[-1]["kept"]
    assert fb.attempts[-1]["monitor_loss_after"] == pytest.approx(event.monitor_loss_after)
    effect = feedback_effect([dataclasses.asdict(event)], fb.attempts)
    assert effect["feedback_attempts"] == len(fb.attempts)
    changes = [a["val_loss_after"] - a["val_loss_before"] for a in fb.attempts]
    assert effect["feedback_attempt_val_change"] == pytest.approx(sum(changes) / len(changes))
    assert effect["feedback_bits"] == event.bits_added
