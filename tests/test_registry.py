"""The architectures a packed file can name: registration, rebuilding, clear errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import sgsc
from sgsc.fileformat.registry import MODEL_REGISTRY, build_model, register_model, registered_name


@dataclasses.dataclass
class TinyConfig:
    width: int = 4


class Tiny(nn.Module):
    config_class = TinyConfig

    def __init__(self, config: TinyConfig) -> None:
        super().__init__()
        self.config = config
        self.fc = nn.Linear(3, config.width)

    def forward(self, x):
        return self.fc(x)


@pytest.fixture
def tiny_registered():
    register_model("tiny-test")(Tiny)
    yield
    MODEL_REGISTRY.pop("tiny-test")


def test_the_package_registers_its_own_models():
    assert {"mnist_cnn", "char_transformer"} <= set(MODEL_REGISTRY)
    model = build_model("mnist_cnn")
    assert registered_name(model) == "mnist_cnn"
    assert registered_name(nn.Linear(2, 2)) is None


def test_a_registered_model_reloads_from_its_file_alone(tiny_registered, tmp_path):
    model = build_model("tiny-test", width=5)
    assert isinstance(model, Tiny) and model.fc.out_features == 5
    sc = sgsc.SelfCompression(model, example_input=torch.randn(2, 3))
    sgsc.save_compressed(sc, tmp_path / "tiny.sgsc")
    loaded = sgsc.load_compressed(tmp_path / "tiny.sgsc")
    x = torch.randn(4, 3)
    assert isinstance(loaded, Tiny) and torch.allclose(loaded(x), model(x), atol=1e-6)


def test_bad_names_and_fields_are_clear_errors(tiny_registered):
    with pytest.raises(ValueError, match="unknown model 'nope'.*tiny-test"):
        build_model("nope")
    with pytest.raises(ValueError, match="unknown config field.*depth.*valid fields: width"):
        build_model("tiny-test", depth=2)
    other = type("Other", (Tiny,), {})
    with pytest.raises(ValueError, match="taken by Tiny"):
        register_model("tiny-test")(other)
    with pytest.raises(TypeError, match="dataclass config_class"):
        register_model("linear")(nn.Linear)
