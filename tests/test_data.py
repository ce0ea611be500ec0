"""Data loaders: checksums, sources, offline errors, fixed and disjoint splits."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from sgsc import data, sources
from sgsc.cli import main


def _names_file() -> data.DataFile:
    return data.FILES["names"][0]


def test_verify_reports_every_dataset(shared_data_dir):
    report = data.verify()
    assert {s.dataset for s in report} == set(data.DATASETS)
    assert all(s.ok for s in report), [s.detail for s in report if not s.ok]


def test_cli_verify_exit_codes(shared_data_dir, tmp_path, monkeypatch, capsys):
    assert main(["data", "verify"]) == 0
    assert "all verified" in capsys.readouterr().out
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
    assert main(["data", "verify", "names"]) == 1
    assert "missing" in capsys.readouterr().out
    assert main(["data", "verify", "no-such-set"]) == 2


def test_mnist_shapes_and_split(mnist):
    assert (len(mnist.train), len(mnist.val), len(mnist.test)) == (55_000, 5_000, 10_000)
    x, y = mnist.train.tensors
    assert x.shape == (55_000, 1, 28, 28) and y.dtype.is_floating_point is False
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1) < 0.05
    # validation is carved from the training set; the two never share an image index
    assert set(mnist.train_index).isdisjoint(mnist.val_index)
    assert len(set(mnist.train_index) | set(mnist.val_index)) == 60_000
    # the official label counts of the test set
    assert np.bincount(mnist.test.tensors[1].numpy()).tolist() == [
        980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_mnist_split_is_fixed(mnist):
    again = data.load_mnist(download=False)
    assert np.array_equal(again.val_index, mnist.val_index)


def test_gz_and_plain_copies_both_load(shared_data_dir, tmp_path, monkeypatch):
    flat = tmp_path / "MNIST" / "raw"
    flat.mkdir(parents=True)
    for file in data.FILES["mnist"]:
        src = data.locate(file, shared_data_dir)
        payload = gzip.decompress(src.read_bytes()) if src.suffix == ".gz" else src.read_bytes()
        (flat / file.name).write_bytes(payload)  # uncompressed, torchvision's layout
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
    assert all(s.ok for s in data.verify(("mnist",)))
    assert len(data.load_mnist(download=False).test) == 10_000


def test_corrupt_copy_is_detected_and_left_alone(shared_data_dir, tmp_path, monkeypatch):
    target = tmp_path / "names"
    target.mkdir()
    src = data.locate(_names_file(), shared_data_dir)
    corrupt = bytearray(src.read_bytes())
    corrupt[100] ^= 0x01
    (target / "names.txt").write_bytes(bytes(corrupt))
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(data.DataError, match=r"names\.txt.*does not match"):
        data.load_names()
    assert (target / "names.txt").read_bytes() == bytes(corrupt)  # never overwritten
    status = data.verify(("names",))[0]
    assert not status.ok and "does not match" in status.detail


def test_broken_gzip_gives_clear_error(tmp_path, monkeypatch):
    (tmp_path / "names").mkdir()
    (tmp_path / "names" / "names.txt.gz").write_bytes(b"\x1f\x8b not really gzip")
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(data.DataError, match="not a readable gzip file"):
        data.load_names(download=False)


def _damaged_gzip(payload: bytes) -> bytes:
    """A gzip stream with a few bytes flipped inside its deflate data (header intact)."""
    blob = bytearray(gzip.compress(payload))
    for i in range(len(blob) // 3, len(blob) // 3 + 4):
        blob[i] ^= 0xFF
    return bytes(blob)


def test_flipped_bytes_in_a_gz_data_file_are_a_data_error(tmp_path, monkeypatch, capsys):
    text = "\n".join(f"name{i}" for i in range(5000)).encode()
    (tmp_path / "names").mkdir()
    path = tmp_path / "names" / "names.txt.gz"
    path.write_bytes(_damaged_gzip(text))
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(data.DataError) as err:
        data.load_names(download=False)
    message = str(err.value)
    assert str(path) in message and "data fetch" in message and "left untouched" in message
    assert main(["data", "verify", "names"]) == 1  # a report line, not a traceback
    out = capsys.readouterr().out
    assert "FAIL" in out and "not a readable gzip file" in out
    assert path.read_bytes() == _damaged_gzip(text)  # nothing lost


class _Response:
    def __init__(self, payload):
        self.payload = payload

    def read(self):
        return self.payload

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("bad", [b"<html><body>503 Service Unavailable</body></html>",
                                 "truncated"])
def test_a_download_falls_back_to_the_next_mirror(tmp_path, monkeypatch, bad):
    payload = b"0123456789" * 1000
    good = gzip.compress(payload)
    if bad == "truncated":
        bad = good[: len(good) // 2]
    file = sources.DataFile("demo", "demo.bin", hashlib.sha256(payload).hexdigest(),
                            ("https://first.example/demo.bin.gz",
                             "https://second.example/demo.bin.gz"), ("demo",))
    served = {file.urls[0]: bad, file.urls[1]: good}
    monkeypatch.setattr(sources.urllib.request, "urlopen",
                        lambda url, timeout: _Response(served[url]))
    assert sources.read_file(file, root=tmp_path) == payload
    assert (tmp_path / "demo" / "demo.bin").read_bytes() == payload
    served[file.urls[1]] = bad  # both bad: one error naming each mirror's fault
    (tmp_path / "demo" / "demo.bin").unlink()
    with pytest.raises(data.DataError) as err:
        sources.read_file(file, root=tmp_path)
    assert "first.example" in str(err.value) and "second.example" in str(err.value)
    assert not (tmp_path / "demo" / "demo.bin").exists()


def test_offline_error_says_what_to_do(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(sources.urllib.request, "urlopen", no_network)
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(data.DataError) as err:
        data.load_names()
    message = str(err.value)
    assert "names.txt" in message and data.DATA_DIR_ENV in message
    assert str(tmp_path / "names" / "names.txt") in message
    assert "Traceback" not in message


def test_download_is_verified_before_it_lands(shared_data_dir, tmp_path, monkeypatch):
    good = data.locate(_names_file(), shared_data_dir).read_bytes()

    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(sources.urllib.request, "urlopen",
                        lambda url, timeout: _Response(b"junk"))
    with pytest.raises(data.DataError, match="checksum mismatch"):
        data.fetch(("names",))
    assert not (tmp_path / "names" / "names.txt").exists()
    monkeypatch.setattr(sources.urllib.request, "urlopen", lambda url, timeout: _Response(good))
    assert all(s.ok for s in data.fetch(("names",)))
    assert (tmp_path / "names" / "names.txt").read_bytes() == good


def test_names_split_whole_names(shared_data_dir):
    names = data.load_names()
    docs = names.documents
    sizes = [len(docs[k]) for k in ("train", "val", "test")]
    assert sum(sizes) == 29_494  # distinct names in the published file
    assert abs(sizes[0] / sum(sizes) - 0.8) < 0.001
    assert not set(docs["train"]) & set(docs["val"])
    assert not set(docs["train"]) & set(docs["test"])
    assert not set(docs["val"]) & set(docs["test"])
    # row i of each split is name i, starting after '.' and ending with '.'
    x, y = names.train.tensors
    first = docs["train"][0]
    assert names.decode(x[0, 1:len(first) + 1].tolist()) == first
    assert y[0, len(first)] == 0 and (y[0, len(first) + 1:] == -1).all()


def test_tinyshakespeare_split_by_position(shared_data_dir):
    corpus = data.load_tinyshakespeare(block_size=64)
    lengths = [len(corpus.documents[k][0]) for k in ("train", "val", "test")]
    assert sum(lengths) == 1_115_394
    assert abs(lengths[0] / sum(lengths) - 0.9) < 1e-4
    x, y = corpus.train.tensors
    assert x.shape[1] == 64 and (x[:, 1:] == y[:, :-1]).all()


def test_digits_needs_no_files(tmp_path, monkeypatch):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
    digits = data.load("digits")
    n = len(digits.train) + len(digits.val) + len(digits.test)
    assert n == 1797 and digits.train.tensors[0].shape[1:] == (1, 8, 8)
    all_idx = np.concatenate([digits.train_index, digits.val_index])
    assert len(set(all_idx)) == len(all_idx)


def test_unknown_dataset_error():
    with pytest.raises(ValueError, match="choose one of"):
        data.load("cifar")


def test_idx_decoder_rejects_garbage():
    with pytest.raises(data.DataError, match="IDX"):
        data._decode_idx(b"\x00\x01\x08\x03" + bytes(12), 3)


def test_data_dir_defaults_to_local_folder(monkeypatch):
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    assert data.data_dir() == Path("data")
    assert shutil.which("python3")  # the scripts bootstrap with python3 -m venv
