"""sgsc.core.preservation: critical training examples, chosen and read back correctly.

The reference is a small MnistCNN trained for a few epochs on the 8x8 digits; every rule
is checked against an independent recomputation in this file (Grad-CAM through
``retain_grad``, margins and entropies from a plain softmax, k-means with scikit-learn).
"""

from __future__ import annotations

import ast
import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from threadpoolctl import threadpool_limits
from torch.utils.data import TensorDataset

from sgsc.core import preservation
from sgsc.core.preservation import (
    ExampleScores,
    PreservationSet,
    allocate,
    build_preservation_set,
    plot_preservation_grid,
    score_examples,
    select,
)
from sgsc.experiments.models import CharTransformer, CNNConfig, MnistCNN, TransformerConfig


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tiny models and k-means on a shared 2-core machine: extra threads only contend
    # (oversubscribed OpenMP runs k-means some 20x slower).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def train(digits) -> TensorDataset:
    return digits.train


@pytest.fixture(scope="module")
def reference(train) -> MnistCNN:
    """The float reference: a few epochs on the digits training split (about a second)."""
    torch.manual_seed(0)
    model = MnistCNN(CNNConfig.for_digits())
    x, y = train.tensors
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(4):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 128):
            batch = perm[i:i + 128]
            loss = F.cross_entropy(model(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


@pytest.fixture(scope="module")
def pres(reference, train) -> PreservationSet:
    return build_preservation_set(reference, train, 90, seed=0)


def gradcam_scores(model: MnistCNN, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Grad-CAM of the true-label logit on conv4, mean over positions, no normalisation."""
    model = copy.deepcopy(model).eval()
    kept = {}

    def hook(module, args, out):
        out.retain_grad()
        kept["a"] = out

    handle = model.conv4.register_forward_hook(hook)
    logits = model(x)
    handle.remove()
    logits.gather(1, y[:, None]).sum().backward()
    a, g = kept["a"], kept["a"].grad
    cam = torch.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(1))
    return cam.mean(dim=(1, 2)).detach().double().numpy()


def probabilities(model, x) -> np.ndarray:
    with torch.no_grad():
        return F.softmax(model(x), dim=1).double().numpy()


# ----------------------------------------------------------------------------- the set


def test_exact_size_distinct_rows_of_the_training_split(pres, train):
    assert len(pres) == 90 and pres.indices.dtype == np.int64
    assert len(np.unique(pres.indices)) == 90
    assert pres.indices.min() >= 0 and pres.indices.max() < len(train)
    assert pres.meta["dataset_size"] == len(train)


def test_labels_are_read_by_index(pres, train):
    x, y = train.tensors
    rows = torch.from_numpy(pres.indices)
    sub = pres.subset(train)
    assert len(sub) == 90
    assert torch.equal(sub.tensors[1], y[rows]) and torch.equal(sub.tensors[0], x[rows])
    assert torch.equal(pres.labels(train), y[rows])
    for k in range(len(pres)):  # every position, one by one
        assert int(sub[k][1]) == int(y[pres.indices[k]])


def test_counts_follow_the_shares(reference, train, pres):
    assert pres.counts() == {"saliency": 30, "uncertainty": 30, "diversity": 30}
    uneven = build_preservation_set(reference, train, 50, saliency=1, uncertainty=2,
                                    diversity=1)
    # 12.5 / 25 / 12.5: one leftover pick, the tie goes to the first rule
    assert uneven.counts() == {"saliency": 13, "uncertainty": 25, "diversity": 12}
    assert list(uneven.criterion[:13]) == ["saliency"] * 13


def test_largest_remainder_allocation():
    thirds = dict(saliency=1 / 3, uncertainty=1 / 3, diversity=1 / 3)
    assert allocate(200, thirds) == {"saliency": 67, "uncertainty": 67, "diversity": 66}
    assert allocate(10, dict(saliency=0.71, uncertainty=0.19, diversity=0.1)) == {
        "saliency": 7, "uncertainty": 2, "diversity": 1}
    assert allocate(7, dict(saliency=1, uncertainty=0, diversity=0))["saliency"] == 7
    assert allocate(1, thirds) == {"saliency": 1, "uncertainty": 0, "diversity": 0}


def test_seeded_determinism_and_round_trip(reference, train, pres):
    again = build_preservation_set(reference, train, 90, seed=0, batch_size=100)
    assert np.array_equal(again.indices, pres.indices)
    assert np.array_equal(again.criterion, pres.criterion)
    state = json.loads(json.dumps(pres.to_dict()))
    back = PreservationSet.from_dict(state)
    assert np.array_equal(back.indices, pres.indices)
    assert np.array_equal(back.criterion, pres.criterion)
    assert np.allclose(back.scores, pres.scores) and back.meta == pres.meta


def test_reference_model_is_left_as_it_was(reference, train):
    model = copy.deepcopy(reference).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    build_preservation_set(model, train, 10, progress=True)
    assert model.training  # mode restored
    assert all(p.grad is None for p in model.parameters())  # no gradients left behind
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN stats untouched


# ----------------------------------------------------------------------------- the rules


def test_saliency_only_is_the_top_k_of_independent_gradcam(reference, train):
    x, y = train.tensors
    expected = gradcam_scores(reference, x, y)
    got = build_preservation_set(reference, train, 25, saliency=1, uncertainty=0, diversity=0)
    assert set(got.criterion) == {"saliency"}
    assert list(got.indices) == list(np.argsort(-expected, kind="stable")[:25])
    assert np.allclose(got.scores, expected[got.indices], rtol=1e-4)


def test_gradcam_scores_are_raw_not_min_max_normalised(reference, train):
    base = score_examples(reference, train)
    doubled = copy.deepcopy(reference)
    with torch.no_grad():
        doubled.fc.weight.mul_(2)
    scaled = score_examples(doubled, train)
    assert np.allclose(scaled.saliency, 2 * base.saliency, rtol=1e-4, atol=1e-8)
    assert base.saliency.max() != pytest.approx(1.0)


def test_margin_picks_match_an_independent_softmax(reference, train):
    p = np.sort(probabilities(reference, train.tensors[0]), axis=1)
    margin = p[:, -1] - p[:, -2]
    got = build_preservation_set(reference, train, 40, saliency=1, uncertainty=1, diversity=0)
    sal = got.indices[got.criterion == "saliency"]
    unc = got.indices[got.criterion == "uncertainty"]
    # the smallest margins, skipping rows saliency already took
    expected = [i for i in np.argsort(margin, kind="stable") if i not in set(sal)][:20]
    assert list(unc) == expected
    assert np.allclose(got.scores[got.criterion == "uncertainty"], 1 - margin[unc], atol=1e-5)


def test_entropy_measure(reference, train):
    p = probabilities(reference, train.tensors[0])
    entropy = -(p * np.log(np.clip(p, 1e-300, None))).sum(1)
    got = build_preservation_set(reference, train, 15, saliency=0, uncertainty=1, diversity=0,
                                 uncertainty_measure="entropy")
    assert list(got.indices) == list(np.argsort(-entropy, kind="stable")[:15])
    assert got.meta["uncertainty_measure"] == "entropy"


def test_diversity_is_one_row_per_global_cluster(reference, train):
    with torch.no_grad():
        feats = reference.features(train.tensors[0]).double().numpy()
    z = PCA(n_components=min(16, feats.shape[1]), random_state=3).fit_transform(feats)
    km = KMeans(n_clusters=12, n_init=preservation.KMEANS_N_INIT, random_state=3).fit(z)
    dist = km.transform(z)[np.arange(len(z)), km.labels_]
    nearest = {int(np.flatnonzero(km.labels_ == c)[np.argmin(dist[km.labels_ == c])])
               for c in range(12)}
    got = build_preservation_set(reference, train, 12, saliency=0, uncertainty=0, diversity=1,
                                 seed=3, pca_components=16)
    assert set(got.indices) == nearest
    assert len(set(km.labels_[got.indices])) == 12


def test_a_taken_row_is_replaced_by_the_same_rules_next_best():
    n = 20
    ranking = np.arange(n, 0, -1, dtype=float)  # row 0 best for both rules
    scores = ExampleScores(saliency=ranking, uncertainty=ranking.copy(),
                           features=np.eye(n), uncertainty_measure="margin",
                           target_layer="t", feature_layer="f", kind="image")
    got = select(scores, 6, saliency=1, uncertainty=1, diversity=0)
    assert list(got.indices) == [0, 1, 2, 3, 4, 5]
    assert list(got.criterion) == ["saliency"] * 3 + ["uncertainty"] * 3
    # diversity with every cluster's nearest row already taken still fills its quota
    got = select(scores, n, saliency=1, uncertainty=1, diversity=2, pca_components=None)
    assert sorted(got.indices) == list(range(n))
    assert got.counts() == {"saliency": 5, "uncertainty": 5, "diversity": 10}


# ----------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("kwargs, message", [
    (dict(size=0), "size must be a positive integer"),
    (dict(size=2.5), "size must be a positive integer"),
    (dict(size=True), "size must be a positive integer"),
    (dict(size=10**6), "choose a size between 1 and"),
    (dict(saliency=-1), "non-negative"),
    (dict(uncertainty=float("nan")), "finite"),
    (dict(saliency=0, uncertainty=0, diversity=0), "sum to more than 0"),
    (dict(uncertainty_measure="least_confidence"), "uncertainty_measure must be one of"),
    (dict(target_layer="conv9"), "choose one of: conv1"),
    (dict(feature_layer="head"), "feature_layer 'head' is not a module"),
    (dict(batch_size=0), "batch_size must be a positive integer"),
    (dict(pca_components=0), "pca_components must be a positive integer"),
    (dict(target_layer="fc"), "Grad-CAM needs feature maps"),
])
def test_bad_arguments_say_what_to_do(reference, train, kwargs, message):
    kwargs = dict(size=10) | kwargs
    with pytest.raises(ValueError, match=message):
        build_preservation_set(reference, train, **kwargs)


def test_any_map_style_dataset_of_pairs_gives_the_same_set(reference, train):
    """A list of (x, y) pairs is a map-style Dataset as torchvision's are: the same rows."""
    as_pairs = build_preservation_set(reference, list(train), 5)
    assert as_pairs.indices.tolist() == build_preservation_set(reference, train, 5).indices.tolist()


def test_bad_datasets_are_refused(reference, train):
    with pytest.raises(ValueError, match=r"map-style Dataset of \(x, y\) pairs.*item 0"):
        build_preservation_set(reference, [x for x, _ in train], 5)
    x, y = train.tensors
    with pytest.raises(ValueError, match="targets must lie in"):
        build_preservation_set(reference, TensorDataset(x, y + 10), 5)
    elsewhere = copy.deepcopy(reference).to("meta")  # stands in for a model left on a GPU
    with pytest.raises(ValueError, match="move it first with model.to"):
        build_preservation_set(elsewhere, train, 5)


def test_set_guards_against_the_wrong_split_and_bad_rows(pres, train, digits):
    with pytest.raises(ValueError, match="same training split"):
        pres.subset(digits.val)
    with pytest.raises(ValueError, match="distinct"):
        PreservationSet(np.array([1, 1]), np.array(["saliency", "diversity"]))
    with pytest.raises(ValueError, match="unknown criterion"):
        PreservationSet(np.array([1]), np.array(["confidence"]))
    with pytest.raises(ValueError, match="missing indices"):
        PreservationSet.from_dict({"criterion": []})


def test_layering_no_data_or_training_imports():
    tree = ast.parse(Path(preservation.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"sgsc.experiments.data", "sgsc.experiments.train",
                           "sgsc.experiments.runs"}


# ----------------------------------------------------------------------------- text


NAMES = ["emma", "olivia", "ava", "isabella", "sophia", "mia", "charlotte", "amelia",
         "harper", "evelyn", "abigail", "emily", "ella", "elizabeth", "camila", "luna"]


def name_rows(names: list[str], block_size: int) -> tuple[TensorDataset, int]:
    """The sgsc.experiments.data names format: '.' + name + '.', targets shifted, padding -1."""
    vocab = "." + "".join(sorted(set("".join(names))))
    x = torch.zeros(len(names), block_size, dtype=torch.long)
    y = torch.full((len(names), block_size), -1, dtype=torch.long)
    for row, name in enumerate(names):
        tokens = [0] + [vocab.index(c) for c in name] + [0]
        x[row, :len(tokens) - 1] = torch.tensor(tokens[:-1])
        y[row, :len(tokens) - 1] = torch.tensor(tokens[1:])
    return TensorDataset(x, y), len(vocab)


def test_char_transformer_end_to_end():
    rows, vocab_size = name_rows(NAMES, block_size=12)
    torch.manual_seed(0)
    model = CharTransformer(TransformerConfig(vocab_size=vocab_size, block_size=12, n_embd=16,
                                              n_head=2, n_layer=1))
    got = build_preservation_set(model, rows, 9, batch_size=5)
    assert len(got) == 9 and len(set(got.indices)) == 9
    assert got.counts() == {"saliency": 3, "uncertainty": 3, "diversity": 3}
    assert got.meta["target_layer"] == "wte" and got.meta["feature_layer"] == "lm_head"
    assert got.meta["uncertainty_measure"] == "nll"
    assert np.isfinite(got.scores).all()
    # uncertainty = mean NLL over the real characters of each name
    x, y = rows.tensors
    with torch.no_grad():
        logits, _ = model(x, y)
    nll = F.cross_entropy(logits.transpose(1, 2), y, ignore_index=-1, reduction="none")
    mean_nll = (nll.sum(1) / (y != -1).sum(1)).double().numpy()
    only = build_preservation_set(model, rows, 4, saliency=0, uncertainty=1, diversity=0)
    assert list(only.indices) == list(np.argsort(-mean_nll, kind="stable")[:4])
    # padding carries no weight: other tokens where the target is -1 change no score
    noisy = x.clone()
    noisy[y == -1] = 5
    base, changed = score_examples(model, rows), score_examples(model, TensorDataset(noisy, y))
    assert np.allclose(changed.saliency, base.saliency, rtol=1e-4)
    assert np.allclose(changed.uncertainty, base.uncertainty, rtol=1e-5)
    assert np.allclose(changed.features, base.features, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- picture


def test_grid_figure(pres, train, digits):
    fig = plot_preservation_grid(pres, train, n=10, denormalize=digits.denormalize)
    assert isinstance(fig, Figure)
    drawn = [ax for ax in fig.axes if ax.images]
    assert len(drawn) == 10
    assert {ax.get_title().split()[0] for ax in drawn} == {"sal", "unc", "div"}
    small = PreservationSet(pres.indices[:3], pres.criterion[:3], meta=pres.meta)
    assert len([ax for ax in plot_preservation_grid(small, train).axes if ax.images]) == 3


# ----------------------------------------------------------------------------- MNIST


@pytest.mark.slow
def test_mnist_set_comes_from_training_rows_only(mnist, monkeypatch):
    from sgsc.experiments import data

    # the function gets the training split only; it must not load anything itself
    def refuse(*args, **kwargs):
        raise AssertionError("build_preservation_set must not load data")

    monkeypatch.setattr(data, "load_mnist", refuse)
    monkeypatch.setattr(data, "read_file", refuse)
    rows = np.random.default_rng(0).choice(len(mnist.train), 5_000, replace=False)
    x, y = mnist.train.tensors
    part = TensorDataset(x[rows], y[rows])
    torch.manual_seed(0)
    model = MnistCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for i in range(0, 5_000, 250):  # one short epoch: a reference, not a good model
        loss = F.cross_entropy(model(part.tensors[0][i:i + 250]), part.tensors[1][i:i + 250])
        opt.zero_grad()
        loss.backward()
        opt.step()
    got = build_preservation_set(model, part, 200)
    assert len(got) == 200 and len(set(got.indices)) == 200
    official = mnist.train_index[rows[got.indices]]
    assert set(official).isdisjoint(mnist.val_index)
    assert torch.equal(got.labels(part), y[rows[got.indices]])


def test_split_holds_out_a_seeded_share_of_every_rule():
    criterion = ["saliency"] * 40 + ["uncertainty"] * 40 + ["diversity"] * 20
    pres = PreservationSet(np.arange(100) * 3, np.array(criterion), np.linspace(0, 1, 100))
    kept, held = pres.split(0.3, seed=0)
    assert len(held) == 30 and len(kept) == 70
    assert not set(kept.indices) & set(held.indices)
    assert set(kept.indices) | set(held.indices) == set(pres.indices)
    assert held.counts() == {"saliency": 12, "uncertainty": 12, "diversity": 6}
    # scores and criteria travel with their rows
    by_row = dict(zip(pres.indices.tolist(), pres.scores.tolist(), strict=True))
    assert all(by_row[i] == s for i, s in zip(held.indices, held.scores, strict=True))
    again, _ = pres.split(0.3, seed=0)[::-1]
    assert np.array_equal(again.indices, held.indices)
    other = pres.split(0.3, seed=1)[1]
    assert not np.array_equal(np.sort(other.indices), np.sort(held.indices))


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5, True])
def test_split_refuses_a_fraction_outside_0_1(fraction):
    pres = PreservationSet(np.arange(10), np.array(["saliency"] * 10))
    with pytest.raises(ValueError, match="fraction"):
        pres.split(fraction)
