"""Data sets and the fixed splits every experiment uses.

Files come from :mod:`sgsc.experiments.sources` (local copy or canonical mirror, sha256-verified).
Splits are fixed and documented, so that runs compare:

* ``mnist``: the official 10,000 test images are used only for final reporting; a
  seeded 5,000-image validation split of the 60,000 training images serves all model
  selection.  ``train_index`` keeps each example's index into the official training set.
* ``mnist-1k``, ``mnist-4k``: the data-scale regimes -- a class-balanced subset of 1,000
  or 4,000 of ``mnist``'s training rows (seed 0, the same for every run); validation and
  test are ``mnist``'s.
* ``digits``: scikit-learn's bundled 8x8 digits (no download), seeded 70/15/15 split.
* ``names``: a seeded shuffle of *whole, distinct names* into 80/10/10 train/val/test.
* ``tinyshakespeare``: 90/5/5 by position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from sgsc.experiments.sources import (  # re-exported: the data API users and the CLI know
    DATA_DIR_ENV,
    DATASETS,
    EMBEDDED,
    FILES,
    IMAGE_DATASETS,
    TEXT_DATASETS,
    DataError,
    DataFile,
    FileStatus,
    check_dataset,
    data_dir,
    fetch,
    locate,
    read_file,
    verify,
)

__all__ = ["DATA_DIR_ENV", "DATASETS", "EMBEDDED", "FILES", "IMAGE_DATASETS", "SUBSETS",
           "TEXT_DATASETS", "DataError", "DataFile", "FileStatus", "ImageSplits", "TextSplits",
           "balanced_subset", "data_dir",
           "fetch", "load", "load_digits", "load_mnist", "load_names", "load_tinyshakespeare",
           "locate", "read_file", "verify"]

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
SPLIT_SEED = 0  # the splits are part of the experiment design, not of a run's seed
MNIST_VAL_SIZE = 5_000
# Data-scale regimes: class-balanced subsets of MNIST's training rows (SPLIT_SEED).
SUBSETS = {"mnist-1k": ("mnist", 1_000), "mnist-4k": ("mnist", 4_000)}


# ---------------------------------------------------------------------------- images


@dataclass
class ImageSplits:
    """Train/val/test as TensorDatasets of normalised float images (N, 1, H, W) and labels.

    ``train_index`` maps a row of ``train`` to its index in the published training set,
    so anything selected from ``train`` (a preservation set) can be traced back.
    """

    name: str
    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    train_index: np.ndarray
    val_index: np.ndarray
    mean: float
    std: float
    num_classes: int = 10

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Back to pixel intensities in [0, 1] (for pictures)."""
        return x * self.std + self.mean


def _decode_idx(payload: bytes, expected_dims: int) -> np.ndarray:
    """Decode an IDX file (big-endian header, unsigned bytes) with numpy; no unpickling."""
    zero, dtype_code, dims = payload[0:2], payload[2], payload[3]
    if zero != b"\x00\x00" or dtype_code != 0x08 or dims != expected_dims:
        raise DataError("not an IDX file of unsigned bytes with the expected dimensions")
    shape = tuple(int.from_bytes(payload[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    data = np.frombuffer(payload, dtype=np.uint8, offset=4 + 4 * dims)
    if data.size != int(np.prod(shape)):
        raise DataError(f"IDX payload holds {data.size} values, header says {shape}")
    return data.reshape(shape)


def _split_indices(n: int, sizes: tuple[int, ...], seed: int) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    bounds = np.cumsum((0, *sizes))
    return [np.sort(order[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _image_dataset(images: np.ndarray, labels: np.ndarray, scale: float, mean: float,
                   std: float) -> TensorDataset:
    x = torch.from_numpy(images.astype(np.float32) / scale).unsqueeze(1)
    return TensorDataset((x - mean) / std, torch.from_numpy(labels.astype(np.int64)))


def load_mnist(*, download: bool = True, val_size: int = MNIST_VAL_SIZE,
               split_seed: int = SPLIT_SEED) -> ImageSplits:
    """MNIST with a seeded validation split of the training set; test kept for reporting."""
    if not 0 < val_size < 60_000:
        raise ValueError(f"val_size must be between 1 and 59,999, got {val_size}")
    tr_x, tr_y, te_x, te_y = (read_file(f, download=download) for f in FILES["mnist"])
    train_images, train_labels = _decode_idx(tr_x, 3), _decode_idx(tr_y, 1)
    test_images, test_labels = _decode_idx(te_x, 3), _decode_idx(te_y, 1)
    val_idx, train_idx = _split_indices(60_000, (val_size, 60_000 - val_size), split_seed)

    def make(images: np.ndarray, labels: np.ndarray) -> TensorDataset:
        return _image_dataset(images, labels, 255.0, MNIST_MEAN, MNIST_STD)

    return ImageSplits(
        name="mnist",
        train=make(train_images[train_idx], train_labels[train_idx]),
        val=make(train_images[val_idx], train_labels[val_idx]),
        test=make(test_images, test_labels),
        train_index=train_idx,
        val_index=val_idx,
        mean=MNIST_MEAN,
        std=MNIST_STD,
    )


def load_digits(*, split_seed: int = SPLIT_SEED) -> ImageSplits:
    """scikit-learn's bundled 8x8 digits (1,797 images), seeded 70/15/15 split."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images, labels = bunch.images, bunch.target  # values 0..16
    n = len(labels)
    n_val = n_test = int(round(0.15 * n))
    train_idx, val_idx, test_idx = _split_indices(n, (n - n_val - n_test, n_val, n_test),
                                                  split_seed)
    mean, std = float(images.mean() / 16), float(images.std() / 16)

    def make(idx: np.ndarray) -> TensorDataset:
        return _image_dataset(images[idx], labels[idx], 16.0, mean, std)

    return ImageSplits("digits", make(train_idx), make(val_idx), make(test_idx),
                       train_index=train_idx, val_index=val_idx, mean=mean, std=std)


# ---------------------------------------------------------------------------- text


@dataclass
class TextSplits:
    """A character corpus split three ways, with its vocabulary.

    ``train``/``val``/``test`` are TensorDatasets of (x, y) token blocks of length
    ``block_size``; targets of -1 (padding after a name ends) are ignored by the loss.
    For ``names`` each row is one whole name, so ``documents[split][i]`` is row ``i``.
    """

    name: str
    vocab: str
    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    documents: dict[str, list[str]]
    block_size: int

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        lookup = {ch: i for i, ch in enumerate(self.vocab)}
        return [lookup[ch] for ch in text]

    def decode(self, tokens: list[int]) -> str:
        return "".join(self.vocab[t] for t in tokens)


def _name_rows(names: list[str], lookup: dict[str, int], block_size: int) -> TensorDataset:
    """One row per name: '.' + name + '.', shifted by one for targets, padded with -1."""
    x = torch.zeros(len(names), block_size, dtype=torch.long)
    y = torch.full((len(names), block_size), -1, dtype=torch.long)
    for row, name in enumerate(names):
        tokens = [0] + [lookup[ch] for ch in name] + [0]
        if len(tokens) - 1 > block_size:
            raise ValueError(f"name {name!r} is longer than block_size={block_size}")
        x[row, : len(tokens) - 1] = torch.tensor(tokens[:-1])
        y[row, : len(tokens) - 1] = torch.tensor(tokens[1:])
    return TensorDataset(x, y)


def load_names(*, block_size: int = 32, download: bool = True,
               split_seed: int = SPLIT_SEED) -> TextSplits:
    """makemore's names.txt: whole names shuffled (seeded) into 80/10/10 train/val/test.

    The file lists 32,033 names but only 29,494 distinct ones; duplicates are dropped
    before splitting so that no name is in two splits.
    """
    text = read_file(FILES["names"][0], download=download).decode("utf-8")
    names = list(dict.fromkeys(line.strip() for line in text.splitlines() if line.strip()))
    vocab = "." + "".join(sorted(set("".join(names))))  # '.' marks start and end
    n = len(names)
    n_train, n_val = int(0.8 * n), int(0.1 * n)
    order = np.random.default_rng(split_seed).permutation(n)
    parts = {"train": order[:n_train], "val": order[n_train:n_train + n_val],
             "test": order[n_train + n_val:]}
    documents = {k: [names[i] for i in idx] for k, idx in parts.items()}
    lookup = {ch: i for i, ch in enumerate(vocab)}
    rows = {k: _name_rows(v, lookup, block_size) for k, v in documents.items()}
    return TextSplits("names", vocab, rows["train"], rows["val"], rows["test"],
                      documents, block_size)


def _stream_blocks(tokens: torch.Tensor, block_size: int) -> TensorDataset:
    """Non-overlapping blocks, so one epoch sees every character once."""
    n_blocks = (len(tokens) - 1) // block_size
    x = tokens[: n_blocks * block_size].view(n_blocks, block_size)
    y = tokens[1: n_blocks * block_size + 1].view(n_blocks, block_size)
    return TensorDataset(x, y)


def load_tinyshakespeare(*, block_size: int = 32, download: bool = True) -> TextSplits:
    """Tiny Shakespeare split 90/5/5 by position."""
    text = read_file(FILES["tinyshakespeare"][0], download=download).decode("utf-8")
    vocab = "".join(sorted(set(text)))
    lookup = {ch: i for i, ch in enumerate(vocab)}
    tokens = torch.tensor([lookup[ch] for ch in text], dtype=torch.long)
    a, b = int(0.9 * len(text)), int(0.95 * len(text))
    pieces = {"train": (0, a), "val": (a, b), "test": (b, len(text))}
    blocks = {k: _stream_blocks(tokens[s:e], block_size) for k, (s, e) in pieces.items()}
    documents = {k: [text[s:e]] for k, (s, e) in pieces.items()}
    return TextSplits("tinyshakespeare", vocab, blocks["train"], blocks["val"],
                      blocks["test"], documents, block_size)


def balanced_subset(splits: ImageSplits, size: int, name: str,
                    seed: int = SPLIT_SEED) -> ImageSplits:
    """``splits`` with a seeded, class-balanced ``size`` of its training rows (``size /
    classes`` per class, in the order of a seeded shuffle); validation and test kept."""
    labels = splits.train.tensors[1].numpy()
    classes = splits.num_classes
    if size % classes or size // classes > np.bincount(labels, minlength=classes).min():
        raise ValueError(f"a balanced subset of {size} needs {size // classes} rows of each of "
                         f"{classes} classes")
    order = np.random.default_rng(seed).permutation(len(labels))
    picked = np.sort(np.concatenate([order[labels[order] == c][: size // classes]
                                     for c in range(classes)]))
    rows = torch.from_numpy(picked)
    train = TensorDataset(*(t[rows] for t in splits.train.tensors))
    return ImageSplits(name=name, train=train, val=splits.val, test=splits.test,
                       train_index=splits.train_index[picked], val_index=splits.val_index,
                       mean=splits.mean, std=splits.std, num_classes=classes)


def load(name: str, **options: Any) -> ImageSplits | TextSplits:
    """Load a data set by name: one of ``DATASETS`` or of :data:`SUBSETS`."""
    if name in SUBSETS:
        base, size = SUBSETS[name]
        return balanced_subset(load(base, **options), size, name)
    check_dataset(name)
    loaders = {"mnist": load_mnist, "digits": load_digits, "names": load_names,
               "tinyshakespeare": load_tinyshakespeare}
    return loaders[name](**options)
