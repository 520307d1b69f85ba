"""The drop-in contract of xinit.torch: signatures, in-place writes, errors, determinism."""

from __future__ import annotations

import inspect
import warnings

import jax
import pytest
import torch

import xinit.core as xc
import xinit.torch as xt
from xinit.core import FLAX, sample, specs

RANDOM = [
    "uniform_",
    "normal_",
    "trunc_normal_",
    "xavier_uniform_",
    "xavier_normal_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "orthogonal_",
]
DETERMINISTIC = ["constant_", "ones_", "zeros_", "eye_", "dirac_"]
PUBLIC = [n for n in torch.nn.init.__all__]


def call(name, tensor, **kw):
    extra = {"sparse_": (0.5,), "constant_": (0.5,)}.get(name, ())
    return getattr(xt, name)(tensor, *extra, **kw)


# ---------------------------------------------------------------- surface


@pytest.mark.parametrize("name", PUBLIC)
def test_every_torch_name_exists(name):
    assert callable(getattr(xt, name))
    assert name in xt.__all__


@pytest.mark.parametrize("name", [n for n in PUBLIC if n.endswith("_")] + ["calculate_gain"])
def test_signature_is_torchs_plus_keyword_only_key(name):
    theirs = inspect.signature(getattr(torch.nn.init, name)).parameters
    ours = dict(inspect.signature(getattr(xt, name)).parameters)
    if "generator" in theirs:
        key = ours.pop("key")
        assert key.kind is inspect.Parameter.KEYWORD_ONLY and key.default is None
    assert list(ours) == list(theirs)
    for p in theirs:
        assert ours[p].default == theirs[p].default, p
        assert ours[p].kind == theirs[p].kind, p


@pytest.mark.parametrize(
    "name",
    [
        "uniform",
        "normal",
        "constant",
        "eye",
        "dirac",
        "xavier_uniform",
        "xavier_normal",
        "kaiming_uniform",
        "kaiming_normal",
        "orthogonal",
        "sparse",
    ],
)
def test_deprecated_aliases_warn_like_torch(name):
    args = {"constant": (0.5,), "sparse": (0.5,)}.get(name, ())
    shape = (4, 4, 3) if name == "dirac" else (4, 6)
    with pytest.warns(
        FutureWarning, match=rf"`nn.init.{name}` is now deprecated in favor of `nn.init.{name}_`"
    ):
        getattr(xt, name)(torch.empty(shape), *args)


# ---------------------------------------------------------------- in place


@pytest.mark.parametrize("name", RANDOM + ["sparse_"] + DETERMINISTIC[:3])
def test_writes_in_place_and_returns_the_same_object(name):
    p = torch.nn.Parameter(torch.full((16, 12), float("nan")))
    ptr, version = p.data_ptr(), p._version
    out = call(name, p, **({} if name in DETERMINISTIC else {"key": 0}))
    assert out is p
    assert isinstance(out, torch.nn.Parameter)
    assert p.data_ptr() == ptr
    assert p.requires_grad and p.grad_fn is None and p.grad is None
    assert p._version > version
    assert not torch.isnan(p).any()


def test_plain_tensor_with_requires_grad_has_no_history():
    t = torch.empty(5, 5, requires_grad=True)
    out = xt.normal_(t, key=0)
    assert out is t and t.requires_grad and t.grad_fn is None


@pytest.mark.parametrize("name", ["uniform_", "normal_", "kaiming_uniform_", "eye_"])
def test_non_contiguous_view_writes_only_the_view(name):
    base = torch.zeros(12, 20)
    view = base[:, ::2]  # non-contiguous
    assert not view.is_contiguous()
    call(name, view, **({} if name == "eye_" else {"key": 1}))
    assert (base[:, 1::2] == 0).all(), "elements outside the view were written"
    # the view holds exactly what a contiguous tensor gets from the same key
    fresh = call(name, torch.zeros(12, 10), **({} if name == "eye_" else {"key": 1}))
    assert torch.equal(view, fresh)


def test_transposed_view_gets_values_in_its_own_logical_layout():
    base = torch.zeros(10, 30)
    xt.kaiming_uniform_(base.T, key=2)  # a (30, 10) weight stored transposed
    assert torch.equal(base.T, xt.kaiming_uniform_(torch.empty(30, 10), key=2))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtypes_are_native(dtype):
    t = xt.kaiming_normal_(torch.empty(64, 32, dtype=dtype), key=0)
    assert t.dtype == dtype


def test_float64_uses_full_precision_and_leaves_jax_config_alone():
    assert not jax.config.jax_enable_x64
    t = xt.uniform_(torch.empty(10_000, dtype=torch.float64), key=0)
    assert not jax.config.jax_enable_x64
    assert (t != t.float().double()).any(), "float64 draw carries only float32 precision"


@pytest.mark.parametrize("name", RANDOM + ["sparse_"] + DETERMINISTIC)
def test_meta_tensors_are_a_no_op(name):
    shape = (4, 4, 3) if name == "dirac_" else (4, 6)
    t = torch.empty(shape, device="meta")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert call(name, t, **({} if name in DETERMINISTIC else {"key": 0})) is t


@pytest.mark.parametrize("name", ["kaiming_uniform_", "kaiming_normal_"])
@pytest.mark.parametrize("shape", [(0, 3), (0,), (3, 0, 2)], ids=str)
def test_zero_element_kaiming_warns_like_torch(name, shape):
    with pytest.warns(UserWarning, match="Initializing zero-element tensors is a no-op") as theirs:
        getattr(torch.nn.init, name)(torch.empty(shape))
    with pytest.warns(UserWarning, match="Initializing zero-element tensors is a no-op") as ours:
        out = getattr(xt, name)(torch.empty(shape), mode="not-a-mode")  # returns before validation
    assert len(ours) == len(theirs) == 1
    assert ours[0].filename == __file__, "the warning should point at the caller"
    assert out.shape == shape


@pytest.mark.parametrize("name", ["uniform_", "normal_", "xavier_uniform_", "orthogonal_"])
def test_zero_element_others_are_silent_no_ops(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = torch.empty(0, 3)
        assert call(name, t, key=0) is t


# ---------------------------------------------------------------- errors

ERROR_CASES = [
    ("uniform_", (4, 4), dict(a=1.0, b=0.0)),
    ("normal_", (4, 4), dict(std=-1.0)),
    ("trunc_normal_", (4, 4), dict(std=0.0)),
    ("trunc_normal_", (4, 4), dict(a=2.0, b=1.0)),
    ("xavier_uniform_", (5,), {}),
    ("xavier_normal_", (), {}),
    ("xavier_uniform_", (0, 0), {}),
    ("xavier_uniform_", (4, 4), dict(gain=-1.0)),
    ("kaiming_uniform_", (5,), {}),
    ("kaiming_uniform_", (4, 4), dict(mode="fan_avg")),
    ("kaiming_normal_", (4, 4), dict(mode=None)),
    ("kaiming_uniform_", (4, 4), dict(nonlinearity="gelu")),
    ("kaiming_normal_", (4, 4), dict(a=True)),
    ("kaiming_uniform_", (4, 4), dict(a="0.2")),
    ("eye_", (3, 4, 5), {}),
    ("eye_", (3,), {}),
    ("dirac_", (3, 3), {}),
    ("dirac_", (3, 3, 3, 3, 3, 3), {}),
    ("dirac_", (5, 3, 3), dict(groups=2)),
    ("dirac_", (4, 3, 3), dict(groups=0)),
    ("orthogonal_", (5,), {}),
    ("sparse_", (3, 4, 5), dict(sparsity=0.5)),
    ("sparse_", (3,), dict(sparsity=0.5)),
    ("uniform_", (3, 3), dict(dtype=torch.int32)),
    ("normal_", (3, 3), dict(dtype=torch.int64)),
    ("kaiming_uniform_", (3, 3), dict(dtype=torch.int32)),
    ("trunc_normal_", (3, 3), dict(dtype=torch.int32)),
    ("xavier_normal_", (3, 3), dict(dtype=torch.bool)),
    ("trunc_normal_", (3, 3), dict(dtype=torch.complex64)),
    ("orthogonal_", (3, 3), dict(dtype=torch.complex64)),
]


@pytest.mark.parametrize("name,shape,kw", ERROR_CASES, ids=lambda v: str(v))
def test_errors_have_torchs_type_and_change_nothing(name, shape, kw):
    kw = dict(kw)
    dtype = kw.pop("dtype", torch.float32)
    make = lambda: torch.full(shape, 7, dtype=dtype)  # noqa: E731
    with pytest.raises(Exception) as theirs:
        getattr(torch.nn.init, name)(make(), **kw)
    t = make()
    before = t.clone()
    state = torch.get_rng_state()
    with pytest.raises(type(theirs.value)) as ours:
        getattr(xt, name)(t, **kw)
    assert torch.equal(t, before), "a failed call changed the tensor"
    assert torch.equal(torch.get_rng_state(), state), "a failed call consumed global RNG state"
    assert len(str(ours.value)) > 20, "the message should say what was wrong"


@pytest.mark.parametrize(
    "name,kw,match",
    [
        ("uniform_", dict(a=1.0, b=0.0), r"a=1.0 > b=0.0"),
        ("kaiming_uniform_", dict(mode="fan_avg"), r"fan_avg.*\['fan_in', 'fan_out'\]"),
        ("kaiming_uniform_", dict(nonlinearity="gelu"), r"gelu.*'leaky_relu'"),
        ("dirac_", dict(groups=2), r"divisible by groups.*\(5, 3, 3\).*groups=2"),
        ("xavier_uniform_", {}, r"fewer than 2 dimensions.*\(5,\)"),
    ],
)
def test_error_messages_name_argument_value_and_allowed(name, kw, match):
    shape = (5,) if name == "xavier_uniform_" else ((5, 3, 3) if name == "dirac_" else (4, 4))
    with pytest.raises(Exception, match=match):
        getattr(xt, name)(torch.empty(shape), **kw)


@pytest.mark.parametrize("name", ["kaiming_uniform_", "normal_", "zeros_"])
def test_uninitialized_lazy_parameter_raises_like_torch(name):
    with pytest.raises(ValueError) as theirs:
        getattr(torch.nn.init, name)(torch.nn.parameter.UninitializedParameter())
    with pytest.raises(type(theirs.value), match="uninitialized parameter.*forward pass"):
        getattr(xt, name)(torch.nn.parameter.UninitializedParameter())


def test_non_tensor_input_is_a_type_error():
    with pytest.raises(TypeError, match="expected a torch.Tensor, got list"):
        xt.normal_([1.0, 2.0])


def test_trunc_normal_warns_like_torch():
    with pytest.warns(UserWarning, match="mean is more than 2 std from"):
        xt.trunc_normal_(torch.empty(3), mean=10.0, key=0)


# ---------------------------------------------------------------- randomness


@pytest.mark.parametrize("name", RANDOM + ["sparse_"])
def test_same_key_same_values_different_key_different(name):
    a = call(name, torch.empty(16, 12), key=5)
    b = call(name, torch.empty(16, 12), key=5)
    c = call(name, torch.empty(16, 12), key=6)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("name", RANDOM + ["sparse_"])
def test_manual_seed_makes_runs_repeatable(name):
    torch.manual_seed(123)
    a1, a2 = call(name, torch.empty(8, 8)), call(name, torch.empty(8, 8))
    torch.manual_seed(123)
    b1, b2 = call(name, torch.empty(8, 8)), call(name, torch.empty(8, 8))
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.equal(a1, a2), "successive calls must advance the global RNG"


@pytest.mark.parametrize("name", RANDOM + ["sparse_"])
def test_generator_seed_repeatable_and_global_rng_untouched(name):
    state = torch.get_rng_state()
    a = call(name, torch.empty(8, 8), generator=torch.Generator().manual_seed(9))
    b = call(name, torch.empty(8, 8), generator=torch.Generator().manual_seed(9))
    c = call(name, torch.empty(8, 8), generator=torch.Generator().manual_seed(10))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), state)


def test_key_and_generator_together_is_an_error():
    with pytest.raises(ValueError, match="either key= or generator="):
        xt.normal_(torch.empty(3), generator=torch.Generator(), key=0)


@pytest.mark.parametrize(
    "key", [3, jax.random.key(3), jax.random.PRNGKey(3)], ids=["int", "typed", "raw"]
)
def test_values_come_from_the_core_for_the_key(key):
    t = xt.xavier_uniform_(torch.empty(20, 10), key=key)
    expected = sample(specs.XavierUniform(), 3, (20, 10))
    assert torch.equal(t, torch.from_dlpack(expected))


def test_values_equal_the_core_in_flax_layout_transposed():
    w = xt.kaiming_normal_(torch.empty(16, 8, 3, 3), key=4)
    k = sample(specs.KaimingNormal(), 4, (3, 3, 8, 16), layout=FLAX)
    assert torch.equal(w.permute(2, 3, 1, 0), torch.from_dlpack(k))


# ---------------------------------------------------------------- model.apply


def test_works_with_model_apply():
    def init_weights(m):
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            xt.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            xt.zeros_(m.bias)

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 10)
    )
    model.apply(init_weights)
    conv, lin = model[0], model[2]
    assert (conv.bias == 0).all() and (lin.bias == 0).all()
    assert abs(conv.weight.std().item() / (2 / (8 * 9)) ** 0.5 - 1) < 0.25
    out = model(torch.randn(2, 3, 8, 8))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.mark.gpu
def test_cuda_tensor_is_written_on_its_device():
    t = torch.empty(64, 64, device="cuda")
    xt.normal_(t, key=0)
    assert t.device.type == "cuda"
    assert torch.equal(t.cpu(), xt.normal_(torch.empty(64, 64), key=0))


def test_drop_in_write_is_seen_by_autograd():
    p = torch.nn.Parameter(torch.ones(64, 64))
    loss = (p**2).sum()
    xt.uniform_(p, key=0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_multi_chunk_tensors_contiguous_and_strided_get_the_core_draw():
    """> 4 Mi elements: pieces stream one chunk ahead into the tensor, strided views included."""
    shape = (4100, 1100)
    ref = torch.from_dlpack(xc.sample(xc.Normal(0.0, 1.0), 5, shape))
    t = xt.normal_(torch.empty(shape), key=5)
    assert torch.equal(t, ref)
    base = torch.empty(shape[::-1])
    xt.normal_(base.T, key=5)  # a transposed, non-contiguous view
    assert torch.equal(base.T, ref)
