"""Data loaders: every data set verified and loaded, fixed and disjoint splits (the
sources, mirrors and damaged files: test_sources.py)."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from sgsc.cli import main
from sgsc.experiments import data


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


def test_a_balanced_subset_takes_as_many_rows_of_each_class_and_keeps_val_and_test():
    splits = data.load_digits()
    subset = data.balanced_subset(splits, 300, "digits-300")
    labels = subset.train.tensors[1]
    assert len(labels) == 300 and torch.bincount(labels).tolist() == [30] * 10
    assert subset.val is splits.val and subset.test is splits.test
    rows = torch.from_numpy(subset.train_index)
    # each kept row is the published row it says it is
    published = {int(i): x for i, x in zip(splits.train_index, splits.train.tensors[0],
                                            strict=True)}
    assert all(torch.equal(published[int(i)], x)
               for i, x in zip(rows, subset.train.tensors[0], strict=True))
    again = data.balanced_subset(splits, 300, "digits-300")
    assert torch.equal(again.train.tensors[0], subset.train.tensors[0])  # seeded: fixed
    with pytest.raises(ValueError, match="needs 200 rows of each of 10 classes"):
        data.balanced_subset(splits, 2000, "too-many")


def test_the_mnist_regimes_are_balanced_subsets_of_mnist(shared_data_dir):
    small = data.load("mnist-1k")
    assert len(small.train) == 1000 and small.name == "mnist-1k"
    assert torch.bincount(small.train.tensors[1]).tolist() == [100] * 10
    assert len(small.val) == 5000 and len(small.test) == 10000
