"""The engine's two sinks: torch tensors written in place (any strides, a permuted layout,
a region into a local tensor, zeroed rows, numpy and copy_ paths) and new JAX arrays
(host and JAX-ops assembly, layouts, zeroed rows), against the whole draw."""

import numpy as np
import pytest
import torch

import xinit.core as xc
from xinit.core import engine, host_memory, packing, specs
from xinit.core.arrays import JaxSink
from xinit.torch import _sink
from xinit.torch._sink import TorchSink

TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
                "float16": torch.float16}


def _np_dtype(name):
    return np.dtype(engine.FLOAT_DTYPES[["float16", "bfloat16", "float32", "float64"].index(name)])


def _whole(spec, shape, dtype, key=11):
    dt = np.dtype(dtype)
    with engine.x64_scope(dt):
        pieces = engine.draw(spec, key, shape, dt)
        flat = np.concatenate([np.asarray(p.array)[: p.valid] for p in pieces])
    return flat.reshape(shape)


def _as_torch(values, dtype):
    if dtype == torch.bfloat16:
        return torch.from_numpy(values.astype(np.float32)).to(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(values))


def _write(spec, shape, dtype, target, *, region=None, layout=xc.TORCH, zero_rows=(), key=11):
    req = engine.request(spec.plan(shape), key, shape, _np_dtype(dtype), region=region, zero_rows=zero_rows)
    engine.run([req], TorchSink([req], [target], [layout]))


@pytest.fixture(params=["numpy", "copy_"])
def path(request, monkeypatch):
    """Both torch write paths: numpy views (CPU) and ``copy_`` (other devices)."""
    if request.param == "copy_":
        monkeypatch.setattr(_sink, "_numpy_view", lambda t: None)
    return request.param


@pytest.mark.parametrize("dtype", list(TORCH_DTYPES))
def test_a_region_written_into_a_local_tensor(dtype, path):
    shape, region = (300, 77), ((40, 130), (10, 71))
    spec = specs.Normal(0.0, 1.0)
    local = torch.zeros(90, 61, dtype=TORCH_DTYPES[dtype])
    _write(spec, shape, dtype, local, region=region)
    expected = _whole(spec, shape, _np_dtype(dtype))[40:130, 10:71]
    assert torch.equal(local, _as_torch(expected, TORCH_DTYPES[dtype]))


VIEWS = {  # name -> (base shape, the view of the base that is written)
    "transposed": ((60, 50), lambda b: b.t()),
    "stepped": ((50, 120), lambda b: b[:, ::2]),
    "narrowed": ((70, 60), lambda b: b[10:60]),
    "channels_last": ((8, 6, 5, 5), lambda b: b),
}


@pytest.mark.parametrize("view", list(VIEWS))
def test_strided_destinations_get_their_logical_values(view, path):
    spec = specs.Uniform(-1.0, 1.0)
    base_shape, take = VIEWS[view]
    base = torch.full(base_shape, 7.0)
    if view == "channels_last":
        base = base.to(memory_format=torch.channels_last)
    target = take(base)
    shape = tuple(target.shape)
    before = base.clone()
    _write(spec, shape, "float32", target)
    assert torch.equal(target, torch.from_numpy(_whole(spec, shape, np.float32)))
    mask = torch.zeros(base_shape, dtype=torch.bool)
    take(mask).fill_(True)
    assert torch.equal(base[~mask], before[~mask]), "elements outside the view were written"


def test_a_permuted_layout_writes_a_weight_stored_in_out(path):
    """Hugging Face's Conv1D stores its weight (in, out): written through the permuted view
    from canonical (out, in) values, it is the canonical draw transposed."""
    spec = specs.Normal(0.0, 0.02)
    weight = torch.empty(64, 192)  # (in, out)
    _write(spec, (192, 64), "float32", weight, layout=xc.FLAX)
    assert torch.equal(weight, torch.from_numpy(_whole(spec, (192, 64), np.float32).T.copy()))


def test_a_permuted_layout_with_a_region(path):
    spec = specs.KaimingUniform()
    shape = (16, 8, 3, 3)  # canonical; the destination is flax-layout (3, 3, 8, 16) for out 4..12
    local = torch.empty(3, 3, 8, 8)
    _write(spec, shape, "float32", local, region=((4, 12), (0, 8), (0, 3), (0, 3)), layout=xc.FLAX)
    expected = _whole(spec, shape, np.float32)[4:12].transpose(2, 3, 1, 0)
    assert torch.equal(local, torch.from_numpy(np.ascontiguousarray(expected)))


@pytest.mark.parametrize("region", [None, ((2, 9), (0, 5)), ((4, 9), (0, 5))], ids=str)
def test_zeroed_rows_inside_the_region_only(region, path):
    spec = specs.Normal(0.0, 1.0)
    shape = (10, 5)
    (r0, r1), _ = region or ((0, 10), (0, 5))
    target = torch.full((r1 - r0, 5), 7.0)
    _write(spec, shape, "float32", target, region=region, zero_rows=(3,))
    expected = _whole(spec, shape, np.float32).copy()
    expected[3] = 0
    assert torch.equal(target, torch.from_numpy(expected[r0:r1]))


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool, torch.uint8, torch.int8])
def test_integer_and_bool_tensors_take_the_index_families(dtype, path):
    target = torch.full((6, 7), 5, dtype=dtype)
    np_dtype = np.dtype(str(dtype).removeprefix("torch."))
    req = engine.request(specs.Eye().plan((6, 7)), 0, (6, 7), np_dtype)
    engine.run([req], TorchSink([req], [target]))
    assert torch.equal(target, torch.eye(6, 7, dtype=dtype))


def test_versions_are_bumped_once_per_written_tensor():
    a, b = torch.zeros(40, 30), torch.zeros(7)
    va, vb = a._version, b._version
    reqs = [engine.request(specs.Normal().plan(t.shape), i, tuple(t.shape), np.float32)
            for i, t in enumerate((a, b))]
    engine.run(reqs, TorchSink(reqs, [a, b]))
    assert a._version > va and b._version > vb


def test_a_sink_prepares_each_chunk_before_it_is_written(monkeypatch):
    """``Sink.prepare`` (optional) comes once per chunk, after its dispatch and before
    its write; the torch sink makes its views there, and the values are the same."""
    monkeypatch.setattr(packing, "MAX_ROWS", 4)  # 1 Ki-element chunks: several per run
    tensors = [torch.empty(40, 30), torch.empty(7), torch.empty(3, 5).t()]
    reqs = [engine.request(specs.Normal().plan(tuple(t.shape)), i, tuple(t.shape), np.float32)
            for i, t in enumerate(tensors)]
    calls = []

    class Recording(TorchSink):
        def prepare(self, chunk):
            calls.append(("prepare", id(chunk.array)))
            super().prepare(chunk)
            assert all(seg.index in self._numpy for seg in chunk.segments)

        def write(self, chunk):
            calls.append(("write", id(chunk.array)))
            return super().write(chunk)

    engine.run(reqs, Recording(reqs, tensors))
    assert len(calls) > 2 and [c[0] for c in calls] == ["prepare", "write"] * (len(calls) // 2)
    assert all(p[1] == w[1] for p, w in zip(calls[::2], calls[1::2], strict=True))
    for i, t in enumerate(tensors):
        expected = _whole(specs.Normal(), tuple(t.shape), "float32", key=i)
        assert torch.equal(t, _as_torch(expected, torch.float32))


def test_expanded_tensors_are_refused_by_torch_not_written_through_numpy():
    base = torch.zeros(4, 1)
    expanded = base.expand(4, 3)
    assert _sink._numpy_view(expanded) is None
    req = engine.request(specs.Normal().plan((4, 3)), 0, (4, 3), np.float32)
    with pytest.raises(RuntimeError):
        engine.run([req], TorchSink([req], [expanded]))
    assert torch.equal(base, torch.zeros(4, 1))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float64"])
def test_jax_sink_host_and_device_assembly_agree(dtype, monkeypatch):
    """Several requests (layouts, regions, zeroed rows, a whole chunk) in one run: the host
    assembly and the JAX-ops assembly give the same arrays, equal to the whole draws."""
    monkeypatch.setattr(packing, "MAX_ROWS", 8)  # 2 Ki-element chunks: requests span chunks
    dt = _np_dtype(dtype)
    cases = [((150, 24), None, xc.FLAX, (2,)), ((3, 3, 40, 11), ((0, 3), (1, 3), (4, 30), (0, 11)), xc.FLAX, ()),
             ((500, 48), ((0, 500), (5, 40)), xc.TORCH, (7, 499)), ((2048,), None, xc.TORCH, ())]
    reqs, layouts, expected = [], [], []
    for i, (shape, region, layout, rows) in enumerate(cases):
        canon = xc.canonical_shape(shape, layout)
        perm = layout.permutation(len(shape))
        cregion = None if region is None else tuple(region[p] for p in perm)
        reqs.append(engine.request(specs.Normal(0.0, 1.0).plan(canon), i, canon, dt, region=cregion,
                                   zero_rows=rows, name=f"p{i}"))
        layouts.append(layout)
        full = _whole(specs.Normal(0.0, 1.0), canon, dt, key=i).copy()
        for r in rows:
            full[r] = 0
        full = full.transpose(layout.inverse_permutation(len(shape)))
        expected.append(full if region is None else full[tuple(slice(a, b) for a, b in region)])
    results = {}
    for host in (True, False):
        sink = JaxSink(reqs, layouts, host=host)
        engine.run(reqs, sink)
        results[host] = [np.asarray(r) for r in sink.results]
    for a, b, e in zip(results[True], results[False], expected, strict=True):
        assert a.dtype == b.dtype == dt and a.shape == b.shape == e.shape
        e = np.ascontiguousarray(e)
        assert np.array_equal(a.view(np.uint8), e.view(np.uint8))
        assert np.array_equal(b.view(np.uint8), e.view(np.uint8))


def test_sample_on_the_host_compiles_nothing_per_region():
    """Regions are drawn by the bucketed chunk programs (whole rows, or densely packed rows
    for narrow regions) and assembled on the host: new regions compile nothing."""
    import jax

    spec = specs.Normal(0.0, 0.02)
    shape = (70, 50)  # flax (in, out): canonical (50, 70)
    for region in [((0, 70), (0, 10)), ((0, 70), (0, 40)), ((3, 60), (1, 50)), ((0, 1), (0, 50))]:
        xc.sample(spec, 0, shape, layout=xc.FLAX, region=region)  # both packings, two row buckets
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, _d, **_k: compiles.append(event)
        if event == "/jax/core/compile/backend_compile_duration" else None
    )
    for region in [((0, 70), (3, 9)), ((0, 70), (2, 41)), ((5, 61), (0, 49)), ((2, 3), (0, 50)), ((0, 2), (10, 20))]:
        xc.sample(spec, 1, shape, layout=xc.FLAX, region=region)
    assert compiles == []
    assert host_memory.on_host()


@pytest.mark.parametrize("dtype", ["complex64", "complex128"])
@pytest.mark.parametrize("value", [1 + 2j, -3.25])
def test_complex_constants_keep_their_imaginary_part(value, dtype, monkeypatch):
    """A complex fill's value travels as complex parameter words (``jnp.full``'s values): on
    the host, with JAX operations, and inside a user's jit."""
    import jax

    expected = np.full((3, 300), value, dtype)
    with jax.enable_x64(True):
        host = np.asarray(xc.sample(specs.Constant(value), 0, (3, 300), dtype))
        traced = np.asarray(jax.jit(lambda k: xc.sample(specs.Constant(value), k, (3, 300), dtype))(
            jax.random.key(0)))
        monkeypatch.setattr(host_memory, "on_host", lambda: False)
        device = np.asarray(xc.sample(specs.Constant(value), 0, (3, 300), dtype))
    for got in (host, traced, device):
        assert got.dtype == expected.dtype and np.array_equal(got, expected)
