"""BatchNorm folded into the quantized layer before it: exact within float rounding, codes
unchanged, the shift into the producer's bias or (after a ReLU) the consumers', and left
alone where it would not fold exactly."""

from __future__ import annotations

import copy

import torch
from torch import nn

from sgsc.core.compress import SelfCompression
from sgsc.experiments.models import build_model
from sgsc.fileformat.fold import fold_batchnorms, identity
from sgsc.structure.graph import ChannelDependency, ChannelGraph


def _with_statistics(model: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    torch.manual_seed(0)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(*shape) * 2 + 0.3)
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.normal_()
    return model.eval()


def test_a_batchnorm_after_a_relu_folds_into_exponents_and_the_consumers_biases():
    sc = SelfCompression(_with_statistics(build_model("mnist_cnn"), (8, 1, 28, 28)))
    with torch.no_grad():
        for bits in sc.bit_depths().values():
            bits.fill_(5.0)
    x = torch.randn(6, 1, 28, 28)
    reference = sc.model(x)
    codes = {n: q.exponent.clone() for n, q in sc.quantizers.items()}
    before = {n: w.detach() * torch.exp2(-codes[n]).view(-1, *[1] * (w.dim() - 1))
              for n, w in sc.quantized_weights().items()}
    folded = copy.deepcopy(sc)
    assert fold_batchnorms(folded, x[:2]) == [("bn1", "conv2"), ("bn2", "conv4")]
    torch.testing.assert_close(folded.model(x), reference, rtol=1e-4, atol=1e-6)
    for name, weight in folded.quantized_weights().items():  # the same integer codes
        exponent = folded.quantizers[name].exponent.view(-1, *[1] * (weight.dim() - 1))
        assert torch.equal(torch.round(weight.detach() * torch.exp2(-exponent)),
                           torch.round(before[name]))
    bn = folded.model.bn1
    assert torch.equal(bn.weight, torch.ones_like(bn.weight))
    assert torch.equal(bn.running_var, torch.full_like(bn.running_var, 1 - bn.eps))


def test_a_batchnorm_right_after_its_producer_takes_the_producers_bias():
    model = _with_statistics(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                                           nn.Conv2d(4, 2, 3, padding=1)), (4, 1, 8, 8))
    graph = ChannelGraph(channels=(ChannelDependency("0", ("3",), ("1",)),))
    sc = SelfCompression(model, graph=graph)
    x = torch.randn(3, 1, 8, 8)
    reference = model(x)
    bias = model[0].bias.detach().clone()
    assert fold_batchnorms(sc, x) == [("1", "0")]
    assert not torch.equal(model[0].bias, bias)  # the shift went into the producer's bias
    torch.testing.assert_close(model(x), reference, rtol=1e-4, atol=1e-6)


def test_what_would_not_fold_exactly_is_left_as_it_was():
    model = _with_statistics(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.BatchNorm2d(4),
                                           nn.Conv2d(4, 2, 3, padding=1)), (4, 1, 8, 8))
    graph = ChannelGraph(channels=(ChannelDependency("0", ("3",), ("2",)),))
    sc = SelfCompression(model, graph=graph)
    state = copy.deepcopy(model.state_dict())
    # after a ReLU the shift must go to the consumer, which zero-pads: not exact
    assert fold_batchnorms(sc, torch.randn(2, 1, 8, 8)) == []
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_identity_resizes_a_batchnorm_to_its_producer():
    bn = nn.BatchNorm2d(8).eval()
    identity(bn, 3)
    x = torch.randn(2, 3, 4, 4)
    assert bn.num_features == 3 and torch.equal(bn(x), x)
