"""Baselines in the run harness: uniform PTQ/QAT, DiffQ and CB-TPE (its Hessian traces:
test_hessian.py)."""

from __future__ import annotations

import json
import sys

import numpy as np
import optuna
import pytest
import torch

from sgsc import cli
from sgsc.experiments import provenance, runs
from sgsc.experiments.baselines import cbtpe, fixed
from sgsc.experiments.models import CNNConfig, MnistCNN
from sgsc.experiments.train import TrainConfig, Trainer
from sgsc.fileformat.export import load_compressed

FLOAT = {"epochs": 3}  # a quick float reference, shared by every run of this file
SCHEMA = ("method", "data", "seed", "params", "val_acc", "val_loss", "test_acc", "test_loss",
          "storage_bytes", "live_weights", "wall_s")
SEARCH = {"n_trials": 3, "n_startup_trials": 2, "trial_epochs": 1, "hessian_samples": 4,
          "hessian_batch": 64, "epochs": 1}


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


def _run(method, out, **overrides):
    return runs.run(method, "digits", out_dir=out, progress=False, float_overrides=FLOAT,
                    **overrides)


def _check_schema(result, method, out):
    for key in SCHEMA:
        assert key in result, key
    assert result["method"] == method and result["data"] == "digits" and result["seed"] == 0
    assert 0.0 <= result["test_acc"] <= 1.0 and result["live_weights"] > 0
    files = list((out / "digits").glob(f"{method}-s0*/model.sgsc"))
    assert len(files) == 1
    assert result["storage_bytes"] == files[0].stat().st_size
    saved = json.loads((files[0].parent / "result.json").read_text())
    assert saved["storage_bytes"] == result["storage_bytes"]
    # provenance: the code that trained it (PTQ trains nothing)
    assert result["trained_by"] == ([] if result["train_s"] == 0 else [provenance.training_state()])
    assert result["trained_on"] == ("" if result["train_s"] == 0 else provenance.cpu_model())
    assert result["machine"]["cpu"] == provenance.cpu_model()
    return files[0]


# ----------------------------------------------------------------------------- uniform


def test_methods_are_listed_for_the_cli():
    for method in ("uniform-ptq-2", "uniform-qat-16", "diffq", "cbtpe", "cbtpe-tpe"):
        assert method in runs.METHODS
    with pytest.raises(ValueError, match="unknown method"):
        runs.run("uniform-ptq-5", "digits")


def test_ptq_at_16_bits_matches_float(out):
    reference = _run("float", out)
    ptq = _run("uniform-ptq-16", out)
    path = _check_schema(ptq, "uniform-ptq-16", out)
    assert abs(ptq["val_acc"] - reference["val_acc"]) <= 0.001
    assert abs(ptq["test_acc"] - reference["test_acc"]) <= 0.001
    assert ptq["storage_bytes"] < reference["storage_bytes"]  # 16 of 32 bits per weight
    assert ptq["Q"] == 16.0
    assert load_compressed(path) is not None


def test_ptq_sizes_fall_with_bits_and_ptq_takes_no_training_settings(out):
    sizes = [_run(f"uniform-ptq-{b}", out)["storage_bytes"] for b in (2, 4, 8)]
    assert sizes[0] < sizes[1] < sizes[2]
    with pytest.raises(ValueError, match="does no training"):
        _run("uniform-ptq-4", out, epochs=2)


def test_qat_trains_with_frozen_bits(out):
    result = _run("uniform-qat-3", out, epochs=1)
    _check_schema(result, "uniform-qat-3", out)
    assert result["Q"] == 3.0 and result["params"]["gamma"] == 0.0
    with pytest.raises(ValueError, match="does not take gamma"):
        _run("uniform-qat-3", out, epochs=1, gamma=0.1)


def test_fixed_bits_freezes_widths_and_follows_max_abs():
    torch.manual_seed(0)
    model = MnistCNN(CNNConfig.for_digits())
    quantized = fixed.FixedBits(model, 4)
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    data = torch.utils.data.TensorDataset(x, y)
    config = TrainConfig(epochs=1, batch_size=16, lr=1e-2, lr_quant=0.0, progress=False)
    trainer = Trainer(model, data, data, config, compression=quantized.sc)
    with quantized.tracking():
        trainer.fit()
    for name, q in quantized.sc.quantizers.items():
        assert torch.all(q.bit_depth == 4)
        weight = model.get_submodule(name).parametrizations.weight.original
        top = weight.detach().abs().flatten(1).amax(1)
        assert torch.allclose(torch.exp2(q.exponent) * 7, top, rtol=1e-5)  # 7 = 2^(4-1) - 1


def test_fixed_bits_zero_width_channels_are_removed_on_export(tmp_path):
    model = MnistCNN(CNNConfig.for_digits())
    dead = torch.zeros(16, dtype=torch.bool)
    dead[:12] = True
    narrow = fixed.FixedBits(model, 4, dead={"conv1": dead})
    wide = fixed.FixedBits(MnistCNN(CNNConfig.for_digits()), 4)
    assert narrow.sc.storage_bytes() < wide.sc.storage_bytes()
    from sgsc.fileformat.export import save_compressed

    save_compressed(narrow.sc, tmp_path / "m.sgsc")
    assert load_compressed(tmp_path / "m.sgsc").conv1.out_channels == 4
    with pytest.raises(ValueError, match="integers in 1..16"):
        fixed.FixedBits(MnistCNN(CNNConfig.for_digits()), 2.5)
    with pytest.raises(ValueError, match="every quantised layer"):
        fixed.FixedBits(MnistCNN(CNNConfig.for_digits()), {"conv1": 4})


def test_cli_runs_a_baseline(out, capsys):
    code = cli.main(["run", "uniform-ptq-8", "--data", "digits", "--float-epochs", "3",
                     "--out", str(out), "--no-progress"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["method"] == "uniform-ptq-8" and result["storage_bytes"] > 0


# ----------------------------------------------------------------------------- DiffQ


def test_diffq_runs_and_reports_both_sizes(out):
    pytest.importorskip("diffq", reason="optional extra: pip install 'sgsc[baselines]'")
    result = _run("diffq", out, epochs=1)
    _check_schema(result, "diffq", out)
    assert result["diffq_true_model_size_bytes"] > 0
    assert 2 <= result["diffq_mean_bits"] <= 15
    assert 0.0 <= result["diffq_test_acc"] <= 1.0
    assert result["params"]["diffq"]["group_size"] == 8


def test_diffq_missing_package_is_a_clear_error(out, monkeypatch):
    monkeypatch.setitem(sys.modules, "diffq", None)  # makes `import diffq` fail
    with pytest.raises(ValueError, match=r"pip install 'sgsc\[baselines\]'"):
        _run("diffq", out, epochs=1)


# ----------------------------------------------------------------------------- CB-TPE


@pytest.mark.parametrize("method", ["cbtpe", "cbtpe-tpe"])
def test_cbtpe_runs_and_reports_the_search(out, method):
    result = _run(method, out, **SEARCH)
    path = _check_schema(result, method, out)
    search = result["search"]
    assert search["n_trials"] == 3 and search["search_wall_s"] > 0
    assert 1 <= search["distinct_trials"] <= 3
    assert search["sampler"] == ("cluster-tpe" if method == "cbtpe" else "tpe")
    assert set(result["params"]["bits"]) == set(result["sensitivity"])
    assert all(2 <= b <= 8 for b in result["params"]["bits"].values())
    log = json.loads((path.parent / "search.json").read_text())
    assert len(log["trials"]) == 3 and log["space"]


def test_cbtpe_rerun_reuses_its_search_and_keeps_train_s(out, monkeypatch):
    first = _run("cbtpe", out, **SEARCH)

    def no_search(*args, **kwargs):
        raise AssertionError("the search of a finished run must not run again")

    monkeypatch.setattr(cbtpe, "search", no_search)
    again = _run("cbtpe", out, **SEARCH)
    for key in ("search", "test_acc", "storage_bytes", "train_s"):
        assert again[key] == first[key], key
    assert again["params"]["bits"] == first["params"]["bits"]
    assert first["train_s"] >= first["search"]["search_wall_s"] > 0


def test_cluster_split_puts_the_best_trials_in_the_good_group():
    # three clear levels of accuracy: bad, middling, good
    history = [0.52, 0.91, 0.75, 0.50, 0.93, 0.74, 0.55, 0.92, 0.76]
    good, bad, info = cbtpe.cluster_split(history)
    assert sorted(good) == [1, 4, 7]
    assert sorted(bad) == [0, 3, 6]
    assert info["upper"] == 0.91 and info["lower"] == 0.55  # the middle band is left out
    # minimisation flips the roles
    good, bad, _ = cbtpe.cluster_split(history, maximize=False)
    assert sorted(good) == [0, 3, 6] and sorted(bad) == [1, 4, 7]
    # degenerate histories
    assert cbtpe.cluster_split([0.3, 0.3])[0] == [0]
    good, bad, _ = cbtpe.cluster_split([0.1, 0.9])
    assert good == [1] and bad == [0]
    with pytest.raises(ValueError, match="non-empty"):
        cbtpe.cluster_split([])


def test_repeated_configurations_count_once_in_the_split():
    from types import SimpleNamespace

    trials = [SimpleNamespace(params={"b": 3, "w": 0.5}), SimpleNamespace(params={"b": 4}),
              SimpleNamespace(params={"w": 0.5, "b": 3})]
    assert cbtpe._distinct(trials) == trials[:2]


def test_cluster_tpe_sampler_optimises_a_toy_problem():
    sampler = cbtpe.ClusterTPESampler(seed=0, n_startup_trials=5, multivariate=True)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(lambda t: -(t.suggest_int("b", 2, 8) - 6) ** 2
                   - (t.suggest_float("w", 0, 1) - 0.3) ** 2, n_trials=25)
    assert len(sampler.splits) == 20  # one split per trial after the random start
    assert study.best_value > -1.1


def test_width_bound_prunes_channels_without_saliency():
    config = cbtpe.CBTPEConfig()
    saliency = torch.tensor([5.0, 4.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.01])
    assert cbtpe._width_choices(saliency, config) == (0.25,)
    assert cbtpe._width_choices(torch.ones(8), config) == (0.25, 0.5, 0.75, 1.0)
    layer = cbtpe.LayerSpace("conv", 1.0, (2, 8), (0.25, 0.5), order=[3, 1, 0, 2])
    assert layer.dead(0.5).tolist() == [True, False, True, False]
    with pytest.raises(ValueError, match="invalid CB-TPE"):
        cbtpe.CBTPEConfig(min_bits=5, low_bits=4)


def test_baseline_dispatch_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown method 'magic'"):
        runs.run("magic", "digits")
    with pytest.raises(ValueError, match="B must be one of"):
        from sgsc.experiments.baselines import uniform

        uniform.parse("uniform-ptq-5")
    assert np.isclose(cbtpe.CBTPEConfig(widths=[0.5, 1]).widths[0], 0.5)
