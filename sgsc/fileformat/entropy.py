"""Entropy coding of integer weight codes: fitted and parametric models and an ANS coder.

Bit packing (:mod:`sgsc.fileformat.bitpack`) spends ``b`` bits on every code of a ``b``-bit
row, but the codes are far from uniform -- most weights sit near zero.  Here the codes of
every *group* (the rows of one layer that share a bit depth, a 2-D array rows x codes)
get the cheapest of four models, and one asymmetric-numeral-systems stream
(constriction's ``AnsCoder``) carries every group at close to that model's cross-entropy:

* ``UNIFORM`` over the group's range ``K`` (``log2 K`` bits a code, never more than
  packing's ``b``; no side information);
* ``FITTED``: a categorical table of the group's own counts (a few bytes per code value:
  worth it for large groups of narrow codes);
* ``LAPLACE`` / ``GAUSSIAN``: a discretized Laplace or Gaussian centred on 0 *per row*,
  its scale stored in one byte (``2^(q/8)``, q an int8) -- a few numbers for a whole
  channel, where a table per channel would cost more than it saves and one table for the
  group would miss that rows differ in spread.

Which one is chosen per group is estimated in bits, side information included
(:func:`model_bits`), and :func:`group_report` gives, for every group, those estimates
beside the group's empirical entropy (the floor of any order-0 model of one table).

A group spanning more than :data:`MAX_ALPHABET` codes (rows of 17 bits and more, as a model
started at 20 or 32 bits keeps) is modelled by its codes' high parts, ``code >> R`` for the
fewest ``R`` that bring the span within it (:func:`split`); the ``R`` low bits of every code
follow in the stream at ``R`` bits each.  Such codes are spread far beyond their high parts'
precision, so the low bits are close to uniform and lose little by it, while the high parts
carry what the codes' distribution saves.

Stream layout (little-endian), the codes section of an entropy-coded file::

    uint32        G, the number of groups with codes
    per group:    varint zigzag(low), varint K (high parts low .. low+K-1), varint
                  kind + 4 R (R: the low bits of each code stored raw, 0 unless the
                  group is too wide); FITTED: K varint counts; LAPLACE, GAUSSIAN:
                  varint rows, one int8 per row
    uint32        W, words of the ANS stream
    W x uint32    the ANS stream: per group its high parts, then their low bits

A group of a single code costs no stream at all.  Decoding rebuilds the very same models
from the stored counts and scale bytes, so the round trip is exact.  Nothing here knows
about models or files: callers hand in the groups in a fixed order and get them back.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

MAX_ALPHABET = 1 << 16  # the widest span of (high parts of) codes a model covers
MAX_RAW_BITS = 16  # low bits a code may carry raw: spans up to 2^32 codes are coded
KIND_STRIDE = 4  # a group's stored kind is its model's kind + KIND_STRIDE * its raw bits


class AlphabetTooLarge(ValueError):
    """A group spans more than ``MAX_ALPHABET << MAX_RAW_BITS`` codes (a file's rows hold
    at most 24 bits); its caller keeps such codes bit packed."""


UNIFORM, FITTED, LAPLACE, GAUSSIAN = 0, 1, 2, 3  # the kinds of group model
KIND_NAMES = {UNIFORM: "uniform", FITTED: "fitted", LAPLACE: "laplace", GAUSSIAN: "gaussian"}
PARAMETRIC = (LAPLACE, GAUSSIAN)
SCALE_STEPS = 8  # a row's scale is 2^(q / SCALE_STEPS), q an int8


def _model(kind: int, counts: np.ndarray, low: int = 0):
    import constriction

    models = constriction.stream.model
    if kind == UNIFORM:
        return models.Uniform(len(counts))
    if kind == FITTED:
        return models.Categorical(counts.astype(np.float64), perfect=False)
    high = len(counts) - 1  # symbols are shifted to 0 .. K-1, the mean with them
    cls = models.QuantizedLaplace if kind == LAPLACE else models.QuantizedGaussian
    return cls(0, high)


def split(rows: np.ndarray) -> tuple[np.ndarray, int]:
    """A group's codes as its model sees them, and how many low bits each carries raw:
    ``(rows >> R, R)`` for the fewest ``R`` (0 for most groups) with the high parts
    spanning at most :data:`MAX_ALPHABET` codes.  ``rows & (2^R - 1)`` are the low bits."""
    rows = np.asarray(rows, dtype=np.int64)
    low, high = int(rows.min()), int(rows.max())
    raw = 0
    while (high >> raw) - (low >> raw) >= MAX_ALPHABET:
        raw += 1
    if raw > MAX_RAW_BITS:
        raise AlphabetTooLarge(f"a group spans {high - low + 1} codes; at most "
                               f"{MAX_ALPHABET << MAX_RAW_BITS} can be entropy coded")
    return rows >> raw, raw


def row_scales(rows: np.ndarray, kind: int) -> np.ndarray:
    """The int8 scale code of each row for a parametric model centred on 0 (the maximum
    likelihood scale: mean |x| for a Laplace, RMS for a Gaussian, never below 1/4)."""
    x = np.abs(rows.astype(np.float64))
    spread = x.mean(axis=1) if kind == LAPLACE else np.sqrt((x ** 2).mean(axis=1))
    q = np.round(SCALE_STEPS * np.log2(np.maximum(spread, 0.25)))
    return np.clip(q, -128, 127).astype(np.int8)


def _scales(q: np.ndarray) -> np.ndarray:
    return np.exp2(q.astype(np.float64) / SCALE_STEPS)


def _parametric_probabilities(low: int, count: int, kind: int,
                              scales: np.ndarray) -> np.ndarray:
    """P(code) per row over ``low .. low+count-1`` (rows x count), renormalised to the range."""
    from scipy import stats

    edges = np.arange(low, low + count + 1, dtype=np.float64) - 0.5
    dist = stats.laplace(scale=scales[:, None]) if kind == LAPLACE else \
        stats.norm(scale=scales[:, None])
    cdf = dist.cdf(edges[None, :])
    p = np.maximum(np.diff(cdf, axis=1), 1e-12)
    return p / p.sum(axis=1, keepdims=True)


def model_bits(rows: np.ndarray) -> dict[int, float]:
    """Estimated bits of a group (rows x codes) under each model, side information
    included: what :func:`encode` compares to choose one.  A group too wide for one model
    is estimated as :func:`encode` codes it: its high parts modelled, the low bits raw."""
    rows, raw = split(rows)
    codes = rows.reshape(-1)
    low = int(codes.min())
    counts = np.bincount(codes - low)
    n, k = int(codes.size), len(counts)
    header = 8 * (len(_varint(_zigzag(low))) + len(_varint(k)) + 1)
    row_count = 8 * len(_varint(rows.shape[0])) if rows.ndim == 2 else 0
    used = counts[counts > 0]
    empirical = float(-(used * np.log2(used / n)).sum())
    bits = {UNIFORM: header + n * np.log2(k),
            FITTED: header + empirical + 8 * sum(len(_varint(int(c))) for c in counts)}
    if rows.ndim == 2 and rows.shape[0] and k > 1:
        for kind in PARAMETRIC:
            q = row_scales(rows, kind)
            p = _parametric_probabilities(low, k, kind, _scales(q))
            index = (rows - low)
            picked = np.take_along_axis(p, index, axis=1)
            bits[kind] = (header + row_count + 8 * rows.shape[0]
                          + float(-np.log2(picked).sum()))
    return {kind: value + raw * n for kind, value in bits.items()}


def group_report(rows: np.ndarray) -> dict[str, float]:
    """A group's empirical entropy (bits, order 0, one table over what the coder models:
    a group too wide for one model is its high parts' entropy plus its raw low bits -- the
    codes' own would be a small sample's, far below any coder) and each model's estimate."""
    high, raw = split(rows)
    codes = high.reshape(-1)
    counts = np.bincount(codes - codes.min())
    used = counts[counts > 0]
    entropy_bits = float(-(used * np.log2(used / codes.size)).sum()) + raw * codes.size
    report = {"codes": int(codes.size), "empirical_entropy_bits": entropy_bits}
    report |= {f"{KIND_NAMES[k]}_bits": v for k, v in model_bits(rows).items()}
    return report


def _kind(rows: np.ndarray) -> int:
    """The cheapest model of a group (:func:`model_bits`)."""
    bits = model_bits(rows)
    return min(bits, key=bits.get)


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
    return -2 * value - 1 if value < 0 else 2 * value


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

    def take(self, count: int) -> bytes:
        if self.pos + count > len(self.data):
            raise ValueError("entropy-coded section is truncated")
        chunk = self.data[self.pos:self.pos + count]
        self.pos += count
        return chunk

    def words(self, count: int) -> np.ndarray:
        end = self.pos + 4 * count
        if end > len(self.data):
            raise ValueError(f"entropy-coded section is truncated: {count} words announced, "
                             f"{(len(self.data) - self.pos) // 4} present")
        words = np.frombuffer(self.data[self.pos:end], dtype="<u4").astype(np.uint32)
        self.pos = end
        return words


def encode(groups: Sequence[np.ndarray]) -> bytes:
    """One stream holding every group of integer codes (rows x codes; a 1-D group is one
    row); empty groups take no space."""
    tables, coded = bytearray(), []
    for rows in groups:
        rows = np.asarray(rows, dtype=np.int64)
        rows = rows.reshape(1, -1) if rows.ndim != 2 else rows
        if rows.size == 0:
            continue
        high, raw = split(rows)
        low = int(high.min())
        counts = np.bincount(high.reshape(-1) - low)
        kind = _kind(high) if len(counts) > 1 else UNIFORM
        tables += _varint(_zigzag(low)) + _varint(len(counts))
        tables += _varint(kind + KIND_STRIDE * raw)
        scales = None
        if kind == FITTED:
            for count in counts.tolist():
                tables += _varint(count)
        elif kind in PARAMETRIC:
            q = row_scales(high, kind)
            tables += _varint(high.shape[0]) + q.tobytes()
            scales = np.repeat(_scales(q), high.shape[1])
        low_bits = (rows & ((1 << raw) - 1)).reshape(-1).astype(np.int32)
        coded.append(((high - low).reshape(-1).astype(np.int32), kind, counts, scales,
                      low, low_bits, raw))
    import constriction

    coder = constriction.stream.stack.AnsCoder()
    # a stack: the last group first, and in a group the low bits before the high parts
    for symbols, kind, counts, scales, low, low_bits, raw in reversed(coded):
        if raw:
            coder.encode_reverse(low_bits, constriction.stream.model.Uniform(1 << raw))
        if len(counts) == 1:  # a single code needs no bits: its table says it all
            continue
        if kind in PARAMETRIC:  # centred on code 0, which is symbol -low
            coder.encode_reverse(symbols, _model(kind, counts),
                                 np.full(symbols.size, float(-low)), scales)
        else:
            coder.encode_reverse(symbols, _model(kind, counts))
    words = coder.get_compressed().astype("<u4")
    return (struct.pack("<I", len(coded)) + bytes(tables) + struct.pack("<I", len(words))
            + words.tobytes())


class StreamDecoder:
    """Decode a stream of :func:`encode` group by group, when the shapes of later groups
    depend on earlier ones (a file's bit depths say how many codes follow).

    ``take(shapes)`` gives the next groups, flattened int64 arrays of ``rows * cols``
    codes (an empty shape consumes nothing); ``finish()`` checks that every group was
    taken and the stream is spent.  ``max_words`` bounds the stream a file may announce.
    Raises ``ValueError`` for any inconsistency; never reads past ``data``.
    """

    def __init__(self, data: bytes, max_words: int | None = None) -> None:
        import constriction

        reader = _Reader(data)
        count = reader.uint32()
        self.tables = [self._table(reader) for _ in range(count)]
        words = reader.uint32()
        if max_words is not None and words > max_words:
            raise ValueError(f"entropy-coded stream of {words} words exceeds the bound "
                             f"{max_words}")
        stream = reader.words(words)
        if reader.pos != len(data):
            raise ValueError(f"entropy-coded section has {len(data) - reader.pos} extra bytes")
        self.coder = constriction.stream.stack.AnsCoder(stream) if words else \
            constriction.stream.stack.AnsCoder()
        self.next = 0

    @staticmethod
    def _table(reader: _Reader) -> tuple:
        low = _unzigzag(reader.varint())
        alphabet = reader.varint()
        raw, kind = divmod(reader.varint(), KIND_STRIDE)
        if not 1 <= alphabet <= MAX_ALPHABET or kind not in KIND_NAMES or raw > MAX_RAW_BITS:
            raise ValueError(f"entropy model of {alphabet} symbols (kind {kind}, {raw} raw "
                             "bits) is out of range")
        counts, scales = np.ones(alphabet, dtype=np.int64), None  # uniform: its length
        if kind == FITTED:
            counts = np.array([reader.varint() for _ in range(alphabet)], dtype=np.int64)
            if counts[0] == 0 or counts[-1] == 0:
                raise ValueError("an entropy model's counts do not match its group")
        elif kind in PARAMETRIC:
            rows = reader.varint()
            scales = np.frombuffer(reader.take(rows), dtype=np.int8)
        return low, kind, counts, scales, raw

    def take(self, shapes: Sequence[int | tuple[int, int]]) -> list[np.ndarray]:
        out = []
        for shape in shapes:
            rows, cols = (1, int(shape)) if isinstance(shape, (int, np.integer)) else shape
            n = rows * cols
            if n == 0:
                out.append(np.zeros(0, dtype=np.int64))
                continue
            if self.next >= len(self.tables):
                raise ValueError("entropy-coded section holds fewer groups than the shapes "
                                 "imply")
            low, kind, counts, q, raw = self.tables[self.next]
            self.next += 1
            high = self._high_parts(n, rows, cols, low, kind, counts, q)
            out.append((high << raw) | self._low_bits(n, raw) if raw else high)
        return out

    def _low_bits(self, n: int, raw: int) -> np.ndarray:
        import constriction

        try:
            bits = self.coder.decode(constriction.stream.model.Uniform(1 << raw), n)
        except Exception as err:  # constriction raises on a stream that runs dry
            raise ValueError(f"entropy-coded stream cannot be decoded ({err})") from err
        return bits.astype(np.int64)

    def _high_parts(self, n: int, rows: int, cols: int, low: int, kind: int,
                    counts: np.ndarray, q: np.ndarray | None) -> np.ndarray:
        if kind == FITTED and counts.sum() != n:
            raise ValueError("an entropy model's counts do not match its group")
        if len(counts) == 1:
            return np.full(n, low, dtype=np.int64)
        try:
            if kind in PARAMETRIC:
                if q.size != rows:
                    raise ValueError(f"an entropy model has {q.size} row scales for {rows} "
                                     "rows")
                symbols = self.coder.decode(_model(kind, counts), np.full(n, float(-low)),
                                            np.repeat(_scales(q), cols))
            else:
                symbols = self.coder.decode(_model(kind, counts), n)
        except ValueError:
            raise
        except Exception as err:  # constriction raises on a stream that runs dry
            raise ValueError(f"entropy-coded stream cannot be decoded ({err})") from err
        if symbols.size != n or symbols.max(initial=0) >= len(counts):
            raise ValueError("entropy-coded stream decodes to symbols outside its model")
        return symbols.astype(np.int64) + low

    def finish(self) -> None:
        if self.next != len(self.tables):
            raise ValueError("entropy-coded section announces another number of groups than "
                             "the shapes imply")
        if not self.coder.is_empty():
            raise ValueError("entropy-coded stream holds more than its groups")


def decode(data: bytes, shapes: Sequence[int | tuple[int, int]],
           max_words: int | None = None) -> list[np.ndarray]:
    """The groups :func:`encode` was given, flattened, as int64 arrays; ``shapes`` are
    their (rows, codes per row), or their lengths (see :class:`StreamDecoder`)."""
    decoder = StreamDecoder(data, max_words)
    out = decoder.take(shapes)
    decoder.finish()
    return out


def varint(value: int) -> bytes:
    """``value`` (>= 0) as a little-endian base-128 varint (the file's framing uses it)."""
    return _varint(value)


def zigzag(value: int) -> int:
    """A signed ``value`` (any Python int) as the unsigned number a varint holds (0, -1, 1,
    -2 -> 0, 1, 2, 3)."""
    return _zigzag(value)


def unzigzag(value: int) -> int:
    """The inverse of :func:`zigzag`."""
    return _unzigzag(value)


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` of ``data`` and the position after it; ValueError when the
    data end inside it."""
    reader = _Reader(data)
    reader.pos = pos
    return reader.varint(), reader.pos
