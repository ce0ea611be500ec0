"""The public names other work depends on, and the README's and the library page's examples,
executed as written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import sgsc
from sgsc.experiments.models import build_model

ROOT = Path(__file__).resolve().parents[1]


def test_public_names():
    for name in ("SelfCompression", "SafetyGuidance", "FeedbackConfig", "CompressionLoss",
                 "save_compressed", "load_compressed", "reopen_compressed",
                 "build_preservation_set"):
        assert callable(getattr(sgsc, name)), name
    for method in ("size_loss", "storage_bits", "live_weights", "bit_depths", "exponents",
                   "quantized_weights", "param_groups", "prune", "rate_loss"):
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


def _readme_block(marker: str, page: str = "README.md") -> str:
    """The python code block of ``page`` (README.md, or a page under docs/) that contains
    ``marker``."""
    text = (ROOT / page).read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    [block] = [b for b in blocks if marker in b]
    return block


@pytest.mark.parametrize("page", ["README.md", "docs/LIBRARY.md"])
def test_the_own_loop_example_runs_and_every_restore_helps(page, digits, tmp_path, monkeypatch):
    """The own-loop example, executed as written on a torchvision-style dataset of digits
    (two epochs, smaller batches): the method's loss, the feedback's restores, the file."""
    import copy

    from torch.utils.data import DataLoader

    from sgsc.experiments.models import CNNConfig

    class TorchvisionStyle(torch.utils.data.Dataset):
        def __len__(self):
            return len(digits.train)

        def __getitem__(self, i):
            x, y = digits.train[i]
            return x, int(y)

    monkeypatch.chdir(tmp_path)
    code = _readme_block("SafetyGuidance", page).replace("range(6)", "range(2)")
    model = build_model("mnist_cnn", **CNNConfig.for_digits().__dict__)
    float_model = copy.deepcopy(model).eval()
    namespace = {"sgsc": sgsc, "torch": torch, "DataLoader": DataLoader, "model": model,
                 "float_model": float_model, "train_set": TorchvisionStyle()}
    code = code.replace("size=1000", "size=100").replace("batch_size=128", "batch_size=32")
    exec(compile(code, page, "exec"), namespace)
    guard = namespace["guard"]
    assert isinstance(namespace["loss_fn"], sgsc.CompressionLoss)
    assert guard.steps == 2 * (len(guard.task_dataset) // 32 + 1)
    assert [c["step"] for c in guard.checks] == [0, 50]
    for event in guard.events:
        assert event.monitor_loss_after < event.monitor_loss_before
    if page == "README.md":
        loaded = sgsc.load_compressed("model.sgsc", model=build_model(
            "mnist_cnn", **CNNConfig.for_digits().__dict__))
        x = digits.val.tensors[0][:8]
        model.eval()
        assert torch.allclose(loaded(x), model(x), atol=1e-5)


def test_the_readme_loss_weights_are_the_methods_defaults():
    """The README's numbers are sgsc's defaults on MNIST, so copying it runs the method."""
    from sgsc.experiments import defaults

    code = _readme_block("SafetyGuidance")
    mnist = defaults.DEFAULTS["mnist"]["compress"]
    extra = defaults.SGSC_EXTRA
    for phrase in (f"gamma={mnist['gamma']}", f"l1_weights={extra['l1_weights']}",
                   f"lambda_pres={extra['lambda_pres']}", f"lr_quant={mnist['lr_quant']}",
                   f"batch_size={mnist['batch_size']}", f"range({mnist['epochs']})",
                   f"size={defaults.DEFAULTS['mnist']['preservation_size']}"):
        assert phrase in code, phrase


def test_the_method_page_states_the_safety_defaults_that_run():
    from sgsc.core.feedback import FeedbackConfig
    from sgsc.experiments import runs

    text = " ".join((ROOT / "docs" / "METHOD.md").read_text().split())
    cfg = FeedbackConfig()
    for phrase in (f"A seeded {round(cfg.monitor_fraction * 100)} %",
                   f"Every {cfg.every} steps", f"trained {cfg.calibration_steps} steps",
                   f"level + {cfg.threshold} nats", f"within {cfg.event_budget} bits",
                   f"and {cfg.run_budget} per run",
                   f"`l1_weights`, {runs.SGSC_EXTRA['l1_weights']} for sgsc",
                   f"`λp` = {runs.SGSC_EXTRA['lambda_pres']:g}"):
        assert phrase in text, phrase


def test_the_own_model_example_saves_and_reloads(tmp_path, monkeypatch):
    from torch import nn

    class MyNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

        def forward(self, x):
            return self.body(x)

    monkeypatch.chdir(tmp_path)
    x = torch.randn(3, 4)
    namespace = {"sgsc": sgsc, "MyNet": MyNet, "x": x}
    code = _readme_block("mine.sgsc", "docs/LIBRARY.md").replace(
        "...", "sc.model.eval(); sc.model(x)")
    exec(compile(code, "docs/LIBRARY.md", "exec"), namespace)
    sc = namespace["sc"]
    assert sc.graph.channels  # traced: body.0 feeds body.2
    assert isinstance(namespace["model"], MyNet)
    assert torch.equal(namespace["model"](x), sc.model(x))
