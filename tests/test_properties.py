"""Property-based tests (hypothesis): the bit packer, the file loader under random
damage, and the grid parser under random grids.  Each property holds for every input
hypothesis can find, not only for the examples the other test files pick."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sgsc.core.compress import SelfCompression
from sgsc.experiments import sweep
from sgsc.experiments.models import CNNConfig, build_model
from sgsc.fileformat.bitpack import BitReader, BitWriter, packed_size
from sgsc.fileformat.export import CorruptFileError, load_compressed, save_compressed

# ----------------------------------------------------------------------------- bit packer


@st.composite
def rows_of_codes(draw):
    """Rows of signed integers, each row at its own width (0..32) and in its range."""
    rows = []
    for width in draw(st.lists(st.integers(0, 32), min_size=1, max_size=8)):
        low, high = (0, 0) if width == 0 else (-(2 ** (width - 1)), 2 ** (width - 1) - 1)
        values = draw(st.lists(st.integers(low, high), min_size=0, max_size=40))
        rows.append((width, values))
    return rows


@settings(max_examples=200, deadline=None)
@given(rows_of_codes())
def test_the_bit_stream_round_trips_at_its_exact_size(rows):
    widths = np.concatenate([np.full(len(v), w, dtype=np.int64) for w, v in rows])
    values = np.concatenate([np.asarray(v, dtype=np.int64) for _, v in rows])
    writer = BitWriter()
    writer.write(values, widths)
    data = writer.getvalue()
    assert len(data) == -(-int(widths.sum()) // 8)  # ceil(bits / 8): no byte wasted
    assert len(data) == packed_size([w for w, _ in rows], [len(v) for _, v in rows])
    np.testing.assert_array_equal(BitReader(data).read(widths), values)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 31), st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=20))
def test_a_value_out_of_its_width_is_refused(width, values):
    high = 2 ** (width - 1) - 1
    values = np.asarray(values, dtype=np.int64)
    widths = np.full(len(values), width, dtype=np.int64)
    writer = BitWriter()
    if np.all((values >= -high - 1) & (values <= high)):
        writer.write(values, widths)
        np.testing.assert_array_equal(BitReader(writer.getvalue()).read(widths), values)
    else:
        with pytest.raises(ValueError):
            writer.write(values, widths)


# ----------------------------------------------------------------------------- file loader


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("mnist_cnn", **CNNConfig.for_digits().__dict__).eval()
    sc = SelfCompression(model, init_bits=4)
    with torch.no_grad():
        sc.bit_depths()["conv2"][:5] = 0.0
    path = tmp_path_factory.mktemp("packed") / "model.sgsc"
    save_compressed(sc, path)
    return path.read_bytes()


damage = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("cut"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.integers(0, 255)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(st.lists(damage, min_size=1, max_size=4))
def test_any_damage_is_a_corrupt_file_error(packed, tmp_path, changes):
    blob = bytearray(packed)
    for kind, where, value in changes:
        at = where % (len(blob) + 1)
        if kind == "flip" and at < len(blob):
            blob[at] ^= value
        elif kind == "cut":
            del blob[at:]
        elif kind == "insert":
            blob.insert(at, value)
    path = tmp_path / "damaged.sgsc"
    path.write_bytes(bytes(blob))
    if bytes(blob) == packed:
        assert isinstance(load_compressed(path), torch.nn.Module)
    else:
        with pytest.raises(CorruptFileError, match=str(path)):
            load_compressed(path)


# ----------------------------------------------------------------------------- grid parser

scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=True),
                    st.text(max_size=6), st.sampled_from(["sc", "sgsc", "digits", "mnist"]))
values = st.one_of(scalars, st.lists(scalars, max_size=3),
                   st.dictionaries(st.text(max_size=8), scalars, max_size=3))
settings_names = st.sampled_from(["gamma", "epochs", "lr", "lr_quant", "float_epochs",
                                  "preservation_size", "seed", "bogus", "init_bits"])
grids = st.fixed_dictionaries(
    {"data": st.one_of(st.sampled_from(["digits", "cifar"]), values),
     "methods": st.one_of(st.lists(st.sampled_from(["sc", "sgsc", "float", "x"]), max_size=3),
                          values)},
    optional={"seeds": st.one_of(st.lists(st.integers(-2, 3), max_size=3), values),
              "grid": st.one_of(st.dictionaries(settings_names, st.lists(scalars, max_size=3),
                                                max_size=2), values),
              "fixed": st.one_of(st.dictionaries(settings_names, scalars, max_size=2), values),
              "out": st.one_of(st.text(min_size=1, max_size=5), st.none(), st.integers()),
              "device": st.one_of(st.sampled_from(["cpu", "auto", "gpu"]), values)})


@settings(max_examples=300, deadline=None)
@given(grids)
def test_a_grid_is_either_runnable_or_one_grid_error(raw):
    try:
        grid = sweep.parse_grid(raw)
    except sweep.GridError as err:
        assert str(err) and "Traceback" not in str(err)
        return
    # accepted: every run it holds has valid settings, and its outputs go to a real path
    assert isinstance(grid.out, str) and grid.out
    for spec in grid.specs():
        assert spec.seed >= 0 and spec.data == grid.data
