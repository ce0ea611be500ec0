"""Pruning removes dead channels and heads while the eval-mode function stays the same."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from sgsc.experiments.models import CharTransformer, MnistCNN, TransformerConfig
from sgsc.structure.graph import ChannelDependency, ChannelGraph
from sgsc.structure.prune import count_flops, prune_channels, replace_tensor

ATOL = 1e-5


def masks(model: nn.Module, dead: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """Bool row masks from lists of dead row indices."""
    out = {}
    for name, rows in dead.items():
        mask = torch.zeros(model.get_submodule(name).weight.shape[0], dtype=torch.bool)
        mask[rows] = True
        out[name] = mask
    return out


def kill_rows(model: nn.Module, dead: dict[str, list[int]]) -> None:
    """Zero the weight rows (as quantisation to 0 bits would); biases stay non-zero."""
    with torch.no_grad():
        for name, rows in dead.items():
            model.get_submodule(name).weight[rows] = 0


def random_cnn() -> MnistCNN:
    """An eval-mode CNN with non-trivial biases and BatchNorm statistics."""
    model = MnistCNN()
    with torch.no_grad():
        for bn in (model.bn1, model.bn2):
            bn.weight.normal_(1.0, 0.3)
            bn.bias.normal_(0.0, 0.3)
            bn.running_mean.normal_(0.0, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
        for conv in (model.conv1, model.conv2, model.conv3, model.conv4):
            conv.bias.normal_(0.0, 0.5)
            conv.bias[:4] = torch.tensor([0.7, -0.3, 0.2, 0.5])  # some ReLU-positive ones
    return model.eval()


CNN_DEAD = {"conv1": [0, 1, 5], "conv2": [0, 3, 7, 31], "conv3": [2], "conv4": [0, 2, 10, 63]}


def test_cnn_pruning_keeps_outputs():
    model = random_cnn()
    kill_rows(model, CNN_DEAD)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        expected = model(x)
    result = prune_channels(model, masks(model, CNN_DEAD), model.channel_graph(),
                            model.example_input())
    with torch.no_grad():
        got = model(x)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    assert result.removed_channels == {"conv1": 3, "conv2": 4, "conv3": 1, "conv4": 4}
    assert result.removed_heads == 0
    assert result.params_after < result.params_before
    assert result.params_after == sum(p.numel() for p in model.parameters())
    assert result.flops_after < result.flops_before
    assert result.new_parameters == []
    # Shape attributes follow the tensors.
    assert (model.conv2.in_channels, model.conv2.out_channels) == (29, 28)
    assert model.bn1.num_features == 28 and model.bn1.running_mean.shape == (28,)
    assert model.fc.in_features == 60 * 9 and model.fc.weight.shape == (10, 540)
    assert (model.conv4.in_channels, model.conv4.out_channels) == (63, 60)


def test_cnn_kept_indices_describe_the_slicing():
    model = random_cnn()
    kill_rows(model, CNN_DEAD)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = prune_channels(model, masks(model, CNN_DEAD), model.channel_graph(),
                            model.example_input())
    params = dict(model.named_parameters())
    assert set(result.kept) <= set(params)
    conv2 = result.kept["conv2.weight"]
    assert set(conv2) == {0, 1}
    assert conv2[0].tolist() == [i for i in range(32) if i not in CNN_DEAD["conv2"]]
    assert conv2[1].tolist() == [i for i in range(32) if i not in CNN_DEAD["conv1"]]
    fc_cols = result.kept["fc.weight"][1]
    assert fc_cols[:9].tolist() == list(range(9, 18))  # channel 0 of conv4 is gone
    for name, param in params.items():
        if name in result.kept and not name.endswith("bias"):
            # Weights: the pruned tensor is the old one cut by kept.
            torch.testing.assert_close(param.detach(), result.select(name, before[name]))
    # Optimizer-state-shaped tensors are cut the same way.
    assert result.select("bn1.weight", torch.ones(32)).shape == (28,)
    assert result.select("fc.bias", torch.ones(10)).shape == (10,)


def test_count_flops_of_the_mnist_cnn():
    model = MnistCNN()
    expected = 24 * 24 * 32 * 25 + 20 * 20 * 32 * 32 * 25 + 8 * 8 * 64 * 32 * 9 \
        + 6 * 6 * 64 * 64 * 9 + 576 * 10
    assert count_flops(model, model.example_input()) == expected


def test_probe_restores_training_mode_and_running_stats():
    model = random_cnn().train()
    stats = model.bn1.running_mean.clone()
    kill_rows(model, {"conv1": [0]})
    prune_channels(model, masks(model, {"conv1": [0]}), model.channel_graph(),
                   model.example_input())
    assert model.training and model.bn1.training
    assert torch.equal(model.bn1.running_mean, stats)


def test_nothing_dead_changes_nothing():
    model = random_cnn()
    shapes = [p.shape for p in model.parameters()]
    result = prune_channels(model, masks(model, {"conv1": []}), model.channel_graph(),
                            model.example_input())
    assert [p.shape for p in model.parameters()] == shapes
    assert result.kept == {} and result.params_after == result.params_before


def test_all_channels_dead_keeps_one():
    model = random_cnn()
    everything = {"conv3": list(range(64))}
    kill_rows(model, everything)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        expected = model(x)
    result = prune_channels(model, masks(model, everything), model.channel_graph(),
                            model.example_input())
    assert result.removed_channels == {"conv3": 63} and model.conv3.out_channels == 1
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------- transformer


def random_transformer() -> CharTransformer:
    config = TransformerConfig(vocab_size=13, block_size=16, n_embd=32, n_head=4, n_layer=3)
    model = CharTransformer(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0.0, 0.3)  # the default init zeros them, which hides bugs
    return model.eval()


def head_rows(model: CharTransformer, heads: list[int]) -> list[int]:
    hs = model.config.head_size
    return [h * hs + i for h in heads for i in range(hs)]


def test_transformer_pruning_keeps_outputs():
    model = random_transformer()
    dead = {}
    for proj in "qkv":
        dead[f"blocks.0.attn.{proj}"] = head_rows(model, [1])
        dead[f"blocks.2.attn.{proj}"] = head_rows(model, [0, 3])
    dead["blocks.1.attn.q"] = head_rows(model, [2])  # q alone dead: the head stays
    dead["blocks.1.mlp.fc1"] = [3, 10, 100]
    with torch.no_grad():
        model.blocks[1].mlp.fc1.bias[[3, 10]] = 0.8  # ReLU passes these constants on
    kill_rows(model, dead)
    idx = torch.randint(13, (3, 16))
    with torch.no_grad():
        expected = model(idx)[0]
    result = prune_channels(model, masks(model, dead), model.channel_graph(),
                            model.example_input())
    with torch.no_grad():
        got = model(idx)[0]
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    assert result.removed_heads == 3
    assert result.removed_channels == {"blocks.1.mlp.fc1": 3}
    assert [b.attn.n_head for b in model.blocks] == [3, 4, 2]
    assert model.blocks[2].attn.proj.in_features == 16
    assert model.blocks[1].mlp.fc2.in_features == 125
    assert result.kept["blocks.0.attn.v.bias"][0].tolist() == list(range(8)) + list(range(16, 32))
    assert result.flops_after < result.flops_before


def test_transformer_without_any_head_left():
    model = random_transformer()
    dead = {f"blocks.1.attn.{p}": head_rows(model, [0, 1, 2, 3]) for p in "qkv"}
    kill_rows(model, dead)
    idx = torch.randint(13, (2, 16))
    with torch.no_grad():
        expected = model(idx)[0]
    result = prune_channels(model, masks(model, dead), model.channel_graph(),
                            model.example_input())
    assert result.removed_heads == 4 and model.blocks[1].attn.n_head == 0
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], expected, atol=ATOL, rtol=0)


def test_folding_creates_a_missing_bias():
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3, bias=False)).eval()
    with torch.no_grad():
        model[0].weight[2] = 0
        model[0].bias[2] = 1.5
    graph = ChannelGraph(channels=(ChannelDependency("0", ("2",)),))
    x = torch.randn(7, 5)
    with torch.no_grad():
        expected = model(x)
    result = prune_channels(model, {"0": torch.arange(6) == 2}, graph, x[:2])
    assert result.new_parameters == ["2.bias"]
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------- parametrized


class RowScale(nn.Module):
    """A minimal per-row parametrization: scale 0 zeroes a row, like a zero bit depth."""

    def __init__(self, rows: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.rand(rows) + 0.5)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.scale.view(-1, *[1] * (weight.dim() - 1))

    def select_channels(self, index: torch.Tensor) -> None:
        self.scale = nn.Parameter(self.scale[index].clone())


def parametrized_parity(model: nn.Module, make, set_dead, dead: dict[str, list[int]], x):
    """Parametrize every conv/linear, zero ``dead`` rows through the parametrization, prune."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            parametrize.register_parametrization(module, "weight", make(module.weight))
    for name, rows in dead.items():
        set_dead(model.get_submodule(name).parametrizations.weight[0], rows)
    with torch.no_grad():
        expected = model(x)
    result = prune_channels(model, masks(model, dead), model.channel_graph(),
                            model.example_input())
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, atol=ATOL, rtol=0)
    return result


def test_parametrized_cnn_pruning():
    model = random_cnn()

    def set_dead(p, rows):
        with torch.no_grad():
            p.scale[rows] = 0

    result = parametrized_parity(model, lambda w: RowScale(w.shape[0]), set_dead, CNN_DEAD,
                                 torch.randn(3, 1, 28, 28))
    original = model.conv2.parametrizations.weight.original
    assert original.shape == (28, 29, 5, 5) and model.conv2.weight.shape == (28, 29, 5, 5)
    assert model.conv2.parametrizations.weight[0].scale.shape == (28,)
    assert result.kept["conv2.parametrizations.weight.0.scale"][0].shape == (28,)
    assert set(result.kept["conv2.parametrizations.weight.original"]) == {0, 1}
    assert "conv2.weight" not in result.kept
    assert set(result.kept) <= {n for n, _ in model.named_parameters()}


def test_channel_quantizer_cnn_pruning():
    quant = pytest.importorskip("sgsc.core.quant")

    def set_dead(q, rows):
        with torch.no_grad():
            q.bit_depth[rows] = 0.0

    model = random_cnn()
    result = parametrized_parity(model, lambda w: quant.ChannelQuantizer.maxabs(w, 8.0),
                                 set_dead, CNN_DEAD, torch.randn(3, 1, 28, 28))
    assert model.conv4.parametrizations.weight[0].bit_depth.shape == (60,)
    assert "conv4.parametrizations.weight.0.exponent" in result.kept


def test_channel_quantizer_transformer_pruning():
    quant = pytest.importorskip("sgsc.core.quant")

    def set_dead(q, rows):
        with torch.no_grad():
            q.bit_depth[rows] = -1.0

    model = random_transformer()
    dead = {f"blocks.0.attn.{p}": head_rows(model, [2]) for p in "qkv"}
    dead["blocks.2.mlp.fc1"] = [0, 7]
    result = parametrized_parity(model, lambda w: quant.ChannelQuantizer.maxabs(w, 8.0),
                                 set_dead, dead, torch.randint(13, (2, 16)))
    assert result.removed_heads == 1 and model.blocks[0].attn.n_head == 3


# ----------------------------------------------------------------------------- errors


def test_rows_that_are_not_zero_are_refused():
    model = random_cnn()
    with pytest.raises(ValueError, match="not constant"):
        prune_channels(model, masks(model, {"conv2": [3]}), model.channel_graph(),
                       model.example_input())


def padded_model(bias: float) -> tuple[nn.Module, ChannelGraph]:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1)).eval()
    with torch.no_grad():
        model[0].weight[1] = 0
        model[0].bias[1] = bias
    return model, ChannelGraph(channels=(ChannelDependency("0", ("2",)),))


def test_padded_consumer_with_zero_constant_is_fine():
    model, graph = padded_model(-1.0)  # relu(-1) = 0: nothing to fold
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        expected = model(x)
    prune_channels(model, {"0": torch.arange(4) == 1}, graph, x[:1])
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, atol=ATOL, rtol=0)


def test_padded_consumer_with_nonzero_constant_is_refused():
    model, graph = padded_model(1.0)
    with pytest.raises(ValueError, match="zero-pads"):
        prune_channels(model, {"0": torch.arange(4) == 1}, graph, torch.randn(1, 1, 8, 8))


def test_bad_dead_rows_are_refused():
    model = random_cnn()
    graph = model.channel_graph()
    with pytest.raises(ValueError, match="not a module"):
        prune_channels(model, {"conv9": torch.zeros(3, dtype=torch.bool)}, graph, None)
    with pytest.raises(ValueError, match="32 output rows"):
        prune_channels(model, {"conv1": torch.zeros(3, dtype=torch.bool)}, graph, None)


# ----------------------------------------------------------------------------- replace_tensor


def test_replace_tensor_updates_shape_attributes():
    model = MnistCNN()
    replace_tensor(model, "conv2.weight", torch.zeros(7, 5, 5, 5))
    assert (model.conv2.out_channels, model.conv2.in_channels) == (7, 5)
    assert isinstance(model.conv2.weight, nn.Parameter)
    replace_tensor(model, "bn1.running_var", torch.ones(7))
    assert model.bn1.num_features == 32  # follows the weight, which is still 32 long
    replace_tensor(model, "bn1.weight", torch.ones(7))
    assert model.bn1.num_features == 7
    assert "bn1.running_var" in model.state_dict()  # still a (persistent) buffer
    replace_tensor(model, "fc.weight", torch.zeros(10, 63))
    assert model.fc.in_features == 63


def test_replace_tensor_on_parametrized_and_missing():
    model = MnistCNN()
    parametrize.register_parametrization(model.conv1, "weight", RowScale(32))
    replace_tensor(model, "conv1.weight", torch.ones(6, 1, 5, 5))
    assert model.conv1.parametrizations.weight.original.shape == (6, 1, 5, 5)
    assert model.conv1.out_channels == 6
    replace_tensor(model, "conv1.parametrizations.weight.0.scale", torch.ones(6))
    assert model.conv1.weight.shape == (6, 1, 5, 5)
    layer = nn.Linear(3, 2, bias=False)
    replace_tensor(layer, "bias", torch.ones(2))
    assert isinstance(layer.bias, nn.Parameter)
    with pytest.raises(KeyError):
        replace_tensor(model, "conv1.nothing", torch.ones(1))
    with pytest.raises(KeyError):
        replace_tensor(model, "conv9.weight", torch.ones(1))


def test_a_pruned_state_loads_into_a_fresh_model_and_back():
    from sgsc.core.compress import SelfCompression
    from sgsc.structure.prune import load_state_resizing

    torch.manual_seed(0)
    pruned = MnistCNN()
    sc = SelfCompression(pruned)
    with torch.no_grad():
        sc.bit_depths()["conv2"][:8] = 0.0
        sc.bit_depths()["conv3"][::3] = 0.0
    pruned.eval()
    x = torch.randn(3, 1, 28, 28)
    whole_state = {k: v.clone() for k, v in pruned.state_dict().items()}
    with torch.no_grad():
        expected = pruned(x)
    sc.prune()
    # a fresh, whole model takes the smaller state: shapes, attributes and outputs follow
    fresh = MnistCNN()
    SelfCompression(fresh)
    assert load_state_resizing(fresh, pruned.state_dict())
    assert fresh.conv2.out_channels == 24 and fresh.conv3.in_channels == 24
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), expected, atol=ATOL, rtol=0)
    # and the pruned model takes the larger state back
    assert load_state_resizing(pruned, whole_state)
    assert pruned.conv2.out_channels == 32
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), expected, atol=ATOL, rtol=0)
    assert not load_state_resizing(pruned, whole_state)  # same shapes: nothing to resize
