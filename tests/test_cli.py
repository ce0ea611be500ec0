"""The command line: exact option names, settings checked before training, and one
``error:`` line (exit 2) for every expected fault of the input or the machine."""

from __future__ import annotations

import errno
import json

import pytest
import torch

from sgsc.cli import build_parser, main
from sgsc.experiments import runs
from sgsc.experiments.train import CHECKPOINT
from sgsc.fileformat import atomic


def _no_training(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("training started before the settings were checked")

    monkeypatch.setattr(runs, "train_float", fail)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    return err[0]


def test_abbreviated_options_are_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["run", "sgsc", "--lr-q", "0.5"])
    assert exit_.value.code == 2 and "unrecognized arguments: --lr-q" in capsys.readouterr().err
    args = build_parser().parse_args(["run", "sgsc", "--lr", "0.1", "--lr-quant", "0.5"])
    assert args.lr == 0.1 and args.lr_quant == 0.5  # --lr is the weights' own option


def test_lr_sets_the_weights_learning_rate(tmp_path, monkeypatch, capsys):
    seen = {}

    def fake_run(method, data, **kwargs):
        seen.update(kwargs)
        return {"method": method}

    monkeypatch.setattr(runs, "run", fake_run)
    assert main(["run", "sc", "--lr", "0.1", "--out", str(tmp_path)]) == 0
    assert seen["lr"] == 0.1 and seen["lr_quant"] is None


@pytest.mark.parametrize("option, value, message", [
    ("--gamma", "-1", "gamma=-1.0 (a finite number >= 0)"),
    ("--lr-quant", "inf", "lr_quant=inf (a finite number >= 0)"),
    ("--lr", "nan", "lr=nan"), ("--epochs", "0", "epochs=0 (an integer >= 1)"),
    ("--float-epochs", "0", "float_epochs"), ("--l1-weights", "-0.1", "l1_weights=-0.1")])
def test_bad_settings_fail_before_any_training(tmp_path, monkeypatch, capsys, option, value,
                                               message):
    _no_training(monkeypatch)
    assert main(["run", "sgsc", option, value, "--out", str(tmp_path), "--no-progress"]) == 2
    assert message in _one_error_line(capsys)


def test_a_read_only_output_folder_is_one_error_line(tmp_path, monkeypatch, capsys):
    _no_training(monkeypatch)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(atomic.tempfile, "mkstemp", read_only)
    assert main(["run", "sc", "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    line = _one_error_line(capsys)
    assert "read-only file system" in line and "--out" in line and str(tmp_path) in line


def test_a_full_disk_is_one_error_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch,
                                                                      capsys):
    out = tmp_path / "out"
    common = ["--epochs", "2", "--float-epochs", "1", "--out", str(out), "--no-progress"]
    assert main(["run", "sc", "--epochs", "1", *common[2:]]) == 0  # a float reference first
    capsys.readouterr()
    [float_dir] = out.glob("digits/float-*")
    before = (float_dir / CHECKPOINT).read_bytes()
    real = atomic.os.replace

    def full(src, dst):
        if str(dst).endswith(CHECKPOINT):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", full)
    assert main(["run", "sc", "--gamma", "0.2", *common]) == 2
    line = _one_error_line(capsys)
    assert "no space left on the device" in line and "resumes" in line
    assert (float_dir / CHECKPOINT).read_bytes() == before
    assert not list(out.rglob(".*.tmp"))


def test_a_damaged_checkpoint_is_one_error_line_and_is_kept(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", "float", "--epochs", "1", "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    [checkpoint] = out.glob("digits/float-*/" + CHECKPOINT)
    damaged = checkpoint.read_bytes()[:200]
    checkpoint.write_bytes(damaged)
    assert main(["run", "float", "--epochs", "1", "--out", str(out), "--no-progress"]) == 2
    line = _one_error_line(capsys)
    assert str(checkpoint) in line and "delete it" in line
    assert checkpoint.read_bytes() == damaged


def test_threads_default_to_one_and_are_recorded(tmp_path, capsys):
    assert build_parser().parse_args(["run", "float"]).threads == 1
    assert main(["run", "float", "--epochs", "1", "--out", str(tmp_path), "--no-progress"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["threads"] == 1 and row["code"]["version"]
    assert main(["run", "float", "--threads", "0", "--out", str(tmp_path)]) == 2


def test_pretrain_trains_the_notebook_runs_where_the_notebook_finds_them(tmp_path, capsys):
    from sgsc.experiments import profiles, store, studies

    out = tmp_path / "runs"
    assert main(["pretrain", "--profile", "quick", "--parts", "ablation", "--workers", "1",
                 "--out", str(out), "--no-progress"]) == 0
    assert "runs to train" in capsys.readouterr().out
    quick = profiles.PROFILES["quick"]
    [request] = studies.image_study(quick)["ablation"]
    folders = {p.name.split("-s")[0] for p in (out / "quick" / "digits").iterdir()}
    assert folders == {"float", "sc-pres", "sc-feedback"}
    # the notebook's own call reloads them: nothing left to train
    before = {p: p.stat().st_mtime for p in out.rglob("checkpoint.pt")}
    store.run_grid(request["methods"], "digits", request["seeds"], out_dir=out / "quick",
                   device="auto", **profiles.budget(quick))
    assert {p: p.stat().st_mtime for p in out.rglob("checkpoint.pt")} == before
    assert main(["pretrain", "--profile", "nope", "--out", str(out)]) == 2


def test_a_report_into_a_read_only_folder_is_one_error_line(tmp_path, monkeypatch, capsys):
    from sgsc.reporting import report

    folder = tmp_path / "quick"
    report.save_json({"a": 1}, folder, "01_mnist_cnn__x")

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(atomic.tempfile, "mkstemp", read_only)
    assert main(["report", "--profile", "quick", "--reports", str(tmp_path)]) == 2
    assert "read-only file system" in _one_error_line(capsys)


def test_verify_prints_a_line_per_file_and_exits_by_the_result(tmp_path, stored_run, capsys):
    from sgsc.experiments import store

    report = tmp_path / "report"
    store.keep_models([stored_run], report)
    assert main(["verify", str(report)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok   digits/sc-s0-abc.sgsc") and "1 of 1 model files match" in out
    manifest = report / store.MODELS / store.MANIFEST
    entries = json.loads(manifest.read_text())
    entries[0]["storage_bytes"] += 1
    manifest.write_text(json.dumps(entries))
    assert main(["verify", str(report)]) == 1
    assert capsys.readouterr().out.startswith("FAIL")
    assert main(["verify", str(tmp_path / "nothing")]) == 2
    assert "lists no model files" in _one_error_line(capsys)
    assert main(["verify", str(report), "--data", "digits"]) == 1  # its one file, still off
    assert "0 of 1 model files match" in capsys.readouterr().out
    assert main(["verify", str(report), "--data", "mnist"]) == 2
    assert "keeps no model files of 'mnist'; it keeps files of digits" in _one_error_line(capsys)


def test_inspect_prints_where_the_bytes_go(tmp_path, stored_run, capsys):
    from sgsc.fileformat.export import byte_budget

    path = f"{stored_run['run_dir']}/model.sgsc"
    assert main(["inspect", path, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(byte_budget(path)))
    assert main(["inspect", path]) == 0
    assert "conv1" in capsys.readouterr().out
    assert main(["inspect", str(tmp_path / "missing.sgsc")]) == 2
    _one_error_line(capsys)


def test_encode_rewrites_a_file_in_another_coding_with_the_same_model(tmp_path, stored_run,
                                                                      capsys):
    from pathlib import Path

    from sgsc.fileformat.export import load_compressed, read_container, read_metadata

    source = f"{stored_run['run_dir']}/model.sgsc"
    original = Path(source).read_bytes()
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        reference = load_compressed(source).eval()(x)
    for coding in ("entropy", "lzma"):
        out = tmp_path / f"model.{coding}.sgsc"
        assert main(["encode", source, str(out), "--coding", coding]) == 0
        line = capsys.readouterr().out
        size = out.stat().st_size
        assert f"-> {out}: {size:,} bytes" in line and f"{len(original):,} bytes" in line
        with torch.no_grad():  # the same codes, bit depths and exponents: the same outputs
            assert torch.equal(load_compressed(out).eval()(x), reference)
        assert read_container(out).flags != 0 or "stays packed" in line
    narrow = tmp_path / "model.narrow.sgsc"
    assert main(["encode", source, str(narrow), "--precision", "narrow"]) == 0
    assert "narrow precision" in capsys.readouterr().out
    with torch.no_grad():  # float16 rounding moves the outputs a little, not more
        moved = (load_compressed(narrow).eval()(x) - reference).abs().max().item()
    assert 0 < moved < 1e-2 * reference.abs().max().item()
    grid = tmp_path / "model.grid.sgsc"
    assert main(["encode", source, str(grid), "--precision", "grid"]) == 0
    assert "grid precision" in capsys.readouterr().out
    assert read_metadata(grid)["exponents"] == "grid"
    assert narrow.stat().st_size < grid.stat().st_size
    # the file read is never the file written, and a bad file is one error line
    assert main(["encode", source, source]) == 2
    assert "is the file being read" in _one_error_line(capsys)
    assert Path(source).read_bytes() == original
    assert main(["encode", str(tmp_path / "missing.sgsc"), str(tmp_path / "x.sgsc")]) == 2
    _one_error_line(capsys)
    assert not (tmp_path / "x.sgsc").exists()


def test_regimes_trains_the_profiles_study_and_names_a_wrong_regime(tmp_path, monkeypatch,
                                                                   capsys):
    from sgsc.experiments import profiles, regimes, studies

    calls = []
    monkeypatch.setattr(regimes, "train_study", lambda *args, **kwargs: calls.append(args))
    assert main(["regimes", "--profile", "quick", "--workers", "3",
                 "--out", str(tmp_path)]) == 0
    quick = profiles.PROFILES["quick"]
    assert calls == [(list(quick.regimes), list(quick.regime_seeds), str(tmp_path), 3,
                      dict(quick.regime_budget))]
    files = []
    monkeypatch.setattr(regimes, "train", lambda requests, *args, **kwargs: files.append(
        (requests, args)))
    assert main(["regimes", "--profile", "quick", "--workers", "3", "--out", str(tmp_path),
                 "--extras"]) == 0
    assert files == [(regimes.file_requests(quick.file_regime, quick.file_seeds,
                                            quick.file_rate_gammas, quick.file_long),
                      (str(tmp_path), 3, dict(quick.regime_budget)))] + [
        (studies.operating_point_requests(point),
         (str(tmp_path), 3, {"float_epochs": point["float_epochs"], "epochs": point["epochs"]}))
        for point in (quick.operating_point, quick.text_operating_point)]
    if not torch.cuda.is_available():  # a GPU asked for where there is none: before training
        assert main(["regimes", "--profile", "quick", "--device", "cuda"]) == 2
        assert "cuda" in _one_error_line(capsys) and len(calls) == 2
    assert main(["regimes", "--regime", "mnist-2k"]) == 2
    assert "unknown regime" in _one_error_line(capsys) and len(calls) == 2


def test_regimes_trains_some_seeds_only_with_the_tuning_seed_among_them(tmp_path, monkeypatch,
                                                                        capsys):
    from sgsc.experiments import profiles, regimes

    calls = []
    monkeypatch.setattr(regimes, "train_study", lambda *args, **kwargs: calls.append(args))
    paper = profiles.PROFILES["paper"]
    assert main(["regimes", "--regime", "mnist", "--seeds", "2", "0", "1",
                 "--out", str(tmp_path)]) == 0
    assert calls[0][:3] == (["mnist"], [0, 1, 2], str(tmp_path))
    for seeds in (["1", "2"], ["0", "7"]):  # no tuning seed; not the profile's
        assert main(["regimes", "--seeds", *seeds, "--out", str(tmp_path)]) == 2
        line = _one_error_line(capsys)
        assert "--seeds must be among" in line and str(paper.regime_seeds[0]) in line
    assert len(calls) == 1
