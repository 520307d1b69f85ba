"""Initializer specs: what to draw, as frozen, hashable, validated data.

A spec holds an initializer's arguments (never a shape or a key). It is checked
when it is built, round-trips through :meth:`Spec.to_config` /
:func:`from_config`, and *plans* a canonical ``(out, in, *receptive)`` shape to a
plan that the kernels run. The same spec object serves the torch adapter, the
flax adapter and recipes; the formulas live here once.

Complex dtypes: :meth:`Spec.complex_plan` says how a spec draws complex numbers.
Random ones are drawn as their *real view* (:class:`RealView`: the real and
imaginary parts interleaved, ``torch.view_as_real``'s layout) in the matching
real dtype; constant, eye and dirac fill the complex dtype itself.
"""

from __future__ import annotations

import math
import numbers
import operator
import warnings
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, NamedTuple

from .errors import (
    ArgumentTypeError,
    BoundsError,
    ComplexArgumentError,
    DtypeError,
    IntegerError,
    ModeError,
    ModeTypeError,
    NotScalarError,
    ShapeError,
    ZeroSizeError,
)
from .gains import calculate_gain
from .layout import compute_fans

__all__ = [
    "Spec",
    "Elementwise",
    "OrthogonalPlan",
    "SparsePlan",
    "RealView",
    "UnitaryPlan",
    "ComplexSparsePlan",
    "Uniform",
    "Normal",
    "TruncNormal",
    "Constant",
    "Ones",
    "Zeros",
    "Eye",
    "Dirac",
    "XavierUniform",
    "XavierNormal",
    "KaimingUniform",
    "KaimingNormal",
    "Orthogonal",
    "Sparse",
    "VarianceScaling",
    "TruncatedNormal",
    "REGISTRY",
    "from_config",
    "complex_form",
    "FAN_MODES",
    "VS_MODES",
    "VS_DISTRIBUTIONS",
]


class Elementwise(NamedTuple):
    """Plan: every element from its flat index (see :data:`xinit.core.distributions.FAMILIES`)."""

    family: str
    fparams: tuple = ()
    iparams: tuple = ()


class OrthogonalPlan(NamedTuple):
    rows: int
    cols: int
    gain: float


class SparsePlan(NamedTuple):
    zeros: int
    std: float


class RealView(NamedTuple):
    """Plan of a complex tensor: ``plan`` drawn on its real view ``(*shape, 2)``.

    The real view holds each element's real and imaginary part side by side
    (``torch.view_as_real``), in the real dtype of the same precision
    (complex64 -> float32, complex128 -> float64).
    """

    plan: Any


class UnitaryPlan(NamedTuple):
    """Plan (inside a :class:`RealView`): a Haar-random matrix with orthonormal
    rows or columns over the complex numbers, times ``gain``."""

    rows: int
    cols: int
    gain: float


class ComplexSparsePlan(NamedTuple):
    """Plan (inside a :class:`RealView`): complex ``N(0, std)`` values
    (``E|w|^2 = std^2``) with exactly ``zeros`` zero elements in every column."""

    zeros: int
    std: float


# Families that fill the complex dtype itself (no randomness: a value, an index
# pattern); the kernels cast them like any other dtype.
_FILL_FAMILIES = ("constant", "eye", "dirac")


def complex_form(plan, name: str):
    """The complex counterpart of an :class:`Elementwise` plan, as torch draws it.

    Fills stay as they are (drawn in the complex dtype); ``uniform`` draws each
    part from the same interval; ``normal`` draws each part with standard
    deviation ``std / sqrt(2)``, so that ``E|w - mean|^2 = std^2`` (torch's and
    JAX's complex normal). Anything else has no complex form.
    """
    if isinstance(plan, Elementwise):
        if plan.family in _FILL_FAMILIES:
            return plan
        if plan.family == "uniform":
            return RealView(plan)
        if plan.family == "normal":
            mean, std = plan.fparams
            return RealView(Elementwise("normal", (mean, std / math.sqrt(2))))
    raise no_complex_form(name)


def no_complex_form(name: str) -> DtypeError:
    """The error for a spec without a complex form."""
    return DtypeError(
        f"{name} does not support complex dtypes (complex64/complex128 are supported by "
        "uniform, normal, constant, ones, zeros, eye, dirac, the xavier/kaiming and "
        "variance-scaling families, orthogonal and sparse)"
    )


def _is_complex(value) -> bool:
    if isinstance(value, numbers.Complex) and not isinstance(value, numbers.Real):
        return True  # complex, numpy complex scalars
    dtype = getattr(value, "dtype", None)  # torch tensors, numpy arrays
    return bool(getattr(dtype, "is_complex", False)) or getattr(dtype, "kind", "") == "c"


def _number(name: str, arg: str, value, what: str = "a real number"):
    """The one check of every numeric argument: ``value`` as a Python number, or the error
    torch raises for it.

    Accepts Python and numpy numbers and 0-d arrays or tensors (their ``item()``).
    Rejects strings and bytes, numeric ones included (``'0.5'``: torch raises
    ``TypeError`` too), ``None`` and other objects (:class:`ArgumentTypeError`), and
    arrays or tensors of more than one element (:class:`NotScalarError`). Complex
    values are returned; callers that need a real number reject them.
    """
    if isinstance(value, (str, bytes)) or value is None:
        raise ArgumentTypeError(
            f"{name}: {arg} must be {what}; got {type(value).__name__} {value!r}"
            + (" (strings are not converted, as in torch)" if value is not None else "")
        )
    shape = getattr(value, "shape", None)
    if shape is not None and len(shape) != 0:
        raise NotScalarError(
            f"{name}: {arg} must be a single number; got an array of shape {tuple(shape)}"
        )
    if isinstance(value, numbers.Number):
        return value.item() if hasattr(value, "item") else value
    if shape is not None and hasattr(value, "item"):
        return value.item()  # 0-d tensors and arrays
    raise ArgumentTypeError(f"{name}: {arg} must be {what}; got {type(value).__name__} {value!r}")


def _real(name: str, arg: str, value) -> float:
    """``value`` as a float, if it is one real number (see :func:`_number`)."""
    number = _number(name, arg, value)
    if _is_complex(number):
        raise ComplexArgumentError(f"{name}: {arg} must be a real number; got {value!r}")
    try:
        return float(number)
    except (TypeError, ValueError):  # e.g. decimal.Decimal
        raise ArgumentTypeError(
            f"{name}: {arg} must be a real number; got {type(value).__name__} {value!r}"
        ) from None


def _int(name: str, arg: str, value) -> int:
    """``value`` as an int, if it is one integer (bools count, as in torch)."""
    number = _number(name, arg, value, "an int")
    if _is_complex(number):
        raise ComplexArgumentError(f"{name}: {arg} must be an int; got {value!r}")
    try:
        return operator.index(number)
    except TypeError:
        raise IntegerError(f"{name}: {arg} must be an int; got {type(value).__name__} {value!r}") from None


REGISTRY: dict[str, type[Spec]] = {}


@dataclass(frozen=True)
class Spec:
    """Base of all initializer specs.

    Subclasses set ``name`` (the registry key), validate in ``__post_init__`` and
    implement :meth:`plan`.
    """

    name: ClassVar[str] = ""
    #: Whether values depend on the key (False for constant, ones, zeros, eye, dirac).
    random: ClassVar[bool] = True

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if cls.name:
            REGISTRY[cls.name] = cls

    def plan(self, shape: tuple[int, ...]):
        """The plan that draws this spec on the canonical ``shape``."""
        raise NotImplementedError

    def complex_plan(self, shape: tuple[int, ...]):
        """The plan that draws this spec on the canonical ``shape`` in a complex dtype.

        A :class:`RealView` for random values, the plan itself for fills (see
        :func:`complex_form`). Raises :class:`~xinit.core.errors.DtypeError`
        where the spec has no complex form (e.g. truncated normals).
        """
        return complex_form(self.plan(shape), self.name)

    def to_config(self) -> dict[str, Any]:
        """``{"name": ..., **arguments}``; :func:`from_config` inverts it."""
        return {"name": self.name, **asdict(self)}

    def __repr__(self) -> str:
        args = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self))
        return f"{self.name}({args})"


def from_config(config: dict[str, Any]) -> Spec:
    """Rebuild a spec from :meth:`Spec.to_config` output.

    >>> from_config(Uniform(-1.0, 1.0).to_config())
    uniform(a=-1.0, b=1.0)
    """
    config = dict(config)
    name = config.pop("name", None)
    if name not in REGISTRY:
        raise ValueError(
            f"from_config: unknown initializer name {name!r}; known: {sorted(REGISTRY)}"
        )
    return REGISTRY[name](**config)


# ---------------------------------------------------------------- plain draws


@dataclass(frozen=True, repr=False)
class Uniform(Spec):
    r"""Uniform :math:`\mathcal{U}(a, b)`."""

    name: ClassVar[str] = "uniform"
    a: float = 0.0
    b: float = 1.0

    def __post_init__(self):
        a, b = _real("uniform", "a", self.a), _real("uniform", "b", self.b)
        if not (math.isfinite(a) and math.isfinite(b)):
            raise BoundsError(f"uniform: a and b must be finite numbers; got a={a}, b={b}")
        if a > b:
            raise BoundsError(
                f"uniform: a must be <= b (torch: uniform_ expects to return a [from, to) range); "
                f"got a={a} > b={b}"
            )

    def plan(self, shape):
        return Elementwise("uniform", (float(self.a), float(self.b)))


@dataclass(frozen=True, repr=False)
class Normal(Spec):
    r"""Normal :math:`\mathcal{N}(\text{mean}, \text{std}^2)`, untruncated."""

    name: ClassVar[str] = "normal"
    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self):
        _real("normal", "mean", self.mean)
        std = _real("normal", "std", self.std)
        if not std >= 0:  # NaN too
            raise BoundsError(f"normal: std must be >= 0.0 (torch: normal expects std >= 0.0); got std={std}")

    def plan(self, shape):
        return Elementwise("normal", (float(self.mean), float(self.std)))


@dataclass(frozen=True, repr=False)
class TruncNormal(Spec):
    r"""Normal :math:`\mathcal{N}(\text{mean}, \text{std}^2)` restricted to ``[a, b]``.

    ``a`` and ``b`` are **absolute** bounds (torch semantics), not multiples of
    ``std``; there is no variance correction.
    """

    name: ClassVar[str] = "trunc_normal"
    mean: float = 0.0
    std: float = 1.0
    a: float = -2.0
    b: float = 2.0

    def __post_init__(self):
        try:  # torch's warning, on the arguments as given, before any of its errors
            far = self.mean < self.a - 2 * self.std or self.mean > self.b + 2 * self.std
        except Exception:  # noqa: BLE001 - torch raises there; so do the checks below
            far = False
        if far:
            warnings.warn(
                "mean is more than 2 std from [a, b] in nn.init.trunc_normal_. "
                "The distribution of values may be incorrect.",
                stacklevel=3,
            )
        mean = _real("trunc_normal", "mean", self.mean)
        std = _real("trunc_normal", "std", self.std)
        a, b = _real("trunc_normal", "a", self.a), _real("trunc_normal", "b", self.b)
        if std == 0:
            raise ZeroSizeError(
                "trunc_normal: std must be > 0 (the bounds are standardized by std); got std=0"
            )
        if not (0 < std < math.inf and math.isfinite(mean)):
            raise BoundsError(
                f"trunc_normal: mean must be finite and std finite and > 0; got mean={mean}, std={std}"
            )
        if a > b:
            raise BoundsError(f"trunc_normal: a must be <= b; got a={a} > b={b}")
        if math.isnan(a) or math.isnan(b) or a == b == math.copysign(math.inf, a):
            raise BoundsError(
                "trunc_normal: a and b must be numbers (either may be infinite, not both the "
                f"same infinity); got a={a}, b={b}"
            )

    def plan(self, shape):
        return Elementwise(
            "trunc_normal", (float(self.mean), float(self.std), float(self.a), float(self.b))
        )

    def complex_plan(self, shape):
        raise no_complex_form(self.name)  # torch's trunc_normal_ has none either (erfinv_)


@dataclass(frozen=True, repr=False)
class Constant(Spec):
    """Every element ``val``."""

    name: ClassVar[str] = "constant"
    random: ClassVar[bool] = False
    val: float = 0.0

    def __post_init__(self):
        _number("constant", "val", self.val, "a number")

    def plan(self, shape):
        return Elementwise("constant", (_number("constant", "val", self.val, "a number"),))


@dataclass(frozen=True, repr=False)
class Ones(Spec):
    """Every element 1."""

    name: ClassVar[str] = "ones"
    random: ClassVar[bool] = False

    def plan(self, shape):
        return Elementwise("constant", (1,))


@dataclass(frozen=True, repr=False)
class Zeros(Spec):
    """Every element 0."""

    name: ClassVar[str] = "zeros"
    random: ClassVar[bool] = False

    def plan(self, shape):
        return Elementwise("constant", (0,))


@dataclass(frozen=True, repr=False)
class Eye(Spec):
    """The (rectangular) identity matrix; 2-D only."""

    name: ClassVar[str] = "eye"
    random: ClassVar[bool] = False

    def plan(self, shape):
        if len(shape) != 2:
            raise ShapeError(
                f"Only tensors with 2 dimensions are supported by eye; got shape {tuple(shape)}"
            )
        return Elementwise("eye", (), (max(shape[1], 1),))


@dataclass(frozen=True, repr=False)
class Dirac(Spec):
    """The Dirac delta: a convolution kernel that preserves the identity of the inputs.

    For each group ``g`` and ``d < min(out/groups, in)``:
    ``w[g*out/groups + d, d, *centre] = 1`` with ``centre = k // 2`` per spatial
    dim; everything else 0. 3-, 4- or 5-D only.
    """

    name: ClassVar[str] = "dirac"
    random: ClassVar[bool] = False
    groups: int = 1

    def __post_init__(self):
        groups = _int("dirac", "groups", self.groups)
        if groups == 0:
            raise ZeroSizeError("dirac: groups must be a positive int; got groups=0")
        if groups < 0:
            raise BoundsError(f"dirac: groups must be a positive int; got groups={groups}")

    def plan(self, shape):
        groups = _int("dirac", "groups", self.groups)
        if len(shape) not in (3, 4, 5):
            raise ShapeError(
                "Only tensors with 3, 4, or 5 dimensions are supported by dirac; "
                f"got shape {tuple(shape)}"
            )
        if shape[0] % groups:
            raise ShapeError(
                f"dim 0 must be divisible by groups: dirac got shape {tuple(shape)} "
                f"and groups={groups}"
            )
        k = math.prod(shape[2:])
        centre = 0
        for size in shape[2:]:
            centre = centre * size + size // 2
        return Elementwise("dirac", (), (shape[1], k, centre, shape[0] // groups))


# ----------------------------------------------------------- fan-based draws


def _fan_sum(name: str, shape) -> int:
    fan_in, fan_out = compute_fans(shape)
    if fan_in + fan_out == 0:
        raise ZeroSizeError(
            f"{name}: fan_in + fan_out is 0 for shape {tuple(shape)} (torch raises "
            "'float division by zero' here)"
        )
    return fan_in + fan_out


@dataclass(frozen=True, repr=False)
class XavierUniform(Spec):
    r""":math:`\mathcal{U}(-a, a)`, :math:`a = \text{gain}\sqrt{6/(\text{fan\_in}+\text{fan\_out})}`."""

    name: ClassVar[str] = "xavier_uniform"
    gain: float = 1.0

    def __post_init__(self):
        gain = _real("xavier_uniform", "gain", self.gain)
        if not gain >= 0:  # NaN too
            raise BoundsError(f"xavier_uniform: gain must be >= 0; got gain={gain}")

    def plan(self, shape):
        std = float(self.gain) * math.sqrt(2.0 / float(_fan_sum("xavier_uniform", shape)))
        a = math.sqrt(3.0) * std
        return Elementwise("uniform", (-a, a))


@dataclass(frozen=True, repr=False)
class XavierNormal(Spec):
    r""":math:`\mathcal{N}(0, \text{gain}^2 \cdot 2/(\text{fan\_in}+\text{fan\_out}))`, untruncated."""

    name: ClassVar[str] = "xavier_normal"
    gain: float = 1.0

    def __post_init__(self):
        gain = _real("xavier_normal", "gain", self.gain)
        if not gain >= 0:  # NaN too
            raise BoundsError(f"xavier_normal: gain must be >= 0; got gain={gain}")

    def plan(self, shape):
        std = float(self.gain) * math.sqrt(2.0 / float(_fan_sum("xavier_normal", shape)))
        return Elementwise("normal", (0.0, std))


FAN_MODES = ("fan_in", "fan_out")


def _check_mode(name: str, mode, allowed) -> str:
    """``mode.lower()`` if it is one of ``allowed``, as torch's ``_calculate_correct_fan``."""
    lower = getattr(mode, "lower", None)
    if not callable(lower):
        raise ModeTypeError(
            f"{name}: mode must be a string, one of {list(allowed)}; got {mode!r} "
            f"(torch raises AttributeError: '{type(mode).__name__}' object has no attribute "
            "'lower')"
        )
    mode = lower()
    if mode not in allowed:
        raise ModeError(f"Mode {mode} not supported, please use one of {list(allowed)} "
                        f"({name}; case-insensitive)")
    return mode


@dataclass(frozen=True, repr=False)
class _Kaiming(Spec):
    a: float = 0
    mode: str = "fan_in"
    nonlinearity: str = "leaky_relu"

    def __post_init__(self):
        _check_mode(self.name, self.mode, FAN_MODES)
        gain = calculate_gain(self.nonlinearity, self.a)
        if math.isnan(gain):
            raise BoundsError(f"{self.name}: the gain is nan for nonlinearity="
                              f"{self.nonlinearity!r}, a={self.a!r} (torch: the bounds are out of range)")

    def _std(self, shape) -> float:
        fans = compute_fans(shape)
        fan = fans.fan_in if self.mode.lower() == "fan_in" else fans.fan_out
        gain = calculate_gain(self.nonlinearity, self.a)
        if fan == 0:
            return 0.0  # only for zero-element shapes: nothing is drawn
        return gain / math.sqrt(fan)


@dataclass(frozen=True, repr=False)
class KaimingUniform(_Kaiming):
    r""":math:`\mathcal{U}(-b, b)`, :math:`b = \text{gain}\sqrt{3/\text{fan\_mode}}` (He et al. 2015)."""

    name: ClassVar[str] = "kaiming_uniform"

    def plan(self, shape):
        bound = math.sqrt(3.0) * self._std(shape)
        return Elementwise("uniform", (-bound, bound))


@dataclass(frozen=True, repr=False)
class KaimingNormal(_Kaiming):
    r""":math:`\mathcal{N}(0, \text{gain}^2/\text{fan\_mode})`, untruncated (He et al. 2015)."""

    name: ClassVar[str] = "kaiming_normal"

    def plan(self, shape):
        return Elementwise("normal", (0.0, self._std(shape)))


# ------------------------------------------------------------ structured


@dataclass(frozen=True, repr=False)
class Orthogonal(Spec):
    """A (semi-)orthogonal matrix times ``gain``; trailing dims are flattened.

    rows = ``shape[0]``, cols = ``prod(shape[1:])``; Haar-distributed (Saxe et al. 2013).
    """

    name: ClassVar[str] = "orthogonal"
    gain: float = 1.0

    def __post_init__(self):
        _real("orthogonal", "gain", self.gain)

    def plan(self, shape):
        if len(shape) < 2:
            raise ShapeError(
                "Only tensors with 2 or more dimensions are supported by orthogonal; "
                f"got shape {tuple(shape)}"
            )
        return OrthogonalPlan(shape[0], math.prod(shape[1:]), float(self.gain))

    def complex_plan(self, shape):
        """Unitary: orthonormal rows or columns over the complex numbers (Haar), as
        ``jax.random.orthogonal`` draws for complex dtypes."""
        plan = self.plan(shape)
        return RealView(UnitaryPlan(plan.rows, plan.cols, plan.gain))


def sparse_zero_count(sparsity: float, rows: int) -> int:
    """Zeros per column: ``len(range(rows)[:ceil(sparsity * rows)])``, as torch."""
    return len(range(rows)[: int(math.ceil(sparsity * rows))])


@dataclass(frozen=True, repr=False)
class Sparse(Spec):
    """N(0, std) with exactly ``ceil(sparsity * rows)`` zeros in every column (Martens 2010)."""

    name: ClassVar[str] = "sparse"
    sparsity: float = 0.9
    std: float = 0.01

    def __post_init__(self):
        _real("sparse", "sparsity", self.sparsity)
        std = _real("sparse", "std", self.std)
        if not std >= 0:  # NaN too
            raise BoundsError(f"sparse: std must be >= 0.0 (torch: normal expects std >= 0.0); got std={std}")

    def plan(self, shape):
        if len(shape) != 2:
            raise ShapeError(
                f"Only tensors with 2 dimensions are supported by sparse; got shape {tuple(shape)}"
            )
        return SparsePlan(sparse_zero_count(float(self.sparsity), shape[0]), float(self.std))

    def complex_plan(self, shape):
        """Complex normal values (torch's ``normal_`` on a complex tensor) with the
        same zero count per column as the real case: whole elements are zeroed."""
        plan = self.plan(shape)
        return RealView(ComplexSparsePlan(plan.zeros, plan.std))


# ---------------------------------------------------- JAX-native semantics

VS_MODES = ("fan_in", "fan_out", "fan_avg", "fan_geo_avg")
VS_DISTRIBUTIONS = ("truncated_normal", "normal", "uniform")
# Standard deviation of N(0, 1) truncated to [-2, 2]: jax's variance correction.
_TRUNC2_STD = 0.87962566103423978
# jax's divisor for complex normals whose modulus is truncated at 2
# (jax/_src/nn/initializers.py); used as it is, so E|w|^2 is JAX's.
_COMPLEX_TRUNC2_STD = 0.95311164380491208


@dataclass(frozen=True, repr=False)
class VarianceScaling(Spec):
    r"""``jax.nn.initializers.variance_scaling``: variance ``scale / n``.

    ``n`` is fan_in, fan_out, their mean (``fan_avg``) or geometric mean
    (``fan_geo_avg``); ``truncated_normal`` is truncated at two standard
    deviations and rescaled to the target variance, as JAX does.

    Complex dtypes, as JAX: ``uniform`` draws from a disk of radius
    :math:`\sqrt{2\,\text{scale}/n}` (so :math:`E|w|^2 = \text{scale}/n`),
    ``normal`` a complex normal with :math:`E|w|^2 = \text{scale}/n`, and
    ``truncated_normal`` a complex normal whose modulus is truncated at 2 before
    scaling by :math:`\sqrt{\text{scale}/n} / 0.95311...` (JAX's constant).

    A zero-size shape raises :class:`~xinit.core.errors.ZeroSizeError` (a
    ``ZeroDivisionError``), as JAX's fan computation does.
    """

    name: ClassVar[str] = "variance_scaling"
    scale: float = 1.0
    mode: str = "fan_in"
    distribution: str = "truncated_normal"

    def __post_init__(self):
        if not _real("variance_scaling", "scale", self.scale) >= 0:
            raise BoundsError(f"variance_scaling: scale must be >= 0; got scale={self.scale}")
        if not isinstance(self.mode, str) or self.mode not in VS_MODES:
            raise ModeError(
                f"invalid mode for variance scaling initializer: {self.mode}; "
                f"mode must be one of {list(VS_MODES)}; got mode={self.mode!r}"
            )
        if not isinstance(self.distribution, str) or self.distribution not in VS_DISTRIBUTIONS:
            raise ModeError(
                f"invalid distribution for variance scaling initializer: {self.distribution}; "
                f"distribution must be one of {list(VS_DISTRIBUTIONS)}; "
                f"got distribution={self.distribution!r}"
            )

    def variance(self, fan_in: float, fan_out: float) -> float:
        """``scale / n`` for the given fans (both > 0)."""
        n = {
            "fan_in": fan_in,
            "fan_out": fan_out,
            "fan_avg": (fan_in + fan_out) / 2,
            "fan_geo_avg": math.sqrt(fan_in * fan_out),
        }[self.mode]
        return self.scale / n

    def _fans(self, shape) -> tuple[int, int]:
        if 0 in shape:
            raise ZeroSizeError(
                f"variance_scaling: division by zero: the fans of the zero-size shape "
                f"{tuple(shape)} are 0 (jax.nn.initializers raises ZeroDivisionError here too)"
            )
        return compute_fans(shape)

    def plan(self, shape):
        return self.plan_fans(*self._fans(shape))

    def complex_plan(self, shape):
        return self.complex_plan_fans(*self._fans(shape))

    def plan_fans(self, fan_in: float, fan_out: float):
        """The plan for a weight with these fans (a real dtype)."""
        variance = self.variance(fan_in, fan_out)
        if self.distribution == "uniform":
            bound = math.sqrt(3 * variance)
            return Elementwise("uniform", (-bound, bound))
        if self.distribution == "normal":
            return Elementwise("normal", (0.0, math.sqrt(variance)))
        std = math.sqrt(variance) / _TRUNC2_STD
        if std == 0:
            return Elementwise("constant", (0.0,))
        return Elementwise("trunc_normal", (0.0, std, -2 * std, 2 * std))

    def complex_plan_fans(self, fan_in: float, fan_out: float):
        """The plan for a complex weight with these fans (see the class docstring)."""
        variance = self.variance(fan_in, fan_out)
        if self.distribution == "uniform":
            return RealView(Elementwise("complex_disk", (math.sqrt(variance),)))
        if self.distribution == "normal":
            return RealView(Elementwise("normal", (0.0, math.sqrt(variance / 2))))
        return RealView(
            Elementwise("complex_trunc_normal", (math.sqrt(variance) / _COMPLEX_TRUNC2_STD, 2.0))
        )


@dataclass(frozen=True, repr=False)
class TruncatedNormal(Spec):
    """``jax.nn.initializers.truncated_normal``: bounds in units of ``stddev``, mean 0."""

    name: ClassVar[str] = "truncated_normal"
    stddev: float = 1e-2
    lower: float = -2.0
    upper: float = 2.0

    def __post_init__(self):
        if not _real("truncated_normal", "stddev", self.stddev) >= 0:
            raise BoundsError(f"truncated_normal: stddev must be >= 0; got stddev={self.stddev}")
        lo = _real("truncated_normal", "lower", self.lower)
        hi = _real("truncated_normal", "upper", self.upper)
        if not lo <= hi:  # NaN too
            raise BoundsError(f"truncated_normal: lower must be <= upper; got lower={lo}, upper={hi}")

    def plan(self, shape):
        s = float(self.stddev)
        if s == 0:
            return Elementwise("constant", (0.0,))
        return Elementwise("trunc_normal", (0.0, s, self.lower * s, self.upper * s))

    def complex_plan(self, shape):
        raise no_complex_form(self.name)  # jax.random.truncated_normal: float dtypes only
