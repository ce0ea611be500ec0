"""CompressionLoss: the method's loss in one place, the same in the Trainer and a user's loop."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from sgsc.core.compress import SelfCompression
from sgsc.core.loss import CompressionLoss, weights_l1
from sgsc.core.safety import SafetyGuidance
from sgsc.experiments.models import CNNConfig, build_model
from sgsc.experiments.train import TrainConfig, Trainer


def _cnn():
    torch.manual_seed(0)
    return build_model("mnist_cnn", **dataclasses.asdict(CNNConfig.for_digits()))


def test_each_term_is_what_its_piece_computes_and_the_sum_weighs_them(digits):
    model = _cnn()
    reference = copy.deepcopy(model).eval()
    sc = SelfCompression(model)
    with torch.no_grad():
        sc.bit_depths()["conv2"][:3] = 0.0
        model.conv2.bias[:3] = 0.5  # a dead channel's bias: the dead-bias term sees it
    guard = SafetyGuidance(reference, sc, digits.train, size=50, seed=0)
    loss_fn = CompressionLoss(sc, guard, gamma=0.1, l1_weights=0.3, l1_dead_bias=0.01,
                              lambda_pres=2.0)
    x, y = digits.train.tensors[0][:16], digits.train.tensors[1][:16]
    model.eval()  # BatchNorm's statistics stay put between the terms and their checks
    generator = guard.generator.get_state()
    terms = {k: v.item() for k, v in loss_fn.terms(x, y).items()}
    assert list(terms) == ["task", "l1", "size", "dead_bias", "preservation"]
    assert terms["task"] == pytest.approx(F.cross_entropy(model(x), y).item())
    assert terms["l1"] == pytest.approx(weights_l1(model).item())
    assert terms["size"] == pytest.approx(sc.size_loss().item())
    assert terms["dead_bias"] == pytest.approx(1.5)
    guard.generator.set_state(generator)  # the preservation batch drawn again
    assert terms["preservation"] == pytest.approx(guard.preservation_loss().item())
    expected = (terms["task"] + 0.3 * terms["l1"] + 0.1 * terms["size"]
                + 0.01 * terms["dead_bias"] + 2.0 * terms["preservation"])
    guard.generator.set_state(generator)
    assert loss_fn(x, y).item() == pytest.approx(expected)


def test_terms_exist_only_where_their_piece_does():
    model = _cnn()
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    assert list(CompressionLoss(model).terms(x, y)) == ["task"]
    assert list(CompressionLoss(SelfCompression(model), l1_dead_bias=0).terms(x, y)) == [
        "task", "size"]
    size = CompressionLoss(_cnn(), gamma=0.5, size=lambda: torch.tensor(3.0))
    assert size.terms(x, y)["size"].item() == 3.0  # another size estimate (DiffQ's, a rate term)


@pytest.mark.parametrize("kwargs, message", [
    ({"gamma": 0.1}, "needs a SelfCompression"), ({"lambda_pres": 1.0}, "needs a SafetyGuidance"),
    ({"gamma": -1.0}, "finite numbers >= 0"), ({"l1_weights": float("nan")}, "finite")])
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CompressionLoss(_cnn(), **kwargs)
    with pytest.raises(ValueError, match="SelfCompression or an nn.Module"):
        CompressionLoss("model")


def test_the_trainer_trains_with_exactly_this_loss(digits):
    """One epoch of the Trainer against one of a user's loop built from CompressionLoss with
    the Trainer's batches: the same parameters, bit for bit."""
    config = TrainConfig(epochs=1, batch_size=64, gamma=0.1, l1_weights=0.3, lr_quant=0.5,
                         progress=False)
    trained = _cnn()
    trainer = Trainer(trained, digits.train, digits.val, config,
                      compression=SelfCompression(trained))
    batches = list(trainer._batches())  # the same shuffled batches, drawn once here
    trainer.loader_generator.manual_seed(config.seed)
    trainer.train_epoch()

    own = _cnn()
    sc = SelfCompression(own)
    optimizer = torch.optim.AdamW(sc.param_groups(lr_quant=0.5, eps_quant=config.eps_quant,
                                                  lr_weights=config.lr))
    total = len(batches)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + torch.cos(torch.tensor(torch.pi * min(s, total) / total))
                                    .item()))
    loss_fn = CompressionLoss(sc, gamma=0.1, l1_weights=0.3)
    own.train()
    for x, y in batches:
        loss = loss_fn(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    for (name, a), b in zip(trained.state_dict().items(), own.state_dict().values(),
                            strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


def test_the_readme_loop_uses_this_loss():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "CompressionLoss(" in readme and "loss_fn(x, y)" in readme
