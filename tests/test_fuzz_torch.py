"""A differential fuzz of ``xinit.torch`` against ``torch.nn.init``, run in the same process.

Each case is one call: a function of ``torch.nn.init``, a tensor (0-d to 5-d, zero-size
dims, every dtype, in one of several layouts: contiguous, transposed, strided,
channels_last, expanded, a non-leaf, a Parameter, an inference tensor, meta) and
arguments (good, edge and wrong-typed ones). torch and xinit each get a tensor built
the same way, and the case checks:

- success vs failure, and on failure an exception of torch's type (``isinstance``);
- after a failure: the tensor (and the memory around a view), its version counter,
  torch's global RNG and the passed generator are untouched;
- after a success: the same object is returned, with the same storage, strides,
  ``requires_grad`` and ``grad_fn``; memory outside a view is untouched; the version
  counter moved iff torch's did; no NaN or inf where torch has none; deterministic
  functions (``constant_``, ``ones_``, ``zeros_``, ``eye_``, ``dirac_``) equal torch's
  values; passing ``generator`` (or ``key``) leaves the global RNG alone;
- the warnings torch.nn.init itself emits, xinit emits too.

Cases are drawn from ``numpy.random.default_rng([SEED, i])``: case ``i`` is the same
on every run and machine (``pytest tests/test_fuzz_torch.py -k "case-417"`` reruns
one). Where xinit deliberately differs, the difference is a row of
:data:`DIFFERENCES` (documented in docs/torch-defaults.md, "Differences from
torch.nn.init"), with its reason; each row is checked to still be a difference.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch

import xinit.torch as xt

SEED = 20261115
FAST_CASES = 400  # the normal run
SLOW_CASES = 4000  # more under the slow marker

INF, NAN = math.inf, math.nan

# --------------------------------------------------------------------- arguments

GOOD_REALS = [0.0, 1.0, -1.0, 0.5, 2.0, 0.02, 3, -2, 1e-3, 10.0, 0.1]
EDGE_REALS = [0, -0.0, 1e5, -1e5, 7e4, 1e300, -1e300, 1e-300, 1e38, 3.5e38, INF, -INF, NAN, 1e-45]
WRONG = [
    "0.5", "nan", "1", b"1", None, 1 + 2j, 2j, True, False, [0.5], (1.0,),
    np.float32(0.5), np.float64(2.0), np.int64(3), np.float16(1.5), np.bool_(True),
    torch.tensor(0.5), torch.tensor(2), torch.tensor([0.5, 1.0]), torch.tensor(True),
]
MODES = ["fan_in", "fan_out", "FAN_IN", "Fan_Out", "fan_avg", "", None, b"fan_in", 1, "fan_in "]
NONLINEARITIES = ["linear", "relu", "leaky_relu", "tanh", "sigmoid", "selu", "conv2d",
                  "conv_transpose1d", "gelu", "Relu", None, 1, b"relu", "identity"]
GROUPS = [1, 1, 2, 3, 0, -1, 2.0, True, "2", None, np.int64(2), torch.tensor(2)]
SPARSITIES = [0.0, 0.1, 0.5, 0.9, 1.0, 1.5, -0.5, NAN, INF, "0.5", None, 2, np.float64(0.3)]


def _real(rng) -> Any:
    """A real-valued argument: mostly good, sometimes an edge value or a wrong type."""
    pool = (GOOD_REALS, EDGE_REALS, WRONG)[rng.choice(3, p=[0.7, 0.18, 0.12])]
    return pool[rng.integers(len(pool))]


def _pick(rng, pool, good: int = 0, p_good: float = 0.6):
    """``pool[good]`` with probability ``p_good``, else any element of ``pool``."""
    return pool[good] if rng.random() < p_good else pool[rng.integers(len(pool))]


# Each function's arguments after the tensor: name -> drawer (absent: the default is used).
ARGS: dict[str, dict[str, Callable]] = {
    "uniform_": {"a": _real, "b": _real},
    "normal_": {"mean": _real, "std": _real},
    "trunc_normal_": {"mean": _real, "std": _real, "a": _real, "b": _real},
    "constant_": {"val": _real},
    "ones_": {},
    "zeros_": {},
    "eye_": {},
    "dirac_": {"groups": lambda rng: _pick(rng, GROUPS)},
    "xavier_uniform_": {"gain": _real},
    "xavier_normal_": {"gain": _real},
    "kaiming_uniform_": {"a": _real, "mode": lambda rng: _pick(rng, MODES),
                         "nonlinearity": lambda rng: _pick(rng, NONLINEARITIES, good=2)},
    "kaiming_normal_": {"a": _real, "mode": lambda rng: _pick(rng, MODES),
                        "nonlinearity": lambda rng: _pick(rng, NONLINEARITIES, good=2)},
    "orthogonal_": {"gain": _real},
    "sparse_": {"sparsity": lambda rng: _pick(rng, SPARSITIES, good=2), "std": _real},
}
REQUIRED = {"constant_": "val", "sparse_": "sparsity"}
RANDOM = {"uniform_", "normal_", "trunc_normal_", "xavier_uniform_", "xavier_normal_",
          "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_"}
DETERMINISTIC = {"constant_", "ones_", "zeros_", "eye_", "dirac_"}
# where the fuzz draws shapes for a function (most functions need 2-D or more to do anything)
PREFERRED_NDIM = {"eye_": 2, "sparse_": 2, "dirac_": 4}

# ----------------------------------------------------------------------- tensors

DTYPES = [torch.float32] * 6 + [torch.float16, torch.bfloat16, torch.float64] * 2 + [
    torch.complex64, torch.complex128, torch.int32, torch.int64, torch.uint8, torch.bool,
    torch.int8, torch.int16]
LAYOUTS = ["contiguous"] * 4 + ["transposed", "strided", "channels_last", "expanded", "non_leaf",
                                "leaf_requires_grad", "parameter", "inference",
                                "inference_in_mode", "meta"]
SIZES = [1, 2, 3, 4, 5, 6, 8]


class Case(NamedTuple):
    index: int
    fn: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    layout: str
    args: dict[str, Any]
    rng_mode: str  # "global", "generator" or "key"

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.args.items())
        return (f"case {self.index}: {self.fn}({self.layout} {list(self.shape)} "
                f"{str(self.dtype).removeprefix('torch.')}, {args}) rng={self.rng_mode}")


def make_case(index: int) -> Case:
    rng = np.random.default_rng([SEED, index])
    fn = sorted(ARGS)[rng.integers(len(ARGS))]
    ndim = PREFERRED_NDIM.get(fn, 2) if rng.random() < 0.5 else int(rng.integers(0, 6))
    shape = tuple(int(rng.choice(SIZES)) if rng.random() > 0.08 else 0 for _ in range(ndim))
    dtype = DTYPES[rng.integers(len(DTYPES))]
    layouts = [lay for lay in LAYOUTS if _layout_applies(lay, shape, dtype)]
    layout = layouts[rng.integers(len(layouts))]
    args = {}
    for name, draw in ARGS[fn].items():
        if name == REQUIRED.get(fn) or rng.random() < 0.7:
            args[name] = draw(rng)
    rng_mode = ("global", "generator", "key")[rng.integers(3)] if fn in RANDOM else "global"
    case = Case(index, fn, shape, dtype, layout, args, rng_mode)
    return make_case(index + 10**9)._replace(index=index) if _torch_would_hang(case) else case


def _torch_would_hang(case: Case) -> bool:
    """torch's trunc_normal_ rejection branch accepts a uniform candidate with probability
    ``sigma * mass * sqrt(2 pi) / ((b - a) * pdf(mode))``; far in a tail with a small std
    that is ~0 and torch loops for minutes. The fuzz leaves such calls out (the tail
    tests of test_trunc_normal_tails.py cover them against scipy)."""
    if case.fn != "trunc_normal_":
        return False
    mean, std, a, b = (_as_float(_arg(case, n)) for n in ("mean", "std", "a", "b"))
    if None in (mean, std, a, b) or not std > 0 or not a < b or not math.isfinite(mean + std + a + b):
        return False
    cdf = lambda x: (1.0 + math.erf(x / math.sqrt(2.0))) / 2.0  # noqa: E731
    mass = cdf((b - mean) / std) - cdf((a - mean) / std)
    if mass > 0.3:
        return False
    z_mode = (max(a, min(mean, b)) - mean) / std
    try:
        rate = std * mass * math.sqrt(2 * math.pi) * math.exp(min(z_mode * z_mode / 2, 700)) / (b - a)
    except OverflowError:
        return True
    return rate < 1e-3


def _layout_applies(layout: str, shape: tuple[int, ...], dtype: torch.dtype) -> bool:
    if layout in ("non_leaf", "leaf_requires_grad", "parameter"):
        return dtype.is_floating_point or dtype.is_complex
    return {"transposed": len(shape) >= 2, "strided": len(shape) >= 1,
            "channels_last": len(shape) == 4, "expanded": len(shape) >= 1 and shape[0] >= 2}.get(layout, True)


def _pattern(n: int, dtype: torch.dtype) -> torch.Tensor:
    """Recognizable contents (so 'untouched' means something), valid in every dtype."""
    values = torch.arange(n, dtype=torch.float64).remainder(7).sub(3).mul(0.75)
    if dtype == torch.bool:
        return values > 0
    if not (dtype.is_floating_point or dtype.is_complex):
        values = values.round().abs() if dtype == torch.uint8 else values.round()
    return values.to(dtype)


class Built(NamedTuple):
    tensor: torch.Tensor  # what the function is called with
    base: torch.Tensor | None  # the memory it views (None: meta)
    view: Callable[[torch.Tensor], torch.Tensor] | None  # base -> tensor, to rebuild expectations


def build(case: Case) -> Built | None:
    """The case's tensor, built afresh (identically for torch and xinit); None if the layout
    does not apply to the shape or dtype."""
    if not _layout_applies(case.layout, case.shape, case.dtype):
        return None
    shape, dtype, layout = case.shape, case.dtype, case.layout
    n = math.prod(shape)
    if layout == "meta":
        return Built(torch.empty(shape, dtype=dtype, device="meta"), None, None)
    if layout in ("contiguous", "non_leaf", "leaf_requires_grad", "parameter"):
        base = _pattern(n, dtype).reshape(shape)
        if layout == "contiguous":
            return Built(base, base, lambda b: b)
        if layout == "parameter":
            p = torch.nn.Parameter(base)
            return Built(p, p, lambda b: b)
        leaf = base.requires_grad_(True)
        if layout == "leaf_requires_grad":
            return Built(leaf, leaf, lambda b: b)
        return Built(leaf * 1, None, None)  # a non-leaf: its own memory, with a grad_fn
    if layout == "transposed":
        base = _pattern(n, dtype).reshape((shape[1], shape[0], *shape[2:]))
        return Built(base.transpose(0, 1), base, lambda b: b.transpose(0, 1))
    if layout == "strided":
        base = _pattern(n * 2, dtype).reshape((*shape[:-1], shape[-1] * 2))
        return Built(base[..., ::2], base, lambda b: b[..., ::2])
    if layout == "channels_last":
        base = _pattern(n, dtype).reshape(shape).contiguous(memory_format=torch.channels_last)
        return Built(base, base, lambda b: b)
    if layout == "expanded":
        base = _pattern(n // shape[0], dtype).reshape((1, *shape[1:]))
        return Built(base.expand(shape), base, lambda b: b.expand(shape))
    if layout in ("inference", "inference_in_mode"):
        with torch.inference_mode():
            base = _pattern(n, dtype).reshape(shape)
        return Built(base, base, lambda b: b)
    raise AssertionError(layout)


# ------------------------------------------------------------------- differences


class Difference(NamedTuple):
    """A deliberate difference from torch.nn.init: where it applies, and why."""

    title: str
    applies: Callable[[Case], bool]
    torch_does: str
    xinit_does: str
    reason: str
    example: Case  # a call where the difference shows (checked by test_difference_is_real)


def _arg(case: Case, name: str):
    """The argument as the call sees it (the default where the case leaves it out)."""
    return case.args.get(name, DEFAULTS[case.fn].get(name))


def _as_float(value) -> float | None:
    """A plain number's float value; None for anything else (strings, tensors, ...)."""
    if isinstance(value, (bool, int, float, np.floating, np.integer)) and not isinstance(value, np.bool_):
        return float(value)
    return None


def _torch_trunc_sampler_fails(case: Case) -> bool:
    """Whether torch 2.13's trunc_normal_ sampler itself fails for these numbers: its
    rejection branch (<= 30% of the mass in [a, b]) draws ``uniform_(a, b)``, which
    rejects bounds beyond the dtype's range, and squares ``(mode - mean) / std``,
    which overflows a double beyond ~1e154 standard deviations."""
    mean, std, a, b = (_as_float(_arg(case, n)) for n in ("mean", "std", "a", "b"))
    if None in (mean, std, a, b) or std <= 0 or not math.isfinite(mean + std) or a > b:
        return False
    cdf = lambda x: (1.0 + math.erf(x / math.sqrt(2.0))) / 2.0  # noqa: E731 - torch's norm_cdf
    if cdf((b - mean) / std) - cdf((a - mean) / std) > 0.3:
        return False
    info = torch.finfo(case.dtype) if case.dtype.is_floating_point else None
    if info is not None and not (info.min <= a <= info.max and info.min <= b <= info.max
                                 and b - a <= info.max):
        return True
    try:
        ((max(a, min(mean, b)) - mean) / std) ** 2
    except OverflowError:
        return True
    return False


def _beyond_float32(case: Case) -> bool:
    big = float(np.finfo(np.float32).max)
    mean, std, a, b = (_as_float(_arg(case, n)) for n in ("mean", "std", "a", "b"))
    return (mean is not None and abs(mean) > big) or (
        std is not None and std > big and None not in (a, b) and not math.isfinite(a + b))


def _is_tensor(value, *, numel=None, dtype=None) -> bool:
    return (isinstance(value, torch.Tensor) and (numel is None or numel(value.numel()))
            and (dtype is None or value.dtype == dtype))


DIFFERENCES = [
    Difference(
        "orthogonal_ on float16 and bfloat16 tensors",
        lambda c: c.fn == "orthogonal_" and c.dtype in (torch.float16, torch.bfloat16),
        "raises NotImplementedError on CPU: its QR has no 16-bit kernel",
        "computes in float32 and rounds once",
        "a strict widening: 16-bit models need orthogonal weights too (Flax's nnx does the same)",
        Case(-1, "orthogonal_", (4, 6), torch.bfloat16, "contiguous", {}, "global"),
    ),
    Difference(
        "sparse_ with generator=",
        lambda c: c.fn == "sparse_" and c.rng_mode != "global",
        "draws the zero pattern from the global RNG even when given a generator",
        "draws everything from the generator (or key=); the global RNG is untouched",
        "torch's is a bug (randperm is not passed the generator); reproducibility needs the fix",
        Case(-2, "sparse_", (6, 4), torch.float32, "contiguous", {"sparsity": 0.5}, "generator"),
    ),
    VALIDATED_ANYWAY := Difference(
        "Meta and zero-element tensors are validated",
        lambda c: c.layout == "meta" or 0 in c.shape,
        "skips some checks there: trunc_normal_, orthogonal_ and sparse_ return first, its "
        "meta kernels check no values and empty tensors no dtype",
        "checks the arguments and the dtype (and warns) as for the same tensor on the CPU with "
        "its empty dims non-empty (kaiming_*'s zero-element no-op excepted, as in torch)",
        "a model built on meta fails where it is built, not later where it is materialized",
        Case(-3, "uniform_", (4, 3), torch.float32, "meta", {"a": 1.0, "b": 0.0}, "global"),
    ),
    Difference(
        "trunc_normal_ with std < 0",
        lambda c: c.fn == "trunc_normal_" and (_as_float(_arg(c, "std")) or 0.0) < 0,
        "samples as if std were |std| (its sampler squares it)",
        "raises RuntimeError, as torch's normal_ does",
        "a negative std is a mistake, not a request for |std|",
        Case(-4, "trunc_normal_", (5,), torch.float32, "contiguous", {"std": -1.0}, "global"),
    ),
    Difference(
        "trunc_normal_ with a NaN or infinite mean or std, or a NaN bound",
        lambda c: c.fn == "trunc_normal_" and any(
            v is not None and not math.isfinite(v) and (n in ("mean", "std") or math.isnan(v))
            for n in ("mean", "std", "a", "b") for v in [_as_float(_arg(c, n))]),
        "writes values spread over [a, b] (its sampler's arithmetic turns NaN)",
        "raises RuntimeError naming the argument",
        "there is no such distribution; the values torch writes are an accident",
        Case(-5, "trunc_normal_", (5,), torch.float32, "contiguous", {"std": NAN}, "global"),
    ),
    Difference(
        "trunc_normal_ where torch's own sampler fails",
        _torch_trunc_sampler_fails,
        "raises when [a, b] holds <= 30% of the mass and a bound is infinite or outside the "
        "dtype's range (RuntimeError from its uniform_(a, b)), or when ((bound - mean) / std)**2 "
        "overflows a double (OverflowError)",
        "samples it: an inverse CDF that is exact in the tails, values within [a, b]",
        "these are limits of torch's rejection sampler, not invalid arguments",
        Case(-6, "trunc_normal_", (5,), torch.float32, "contiguous", {"a": 3.0, "b": INF}, "global"),
    ),
    Difference(
        "dirac_ on a tensor with a zero-size spatial dim",
        lambda c: c.fn == "dirac_" and len(c.shape) in (3, 4, 5) and 0 in c.shape[2:]
        and 0 not in c.shape[:2],
        "raises IndexError (it indexes the centre of an empty dim)",
        "a no-op, as for every other zero-element tensor",
        "torch's is a bug",
        Case(-7, "dirac_", (4, 4, 0), torch.float32, "contiguous", {}, "global"),
    ),
    Difference(
        "dirac_ with groups < 0",
        lambda c: c.fn == "dirac_" and isinstance(_arg(c, "groups"), (int, np.integer))
        and _arg(c, "groups") < 0,
        "zero-fills the tensor",
        "raises ValueError",
        "a negative group count is a mistake",
        Case(-8, "dirac_", (4, 4, 3), torch.float32, "contiguous", {"groups": -1}, "global"),
    ),
    Difference(
        "orthogonal_ on a channels_last tensor",
        lambda c: c.fn == "orthogonal_" and c.layout == "channels_last",
        "raises RuntimeError (it views the tensor's memory as the flattened matrix)",
        "writes it like any other strided tensor",
        "torch's is a bug: channels_last is the layout of convolution weights",
        Case(-13, "orthogonal_", (8, 3, 2, 2), torch.float32, "channels_last", {}, "global"),
    ),
    Difference(
        "orthogonal_ with a tensor gain of several elements",
        lambda c: c.fn == "orthogonal_" and _is_tensor(_arg(c, "gain"), numel=lambda n: n > 1),
        "multiplies by it, broadcasting over the trailing dim when the shapes fit",
        "takes one number (TypeError/RuntimeError otherwise)",
        "gain is a scalar; per-column scaling breaks orthogonality silently",
        Case(-9, "orthogonal_", (3, 2), torch.float32, "contiguous",
             {"gain": torch.tensor([0.5, 1.0])}, "global"),
    ),
    Difference(
        "trunc_normal_ with a bool as mean, a or b",
        lambda c: c.fn == "trunc_normal_" and any(
            isinstance(_arg(c, n), (bool, np.bool_)) or _is_tensor(_arg(c, n), dtype=torch.bool)
            for n in ("mean", "a", "b")),
        "raises RuntimeError where its arithmetic subtracts a bool (a bool tensor, or a bool "
        "from a tensor in its rejection branch)",
        "takes it as 0 or 1, as every function takes a bool",
        "consistency: a bool is a number everywhere else, in torch too",
        Case(-10, "trunc_normal_", (5,), torch.float32, "contiguous",
             {"a": torch.tensor(False)}, "global"),
    ),
    Difference(
        "trunc_normal_ with a mean beyond float32 (or a std, with [a, b] unbounded) on a float32 "
        "or 16-bit tensor",
        lambda c: c.fn == "trunc_normal_" and c.dtype in (torch.float32, torch.float16, torch.bfloat16)
        and _beyond_float32(c),
        "computes in Python doubles: uniform-looking values, infinities or an OverflowError",
        "raises OverflowError/RuntimeError (RangeError): such tensors are drawn in float32",
        "the values would be infinite or arbitrary; a std beyond float32 on a bounded [a, b] "
        "is fine (the values are uniform there, as torch's)",
        Case(-12, "trunc_normal_", (5,), torch.float32, "contiguous", {"mean": 1e300, "std": 1e300},
             "global"),
    ),
]


def deliberate(case: Case) -> list[Difference]:
    return [d for d in DIFFERENCES if d.applies(case)]


# ------------------------------------------------------------------------ running

DEFAULTS = {
    name: {p.name: p.default for p in inspect.signature(getattr(torch.nn.init, name)).parameters.values()
           if p.default is not inspect.Parameter.empty}
    for name in ARGS
}
CLEAN_ARGS = {"val": 0.5, "sparsity": 0.5}  # required arguments, good values
CLEAN_SHAPE = {"dirac_": (6, 4, 3), "eye_": (4, 3), "sparse_": (4, 3)}


class Outcome(NamedTuple):
    error: BaseException | None
    warnings: tuple[str, ...]
    returned: Any = None


def _call(module, case: Case, tensor: torch.Tensor, generator) -> Outcome:
    kwargs = dict(case.args)
    if case.fn in RANDOM:
        if case.rng_mode == "generator" or (case.rng_mode == "key" and module is torch.nn.init):
            kwargs["generator"] = generator
        elif case.rng_mode == "key":
            kwargs["key"] = case.index
    scope = torch.inference_mode() if case.layout == "inference_in_mode" else contextlib.nullcontext()
    with warnings.catch_warnings(record=True) as caught, scope:
        warnings.simplefilter("always")
        try:
            returned = getattr(module, case.fn)(tensor, **kwargs)
        except Exception as e:  # noqa: BLE001 - comparing exception types is the point
            return Outcome(e, _init_warnings(caught))
    return Outcome(None, _init_warnings(caught), returned)


def _init_warnings(caught) -> tuple[str, ...]:
    """The UserWarnings ``torch.nn.init`` itself emits (other sources vary)."""
    keep = ("Initializing zero-element tensors is a no-op", "mean is more than 2 std from [a, b]")
    return tuple(sorted({k for w in caught for k in keep if k in str(w.message)}))


def torch_outcome(case: Case) -> Outcome:
    built = build(case)
    return _call(torch.nn.init, case, built.tensor, torch.Generator().manual_seed(0))


def allowed_errors(case: Case, theirs: Outcome) -> set[type]:
    """Exception types xinit may raise for ``case``: torch's, and where the call makes
    several mistakes, torch's for a part of them: the tensor as it is (or with its dtype
    or layout made plain) with good arguments, or a plain tensor with the case's
    arguments (all, one at a time, or all but one). Where a deliberate difference
    makes torch succeed on such a part, xinit's error for it counts."""
    types = {type(theirs.error)} if theirs.error is not None else set()
    clean = {name: CLEAN_ARGS.get(name, DEFAULTS[case.fn].get(name)) for name in case.args}
    plain = dict(shape=CLEAN_SHAPE.get(case.fn, (4, 3)), dtype=torch.float32, layout="contiguous")
    variants = [case._replace(args=clean), case._replace(args=clean, dtype=torch.float32),
                case._replace(args=clean, layout="contiguous"), case._replace(**plain)]
    variants += [case._replace(**plain, args={**clean, name: value}) for name, value in case.args.items()]
    variants += [case._replace(**plain, args={**case.args, name: clean[name]}) for name in case.args]
    for variant in variants:
        if build(variant) is None or _torch_would_hang(variant):  # e.g. std made 1 far in a tail
            continue
        outcome = torch_outcome(variant)
        if outcome.error is None and deliberate(variant):
            built = build(variant)
            outcome = _call(xt, variant, built.tensor, torch.Generator().manual_seed(0))
        if outcome.error is not None:
            types.add(type(outcome.error))
    return types


def realized(case: Case) -> list[Case]:
    """The same call on real tensors (see :data:`VALIDATED_ANYWAY`): the same shape on the
    CPU (for meta), and the shape with its empty dims made non-empty."""
    plain = "contiguous" if case.layout == "meta" else case.layout
    cases = [case._replace(layout=plain)] if case.layout == "meta" else []
    if 0 in case.shape:
        cases.append(case._replace(layout=plain, shape=tuple(d or 2 for d in case.shape)))
    return cases


def _snapshot(t: torch.Tensor | None) -> torch.Tensor | None:
    if t is None or t.is_meta:
        return None
    with torch.inference_mode(False), torch.no_grad():
        return t.detach().clone()


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values, NaN equal to NaN."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_complex():
        return _same(torch.view_as_real(a), torch.view_as_real(b))
    if a.dtype.is_floating_point:
        return bool(((a == b) | (torch.isnan(a) & torch.isnan(b))).all())
    return torch.equal(a, b)


def _version(t: torch.Tensor) -> int | None:
    return None if t.is_inference() else t._version


def _finite(t: torch.Tensor) -> bool:
    if not (t.dtype.is_floating_point or t.is_complex()) or t.is_meta:
        return True
    with torch.inference_mode(False):
        return bool(torch.isfinite(t.detach()).all())


def _has_nan(t: torch.Tensor) -> bool:
    if not (t.dtype.is_floating_point or t.is_complex()) or t.is_meta:
        return False
    with torch.inference_mode(False):
        return bool(torch.isnan(t.detach()).any())


def _well_inside_range(t: torch.Tensor) -> bool:
    """torch's values are all below 1/16 of the dtype's largest (so a same-distribution draw
    reaching infinity is not a matter of luck)."""
    if not (t.dtype.is_floating_point or t.is_complex()) or t.is_meta or not t.numel():
        return True
    with torch.inference_mode(False):
        biggest = t.detach().abs().max().double().item()
    return biggest <= torch.finfo(t.real.dtype if t.is_complex() else t.dtype).max / 16


def _describe(e: BaseException | None) -> str:
    return "success" if e is None else f"{type(e).__name__}: {e}"


def mismatch(case: Case, ours: Outcome, theirs: Outcome) -> str | None:
    """How xinit's failure (or success) and warnings disagree with torch's; None if they agree."""
    differences = deliberate(case)
    if theirs.error is not None and ours.error is None:
        return None if differences else f"{case}: torch raised {_describe(theirs.error)}; xinit did not"
    if theirs.error is None and ours.error is not None:
        return None if differences else f"{case}: torch succeeded; xinit raised {_describe(ours.error)}"
    if ours.warnings != theirs.warnings:
        return f"{case}: warnings {ours.warnings} vs torch's {theirs.warnings}"
    if ours.error is not None:
        allowed = allowed_errors(case, theirs)
        if not isinstance(ours.error, tuple(allowed)):
            return (f"{case}: xinit raised {_describe(ours.error)}; torch raised {_describe(theirs.error)} "
                    f"(for the mistakes one by one: {sorted(t.__name__ for t in allowed)})")
        if len(str(ours.error)) <= 15:
            return f"{case}: the message should say what was wrong"
    return None


def check_failure_matches(case: Case, ours: Outcome, theirs: Outcome) -> None:
    """xinit fails where torch fails, with its exception type and warnings; on meta and
    zero-element tensors, where torch skips checks, as torch on the same call made real."""
    problem = mismatch(case, ours, theirs)
    if problem and VALIDATED_ANYWAY in deliberate(case):
        if any(mismatch(real, ours, torch_outcome(real)) is None for real in realized(case)):
            return
    assert problem is None, problem


def run_case(case: Case) -> None:
    theirs_built, ours_built = build(case), build(case)
    torch.manual_seed(case.index)
    v_theirs = _version(theirs_built.tensor)
    theirs = _call(torch.nn.init, case, theirs_built.tensor, torch.Generator().manual_seed(case.index))

    g_ours = torch.Generator().manual_seed(case.index)
    torch.manual_seed(case.index + 1)
    global_before, gen_before = torch.get_rng_state(), g_ours.get_state()
    t = ours_built.tensor
    memory = ours_built.base if ours_built.base is not None else t
    before = _snapshot(memory)
    v_before, strides, grad_fn, requires_grad = _version(t), t.stride(), t.grad_fn, t.requires_grad
    ptr = None if t.is_meta else t.data_ptr()
    ours = _call(xt, case, t, g_ours)
    global_used = not torch.equal(torch.get_rng_state(), global_before)
    generator_used = not torch.equal(g_ours.get_state(), gen_before)

    check_failure_matches(case, ours, theirs)
    if ours.error is not None:  # nothing changed, no random state used
        if before is not None:
            assert _same(_snapshot(memory), before), f"{case}: a failed call changed the tensor"
        assert _version(t) == v_before, f"{case}: a failed call bumped the version counter"
        assert not global_used, f"{case}: a failed call consumed the global RNG"
        assert not generator_used, f"{case}: a failed call consumed the generator"
        return

    # success: the in-place contract
    assert ours.returned is t, f"{case}: the tensor itself must be returned"
    if ptr is not None:
        assert t.data_ptr() == ptr and t.stride() == strides, f"{case}: storage or strides changed"
    assert t.requires_grad == requires_grad and t.grad_fn is grad_fn, f"{case}: autograd state changed"
    if v_before is not None and theirs.error is None:
        bumped = _version(theirs_built.tensor) > v_theirs
        assert (_version(t) > v_before) == bumped, (
            f"{case}: the version counter {'did not move' if bumped else 'moved'}; torch's "
            f"{'did' if bumped else 'did not'}")
    if ours_built.view is not None and before is not None and case.layout != "expanded":
        expected = before.clone()
        with torch.no_grad():
            ours_built.view(expected).copy_(_snapshot(t))
        assert _same(_snapshot(memory), expected), f"{case}: memory outside the view changed"
    if theirs.error is None and _finite(theirs_built.tensor):
        assert not _has_nan(t), f"{case}: NaN where torch has none"
        if _well_inside_range(theirs_built.tensor):  # else an inf is a matter of luck
            assert _finite(t), f"{case}: inf where torch's values are far from overflowing"
    if case.fn in DETERMINISTIC and theirs.error is None and before is not None:
        assert _same(_snapshot(t), _snapshot(theirs_built.tensor)), f"{case}: values differ from torch's"
    if case.rng_mode != "global":
        assert not global_used, f"{case}: a call with generator= or key= consumed the global RNG"


@pytest.mark.parametrize("index", range(FAST_CASES), ids=lambda i: f"case-{i}")
def test_fuzz(index):
    run_case(make_case(index))


@pytest.mark.slow
@pytest.mark.parametrize("index", range(FAST_CASES, FAST_CASES + SLOW_CASES), ids=lambda i: f"case-{i}")
def test_fuzz_more(index):
    run_case(make_case(index))


# ------------------------------------------------------------- the differences table


@pytest.mark.parametrize("row", DIFFERENCES, ids=lambda d: d.title)
def test_difference_is_real(row):
    """Each deliberate difference still is one: on its example, torch and xinit differ in
    success or exception type, or in whether the global RNG is used."""
    assert row.applies(row.example)

    def outcome(module):
        torch.manual_seed(0)
        state = torch.get_rng_state()
        got = _call(module, row.example, build(row.example).tensor, torch.Generator().manual_seed(0))
        return type(got.error), not torch.equal(torch.get_rng_state(), state)

    assert outcome(torch.nn.init) != outcome(xt)


def test_differences_are_documented():
    """docs/torch-defaults.md lists exactly these rows, word for word, in this order."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "torch-defaults.md").read_text(encoding="utf-8")
    section = page.split("## Differences from torch.nn.init", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("| ") and not ln.startswith("| difference")]
    documented = [[cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", ln)[1:-1]]
                  for ln in lines]
    assert documented == [[d.title, d.torch_does, d.xinit_does, d.reason] for d in DIFFERENCES]
