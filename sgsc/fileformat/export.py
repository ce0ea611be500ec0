"""Write a self-compressed model to disk as an inference file, and read it back.

The file holds what a deployed model needs and nothing else: per stored row of a
quantized weight its bit depth, its exponent and its integer codes at that many bits;
every other tensor at its own (or a narrowed) dtype; BatchNorm folded into the quantized
layer before it (:mod:`sgsc.fileformat.fold`: no running statistics); a few bytes of
framing and a compact description of the architecture; a checksum.

File layout, format 2 (little-endian)::

    offset  size  field
    0       4     magic b"SGSC"
    4       1     format version (2)
    5       1     flags (bit 0: payload xz compressed; bit 1: codes and bit depths entropy
                  coded, see sgsc.fileformat.entropy)
    6       var   M = length of the metadata block (varint)
    .       var   P = length of the payload as stored (varint)
    .       M     metadata (below)
    .       P     payload (raw, or xz-compressed when flag bit 0 is set)
    end-4   4     CRC32 of every byte before it (uint32)

The metadata names the model (its registry name, or "custom:<module>.<class>") and its
config (the fields that differ from the class's defaults, as JSON; none for a model of
your own), then per tensor its reference (its index in a freshly built model's
``state_dict``: a registered model's keys cost nothing -- or its key, for a model of
your own or a bias pruning created, sharing its prefix with the key before), its storage
(one byte: quantized, or the dtype it is stored at) and its shape, then the folded
BatchNorms and the exponent coding -- as varints and short strings, a few dozen bytes.
The payload, before any xz, is three sections back to back:

1. exponents: one float32 per stored row of every quantized weight (tensor order, row
   order) -- or, in ``grid`` (``precision="grid"`` or ``"narrow"``), per quantized tensor
   the varint ``zigzag(base)`` and one byte ``width``, then per row ``k - base`` as a signed
   ``width``-bit integer (bit stream, padded to a byte), with ``e = k / 2^10``; files of
   encoder revisions before 4 may hold ``fixed16``: per tensor a float32 ``low`` and
   ``step``, then one uint16 ``u`` per row with ``e = low + u * step``;
2. one continuous bit stream (:mod:`sgsc.fileformat.bitpack`): first every row's bit depth
   in 5 bits (``b - 16`` in two's complement: b is at most 24), then the codes, row after
   row, each weight at its row's bit depth, two's complement, not byte aligned, zero
   padded once at the end -- or, with flag bit 1, a uint32 length and one entropy stream:
   a group of bit depths per quantized tensor, then a group of codes per (tensor, bit
   depth) in tensor order and rising bit depth, each with its cheapest model (a fitted
   table, or a discretized Laplace or Gaussian per row; rows above 16 bits modelled by
   their codes' high parts, the low bits raw: :func:`sgsc.fileformat.entropy.split`);
3. raw tensors: each remaining tensor's bytes at its stored dtype, in order.

So a packed file's payload is exactly what :meth:`SelfCompression.storage_bits` counts,
when nothing is folded, narrowed, put on the grid, dropped or trimmed (a row whose codes
are all zero is stored as a zero-bit row: ``drop_empty_rows``; a row is stored at the
fewest bits its codes need, at most its learned depth: ``trim_bit_depths``).

Format 1 files (a fixed 20-byte header, uint8 bit depths, JSON with keys) stay readable.

Loading never unpickles anything: the model is rebuilt from the registry (or given by the
caller: ``load_compressed(path, model=MyNet())``), resized with
:func:`sgsc.structure.prune.replace_tensor` and filled from ``numpy.frombuffer`` arrays;
a folded BatchNorm is set to the identity.  Quantized weights are rebuilt as
``exp2(e) * codes`` in float32, the very operations of :func:`sgsc.core.quant.quantize`,
so the loaded model computes what the compressed model computed: exactly without
folding, within float rounding with it (each fold is checked when the file is written).

A file is checked before anything large is allocated: its size, the decompressed size of
its metadata and payload (decompression stops at a bound), every stored shape against the
architecture it names (built on the ``meta`` device, which allocates nothing: pruning only
ever shrinks a tensor) and every section's length against the bytes present.  A file that
fails any check is a :class:`CorruptFileError` naming what is wrong.

:func:`byte_budget` says where a file's bytes go, per section and per layer, with each
layer's codes beside their empirical entropy (``python -m sgsc inspect FILE``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import lzma
import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from sgsc.core import quant
from sgsc.core.compress import DEPTH_BITS
from sgsc.fileformat import atomic, bitpack, entropy
from sgsc.fileformat.registry import build_model, registered_name
from sgsc.structure import prune

if TYPE_CHECKING:
    from sgsc.core.compress import SelfCompression

MAGIC = b"SGSC"
FORMAT_VERSION = 2
# Raised whenever the same model encodes to other bytes within one format (2: empty rows
# dropped; 3: rows above 16 bits entropy coded, their low bits raw; 4: narrow exponents on
# a grid; 5: rows trimmed to the bits their codes use), so that caches of encoded sizes
# know theirs are stale.
ENCODER_REVISION = 5
FLAG_LZMA = 1
FLAG_ENTROPY = 2
CODINGS = {"packed": 0, "lzma": FLAG_LZMA, "entropy": FLAG_ENTROPY}
# grid: exponents on a grid, every other tensor at its dtype; narrow: grid, and the other
# float32 tensors as float16
PRECISIONS = ("exact", "grid", "narrow")
CUSTOM = "custom:"  # model name prefix of a user's own (unregistered) model
DEPTH_OFFSET = 16  # a bit depth 0..24 is stored as b - 16 in DEPTH_BITS (5) bits
EXPONENT_STEPS = (1 << 16) - 1  # fixed16 (files before encoder 4): a layer's range in 65535
# grid (from encoder 4): exponents rounded to multiples of 2^-10, so a weight moves by at
# most 2^-11 * ln 2 = 0.034 % -- within float16's own rounding (0.049 %), which narrow
# applies to the other tensors as well -- and each layer's rows take only the bits
# the spread of its exponents needs (about 12, against fixed16's 16 and its 8-byte range)
EXPONENT_GRID_BITS = 10

# What a file may make the loader allocate, whatever it claims.
MAX_FILE_BYTES = 1 << 31  # 2 GiB on disk
MAX_METADATA_BYTES = 16 << 20  # decompressed metadata JSON
MAX_ELEMENTS = 1 << 26  # elements of the model a file names (256 MiB of float32)

_HEADER_V1 = struct.Struct("<4sHHIQ")
_TRAILER = struct.Struct("<I")

_DTYPES: dict[str, tuple[torch.dtype, str]] = {
    "float64": (torch.float64, "<f8"),
    "float32": (torch.float32, "<f4"),
    "float16": (torch.float16, "<f2"),
    "bfloat16": (torch.bfloat16, "<i2"),  # numpy has no bfloat16: move the raw 16 bits
    "int64": (torch.int64, "<i8"),
    "int32": (torch.int32, "<i4"),
    "int16": (torch.int16, "<i2"),
    "int8": (torch.int8, "i1"),
    "uint8": (torch.uint8, "u1"),
    "bool": (torch.bool, "?"),
}
_DTYPE_NAMES = {torch_dtype: name for name, (torch_dtype, _) in _DTYPES.items()}
# format 2 names a tensor's storage in a few letters: "q" (quantized) or its dtype
_CODES = {"float64": "f8", "float32": "f4", "float16": "f2", "bfloat16": "bf2", "int64": "i8",
          "int32": "i4", "int16": "i2", "int8": "i1", "uint8": "u1", "bool": "b"}
_FROM_CODE = {code: name for name, code in _CODES.items()}
STORAGE_CODES = ("q", *_CODES.values())  # one byte each in the metadata
EXPONENT_CODINGS = ("float32", "fixed16", "grid")  # one byte in the metadata


class CorruptFileError(ValueError):
    """A compressed-model file is truncated, damaged or not one at all."""


@dataclass(frozen=True)
class ExportInfo:
    """Sizes of one written file.

    ``storage_bytes`` is what :meth:`SelfCompression.storage_bits` counts (divided by 8):
    the size rule training optimises; ``file_bytes`` is the file on disk -- the same
    payload plus framing when nothing is folded, narrowed, put on the grid, dropped,
    trimmed or coded, less when BatchNorm is folded, floats narrowed, exponents put on
    the grid, empty rows dropped, rows trimmed to the bits their codes use or codes
    entropy coded.
    """

    path: Path
    file_bytes: int
    storage_bytes: float
    payload_bytes: int
    stored_payload_bytes: int
    metadata_bytes: int
    coding: str  # as written: "entropy" asked for falls back to "packed" where not smaller
    folded: tuple[str, ...] = ()
    empty_rows_dropped: int = 0  # rows whose codes were all zero, stored at zero bits

    @property
    def entropy_coded(self) -> bool:
        """Whether the codes went through the ANS coder (not where packing was smaller)."""
        return self.coding == "entropy"

    @property
    def overhead_bytes(self) -> float:
        """File size beyond the counted storage (negative when folding or coding wins)."""
        return self.file_bytes - self.storage_bytes


@dataclass(frozen=True)
class Container:
    """A checked file: its version, metadata, (decompressed) payload and flags."""

    meta: dict[str, Any]
    payload: bytes
    flags: int
    version: int = FORMAT_VERSION
    header_bytes: int = 0  # the framing before the metadata
    metadata_bytes: int = 0
    stored_payload_bytes: int = 0  # as stored (xz compressed, when it is)
    file_bytes: int = 0

    @property
    def coding(self) -> str:
        """The coding its flags name: packed, lzma or entropy."""
        return ("entropy" if self.flags & FLAG_ENTROPY else
                "lzma" if self.flags & FLAG_LZMA else "packed")


@dataclass
class _Tensor:
    """One state_dict entry as it will be written."""

    key: str
    kind: str  # "q" or "raw"
    dtype: str  # as stored
    shape: tuple[int, ...]
    data: np.ndarray  # raw: the values; q: int32 codes of shape (rows, -1)
    bits: np.ndarray | None = None  # q only: uint8 per row
    exponents: np.ndarray | None = None  # q only: float32 per row


# ----------------------------------------------------------------------------- saving


def save_compressed(
    sc: SelfCompression, path: str | os.PathLike[str], *, coding: str = "packed",
    entropy_coded: bool = False, fold: bool = True, precision: str = "exact",
    drop_empty_rows: bool = True, trim_bit_depths: bool = True,
) -> ExportInfo:
    """Write ``sc``'s model, pruned, its codes at (at most) its learned bit depths, to
    ``path`` atomically.

    ``sc`` itself is not changed: a deep copy is pruned, folded and encoded.  ``coding``:
    ``"packed"`` (codes at their bit depths), ``"entropy"`` (codes and bit depths through
    the ANS coder of :mod:`sgsc.fileformat.entropy`, or packed where that is not smaller)
    or ``"lzma"`` (the whole payload through xz); ``entropy_coded=True`` is
    ``coding="entropy"``.  ``fold``: BatchNorm folded into the layer before it where that
    is exact within float rounding (:mod:`sgsc.fileformat.fold`).  ``precision``:
    ``"exact"`` keeps every float at its dtype; ``"grid"`` stores the exponents on a grid
    of 2^-10 (each layer's in the bits their spread needs), every other tensor exact;
    ``"narrow"`` does that and stores other float tensors (biases, norms) as float16 -- the
    reloaded model then differs by that rounding, which the caller checks (the file
    records the choice).  ``drop_empty_rows``: a row whose codes all round to zero
    computes nothing but its bias, so it is stored as a zero-bit row -- and removed with
    the other dead channels where the model's channel graph allows (:func:`empty_rows`);
    the model computes the same within float rounding (with ``drop_empty_rows=False`` and
    ``trim_bit_depths``, such a row is still stored at zero bits, just not removed).
    ``trim_bit_depths``: each row is stored at the fewest bits that hold its codes
    (:func:`sgsc.fileformat.bitpack.fewest_bits`), never more than its learned bit depth
    -- the same codes, so the same model, bit for bit; it matters where training left rows
    more bits than their codes use (a rate term prices the codes, not the bit depth).
    Entropy coding tries the learned and the trimmed depths (they group the rows
    differently) and keeps the smaller.  Works for any model; a model outside the registry
    of architectures loads back with
    ``load_compressed(path, model=...)``.
    """
    path = Path(path)
    coding = "entropy" if entropy_coded else coding
    blob, sizes = encode_compressed(sc, coding=coding, fold=fold, precision=precision,
                                    drop_empty_rows=drop_empty_rows,
                                    trim_bit_depths=trim_bit_depths)
    atomic.write_bytes(path, blob)
    return ExportInfo(
        path=path,
        file_bytes=len(blob),
        storage_bytes=sc.storage_bits() / 8,
        **sizes,
    )


def entropy_coded_bytes(sc: SelfCompression, coding: str = "entropy", **options: Any) -> int:
    """Size in bytes of the file :func:`save_compressed` writes with ``coding``."""
    return len(encode_compressed(sc, coding=coding, **options)[0])


def encode_compressed(sc: SelfCompression, *, coding: str = "packed", fold: bool = True,
                      precision: str = "exact", drop_empty_rows: bool = True,
                      trim_bit_depths: bool = True) -> tuple[bytes, dict]:
    """The file's bytes, and its section sizes (payload, stored payload, metadata), the
    coding used, the BatchNorms folded and the empty rows dropped
    (:func:`save_compressed` says what each option does)."""
    if coding not in CODINGS:
        raise ValueError(f"coding must be one of {', '.join(CODINGS)}, got {coding!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got "
                         f"{precision!r}")
    pruned = copy.deepcopy(sc)
    dropped = _zero_empty_rows(pruned) if drop_empty_rows else 0
    if pruned.graph.channels or pruned.graph.heads:
        pruned.prune()
    folded = []
    example = _example_input(pruned)
    if fold and example is not None:
        from sgsc.fileformat.fold import fold_batchnorms

        folded = fold_batchnorms(pruned, example)
    meta, tensors = _describe(pruned, folded, precision)
    trimmed = _trimmed(tensors) if trim_bit_depths else tensors
    payload = _payload(trimmed, meta)
    if coding == "entropy":  # codes that are incompressible, or too wide to model, stay packed
        coded = [p for t in _distinct(tensors, trimmed)
                 if (p := _entropy_payload(t, meta)) is not None]
        smallest = min(coded, key=len, default=payload)
        payload, coding = (smallest, coding) if len(smallest) < len(payload) \
            else (payload, "packed")
    stored = lzma.compress(payload, preset=9) if coding == "lzma" else payload
    meta_block = pack_metadata(meta)
    sizes = {
        "payload_bytes": len(payload),
        "stored_payload_bytes": len(stored),
        "metadata_bytes": len(meta_block),
        "coding": coding,
        "folded": tuple(bn for bn, _ in folded),
        "empty_rows_dropped": dropped,
    }
    return _frame(meta_block, stored, CODINGS[coding]), sizes


def _trimmed(tensors: list[_Tensor]) -> list[_Tensor]:
    """``tensors`` with each quantized row at the fewest bits that hold its codes (never
    more than its learned depth, which its codes fit)."""
    return [dataclasses.replace(t, bits=bitpack.trimmed_widths(t.bits, t.data))
            if t.kind == "q" else t for t in tensors]


def _distinct(learned: list[_Tensor], trimmed: list[_Tensor]) -> list[list[_Tensor]]:
    """The bit depths to entropy code: the learned ones and, where they differ, the trimmed
    ones.  The coder models each (tensor, bit depth) group of rows on its own, so either
    grouping can be the smaller; both are tried."""
    same = all(a.bits is None or np.array_equal(a.bits, b.bits)
               for a, b in zip(learned, trimmed, strict=True))
    return [learned] if same else [learned, trimmed]


def _entropy_payload(tensors: list[_Tensor], meta: dict[str, Any]) -> bytes | None:
    """The entropy-coded payload, or None where a group's alphabet is too large to model."""
    try:
        return _payload(tensors, meta, entropy_coded=True)
    except entropy.AlphabetTooLarge:
        return None


def empty_rows(sc: SelfCompression) -> dict[str, torch.Tensor]:
    """Per quantized layer, the rows (output channels) with a bit depth above 0 whose
    integer codes are all zero: such a channel computes only its bias, as a zero-bit one
    does, though training left it its bits (a rate term drives whole rows to zero codes
    without taking their bits)."""
    rows, originals = {}, sc.raw_weights()
    with torch.no_grad():
        for name, quantizer in sc.quantizers.items():
            codes, bits = quant.integer_codes(originals[name], quantizer.bit_depth,
                                              quantizer.exponent)
            rows[name] = (codes.flatten(1) == 0).all(dim=1) & (bits > 0)
    return rows


def _zero_empty_rows(sc: SelfCompression) -> int:
    """Set the bit depth of every empty row of ``sc`` (:func:`empty_rows`) to 0 -- its
    quantized weights are zero either way -- and return how many there were."""
    count = 0
    with torch.no_grad():
        for name, mask in empty_rows(sc).items():
            sc.quantizers[name].bit_depth[mask] = 0.0
            count += int(mask.sum())
    return count


def _example_input(sc: SelfCompression) -> Any:
    """An input for the folding check: the wrapper's, or the model's own, or None."""
    if sc.example_input is not None:
        return sc.example_input
    return sc.model.example_input() if hasattr(sc.model, "example_input") else None


def _frame(meta_block: bytes, payload: bytes, flags: int) -> bytes:
    """Header + metadata + payload + CRC32 of everything before it."""
    header = (MAGIC + bytes([FORMAT_VERSION, flags]) + entropy.varint(len(meta_block))
              + entropy.varint(len(payload)))
    body = header + meta_block + payload
    return body + _TRAILER.pack(zlib.crc32(body))


def _describe(sc: SelfCompression, folded: list[tuple[str, str]],
              precision: str) -> tuple[dict[str, Any], list[_Tensor]]:
    """Metadata and tensors of an already pruned (and folded) ``SelfCompression``.

    Quantized weights appear in the state_dict as ``<module>.parametrizations.weight.*``;
    they are written under the plain key ``<module>.weight`` that the rebuilt model uses.
    (The parametrizations are deliberately not removed: a deep copy of a parametrized
    module shares its class with the original, so removing them would break ``sc``.)
    A folded BatchNorm's tensors are not written.
    """
    model = sc.model
    name = model_name(model)
    registered = not name.startswith(CUSTOM)
    quantizers = sc.quantizers
    originals = {_key(m, "parametrizations.weight.original"): m for m in quantizers}
    internal = tuple(_key(m, "parametrizations.weight.") for m in quantizers)
    skipped = tuple(f"{bn}." for bn, _ in folded)
    reference = _reference_keys(model, name) if registered else []
    tensors = []
    for key, value in model.state_dict().items():
        if key.startswith(skipped):
            continue
        if key in originals:
            module = originals[key]
            tensors.append(_quantized(_key(module, "weight"), value, quantizers[module]))
        elif not key.startswith(internal):
            shape = tuple(value.shape)
            stored = value.to(torch.float16) if precision == "narrow" and \
                value.dtype == torch.float32 else value
            tensors.append(_Tensor(key, "raw", _dtype_name(stored), shape, _to_numpy(stored)))
    index = {key: i for i, key in enumerate(reference)}
    meta: dict[str, Any] = {
        "model": name,
        "config": dataclasses.asdict(model.config) if registered else None,
        "tensors": [[index.get(t.key, t.key), "q" if t.kind == "q" else _CODES[t.dtype],
                     list(t.shape)] for t in tensors],
        "folded": [list(pair) for pair in folded],
        "exponents": "float32" if precision == "exact" else "grid",
    }
    return meta, tensors


def pack_metadata(meta: dict[str, Any]) -> bytes:
    """Format 2's metadata block: the model name and the config fields that differ from
    its class's defaults (JSON), then per tensor its reference, storage code and shape,
    the folded BatchNorms and the exponent coding -- as varints and short strings."""
    out = bytearray(_string(meta["model"]))
    config = meta["config"]
    out += _string("null" if config is None else json.dumps(
        _config_diff(meta["model"], config), separators=(",", ":")))
    out.append(EXPONENT_CODINGS.index(meta["exponents"]))
    out += entropy.varint(len(meta["tensors"]))
    previous = b""  # a named tensor shares its key's prefix with the one named before it
    for ref, code, shape in meta["tensors"]:
        if isinstance(ref, int):
            out += entropy.varint(2 * ref)
        else:
            key = ref.encode()
            shared = len(os.path.commonprefix([previous, key]))
            out += (entropy.varint(2 * (len(key) - shared) + 1) + entropy.varint(shared)
                    + key[shared:])
            previous = key
        out.append(STORAGE_CODES.index(code))
        out += entropy.varint(len(shape)) + b"".join(entropy.varint(d) for d in shape)
    out += entropy.varint(len(meta["folded"]))
    for bn, producer in meta["folded"]:
        out += _string(bn) + _string(producer)
    return bytes(out)


def _string(text: str) -> bytes:
    data = text.encode()
    return entropy.varint(len(data)) + data


def _default_config(name: str) -> dict[str, Any]:
    """The registered class's default config as JSON sees it ({} when it has none)."""
    from sgsc.fileformat.registry import MODEL_REGISTRY

    try:
        return json.loads(json.dumps(dataclasses.asdict(MODEL_REGISTRY[name].config_class())))
    except (KeyError, TypeError, ValueError):
        return {}


def _config_diff(name: str, config: dict[str, Any]) -> dict[str, Any]:
    default = _default_config(name)
    plain = json.loads(json.dumps(config))
    return {k: v for k, v in plain.items() if k not in default or default[k] != v}


def _reference_keys(model: nn.Module, name: str) -> list[str]:
    """The state_dict keys of a freshly built ``name`` (the order tensors are numbered in)."""
    return list(_build(name, dataclasses.asdict(model.config)).state_dict())


def _fixed16(exponents: np.ndarray) -> bytes:
    """A layer's exponents in 16-bit fixed point over its own range: float32 ``low`` and
    ``step``, then one uint16 ``u`` per row (``e = low + u * step``)."""
    low = np.float32(exponents.min()) if exponents.size else np.float32(0)
    high = np.float32(exponents.max()) if exponents.size else np.float32(0)
    step = np.float32((high - low) / EXPONENT_STEPS)
    u = np.zeros(exponents.shape) if step == 0 else np.round((exponents - low) / step)
    return (np.array([low, step], dtype="<f4").tobytes()
            + np.clip(u, 0, EXPONENT_STEPS).astype("<u2").tobytes())


def _from_fixed16(reader: _Sections, rows: int) -> np.ndarray:
    low, step = np.frombuffer(reader.take(8), dtype="<f4")
    u = np.frombuffer(reader.take(2 * rows), dtype="<u2")
    return (low + u.astype(np.float32) * step).astype(np.float32)


def _grid(exponents: np.ndarray) -> bytes:
    """A layer's exponents as multiples ``k`` of ``2^-EXPONENT_GRID_BITS``: a varint base
    (zigzag), one byte ``width``, then each row's ``k - base`` as a signed ``width``-bit
    integer (``width`` just spans the layer's ``k``; the base sits at the middle of the
    signed range, so no bit is spent on a sign), padded to a whole byte."""
    if exponents.size and not np.abs(exponents.astype(np.float64)).max() < 2.0 ** 50:
        raise ValueError("cannot store an exponent that is not finite or beyond 2^50")
    k = np.round(exponents.astype(np.float64) * (1 << EXPONENT_GRID_BITS)).astype(np.int64)
    low = int(k.min()) if k.size else 0
    width = (int(k.max()) - low).bit_length() if k.size else 0
    if width > bitpack.MAX_BITS:
        raise ValueError(f"a layer's exponents span {width} bits on the grid; at most "
                         f"{bitpack.MAX_BITS} can be stored")
    base = low + (1 << (width - 1)) if width else low
    writer = bitpack.BitWriter()
    writer.write(k - base, np.full(k.size, width))
    return entropy.varint(entropy.zigzag(base)) + bytes([width]) + writer.getvalue()


def _from_grid(reader: _Sections, rows: int) -> np.ndarray:
    base = entropy.unzigzag(reader.varint())
    (width,) = reader.take(1)
    if width > bitpack.MAX_BITS:
        raise ValueError(f"exponent width {width} exceeds {bitpack.MAX_BITS} bits")
    offsets = bitpack.BitReader(reader.take(-(-rows * width // 8))).read(np.full(rows, width))
    return ((base + offsets.astype(np.float64)) / (1 << EXPONENT_GRID_BITS)).astype(np.float32)


def _float32(exponents: np.ndarray) -> bytes:
    return exponents.astype("<f4").tobytes()


def _from_float32(reader: _Sections, rows: int) -> np.ndarray:
    return np.frombuffer(reader.take(4 * rows), dtype="<f4").astype(np.float32)


# one layer's exponents to bytes and back, per exponent coding
_EXPONENT_WRITERS = {"float32": _float32, "fixed16": _fixed16, "grid": _grid}
_EXPONENT_READERS = {"float32": _from_float32, "fixed16": _from_fixed16, "grid": _from_grid}


def _key(module: str, attr: str) -> str:
    return f"{module}.{attr}" if module else attr


def _quantized(key: str, original: torch.Tensor, quantizer: nn.Module) -> _Tensor:
    """Integer codes (rows x rest), bits (uint8) and exponents (float32) of one weight."""
    with torch.no_grad():
        codes, bits = quant.integer_codes(original, quantizer.bit_depth, quantizer.exponent)
    bits_np = bits.cpu().numpy()
    if bits_np.size and bits_np.max() > quant.MAX_BITS:
        raise ValueError(f"{key}: bit depth {bits_np.max()} exceeds {quant.MAX_BITS}")
    exponents = quantizer.exponent.detach().cpu().to(torch.float32).numpy()
    # rows x the rest, spelled out: a tensor with no rows left has no -1 to infer
    data = codes.cpu().numpy().astype(np.int32).reshape(codes.shape[0],
                                                        math.prod(codes.shape[1:]))
    shape = tuple(original.shape)
    return _Tensor(
        key, "q", _dtype_name(original), shape, data, bits_np.astype(np.uint8), exponents
    )


def _payload(tensors: list[_Tensor], meta: dict[str, Any],
             entropy_coded: bool = False) -> bytes:
    quantized = [t for t in tensors if t.kind == "q"]
    bits = np.concatenate([t.bits for t in quantized] or [np.zeros(0, np.uint8)])
    write = _EXPONENT_WRITERS[meta["exponents"]]
    exponents = b"".join(write(t.exponents) for t in quantized)
    if entropy_coded:
        groups = [t.bits.astype(np.int64).reshape(1, -1) for t in quantized]
        groups += [t.data[t.bits == b] for t in quantized for b in _bit_groups(t.bits)]
        stream = entropy.encode(groups)
        coded = struct.pack("<I", len(stream)) + stream
    else:  # one bit stream: the bit depths, then the codes (no padding between them)
        writer = bitpack.BitWriter()
        writer.write(bits.astype(np.int64) - DEPTH_OFFSET, np.full(bits.size, DEPTH_BITS))
        for t in quantized:
            widths = np.repeat(t.bits.astype(np.int64), t.data.shape[1])
            writer.write(t.data.reshape(-1), widths)
        coded = writer.getvalue()
    raw = b"".join(_raw_bytes(t) for t in tensors if t.kind == "raw")
    return exponents + coded + raw


def _bit_groups(bits: np.ndarray) -> list[int]:
    """The bit depths (above 0) a tensor's rows use, rising: one entropy group each."""
    return sorted(int(b) for b in np.unique(bits) if b > 0)


def _raw_bytes(t: _Tensor) -> bytes:
    return np.ascontiguousarray(t.data).astype(_DTYPES[t.dtype][1], copy=False).tobytes()


def _to_numpy(value: torch.Tensor) -> np.ndarray:
    value = value.detach().cpu().contiguous()
    if value.dtype == torch.bfloat16:
        value = value.view(torch.int16)
    return value.numpy()


def _dtype_name(value: torch.Tensor) -> str:
    try:
        return _DTYPE_NAMES[value.dtype]
    except KeyError:
        raise ValueError(f"cannot export tensors of dtype {value.dtype}") from None


def model_name(model: nn.Module) -> str:
    """The name a file records: the registry name, or ``custom:<module>.<class>``."""
    return registered_name(model) or f"{CUSTOM}{type(model).__module__}.{type(model).__qualname__}"


def _build(name: str, config: dict[str, Any]) -> nn.Module:
    """``build_model`` without consuming the caller's random numbers (init is
    overwritten anyway, and saving mid-training must not change the run)."""
    with torch.random.fork_rng(devices=[]):
        return build_model(name, **config)


# ----------------------------------------------------------------------------- loading


def load_compressed(path: str | os.PathLike[str], model: nn.Module | None = None) -> nn.Module:
    """Rebuild the model written by :func:`save_compressed` (plain modules, eval mode).

    ``model``: a fresh instance of the saved model's class (required for a model outside
    the registry, optional otherwise); it is resized to the stored (pruned) shapes and
    filled in place.  Without it a registered model is built from the file's config.

    Raises:
        CorruptFileError: the file is truncated, damaged, crafted, of another format or
            version; the message names what is wrong.
        ValueError: ``model`` is not of the class the file holds, or is needed and missing.
    """
    path = Path(path)
    container = read_container(path)
    meta = container.meta
    name = meta["model"]
    if model is None:
        if name.startswith(CUSTOM):
            raise ValueError(f"{path} holds a model of your own ({name[len(CUSTOM):]}); "
                             "pass a fresh instance: load_compressed(path, model=MyNet(...))")
        model = _build_checked(path, name, meta["config"])
    elif model_name(model) != name:
        raise ValueError(f"{path} holds a {name}, not a {model_name(model)}; pass a fresh "
                         "instance of the class that was saved")
    _check_shapes(path, meta, model)
    try:
        tensors = _parse_payload(meta, container.payload, container.flags)
        _fill(model, tensors, meta["folded"])
        _check_attributes(model, meta.get("attributes", {}))
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as err:
        raise CorruptFileError(f"{path}: inconsistent contents ({err})") from err
    return model.eval()


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of a compressed-model file (model name, config, tensors with their
    keys, kinds, stored dtypes and shapes, folded BatchNorms, exponent coding)."""
    return read_container(Path(path)).meta


def read_container(path: Path) -> Container:
    """Check a file's framing, checksum and metadata; return them with the payload.

    The metadata comes back in one shape for every format: tensors as ``[key, kind,
    dtype, shape]`` (keys resolved), ``folded`` and ``exponents`` always present.  An xz
    payload is decompressed to at most what its tensors can take (:func:`_payload_bound`),
    so a decompression bomb costs no more than a genuine file.
    """
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise CorruptFileError(f"{path}: {size} bytes is larger than any model this sgsc "
                               f"writes ({MAX_FILE_BYTES} bytes)")
    blob = path.read_bytes()
    if len(blob) < 8 + _TRAILER.size:
        raise CorruptFileError(f"{path}: truncated ({len(blob)} bytes is shorter than a header)")
    if blob[:4] != MAGIC:
        raise CorruptFileError(f"{path}: not an sgsc compressed model (magic {blob[:4]!r})")
    version = blob[4]
    if version == 1:
        flags, meta_len, payload_len, start = _header_v1(path, blob)
    elif version == FORMAT_VERSION:
        flags = blob[5]
        try:
            meta_len, start = entropy.read_varint(blob, 6)
            payload_len, start = entropy.read_varint(blob, start)
        except ValueError as err:
            raise CorruptFileError(f"{path}: truncated header ({err})") from err
    else:
        raise CorruptFileError(f"{path}: unsupported format version {version} (this sgsc "
                               f"reads 1 and {FORMAT_VERSION})")
    end = start + meta_len + payload_len
    if len(blob) != end + _TRAILER.size:
        raise CorruptFileError(
            f"{path}: truncated or padded: {len(blob)} bytes, header says {end + _TRAILER.size}"
        )
    (stored_crc,) = _TRAILER.unpack_from(blob, end)
    if zlib.crc32(blob[:end]) != stored_crc:
        raise CorruptFileError(f"{path}: checksum mismatch, the file is corrupted")
    if flags & ~(FLAG_LZMA | FLAG_ENTROPY) or flags == FLAG_LZMA | FLAG_ENTROPY:
        raise CorruptFileError(f"{path}: unknown flags {flags:#06x}")
    meta_block = blob[start : start + meta_len]
    payload = blob[start + meta_len : end]
    meta = _decode_metadata(path, meta_block, version)
    if flags & FLAG_LZMA:
        payload = _bounded_lzma(path, payload, _payload_bound(meta))
    return Container(meta, payload, flags, version, start, len(meta_block), payload_len,
                     len(blob))


def _header_v1(path: Path, blob: bytes) -> tuple[int, int, int, int]:
    """(flags, metadata length, payload length, metadata offset) of a format 1 file."""
    if len(blob) < _HEADER_V1.size + _TRAILER.size:
        raise CorruptFileError(f"{path}: truncated ({len(blob)} bytes is shorter than a header)")
    _, version, flags, meta_len, payload_len = _HEADER_V1.unpack_from(blob)
    if version != 1:
        raise CorruptFileError(f"{path}: unsupported format version {version}")
    return flags, meta_len, payload_len, _HEADER_V1.size


def _decode_metadata(path: Path, block: bytes, version: int) -> dict[str, Any]:
    """The metadata (format 1: zlib JSON, decompressed to at most
    :data:`MAX_METADATA_BYTES`; format 2: the binary block of :func:`pack_metadata`),
    checked, and brought to one shape for both formats."""
    if version > 1:
        try:
            meta = unpack_metadata(block)
        except (ValueError, UnicodeDecodeError, json.JSONDecodeError, IndexError) as err:
            raise CorruptFileError(f"{path}: cannot decode the metadata ({err})") from err
    else:
        inflater = zlib.decompressobj()
        try:
            text = inflater.decompress(block, MAX_METADATA_BYTES)
            if inflater.unconsumed_tail or not inflater.eof:
                raise CorruptFileError(f"{path}: metadata is larger than "
                                       f"{MAX_METADATA_BYTES} bytes or cut short")
            meta = json.loads(text)
        except (zlib.error, json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CorruptFileError(f"{path}: cannot decode the metadata ({err})") from err
    if version > 1:  # [ref, storage, shape] -> [ref, kind, dtype, shape], as in format 1
        problem = _storage_problem(meta)
        if problem:
            raise CorruptFileError(f"{path}: malformed metadata: {problem}")
        meta["tensors"] = [[ref, "q", "float32", shape] if code == "q" else
                           [ref, "raw", _FROM_CODE[code], shape]
                           for ref, code, shape in meta["tensors"]]
    problem = _metadata_problem(meta, version)
    if problem:
        raise CorruptFileError(f"{path}: malformed metadata: {problem}")
    meta["format"] = version
    if version == 1:
        meta |= {"folded": [], "exponents": "float32"}
        return meta
    refs = [entry[0] for entry in meta["tensors"]]
    if any(isinstance(r, int) for r in refs):
        if meta["model"].startswith(CUSTOM):
            raise CorruptFileError(f"{path}: malformed metadata: a model of your own must "
                                   "name its tensors")
        try:
            with torch.device("meta"):
                keys = list(build_model(meta["model"], **meta["config"]).state_dict())
        except (ValueError, TypeError) as err:
            raise CorruptFileError(f"{path}: the config does not build a {meta['model']} "
                                   f"({err})") from err
        if any(isinstance(r, int) and not 0 <= r < len(keys) for r in refs):
            raise CorruptFileError(f"{path}: malformed metadata: a tensor index is out of "
                                   "range")
        for entry in meta["tensors"]:
            entry[0] = keys[entry[0]] if isinstance(entry[0], int) else entry[0]
    return meta


def unpack_metadata(block: bytes) -> dict[str, Any]:
    """The inverse of :func:`pack_metadata`; ValueError when the block does not parse
    (it is bounded by the file, so nothing here allocates more than the file holds)."""
    pos = 0

    def varint() -> int:
        nonlocal pos
        value, pos = entropy.read_varint(block, pos)
        return value

    def string(length: int | None = None) -> str:
        nonlocal pos
        length = varint() if length is None else length
        if pos + length > len(block):
            raise ValueError("the metadata ends inside a string")
        text = block[pos:pos + length].decode()
        pos += length
        return text

    def byte() -> int:
        nonlocal pos
        if pos >= len(block):
            raise ValueError("the metadata is cut short")
        pos += 1
        return block[pos - 1]

    name = string()
    config_text = string()
    coding = byte()
    if coding >= len(EXPONENT_CODINGS):
        raise ValueError(f"unknown exponent coding {coding} (a newer sgsc wrote the file?)")
    exponents = EXPONENT_CODINGS[coding]
    count = varint()
    if count > len(block):
        raise ValueError(f"{count} tensors cannot fit a metadata block of {len(block)} bytes")
    tensors, previous = [], ""
    for _ in range(count):
        ref = varint()
        if ref % 2:
            shared = varint()
            if shared > len(previous):
                raise ValueError("a tensor key shares more than the previous key holds")
            ref = previous = previous[:shared] + string(ref // 2)
        else:
            ref //= 2
        code = STORAGE_CODES[byte()]
        ndim = varint()
        if ndim > 8:
            raise ValueError(f"a tensor of rank {ndim}")
        tensors.append([ref, code, [varint() for _ in range(ndim)]])
    folded = [[string(), string()] for _ in range(min(varint(), len(block)))]
    if pos != len(block):
        raise ValueError(f"the metadata has {len(block) - pos} bytes too many")
    config = json.loads(config_text)
    if config is not None:
        if not isinstance(config, dict):
            raise ValueError("the config is not a mapping")
        config = _default_config(name) | config
    return {"model": name, "config": config, "tensors": tensors, "folded": folded,
            "exponents": exponents}


def _storage_problem(meta: Any) -> str | None:
    """What is wrong with a format 2 tensor list (None: nothing)."""
    if not isinstance(meta, dict) or not isinstance(meta.get("tensors"), list):
        return "no tensor list"
    for entry in meta["tensors"]:
        if not (isinstance(entry, list) and len(entry) == 3
                and (entry[1] == "q" or entry[1] in _FROM_CODE)):
            return f"bad tensor entry {str(entry)[:80]}"
    return None


def _metadata_problem(meta: Any, version: int) -> str | None:
    """What is wrong with a metadata object's structure (None: nothing)."""
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), str):
        return "no model name"
    if meta["model"].startswith(CUSTOM) != (meta.get("config") is None) or not (
            meta.get("config") is None or isinstance(meta["config"], dict)):
        return "the config does not fit the model name"
    tensors = meta.get("tensors")
    if not isinstance(tensors, list):
        return "no tensor list"
    total = 0
    for entry in tensors:
        ref_ok = isinstance(entry[0], str) or (version > 1 and type(entry[0]) is int) \
            if isinstance(entry, list) and entry else False
        if not (ref_ok and len(entry) == 4 and entry[1] in ("q", "raw") and entry[2] in _DTYPES
                and isinstance(entry[3], list)
                and all(type(d) is int and 0 <= d <= MAX_ELEMENTS for d in entry[3])):
            return f"bad tensor entry {str(entry)[:80]}"
        if entry[1] == "q" and (len(entry[3]) < 2 or entry[2] != "float32"):
            return f"{entry[0]}: a quantized weight must be float32 of rank 2 or more"
        total += math.prod(entry[3])
        if total > MAX_ELEMENTS:
            return f"the tensors hold more than {MAX_ELEMENTS} elements"
    if version == 1:
        return None
    folded = meta.get("folded")
    if not isinstance(folded, list) or not all(
            isinstance(f, list) and len(f) == 2 and all(isinstance(n, str) for n in f)
            for f in folded):
        return "bad list of folded BatchNorms"
    if meta.get("exponents") not in EXPONENT_CODINGS:
        return f"unknown exponent coding {meta.get('exponents')!r}"
    return None


def _payload_bound(meta: dict[str, Any]) -> int:
    """The most bytes a packed payload of these tensors can take: per quantized row its
    bit depth and exponent, the exponents' per-layer fields and 24 bits per weight, raw
    tensors at their dtype."""
    bound = 0
    for _, kind, dtype, shape in meta["tensors"]:
        count = math.prod(shape)
        if kind == "q":
            bound += 16 + 5 * shape[0] + 3 * count + 1
        else:
            bound += count * np.dtype(_DTYPES[dtype][1]).itemsize
    return bound


def _bounded_lzma(path: Path, payload: bytes, bound: int) -> bytes:
    inflater = lzma.LZMADecompressor()
    try:
        out = inflater.decompress(payload, max_length=bound + 1)
    except lzma.LZMAError as err:
        raise CorruptFileError(f"{path}: cannot decode the payload ({err})") from err
    if len(out) > bound or not inflater.eof:
        raise CorruptFileError(f"{path}: the payload decompresses past the {bound} bytes its "
                               "tensors can take (or is cut short)")
    return out


def _build_checked(path: Path, name: str, config: dict[str, Any]) -> nn.Module:
    """The registered model ``name``, after checking on the meta device that its config
    describes a model of bounded size (a crafted config allocates nothing)."""
    try:
        with torch.device("meta"):
            skeleton = build_model(name, **config)
    except (ValueError, TypeError) as err:
        raise CorruptFileError(f"{path}: the config does not build a {name} ({err})") from err
    elements = sum(t.numel() for t in skeleton.state_dict().values())
    if elements > MAX_ELEMENTS:
        raise CorruptFileError(f"{path}: the config describes a model of {elements} elements, "
                               f"more than the {MAX_ELEMENTS} a file may hold")
    return _build(name, config)


def _check_shapes(path: Path, meta: dict[str, Any], model: nn.Module) -> None:
    """Every stored tensor is one of ``model``'s, of its rank, no larger in any dim
    (pruning only shrinks); a tensor the model lacks must be a bias pruning created;
    a folded module must be a BatchNorm of the model, its producer a layer of it."""
    current = model.state_dict()
    modules = dict(model.named_modules())
    for key, _kind, _dtype, shape in meta["tensors"]:
        if key in current:
            reference = tuple(current[key].shape)
        else:
            module_name, _, attr = key.rpartition(".")
            module = modules.get(module_name)
            weight = getattr(module, "weight", None) if module is not None else None
            if attr != "bias" or weight is None or getattr(module, "bias", 0) is not None:
                raise CorruptFileError(f"{path}: {key} is not a tensor of "
                                       f"{type(model).__name__}")
            reference = (weight.shape[0],)
        if len(shape) != len(reference) or any(s > r for s, r in zip(shape, reference,
                                                                         strict=True)):
            raise CorruptFileError(f"{path}: {key} is stored as {tuple(shape)}, which does not "
                                   f"fit the model's {reference}")
    stored = {key for key, *_ in meta["tensors"]}
    for bn, producer in meta["folded"]:
        from torch.nn.modules.batchnorm import _BatchNorm

        if not isinstance(modules.get(bn), _BatchNorm) or f"{producer}.weight" not in stored:
            raise CorruptFileError(f"{path}: folded {bn} into {producer}, which are not a "
                                   f"BatchNorm and a stored layer of {type(model).__name__}")


@dataclass
class _Layer:
    """A quantized tensor as the payload holds it."""

    key: str
    dtype: str
    shape: tuple[int, ...]
    bits: np.ndarray  # per stored row
    exponents: np.ndarray  # per stored row, float32
    codes: np.ndarray  # flat, row after row
    exponent_bytes: int  # what its exponents take in the file, their per-layer fields too


@dataclass
class _Decoded:
    """A payload cut into its parts, with what each section took."""

    layers: list[_Layer]
    raw: list[tuple[str, str, tuple[int, ...], torch.Tensor]]  # key, dtype, shape, tensor
    section_bytes: dict[str, int]


def _decode_payload(meta: dict[str, Any], payload: bytes, flags: int = 0) -> _Decoded:
    """Cut the payload into its sections, one at a time; each section's length is checked
    against the bytes present before it is read."""
    entries = [(key, kind, dtype, tuple(shape)) for key, kind, dtype, shape in meta["tensors"]]
    quantized = [(key, dtype, shape) for key, kind, dtype, shape in entries if kind == "q"]
    rows = [shape[0] for _, _, shape in quantized]
    cols = [math.prod(shape[1:]) for _, _, shape in quantized]
    reader = _Sections(payload)
    sections: dict[str, int] = {}
    entropy_coded = bool(flags & FLAG_ENTROPY)
    if meta["format"] == 1:  # format 1: uint8 bit depths first, then the exponents
        bits = np.frombuffer(reader.take(sum(rows)), dtype=np.uint8).astype(np.int64)
        sections["bit depths"] = sum(rows)
    start = reader.position
    read, per_layer, exponent_bytes = _EXPONENT_READERS[meta["exponents"]], [], []
    for n in rows:
        before = reader.position
        per_layer.append(read(reader, n))
        exponent_bytes.append(reader.position - before)
    exponents = np.concatenate(per_layer or [np.zeros(0, np.float32)])
    sections["exponents"] = reader.position - start
    if entropy_coded:
        (length,) = struct.unpack("<I", reader.take(4))
        decoder = entropy.StreamDecoder(reader.take(length))
        sections["bit depths and codes (entropy coded)"] = 4 + length
        if meta["format"] > 1:
            bits = np.concatenate(decoder.take([(1, n) for n in rows]) or
                                  [np.zeros(0, np.int64)])
        _check_depths(bits)
        per_tensor = np.split(bits, np.cumsum(rows)[:-1]) if rows else []
        blocks = _entropy_blocks(decoder, per_tensor, cols)
        decoder.finish()
    else:
        depth_bits = DEPTH_BITS * sum(rows) if meta["format"] > 1 else 0
        rest = reader.remaining()  # the bit stream, then the raw tensors
        stream = bitpack.BitReader(rest)
        if meta["format"] > 1:
            bits = stream.read(np.full(sum(rows), DEPTH_BITS)).astype(np.int64) + DEPTH_OFFSET
        _check_depths(bits)
        per_tensor = np.split(bits, np.cumsum(rows)[:-1]) if rows else []
        code_bits = sum(int(b.sum()) * c for b, c in zip(per_tensor, cols, strict=True))
        if depth_bits + code_bits > 8 * len(rest):
            raise ValueError(f"payload too short: the codes need {depth_bits + code_bits} bits")
        blocks = [stream.read(np.repeat(b, c)) for b, c in zip(per_tensor, cols, strict=True)]
        reader.take(-(-(depth_bits + code_bits) // 8))
        sections["bit depths and codes (packed)"] = -(-(depth_bits + code_bits) // 8)
    layers, row = [], 0
    for (key, dtype, shape), bits_t, block, taken in zip(quantized, per_tensor, blocks,
                                                         exponent_bytes, strict=True):
        layers.append(_Layer(key, dtype, shape, bits_t, exponents[row:row + shape[0]], block,
                             taken))
        row += shape[0]
    start = reader.position
    raw = [(key, dtype, shape, _raw_tensor(reader, dtype, shape))
           for key, kind, dtype, shape in entries if kind == "raw"]
    sections["other tensors"] = reader.position - start
    reader.finish()
    return _Decoded(layers, raw, sections)


def _parse_payload(meta: dict[str, Any], payload: bytes, flags: int = 0
                   ) -> dict[str, torch.Tensor]:
    """Every tensor of the payload, rebuilt (quantized weights as ``exp2(e) * codes``)."""
    decoded = _decode_payload(meta, payload, flags)
    tensors = {layer.key: _dequantize(layer.codes.reshape(layer.shape), layer.exponents,
                                      _DTYPES[layer.dtype][0]) for layer in decoded.layers}
    tensors |= {key: tensor for key, _, _, tensor in decoded.raw}
    return {key: tensors[key] for key, *_ in meta["tensors"]}


def byte_budget(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Where a file's bytes go: per section (framing, metadata, exponents, bit depths and
    codes, other tensors, checksum), and per quantized layer -- its rows as a packed file
    stores them, each at the fewest bits its codes need, whatever depths this file holds --
    its rows, bit depths, codes, the bytes packing spends on them, their empirical entropy
    (an order-0 table per bit depth: the floor of a fitted model) and the best model's
    estimate (the coder's choice of uniform, fitted, Laplace or Gaussian per row, side
    information included)."""
    path = Path(path)
    container = read_container(path)
    decoded = _decode_payload(container.meta, container.payload, container.flags)
    sections = {"framing": container.header_bytes, "metadata": container.metadata_bytes}
    if container.flags & FLAG_LZMA:
        sections["payload (xz)"] = container.stored_payload_bytes
    else:
        sections |= decoded.section_bytes
    sections["checksum"] = _TRAILER.size
    layers = []
    for layer in decoded.layers:
        cols = math.prod(layer.shape[1:])
        rows = layer.codes.reshape(len(layer.bits), cols)
        bits = bitpack.trimmed_widths(layer.bits, rows)  # one grouping for every column
        floor = coded = 0.0
        for b in _bit_groups(bits):
            group = rows[bits == b]
            report = entropy.group_report(group)
            floor += report["empirical_entropy_bits"]
            coded += min(v for k, v in report.items() if k.endswith("_bits")
                         and k != "empirical_entropy_bits")
        layers.append({
            "layer": layer.key.removesuffix(".weight"), "rows": len(bits),
            "bits": bits.tolist(),
            "mean_bits": float(bits.mean()) if len(bits) else 0.0,
            "codes": int((bits > 0).sum()) * cols,
            "packed_bytes": int((bits.astype(np.int64) * cols).sum()) / 8,
            "entropy_floor_bytes": floor / 8, "best_model_bytes": coded / 8,
            "header_bytes": len(layer.bits) * DEPTH_BITS / 8 + layer.exponent_bytes})
    others = [{"tensor": key, "dtype": dtype, "elements": math.prod(shape),
               "bytes": math.prod(shape) * np.dtype(_DTYPES[dtype][1]).itemsize}
              for key, dtype, shape, _ in decoded.raw]
    return {"file": str(path), "format": container.version, "file_bytes": container.file_bytes,
            "coding": container.coding,
            "folded": [bn for bn, _ in container.meta["folded"]],
            "exponents": container.meta["exponents"], "sections": sections,
            "layers": layers, "other_tensors": others}


def _check_depths(bits: np.ndarray) -> None:
    if bits.size and (bits.min() < 0 or bits.max() > quant.MAX_BITS):
        raise ValueError(f"a row claims {bits.max()} bits (at most {quant.MAX_BITS})")


def _entropy_blocks(decoder: entropy.StreamDecoder, per_tensor: list[np.ndarray],
                    cols: list[int]) -> list[np.ndarray]:
    """Each quantized tensor's codes (rows x cols, flattened) from the entropy stream: one
    group per (tensor, bit depth), the rows of a group in row order."""
    plan = [(t, b) for t, bits in enumerate(per_tensor) for b in _bit_groups(bits)]
    groups = decoder.take([(int((per_tensor[t] == b).sum()), cols[t]) for t, b in plan])
    blocks = [np.zeros((len(bits), c), dtype=np.int64) for bits, c in zip(per_tensor, cols,
                                                                          strict=True)]
    for (t, b), values in zip(plan, groups, strict=True):
        chosen = per_tensor[t] == b
        blocks[t][chosen] = values.reshape(int(chosen.sum()), cols[t])
    return [block.reshape(-1) for block in blocks]


def _dequantize(codes: np.ndarray, exponents: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """``exp2(e) * codes`` with ``e`` broadcast over all but the first dim, as quantize does."""
    e = torch.from_numpy(exponents.copy()).reshape(-1, *([1] * (codes.ndim - 1)))
    weight = torch.exp2(e) * torch.from_numpy(codes).to(torch.float32)
    return weight.to(dtype)


def _raw_tensor(reader: _Sections, dtype: str, shape: tuple[int, ...]) -> torch.Tensor:
    torch_dtype, np_dtype = _DTYPES[dtype]
    count = int(np.prod(shape))
    array = np.frombuffer(reader.take(count * np.dtype(np_dtype).itemsize), dtype=np_dtype)
    tensor = torch.from_numpy(array.astype(np.dtype(np_dtype).newbyteorder("="), copy=True))
    if torch_dtype == torch.bfloat16:
        tensor = tensor.view(torch.int16).view(torch.bfloat16)
    return tensor.reshape(shape).to(torch_dtype)


class _Sections:
    """Consume a byte string in order; complain when it is too short or too long."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def take(self, size: int) -> bytes:
        if self._pos + size > len(self._data):
            raise ValueError(f"payload too short: need {self._pos + size} bytes")
        chunk = self._data[self._pos : self._pos + size]
        self._pos += size
        return bytes(chunk)

    @property
    def position(self) -> int:
        return self._pos

    def varint(self) -> int:
        """The varint at the current position (ValueError when the data end inside it)."""
        value, end = entropy.read_varint(bytes(self._data[self._pos:self._pos + 10]), 0)
        self._pos += end
        return value

    def remaining(self) -> bytes:
        """The bytes not taken yet (nothing is consumed)."""
        return bytes(self._data[self._pos:])

    def finish(self) -> None:
        if self._pos != len(self._data):
            raise ValueError(f"payload has {len(self._data) - self._pos} unexpected extra bytes")


# The only attributes a file may carry: the shape attributes pruning changes.  Each is
# already implied by the stored tensors' shapes, so a file's value must agree with them.
SHAPE_ATTRIBUTES = ("in_channels", "out_channels", "in_features", "out_features",
                    "num_features", "num_embeddings", "embedding_dim")


def _check_attributes(model: nn.Module, attributes: object) -> None:
    """Check the file's attributes against the rebuilt model: shape attributes only, each
    equal to what the loaded tensors set (nothing else of a module can be set by a file)."""
    if not isinstance(attributes, dict):
        raise ValueError(f"attributes must be a mapping, got {type(attributes).__name__}")
    modules = dict(model.named_modules())
    for module_name, values in attributes.items():
        if module_name not in modules or not isinstance(values, dict):
            raise ValueError(f"attributes name {module_name!r}, which is not a module of "
                             f"{type(model).__name__}")
        module = modules[module_name]
        for attr, value in values.items():
            if attr not in SHAPE_ATTRIBUTES or not hasattr(module, attr):
                raise ValueError(f"attribute {module_name}.{attr} may not be set by a file "
                                 f"(only {', '.join(SHAPE_ATTRIBUTES)})")
            if type(value) is not int or getattr(module, attr) != value:
                raise ValueError(f"attribute {module_name}.{attr}={value!r} disagrees with the "
                                 f"stored tensors ({getattr(module, attr)!r})")


def _fill(model: nn.Module, tensors: dict[str, torch.Tensor],
          folded: list[list[str]]) -> None:
    """Resize the model's tensors to the stored shapes, load the stored values (at the
    model's own dtype: a narrowed float16 bias comes back as float32), and set every
    folded BatchNorm to the identity at its producer's width."""
    from sgsc.fileformat.fold import identity

    current = model.state_dict()
    values = {}
    for key, value in tensors.items():
        if key in current and current[key].is_floating_point() and value.is_floating_point():
            value = value.to(current[key].dtype)
        elif key not in current and value.is_floating_point():
            value = value.to(torch.float32)  # a bias pruning created
        # A missing key may be a bias that pruning created (an empty parameter slot).
        if key not in current or current[key].shape != value.shape:
            prune.replace_tensor(model, key, value)
        values[key] = value
    for bn, producer in folded:
        identity(model.get_submodule(bn), values[f"{producer}.weight"].shape[0])
    state = model.state_dict()
    missing = sorted(k for k in state if k not in values
                     and not any(k.startswith(f"{bn}.") for bn, _ in folded))
    if missing:
        raise ValueError(f"the file stores no {', '.join(missing[:3])}")
    model.load_state_dict(values, strict=False)


def reopen_compressed(path: str | os.PathLike[str],
                      model: nn.Module | None = None) -> SelfCompression:
    """The model of a file wrapped in a :class:`SelfCompression` again, each quantized
    layer at the bit depths and exponents the file stores, so that it saves to the same
    codes -- in another format, coding or precision (a format 1 file rewritten as format 2,
    say).  Folded BatchNorms stay folded."""
    from sgsc.core.compress import SelfCompression

    path = Path(path)
    container = read_container(path)
    loaded = load_compressed(path, model)
    layers = _decode_payload(container.meta, container.payload, container.flags).layers
    names = [layer.key.removesuffix(".weight") for layer in layers]
    sc = SelfCompression(loaded, include=names)
    with torch.no_grad():
        for name, layer in zip(names, layers, strict=True):
            quantizer = sc.quantizers[name]
            quantizer.bit_depth.copy_(torch.from_numpy(layer.bits.astype(np.float32)))
            quantizer.exponent.copy_(torch.from_numpy(layer.exponents))
    return sc
