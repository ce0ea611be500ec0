"""Write a self-compressed model to disk at (almost exactly) its counted size, and read it back.

The file holds exactly what :meth:`SelfCompression.storage_bits` counts -- per stored row
of a quantized weight its bit depth (uint8), its exponent (float32) and its integer codes at
that many bits; every other tensor raw -- plus a small header, a compressed JSON
description of the architecture and a checksum.

File layout (all integers little-endian)::

    offset  size  field
    0       4     magic b"SGSC"
    4       2     format version (uint16, currently 1)
    6       2     flags (uint16; bit 0 = payload is lzma (xz) compressed, bit 1 = the
                  codes section is entropy coded, see sgsc.fileformat.entropy)
    8       4     M = length of the metadata block (uint32)
    12      8     P = length of the payload as stored (uint64)
    20      M     metadata: zlib-compressed UTF-8 JSON
    20+M    P     payload (raw, or xz-compressed when flag bit 0 is set)
    20+M+P  4     CRC32 of every byte before it (uint32)

The metadata JSON is ``{"model": registry name or "custom:<module>.<class>", "config":
model config (None for a custom model), "tensors": [[key, kind, dtype, shape], ...],
"attributes": {...}}`` with the tensors in state_dict order; ``kind`` is ``"q"`` for a
quantized weight and ``"raw"`` otherwise.  The payload, before any lzma, is four sections
back to back:

1. bit depths: one uint8 per stored row of every quantized weight (tensor order, row order);
2. exponents: one float32 per stored row, same order;
3. codes: one continuous bit stream (:mod:`sgsc.fileformat.bitpack`), row after row, each
   weight at its row's bit depth, two's complement, not byte aligned, zero padded once at
   the end -- or,
   with flag bit 1, a uint32 length and the :mod:`sgsc.fileformat.entropy` stream of the codes, one
   group per (tensor, bit depth) in tensor order and rising bit depth;
4. raw tensors: each remaining tensor's bytes at its own dtype, in order.

Loading never unpickles anything: the model is rebuilt from the registry (or given by the
caller: ``load_compressed(path, model=MyNet())``), resized with
:func:`sgsc.structure.prune.replace_tensor` and filled from ``numpy.frombuffer`` arrays.  Quantized
weights are rebuilt as ``exp2(e) * codes`` in float32, the very operations of
:func:`sgsc.core.quant.quantize`, so the loaded model computes exactly what the compressed model
computed.

A file is checked before anything large is allocated: its size, the decompressed size of
its metadata and payload (decompression stops at a bound), every stored shape against the
architecture it names (built on the ``meta`` device, which allocates nothing: pruning only
ever shrinks a tensor) and every section's length against the bytes present.  A file that
fails any check is a :class:`CorruptFileError` naming what is wrong.
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
from sgsc.fileformat import atomic, bitpack, entropy
from sgsc.fileformat.registry import build_model, registered_name
from sgsc.structure import prune

if TYPE_CHECKING:
    from sgsc.core.compress import SelfCompression

MAGIC = b"SGSC"
FORMAT_VERSION = 1
FLAG_LZMA = 1
FLAG_ENTROPY = 2
CODINGS = {"packed": 0, "lzma": FLAG_LZMA, "entropy": FLAG_ENTROPY}
CUSTOM = "custom:"  # model name prefix of a user's own (unregistered) model

# What a file may make the loader allocate, whatever it claims.
MAX_FILE_BYTES = 1 << 31  # 2 GiB on disk
MAX_METADATA_BYTES = 16 << 20  # decompressed metadata JSON
MAX_ELEMENTS = 1 << 26  # elements of the model a file names (256 MiB of float32)

_HEADER = struct.Struct("<4sHHIQ")
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


class CorruptFileError(ValueError):
    """A compressed-model file is truncated, damaged or not one at all."""


@dataclass(frozen=True)
class ExportInfo:
    """Sizes of one written file.

    ``storage_bytes`` is what :meth:`SelfCompression.storage_bits` counts (divided by 8);
    ``file_bytes`` adds the header, metadata, padding and checksum (or, when
    ``entropy_coded``, is the size after lzma over the payload).
    """

    path: Path
    file_bytes: int
    storage_bytes: float
    payload_bytes: int
    stored_payload_bytes: int
    metadata_bytes: int
    entropy_coded: bool

    @property
    def overhead_bytes(self) -> float:
        """File size beyond the counted storage (negative when entropy coding wins)."""
        return self.file_bytes - self.storage_bytes


@dataclass(frozen=True)
class Container:
    """A checked file: its metadata, its (decompressed) payload and its flags."""

    meta: dict[str, Any]
    payload: bytes
    flags: int


@dataclass
class _Tensor:
    """One state_dict entry as it will be written."""

    key: str
    kind: str  # "q" or "raw"
    dtype: str
    shape: tuple[int, ...]
    data: np.ndarray  # raw: the values; q: int32 codes of shape (rows, -1)
    bits: np.ndarray | None = None  # q only: uint8 per row
    exponents: np.ndarray | None = None  # q only: float32 per row


# ----------------------------------------------------------------------------- saving


def save_compressed(
    sc: SelfCompression, path: str | os.PathLike[str], *, coding: str = "packed",
    entropy_coded: bool = False,
) -> ExportInfo:
    """Write ``sc``'s model, pruned and at its learned bit depths, to ``path`` atomically.

    ``sc`` itself is not changed: a deep copy is pruned and encoded.  ``coding``:
    ``"packed"`` (the counted size), ``"entropy"`` (the codes through the fitted ANS coder
    of :mod:`sgsc.fileformat.entropy`, or packed where that is not smaller) or ``"lzma"`` (the whole
    payload through xz);
    ``entropy_coded=True`` is ``coding="entropy"``.  Works for any model; a model outside
    the registry of architectures loads back with ``load_compressed(path, model=...)``.
    """
    path = Path(path)
    coding = "entropy" if entropy_coded else coding
    blob, sizes = encode_compressed(sc, coding=coding)
    atomic.write_bytes(path, blob)
    return ExportInfo(
        path=path,
        file_bytes=len(blob),
        storage_bytes=sc.storage_bits() / 8,
        entropy_coded=coding != "packed",
        **sizes,
    )


def entropy_coded_bytes(sc: SelfCompression, coding: str = "entropy") -> int:
    """Size in bytes of the file :func:`save_compressed` writes with ``coding``."""
    return len(encode_compressed(sc, coding=coding)[0])


def encode_compressed(sc: SelfCompression, *, coding: str = "packed") -> tuple[bytes, dict]:
    """The file's bytes, and its section sizes (payload, stored payload, metadata)."""
    if coding not in CODINGS:
        raise ValueError(f"coding must be one of {', '.join(CODINGS)}, got {coding!r}")
    pruned = copy.deepcopy(sc)
    if pruned.graph.channels or pruned.graph.heads:
        pruned.prune()
    meta, tensors = _describe(pruned)
    payload = _payload(tensors)
    if coding == "entropy":  # codes that are incompressible, or too wide to model, stay packed
        try:
            coded = _payload(tensors, entropy_coded=True)
        except entropy.AlphabetTooLarge:
            coded = payload
        payload, coding = (coded, coding) if len(coded) < len(payload) else (payload, "packed")
    stored = lzma.compress(payload, preset=9) if coding == "lzma" else payload
    meta_block = zlib.compress(json.dumps(meta, separators=(",", ":")).encode(), 9)
    sizes = {
        "payload_bytes": len(payload),
        "stored_payload_bytes": len(stored),
        "metadata_bytes": len(meta_block),
    }
    return _frame(meta_block, stored, CODINGS[coding]), sizes


def _frame(meta_block: bytes, payload: bytes, flags: int) -> bytes:
    """Header + metadata + payload + CRC32 of everything before it."""
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, flags, len(meta_block), len(payload))
    body = header + meta_block + payload
    return body + _TRAILER.pack(zlib.crc32(body))


def _describe(sc: SelfCompression) -> tuple[dict[str, Any], list[_Tensor]]:
    """Metadata and tensors of an already pruned ``SelfCompression``.

    Quantized weights appear in the state_dict as ``<module>.parametrizations.weight.*``;
    they are written under the plain key ``<module>.weight`` that the rebuilt model uses.
    (The parametrizations are deliberately not removed: a deep copy of a parametrized
    module shares its class with the original, so removing them would break ``sc``.)
    """
    model = sc.model
    name = model_name(model)
    quantizers = sc.quantizers
    originals = {_key(m, "parametrizations.weight.original"): m for m in quantizers}
    internal = tuple(_key(m, "parametrizations.weight.") for m in quantizers)
    tensors = []
    for key, value in model.state_dict().items():
        if key in originals:
            module = originals[key]
            tensors.append(_quantized(_key(module, "weight"), value, quantizers[module]))
        elif not key.startswith(internal):
            shape = tuple(value.shape)
            tensors.append(_Tensor(key, "raw", _dtype_name(value), shape, _to_numpy(value)))
    registered = not name.startswith(CUSTOM)
    meta = {
        "model": name,
        "config": dataclasses.asdict(model.config) if registered else None,
        "tensors": [[t.key, t.kind, t.dtype, list(t.shape)] for t in tensors],
        "attributes": _changed_attributes(model, name) if registered else {},
    }
    return meta, tensors


def _key(module: str, attr: str) -> str:
    return f"{module}.{attr}" if module else attr


def _quantized(key: str, original: torch.Tensor, quantizer: nn.Module) -> _Tensor:
    """Integer codes (rows x rest), bits (uint8) and exponents (float32) of one weight."""
    with torch.no_grad():
        codes, bits = quant.integer_codes(original, quantizer.bit_depth, quantizer.exponent)
    bits_np = bits.cpu().numpy()
    if bits_np.size and bits_np.max() > bitpack.MAX_BITS:
        raise ValueError(f"{key}: bit depth {bits_np.max()} exceeds {bitpack.MAX_BITS}")
    exponents = quantizer.exponent.detach().cpu().to(torch.float32).numpy()
    # rows x the rest, spelled out: a tensor with no rows left has no -1 to infer
    data = codes.cpu().numpy().astype(np.int32).reshape(codes.shape[0],
                                                        math.prod(codes.shape[1:]))
    shape = tuple(original.shape)
    return _Tensor(
        key, "q", _dtype_name(original), shape, data, bits_np.astype(np.uint8), exponents
    )


def _payload(tensors: list[_Tensor], entropy_coded: bool = False) -> bytes:
    quantized = [t for t in tensors if t.kind == "q"]
    bits = np.concatenate([t.bits for t in quantized] or [np.zeros(0, np.uint8)])
    exponents = np.concatenate([t.exponents for t in quantized] or [np.zeros(0, np.float32)])
    if entropy_coded:
        groups = [t.data[t.bits == b].reshape(-1) for t in quantized
                  for b in _bit_groups(t.bits)]
        stream = entropy.encode(groups)
        codes = struct.pack("<I", len(stream)) + stream
    else:
        writer = bitpack.BitWriter()
        for t in quantized:
            widths = np.repeat(t.bits.astype(np.int64), t.data.shape[1])
            writer.write(t.data.reshape(-1), widths)
        codes = writer.getvalue()
    raw = b"".join(_raw_bytes(t) for t in tensors if t.kind == "raw")
    return bits.tobytes() + exponents.astype("<f4").tobytes() + codes + raw


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


def _changed_attributes(model: nn.Module, name: str) -> dict[str, dict[str, int]]:
    """Shape attributes that differ from a freshly built model (pruning changed them); the
    loader checks them against the stored tensors."""
    fresh = dict(_build(name, dataclasses.asdict(model.config)).named_modules())
    changed: dict[str, dict[str, int]] = {}
    for module_name, module in model.named_modules():
        reference = fresh.get(module_name)
        if reference is None:
            continue
        for attr in SHAPE_ATTRIBUTES:
            value = vars(module).get(attr)
            if type(value) is int and vars(reference).get(attr) != value:
                changed.setdefault(module_name, {})[attr] = value
    return changed


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
        _fill(model, tensors)
        _check_attributes(model, meta.get("attributes", {}))
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as err:
        raise CorruptFileError(f"{path}: inconsistent contents ({err})") from err
    return model.eval()


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata block of a compressed-model file (model name, config, tensor shapes)."""
    return read_container(Path(path)).meta


def read_container(path: Path) -> Container:
    """Check a file's framing, checksum and metadata; return them with the payload.

    An lzma payload is decompressed to at most what its tensors can take
    (:func:`_payload_bound`), so a decompression bomb costs no more than a genuine file.
    """
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise CorruptFileError(f"{path}: {size} bytes is larger than any model this sgsc "
                               f"writes ({MAX_FILE_BYTES} bytes)")
    blob = path.read_bytes()
    if len(blob) < _HEADER.size + _TRAILER.size:
        raise CorruptFileError(f"{path}: truncated ({len(blob)} bytes is shorter than a header)")
    magic, version, flags, meta_len, payload_len = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise CorruptFileError(f"{path}: not an sgsc compressed model (magic {magic!r})")
    if version != FORMAT_VERSION:
        raise CorruptFileError(
            f"{path}: unsupported format version {version} (this sgsc reads {FORMAT_VERSION})"
        )
    end = _HEADER.size + meta_len + payload_len
    if len(blob) != end + _TRAILER.size:
        raise CorruptFileError(
            f"{path}: truncated or padded: {len(blob)} bytes, header says {end + _TRAILER.size}"
        )
    (stored_crc,) = _TRAILER.unpack_from(blob, end)
    if zlib.crc32(blob[:end]) != stored_crc:
        raise CorruptFileError(f"{path}: checksum mismatch, the file is corrupted")
    if flags & ~(FLAG_LZMA | FLAG_ENTROPY) or flags == FLAG_LZMA | FLAG_ENTROPY:
        raise CorruptFileError(f"{path}: unknown flags {flags:#06x}")
    meta_block = blob[_HEADER.size : _HEADER.size + meta_len]
    payload = blob[_HEADER.size + meta_len : end]
    meta = _decode_metadata(path, meta_block)
    if flags & FLAG_LZMA:
        payload = _bounded_lzma(path, payload, _payload_bound(meta))
    return Container(meta, payload, flags)


def _decode_metadata(path: Path, block: bytes) -> dict[str, Any]:
    """The metadata JSON, decompressed to at most :data:`MAX_METADATA_BYTES`, checked."""
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(block, MAX_METADATA_BYTES)
        if inflater.unconsumed_tail or not inflater.eof:
            raise CorruptFileError(f"{path}: metadata is larger than {MAX_METADATA_BYTES} bytes "
                                   "or cut short")
        meta = json.loads(text)
    except (zlib.error, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptFileError(f"{path}: cannot decode the metadata ({err})") from err
    problem = _metadata_problem(meta)
    if problem:
        raise CorruptFileError(f"{path}: malformed metadata: {problem}")
    return meta


def _metadata_problem(meta: Any) -> str | None:
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
        if not (isinstance(entry, list) and len(entry) == 4 and isinstance(entry[0], str)
                and entry[1] in ("q", "raw") and entry[2] in _DTYPES
                and isinstance(entry[3], list)
                and all(type(d) is int and 0 <= d <= MAX_ELEMENTS for d in entry[3])):
            return f"bad tensor entry {str(entry)[:80]}"
        if entry[1] == "q" and (len(entry[3]) < 2 or entry[2] != "float32"):
            return f"{entry[0]}: a quantized weight must be float32 of rank 2 or more"
        total += math.prod(entry[3])
        if total > MAX_ELEMENTS:
            return f"the tensors hold more than {MAX_ELEMENTS} elements"
    return None


def _payload_bound(meta: dict[str, Any]) -> int:
    """The most bytes a packed payload of these tensors can take: per quantized row its
    bit depth and exponent and 24 bits per weight, raw tensors at their dtype."""
    bound = 0
    for _, kind, dtype, shape in meta["tensors"]:
        count = math.prod(shape)
        if kind == "q":
            bound += 5 * shape[0] + 3 * count + 1
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
    (pruning only shrinks); a tensor the model lacks must be a bias pruning created."""
    current = model.state_dict()
    for key, _kind, _dtype, shape in meta["tensors"]:
        if key in current:
            reference = tuple(current[key].shape)
        else:
            module_name, _, attr = key.rpartition(".")
            module = dict(model.named_modules()).get(module_name)
            weight = getattr(module, "weight", None) if module is not None else None
            if attr != "bias" or weight is None or getattr(module, "bias", 0) is not None:
                raise CorruptFileError(f"{path}: {key} is not a tensor of "
                                       f"{type(model).__name__}")
            reference = (weight.shape[0],)
        if len(shape) != len(reference) or any(s > r for s, r in zip(shape, reference,
                                                                         strict=True)):
            raise CorruptFileError(f"{path}: {key} is stored as {tuple(shape)}, which does not "
                                   f"fit the model's {reference}")


def _parse_payload(meta: dict[str, Any], payload: bytes, flags: int = 0
                   ) -> dict[str, torch.Tensor]:
    """Cut the payload into its sections and rebuild every tensor, one at a time; each
    section's length is checked against the bytes present before it is read."""
    entries = [(key, kind, dtype, tuple(shape)) for key, kind, dtype, shape in meta["tensors"]]
    quantized = [(key, dtype, shape) for key, kind, dtype, shape in entries if kind == "q"]
    rows = [shape[0] for _, _, shape in quantized]
    cols = [math.prod(shape[1:]) for _, _, shape in quantized]
    reader = _Sections(payload)
    bits = np.frombuffer(reader.take(sum(rows)), dtype=np.uint8).astype(np.int64)
    if bits.size and bits.max() > bitpack.MAX_BITS:
        raise ValueError(f"a row claims {bits.max()} bits (at most {bitpack.MAX_BITS})")
    exponents = np.frombuffer(reader.take(4 * sum(rows)), dtype="<f4").astype(np.float32)
    per_tensor = np.split(bits, np.cumsum(rows)[:-1]) if rows else []
    if flags & FLAG_ENTROPY:
        (length,) = struct.unpack("<I", reader.take(4))
        blocks = _entropy_blocks(reader.take(length), per_tensor, cols)
    else:
        code_bits = sum(int(b.sum()) * c for b, c in zip(per_tensor, cols, strict=True))
        stream = bitpack.BitReader(reader.take((code_bits + 7) // 8))
        blocks = (stream.read(np.repeat(b, c)) for b, c in zip(per_tensor, cols, strict=True))
    tensors: dict[str, torch.Tensor] = {}
    row = 0
    for (key, dtype, shape), block in zip(quantized, blocks, strict=True):
        n = shape[0]
        tensors[key] = _dequantize(block.reshape(shape), exponents[row : row + n],
                                   _DTYPES[dtype][0])
        row += n
    for key, kind, dtype, shape in entries:
        if kind == "raw":
            tensors[key] = _raw_tensor(reader, dtype, shape)
    reader.finish()
    return {key: tensors[key] for key, *_ in entries}


def _entropy_blocks(stream: bytes, per_tensor: list[np.ndarray], cols: list[int]
                    ) -> list[np.ndarray]:
    """Each quantized tensor's codes (rows x cols, flattened) from the entropy stream: one
    group per (tensor, bit depth), the rows of a group in row order."""
    plan = [(t, b) for t, bits in enumerate(per_tensor) for b in _bit_groups(bits)]
    sizes = [int((per_tensor[t] == b).sum()) * cols[t] for t, b in plan]
    groups = entropy.decode(stream, sizes)
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


def _fill(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Resize the model's tensors to the stored shapes, then load the stored values."""
    current = model.state_dict()
    for key, value in tensors.items():
        # A missing key may be a bias that pruning created (an empty parameter slot).
        if key not in current or current[key].shape != value.shape:
            prune.replace_tensor(model, key, value)
    model.load_state_dict(tensors, strict=True)
