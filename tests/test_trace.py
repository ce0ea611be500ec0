"""Any model a user brings: channel dependencies traced, pruned with the same outputs,
saved and reloaded into a fresh instance with the same outputs.

Every model runs in eval mode with non-trivial BatchNorm statistics and about a third of
its channels at zero bits; the package's CNN and transformer (hand-declared graphs) pass
the same checks.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torchvision
from torch import nn

import sgsc
from sgsc.core.compress import SelfCompression
from sgsc.experiments.models import build_model
from sgsc.structure.graph import ChannelDependency
from sgsc.structure.trace import trace_channel_graph


def lenet5() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(256, 120), nn.ReLU(),
                         nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64),
                         nn.ReLU(), nn.Linear(64, 10))


MODELS = {
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=10), (2, 3, 32, 32)),
    "mobilenet_v3_small": (lambda: torchvision.models.mobilenet_v3_small(num_classes=10),
                           (2, 3, 64, 64)),
    "lenet5": (lenet5, (2, 1, 28, 28)),
    "mlp": (mlp, (2, 1, 8, 8)),
    "mnist_cnn": (lambda: build_model("mnist_cnn"), (2, 1, 28, 28)),
    "char_transformer": (lambda: build_model("char_transformer", vocab_size=27), (2, 32)),
}


def _prepared(name: str):
    """(model with BN statistics of its own and a third of its rows at 0 bits, its
    SelfCompression, an input batch, the reference output, the model's factory)."""
    make, shape = MODELS[name]
    torch.manual_seed(0)
    model = make()
    images = len(shape) == 4
    x = torch.randn(*shape) if images else torch.randint(27, shape)
    if images:  # BatchNorm running statistics that are not the defaults
        model.train()
        with torch.no_grad():
            for _ in range(3):
                model(torch.randn(*shape) * 2 + 0.5)
    model.eval()
    sc = SelfCompression(model, example_input=x[:1])
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for bits in sc.bit_depths().values():
            bits[torch.rand(bits.shape, generator=generator) < 1 / 3] = 0.0
        reference = _output(model, x)
    return model, sc, x, reference, make


def _output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model.eval()(x)
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("name", list(MODELS))
def test_pruning_removes_channels_and_keeps_the_outputs(name):
    _, sc, x, reference, _ = _prepared(name)
    pruned = copy.deepcopy(sc)
    result = pruned.prune()
    assert result.params_after < result.params_before  # channels really went
    torch.testing.assert_close(_output(pruned.model, x), reference, atol=1e-5, rtol=1e-4)
    assert pruned.storage_bits() == sc.storage_bits()  # pruning never changes the size


@pytest.mark.parametrize("name", list(MODELS))
def test_a_saved_model_reloads_with_the_same_outputs_at_its_counted_size(name, tmp_path):
    _, sc, x, reference, make = _prepared(name)
    path = tmp_path / f"{name}.sgsc"
    info = sgsc.save_compressed(sc, path, coding="entropy")
    packed = sgsc.save_compressed(sc, tmp_path / "packed.sgsc", fold=False,
                                  trim_bit_depths=False)
    assert packed.payload_bytes == -(-sc.storage_bits() // 8)  # the counted size, exactly
    assert info.file_bytes <= packed.file_bytes
    registered = name in ("mnist_cnn", "char_transformer")
    loaded = sgsc.load_compressed(path) if registered else sgsc.load_compressed(path,
                                                                                model=make())
    torch.testing.assert_close(_output(loaded, x), reference, atol=1e-5, rtol=1e-4)


def test_the_tracer_couples_residual_streams_and_depthwise_convolutions():
    resnet = torchvision.models.resnet18(num_classes=10).eval()
    graph = trace_channel_graph(resnet, torch.randn(1, 3, 32, 32))
    by_producer = {link.producer: link for link in graph.channels}
    inner = by_producer["layer1.0.conv1"]  # conv1 -> bn1 -> relu -> conv2 in a block
    assert inner.consumers == ("layer1.0.conv2",) and inner.followers == ("layer1.0.bn1",)
    stream = next(link for link in graph.channels if "layer1.0.conv2" in link.producers)
    # the stem and every block of stage 1 write the same channels (residual adds)
    assert set(stream.producers) == {"conv1", "layer1.0.conv2", "layer1.1.conv2"}
    assert {"layer1.0.conv1", "layer2.0.conv1", "layer2.0.downsample.0"} <= \
        set(stream.consumers)
    assert "fc" not in by_producer  # the model's output: a barrier
    mobile = torchvision.models.mobilenet_v3_small(num_classes=10).eval()
    graph = trace_channel_graph(mobile, torch.randn(1, 3, 64, 64))
    depthwise = [name for name, m in mobile.named_modules()
                 if isinstance(m, nn.Conv2d) and m.groups > 1]
    coupled = {c for link in graph.channels for c in link.coupled}
    assert set(depthwise) <= coupled and graph.exact_only


def test_what_the_tracer_cannot_follow_is_kept():
    class Concat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)
            self.head = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.head(torch.cat([self.a(x), self.b(x)], 1))

    graph = trace_channel_graph(Concat(), torch.randn(1, 3, 8, 8))
    assert [link.producer for link in graph.channels] == []  # a concat is a barrier

    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x  # data-dependent: fx cannot trace it

    with pytest.raises(ValueError, match="cannot be traced.*ChannelGraph"):
        trace_channel_graph(Branchy(), torch.randn(1, 3))


def test_an_unfoldable_channel_is_kept_not_refused():
    """A dead channel whose BatchNorm shift feeds a zero-padded conv a non-zero constant."""
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 3, padding=1))
    with torch.no_grad():
        model[0].bias[:2] = 0.0
        model[1].bias.copy_(torch.tensor([0.0, 0.5, 0.0, 0.0]))  # channel 1: constant 0.5
    model.eval()
    x = torch.randn(2, 1, 10, 10)
    sc = SelfCompression(model, example_input=x[:1])
    with torch.no_grad():
        sc.bit_depths()["0"][:2] = 0.0  # channel 0 folds (constant 0), channel 1 cannot
        reference = model(x)
    assert sc.graph.channels == (ChannelDependency("0", ("2",), ("1",)),)
    pruned = copy.deepcopy(sc)
    pruned.prune()
    assert pruned.model[0].out_channels == 3  # one removed, one kept
    torch.testing.assert_close(pruned.model(x), reference, atol=1e-6, rtol=1e-5)
    assert pruned.storage_bits() == sc.storage_bits()


@pytest.mark.parametrize("name", ["lenet5", "mlp", "resnet18", "mobilenet_v3_small"])
def test_a_bare_wrap_is_traced_at_the_first_forward_and_removes_zero_bit_channels(name,
                                                                                  tmp_path):
    """No channel_graph(), no example_input: as a new user writes it."""
    make, shape = MODELS[name]
    torch.manual_seed(0)
    model = make().eval()
    sc = SelfCompression(model)
    assert sc.graph_pending and not sc.graph
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for bits in sc.bit_depths().values():
            bits[torch.rand(bits.shape, generator=generator) < 1 / 3] = 0.0
    x = torch.randn(*shape)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # these four trace completely: no warning
        reference = _output(model, x)  # the first forward pass traces the graph
    assert not sc.graph_pending and sc.graph.channels
    assert sc.example_input.shape[0] <= shape[0]
    before = sum(p.numel() for p in model.parameters())
    result = sc.prune()
    assert result.params_after < before
    torch.testing.assert_close(_output(model, x), reference, atol=1e-4, rtol=1e-4)
    exact = sgsc.save_compressed(sc, tmp_path / "exact.sgsc", fold=False,
                                 trim_bit_depths=False)
    assert exact.payload_bytes == -(-sc.storage_bits() // 8)  # at the learned depths
    info = sgsc.save_compressed(sc, tmp_path / "m.sgsc")  # BatchNorm folded where it folds
    assert info.file_bytes <= exact.file_bytes
    torch.testing.assert_close(_output(sgsc.load_compressed(tmp_path / "m.sgsc", model=make()),
                                       x), reference, atol=1e-4, rtol=1e-4)


def test_one_warning_names_the_layers_whose_channels_stay():
    class Concat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)
            self.head = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.head(torch.cat([self.a(x), self.b(x)], 1))

    sc = SelfCompression(Concat())
    with pytest.warns(UserWarning, match="could not follow the channels of a, b") as caught:
        sc.model(torch.randn(1, 3, 8, 8))
        sc.model(torch.randn(1, 3, 8, 8))  # traced once: no second warning
    assert len(caught) == 1 and sc.graph.untraced == ("a", "b")

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else -x  # data-dependent: fx cannot trace it

    sc = SelfCompression(Branchy())
    with pytest.warns(UserWarning, match="cannot be traced.*Every layer keeps its channels"):
        sc.model(torch.ones(1, 3))
    assert not sc.graph
