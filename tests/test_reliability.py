"""Regression tests for the reliability bugs of issue 15, each against torch.nn.init in the same test.

A failed call raises torch's exception type and changes nothing: not the tensor, not its
version counter, not torch's global RNG nor a passed generator (bugs 5-9). Inference
tensors are refused outside inference mode (bug 7); no-ops move the version counter as
torch's do (bug 10); ``materialize`` is transactional (bug 3). The differential fuzz
(test_fuzz_torch.py) covers the same contract at random; these are the named cases.
"""

from __future__ import annotations

import inspect
import math
import warnings

import pytest
import torch
from torch import nn

import xinit.torch as xt
from xinit.core import Normal, Recipe, Rule, get_recipe
from xinit.core.errors import DtypeError
from xinit.torch import materialize

NAN, INF = math.nan, math.inf

# (function, shape, dtype, keyword arguments): torch.nn.init raises for each
BAD_CALLS = {
    # bug 5: NaN, infinite and out-of-range arguments
    "uniform-nan-a": ("uniform_", (4, 4), torch.float32, dict(a=NAN, b=1.0)),
    "uniform-inf-b": ("uniform_", (4, 4), torch.float32, dict(a=0.0, b=INF)),
    "uniform-float16-overflow": ("uniform_", (4, 4), torch.float16, dict(a=-1e5, b=1e5)),
    "uniform-float16-range-overflow": ("uniform_", (4, 4), torch.float16, dict(a=-4e4, b=4e4)),
    "uniform-float32-overflow": ("uniform_", (4, 4), torch.float32, dict(a=-3.5e38, b=0.0)),
    "normal-nan-std": ("normal_", (4, 4), torch.float32, dict(mean=0.0, std=NAN)),
    "xavier_uniform-inf-gain": ("xavier_uniform_", (4, 4), torch.float32, dict(gain=INF)),
    "xavier_uniform-nan-gain": ("xavier_uniform_", (4, 4), torch.float32, dict(gain=NAN)),
    "xavier_uniform-float16-huge-gain": ("xavier_uniform_", (4, 4), torch.float16, dict(gain=1e5)),
    "xavier_normal-nan-gain": ("xavier_normal_", (4, 4), torch.float32, dict(gain=NAN)),
    "kaiming_uniform-nan-a": ("kaiming_uniform_", (4, 4), torch.float32, dict(a=NAN)),
    "kaiming_normal-nan-a": ("kaiming_normal_", (4, 4), torch.float32, dict(a=NAN)),
    "sparse-nan-std": ("sparse_", (4, 4), torch.float32, dict(sparsity=0.5, std=NAN)),
    "sparse-nan-sparsity": ("sparse_", (4, 4), torch.float32, dict(sparsity=NAN)),
    "sparse-inf-sparsity": ("sparse_", (4, 4), torch.float32, dict(sparsity=INF)),
    "constant-int8-overflow": ("constant_", (4,), torch.int8, dict(val=300)),
    "constant-int-nan": ("constant_", (4,), torch.int32, dict(val=NAN)),
    "constant-float16-overflow": ("constant_", (4,), torch.float16, dict(val=1e5)),
    # bug 8: numeric strings are not numbers
    "uniform-string-a": ("uniform_", (4, 4), torch.float32, dict(a="0.5", b=1.0)),
    "normal-string-std": ("normal_", (4, 4), torch.float32, dict(mean=0, std="nan")),
    "orthogonal-string-gain": ("orthogonal_", (4, 4), torch.float32, dict(gain="2")),
    "trunc_normal-string-a": ("trunc_normal_", (4, 4), torch.float32, dict(a="-1")),
    "xavier_normal-bytes-gain": ("xavier_normal_", (4, 4), torch.float32, dict(gain=b"1")),
    "constant-string-val": ("constant_", (4,), torch.float32, dict(val="0.5")),
    "sparse-string-sparsity": ("sparse_", (4, 4), torch.float32, dict(sparsity="0.5")),
    "dirac-string-groups": ("dirac_", (4, 4, 3), torch.float32, dict(groups="2")),
    # bug 9: the exception type of wrong-typed arguments
    "kaiming-bytes-mode": ("kaiming_uniform_", (4, 4), torch.float32, dict(mode=b"fan_in")),
    "kaiming-none-mode": ("kaiming_normal_", (4, 4), torch.float32, dict(mode=None)),
    "constant-vector-val": ("constant_", (4,), torch.float32, dict(val=torch.tensor([0.5, 1.0]))),
    "sparse-vector-sparsity": ("sparse_", (4, 4), torch.float32, dict(sparsity=torch.tensor([0.5, 1.0]))),
    "orthogonal-complex-gain": ("orthogonal_", (4, 4), torch.float32, dict(gain=1 + 2j)),
    "uniform-complex-a": ("uniform_", (4, 4), torch.float32, dict(a=1j)),
    "constant-complex-on-real": ("constant_", (4,), torch.float32, dict(val=1 + 2j)),
    "dirac-float-groups": ("dirac_", (4, 4, 3), torch.float32, dict(groups=2.0)),
    "dirac-nan-groups": ("dirac_", (4, 4, 3), torch.float32, dict(groups=NAN)),
}


def _call(module, name, tensor, kwargs, generator=None):
    if generator is not None:
        kwargs = {**kwargs, "generator": generator}
    return getattr(module, name)(tensor, **kwargs)


def _takes_generator(name: str) -> bool:
    return "generator" in inspect.signature(getattr(torch.nn.init, name)).parameters


@pytest.mark.parametrize("case,rng", [
    (case, rng) for case, (name, *_) in BAD_CALLS.items()
    for rng in (("global", "generator") if _takes_generator(name) else ("global",))
], ids=str)
def test_bad_arguments_raise_torchs_type_and_change_nothing(case, rng):
    name, shape, dtype, kwargs = BAD_CALLS[case]
    with pytest.raises(Exception) as theirs:
        _call(torch.nn.init, name, torch.full(shape, 7, dtype=dtype), kwargs,
              torch.Generator() if rng == "generator" else None)
    t = torch.full(shape, 7, dtype=dtype)
    version, global_state = t._version, torch.get_rng_state()
    generator = torch.Generator().manual_seed(3) if rng == "generator" else None
    generator_state = generator.get_state() if generator is not None else None
    with pytest.raises(type(theirs.value)) as ours:
        _call(xt, name, t, kwargs, generator)
    assert torch.equal(t, torch.full(shape, 7, dtype=dtype)), "a failed call changed the tensor"
    assert t._version == version, "a failed call bumped the version counter"
    assert torch.equal(torch.get_rng_state(), global_state), "a failed call consumed the global RNG"
    if generator is not None:
        assert torch.equal(generator.get_state(), generator_state), "a failed call consumed the generator"
    assert len(str(ours.value)) > 20


def test_kaiming_bytes_mode_message_states_torchs_behaviour():
    with pytest.raises(ValueError, match=r"Mode b'fan_in' not supported"):
        torch.nn.init.kaiming_uniform_(torch.empty(4, 4), mode=b"fan_in")
    with pytest.raises(ValueError, match=r"Mode b'fan_in' not supported") as ours:
        xt.kaiming_uniform_(torch.empty(4, 4), mode=b"fan_in")
    assert "AttributeError" not in str(ours.value)


# ----------------------------------------------------- bug 6: writability before the seed

RANDOM = ["uniform_", "normal_", "trunc_normal_", "xavier_uniform_", "xavier_normal_",
          "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_"]


def _extra(name):
    return {"sparse_": {"sparsity": 0.5}}.get(name, {})


@pytest.mark.parametrize("rng", ["global", "generator"])
@pytest.mark.parametrize("name", RANDOM)
def test_expanded_tensor_fails_before_any_rng_is_used(name, rng):
    make = lambda: torch.zeros(1, 3).expand(4, 3)  # noqa: E731 - four rows share memory
    generator = torch.Generator().manual_seed(0) if rng == "generator" else None
    with pytest.raises(RuntimeError, match="single memory location"):
        _call(torch.nn.init, name, make(), _extra(name), generator)
    t = make()
    global_state = torch.get_rng_state()
    generator = torch.Generator().manual_seed(0) if rng == "generator" else None
    generator_state = generator.get_state() if generator is not None else None
    with pytest.raises(RuntimeError, match="single memory location"):
        _call(xt, name, t, _extra(name), generator)
    assert torch.equal(t, make())
    assert torch.equal(torch.get_rng_state(), global_state), "the global RNG was consumed"
    if generator is not None:
        assert torch.equal(generator.get_state(), generator_state), "the generator was consumed"


@pytest.mark.parametrize("name", ["constant_", "ones_", "zeros_", "eye_"])
def test_fills_write_expanded_tensors_like_torch(name):
    args = (0.5,) if name == "constant_" else ()
    theirs = getattr(torch.nn.init, name)(torch.zeros(1, 3).expand(3, 3), *args)
    ours = getattr(xt, name)(torch.zeros(1, 3).expand(3, 3), *args)
    assert torch.equal(ours, theirs)


# ------------------------------------------------------------- bug 7: inference tensors

ALL = RANDOM + ["constant_", "ones_", "zeros_", "eye_", "dirac_"]


def _shape(name):
    return (4, 4, 3) if name == "dirac_" else (4, 6)


def _args(name):
    return {"constant_": {"val": 0.5}, "sparse_": {"sparsity": 0.5}}.get(name, {})


@pytest.mark.parametrize("name", ALL)
def test_inference_tensor_outside_inference_mode_is_refused_like_torch(name):
    with torch.inference_mode():
        theirs, ours = torch.zeros(_shape(name)), torch.zeros(_shape(name))
    with pytest.raises(RuntimeError, match="Inplace update to inference tensor"):
        getattr(torch.nn.init, name)(theirs, **_args(name))
    state = torch.get_rng_state()
    with pytest.raises(RuntimeError, match="Inplace update to inference tensor"):
        getattr(xt, name)(ours, **_args(name))
    assert torch.equal(ours, torch.zeros(_shape(name))) and torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("name", ALL)
def test_inference_tensor_inside_inference_mode_is_written(name):
    with torch.inference_mode():
        t = torch.full(_shape(name), float("nan"))
        assert getattr(xt, name)(t, **_args(name)) is t
        assert not torch.isnan(t).any()


# ------------------------------------------------------ bug 10: version counters of no-ops


@pytest.mark.parametrize("where", ["meta", "zero-element"])
@pytest.mark.parametrize("name", ALL)
def test_no_op_moves_the_version_counter_as_torch_does(name, where):
    shape = list(_shape(name))
    if where == "zero-element":
        shape[0] = 0
    device = "meta" if where == "meta" else "cpu"
    theirs, ours = torch.empty(shape, device=device), torch.empty(shape, device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # kaiming's zero-element warning
        getattr(torch.nn.init, name)(theirs, **_args(name))
        getattr(xt, name)(ours, **_args(name))
    assert (ours._version > 0) == (theirs._version > 0)


# ------------------------------------------------------- a size-1 dim with any stride


def test_contiguous_tensor_with_an_odd_stride_on_a_size_one_dim():
    # torch calls (1, 1) with strides (2, 2) contiguous; its flat view keeps stride 2
    base = torch.zeros(1, 2)
    t = base[:, ::2]
    assert t.is_contiguous() and t.stride() == (2, 2)
    xt.normal_(t, key=0)
    assert torch.equal(t, xt.normal_(torch.zeros(1, 1), key=0)) and base[0, 1] == 0


# -------------------------------------------------------- bug 3: materialize transactional


class Counter(nn.Module):
    def __init__(self):
        super().__init__()
        self.counts = nn.Parameter(torch.zeros(3, dtype=torch.int64), requires_grad=False)


class Model(nn.Module):
    """Ties, a non-persistent buffer, an LSTM (flat weights) and an int parameter last."""

    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(10, 8)
        self.lstm = nn.LSTM(8, 8)
        self.norm = nn.LayerNorm(8)
        self.register_buffer("mask", torch.ones(4, 4), persistent=False)
        self.head = nn.Linear(8, 10, bias=False)
        self.head.weight = self.wte.weight
        self.stats = Counter()


RECIPE = Recipe("with-counts", (Rule(Normal(), name="stats.counts"),)) + get_recipe("torch_default")
COVERING = Recipe("covering", (Rule(Normal(), name="mask", buffers=True),)) + RECIPE


def _state(m: nn.Module):
    """Every tensor object by name, with buffer persistence and the LSTM's flat weights."""
    return ({n: t for n, t in m.named_parameters(remove_duplicate=False)},
            {n: t for n, t in m.named_buffers(remove_duplicate=False)},
            sorted(m.state_dict(keep_vars=True)), list(m.lstm._flat_weights))


def _assert_restored(m: nn.Module, before) -> None:
    params, buffers, keys, flat = _state(m)
    assert params.keys() == before[0].keys() and buffers.keys() == before[1].keys()
    for name, t in {**params, **buffers}.items():
        assert t is {**before[0], **before[1]}[name], f"{name} is not the original tensor"
        assert t.is_meta, f"{name} was left holding real memory"
    assert m.head.weight is m.wte.weight, "the tie was broken"
    assert keys == before[2], "buffer persistence changed"
    assert all(a is b for a, b in zip(flat, before[3], strict=True)), "LSTM flat weights not restored"


def _meta_model(int_counts: bool = True):
    with torch.device("meta"):
        m = Model()
        if not int_counts:
            m.stats.counts = nn.Parameter(torch.zeros(3), requires_grad=False)
    return m


def test_materialize_validates_every_dtype_before_allocating():
    m = _meta_model()
    before = _state(m)
    rng = torch.get_rng_state()
    with pytest.raises(DtypeError, match=r"stats\.counts"):  # an int parameter after float ones
        materialize(m, recipe=COVERING)
    _assert_restored(m, before)
    assert torch.equal(torch.get_rng_state(), rng), "a failed materialize consumed the global RNG"


def test_materialize_restores_meta_tensors_after_an_interrupt(monkeypatch):
    from xinit.torch import model as model_mod

    real_write = model_mod._write_all

    def interrupted(entries, resolved, root_key, targets, **kw):
        half = len(entries) // 2
        real_write(entries[:half], resolved[:half], root_key, targets[:half], **kw)
        raise KeyboardInterrupt

    m = _meta_model(int_counts=False)
    before = _state(m)
    rng = torch.get_rng_state()
    monkeypatch.setattr(model_mod, "_write_all", interrupted)
    with pytest.raises(KeyboardInterrupt):
        materialize(m, recipe=COVERING)
    _assert_restored(m, before)
    assert torch.equal(torch.get_rng_state(), rng), "the global RNG was not rewound"
    monkeypatch.undo()
    # and the module is as good as new
    fresh = _meta_model(int_counts=False)
    materialize(m, recipe=COVERING, key=5)
    materialize(fresh, recipe=COVERING, key=5)
    for (n, a), (_, b) in zip(m.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert torch.equal(a, b), n
    assert m.head.weight is m.wte.weight


def test_materialize_restores_meta_tensors_after_an_allocation_failure(monkeypatch):
    real_empty_like = torch.empty_like
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("DefaultCPUAllocator: not enough memory")
        return real_empty_like(*args, **kwargs)

    m = _meta_model(int_counts=False)
    before = _state(m)
    monkeypatch.setattr(torch, "empty_like", failing)
    with pytest.raises(RuntimeError, match="not enough memory"):
        materialize(m, recipe=COVERING, key=0)
    _assert_restored(m, before)
