"""Round trips and exact sizes of the signed bit packer."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sgsc.fileformat.bitpack import (
    BitReader,
    BitWriter,
    fewest_bits,
    pack_rows,
    pack_signed,
    packed_size,
    trimmed_widths,
    unpack_rows,
    unpack_signed,
)


def _random_codes(rng: np.random.Generator, bits: int, size: int) -> np.ndarray:
    if bits == 0:
        return np.zeros(size, dtype=np.int32)
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return rng.integers(low, high, size=size, endpoint=True).astype(np.int32)


@pytest.mark.parametrize("bits", range(0, 17))
def test_pack_signed_round_trip(bits: int) -> None:
    rng = np.random.default_rng(bits)
    codes = _random_codes(rng, bits, 1003)
    data = pack_signed(codes, bits)
    assert len(data) == math.ceil(bits * codes.size / 8)
    out = unpack_signed(data, bits, codes.size)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, codes)


@pytest.mark.parametrize("bits", [1, 7, 24, 31, 32])
def test_extremes_round_trip(bits: int) -> None:
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    codes = np.array([low, high, 0, -1 if bits > 0 else 0, low, high], dtype=np.int64)
    np.testing.assert_array_equal(unpack_signed(pack_signed(codes, bits), bits, 6), codes)


def test_zero_bits_is_empty() -> None:
    assert pack_signed(np.zeros(10, dtype=np.int32), 0) == b""
    np.testing.assert_array_equal(unpack_signed(b"", 0, 10), np.zeros(10))


def test_mixed_rows_share_one_stream() -> None:
    rng = np.random.default_rng(0)
    bits = [3, 1, 0, 8, 5, 16, 2, 13]
    counts = [5, 7, 4, 3, 11, 2, 9, 1]
    rows = [_random_codes(rng, b, n) for b, n in zip(bits, counts, strict=True)]
    data = pack_rows(rows, bits)
    total_bits = sum(b * n for b, n in zip(bits, counts, strict=True))
    assert len(data) == math.ceil(total_bits / 8) == packed_size(bits, counts)
    for out, row in zip(unpack_rows(data, bits, counts), rows, strict=True):
        np.testing.assert_array_equal(out, row)


def test_multidimensional_rows_are_flattened() -> None:
    codes = np.arange(-6, 6, dtype=np.int16).reshape(3, 4)
    out = unpack_signed(pack_signed(codes, 4), 4, codes.size)
    np.testing.assert_array_equal(out.reshape(3, 4), codes)


def test_writer_reader_per_value_widths_across_chunks() -> None:
    rng = np.random.default_rng(1)
    widths = rng.integers(0, 17, size=70_000)  # more than one internal chunk
    values = np.array([_random_codes(rng, int(w), 1)[0] for w in widths[:50]])
    values = np.concatenate([values, np.zeros(widths.size - 50, dtype=np.int32)])
    writer = BitWriter()
    writer.write(values[:30_000], widths[:30_000])
    writer.write(values[30_000:], widths[30_000:])
    assert writer.bit_length == int(widths.sum())
    data = writer.getvalue()
    assert len(data) == math.ceil(widths.sum() / 8)
    reader = BitReader(data)
    np.testing.assert_array_equal(reader.read(widths[:123]), values[:123])
    np.testing.assert_array_equal(reader.read(widths[123:]), values[123:])


@pytest.mark.parametrize(("code", "bits"), [(4, 3), (-5, 3), (1, 1), (-2, 1), (1, 0), (2**31, 32)])
def test_out_of_range_raises(code: int, bits: int) -> None:
    with pytest.raises(ValueError, match="does not fit"):
        pack_signed(np.array([0, code], dtype=np.int64), bits)


@pytest.mark.parametrize("bits", [-1, 33])
def test_bad_width_raises(bits: int) -> None:
    with pytest.raises(ValueError, match="bit width"):
        pack_signed(np.zeros(2, dtype=np.int32), bits)


def test_float_codes_rejected() -> None:
    with pytest.raises(ValueError, match="integer dtype"):
        pack_signed(np.zeros(3, dtype=np.float32), 4)


def test_wrong_length_raises() -> None:
    data = pack_signed(np.arange(-4, 4), 4)
    with pytest.raises(ValueError, match="expected 4"):
        unpack_signed(data[:-1], 4, 8)
    with pytest.raises(ValueError, match="expected 4"):
        unpack_signed(data + b"\0", 4, 8)


def test_fewest_bits_is_the_narrowest_width_that_holds_each_row() -> None:
    rows = np.array([[0, 0], [-1, 0], [0, 1], [-2, 1], [3, -4], [4, 0], [-5, 2], [-128, 127]])
    assert fewest_bits(rows).tolist() == [0, 1, 2, 2, 3, 4, 4, 8]
    extremes = np.array([[-2 ** 31, 0], [0, 2 ** 31 - 1]], dtype=np.int32)
    assert fewest_bits(extremes).tolist() == [32, 32]
    assert trimmed_widths(np.array([8, 40], np.uint8), rows[:2]).tolist() == [0, 1]
    generator = np.random.default_rng(0)
    for _ in range(200):
        row = generator.integers(-2 ** 20, 2 ** 20, size=(1, 5)) >> generator.integers(0, 21)
        (width,) = fewest_bits(row)
        unpack_signed(pack_signed(row[0], int(width)), int(width), 5)  # it fits...
        if width:  # ...and one bit fewer does not
            with pytest.raises(ValueError, match="does not fit"):
                pack_signed(row[0], int(width) - 1)


def test_fewest_bits_rejects_what_is_not_rows_of_integers() -> None:
    with pytest.raises(ValueError, match="2-D integer array"):
        fewest_bits(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="2-D integer array"):
        fewest_bits(np.zeros(3, dtype=np.int32))
    assert fewest_bits(np.zeros((3, 0), dtype=np.int32)).tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="wider than 32 signed bits"):
        fewest_bits(np.array([[2 ** 31]]))
