"""Every data set's defaults in one place, and train_config built from them."""

from __future__ import annotations

import pytest

from sgsc.experiments import defaults
from sgsc.experiments.baselines import METHODS as BASELINES


def test_every_data_set_names_its_model_budgets_and_preservation_size():
    for name, entry in defaults.DEFAULTS.items():
        assert {"model", "float", "compress", "preservation_size"} <= set(entry), name
        model, config = entry["model"]
        assert model in ("mnist_cnn", "char_transformer") and isinstance(config, dict)


def test_methods_list_every_run_once():
    assert defaults.METHODS[:2] == ("float", "sc")
    assert set(defaults.SAFETY_METHODS) <= set(defaults.METHODS)
    assert set(BASELINES) <= set(defaults.METHODS)
    assert len(defaults.METHODS) == len(set(defaults.METHODS))


def test_train_config_layers_stage_sc_safety_and_data_set_choices():
    floating = defaults.train_config("float", "mnist")
    assert floating.gamma == 0 and floating.shrink_every == 0 and floating.epochs == 3
    sc = defaults.train_config("sc", "mnist")
    assert sc.gamma == 0.05 and sc.shrink_every == defaults.SC_EXTRA["shrink_every"]
    assert sc.lambda_pres == 0 and sc.feedback is None and sc.l1_weights == 0
    full = defaults.train_config("sgsc", "mnist")
    assert full.l1_weights == defaults.SGSC_EXTRA["l1_weights"] > 0
    assert defaults.train_config("sgsc", "names").lambda_pres == 0.1  # the data set's own
    qat = defaults.train_config("uniform-qat-4", "mnist")
    assert qat.shrink_every == 0  # baselines keep their shapes: their bits are fixed
    assert defaults.train_config("sc", "mnist", gamma=0.5, epochs=None).gamma == 0.5


def test_unknown_names_are_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match="unknown method 'nope'; choose one of float"):
        defaults.check_method("nope", "mnist")
    with pytest.raises(ValueError, match="unknown data set 'cifar'"):
        defaults.train_config("sc", "cifar")
    with pytest.raises(ValueError, match="unknown setting"):
        defaults.train_config("sc", "mnist", gama=0.1)


def test_model_overrides_are_checked_and_undone():
    from sgsc.experiments import defaults, runs

    before = runs.DEFAULTS["names"]["model"]
    with defaults.model_overrides("names", {"n_layer": 1}):
        assert runs.DEFAULTS["names"]["model"][1]["n_layer"] == 1
    assert runs.DEFAULTS["names"]["model"] == before
    with pytest.raises(ValueError, match="unknown char_transformer setting"):
        defaults.configure_model("names", {"layers": 1})
    assert runs.DEFAULTS["names"]["model"] == before



def test_training_overrides_skip_methods_that_do_not_train():
    from sgsc.experiments import store

    assert store.training_overrides("float", epochs=3) == {}
    assert store.training_overrides("uniform-ptq-4", epochs=3) == {}
    assert store.training_overrides("sc", epochs=3, gamma=None) == {"epochs": 3}
