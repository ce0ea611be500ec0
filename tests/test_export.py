"""Export round trips: exact outputs, counted size, folding and narrowing, corruption
detection, format 1 files still read, no pickle."""

from __future__ import annotations

import copy
import math
import pickle
import struct
from pathlib import Path

import pytest
import torch
from torch import nn

from sgsc.core.compress import SelfCompression
from sgsc.experiments.models import CNNConfig, build_model
from sgsc.fileformat import entropy
from sgsc.fileformat.export import (
    FLAG_ENTROPY,
    FLAG_LZMA,
    CorruptFileError,
    byte_budget,
    empty_rows,
    entropy_coded_bytes,
    load_compressed,
    pack_metadata,
    read_container,
    read_metadata,
    reopen_compressed,
    save_compressed,
    unpack_metadata,
)

DATA = Path(__file__).resolve().parent / "data"


def _split(blob: bytes) -> tuple[int, dict, bytes]:
    """(flags, metadata, payload) of a format 2 file (the layout of the module docstring)."""
    meta_len, pos = entropy.read_varint(blob, 6)
    payload_len, pos = entropy.read_varint(blob, pos)
    meta = unpack_metadata(blob[pos:pos + meta_len])
    return blob[5], meta, blob[pos + meta_len:pos + meta_len + payload_len]


def _framed(meta: dict | bytes, payload: bytes, flags: int = 0) -> bytes:
    """A format 2 file of this metadata (or metadata block) and payload, with a valid
    checksum."""
    import zlib

    block = meta if isinstance(meta, bytes) else pack_metadata(meta)
    body = (b"SGSC" + bytes([2, flags]) + entropy.varint(len(block))
            + entropy.varint(len(payload)) + block + payload)
    return body + struct.pack("<I", zlib.crc32(body))

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
    """(sc, path, info, {coding: (path, info)}) for each model, written once per coding."""
    sc = _compressed(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    info = save_compressed(sc, folder / "model.sgsc", fold=False)
    coded = {coding: (folder / f"model.{coding}.sgsc",
                      save_compressed(sc, folder / f"model.{coding}.sgsc", coding=coding,
                                      fold=False))
             for coding in ("lzma", "entropy")}
    return sc, folder / "model.sgsc", info, coded


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
    untrimmed = save_compressed(sc, path.with_name("untrimmed.sgsc"), fold=False,
                                trim_bit_depths=False)
    assert info.file_bytes == path.stat().st_size
    assert info.storage_bytes == untrimmed.storage_bytes == counted
    # at its learned bit depths the payload is exactly what is counted; trimmed, no more
    assert untrimmed.payload_bytes == math.ceil(counted)
    assert info.payload_bytes <= untrimmed.payload_bytes
    assert abs(untrimmed.file_bytes - counted) <= 0.01 * counted + 1024


def _wider_than_codes(extra_bits: float) -> SelfCompression:
    """A wrapped model whose codes fill 4 bits a row, at bit depths ``extra_bits`` above:
    what a rate term leaves (it prices the codes, not the depth)."""
    torch.manual_seed(0)
    sc = SelfCompression(build_model("mnist_cnn", **CNNConfig.for_digits().__dict__),
                         init_bits=4.0)
    with torch.no_grad():
        for bits in sc.bit_depths().values():
            bits.add_(extra_bits)
    return sc


def test_rows_are_stored_at_the_bits_their_codes_use(tmp_path) -> None:
    """Rows at 7 bits whose codes fit in 4 are written at 4: the packed codes shrink by
    3/7, and the reloaded model is the untrimmed file's, bit for bit."""
    sc = _wider_than_codes(3.0)
    learned = save_compressed(sc, tmp_path / "learned.sgsc", fold=False,
                              trim_bit_depths=False)
    trimmed = save_compressed(sc, tmp_path / "trimmed.sgsc", fold=False)
    layers = byte_budget(trimmed.path)["layers"]
    assert all(x["mean_bits"] == 4.0 for x in layers)
    codes = sum(x["codes"] for x in layers)
    assert learned.payload_bytes - trimmed.payload_bytes == pytest.approx(3 * codes / 8, abs=1)
    x = _inputs(sc.model, 4)
    assert torch.equal(_logits(load_compressed(trimmed.path), x),
                       _logits(load_compressed(learned.path), x))
    # the byte budget of either file counts the codes as packing stores them now, its
    # floor and best model over the same rows
    assert byte_budget(learned.path)["layers"] == layers
    # a file of trimmed rows reopens at its trimmed depths and saves to the same bytes
    again = save_compressed(reopen_compressed(trimmed.path), tmp_path / "again.sgsc",
                            fold=False)
    assert again.path.read_bytes() == trimmed.path.read_bytes()


@pytest.mark.parametrize("name", list(MODELS))
def test_trimmed_rows_survive_folding_pruning_and_every_coding(tmp_path, name) -> None:
    """Exponents raised by 2 leave the codes of every row two bits short of its depth (a
    quarter of the values): BatchNorm folded, dead channels and heads pruned, each coding
    writes fewer bytes trimmed, and each file reloads to the untrimmed file's model."""
    sc = _compressed(name)
    with torch.no_grad():
        for quantizer in sc.quantizers.values():
            quantizer.exponent.add_(2.0)
    x = _inputs(sc.model, 3)
    for coding in ("packed", "lzma", "entropy"):
        learned = save_compressed(sc, tmp_path / f"learned.{coding}.sgsc", coding=coding,
                                  trim_bit_depths=False)
        trimmed = save_compressed(sc, tmp_path / f"trimmed.{coding}.sgsc", coding=coding)
        assert trimmed.file_bytes < learned.file_bytes, coding
        assert trimmed.folded == learned.folded and (trimmed.folded or name != "mnist_cnn")
        assert torch.equal(_logits(load_compressed(trimmed.path), x),
                           _logits(load_compressed(learned.path), x)), coding


def test_entropy_coding_keeps_the_smaller_of_learned_and_trimmed_depths() -> None:
    sc = _wider_than_codes(3.0)
    both = entropy_coded_bytes(sc, fold=False)
    assert both <= entropy_coded_bytes(sc, fold=False, trim_bit_depths=False)
    # at the depths the codes use already, there is nothing to trim
    fitted = _wider_than_codes(0.0)
    assert entropy_coded_bytes(fitted, fold=False) == \
        entropy_coded_bytes(fitted, fold=False, trim_bit_depths=False)


@pytest.mark.parametrize("coding, flag", [("lzma", FLAG_LZMA), ("entropy", FLAG_ENTROPY)])
def test_coded_files_load_to_the_same_model_and_are_smaller(exported, coding, flag) -> None:
    sc, path, info, coded = exported
    coded_path, coded_info = coded[coding]
    assert coded_info.coding == coding and info.coding == "packed"
    assert coded_info.entropy_coded == (coding == "entropy") and not info.entropy_coded
    assert coded_info.file_bytes == coded_path.stat().st_size < info.file_bytes
    assert coded_path.read_bytes()[5] == flag
    x = _inputs(sc.model, 3)
    assert torch.equal(_logits(load_compressed(coded_path), x), _logits(load_compressed(path), x))
    for key, value in load_compressed(coded_path).state_dict().items():
        assert torch.equal(value, load_compressed(path).state_dict()[key]), key


def test_entropy_coding_that_would_not_be_smaller_is_reported_as_packed(tmp_path) -> None:
    """Sixteen 2-bit codes cost less packed than with the coder's tables: the file is
    written packed, and says so."""
    torch.manual_seed(0)
    sc = SelfCompression(nn.Sequential(nn.Linear(8, 2)), init_bits=2.0)
    packed = save_compressed(sc, tmp_path / "packed.sgsc")
    asked = save_compressed(sc, tmp_path / "asked.sgsc", coding="entropy")
    assert asked.coding == "packed" and not asked.entropy_coded
    assert asked.file_bytes == packed.file_bytes
    assert (tmp_path / "asked.sgsc").read_bytes() == (tmp_path / "packed.sgsc").read_bytes()


def test_entropy_coded_bytes_matches_the_file(exported) -> None:
    sc, *_, coded = exported
    assert entropy_coded_bytes(sc, fold=False) == coded["entropy"][1].file_bytes
    assert entropy_coded_bytes(sc, "lzma", fold=False) == coded["lzma"][1].file_bytes
    with pytest.raises(ValueError, match="coding must be one of"):
        entropy_coded_bytes(sc, "zip")


def test_metadata_describes_architecture(exported) -> None:
    sc, path, *_ = exported
    meta = read_metadata(path)
    assert build_model(meta["model"], **meta["config"]).__class__ is type(sc.model)
    kinds = {key: kind for key, kind, _, _ in meta["tensors"]}
    assert all(kinds[f"{name}.weight"] == "q" for name in sc.quantizers)
    assert meta["format"] == 2 and meta["folded"] == [] and meta["exponents"] == "float32"
    # a registered model's tensors are numbered, not named: the keys cost nothing
    _, raw, _ = _split(path.read_bytes())
    assert all(isinstance(ref, int) for ref, *_ in raw["tensors"])
    assert read_container(path).metadata_bytes < 8 * len(meta["tensors"]) + 120


@pytest.mark.parametrize("coding", ["packed", "lzma", "entropy"])
def test_load_uses_no_pickle(exported, monkeypatch, coding) -> None:
    _, packed, _, coded = exported
    path = packed if coding == "packed" else coded[coding][0]

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
    blob = cnn_file[:4] + bytes([99]) + cnn_file[5:]
    with pytest.raises(CorruptFileError, match="unsupported format version 99"):
        load_compressed(_write(tmp_path, blob))


def test_failed_write_keeps_old_file(tmp_path, monkeypatch) -> None:
    path = tmp_path / "model.sgsc"
    path.write_bytes(b"old contents")

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("sgsc.fileformat.export.os.replace", crash)
    with pytest.raises(OSError, match="disk full"):
        save_compressed(_compressed("mnist_cnn"), path)
    assert path.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["model.sgsc"]  # no temp file left


class _UsersNet(nn.Module):
    """A model of a user's own, outside the registry."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x):
        return self.body(x)


def test_a_users_own_model_saves_and_reloads_into_a_fresh_instance(tmp_path) -> None:
    torch.manual_seed(0)
    sc = SelfCompression(_UsersNet().eval(), init_bits=5)
    with torch.no_grad():
        sc.bit_depths()["body.2"][1] = 0.0  # a zero-bit output row: stored as a header only
    path = tmp_path / "mine.sgsc"
    save_compressed(sc, path, coding="entropy")
    assert read_metadata(path)["model"].endswith("test_export._UsersNet")
    with pytest.raises(ValueError, match="pass a fresh instance"):
        load_compressed(path)
    with pytest.raises(ValueError, match="not a"):
        load_compressed(path, model=build_model("mnist_cnn"))
    fresh = _UsersNet()
    loaded = load_compressed(path, model=fresh)
    assert loaded is fresh
    x = torch.randn(5, 6)
    assert torch.equal(loaded(x), sc.model(x))


def test_a_block_with_no_heads_left_exports_and_reloads(tmp_path) -> None:
    model = build_model("char_transformer", vocab_size=27, n_layer=2).eval()
    sc = SelfCompression(model)
    with torch.no_grad():
        for part in "qkv":
            sc.bit_depths()[f"blocks.0.attn.{part}"].zero_()  # every head of block 0 dies
    info = save_compressed(sc, tmp_path / "headless.sgsc")
    loaded = load_compressed(info.path)
    assert loaded.blocks[0].attn.n_head == 0 and loaded.blocks[1].attn.n_head == 4
    x = _inputs(model, 3)
    torch.testing.assert_close(_logits(loaded, x), _logits(model, x), rtol=1e-5, atol=1e-5)


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
    info = save_compressed(sc, tmp_path / "variant.sgsc", fold=False, trim_bit_depths=False)
    assert info.payload_bytes == math.ceil(sc.storage_bits() / 8)  # at the learned depths
    reference = copy.deepcopy(sc)
    reference.prune()
    x = _inputs(sc.model, 2)
    assert torch.equal(_logits(load_compressed(info.path), x), _logits(reference.model, x))


def test_all_dead_producer_round_trip(tmp_path) -> None:
    sc = _compressed("mnist_cnn")
    with torch.no_grad():
        sc.bit_depths()["conv3"].zero_()  # pruning keeps one (zero) channel
    info = save_compressed(sc, tmp_path / "dead.sgsc", fold=False, trim_bit_depths=False)
    assert info.payload_bytes == math.ceil(sc.storage_bits() / 8)  # at the learned depths
    reference = copy.deepcopy(sc)
    reference.prune()
    x = _inputs(sc.model, 2)
    assert torch.equal(_logits(load_compressed(info.path), x), _logits(reference.model, x))


def _with_empty_rows(rows: dict[str, list[int]]) -> SelfCompression:
    """The CNN of ``_compressed`` with the weights of ``rows`` (layer -> channels) set to
    zero and their bit depths kept (above 0): what a rate term leaves."""
    sc = _compressed("mnist_cnn")
    with torch.no_grad():
        for name, channels in rows.items():
            sc.bit_depths()[name][channels] = 4.0
            sc.raw_weights()[name][channels] = 0.0
    return sc


def test_empty_rows_are_rows_whose_codes_are_all_zero_at_bits_above_zero() -> None:
    sc = _with_empty_rows({"conv1": [1, 2], "conv4": [4]})
    found = {name: mask.nonzero().flatten().tolist() for name, mask in empty_rows(sc).items()}
    assert found["conv1"] == [1, 2] and found["conv4"] == [4]
    # zero-bit rows are dead already: not counted again
    assert not any(mask[sc.bit_depths()[name] <= 0].any()
                   for name, mask in empty_rows(sc).items())


def test_empty_rows_leave_the_file_and_the_model_computes_the_same(tmp_path) -> None:
    """Dropped, an empty channel goes like a zero-bit one: its rows, its bias and the next
    layer's columns leave the file; the reloaded model's outputs are the kept file's."""
    sc = _with_empty_rows({"conv1": [1, 2], "conv3": [0, 5, 7]})
    kept = save_compressed(sc, tmp_path / "kept.sgsc", drop_empty_rows=False)
    dropped = save_compressed(sc, tmp_path / "dropped.sgsc")
    assert kept.empty_rows_dropped == 0 and dropped.empty_rows_dropped == 5
    reloaded_kept, reloaded = load_compressed(kept.path), load_compressed(dropped.path)
    assert reloaded.conv1.out_channels == reloaded_kept.conv1.out_channels - 2
    assert reloaded.conv3.out_channels == reloaded_kept.conv3.out_channels - 3
    # every dropped channel took at least its bits' header and its float32 bias along
    assert kept.file_bytes - dropped.file_bytes >= 5 * 4
    x = _inputs(sc.model, 6)
    reference = _logits(reloaded_kept, x)
    torch.testing.assert_close(_logits(reloaded, x), reference, rtol=1e-4,
                               atol=1e-5 * float(reference.abs().max()))
    # the wrapper itself keeps its bits: dropping happens on the exported copy only
    assert (sc.bit_depths()["conv1"][[1, 2]] == 4.0).all()


def test_entropy_coded_bytes_drop_empty_rows_unless_told_not_to() -> None:
    sc = _with_empty_rows({"conv3": [0, 5, 7]})
    assert entropy_coded_bytes(sc) < entropy_coded_bytes(sc, drop_empty_rows=False)


def test_a_model_started_at_32_bits_exports_exactly(tmp_path) -> None:
    model = build_model("mnist_cnn", **CNNConfig.for_digits().__dict__)
    sc = SelfCompression(model, init_bits=32.0)
    with torch.no_grad():
        for name in sc.names:
            sc._quantizer(name).bit_depth.add_(1.5)  # and training pushed them higher
    packed = save_compressed(sc, tmp_path / "wide.sgsc", fold=False)
    loaded = load_compressed(tmp_path / "wide.sgsc")
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(loaded.eval()(x), model.eval()(x))
    # freshly initialised 24-bit codes fill their range: entropy coding (the codes' high
    # 16 bits modelled, the low bits raw) saves next to nothing, and is never larger
    coded = save_compressed(sc, tmp_path / "wide.e.sgsc", coding="entropy", fold=False)
    assert coded.file_bytes <= packed.file_bytes
    assert coded.file_bytes == entropy_coded_bytes(sc, fold=False)
    assert torch.equal(load_compressed(tmp_path / "wide.e.sgsc").eval()(x), model.eval()(x))


def test_wide_rows_of_peaked_weights_are_entropy_coded(tmp_path) -> None:
    """A model kept at 20 bits (as the paper's operating point keeps it) whose weights sit
    near zero but for one large weight a row, which sets the exponent: the codes span 2^20
    values, too many for one model, yet the entropy-coded file spends what the coder
    estimates for their high parts (plus the low bits raw) -- well below packing, where
    such a file used to stay packed whole -- and reloads exactly."""
    torch.manual_seed(0)
    model = build_model("mnist_cnn", **CNNConfig.for_digits().__dict__)
    with torch.no_grad():
        for module in (m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)):
            laplace = torch.distributions.Laplace(0.0, 1e-3).sample(module.weight.shape)
            module.weight.copy_(laplace)
            module.weight.view(module.weight.shape[0], -1)[:, 0] = 1.0
    sc = SelfCompression(model, init_bits=20.0)
    packed = save_compressed(sc, tmp_path / "wide.sgsc", fold=False)
    coded = save_compressed(sc, tmp_path / "wide.e.sgsc", coding="entropy", fold=False)
    assert coded.coding == "entropy" and (tmp_path / "wide.e.sgsc").read_bytes()[5] == 2
    layers = byte_budget(tmp_path / "wide.sgsc")["layers"]
    estimate = sum(x["best_model_bytes"] - x["packed_bytes"] for x in layers)
    # the coder's 24-bit fixed-point probabilities over 2^16 high parts cost a fraction
    # of a percent above the estimate
    assert coded.file_bytes <= 1.01 * (packed.file_bytes + estimate)
    assert coded.file_bytes < 0.85 * packed.file_bytes
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(load_compressed(tmp_path / "wide.e.sgsc").eval()(x), model.eval()(x))


# ----------------------------------------------------------------------------- crafted files


def _reframed(blob: bytes, edit) -> bytes:
    """The file with its metadata JSON edited by ``edit`` and a valid checksum again
    (the layout of the module docstring): a crafted file, not a damaged one."""
    flags, meta, payload = _split(blob)
    edit(meta)
    return _framed(meta, payload, flags)


def _reframed_v1(blob: bytes, edit) -> bytes:
    """A format 1 file (a fixed header, zlib JSON metadata) with its metadata edited and a
    valid checksum again."""
    import json
    import zlib

    header = struct.Struct("<4sHHIQ")
    magic, version, flags, meta_len, payload_len = header.unpack_from(blob)
    meta = json.loads(zlib.decompress(blob[header.size:header.size + meta_len]))
    edit(meta)
    block = zlib.compress(json.dumps(meta).encode())
    payload = blob[header.size + meta_len:header.size + meta_len + payload_len]
    body = header.pack(magic, version, flags, len(block), len(payload)) + block + payload
    return body + struct.pack("<I", zlib.crc32(body))


@pytest.mark.parametrize("attributes, message", [
    ({"conv1": {"stride": 0}}, "conv1.stride may not be set"),
    ({"conv1": {"training": 1}}, "conv1.training may not be set"),
    ({"conv2": {"out_channels": 7}}, "conv2.out_channels=7 disagrees"),
    ({"conv2": {"out_channels": "24"}}, "disagrees"),
    ({"nowhere": {"out_channels": 3}}, "'nowhere', which is not a module"),
    (["conv1"], "attributes must be a mapping")])
def test_a_crafted_format_1_file_cannot_set_other_attributes(tmp_path, attributes, message):
    """Format 1 carried shape attributes; a file may only ever set those, to what its
    tensors imply (format 2 carries none: the shapes say it all)."""
    def edit(meta):
        meta["attributes"] = attributes

    blob = (DATA / "format1_digits_cnn.packed.sgsc").read_bytes()
    path = _write(tmp_path, _reframed_v1(blob, edit))
    with pytest.raises(CorruptFileError, match=message):
        load_compressed(path)


def _peak_mib_loading(path: Path) -> tuple[float, str]:
    """Load ``path`` in a fresh process: (extra peak memory in MiB, the error it raised)."""
    import subprocess
    import sys

    code = ("import resource, sys\n"
            "from sgsc.fileformat.export import CorruptFileError, load_compressed\n"
            "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "try:\n"
            f"    load_compressed({str(path)!r}); message = 'loaded'\n"
            "except CorruptFileError as err:\n"
            "    message = str(err)\n"
            "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "print((peak - base) / 1024); print(message)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    extra, message = done.stdout.strip().split("\n", 1)
    return float(extra), message


def test_crafted_files_are_refused_within_bounded_memory(cnn_file, tmp_path) -> None:
    import lzma

    _, meta, _ = _split(cnn_file)
    crafted = {
        # 200 MB of zeros in a few hundred KB of xz: decompression stops at the bound
        "bomb": _framed(meta, lzma.compress(bytes(200 << 20), preset=0), flags=1),
        # a weight claiming 2^28 elements in a file of a few KB
        "huge shape": _framed(meta | {"tensors": [[0, "q", [1 << 14, 1 << 14, 1, 1]]]},
                              b"\0" * 64),
        # within the cap, but larger than the layer it names (pruning only shrinks)
        "grown shape": _framed(meta | {"tensors": [[0, "q", [4096, 1, 5, 5]]]}, b"\0" * 64),
        # a config describing a model far beyond any file's bound, built on no memory
        "huge config": _framed(meta | {"config": meta["config"] | {"widths": [4096] * 4}},
                               b"\0" * 64),
    }
    # a metadata block announcing more tensors than it has bytes
    crafted["huge metadata"] = _framed(bytes([9]) + b"mnist_cnn" + bytes([2]) + b"{}"
                                       + bytes([0]) + entropy.varint(1 << 40), b"")
    expected = {"bomb": "decompresses past", "huge shape": "more than 67108864 elements",
                "grown shape": "does not fit the model",
                "huge config": "more than the", "huge metadata": "cannot fit a metadata block"}
    for name, blob in crafted.items():
        path = tmp_path / f"{name.replace(' ', '_')}.sgsc"
        path.write_bytes(blob)
        extra_mib, message = _peak_mib_loading(path)
        assert expected[name] in message, (name, message)
        assert extra_mib < 150, (name, extra_mib)



# ----------------------------------------------------------------------------- inference files


def test_batchnorm_folds_into_the_layer_before_it_within_float_rounding(tmp_path) -> None:
    """The CNN's BatchNorms follow a ReLU: their scale moves into the producer's exponents
    (codes unchanged), their shift into the consumers' biases; no running statistics are
    stored, and the reloaded model computes the trained one's outputs."""
    sc = _compressed("mnist_cnn")
    exact = save_compressed(sc, tmp_path / "exact.sgsc", fold=False)
    folded = save_compressed(sc, tmp_path / "folded.sgsc")
    assert folded.folded == ("bn1", "bn2")
    keys = [key for key, *_ in read_metadata(folded.path)["tensors"]]
    assert not any(key.startswith(("bn1.", "bn2.")) for key in keys)
    assert exact.file_bytes - folded.file_bytes >= 4 * 4 * (21 + 42)  # four floats a channel
    x = _inputs(sc.model, 6)
    reference = _logits(load_compressed(exact.path), x)
    loaded = load_compressed(folded.path)
    torch.testing.assert_close(_logits(loaded, x), reference, rtol=1e-4,
                               atol=1e-5 * float(reference.abs().max()))
    assert torch.equal(loaded.bn1.running_var, torch.full_like(loaded.bn1.running_var,
                                                               1 - loaded.bn1.eps))


def test_a_batchnorm_that_would_flip_signs_is_left_as_it_is(tmp_path) -> None:
    sc = _compressed("mnist_cnn")
    with torch.no_grad():
        sc.model.bn1.weight[1] = -1.0  # a negative scale (channel 0 is pruned): no fold
    info = save_compressed(sc, tmp_path / "m.sgsc")
    assert info.folded == ("bn2",)
    x = _inputs(sc.model, 4)
    reference = copy.deepcopy(sc)
    reference.prune()
    torch.testing.assert_close(_logits(load_compressed(info.path), x),
                               _logits(reference.model, x), rtol=1e-4, atol=1e-6)


def test_narrow_precision_stores_float16_and_grid_exponents_and_says_so(tmp_path) -> None:
    sc = _compressed("mnist_cnn")
    exact = save_compressed(sc, tmp_path / "exact.sgsc")
    narrow = save_compressed(sc, tmp_path / "narrow.sgsc", precision="narrow")
    meta = read_metadata(narrow.path)
    assert meta["exponents"] == "grid"
    assert {dtype for _, kind, dtype, _ in meta["tensors"] if kind == "raw"} == {"float16"}
    x = _inputs(sc.model, 6)
    reference = _logits(load_compressed(exact.path), x)
    loaded = load_compressed(narrow.path)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    torch.testing.assert_close(_logits(loaded, x), reference, rtol=1e-2,
                               atol=1e-2 * float(reference.abs().max()))
    with pytest.raises(ValueError, match="precision must be one of"):
        save_compressed(sc, tmp_path / "x.sgsc", precision="half")


def test_grid_precision_puts_exponents_on_the_grid_and_keeps_every_other_tensor(tmp_path
                                                                              ) -> None:
    sc = _compressed("mnist_cnn")
    exact = save_compressed(sc, tmp_path / "exact.sgsc")
    grid = save_compressed(sc, tmp_path / "grid.sgsc", precision="grid")
    narrow = save_compressed(sc, tmp_path / "narrow.sgsc", precision="narrow")
    meta = read_metadata(grid.path)
    assert meta["exponents"] == "grid"
    assert {dtype for _, kind, dtype, _ in meta["tensors"] if kind == "raw"} == {"float32"}
    assert narrow.file_bytes < grid.file_bytes < exact.file_bytes
    # the grid's exponents are narrow's, bit for bit; the other tensors are exact's
    exact_state = load_compressed(exact.path).state_dict()
    grid_state = load_compressed(grid.path).state_dict()
    narrow_state = load_compressed(narrow.path).state_dict()
    quantized = {f"{name}.weight" for name in sc.quantizers}
    for key, value in grid_state.items():
        same_as = narrow_state if key in quantized else exact_state
        assert torch.equal(value, same_as[key]), key


def test_grid_exponents_move_a_weight_less_than_float16_rounding_in_fewer_bytes(tmp_path
                                                                                ) -> None:
    """Every quantized weight of a narrow file is its exact file's within 2^-11 ln 2 (the
    grid's half step, below float16's 2^-11), and each layer's exponents take fewer bytes
    than 16 bits a row and an 8-byte range would."""
    sc = _compressed("mnist_cnn")
    with torch.no_grad():  # exponents spread over 40 grid steps to a layer, as folding leaves
        for quantizer in sc.quantizers.values():
            quantizer.exponent.add_(torch.linspace(-20, 20, len(quantizer.exponent)) / 1024)
    exact = load_compressed(save_compressed(sc, tmp_path / "e.sgsc").path).state_dict()
    path = save_compressed(sc, tmp_path / "n.sgsc", precision="narrow").path
    narrow = load_compressed(path).state_dict()
    for key in (f"{name}.weight" for name in sc.quantizers):
        kept = exact[key] != 0
        ratio = narrow[key][kept] / exact[key][kept]
        assert (ratio - 1).abs().max() <= 2 ** -11 * math.log(2) + 1e-6, key
    for layer in byte_budget(path)["layers"]:
        grid_bytes = layer["header_bytes"] - layer["rows"] * 5 / 8
        assert grid_bytes < 2 * layer["rows"] + 8, layer["layer"]


def test_a_narrow_file_with_16_bit_exponents_still_loads_to_its_model() -> None:
    """Narrow files before encoder revision 4 (the report's kept files) hold their
    exponents in 16-bit fixed point; they load to the model they held (tests/data: the
    report's smallest file at 99 %, seed 1, and logits its encoder's loader gave)."""
    import json

    expected = json.loads((DATA / "fixed16_mnist_cnn.json").read_text())
    path = DATA / "fixed16_mnist_cnn.narrow_entropy.sgsc"
    assert read_metadata(path)["exponents"] == "fixed16"
    # the exponents bit for bit (float32 arithmetic, the same on any CPU); the logits
    # within what another CPU's convolution kernels round otherwise
    exponents = {name: q.exponent.tolist()
                 for name, q in reopen_compressed(path).quantizers.items()}
    assert exponents == expected["exponents"]
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(expected["input_seed"]))
    torch.testing.assert_close(_logits(load_compressed(path), x),
                               torch.tensor(expected["logits"]), rtol=1e-5, atol=1e-6)
    for layer in byte_budget(path)["layers"]:  # 5 depth bits, 2 bytes a row, an 8-byte range
        assert layer["header_bytes"] == layer["rows"] * (5 / 8 + 2) + 8


def test_an_exponent_coding_this_version_does_not_know_is_named(tmp_path) -> None:
    sc = _compressed("mnist_cnn")
    path = save_compressed(sc, tmp_path / "n.sgsc", precision="narrow").path
    flags, meta, payload = _split(path.read_bytes())
    block = bytearray(pack_metadata(meta))
    pos = 0
    for _ in range(2):  # past the model's name and its config
        length, pos = entropy.read_varint(bytes(block), pos)
        pos += length
    block[pos] = 9
    (tmp_path / "new.sgsc").write_bytes(_framed(bytes(block), payload, flags))
    with pytest.raises(CorruptFileError, match="unknown exponent coding 9"):
        load_compressed(tmp_path / "new.sgsc")


def test_a_grid_wider_than_32_bits_is_refused_as_corrupt(tmp_path) -> None:
    sc = _compressed("mnist_cnn")
    path = save_compressed(sc, tmp_path / "n.sgsc", precision="narrow").path
    flags, meta, payload = _split(path.read_bytes())
    base, pos = entropy.read_varint(payload, 0)  # the first layer's base, then its width
    bad = payload[:pos] + bytes([33]) + payload[pos + 1:]
    (tmp_path / "bad.sgsc").write_bytes(_framed(meta, bad, flags))
    with pytest.raises(CorruptFileError, match="exponent width 33"):
        load_compressed(tmp_path / "bad.sgsc")


@pytest.mark.parametrize("coding", ["packed", "entropy"])
def test_a_format_1_file_still_loads_to_its_model(coding) -> None:
    """Files written by sgsc 0.2 (format 1: a fixed header, uint8 bit depths, keys in the
    metadata) load to the model they held (tests/data: written by that code)."""
    import json

    expected = json.loads((DATA / "format1_digits_cnn.json").read_text())
    path = DATA / f"format1_digits_cnn.{coding}.sgsc"
    assert read_container(path).version == 1
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(expected["input_seed"]))
    assert torch.equal(_logits(load_compressed(path), x), torch.tensor(expected["logits"]))


# ---- where the bytes go, and files written again ---------------------------------------------

@pytest.mark.parametrize("coding", ["packed", "entropy"])
def test_the_byte_budget_accounts_for_every_byte(tmp_path, coding) -> None:
    from sgsc.fileformat.export import byte_budget

    sc = _compressed("mnist_cnn")
    path = tmp_path / "m.sgsc"
    info = save_compressed(sc, path, coding=coding)
    budget = byte_budget(path)
    assert budget["coding"] == coding and budget["format"] == 2
    assert sum(budget["sections"].values()) == budget["file_bytes"] == info.file_bytes
    assert budget["file_bytes"] == path.stat().st_size
    for layer in budget["layers"]:
        stored = sum(b > 0 for b in layer["bits"])
        per_row = layer["codes"] // stored if stored else 0
        assert layer["packed_bytes"] == sum(layer["bits"]) * per_row / 8
        # the order-0 entropy of each bit depth's codes never exceeds packing them
        assert 0 <= layer["entropy_floor_bytes"] <= layer["packed_bytes"] + 1e-9
    assert sum(t["bytes"] for t in budget["other_tensors"]) > 0


def test_a_reopened_file_saves_to_the_same_bytes(tmp_path) -> None:
    from sgsc.fileformat.export import reopen_compressed

    sc = _compressed("mnist_cnn")
    first = tmp_path / "first.sgsc"
    save_compressed(sc, first)
    again = tmp_path / "again.sgsc"
    save_compressed(reopen_compressed(first), again)
    assert again.read_bytes() == first.read_bytes()


def test_a_format_1_file_rewritten_as_format_2_keeps_its_model(tmp_path) -> None:
    import json

    from sgsc.fileformat.export import reopen_compressed

    expected = json.loads((DATA / "format1_digits_cnn.json").read_text())
    old = DATA / "format1_digits_cnn.packed.sgsc"
    new = tmp_path / "rewritten.sgsc"
    info = save_compressed(reopen_compressed(old), new)
    assert read_container(new).version == 2
    assert info.file_bytes < old.stat().st_size  # 5-bit depths and binary metadata
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(expected["input_seed"]))
    torch.testing.assert_close(_logits(load_compressed(new), x),
                               torch.tensor(expected["logits"]), rtol=1e-5, atol=1e-5)
