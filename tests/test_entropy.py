"""The entropy coder of weight codes: exact round trips, near-entropy size, refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sgsc.fileformat import entropy


def _ideal_bytes(codes: np.ndarray) -> float:
    """The empirical entropy of ``codes`` in bytes: what no coder of i.i.d. symbols beats."""
    _, counts = np.unique(codes, return_counts=True)
    p = counts / counts.sum()
    return float(-(counts * np.log2(p)).sum() / 8)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.integers(-130, 130), max_size=60), min_size=1, max_size=6))
def test_any_groups_round_trip_exactly(groups):
    groups = [np.asarray(g, dtype=np.int64) for g in groups]
    decoded = entropy.decode(entropy.encode(groups), [len(g) for g in groups])
    assert len(decoded) == len(groups)
    for got, want in zip(decoded, groups, strict=True):
        np.testing.assert_array_equal(got, want)


def test_peaked_codes_cost_close_to_their_entropy():
    rng = np.random.default_rng(0)
    codes = np.clip(np.round(rng.laplace(0, 1.2, 20_000)), -8, 7).astype(np.int64)
    stream = entropy.encode([codes])
    packed = 4 * codes.size / 8  # 4-bit two's complement
    assert len(stream) < 0.75 * packed  # far below packing: the codes are peaked
    table = 16 * 3 + 12  # 16 counts of at most 3 bytes, the header words
    assert len(stream) <= _ideal_bytes(codes) * 1.01 + table


def test_wide_codes_in_a_small_group_fall_back_to_their_range():
    """A table of 256 counts for 40 codes would cost more than the codes: a uniform model
    over the group's own range is used, never worse than packing the codes."""
    rng = np.random.default_rng(2)
    codes = rng.integers(-100, 100, 40)
    stream = entropy.encode([codes])
    span = int(codes.max() - codes.min() + 1)
    assert len(stream) <= math.ceil(40 * math.log2(span) / 8) + 16
    np.testing.assert_array_equal(entropy.decode(stream, [40])[0], codes)


def test_a_single_code_costs_no_stream():
    stream = entropy.encode([np.full(1000, -3)])
    assert len(stream) <= 12
    np.testing.assert_array_equal(entropy.decode(stream, [1000])[0], np.full(1000, -3))


@pytest.mark.parametrize("damage", ["cut", "extra", "sizes", "groups"])
def test_a_damaged_stream_is_a_value_error(damage):
    rng = np.random.default_rng(1)
    peaked = np.clip(np.round(rng.laplace(0, 0.8, 700)), -4, 3).astype(np.int64)
    # fitted tables check a group's size by their counts, parametric ones by their rows
    groups = [peaked[:500].reshape(5, 100), peaked[500:].reshape(2, 100)]
    stream = entropy.encode(groups)
    sizes = [(5, 100), (2, 100)]
    if damage == "cut":
        stream = stream[:-5]
    elif damage == "extra":
        stream += b"\0\0\0\0"
    elif damage == "sizes":
        sizes = [(5, 100), (3, 100)]
    else:
        sizes = [500, 200, 7]
    with pytest.raises(ValueError):
        entropy.decode(stream, sizes)


def test_too_wide_a_group_is_refused():
    with pytest.raises(entropy.AlphabetTooLarge, match="at most"):
        entropy.encode([np.array([0, entropy.MAX_ALPHABET << entropy.MAX_RAW_BITS])])
    assert math.log2(entropy.MAX_ALPHABET) == 16


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-(1 << 23), (1 << 23) - 1), min_size=2, max_size=80),
       st.integers(0, 4))
def test_wide_groups_round_trip_exactly_with_their_low_bits_raw(codes, scale):
    """24-bit codes (and narrower spans, each shifted as far as it needs) decode exactly,
    beside a narrow group in the same stream."""
    wide = np.asarray(codes, dtype=np.int64) >> scale
    high, raw = entropy.split(wide)
    assert int(high.max()) - int(high.min()) < entropy.MAX_ALPHABET
    if raw:  # the fewest low bits: one fewer would leave the span too wide
        assert (int(wide.max()) >> (raw - 1)) - (int(wide.min()) >> (raw - 1)) \
            >= entropy.MAX_ALPHABET
    narrow = np.array([[1, -2, 0, 3]])
    decoded = entropy.decode(entropy.encode([wide, narrow]), [wide.size, narrow.shape])
    np.testing.assert_array_equal(decoded[0], wide)
    np.testing.assert_array_equal(decoded[1], narrow.reshape(-1))


def test_wide_peaked_codes_cost_their_high_parts_entropy_plus_the_raw_bits():
    """20-bit codes of a Laplace of scale 2^14 (a model kept at 20 bits): the coder spends
    what its estimate says, close to the Laplace's own entropy, well below packing --
    where the whole group used to stay packed."""
    rng = np.random.default_rng(4)
    codes = np.clip(np.round(rng.laplace(0, 2 ** 14, (8, 3000))), -2 ** 19, 2 ** 19 - 1)
    codes = codes.astype(np.int64)
    high, raw = entropy.split(codes)
    assert raw == 3  # 2^20 codes in 2^16 high parts
    stream = entropy.encode([codes])
    estimate = min(entropy.model_bits(codes).values())
    assert 8 * len(stream) <= estimate + 128  # + two uint32 counts and the ANS's last words
    laplace_bits = codes.size * math.log2(2 * math.e * 2 ** 14)  # its differential entropy
    assert 8 * len(stream) < 1.01 * laplace_bits < 0.85 * 20 * codes.size
    np.testing.assert_array_equal(entropy.decode(stream, [codes.shape])[0], codes.ravel())


def test_rows_of_different_spread_get_a_parametric_model_per_row():
    """Codes near 0 whose spread differs by row: one scale byte a row beats one table for
    the whole group, and every estimate sits above the group's empirical entropy."""
    rng = np.random.default_rng(3)
    spreads = np.geomspace(0.3, 3.0, 40)[:, None]
    rows = np.clip(np.round(rng.laplace(0, 1, (40, 300)) * spreads), -8, 7).astype(np.int64)
    report = entropy.group_report(rows)
    assert report["laplace_bits"] < report["fitted_bits"] < report["uniform_bits"]
    stream = entropy.encode([rows])
    assert 8 * len(stream) <= report["laplace_bits"] + 64  # the coder meets its estimate
    np.testing.assert_array_equal(entropy.decode(stream, [rows.shape])[0], rows.reshape(-1))


def test_a_stream_decodes_group_by_group_when_later_shapes_depend_on_earlier_groups():
    depths = np.array([[3, 0, 3, 5]])
    codes = [np.array([[1, -2, 0], [3, -4, 2]]), np.array([[15, -16, 0]])]
    decoder = entropy.StreamDecoder(entropy.encode([depths, *codes]))
    [got] = decoder.take([(1, 4)])
    assert got.tolist() == [3, 0, 3, 5]
    shapes = [(int((got == b).sum()), 3) for b in (3, 5)]
    assert [g.tolist() for g in decoder.take(shapes)] == [[1, -2, 0, 3, -4, 2], [15, -16, 0]]
    decoder.finish()
