"""Profiles: what quick, paper and full run, and the notebooks' parameters checked."""

from __future__ import annotations

import pytest

from sgsc.experiments import profiles


def test_check_parameters_names_every_bad_value():
    assert profiles.check_parameters(profile="quick").image_data == "digits"
    assert profiles.check_parameters(profile="paper", seeds=[0, 1], methods=["sc"]).seeds \
        == (0, 1, 2)
    with pytest.raises(ValueError) as err:
        profiles.check_parameters(profile="papr", device="gpu", force=2, seed=-1,
                                methods=["sc", "magic"])
    message = str(err.value)
    for expected in ("profile must be one of 'quick', 'paper', 'full', not 'papr'",
                     "device must be one of 'auto', 'cpu', 'cuda', not 'gpu'",
                     "force must be 0 or 1", "seed must be a non-negative integer",
                     "unknown: 'magic'"):
        assert expected in message



def test_selected_methods():
    from sgsc.experiments.runs import METHODS

    assert profiles.selected_methods(["sc"]) == ["sc"]
    assert profiles.selected_methods([]) == list(METHODS)
    quick = profiles.PROFILES["quick"]
    assert profiles.selected_methods([], quick) == [m for m in quick.methods if m in METHODS]



def test_budget_takes_the_notebooks_epoch_parameters():
    quick = profiles.PROFILES["quick"]
    assert profiles.budget(quick) == {"float_epochs": 3, "epochs": 4}
    assert profiles.budget(quick, "text", epochs=2) == {"float_epochs": 1, "epochs": 2}
    paper = profiles.PROFILES["paper"]
    assert profiles.budget(paper, float_epochs=1) == {"float_epochs": 1, "epochs": None}
    with pytest.raises(ValueError, match="epochs must be a non-negative integer"):
        profiles.check_parameters(profile="quick", epochs=-1)


def test_the_paper_profile_holds_the_study_and_the_claims_runs():
    paper = profiles.PROFILES["paper"]
    assert len(paper.seeds) >= 3 and "uniform-ptq-16" in paper.methods  # the 60 % claim
    # sc's and sgsc's frontiers at five gammas or more, with the default; QAT beside them
    assert all(len(paper.frontier[m]) + 1 >= 5 for m in ("sc", "sgsc"))
    assert {f"uniform-qat-{b}" for b in (2, 3, 4)} <= set(paper.methods)
    assert set(paper.ablation_methods) == {"sc-pres", "sc-feedback"}
    # every baseline beside them: DiffQ at two penalties (its default and one more),
    # CB-TPE and plain TPE
    assert {"diffq", "cbtpe", "cbtpe-tpe"} <= set(paper.methods)
    assert len(paper.frontier["diffq"]) >= 1
    # the transformer: sc and sgsc at four gammas or more each, with the default
    assert all(len(paper.text_frontier[m]) + 1 >= 4 for m in ("sc", "sgsc"))


def test_set_threads_refuses_nonsense_and_sets_torch():
    import torch

    before = torch.get_num_threads()
    try:
        assert profiles.set_threads(1) == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="non-negative integer"):
        profiles.set_threads(-1)
