"""The JAX core: bit identity with jax.random, chunking, keys, compilation, dtypes, jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.random import threefry2x32_p

import xinit.core as xc
import xinit.core.debug as xcd
from xinit.core import engine, host_memory, packing, programs, specs, threefry
from xinit.core.errors import DtypeError

KEY = jax.random.key(1234)


@pytest.mark.parametrize("n", [1, 1000, 1025, 4**8 + 3, programs.MAX_CHUNK + 5], ids=str)
def test_uniform_bit_identical_to_jax_random_across_chunks(n):
    ours = xc.uniform(KEY, (n,), -2.0, 3.0)
    ref = jax.random.uniform(KEY, (n,), minval=-2.0, maxval=3.0)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref))


@pytest.mark.parametrize("shape", [(3, 5), (64, 32, 3, 3), (1000,)], ids=str)
def test_normal_bit_identical_to_jax_random(shape):
    np.testing.assert_array_equal(
        np.asarray(xc.normal(KEY, shape)), np.asarray(jax.random.normal(KEY, shape))
    )


def test_float64_bit_identical_and_config_untouched():
    assert not jax.config.jax_enable_x64
    ours = xc.uniform(KEY, (5000,), dtype=jnp.float64)
    ours_n = xc.normal(KEY, (5000,), dtype=jnp.float64)
    assert not jax.config.jax_enable_x64
    assert ours.dtype == np.float64
    with jax.enable_x64(True):
        np.testing.assert_array_equal(
            np.asarray(ours), np.asarray(jax.random.uniform(KEY, (5000,), jnp.float64))
        )
        np.testing.assert_array_equal(
            np.asarray(ours_n), np.asarray(jax.random.normal(KEY, (5000,), jnp.float64))
        )
    # 53-bit precision: far more distinct values than float32 could hold in [0, 1)
    u = np.asarray(ours)
    assert np.any(u != u.astype(np.float32).astype(np.float64))


def test_threefry_matches_jax_primitive_across_the_hi_word_carry():
    # counters 2**32 - 3 .. 2**32 + 2 exercise the 64-bit counter split: a 6-element
    # region of a flat draw of 2**33 elements (only the region is drawn)
    out = engine.draw(specs.Uniform(0.0, 1.0), np.array([7, 9], np.uint32), (2**33,),
                      region=((2**32 - 3, 2**32 + 3),))
    counters = np.arange(2**32 - 3, 2**32 + 3, dtype=np.uint64)
    b1, b2 = threefry2x32_p.bind(
        np.uint32(7),
        np.uint32(9),
        (counters >> 32).astype(np.uint32),
        (counters & 0xFFFFFFFF).astype(np.uint32),
    )
    bits = np.asarray(b1 ^ b2)
    expected = ((bits >> 9) | np.uint32(0x3F800000)).view(np.float32) - 1.0
    np.testing.assert_array_equal(np.asarray(out[0].array[:6]), expected)


def test_self_check_passes():
    assert threefry.self_check()


@pytest.mark.parametrize(
    "key",
    [jax.random.key(42), jax.random.PRNGKey(42), 42, np.int64(42)],
    ids=["typed", "raw", "int", "np"],
)
def test_key_kinds_agree(key):
    np.testing.assert_array_equal(
        np.asarray(xc.uniform(key, (50,))), np.asarray(xc.uniform(42, (50,)))
    )


@pytest.mark.parametrize("seed", [0, 1, 2**31 - 1, 2**40 + 7, 2**63 - 1, -1, -(2**40)])
def test_int_seed_is_the_64_bit_jax_key(seed):
    # equal to jax.random.key(seed) under x64, whatever the user's config is
    with jax.enable_x64(True):
        expected = np.asarray(jax.random.key_data(jax.random.key(seed)))
    np.testing.assert_array_equal(np.asarray(xcd.key_data(seed)), expected)
    if 0 <= seed < 2**31:  # and for 32-bit seeds also without x64
        np.testing.assert_array_equal(
            np.asarray(xcd.key_data(seed)), np.asarray(jax.random.key_data(jax.random.key(seed)))
        )


@pytest.mark.parametrize("bad", [None, True, "3", 1.5, np.zeros(3, np.uint32)], ids=repr)
def test_bad_keys_raise_type_error(bad):
    with pytest.raises(TypeError, match="key"):
        xc.uniform(bad, (3,))


def test_different_keys_differ_and_same_key_repeats():
    a, b = xc.normal(1, (100,)), xc.normal(1, (100,))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(xc.normal(2, (100,))))


def test_compilations_do_not_grow_with_shapes():
    spec = specs.Normal(0.0, 0.02)
    xc.sample(spec, 0, (33, 17))  # warm the 4**5 chunk program
    before = xcd.compile_count()
    for shape in [(10, 20), (31, 7), (3, 3, 3, 3), (1, 1000), (500,)]:  # all fit one 1 Ki chunk
        pieces = engine.draw(spec, 0, shape)
        assert len(pieces) == 1
    assert xcd.compile_count() == before
    xc.sample(specs.Uniform(-1, 1), 3, (40, 25))
    after_uniform = xcd.compile_count()
    xc.sample(specs.Uniform(-5, 2), 4, (20, 50))  # other args and shape, same program
    assert xcd.compile_count() == after_uniform


def test_list_and_tuple_shapes_agree():
    np.testing.assert_array_equal(
        np.asarray(xc.uniform(0, [4, 5])), np.asarray(xc.uniform(0, (4, 5)))
    )


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize(
    "fn,args",
    [
        (xc.uniform, ()),
        (xc.normal, ()),
        (xc.trunc_normal, (0.0, 1.0, -1.0, 1.0)),
        (xc.xavier_uniform, ()),
        (xc.kaiming_normal, ()),
        (xc.orthogonal, ()),
        (xc.eye, ()),
        (xc.zeros, ()),
    ],
    ids=lambda v: getattr(v, "__name__", ""),
)
def test_dtype_and_shape_contract(fn, args, dtype):
    out = fn(0, (16, 8), *args, dtype=dtype)
    assert out.shape == (16, 8)
    assert out.dtype == jnp.dtype(dtype)
    assert bool(jnp.isfinite(out.astype(jnp.float32)).all())


@pytest.mark.parametrize("dtype", ["int32", "bool", "uint8"])
def test_random_draws_reject_integer_dtypes(dtype):
    with pytest.raises(DtypeError, match="does not support dtype"):
        xc.uniform(0, (3, 3), dtype=dtype)
    assert xc.ones(0, (3, 3), dtype=dtype).dtype == np.dtype(dtype)


def test_works_inside_jit_and_eval_shape():
    f = jax.jit(lambda k: xc.xavier_uniform(k, (64, 32)))
    inside = f(jax.random.key(5))
    outside = xc.xavier_uniform(jax.random.key(5), (64, 32))
    # same random bits; float rounding may differ by at most a few ulp under fusion
    np.testing.assert_allclose(np.asarray(inside), np.asarray(outside), rtol=0, atol=4 * 2**-24)
    abstract = jax.eval_shape(lambda k: xc.kaiming_normal(k, (7, 3, 3, 3)), jax.random.key(0))
    assert abstract.shape == (7, 3, 3, 3) and abstract.dtype == np.float32


def test_first_call_of_a_process_may_be_inside_jit():
    import subprocess
    import sys

    code = (
        "import jax, numpy as np, xinit.core as xc\n"
        "out = jax.jit(lambda k: xc.kaiming_uniform(k, (64, 32)))(jax.random.key(0))\n"
        "assert out.shape == (64, 32) and np.isfinite(np.asarray(out)).all()\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_flax_layout_is_a_pure_transpose():
    k = jax.random.key(9)
    for spec in [specs.KaimingUniform(), specs.TruncNormal(0, 0.02, -0.04, 0.04), specs.Dirac(2)]:
        torch_layout = np.asarray(xc.sample(spec, k, (16, 8, 3, 3)))
        flax_layout = np.asarray(xc.sample(spec, k, (3, 3, 8, 16), layout=xc.FLAX))
        np.testing.assert_array_equal(flax_layout, torch_layout.transpose(2, 3, 1, 0))


def test_zero_element_shapes_return_empty():
    assert xc.normal(0, (0, 5)).shape == (0, 5)
    assert xc.kaiming_uniform(0, (0, 5)).shape == (0, 5)


HOST_CASES = [  # (spec, shape, layout): canonical rows of 441, 360 and 2000 elements, 1-D, ...
    (specs.Normal(0.5, 2.0), (441, 13), xc.FLAX), (specs.TruncNormal(0, 1, -2, 2), (37, 11), xc.FLAX),
    (specs.KaimingUniform(), (3, 3, 40, 11), xc.FLAX), (specs.Uniform(0, 1), (2000, 3), xc.FLAX),
    (specs.Uniform(-1, 1), (5000,), xc.TORCH), (specs.Normal(0, 1), (50, 60), xc.TORCH),
    (specs.Dirac(1), (3, 5, 6, 6), xc.FLAX), (specs.Constant(2.7), (9, 130), xc.FLAX),
    (specs.Constant(-1.5), (5000,), xc.TORCH),
]


@pytest.mark.parametrize("spec,shape,layout,dtype", [
    (spec, shape, layout, dtype) for spec, shape, layout in HOST_CASES
    for dtype in ("float32", "bfloat16", "float64") + (("int32",) if spec.name in ("dirac", "constant") else ())
], ids=str)
@pytest.mark.parametrize("chunk", ["4Ki", "1Ki"], ids=str)
def test_host_assembly_equals_the_jax_assembly(spec, shape, layout, dtype, chunk, monkeypatch):
    """On the CPU, sample() writes the drawn chunks into a host buffer JAX adopts; the
    result equals the JAX-ops assembly (what accelerators run) bit for bit, including
    canonical rows split between chunks and rows longer than a chunk (with 1 Ki chunks)."""
    if chunk == "1Ki":
        monkeypatch.setattr(packing, "MAX_ROWS", 4)  # 1 Ki-element chunks
    host = xc.sample(spec, 3, shape, dtype, layout=layout)
    monkeypatch.setattr(host_memory, "on_host", lambda: False)
    ref = xc.sample(spec, 3, shape, dtype, layout=layout)
    assert host.dtype == ref.dtype and host.shape == ref.shape == shape
    np.testing.assert_array_equal(np.asarray(host).view(np.uint8), np.asarray(ref).view(np.uint8))


def test_host_assembly_compiles_nothing_per_shape():
    spec = specs.Normal(0.0, 0.02)
    xc.sample(spec, 0, (70, 50), layout=xc.FLAX)  # warm the 4 Ki chunk program
    xc.sample(specs.Constant(0.1), 0, (70, 50), layout=xc.FLAX)
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, _d, **_k: compiles.append(event)
        if event == "/jax/core/compile/backend_compile_duration" else None
    )
    for shape in [(60, 61), (3, 3, 40, 11), (2000,)]:
        xc.sample(spec, 1, shape, layout=xc.FLAX)
        xc.sample(specs.Constant(0.1), 1, shape, layout=xc.FLAX)
    assert compiles == []
