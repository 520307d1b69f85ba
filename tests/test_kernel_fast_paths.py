"""The speed paths of xinit's programs keep the values: split normal programs, the
512-bit CPU compile, the sparse program, eye/dirac, Householder orthogonal, the cache
helper's validation. No timing asserts (timings live in benchmarks/)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from scipy import stats

import xinit.core as xc
import xinit.torch as xt
from xinit.core import distributions, engine, packing, programs, specs, threefry
from xinit.core.cache import default_cache_dir, enable_compilation_cache

KEY = jax.random.key(31337)
SPLIT_N = 2 * programs.SPLIT_MIN_SIZE + 123  # two split chunks and a fused tail


def _flat(pieces):
    return np.concatenate([np.asarray(p.array[: p.valid]) for p in pieces])


def test_split_normal_is_bit_identical_to_jax_random_f32_and_f64():
    np.testing.assert_array_equal(
        np.asarray(xc.normal(KEY, (SPLIT_N,))), np.asarray(jax.random.normal(KEY, (SPLIT_N,)))
    )
    ours = np.asarray(xc.normal(KEY, (SPLIT_N,), dtype=jnp.float64))
    with jax.enable_x64(True):
        ref = np.asarray(jax.random.normal(KEY, (SPLIT_N,), jnp.float64))
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, jnp.bfloat16], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize(
    "family,fparams",
    [("normal", (0.5, 0.02)), ("trunc_normal", (0.0, 0.02, -0.04, 0.04)),
     ("trunc_normal", (1.0, 2.0, -3.0, 0.5))],
    ids=["normal", "trunc-narrow", "trunc-asym"],
)
def test_split_programs_equal_the_fused_program(family, fparams, dtype, monkeypatch):
    kd = np.array([5, 2**31 + 9], np.uint32)
    offset = 2**32 - 1000  # the counter's hi word carries inside the draw
    spec = specs.Normal(*fparams) if family == "normal" else specs.TruncNormal(*fparams)
    region = ((offset, offset + SPLIT_N),)  # a region of a flat draw of 2**33 elements
    monkeypatch.setattr(packing, "MAX_ROWS", programs.SPLIT_MIN_SIZE // programs.ROW)  # split-size chunks
    with engine.x64_scope(dtype):
        split = _flat(engine.draw(spec, kd, (2**33,), dtype, region=region))
        monkeypatch.setattr(programs, "SPLIT_MIN_SIZE", 10**12)
        fused = _flat(engine.draw(spec, kd, (2**33,), dtype, region=region))
    np.testing.assert_array_equal(split.view(np.uint8), fused.view(np.uint8))


@pytest.mark.parametrize("family,fparams", [("uniform", (-1.0, 2.0)), ("normal", (0.0, 1.0)),
                                            ("trunc_normal", (0.0, 1.0, -2.0, 2.0))])
def test_cpu_compiler_options_do_not_change_bits(family, fparams):
    nrows = 4**8 // programs.ROW
    prog = programs.rows_program(family, np.dtype(np.float32), nrows)
    fp = distributions.program_fparams(family, np.array([fparams], np.float32), np.float32)
    rows = np.zeros((nrows, programs.row_width(family, np.float32)), np.uint32)
    rows[:, programs.ROW_KEY] = (3, 4)
    rows[:, programs.ROW_BASE_LO] = np.arange(nrows) * programs.ROW
    rows[:, programs.ROW_PARAMS :] = programs.pack_params(fp, np.zeros((1, 0), np.int32))
    buffer = jnp.zeros((nrows, programs.ROW), np.float32)
    # the 512-bit ahead-of-time executable against plain jax.jit (JAX's default options)
    np.testing.assert_array_equal(np.asarray(prog(buffer, rows)), np.asarray(prog.traced(rows)))


def _sparse_reference(kd, rows, cols, dtype, zeros, std):
    # the definition, computed independently of the sparse program: normal(0, std) values
    # at counters [0, n) and selection uniforms at counters [n, 2n) (the second half of a
    # (2, rows, cols) uniform draw), Knuth's Algorithm S in numpy, then the zeros
    cdt = distributions.compute_dtype(dtype)
    vals = _flat(engine.draw(specs.Normal(0.0, std), kd, (rows, cols), cdt)).reshape(rows, cols)
    sel = _flat(engine.draw(specs.Uniform(0.0, 1.0), kd, (2, rows, cols), cdt,
                            region=((1, 2), (0, rows), (0, cols)))).reshape(rows, cols)
    need = np.full(cols, zeros, np.int32)
    mask = np.zeros((rows, cols), bool)
    for i in range(rows):
        remaining = np.int32(rows - i)
        chosen = (need >= remaining) | (sel[i] * remaining.astype(cdt) < need.astype(cdt))
        chosen &= need > 0
        mask[i] = chosen
        need -= chosen.astype(np.int32)
    return np.where(mask, np.zeros((), cdt), vals).astype(dtype).reshape(-1)


@pytest.mark.parametrize(
    "rows,cols,dtype,zeros",
    [(7, 5, np.float32, 3), (300, 10, jnp.bfloat16, 90), (64, 33, np.float64, 20),
     (513, 1031, np.float32, 462)],
    ids=str,
)
def test_sparse_program_equals_the_definition(rows, cols, dtype, zeros):
    kd = np.array([11, 2**31 + 5], np.uint32)
    with engine.x64_scope(dtype):
        ref = _sparse_reference(kd, rows, cols, dtype, zeros, 0.05)
        req = engine.request(specs.Sparse(zeros / rows, 0.05).plan((rows, cols)), kd, (rows, cols), dtype)
        ours = np.asarray(engine.pieces(req)[0].array)
    np.testing.assert_array_equal(ours.view(np.uint8), ref.view(np.uint8))
    assert np.all((ours.reshape(rows, cols) == 0).sum(axis=0) == zeros)


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (5, 3), (64, 64), (100, 7), (7, 100)], ids=str)
def test_eye_is_exact(shape):
    np.testing.assert_array_equal(np.asarray(xc.eye(0, shape)), np.eye(*shape, dtype=np.float32))


@pytest.mark.parametrize("shape,groups", [((4, 2, 3, 3), 1), ((6, 4, 3, 3), 2), ((8, 3, 5), 1),
                                          ((4, 4, 2, 3, 3), 2), ((9, 2, 1, 1), 3)], ids=str)
def test_dirac_kernel_equals_torch(shape, groups):
    # the core kernel (what xinit.flax and xinit.core draw); xinit.torch writes
    # dirac_ with torch ops, locked to this kernel in test_torch_structural_writes_equal_the_kernel
    ref = torch.nn.init.dirac_(torch.empty(shape), groups)
    np.testing.assert_array_equal(np.asarray(xc.dirac(0, shape, groups)), ref.numpy())


STRUCTURAL_CASES = [
    ("eye_", xc.Eye(), (3, 5)), ("eye_", xc.Eye(), (7, 2)), ("eye_", xc.Eye(), (1, 1)),
    ("dirac_", xc.Dirac(1), (4, 2, 3, 3)), ("dirac_", xc.Dirac(2), (6, 4, 3, 3)),
    ("dirac_", xc.Dirac(3), (9, 2, 1, 1)), ("dirac_", xc.Dirac(2), (4, 4, 2, 3, 3)),
    ("dirac_", xc.Dirac(1), (3, 5, 4)), ("constant_", xc.Constant(0.3), (4, 5)),
]


@pytest.mark.parametrize("name,spec,shape", STRUCTURAL_CASES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64, torch.int32, torch.bool],
                         ids=str)
@pytest.mark.parametrize("strided", [False, True], ids=["contiguous", "strided"])
def test_torch_structural_writes_equal_the_kernel(name, spec, shape, dtype, strided):
    """xinit.torch writes eye_/dirac_/constant_ with torch ops; the values are the kernel's."""
    groups = (spec.groups,) if name == "dirac_" else ()
    args = groups + ((0.3,) if name == "constant_" else ())
    base = torch.full((*shape[:-1], 2 * shape[-1]), 7, dtype=dtype)
    t = base[..., ::2] if strided else torch.full(shape, 7, dtype=dtype)
    outside = base[..., 1::2].clone()
    getattr(xt, name)(t, *args)
    np_dtype = np.dtype(str(dtype).removeprefix("torch.")) if dtype != torch.bfloat16 else jnp.bfloat16
    ref = _flat(engine.draw(spec, 0, shape, np_dtype)).reshape(shape)
    assert torch.equal(t.float(), torch.from_numpy(np.asarray(ref, np.float32)))
    if strided:
        assert torch.equal(base[..., 1::2], outside), "elements outside the view were written"


@pytest.mark.parametrize(
    "shape,dtype,tol",
    [((5, 5), np.float32, 2e-6), ((3, 7), np.float32, 2e-6), ((300, 200), np.float64, 1e-13),
     ((64, 32, 3, 3), np.float32, 2e-6), ((1, 1), np.float32, 0), ((1, 5), np.float32, 1e-6)],
    ids=str,
)
@pytest.mark.parametrize("method", ["householder", "qr"])
def test_orthogonal_is_orthonormal_times_gain(shape, dtype, tol, method, monkeypatch):
    monkeypatch.setattr(engine, "_orthogonal_method", method)
    programs.orthogonal_program.cache_clear()
    q = np.asarray(xc.orthogonal(7, shape, 2.0, dtype=dtype)).astype(np.float64)
    q = q.reshape(shape[0], -1)
    g = q @ q.T if q.shape[0] <= q.shape[1] else q.T @ q
    assert np.abs(g / 4.0 - np.eye(g.shape[0])).max() <= tol


def test_householder_orthogonal_is_haar_like_torch():
    # 20k 4x4 draws: every entry of a Haar matrix has the law of torch's orthogonal_
    # (Q[0,0] and Q[3,1]); the determinant is +-1 with equal probability.
    keys = jax.random.split(jax.random.key(2024), 20000)
    ours = np.asarray(jax.vmap(lambda k: xc.orthogonal(k, (4, 4)))(keys))
    gen = torch.Generator().manual_seed(2024)
    theirs = np.stack([torch.nn.init.orthogonal_(torch.empty(4, 4), generator=gen).numpy()
                       for _ in range(20000)])
    for i, j in [(0, 0), (3, 1)]:
        assert stats.ks_2samp(ours[:, i, j], theirs[:, i, j]).pvalue > 1e-4
    assert abs((np.linalg.det(ours) > 0).mean() - 0.5) < 0.02
    tr = np.trace(ours, axis1=1, axis2=2)
    assert abs(tr.mean()) < 0.05 and abs((tr**2).mean() - 1.0) < 0.08  # Haar: E tr = 0, E tr^2 = 1


def test_self_check_falls_back_when_the_hash_disagrees(monkeypatch):
    real = threefry.threefry2x32
    monkeypatch.setattr(threefry, "threefry2x32",
                        lambda k1, k2, a, b: (real(k1, k2, a, b)[0] ^ np.uint32(1), real(k1, k2, a, b)[1]))
    monkeypatch.setattr(threefry, "_use_own_threefry", True)
    with pytest.warns(RuntimeWarning, match="falls? back|falling back"):
        assert threefry.self_check() is False
    assert threefry._use_own_threefry is False
    monkeypatch.setattr(threefry, "threefry2x32", real)
    monkeypatch.setattr(threefry, "_use_own_threefry", True)
    programs.clear_caches()
    assert threefry.self_check() is True


def test_cache_helper_validates_before_touching_the_config(tmp_path):
    before = jax.config.jax_compilation_cache_dir
    for bad in (-1.0, "soon", float("nan")):
        with pytest.raises(ValueError, match="min_compile_time_secs"):
            enable_compilation_cache(tmp_path, min_compile_time_secs=bad)
    assert jax.config.jax_compilation_cache_dir == before
    assert not any(tmp_path.iterdir())


def test_default_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "xinit" / "jax"


@pytest.mark.parametrize("d", [1, 2, 3, 7, 1025, 4097, 65537, 2**20 + 3, 2**24 - 1])
def test_small_quotient_is_exact_in_its_range(d):
    max_n = min(distributions.SMALL_QUOTIENT_MAX_INDEX, d * distributions.SMALL_QUOTIENT_MAX_Q)
    rng = np.random.default_rng(d)
    multiples = np.arange(1, 3000, dtype=np.int64) * d
    n = np.concatenate([rng.integers(0, max_n, 200_000), np.arange(max(0, max_n - 3000), max_n),
                        np.arange(3000), multiples % max_n, (multiples - 1) % max_n]).astype(np.uint32)
    q = np.asarray(jax.jit(distributions.small_quotient)(n, np.full(n.shape, d, np.uint32)))
    np.testing.assert_array_equal(q, n // np.uint32(d))


def test_eye_uses_the_fast_division_only_where_it_is_exact():
    assert distributions.small_quotient_ok(4096 * 4096, 4097)
    assert not distributions.small_quotient_ok(2**31 + 1, 2**20)  # index beyond int32
    assert not distributions.small_quotient_ok(2**24, 2)  # quotient beyond 2**21
    np.testing.assert_array_equal(np.asarray(xc.eye(0, (2**22 + 3, 1))),
                                  np.eye(2**22 + 3, 1, dtype=np.float32))  # slow path


def test_a_passed_self_check_is_remembered_in_the_compilation_cache(tmp_path, monkeypatch):
    before = jax.config.jax_compilation_cache_dir
    try:
        jax.config.update("jax_compilation_cache_dir", None)
        assert threefry._check_marker() is None  # no cache: nothing written anywhere
        jax.config.update("jax_compilation_cache_dir", str(tmp_path))
        threefry.ensure_checked.cache_clear()
        assert threefry.ensure_checked() is True
        markers = list(tmp_path.glob("xinit-*-selfcheck-*.ok"))
        assert markers == [threefry._check_marker()]
        assert jax.__version__ in markers[0].name
        # a later process: the marker stands for the check, which does not run again
        threefry.ensure_checked.cache_clear()
        monkeypatch.setattr(threefry, "self_check", lambda: pytest.fail("self_check ran"))
        assert threefry.ensure_checked() is True
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
        threefry.ensure_checked.cache_clear()


@pytest.mark.parametrize("spec,dtype", [(xc.Uniform(-1.0, 2.0), np.float32), (xc.Normal(0.0, 2.0), np.float64),
                                        (xc.TruncNormal(0.0, 1.0, -1.0, 1.0), jnp.bfloat16),
                                        (xc.Eye(), np.float32)], ids=str)
@pytest.mark.parametrize("ahead", [True, False])
def test_engine_draws_one_chunk_ahead(spec, dtype, ahead, monkeypatch):
    """With ``ahead`` chunk k + 1 is dispatched before chunk k reaches the sink (two chunks
    in flight, never three), else one at a time; the values are the same."""
    shape = (2 * 4097, 1024)  # two full 4 Mi chunks and a remainder
    dt = np.dtype(dtype)
    with engine.x64_scope(dt):
        ref = np.concatenate([np.asarray(p.array)[: p.valid] for p in engine.draw(spec, 7, shape, dt)])
    launched = []
    real = engine._launch_rows
    monkeypatch.setattr(engine, "_launch_rows", lambda *a: launched.append(1) or real(*a))

    class Sink:
        in_place = False
        seen, values = [], []

        def write(self, chunk):
            self.seen.append(len(launched))
            seg, = chunk.segments
            self.values.append(np.asarray(chunk.array).reshape(-1)[seg.start : seg.start + seg.length].copy())
            return False

        def finish(self, index):
            pass

        def stop(self):
            pass

    sink = Sink()
    engine.run([engine.request(spec.plan(shape), 7, shape, dt)], sink, ahead=ahead)
    assert sink.seen == ([2, 3, 3] if ahead else [1, 2, 3])
    got = np.concatenate(sink.values)
    assert got.dtype == ref.dtype
    np.testing.assert_array_equal(got.view(np.uint8), ref.view(np.uint8))


def test_freed_heap_is_released_after_each_new_compilation_only(monkeypatch):
    calls = []
    monkeypatch.setattr(programs, "release_freed_memory", lambda: calls.append(1))
    prog = programs.Program(lambda x: x * 3)
    prog(np.ones(5, np.float32))
    prog(np.ones(5, np.float32))  # cached executable: nothing compiled, nothing released
    assert len(calls) == 1
    prog(np.ones(6, np.float32))
    assert len(calls) == 2


def test_releasing_freed_memory_is_a_no_op_without_glibc(monkeypatch):
    real = programs._malloc_trim()
    if real is not None:  # glibc here: the real call works (1: memory was released, 0: none)
        assert real(0) in (0, 1)
    monkeypatch.setattr(programs, "_malloc_trim", lambda: None)
    programs.release_freed_memory()  # nothing to call, no error


def _populate_write_supported() -> bool:
    import ctypes
    import mmap

    from xinit.core import host_memory

    libc = host_memory._libc()
    if libc is None:
        return False
    mm = mmap.mmap(-1, mmap.PAGESIZE)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(mm))
    ok = libc.madvise(addr, mmap.PAGESIZE, host_memory._MADV_POPULATE_WRITE) == 0
    del addr
    return ok


@pytest.mark.skipif(not _populate_write_supported(), reason="needs Linux >= 5.14 (MADV_POPULATE_WRITE)")
def test_prefault_maps_fresh_pages_and_keeps_contents():
    """xinit maps a fresh destination's pages in one madvise call before copying into it
    (2-3x cheaper than faulting them in); that must never change memory it is given."""
    import ctypes
    import mmap

    from xinit.core import host_memory

    def resident_pages(buf):
        page = mmap.PAGESIZE
        n = buf.nbytes // page
        vec = (ctypes.c_ubyte * n)()
        assert host_memory._libc().mincore(buf.ctypes.data, n * page, vec) == 0
        return sum(v & 1 for v in vec)

    size = 8 << 20
    mm = mmap.mmap(-1, size)  # fresh anonymous memory: no page mapped yet
    view = np.frombuffer(mm, dtype=np.uint8)
    assert resident_pages(view) == 0
    host_memory.prefault(view)
    assert resident_pages(view) == size // mmap.PAGESIZE
    data = np.arange(size, dtype=np.int64).astype(np.uint8)
    view[:] = data
    host_memory.prefault(view)  # mapped memory: left alone, contents kept
    np.testing.assert_array_equal(view, data)
