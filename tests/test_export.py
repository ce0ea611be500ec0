"""Export round trips: exact outputs, counted size, corruption detection, no pickle."""

from __future__ import annotations

import copy
import math
import pickle
import struct
from pathlib import Path

import pytest
import torch
from torch import nn

from sgsc.compress import SelfCompression
from sgsc.export import (
    FLAG_LZMA,
    CorruptFileError,
    entropy_coded_bytes,
    load_compressed,
    read_metadata,
    save_compressed,
)
from sgsc.models import CNNConfig, build_model

MODELS = {"mnist_cnn": {}, "char_transformer": {"vocab_size": 27}}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread is fastest and immune to busy machines."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _compressed(name: str) -> SelfCompression:
    """A wrapped model with fractional bit depths, zero-bit channels and one dead head."""
    torch.manual_seed(0)
    sc = SelfCompression(build_model(name, **MODELS[name]))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for bits in sc.bit_depths().values():
            bits.copy_(torch.rand(bits.shape, generator=generator) * 6 + 0.2)
            bits[::3] = 0.0
        for block in sc.graph.heads[:1]:  # head 1 of the first block: all q/k/v rows dead
            for module in (block.queries, block.keys, block.values):
                sc.bit_depths()[module][block.head_size : 2 * block.head_size] = 0.0
        sc.model.train()
        for _ in range(2):  # move BatchNorm running statistics off their defaults
            sc.model(_inputs(sc.model, 8))
    sc.model.eval()
    return sc


def _inputs(model: nn.Module, n: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(2)
    config = model.config
    if hasattr(config, "vocab_size"):
        return torch.randint(config.vocab_size, (n, config.block_size), generator=generator)
    shape = (n, config.in_channels, config.image_size, config.image_size)
    return torch.randn(shape, generator=generator)


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model.eval()(x)
    return out[0] if isinstance(out, tuple) else out


@pytest.fixture(scope="module", params=list(MODELS))
def exported(request, tmp_path_factory):
    """(sc, path, info, entropy path, entropy info) for each model, written once."""
    sc = _compressed(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    info = save_compressed(sc, folder / "model.sgsc")
    lzma_info = save_compressed(sc, folder / "model.xz.sgsc", entropy_coded=True)
    return sc, folder / "model.sgsc", info, folder / "model.xz.sgsc", lzma_info


def test_loaded_model_equals_pruned_model_exactly(exported) -> None:
    sc, path, *_ = exported
    loaded = load_compressed(path)
    reference = copy.deepcopy(sc)
    result = reference.prune()
    assert result.params_after < result.params_before  # pruning really removed something
    x = _inputs(sc.model, 5)
    assert torch.equal(_logits(loaded, x), _logits(reference.model, x))
    # ...and equals the unpruned quantized model up to the rounding that folding changes.
    torch.testing.assert_close(_logits(loaded, x), _logits(sc.model, x), rtol=1e-5, atol=1e-5)


def test_loaded_weights_are_the_quantized_weights(exported) -> None:
    sc, path, *_ = exported
    loaded = load_compressed(path)
    reference = copy.deepcopy(sc)
    reference.prune()
    for name, weight in reference.quantized_weights().items():
        assert torch.equal(loaded.get_submodule(name).weight, weight.detach()), name
    assert not any(".parametrizations." in key for key in loaded.state_dict())


def test_save_leaves_the_wrapper_untouched(exported) -> None:
    sc, *_ = exported
    shapes = {n: tuple(w.shape) for n, w in sc.quantized_weights().items()}
    bits = sc.storage_bits()
    save_compressed(sc, Path(exported[1]).with_name("again.sgsc"))
    assert {n: tuple(w.shape) for n, w in sc.quantized_weights().items()} == shapes
    assert sc.storage_bits() == bits
    _logits(sc.model, _inputs(sc.model, 2))  # still runs with its parametrizations


def test_file_size_matches_storage_bits(exported) -> None:
    sc, path, info, *_ = exported
    counted = sc.storage_bits() / 8
    assert info.file_bytes == path.stat().st_size
    assert info.storage_bytes == counted
    assert info.payload_bytes == math.ceil(counted)  # the payload is exactly what is counted
    assert abs(info.file_bytes - counted) <= 0.01 * counted + 1024


def test_entropy_coded_file_loads(exported) -> None:
    sc, path, info, lzma_path, lzma_info = exported
    assert lzma_info.entropy_coded and not info.entropy_coded
    assert lzma_info.payload_bytes == info.payload_bytes
    assert lzma_info.file_bytes == lzma_path.stat().st_size < info.file_bytes
    assert struct.unpack_from("<H", lzma_path.read_bytes(), 6)[0] & FLAG_LZMA
    x = _inputs(sc.model, 3)
    assert torch.equal(_logits(load_compressed(lzma_path), x), _logits(load_compressed(path), x))


def test_entropy_coded_bytes_matches_file(exported) -> None:
    sc, *_, lzma_info = exported
    assert entropy_coded_bytes(sc) == lzma_info.file_bytes


def test_metadata_describes_architecture(exported) -> None:
    sc, path, *_ = exported
    meta = read_metadata(path)
    assert build_model(meta["model"], **meta["config"]).__class__ is type(sc.model)
    kinds = {key: kind for key, kind, _, _ in meta["tensors"]}
    assert all(kinds[f"{name}.weight"] == "q" for name in sc.quantizers)


def test_load_uses_no_pickle(exported, monkeypatch) -> None:
    *_, path, _ = exported

    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling is not allowed while loading")

    for target, attr in [
        (pickle, "loads"),
        (pickle, "load"),
        (pickle, "Unpickler"),
        (torch, "load"),
        (torch.serialization, "load"),
    ]:
        monkeypatch.setattr(target, attr, forbidden)
    assert isinstance(load_compressed(path), nn.Module)


# ----------------------------------------------------------------------------- damage


@pytest.fixture(scope="module")
def cnn_file(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("cnn") / "cnn.sgsc"
    save_compressed(_compressed("mnist_cnn"), path)
    return path.read_bytes()


def _write(tmp_path: Path, blob: bytes) -> Path:
    path = tmp_path / "damaged.sgsc"
    path.write_bytes(blob)
    return path


@pytest.mark.parametrize("keep", [0, 10, 30, 0.5, -1])
def test_truncated_file_is_rejected(cnn_file, tmp_path, keep) -> None:
    size = int(len(cnn_file) * keep) if isinstance(keep, float) else keep % len(cnn_file)
    path = _write(tmp_path, cnn_file[:size])
    with pytest.raises(CorruptFileError, match="truncated") as err:
        load_compressed(path)
    assert str(path) in str(err.value)


def test_appended_bytes_are_rejected(cnn_file, tmp_path) -> None:
    with pytest.raises(CorruptFileError, match="padded"):
        load_compressed(_write(tmp_path, cnn_file + b"\0"))


@pytest.mark.parametrize("where", [0.01, 0.3, 0.5, 0.9, 0.999])
def test_flipped_bit_is_detected(cnn_file, tmp_path, where) -> None:
    blob = bytearray(cnn_file)
    position = max(int(len(blob) * where), 25)  # past the fixed header fields
    blob[position] ^= 0x10
    with pytest.raises(CorruptFileError, match="checksum") as err:
        load_compressed(_write(tmp_path, bytes(blob)))
    assert isinstance(err.value, ValueError)


def test_wrong_magic_is_rejected(cnn_file, tmp_path) -> None:
    with pytest.raises(CorruptFileError, match="not an sgsc"):
        load_compressed(_write(tmp_path, b"PK\x03\x04" + cnn_file[4:]))


def test_unsupported_version_is_rejected(cnn_file, tmp_path) -> None:
    blob = cnn_file[:4] + struct.pack("<H", 99) + cnn_file[6:]
    with pytest.raises(CorruptFileError, match="unsupported format version 99"):
        load_compressed(_write(tmp_path, blob))


def test_failed_write_keeps_old_file(tmp_path, monkeypatch) -> None:
    path = tmp_path / "model.sgsc"
    path.write_bytes(b"old contents")

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("sgsc.export.os.replace", crash)
    with pytest.raises(OSError, match="disk full"):
        save_compressed(_compressed("mnist_cnn"), path)
    assert path.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["model.sgsc"]  # no temp file left


def test_unregistered_model_is_refused(tmp_path) -> None:
    sc = SelfCompression(nn.Sequential(nn.Linear(4, 3)))
    with pytest.raises(ValueError, match="MODEL_REGISTRY"):
        save_compressed(sc, tmp_path / "x.sgsc")


@pytest.mark.parametrize(
    ("config", "options"),
    [
        ({"vocab_size": 27, "bias": False}, {}),
        ({"vocab_size": 27}, {"quantize_embeddings": True, "init_bits": 3.5}),
    ],
)
def test_transformer_variants_round_trip(tmp_path, config, options) -> None:
    sc = SelfCompression(build_model("char_transformer", **config), **options)
    with torch.no_grad():
        for bits in sc.bit_depths().values():
            bits[::2] = 0.0
    info = save_compressed(sc, tmp_path / "variant.sgsc")
    assert info.payload_bytes == math.ceil(sc.storage_bits() / 8)
    reference = copy.deepcopy(sc)
    reference.prune()
    x = _inputs(sc.model, 2)
    assert torch.equal(_logits(load_compressed(info.path), x), _logits(reference.model, x))


def test_all_dead_producer_round_trip(tmp_path) -> None:
    sc = _compressed("mnist_cnn")
    with torch.no_grad():
        sc.bit_depths()["conv3"].zero_()  # pruning keeps one (zero) channel
    info = save_compressed(sc, tmp_path / "dead.sgsc")
    assert info.payload_bytes == math.ceil(sc.storage_bits() / 8)
    reference = copy.deepcopy(sc)
    reference.prune()
    x = _inputs(sc.model, 2)
    assert torch.equal(_logits(load_compressed(info.path), x), _logits(reference.model, x))


def test_a_model_started_at_32_bits_exports_exactly(tmp_path) -> None:
    model = build_model("mnist_cnn", **CNNConfig.for_digits().__dict__)
    sc = SelfCompression(model, init_bits=32.0)
    with torch.no_grad():
        for name in sc.names:
            sc._quantizer(name).bit_depth.add_(1.5)  # and training pushed them higher
    save_compressed(sc, tmp_path / "wide.sgsc")
    loaded = load_compressed(tmp_path / "wide.sgsc")
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(loaded.eval()(x), model.eval()(x))


# ----------------------------------------------------------------------------- crafted files


def _reframed(blob: bytes, edit) -> bytes:
    """The file with its metadata JSON edited by ``edit`` and a valid checksum again
    (the layout of the module docstring): a crafted file, not a damaged one."""
    import json
    import zlib

    header = struct.Struct("<4sHHIQ")
    magic, version, flags, meta_len, payload_len = header.unpack_from(blob)
    meta = json.loads(zlib.decompress(blob[header.size:header.size + meta_len]))
    edit(meta)
    meta_block = zlib.compress(json.dumps(meta).encode())
    payload = blob[header.size + meta_len:header.size + meta_len + payload_len]
    body = header.pack(magic, version, flags, len(meta_block), len(payload)) + meta_block + payload
    return body + struct.pack("<I", zlib.crc32(body))


@pytest.mark.parametrize("attributes, message", [
    ({"conv1": {"stride": 0}}, "conv1.stride may not be set"),
    ({"conv1": {"training": 1}}, "conv1.training may not be set"),
    ({"conv2": {"out_channels": 7}}, "conv2.out_channels=7 disagrees"),
    ({"conv2": {"out_channels": "24"}}, "disagrees"),
    ({"nowhere": {"out_channels": 3}}, "'nowhere', which is not a module"),
    (["conv1"], "attributes must be a mapping")])
def test_a_crafted_file_cannot_set_other_attributes(cnn_file, tmp_path, attributes, message):
    def edit(meta):
        meta["attributes"] = attributes

    path = _write(tmp_path, _reframed(cnn_file, edit))
    with pytest.raises(CorruptFileError, match=message):
        load_compressed(path)


def test_the_attributes_a_file_carries_are_the_shapes_pruning_changed(cnn_file, tmp_path):
    path = _write(tmp_path, cnn_file)
    from sgsc.export import SHAPE_ATTRIBUTES, read_metadata

    attributes = read_metadata(path)["attributes"]
    assert attributes and all(a in SHAPE_ATTRIBUTES for v in attributes.values() for a in v)
    model = load_compressed(path)
    for module, values in attributes.items():
        for attr, value in values.items():
            assert getattr(model.get_submodule(module), attr) == value
