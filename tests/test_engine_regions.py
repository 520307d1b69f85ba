"""The engine draws any rectangular region of a canonical tensor, equal bit for bit to the
same slice of the whole draw, for every family, float dtype and layout, with memory and
work bounded by the region (elementwise and sparse) - the base the sharding work builds on."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import xinit.core as xc
from xinit.core import engine, packing, specs
from xinit.core.debug import key_data
from xinit.core.errors import ShapeError

FLOATS = ["float16", "bfloat16", "float32", "float64"]

ELEMENTWISE = [
    specs.Uniform(-0.5, 0.7),
    specs.Uniform(0.999, 1.0),  # values that round up to b: the [a, b) cap
    specs.Normal(0.3, 2.0),
    specs.TruncNormal(0.0, 0.5, -0.6, 0.9),
    specs.KaimingUniform(a=5**0.5),
    specs.XavierNormal(),
    specs.VarianceScaling(2.0, "fan_in", "truncated_normal"),
    specs.Constant(0.37),
]


def _slices(region):
    return tuple(slice(a, b) for a, b in region)


def _flat(pieces, dtype):
    if not pieces:
        return np.zeros(0, dtype)
    return np.concatenate([np.asarray(p.array)[: p.valid] for p in pieces])


def _whole(spec, shape, dtype, key=7):
    with engine.x64_scope(dtype):
        return _flat(engine.draw(spec, key, shape, dtype), np.dtype(dtype)).reshape(shape)


def _region(spec, shape, dtype, region, key=7):
    with engine.x64_scope(dtype):
        return _flat(engine.draw(spec, key, shape, dtype, region=region), np.dtype(dtype))


def _bits(a):
    a = np.ascontiguousarray(a)
    return a.view(np.uint8)


REGIONS_2D = [  # (shape, region): whole, empty, one element, last-dim narrow, leading rows, ...
    ((300, 77), ((0, 300), (0, 77))),
    ((300, 77), ((0, 300), (5, 5))),
    ((300, 77), ((12, 13), (40, 41))),
    ((300, 77), ((0, 300), (74, 77))),
    ((300, 77), ((100, 180), (0, 77))),
    ((300, 77), ((1, 299), (1, 76))),
    ((64, 4096), ((0, 64), (1024, 2048))),  # runs of whole rows (multiples of 256)
    ((64, 4096), ((3, 60), (7, 3000))),  # long runs
]
REGIONS_ND = [
    ((16, 8, 3, 3), ((0, 16), (2, 5), (0, 3), (0, 3))),  # a slice of the in dimension
    ((16, 8, 3, 3), ((4, 8), (0, 8), (1, 2), (0, 3))),  # a middle receptive dimension
    ((16, 8, 3, 3), ((0, 16), (0, 8), (0, 3), (2, 3))),  # last dim, width 1
    ((1000,), ((10, 990),)),
    ((2, 3, 4, 5, 6), ((1, 2), (0, 3), (1, 3), (0, 5), (2, 5))),
]


FAN_BASED = ("kaiming_uniform", "xavier_normal", "variance_scaling")


@pytest.mark.parametrize("spec,shape,region", [
    (spec, shape, region) for spec in ELEMENTWISE for shape, region in REGIONS_2D + REGIONS_ND
    if len(shape) >= 2 or spec.name not in FAN_BASED
], ids=str)
def test_elementwise_region_is_the_slice_of_the_whole_draw(spec, shape, region):
    whole = _whole(spec, shape, np.float32)
    got = _region(spec, shape, np.float32, region)
    assert np.array_equal(_bits(got), _bits(whole[_slices(region)].ravel()))


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("spec", [specs.Uniform(-1.0, 1.0), specs.Normal(0.0, 1.0),
                                  specs.TruncNormal(0.0, 1.0, -1.0, 2.0)], ids=str)
@pytest.mark.parametrize("shape,region", [REGIONS_2D[3], REGIONS_2D[5], REGIONS_ND[1]], ids=str)
def test_regions_in_every_float_dtype(spec, dtype, shape, region):
    whole = _whole(spec, shape, dtype)
    got = _region(spec, shape, dtype, region)
    assert got.dtype == np.dtype(dtype)
    assert np.array_equal(_bits(got), _bits(whole[_slices(region)].ravel()))


@pytest.mark.parametrize("spec", [specs.Eye(), specs.Dirac(2), specs.Constant(3)], ids=str)
@pytest.mark.parametrize("dtype", ["float32", "int32", "bool"])
def test_index_families_regions(spec, dtype):
    shape = (12, 6, 3, 3) if spec.name == "dirac" else (40, 30)
    region = ((2, 9), (1, 5), (1, 3), (0, 2)) if spec.name == "dirac" else ((3, 31), (2, 29))
    whole = _whole(spec, shape, dtype)
    assert np.array_equal(_region(spec, shape, dtype, region), whole[_slices(region)].ravel())


@st.composite
def shapes_and_regions(draw):
    shape = tuple(draw(st.lists(st.integers(1, 40), min_size=1, max_size=4)))
    region = []
    for n in shape:
        a = draw(st.integers(0, n))
        b = draw(st.integers(a, n))
        region.append((a, b))
    return shape, tuple(region)


@given(shapes_and_regions(), st.sampled_from(range(len(ELEMENTWISE))), st.sampled_from(FLOATS))
@settings(derandomize=True, database=None, deadline=None, max_examples=120)
def test_any_region_of_any_shape(shape_region, which, dtype):
    shape, region = shape_region
    spec = ELEMENTWISE[which]
    if len(shape) < 2 and spec.name in FAN_BASED:
        spec = specs.Normal(0.0, 1.0)
    whole = _whole(spec, shape, dtype)
    got = _region(spec, shape, dtype, region)
    assert np.array_equal(_bits(got), _bits(whole[_slices(region)].ravel()))


@pytest.mark.parametrize("shape,region", [((40, 1000), ((0, 40), (0, 3))),  # narrow: dense rows
                                          ((40, 1000), ((5, 33), (400, 1000))),
                                          ((300, 77), ((0, 300), (74, 77)))], ids=str)
def test_regions_spanning_chunks(shape, region, monkeypatch):
    """With 1 Ki-element chunks a region's runs, and densely packed rows, span chunks."""
    spec = specs.Normal(0.0, 1.0)
    whole = _whole(spec, shape, np.float32)
    monkeypatch.setattr(packing, "MAX_ROWS", 4)
    got = _region(spec, shape, np.float32, region)
    assert np.array_equal(_bits(got), _bits(whole[_slices(region)].ravel()))


@pytest.mark.parametrize("shape,region", [((1000, 4096), ((0, 1000), (0, 3))),
                                          ((1000, 4096), ((0, 1000), (100, 300))),
                                          ((64, 64, 64), ((0, 64), (0, 64), (10, 13))),
                                          ((4096, 4096), ((0, 4096), (0, 512))),
                                          ((4096, 4096), ((0, 4096), (7, 4000)))], ids=str)
def test_work_is_close_to_the_region_size(shape, region):
    """Narrow regions are packed densely (one counter per element), not a 256-element row
    per short run: the rows drawn hold at most the region plus one row per run's padding
    (long runs) or plus one row (dense)."""
    req = engine.request(specs.Normal(0.0, 1.0).plan(shape), 0, shape, np.float32, region=region)
    runs = packing.runs_of(req)
    drawn = runs.rows * packing.ROW
    assert drawn <= req.size * 17 // 16 + packing.ROW, (drawn, req.size)


def test_a_region_of_a_huge_tensor_costs_only_the_region():
    """A 4x3 region of a 2**40-element tensor is drawn without the tensor, and its values
    are the definition: threefry of each element's flat counter, as ``jax.random.uniform``
    turns bits into floats (computed here in numpy)."""
    from xinit.core import threefry

    shape = (2**20, 2**20)
    region = ((2**19, 2**19 + 4), (2**20 - 3, 2**20))
    got = _region(specs.Uniform(0.0, 1.0), shape, np.float32, region).reshape(4, 3)
    rows = np.arange(2**19, 2**19 + 4, dtype=np.uint64)[:, None]
    counters = rows * np.uint64(2**20) + np.arange(2**20 - 3, 2**20, dtype=np.uint64)[None, :]
    kd = np.asarray(key_data(7))
    with np.errstate(over="ignore"):
        b1, b2 = threefry.threefry2x32(kd[0], kd[1], (counters >> np.uint64(32)).astype(np.uint32),
                                       (counters & np.uint64(0xFFFFFFFF)).astype(np.uint32))
    expected = (((b1 ^ b2) >> np.uint32(9)) | np.uint32(0x3F800000)).view(np.float32) - np.float32(1)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("shape,region", [
    ((8, 5), ((2, 6), (1, 4))), ((5, 8), ((0, 5), (3, 8))), ((6, 4, 3, 3), ((1, 4), (0, 4), (0, 3), (1, 2))),
    ((64, 64), ((0, 1), (0, 64))), ((64, 64), ((10, 10), (0, 64))),
], ids=str)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float64"])
def test_orthogonal_region_is_the_slice_of_the_whole_matrix(shape, region, dtype):
    spec = specs.Orthogonal(1.3)
    whole = _whole(spec, shape, dtype)
    got = _region(spec, shape, dtype, region)
    assert np.array_equal(_bits(got), _bits(whole[_slices(region)].ravel()))


@pytest.mark.parametrize("region", [((0, 50), (0, 31)), ((0, 50), (7, 8)), ((17, 40), (3, 29)),
                                    ((49, 50), (0, 31)), ((0, 1), (30, 31)), ((20, 20), (0, 31))],
                         ids=str)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float64"])
def test_sparse_region_is_the_slice_of_the_whole_draw(region, dtype):
    shape = (50, 31)
    spec = specs.Sparse(0.3, 0.05)
    whole = _whole(spec, shape, dtype)
    got = _region(spec, shape, dtype, region)
    assert np.array_equal(_bits(got), _bits(whole[_slices(region)].ravel()))


def test_sparse_region_draws_only_its_columns_up_to_its_last_row():
    """The zero mask of a column depends only on that column's selection uniforms in the
    rows up to the region's last row. A region of a 10**6 x 10**6 tensor is drawn from
    those alone (its programs' arguments say so) and equals the definition, computed
    here from region draws of the two underlying draws and Algorithm S in numpy."""
    spec = specs.Sparse(0.5, 1.0)
    rows, cols = 10**6, 10**6
    region = ((2, 10), (500, 507))
    req = engine.request(spec.plan((rows, cols)), 3, (rows, cols), np.float32, region=region)
    _, args = engine._sparse_args(req)
    assert args[3].shape == (2, 8) and args[4].shape == (2, 10)  # value rows 2..9, selection rows 0..9
    got = _flat(engine.pieces(req), np.float32).reshape(8, 7)

    values = _region(specs.Normal(0.0, 1.0), (rows, cols), np.float32, region, key=3).reshape(8, 7)
    sel = _region(specs.Uniform(0.0, 1.0), (2, rows, cols), np.float32, ((1, 2), (0, 10), (500, 507)),
                  key=3).reshape(10, 7)
    need = np.full(7, req.plan.zeros, np.int32)
    mask = np.zeros((10, 7), bool)
    for i in range(10):
        remaining = np.int32(rows - i)
        chosen = ((need >= remaining) | (sel[i] * remaining.astype(np.float32) < need.astype(np.float32)))
        chosen &= need > 0
        mask[i] = chosen
        need -= chosen.astype(np.int32)
    np.testing.assert_array_equal(got, np.where(mask[2:], np.float32(0), values))


def test_regions_through_sample_in_flax_layout():
    """``sample(..., region=)`` takes the region in the array's own layout: a flax kernel's
    region equals the slice of the whole flax kernel."""
    shape = (3, 3, 8, 16)  # flax (kh, kw, in, out)
    region = ((0, 3), (1, 3), (2, 7), (4, 16))
    for spec in (specs.KaimingUniform(), specs.TruncNormal(0.0, 0.02, -0.04, 0.04), specs.Orthogonal()):
        whole = np.asarray(xc.sample(spec, 5, shape, layout=xc.FLAX))
        part = np.asarray(xc.sample(spec, 5, shape, layout=xc.FLAX, region=region))
        assert part.shape == (3, 2, 5, 12)
        np.testing.assert_array_equal(part, whole[_slices(region)])


def test_region_inside_jit_equals_eager():
    shape, region = (64, 48), ((8, 40), (5, 17))
    spec = specs.Normal(0.0, 0.02)
    eager = np.asarray(xc.sample(spec, jax.random.key(3), shape, region=region))
    traced = np.asarray(jax.jit(lambda k: xc.sample(spec, k, shape, region=region))(jax.random.key(3)))
    np.testing.assert_array_equal(eager, traced)


@pytest.mark.parametrize("region", [((0, 3),), ((0, 3), (0, 5), (0, 1)), ((2, 1), (0, 5)),
                                    ((0, 4), (0, 5)), ((-1, 2), (0, 5)), "rows"], ids=str)
def test_a_region_that_does_not_fit_raises_shape_error(region):
    with pytest.raises(ShapeError, match="region"):
        engine.draw(specs.Normal(), 0, (3, 5), region=region)


def test_empty_regions_and_empty_tensors():
    assert engine.draw(specs.Normal(), 0, (3, 5), region=((1, 1), (0, 5))) == []
    assert xc.sample(specs.Normal(), 0, (3, 5), region=((0, 3), (2, 2))).shape == (3, 0)
    assert xc.sample(specs.Normal(), 0, (0, 5), region=((0, 0), (1, 4))).shape == (0, 3)


def test_segments_arrive_in_region_order_and_cover_it(monkeypatch):
    """The sink contract: each request's segments come in increasing region order, without
    gaps or overlaps, and finish() follows its last one."""
    monkeypatch.setattr(packing, "MAX_ROWS", 4)
    shapes = [((300, 77), ((0, 300), (74, 77))), ((5000,), ((3, 4999),)), ((64, 4096), ((0, 64), (7, 3000))),
              ((9, 13), None), ((40, 30), ((0, 0), (0, 30)))]
    reqs = [engine.request(specs.Normal(0.0, 1.0).plan(s), i, s, np.float32, region=r, name=f"t{i}")
            for i, (s, r) in enumerate(shapes)]
    seen = {i: 0 for i in range(len(reqs))}
    finished = []

    class Check:
        in_place = False

        def write(self, chunk):
            for seg in chunk.segments:
                assert seg.offset == seen[seg.index] and seg.length > 0
                assert seg.start + seg.length <= chunk.array.size
                seen[seg.index] += seg.length
            return False

        def finish(self, index):
            assert seen[index] == reqs[index].size
            finished.append(index)

        def stop(self):
            raise AssertionError("stopped")

    engine.run(reqs, Check())
    assert sorted(finished) == list(range(len(reqs)))


@given(st.lists(st.integers(1, 6), min_size=0, max_size=4), st.data())
@settings(derandomize=True, database=None, deadline=None, max_examples=200)
def test_flat_blocks_cover_the_range_in_order(shape, data):
    shape = tuple(shape)
    n = math.prod(shape)
    offset = data.draw(st.integers(0, n))
    length = data.draw(st.integers(0, n - offset))
    marks = np.full(shape, -1, np.int64)
    values = np.arange(length)
    for index, start, stop in engine.flat_blocks(shape, offset, length):
        view = marks[(*index, Ellipsis)]  # a view also for the 0-d block
        assert (view == -1).all()
        view[...] = values[start:stop].reshape(view.shape)
    flat = marks.reshape(-1)
    np.testing.assert_array_equal(flat[offset : offset + length], values)
    assert (np.delete(flat, np.arange(offset, offset + length)) == -1).all()


def test_traced_and_eager_draws_agree_bit_for_bit():
    """Inside a user's jit a whole tensor is one inlined program with scalar parameters:
    the parameters stay runtime values there, so the floats equal the eager draw."""
    for spec in (specs.TruncNormal(0.0, 0.5, -0.6, 0.9), specs.VarianceScaling(1.0, "fan_avg", "truncated_normal"),
                 specs.Uniform(-0.5, 0.5)):
        for dtype in ("float32", "float64", "bfloat16"):
            eager = xc.sample(spec, 7, (30, 20), dtype)
            with engine.x64_scope(dtype):
                traced = jax.jit(lambda k, spec=spec, dtype=dtype: xc.sample(spec, k, (30, 20), dtype))(
                    jax.random.key(7))
            assert np.array_equal(_bits(np.asarray(eager)), _bits(np.asarray(traced))), (spec, dtype)


def test_flax_region_and_layout_through_the_jax_sink_on_accelerator_path(monkeypatch):
    """The JAX sink's device path (JAX operations) gives the host path's arrays."""
    from xinit.core import host_memory

    shape, region = (3, 3, 40, 24), ((0, 3), (1, 2), (5, 33), (0, 24))
    host = np.asarray(xc.sample(specs.Normal(0.0, 1.0), 2, shape, layout=xc.FLAX, region=region))
    monkeypatch.setattr(host_memory, "on_host", lambda: False)
    device = np.asarray(xc.sample(specs.Normal(0.0, 1.0), 2, shape, layout=xc.FLAX, region=region))
    np.testing.assert_array_equal(host, device)


def test_bf16_regions_are_the_rounded_float32_draw():
    whole32 = _whole(specs.Normal(0.0, 1.0), (40, 50), np.float32)
    region = ((3, 30), (7, 9))
    got = _region(specs.Normal(0.0, 1.0), (40, 50), jnp.bfloat16, region)
    np.testing.assert_array_equal(got, whole32[_slices(region)].ravel().astype(jnp.bfloat16))


@pytest.mark.parametrize("region", [((0, 1), (30, 31)), ((0, 1), (0, 1)), ((49, 50), (0, 1)), ((7, 8), (12, 13))],
                         ids=str)
def test_single_element_sparse_regions(region):
    """A one-element block compiles to straight-line code that XLA:CPU rounds differently
    from loops; the engine never draws one (regression: 1 ulp off at ((0, 1), (30, 31)))."""
    shape = (50, 31)
    whole = _whole(specs.Sparse(0.3, 0.05), shape, np.float32)
    got = _region(specs.Sparse(0.3, 0.05), shape, np.float32, region)
    assert np.array_equal(_bits(got), _bits(whole[_slices(region)].ravel()))


@pytest.mark.parametrize("shape", [(1,), (1, 1), (2,)], ids=str)
@pytest.mark.parametrize("spec", [specs.Normal(0.3, 2.0), specs.TruncNormal(0.0, 0.5, -0.6, 0.9)], ids=str)
def test_one_element_draws_inside_jit_equal_eager(spec, shape):
    """Regression: a traced one-element draw compiled to straight-line code, 1 ulp off the
    eager draw for some keys."""
    draw = jax.jit(lambda k: xc.sample(spec, k, shape))  # compiled once, the key traced
    for seed in range(20):
        eager = np.asarray(xc.sample(spec, seed, shape))
        traced = np.asarray(draw(jax.random.key(seed)))
        assert np.array_equal(_bits(eager), _bits(traced)), seed


def _run_jax(reqs):
    from xinit.core.arrays import JaxSink

    sink = JaxSink(reqs, [xc.TORCH] * len(reqs), host=True)
    engine.run(reqs, sink)
    return [np.asarray(r) for r in sink.results]


@pytest.mark.parametrize("spec,shape,region", [
    (specs.KaimingUniform(), (16, 16), None),
    (specs.Normal(0.3, 2.0), (7,), None),
    (specs.TruncNormal(0.0, 0.5, -0.6, 0.9), (300, 77), ((1, 299), (1, 76))),  # indexed rows
    (specs.XavierNormal(), (64, 4096), ((3, 60), (7, 3000))),  # more than one chunk: not packed
    (specs.Uniform(-0.5, 0.7), (16, 8, 3, 3), ((4, 8), (0, 8), (1, 2), (0, 3))),
], ids=str)
def test_a_one_request_run_draws_what_a_run_of_many_draws(spec, shape, region):
    """A run of one request looks its layout up without its key and packs a small chunk
    once (engine._split): with any key, in any order, it draws what the general path
    (a run of several requests, packed afresh) draws for that request."""
    other = engine.request(specs.Normal().plan((5,)), 3, (5,), "float32")
    for key in (1, 2, 1, 2**40 + 5):
        req = engine.request(spec.plan(shape), key, shape, "float32", region=region)
        (alone,) = _run_jax([req])
        together, _ = _run_jax([req, other])
        assert np.array_equal(_bits(alone), _bits(together)), key
    whole = _whole(spec, shape, "float32", key=2**40 + 5)
    expected = whole if region is None else whole[_slices(region)]
    assert np.array_equal(_bits(alone), _bits(expected))


def test_a_one_request_layout_follows_the_chunk_size(monkeypatch):
    """The looked-up layout of a one-request run is the one for the current chunk size."""
    shape = (64, 256)  # 64 rows of 256: one chunk by default, 8 chunks of 8 rows below
    req = engine.request(specs.Normal().plan(shape), 9, shape, "float32")
    (default,) = _run_jax([req])
    assert engine._split([req]).packed is not None
    monkeypatch.setattr(packing, "MAX_ROWS", 8)
    split = engine._split([req])
    assert split.packed is None and split.groups[0].nrows == 8 and split.groups[0].chunks == 8
    (small_chunks,) = _run_jax([req])
    assert np.array_equal(_bits(default), _bits(small_chunks))
