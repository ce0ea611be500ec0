"""Write a self-compressed model to disk at (almost exactly) its counted size, and read it back.

The file holds exactly what :meth:`SelfCompression.storage_bits` counts -- per stored row
of a quantized weight its bit depth (uint8), its exponent (float32) and its integer codes at
that many bits; every other tensor raw -- plus a small header, a compressed JSON
description of the architecture and a checksum.

File layout (all integers little-endian)::

    offset  size  field
    0       4     magic b"SGSC"
    4       2     format version (uint16, currently 1)
    6       2     flags (uint16; bit 0 = payload is lzma (xz) compressed)
    8       4     M = length of the metadata block (uint32)
    12      8     P = length of the payload as stored (uint64)
    20      M     metadata: zlib-compressed UTF-8 JSON
    20+M    P     payload (raw, or xz-compressed when flag bit 0 is set)
    20+M+P  4     CRC32 of every byte before it (uint32)

The metadata JSON is ``{"model": registry name, "config": model config, "tensors":
[[key, kind, dtype, shape], ...], "attributes": {...}}`` with the tensors in state_dict
order; ``kind`` is ``"q"`` for a quantized weight and ``"raw"`` otherwise.  The payload,
before any lzma, is four sections back to back:

1. bit depths: one uint8 per stored row of every quantized weight (tensor order, row order);
2. exponents: one float32 per stored row, same order;
3. codes: one continuous bit stream (:mod:`sgsc.bitpack`), row after row, each weight at its
   row's bit depth, two's complement, not byte aligned, zero padded once at the end;
4. raw tensors: each remaining tensor's bytes at its own dtype, in order.

Loading never unpickles anything: the model is rebuilt from the registry, resized with
:func:`sgsc.prune.replace_tensor` and filled from ``numpy.frombuffer`` arrays.  Quantized
weights are rebuilt as ``exp2(e) * codes`` in float32, the very operations of
:func:`sgsc.quant.quantize`, so the loaded model computes exactly what the compressed model
computed.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import lzma
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from sgsc import atomic, bitpack, models, prune, quant

if TYPE_CHECKING:
    from sgsc.compress import SelfCompression

MAGIC = b"SGSC"
FORMAT_VERSION = 1
FLAG_LZMA = 1

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
    sc: SelfCompression, path: str | os.PathLike[str], *, entropy_coded: bool = False
) -> ExportInfo:
    """Write ``sc``'s model, pruned and at its learned bit depths, to ``path`` atomically.

    ``sc`` itself is not changed: a deep copy is pruned and encoded.  With
    ``entropy_coded`` the payload is additionally lzma (xz) compressed.
    """
    path = Path(path)
    blob, sizes = encode_compressed(sc, entropy_coded=entropy_coded)
    atomic.write_bytes(path, blob)
    return ExportInfo(
        path=path,
        file_bytes=len(blob),
        storage_bytes=sc.storage_bits() / 8,
        entropy_coded=entropy_coded,
        **sizes,
    )


def entropy_coded_bytes(sc: SelfCompression) -> int:
    """Size in bytes of the file :func:`save_compressed` writes with ``entropy_coded=True``."""
    return len(encode_compressed(sc, entropy_coded=True)[0])


def encode_compressed(sc: SelfCompression, *, entropy_coded: bool = False) -> tuple[bytes, dict]:
    """The file's bytes, and its section sizes (payload, stored payload, metadata)."""
    _registry_name(sc.model)  # fail before the (slow) copy and prune
    pruned = copy.deepcopy(sc)
    pruned.prune()
    meta, tensors = _describe(pruned)
    payload = _payload(tensors)
    stored = lzma.compress(payload, preset=9) if entropy_coded else payload
    meta_block = zlib.compress(json.dumps(meta, separators=(",", ":")).encode(), 9)
    sizes = {
        "payload_bytes": len(payload),
        "stored_payload_bytes": len(stored),
        "metadata_bytes": len(meta_block),
    }
    return _frame(meta_block, stored, FLAG_LZMA if entropy_coded else 0), sizes


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
    name = _registry_name(model)
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
    meta = {
        "model": name,
        "config": dataclasses.asdict(model.config),
        "tensors": [[t.key, t.kind, t.dtype, list(t.shape)] for t in tensors],
        "attributes": _changed_attributes(model, name),
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
    data = codes.cpu().numpy().astype(np.int32).reshape(codes.shape[0], -1)
    shape = tuple(original.shape)
    return _Tensor(
        key, "q", _dtype_name(original), shape, data, bits_np.astype(np.uint8), exponents
    )


def _payload(tensors: list[_Tensor]) -> bytes:
    quantized = [t for t in tensors if t.kind == "q"]
    bits = np.concatenate([t.bits for t in quantized] or [np.zeros(0, np.uint8)])
    exponents = np.concatenate([t.exponents for t in quantized] or [np.zeros(0, np.float32)])
    writer = bitpack.BitWriter()
    for t in quantized:
        widths = np.repeat(t.bits.astype(np.int64), t.data.shape[1])
        writer.write(t.data.reshape(-1), widths)
    raw = b"".join(_raw_bytes(t) for t in tensors if t.kind == "raw")
    return bits.tobytes() + exponents.astype("<f4").tobytes() + writer.getvalue() + raw


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


def _registry_name(model: nn.Module) -> str:
    for name, cls in models.MODEL_REGISTRY.items():
        if type(model) is cls:
            return name
    raise ValueError(f"{type(model).__name__} is not in sgsc.models.MODEL_REGISTRY")


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
    """``models.build_model`` without consuming the caller's random numbers (init is
    overwritten anyway, and saving mid-training must not change the run)."""
    with torch.random.fork_rng(devices=[]):
        return models.build_model(name, **config)


# ----------------------------------------------------------------------------- loading


def load_compressed(path: str | os.PathLike[str]) -> nn.Module:
    """Rebuild the model written by :func:`save_compressed` (plain modules, eval mode).

    Raises:
        CorruptFileError: the file is truncated, damaged, of another format or version.
    """
    path = Path(path)
    meta, payload = read_container(path)
    try:
        tensors = _parse_payload(meta, payload)
        model = _build(meta["model"], meta["config"])
        _fill(model, tensors)
        _check_attributes(model, meta.get("attributes", {}))
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as err:
        raise CorruptFileError(f"{path}: inconsistent contents ({err})") from err
    return model.eval()


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata block of a compressed-model file (model name, config, tensor shapes)."""
    return read_container(Path(path))[0]


def read_container(path: Path) -> tuple[dict[str, Any], bytes]:
    """Check a file's framing and checksum; return its metadata and (decompressed) payload."""
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
    if flags & ~FLAG_LZMA:
        raise CorruptFileError(f"{path}: unknown flags {flags:#06x}")
    meta_block = blob[_HEADER.size : _HEADER.size + meta_len]
    payload = blob[_HEADER.size + meta_len : end]
    try:
        meta = json.loads(zlib.decompress(meta_block))
        if flags & FLAG_LZMA:
            payload = lzma.decompress(payload)
    except (zlib.error, lzma.LZMAError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptFileError(f"{path}: cannot decode contents ({err})") from err
    return meta, payload


def _parse_payload(meta: dict[str, Any], payload: bytes) -> dict[str, torch.Tensor]:
    """Cut the payload into its sections and rebuild every tensor."""
    entries = [(key, kind, dtype, tuple(shape)) for key, kind, dtype, shape in meta["tensors"]]
    quantized = [(key, dtype, shape) for key, kind, dtype, shape in entries if kind == "q"]
    rows = [shape[0] for _, _, shape in quantized]
    cols = [int(np.prod(shape[1:])) for _, _, shape in quantized]
    n_rows = sum(rows)
    reader = _Sections(payload)
    bits = np.frombuffer(reader.take(n_rows), dtype=np.uint8).astype(np.int64)
    exponents = np.frombuffer(reader.take(4 * n_rows), dtype="<f4").astype(np.float32)
    widths = np.repeat(bits, np.repeat(cols, rows).astype(np.int64))
    codes = bitpack.BitReader(reader.take((int(widths.sum()) + 7) // 8)).read(widths)
    tensors: dict[str, torch.Tensor] = {}
    row, pos = 0, 0
    for (key, dtype, shape), n, c in zip(quantized, rows, cols, strict=True):
        block = codes[pos : pos + n * c].reshape(shape)
        tensors[key] = _dequantize(block, exponents[row : row + n], _DTYPES[dtype][0])
        row, pos = row + n, pos + n * c
    for key, kind, dtype, shape in entries:
        if kind == "raw":
            tensors[key] = _raw_tensor(reader, dtype, shape)
        elif kind != "q":
            raise ValueError(f"unknown tensor kind {kind!r} for {key}")
    reader.finish()
    return {key: tensors[key] for key, *_ in entries}


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
