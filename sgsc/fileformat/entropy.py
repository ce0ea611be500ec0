"""Entropy coding of integer weight codes: fitted categorical models and an ANS coder.

Bit packing (:mod:`sgsc.fileformat.bitpack`) spends ``b`` bits on every code of a ``b``-bit row, but
the codes are far from uniform -- most weights sit near zero.  Here the codes of every
*group* (the rows of one layer that share a bit depth) get a categorical model fitted to
the group's own counts, and one asymmetric-numeral-systems stream (constriction's
``AnsCoder``) carries every group at close to its empirical entropy.

Stream layout (little-endian), the codes section of an entropy-coded file::

    uint32        G, the number of groups with codes
    per group:    varint zigzag(low), varint K (codes low .. low+K-1), varint kind;
                  kind 1 (fitted): K varint counts follow; kind 0 (uniform): nothing
    uint32        W, words of the ANS stream
    W x uint32    the ANS stream

A fitted table costs a few bytes per code value, which a small group of wide codes
cannot earn back; such a group is coded uniformly over its own range ``K`` instead
(``log2 K`` bits a code, never more than packing's ``b``), whichever is estimated
smaller.  A group of a single code costs no stream at all.  Decoding rebuilds the very
same models from the stored counts (integer counts give bit-identical float64
probabilities), so the round trip is exact.  Nothing here knows about models or files:
callers hand in the groups in a fixed order and get them back in it.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

MAX_ALPHABET = 1 << 16  # a group spanning more codes than this is refused (24-bit rows)


class AlphabetTooLarge(ValueError):
    """A group spans more than :data:`MAX_ALPHABET` codes (rows of up to 24 bits are
    allowed); its caller keeps such codes bit packed."""


FITTED, UNIFORM = 1, 0  # the two kinds of group model


def _model(kind: int, counts: np.ndarray):
    import constriction

    if kind == UNIFORM:
        return constriction.stream.model.Uniform(len(counts))
    return constriction.stream.model.Categorical(counts.astype(np.float64), perfect=False)


def _kind(counts: np.ndarray) -> int:
    """The cheaper model for a group: a fitted table (its varints plus the codes at their
    empirical entropy) or a uniform one (log2 of the range per code)."""
    n = int(counts.sum())
    used = counts[counts > 0]
    entropy_bits = float(-(used * np.log2(used / n)).sum())
    table_bits = 8 * sum(len(_varint(int(c))) for c in counts)
    return FITTED if entropy_bits + table_bits < n * np.log2(len(counts)) else UNIFORM


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _zigzag(value: int) -> int:
    return (value << 1) ^ (value >> 63) if value < 0 else value << 1


def _unzigzag(value: int) -> int:
    return (value >> 1) ^ -(value & 1)


class _Reader:
    """Read varints and words from ``data``, failing with ValueError when it runs out."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def varint(self) -> int:
        value, shift = 0, 0
        while True:
            if self.pos >= len(self.data) or shift > 63:
                raise ValueError("entropy-coded section ends inside a number")
            byte = self.data[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7

    def uint32(self) -> int:
        if self.pos + 4 > len(self.data):
            raise ValueError("entropy-coded section is truncated")
        (value,) = struct.unpack_from("<I", self.data, self.pos)
        self.pos += 4
        return value

    def words(self, count: int) -> np.ndarray:
        end = self.pos + 4 * count
        if end > len(self.data):
            raise ValueError(f"entropy-coded section is truncated: {count} words announced, "
                             f"{(len(self.data) - self.pos) // 4} present")
        words = np.frombuffer(self.data[self.pos:end], dtype="<u4").astype(np.uint32)
        self.pos = end
        return words


def encode(groups: Sequence[np.ndarray]) -> bytes:
    """One stream holding every group of integer codes (empty groups take no space)."""
    tables, coded = bytearray(), []
    for codes in groups:
        codes = np.asarray(codes, dtype=np.int64).reshape(-1)
        if codes.size == 0:
            continue
        low = int(codes.min())
        counts = np.bincount(codes - low)
        if len(counts) > MAX_ALPHABET:
            raise AlphabetTooLarge(f"a group spans {len(counts)} codes; at most "
                                   f"{MAX_ALPHABET} can be entropy coded")
        kind = _kind(counts) if len(counts) > 1 else UNIFORM
        tables += _varint(_zigzag(low)) + _varint(len(counts)) + _varint(kind)
        if kind == FITTED:
            for count in counts.tolist():
                tables += _varint(count)
        coded.append(((codes - low).astype(np.int32), kind, counts))
    import constriction

    coder = constriction.stream.stack.AnsCoder()
    for symbols, kind, counts in reversed(coded):  # a stack: the last group encoded first
        if len(counts) > 1:  # a single code needs no bits: its table says it all
            coder.encode_reverse(symbols, _model(kind, counts))
    words = coder.get_compressed().astype("<u4")
    return (struct.pack("<I", len(coded)) + bytes(tables) + struct.pack("<I", len(words))
            + words.tobytes())


def decode(data: bytes, sizes: Sequence[int], max_words: int | None = None
           ) -> list[np.ndarray]:
    """The groups :func:`encode` was given, as int64 arrays; ``sizes`` are their lengths
    (known to the caller from the shapes).  ``max_words`` bounds the stream a file may
    announce.  Raises ``ValueError`` for any inconsistency; never reads past ``data``."""
    reader = _Reader(data)
    present = [n for n in sizes if n > 0]
    if reader.uint32() != len(present):
        raise ValueError("entropy-coded section announces another number of groups than "
                         "the shapes imply")
    tables = []
    for n in present:
        low = _unzigzag(reader.varint())
        alphabet = reader.varint()
        kind = reader.varint()
        if not 1 <= alphabet <= MAX_ALPHABET or kind not in (FITTED, UNIFORM):
            raise ValueError(f"entropy model of {alphabet} symbols (kind {kind}) is out of "
                             "range")
        if kind == FITTED:
            counts = np.array([reader.varint() for _ in range(alphabet)], dtype=np.int64)
            if counts.sum() != n or counts[0] == 0 or counts[-1] == 0:
                raise ValueError("an entropy model's counts do not match its group")
        else:
            counts = np.ones(alphabet, dtype=np.int64)  # only its length is used
        tables.append((low, kind, counts))
    words = reader.uint32()
    if max_words is not None and words > max_words:
        raise ValueError(f"entropy-coded stream of {words} words exceeds the bound {max_words}")
    stream = reader.words(words)
    if reader.pos != len(data):
        raise ValueError(f"entropy-coded section has {len(data) - reader.pos} extra bytes")
    import constriction

    coder = constriction.stream.stack.AnsCoder(stream) if words else \
        constriction.stream.stack.AnsCoder()
    out, it = [], iter(tables)
    for n in sizes:
        if n == 0:
            out.append(np.zeros(0, dtype=np.int64))
            continue
        low, kind, counts = next(it)
        if len(counts) == 1:
            out.append(np.full(n, low, dtype=np.int64))
            continue
        try:
            symbols = coder.decode(_model(kind, counts), n)
        except Exception as err:  # constriction raises on a stream that runs dry
            raise ValueError(f"entropy-coded stream cannot be decoded ({err})") from err
        if symbols.size != n or symbols.max(initial=0) >= len(counts):
            raise ValueError("entropy-coded stream decodes to symbols outside its model")
        out.append(symbols.astype(np.int64) + low)
    if not coder.is_empty():
        raise ValueError("entropy-coded stream holds more than its groups")
    return out
