"""Pack signed integers at an exact number of bits each (numpy only, no torch).

The maths of quantisation lives in :mod:`sgsc.core.quant`; this module only knows about
integers and bit widths.  Every value ``v`` stored at ``w`` bits is a two's-complement
integer in ``[-2**(w-1), 2**(w-1) - 1]`` (``w = 0`` stores nothing and means ``v = 0``).

Values are written most significant bit first into one continuous bit stream: rows of
different widths are *not* byte aligned, so a stream of ``n`` values costs exactly
``ceil(sum(widths) / 8)`` bytes, padded with zero bits once at the very end.

* :func:`pack_signed` / :func:`unpack_signed` -- one array, one width.
* :func:`pack_rows` / :func:`unpack_rows` -- many arrays (rows), one width each.
* :func:`fewest_bits` / :func:`trimmed_widths` -- the narrowest width that holds each
  row, and rows' widths cut down to it.
* :class:`BitWriter` / :class:`BitReader` -- the streaming machinery underneath, with a
  width per value; they work in chunks, so memory stays bounded for large models.

Everything is vectorised (``np.packbits`` / ``np.unpackbits`` and broadcasting); the only
Python loops run over rows or chunks, never over single values.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MAX_BITS = 32
"""Widest supported code; two's complement at 32 bits is the full int32 range."""

_CHUNK = 1 << 16
"""Values handled per vectorised step (bounds the ``(chunk, max_width)`` temporaries)."""


def packed_size(bits: Sequence[int] | np.ndarray, counts: Sequence[int] | np.ndarray) -> int:
    """Bytes taken by ``counts[i]`` values at ``bits[i]`` bits each, packed continuously."""
    bits_arr = _check_widths(np.asarray(bits, dtype=np.int64))
    counts_arr = np.asarray(counts, dtype=np.int64)
    if bits_arr.shape != counts_arr.shape:
        raise ValueError(
            f"bits and counts differ in length: {bits_arr.shape} vs {counts_arr.shape}"
        )
    if np.any(counts_arr < 0):
        raise ValueError("counts must be non-negative")
    return _bytes_for(int(np.dot(bits_arr, counts_arr)))


def fewest_bits(rows: np.ndarray) -> np.ndarray:
    """Per row of a 2-D integer array, the fewest two's-complement bits that hold every
    value in it: 0 for a row of zeros, 1 for values in ``[-1, 0]``, 2 for ``[-2, 1]``..."""
    rows = np.asarray(rows)
    if rows.ndim != 2 or not np.issubdtype(rows.dtype, np.integer):
        raise ValueError(f"rows must be a 2-D integer array, got {rows.dtype} of shape "
                         f"{rows.shape}")
    if rows.shape[1] == 0:
        return np.zeros(rows.shape[0], dtype=np.int64)
    values = _as_int64(rows).reshape(rows.shape)
    high = np.maximum(values.max(axis=1), 0)
    low = np.minimum(values.min(axis=1), 0)
    magnitude = np.maximum(high, -low - 1)  # v >= 0 and -v - 1 need the same bits
    if np.any(magnitude >= np.int64(1) << (MAX_BITS - 1)):
        raise ValueError(f"a row holds a value wider than {MAX_BITS} signed bits")
    # bits of the magnitude, counted exactly (no floating-point log2), plus the sign bit
    length = (magnitude[:, None] >= (np.int64(1) << np.arange(MAX_BITS))).sum(axis=1)
    return np.where((high == 0) & (low == 0), 0, length + 1)


def trimmed_widths(widths: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``widths`` (one per row of ``rows``) cut down to the fewest bits each row's values
    need (:func:`fewest_bits`); never wider than given, same dtype."""
    widths = np.asarray(widths)
    if rows.size == 0:
        return widths
    return np.minimum(widths, fewest_bits(rows)).astype(widths.dtype)


def pack_signed(codes: np.ndarray, bits: int) -> bytes:
    """Pack integer ``codes`` (any shape, flattened in C order) at ``bits`` bits each.

    Raises:
        ValueError: if ``bits`` is outside ``0..32`` or a code does not fit in ``bits``.
    """
    return pack_rows([codes], [bits])


def unpack_signed(data: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_signed`: ``count`` int32 values (flat)."""
    return unpack_rows(data, [bits], [count])[0]


def pack_rows(rows: Sequence[np.ndarray], bits: Sequence[int]) -> bytes:
    """Pack each array of ``rows`` (flattened) at its own width ``bits[i]``, back to back."""
    if len(rows) != len(bits):
        raise ValueError(f"got {len(rows)} rows but {len(bits)} bit widths")
    writer = BitWriter()
    for row, width in zip(rows, bits, strict=True):
        values = np.asarray(row).reshape(-1)
        writer.write(values, np.full(values.size, _check_width(width), dtype=np.int64))
    return writer.getvalue()


def unpack_rows(data: bytes, bits: Sequence[int], counts: Sequence[int]) -> list[np.ndarray]:
    """Inverse of :func:`pack_rows`: one flat int32 array per row.

    Raises:
        ValueError: if ``data`` is not exactly :func:`packed_size` bytes long.
    """
    expected = packed_size(bits, counts)
    if len(data) != expected:
        raise ValueError(f"packed data has {len(data)} bytes, expected {expected}")
    reader = BitReader(data)
    out = []
    for width, count in zip(bits, counts, strict=True):
        out.append(reader.read(np.full(int(count), int(width), dtype=np.int64)))
    return out


class BitWriter:
    """Append signed integers at per-value widths to one continuous bit stream."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._pending = np.zeros(0, dtype=np.uint8)  # < 8 bits not yet a full byte
        self.bit_length = 0

    def write(self, values: np.ndarray, widths: np.ndarray) -> None:
        """Append ``values[i]`` at ``widths[i]`` bits (both 1-D and of equal length)."""
        values = _as_int64(values)
        widths = _check_widths(np.asarray(widths, dtype=np.int64).reshape(-1))
        if values.shape != widths.shape:
            raise ValueError(f"{values.size} values but {widths.size} widths")
        _check_range(values, widths)
        for start in range(0, values.size, _CHUNK):
            stop = start + _CHUNK
            self._append_bits(_to_bits(values[start:stop], widths[start:stop]))

    def getvalue(self) -> bytes:
        """All bytes written so far; the last byte is padded with zero bits."""
        return b"".join(self._chunks) + np.packbits(self._pending).tobytes()

    def _append_bits(self, bits: np.ndarray) -> None:
        self.bit_length += bits.size
        bits = np.concatenate([self._pending, bits])
        whole = bits.size - bits.size % 8
        self._chunks.append(np.packbits(bits[:whole]).tobytes())
        self._pending = bits[whole:]


class BitReader:
    """Read signed integers at per-value widths from a stream made by :class:`BitWriter`."""

    def __init__(self, data: bytes) -> None:
        self._data = np.frombuffer(data, dtype=np.uint8)
        self.position = 0  # in bits

    def read(self, widths: np.ndarray) -> np.ndarray:
        """The next ``len(widths)`` values as int32; ``widths[i]`` bits each."""
        widths = _check_widths(np.asarray(widths, dtype=np.int64).reshape(-1))
        needed = self.position + int(widths.sum())
        if needed > self._data.size * 8:
            raise ValueError(
                f"bit stream too short: need {needed} bits, have {self._data.size * 8}"
            )
        out = np.empty(widths.size, dtype=np.int32)
        for start in range(0, widths.size, _CHUNK):
            stop = start + _CHUNK
            out[start:stop] = self._read_chunk(widths[start:stop])
        return out

    def _read_chunk(self, widths: np.ndarray) -> np.ndarray:
        total = int(widths.sum())
        first, skip = divmod(self.position, 8)
        window = self._data[first : _bytes_for(self.position + total)]
        bits = np.unpackbits(window)[skip : skip + total]
        self.position += total
        return _from_bits(bits, widths)


def _to_bits(values: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Bits (one uint8 per bit, MSB first) of ``values`` at ``widths``, concatenated."""
    if values.size == 0:
        return np.zeros(0, dtype=np.uint8)
    top = int(widths.max())
    shifts = np.arange(top - 1, -1, -1, dtype=np.int64)  # MSB first, within `top` bits
    unsigned = values & ((np.int64(1) << widths) - 1)  # two's complement modulo 2**w
    matrix = ((unsigned[:, None] >> shifts) & 1).astype(np.uint8)
    keep = shifts[None, :] < widths[:, None]  # the low `w` bits of each row
    return matrix[keep]


def _from_bits(bits: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_to_bits`: signed int64 values from a flat bit array."""
    if widths.size == 0:
        return np.zeros(0, dtype=np.int64)
    top = max(int(widths.max()), 1)
    column = np.arange(top, dtype=np.int64)
    lead = top - widths  # leading columns that are not part of a value
    starts = np.cumsum(widths) - widths
    valid = column[None, :] >= lead[:, None]
    index = np.where(valid, starts[:, None] + column[None, :] - lead[:, None], 0)
    picked = np.where(valid, bits[index] if bits.size else 0, 0).astype(np.int64)
    unsigned = (picked << (top - 1 - column)).sum(axis=1)
    half = np.int64(1) << np.maximum(widths - 1, 0)
    negative = (widths > 0) & (unsigned >= half)
    return np.where(negative, unsigned - (half << 1), unsigned)


def _as_int64(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values).reshape(-1)
    if not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"codes must have an integer dtype, got {values.dtype}")
    if values.dtype == np.uint64 and values.size and values.max() > np.iinfo(np.int64).max:
        raise ValueError("code too large for 64-bit signed arithmetic")
    return values.astype(np.int64, copy=False)


def _check_range(values: np.ndarray, widths: np.ndarray) -> None:
    half = np.where(widths > 0, np.int64(1) << np.maximum(widths - 1, 0), 0)
    low, high = -half, np.maximum(half - 1, 0)
    bad = (values < low) | (values > high)
    if np.any(bad):
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"code {int(values[i])} at index {i} does not fit in {int(widths[i])} signed bits "
            f"(range [{int(low[i])}, {int(high[i])}])"
        )


def _check_width(width: int) -> int:
    width = int(width)
    if not 0 <= width <= MAX_BITS:
        raise ValueError(f"bit width must be in 0..{MAX_BITS}, got {width}")
    return width


def _check_widths(widths: np.ndarray) -> np.ndarray:
    if widths.size and (widths.min() < 0 or widths.max() > MAX_BITS):
        raise ValueError(f"bit widths must be in 0..{MAX_BITS}, got {widths.min()}..{widths.max()}")
    return widths


def _bytes_for(bit_count: int) -> int:
    return (bit_count + 7) // 8
