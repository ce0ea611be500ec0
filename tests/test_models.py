"""The study's networks: shapes, parameter counts, channel graphs, configs, errors."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

from sgsc.experiments.models import (
    MODEL_REGISTRY,
    CharTransformer,
    CNNConfig,
    MnistCNN,
    TransformerConfig,
    build_model,
)


def small_transformer(**overrides) -> CharTransformer:
    config = dict(vocab_size=11, block_size=8, n_embd=16, n_head=4, n_layer=2) | overrides
    return CharTransformer(TransformerConfig(**config))


# ----------------------------------------------------------------------------- MNIST CNN


def test_mnist_cnn_parameter_counts_match_the_study():
    model = MnistCNN()
    counts = {n: p.numel() for n, p in model.named_parameters()}
    assert counts["conv1.weight"] == 800
    assert counts["conv2.weight"] == 25600
    assert counts["conv3.weight"] == 18432
    assert counts["conv4.weight"] == 36864
    assert counts["fc.weight"] == 5760
    assert model.config.feature_size == 3


def test_mnist_cnn_shapes():
    model = MnistCNN().eval()
    x = torch.randn(5, 1, 28, 28)
    assert model(x).shape == (5, 10)
    assert model.features(x).shape == (5, 576)
    assert model.example_input().shape == (1, 1, 28, 28)
    assert isinstance(model.get_submodule(model.last_conv), nn.Conv2d)


def test_digits_variant_runs_on_8x8():
    model = MnistCNN(CNNConfig.for_digits()).eval()
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    assert model.fc.in_features == model.config.widths[-1]  # 1x1 final feature map


def test_example_inputs_are_deterministic():
    assert torch.equal(MnistCNN().example_input(), MnistCNN().example_input())
    model = small_transformer()
    assert torch.equal(model.example_input(), model.example_input())


# ----------------------------------------------------------------------------- transformer


def test_transformer_forward_and_loss():
    model = small_transformer()
    idx = torch.randint(11, (3, 8))
    logits, loss = model(idx)
    assert logits.shape == (3, 8, 11) and loss is None
    logits, loss = model(idx, idx)
    assert loss.shape == () and torch.isfinite(loss)
    # Untrained model with small init: loss is close to uniform guessing.
    assert abs(loss.item() - torch.log(torch.tensor(11.0)).item()) < 0.5


def test_transformer_is_causal():
    model = small_transformer().eval()
    idx = torch.randint(11, (1, 8))
    changed = idx.clone()
    changed[0, -1] = (idx[0, -1] + 1) % 11
    assert torch.allclose(model(idx)[0][:, :-1], model(changed)[0][:, :-1], atol=1e-6)


def test_transformer_rejects_long_sequences():
    with pytest.raises(ValueError, match="block_size"):
        small_transformer()(torch.zeros(1, 9, dtype=torch.long))


def test_attention_runs_after_heads_are_removed():
    model = small_transformer().eval()
    attn = model.blocks[0].attn
    hs = attn.head_size
    # Keep heads 0 and 2 of 4 by slicing the projections by hand.
    rows = torch.cat([torch.arange(0, hs), torch.arange(2 * hs, 3 * hs)])
    for name in ("q", "k", "v"):
        old = getattr(attn, name)
        new = nn.Linear(16, len(rows))
        new.weight.data, new.bias.data = old.weight.data[rows], old.bias.data[rows]
        setattr(attn, name, new)
    proj = nn.Linear(len(rows), 16)
    proj.weight.data, proj.bias.data = attn.proj.weight.data[:, rows], attn.proj.bias.data
    attn.proj = proj
    assert attn.n_head == 2
    logits, _ = model(torch.randint(11, (2, 8)))
    assert logits.shape == (2, 8, 11)


def test_generate_appends_tokens():
    model = small_transformer().eval()
    out = model.generate(torch.zeros(1, 1, dtype=torch.long), 12, top_k=3)
    assert out.shape == (1, 13)


# ----------------------------------------------------------------------------- graphs


@pytest.mark.parametrize("model", [MnistCNN(), small_transformer()], ids=["cnn", "transformer"])
def test_channel_graph_names_exist(model):
    modules = dict(model.named_modules())
    graph = model.channel_graph()
    for link in graph.channels:
        for name in (link.producer, *link.consumers, *link.followers):
            assert name in modules, name
    for block in graph.heads:
        for name in (block.queries, block.keys, block.values, block.output):
            assert isinstance(modules[name], nn.Linear), name
        assert modules[block.queries].out_features % block.head_size == 0


def test_cnn_graph_structure():
    graph = MnistCNN().channel_graph()
    assert graph.producer_of("fc").producer == "conv4"
    assert graph.producer_of("conv3").followers == ("bn1",)
    assert graph.heads == ()


def test_transformer_graph_structure():
    model = small_transformer()
    graph = model.channel_graph()
    assert len(graph.heads) == len(graph.channels) == 2
    assert graph.head_block_of("blocks.1.attn.v").output == "blocks.1.attn.proj"
    assert graph.producer_of("blocks.0.mlp.fc2").producer == "blocks.0.mlp.fc1"


# ----------------------------------------------------------------------------- configs


@pytest.mark.parametrize("name, config", [
    ("mnist_cnn", CNNConfig()),
    ("mnist_cnn", CNNConfig.for_digits()),
    ("char_transformer", TransformerConfig(vocab_size=11, n_layer=1, bias=False)),
])
def test_config_round_trip(name, config):
    model = build_model(name, **dataclasses.asdict(config))
    assert isinstance(model, MODEL_REGISTRY[name])
    assert model.config == config
    # Through JSON (tuples come back as lists) as a run record would store it.
    again = build_model(name, **json.loads(json.dumps(dataclasses.asdict(model.config))))
    assert again.config == config
    assert [p.shape for p in again.parameters()] == [p.shape for p in model.parameters()]


def test_transformer_without_bias_has_no_biases():
    model = small_transformer(bias=False)
    assert not [n for n, _ in model.named_parameters() if n.endswith("bias")]


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="char_transformer, mnist_cnn"):
        build_model("resnet")


def test_unknown_config_field_is_named():
    with pytest.raises(ValueError, match="n_heads.*valid fields"):
        build_model("char_transformer", n_heads=4)


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_embd=30, n_head=4), "divisible"),
    (dict(n_layer=0), "n_layer"),
    (dict(dropout=1.5), "dropout"),
])
def test_bad_transformer_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TransformerConfig(**kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(image_size=8), "for_digits"),
    (dict(widths=(32, 32, 64)), "widths"),
    (dict(kernel_sizes=5), "kernel_sizes"),
    (dict(num_classes=0), "num_classes"),
])
def test_bad_cnn_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CNNConfig(**kwargs)
