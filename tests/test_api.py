"""The public names other work depends on, and the README's library example."""

from __future__ import annotations

import torch

import sgsc
from sgsc.models import build_model


def test_public_names():
    for name in ("SelfCompression", "save_compressed", "load_compressed",
                 "build_preservation_set"):
        assert callable(getattr(sgsc, name)), name
    for method in ("size_loss", "storage_bits", "live_weights", "bit_depths", "exponents",
                   "quantized_weights", "param_groups", "prune"):
        assert callable(getattr(sgsc.SelfCompression, method)), method


def test_readme_example_round_trip(tmp_path):
    model = build_model("mnist_cnn").eval()
    sc = sgsc.SelfCompression(model, init_bits=8)
    with torch.no_grad():
        sc.bit_depths()["conv2"][:8] = 0.0  # a quarter of conv2's channels die
    path = tmp_path / "model.sgsc"
    sgsc.save_compressed(sc, path)
    loaded = sgsc.load_compressed(path)
    x = torch.randn(4, 1, 28, 28)
    assert torch.allclose(loaded(x), model(x), atol=1e-5)
    assert loaded.conv2.out_channels == 24
    assert abs(path.stat().st_size - sc.storage_bits() / 8) <= 0.01 * sc.storage_bits() / 8 + 1024
