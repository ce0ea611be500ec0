"""Runs on disk for the notebooks: folders found and cleared, models and bit depths
reloaded, per-class accuracy, model overrides undone."""

from __future__ import annotations


def test_stored_bit_depths_read_the_packed_file(tmp_path):
    import torch

    from sgsc.core.compress import SelfCompression
    from sgsc.experiments import store
    from sgsc.experiments.models import CNNConfig, MnistCNN
    from sgsc.fileformat.export import save_compressed

    torch.manual_seed(0)
    sc = SelfCompression(MnistCNN(CNNConfig.for_digits()), init_bits=6)
    with torch.no_grad():
        sc.bit_depths()["conv2"][:3] = 0.0  # pruned from the file
        sc.bit_depths()["fc"][1] = 2.5  # stored at ceil(b) = 3 bits
    save_compressed(sc, tmp_path / "m.sgsc")
    layers = store.stored_bit_depths(tmp_path / "m.sgsc")
    assert list(layers) == ["conv1", "conv2", "conv3", "conv4", "fc"]
    assert layers["conv2"]["channels"] == 16 and len(layers["conv2"]["bits"]) == 13
    assert layers["fc"]["bits"].tolist() == [6, 3] + [6] * 8
    table = {r["layer"]: r for r in store.bit_depth_table(layers)}
    assert table["conv2"]["removed"] == 3 and table["fc"]["max_bits"] == 6


def test_stored_bit_depths_of_a_users_own_model_need_that_model(tmp_path):
    import pytest
    import torch
    from torch import nn

    from sgsc.core.compress import SelfCompression
    from sgsc.experiments import store
    from sgsc.fileformat.export import save_compressed

    torch.manual_seed(0)
    own = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    sc = SelfCompression(own, init_bits=4)
    own(torch.zeros(1, 8))  # traced at the first forward: pruning knows the graph
    with torch.no_grad():
        sc.bit_depths()["0"][:2] = 0.0  # two of six hidden units pruned from the file
    save_compressed(sc, tmp_path / "own.sgsc")
    with pytest.raises(ValueError, match="outside sgsc's registry.*pass model="):
        store.stored_bit_depths(tmp_path / "own.sgsc")
    unpruned = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    layers = store.stored_bit_depths(tmp_path / "own.sgsc", model=unpruned)
    assert layers["0"]["channels"] == 6 and len(layers["0"]["bits"]) == 4



def test_run_folders_are_found_and_cleared(tmp_path):
    import json

    from sgsc.experiments import store

    root = tmp_path / "digits"
    for folder, params in (("float-s0-fff", {"epochs": 3}), ("sc-s0-aaa", {"gamma": 1}),
                           ("sc-s0-bbb", {"gamma": 2}), ("sgsc-s0-ccc", {"gamma": 1}),
                           ("uniform-ptq-4-s0-eee", {"bits": 4}), ("sc-s1-ddd", {"gamma": 1})):
        (root / folder).mkdir(parents=True)
        (root / folder / "result.json").write_text(json.dumps({"params": params}))
    find = store.find_run_dir
    assert find(tmp_path, {"method": "sc", "data": "digits", "seed": 0,
                           "params": {"gamma": 2}}) == root / "sc-s0-bbb"
    assert find(tmp_path, {"method": "float", "data": "digits", "seed": 0,
                           "params": {"epochs": 3}}) == root / "float-s0-fff"
    assert find(tmp_path, {"method": "uniform-ptq-4", "data": "digits", "seed": 0,
                           "params": {"bits": 4}}) == root / "uniform-ptq-4-s0-eee"
    assert find(tmp_path, {"method": "sc", "data": "digits", "seed": 0,
                           "params": {"gamma": 3}}) is None
    gone = store.clear_runs(tmp_path, "digits", ["sc", "uniform-ptq-4"], [0])
    assert sorted(p.name for p in gone) == ["float-s0-fff", "sc-s0-aaa", "sc-s0-bbb",
                                            "uniform-ptq-4-s0-eee"]
    assert sorted(p.name for p in root.iterdir()) == ["sc-s1-ddd", "sgsc-s0-ccc"]



def test_run_requests_train_each_request_with_its_overrides_in_order(tmp_path):
    from sgsc.experiments import defaults, store

    requests = [{"methods": ["sc"], "seeds": [0], "overrides": {"gamma": 0.5}},
                {"methods": ["sc", "uniform-ptq-4"], "seeds": [0], "overrides": {}}]
    budget = {"float_epochs": 1, "epochs": 1}
    results = store.run_requests(requests, "digits", out_dir=tmp_path, device="cpu", **budget)
    assert [(r["method"], r["params"].get("gamma")) for r in results][:2] == [
        ("sc", 0.5), ("sc", defaults.train_config("sc", "digits").gamma)]
    assert results[2]["method"] == "uniform-ptq-4" and len(results) == 3
    assert len({r["run_dir"] for r in results}) == 3  # two sc folders: two settings
    again = store.run_grid(["sc"], "digits", [0], out_dir=tmp_path, device="cpu", gamma=0.5,
                           **budget)
    assert again[0]["run_dir"] == results[0]["run_dir"]  # the same run, found in its folder
    assert again[0]["test_acc"] == results[0]["test_acc"]


def test_kept_model_files_verify_and_a_changed_one_fails(tmp_path, stored_run):
    import json

    from sgsc.experiments import harness, store

    result = stored_run
    report = tmp_path / "report"
    rows = store.keep_models([result, {**result, "run_dir": None, "method": "float"}], report)
    assert [r["file"] for r in rows] == ["digits/sc-s0-abc.sgsc"]  # float keeps no file
    assert store.read_manifest(report)["digits/sc-s0-abc.sgsc"]["storage_bytes"] == \
        result["storage_bytes"]
    assert [r["ok"] for r in store.verify_models(report)] == [True]

    manifest = report / store.MODELS / store.MANIFEST
    entries = json.loads(manifest.read_text())
    test_size = len(harness.load_splits("digits").test)  # a report two examples off
    entries[0]["test_acc"] += 2 / test_size
    manifest.write_text(json.dumps(entries))
    assert [r["ok"] for r in store.verify_models(report, tolerance=0)] == [False]
    assert [r["ok"] for r in store.verify_models(report, tolerance=2)] == [True]
    entries[0]["storage_bytes"] += 1
    manifest.write_text(json.dumps(entries))
    assert [r["ok"] for r in store.verify_models(report, tolerance=2)] == [False]


def test_runs_of_equal_settings_that_two_studies_trained_keep_a_file_each(tmp_path,
                                                                          stored_run):
    """03 and 04 train runs of the same settings (the same folder name) in folders of their
    own; trained on two machines they differ.  Each is kept under its study's folder, with
    its own bytes, and a study's own data folder keeps the plain name."""
    import shutil
    from pathlib import Path

    from sgsc.experiments import store

    runs = tmp_path / "runs" / "paper"
    studies = {}
    for study in ("digits", "search/digits", "sweeps/digits"):
        folder = runs / study / "sc-s0-abc"
        shutil.copytree(stored_run["run_dir"], folder)
        studies[study] = {**stored_run, "run_dir": str(folder)}
    with open(runs / "search/digits/sc-s0-abc" / store.PACKED, "ab") as f:
        f.write(b"another machine's file")  # the bytes differ; the manifest says so
    studies["search/digits"]["storage_bytes"] += len(b"another machine's file")
    report = tmp_path / "report"
    for result in studies.values():
        store.keep_models([result], report)
    manifest = store.read_manifest(report)
    assert sorted(manifest) == ["digits/sc-s0-abc.sgsc", "search/digits/sc-s0-abc.sgsc",
                                "sweeps/digits/sc-s0-abc.sgsc"]
    for study, result in studies.items():
        kept = report / store.MODELS / f"{study}/sc-s0-abc.sgsc"
        assert kept.read_bytes() == (Path(result["run_dir"]) / store.PACKED).read_bytes()
        assert manifest[f"{study}/sc-s0-abc.sgsc"]["storage_bytes"] == kept.stat().st_size
    # outside any profile's folder (a user's own runs): <data>/<folder name>
    assert store.kept_path({"run_dir": "/elsewhere/sc-s0-abc", "data": "mnist"}) == \
        "mnist/sc-s0-abc.sgsc"


def test_a_report_without_model_files_says_so(tmp_path):
    import pytest

    from sgsc.experiments import store

    with pytest.raises(FileNotFoundError, match="lists no model files"):
        store.verify_models(tmp_path)


def test_a_sample_of_the_committed_reports_model_files_verifies(shared_data_dir):
    """CI's share of ``python -m sgsc verify reports/paper``: a seeded sample of the model
    files the paper report keeps reloads to the sizes and test accuracies it reports."""
    from pathlib import Path

    import pytest

    from sgsc.experiments import store

    report = Path(__file__).resolve().parents[1] / "reports" / "paper"
    if not store.read_manifest(report):
        pytest.skip("the paper report keeps no model files yet")
    rows = list(store.verify_models(report, sample=4, seed=0, tolerance=2))
    assert len(rows) == min(4, len(store.read_manifest(report)))
    assert all(row["ok"] for row in rows), [r for r in rows if not r["ok"]]
