"""Recipes: which initializer each parameter of a whole model gets, as plain data.

A :class:`Recipe` is an ordered tuple of :class:`Rule`. A rule matches a
parameter by its layer *kind* (``linear``, ``bilinear``, ``conv``,
``conv_transpose``, ``embedding``, ``recurrent``, ``attention``, ``norm``,
``prelu``, ``other``; or the layer's class name such as ``"LayerNorm"``), its
*role* in the layer (``weight``, ``bias``, ``running_mean``, ``weight_ih``,
``in_proj_weight``, ...) and optionally its canonical dotted *name* (a glob, or
a regular expression), and names an initializer: a :class:`~xinit.core.Spec`,
or a layer-dependent initializer from this module (:class:`FanInUniform`,
:class:`InvSqrtUniform`, :class:`AttrConstant`, :class:`PaddingZeroed`) that
becomes a spec once the parameter's layer is known. The first matching rule wins.

Recipes are frozen and hashable: they print, compare with ``==`` and are built by
users with the same API as the built-ins::

    >>> from xinit.core import Normal, Zeros
    >>> mine = Recipe("mine", (
    ...     Rule(Normal(0.0, 0.02), kind="linear", role="weight"),
    ...     Rule(Zeros(), role="bias"),
    ... )) + torch_default()
    >>> mine.rules[0]
    Rule(normal(mean=0.0, std=0.02), kind='linear', role='weight')

Framework adapters (``xinit.torch.initialize``, ``xinit.flax.initialize``) turn a
model into :class:`Param` records and call :meth:`Recipe.plan`; this module
never sees a tensor.

Built-ins (:data:`RECIPES`, :func:`get_recipe`): :func:`torch_default`,
:func:`resnet`, :func:`transformer`, :func:`gpt2`, :func:`dcgan`, :func:`vit`,
and the recipes of two libraries: ``"timm"``
(:func:`xinit.core.recipes_timm.timm`) and ``"hf"``
(:func:`xinit.core.recipes_hf.hf`, built from a transformers model's config).
The literature recipes end with the ``torch_default`` rules, so layers they say
nothing about keep PyTorch's defaults (as torchvision and timm do).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

from .specs import (
    Constant,
    KaimingNormal,
    KaimingUniform,
    Normal,
    Ones,
    Spec,
    TruncNormal,
    Uniform,
    XavierNormal,
    XavierUniform,
    Zeros,
)
from .specs import from_config as spec_from_config

__all__ = [
    "KINDS",
    "Param",
    "Derived",
    "FanInUniform",
    "InvSqrtUniform",
    "AttrConstant",
    "PaddingZeroed",
    "Resolved",
    "Rule",
    "Recipe",
    "Plan",
    "PlanEntry",
    "UnmatchedError",
    "UNMATCHED",
    "check_unmatched",
    "resolve",
    "torch_default",
    "resnet",
    "transformer",
    "gpt2",
    "dcgan",
    "vit",
    "RECIPES",
    "get_recipe",
    "at_any_depth",
    "init_config",
    "init_from_config",
    "DERIVED",
]

KINDS = (
    "linear",
    "bilinear",
    "conv",
    "conv_transpose",
    "embedding",
    "recurrent",
    "attention",
    "norm",
    "prelu",
    "other",
)


class UnmatchedError(LookupError, ValueError):
    """Parameters that no rule of a recipe matches (the message lists every name)."""


UNMATCHED = ("error", "ignore", "zeros")
"""What model-level initialization does with tensors no rule matches, in every adapter.

``xinit.torch.initialize``/``materialize``/``apply_fn`` and ``xinit.flax.initialize``
take ``unmatched=`` one of: ``"error"`` (the default) raises :class:`UnmatchedError`
listing them all before anything is written; ``"ignore"`` leaves them as they are
(``materialize``: they stay on ``meta``, with a warning naming them;
``xinit.flax.initialize``: an abstract leaf stays abstract, with a warning);
``"zeros"`` fills them with zeros."""


def check_unmatched(unmatched) -> str:
    """``unmatched`` if it is one of :data:`UNMATCHED`, else a ``ValueError``."""
    if not isinstance(unmatched, str) or unmatched not in UNMATCHED:
        raise ValueError(f"unmatched must be one of {list(UNMATCHED)}; got {unmatched!r}")
    return unmatched


# ------------------------------------------------------------------ parameters


@dataclass(frozen=True)
class Param:
    """What a recipe knows about one parameter (or buffer) of a model.

    Args:
        name: canonical dotted name (torch ``named_parameters`` name; flax path
            with the collection dropped and ``kernel``/``embedding``/``scale``
            -> ``weight``).
        kind: layer kind, one of :data:`KINDS`.
        role: the parameter's role in its layer (``weight``, ``bias``, ...).
        shape: the canonical shape (torch layout).
        dtype: a numpy dtype name, e.g. ``"float32"``.
        layer_type: the layer's class name (``"Linear"``, ``"Dense"``), or ``""``.
        layer: layer attributes that layer-dependent initializers read, as
            ``(key, value)`` pairs: the layer's plain attributes (numbers,
            strings, tuples of them: ``in_features``, ``padding_idx``,
            ``hidden_size``, ``init_values``, ...), ``weight_shape`` (the sibling
            weight's canonical shape) and ``ancestors`` (the names of the classes
            of the modules enclosing the layer, outermost first, each qualified
            and bare, bases included: what ``Rule(within=...)`` reads).
        buffer: True for buffers (running statistics, computed tables), False
            for parameters. Only rules with ``buffers=True`` match buffers.
        lineage: the layer's class and its bases, nearest first, each by
            qualified and bare name (``("torch.nn.modules.conv.Conv2d",
            "Conv2d", ...)``): a rule naming a class in ``kind=`` matches its
            subclasses through it.
    """

    name: str
    kind: str
    role: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    layer_type: str = ""
    layer: tuple[tuple[str, Any], ...] = ()
    buffer: bool = False
    lineage: tuple[str, ...] = ()

    def attr(self, key: str, default: Any = None) -> Any:
        """The layer attribute ``key`` (see ``layer``), or ``default``."""
        return dict(self.layer).get(key, default)


# ------------------------------------------------------ layer-dependent specs


class Resolved(NamedTuple):
    """A spec for a concrete parameter, plus rows to zero after drawing."""

    spec: Spec
    zero_rows: tuple[int, ...] = ()


#: Layer-dependent initializers by config name (``FanInUniform.name`` ...), for
#: :func:`init_from_config`.
DERIVED: dict[str, type[Derived]] = {}


class Derived:
    """Base of initializers whose arguments depend on the parameter's layer.

    Subclasses are frozen dataclasses with a class attribute ``name`` (their
    config name, registered in :data:`DERIVED`) and implement :meth:`resolve`.
    """

    name: ClassVar[str] = ""

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if cls.name:
            DERIVED[cls.name] = cls

    def resolve(self, param: Param) -> Resolved:
        raise NotImplementedError

    def to_config(self) -> dict[str, Any]:
        """``{"name": ..., **arguments}`` (specs among the arguments as their configs)."""
        if not self.name or not dataclasses.is_dataclass(self):
            raise TypeError(
                f"{type(self).__name__} cannot be written as a config: a Derived initializer needs a "
                "class attribute `name` and must be a dataclass"
            )
        config: dict[str, Any] = {"name": self.name}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            config[f.name] = init_config(value) if isinstance(value, (Spec, Derived)) else value
        return config

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Derived:
        args = {k: (init_from_config(v) if isinstance(v, Mapping) else v)
                for k, v in config.items() if k != "name"}
        return cls(**args)


def _need(param: Param, key: str, who: str):
    value = param.attr(key)
    if value is None:
        raise ValueError(
            f"{who} for parameter {param.name!r} needs the layer attribute {key!r}, which the "
            f"adapter did not provide (layer_type={param.layer_type!r}, kind={param.kind!r})"
        )
    return value


@dataclass(frozen=True)
class FanInUniform(Derived):
    r""":math:`\mathcal{U}(\pm 1/\sqrt{\text{fan\_in}})`, fan_in of the sibling weight.

    What ``torch.nn.Linear`` and ``_ConvNd`` do for their bias: the bound is
    ``1 / math.sqrt(fan_in)``, or 0 when fan_in is 0. The sibling weight's
    canonical shape comes from the layer attribute ``weight_shape``.
    """

    name: ClassVar[str] = "fan_in_uniform"

    def resolve(self, param: Param) -> Resolved:
        shape = _need(param, "weight_shape", "FanInUniform")
        fan_in = shape[1] * math.prod(shape[2:]) if len(shape) >= 2 else 0
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
        return Resolved(Uniform(-bound, bound))

    def __repr__(self) -> str:
        return "uniform(+-1/sqrt(fan_in of weight))"


@dataclass(frozen=True)
class InvSqrtUniform(Derived):
    r""":math:`\mathcal{U}(\pm 1/\sqrt{n})`, ``n`` the layer attribute ``attr``; 0 if ``n`` is 0.

    ``InvSqrtUniform("hidden_size")`` is every RNN/LSTM/GRU parameter's default;
    ``InvSqrtUniform("in1_features")`` is ``torch.nn.Bilinear``'s.
    """

    name: ClassVar[str] = "inv_sqrt_uniform"
    attr: str = "hidden_size"

    def resolve(self, param: Param) -> Resolved:
        n = _need(param, self.attr, "InvSqrtUniform")
        bound = 1.0 / math.sqrt(n) if n > 0 else 0
        return Resolved(Uniform(-bound, bound))

    def __repr__(self) -> str:
        return f"uniform(+-1/sqrt({self.attr}))"


@dataclass(frozen=True)
class AttrConstant(Derived):
    """Every element the value of the layer attribute ``attr``.

    Reads any plain attribute of the layer (``Param.layer``): timm's
    ``LayerScale`` keeps ``init_values``, ``torch.nn.PReLU`` keeps ``init``. A
    layer without the attribute raises a ``ValueError`` naming the parameter and
    the attributes the layer has, unless ``default`` is given (then the layer
    may lack it): ``AttrConstant("init", default=0.25)`` is ``torch.nn.PReLU``'s
    default, whose Flax counterpart keeps no ``init``.
    """

    name: ClassVar[str] = "attr_constant"
    attr: str
    default: float | None = None

    def __post_init__(self):
        if not isinstance(self.attr, str) or not self.attr:
            raise TypeError(f"AttrConstant: attr must be a non-empty string; got attr={self.attr!r}")

    def resolve(self, param: Param) -> Resolved:
        value = param.attr(self.attr)
        if value is None:
            if self.default is None:
                have = sorted(k for k, _ in param.layer if k not in ("ancestors", "weight_shape"))
                raise ValueError(
                    f"AttrConstant for parameter {param.name!r} reads the layer attribute "
                    f"{self.attr!r}, which its layer ({param.layer_type or param.kind}) does not have; "
                    f"the layer has: {', '.join(have) or 'no plain attributes'}. Name another "
                    "attribute, or give AttrConstant a default="
                )
            value = self.default
        return Resolved(Constant(value))

    def __repr__(self) -> str:
        if self.default is None:
            return f"constant({self.attr})"
        return f"constant({self.attr}, default={self.default!r})"


@dataclass(frozen=True)
class PaddingZeroed(Derived):
    """``spec``, then the embedding row ``padding_idx`` (a layer attribute) set to 0.

    Negative indices count from the end, as ``torch.nn.Embedding``; a layer
    without ``padding_idx`` gets ``spec`` alone.
    """

    name: ClassVar[str] = "padding_zeroed"
    spec: Spec = field(default_factory=lambda: Normal(0.0, 1.0))

    def resolve(self, param: Param) -> Resolved:
        idx = param.attr("padding_idx")
        if idx is None:
            return Resolved(self.spec)
        rows = param.shape[0]
        idx = idx + rows if idx < 0 else idx
        return Resolved(self.spec, (idx,))

    def __repr__(self) -> str:
        return f"{self.spec!r} with padding row 0"


Init = "Spec | Derived"


def resolve(init, param: Param) -> Resolved:
    """The concrete spec (and rows to zero) of ``init`` for ``param``."""
    if isinstance(init, Spec):
        return Resolved(init)
    if isinstance(init, Derived):
        return init.resolve(param)
    raise TypeError(f"a rule's init must be a Spec or a Derived initializer; got {init!r}")


def init_config(init) -> dict[str, Any]:
    """The config of a rule's initializer (a :class:`~xinit.core.Spec` or :class:`Derived`)."""
    if isinstance(init, (Spec, Derived)):
        return init.to_config()
    raise TypeError(f"a rule's init must be a Spec or a Derived initializer; got {init!r}")


def init_from_config(config: Mapping[str, Any]):
    """The initializer :func:`init_config` wrote: a Derived one by its name, else a spec."""
    name = config.get("name")
    if name in DERIVED:
        return DERIVED[name].from_config(config)
    return spec_from_config(dict(config))


# ----------------------------------------------------------------------- rules


def _names(value, arg: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    value = tuple(value)
    if not value or not all(isinstance(v, str) for v in value):
        raise TypeError(f"Rule {arg} must be a string, a tuple of strings or None; got {value!r}")
    return value


def _class_names(value, arg: str) -> tuple[str, ...] | None:
    """``kind=``/``within=``: strings as they are, classes by their qualified name."""
    if value is None:
        return None
    items = (value,) if isinstance(value, (str, type)) else value
    if isinstance(items, (list, tuple, set, frozenset)):
        items = tuple(items)
    if not isinstance(items, tuple) or not items or not all(isinstance(v, (str, type)) for v in items):
        raise TypeError(
            f"Rule {arg} must be a kind, a class name, a class, or a tuple of those; "
            f"got {value!r}"
        )
    return tuple(v if isinstance(v, str) else f"{v.__module__}.{v.__qualname__}" for v in items)


_GLOB = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Rule:
    """Match parameters and name their initializer.

    Args:
        init: a :class:`~xinit.core.Spec` or a :class:`Derived` initializer.
        kind: layer kind(s) (``"linear"``, ``"norm"``, ... see :data:`KINDS`),
            layer class name(s) (bare ``"Conv2d"`` or qualified
            ``"torch.nn.modules.conv.Conv2d"``; a glob such as ``"*RMSNorm"``
            matches class names), or classes. A class matches its subclasses
            too (timm's ``Conv2dSame`` is a ``"Conv2d"``). None matches any.
        role: role(s) in the layer (``"weight"``, ``"bias"``, ...); None matches any.
        name: glob pattern(s) on the canonical dotted name (``fnmatch``, case
            sensitive, ``*`` also crosses dots); None matches any.
        regex: a regular expression that must match the whole name; None matches any.
        within: class name(s) of which one must enclose the layer (the layer
            attribute ``ancestors``, e.g. ``"Transformer"``, or qualified
            ``"timm.models.resnet.Bottleneck"``); None matches any.
        min_ndim: the parameter must have at least this many dimensions.
        buffers: whether the rule may match buffers. A rule never writes a
            buffer unless it says so: only the running-statistics rules of the
            built-in recipes do. Computed buffers (rotary frequencies, position
            ids, relative-position indices) are left as the model made them.

    All given conditions must hold.

    >>> from xinit.core import Zeros
    >>> r = Rule(Zeros(), kind="linear", role="bias")
    >>> r.matches(Param("fc.bias", "linear", "bias", (3,)))
    True
    """

    init: Any
    kind: Any = None
    role: Any = None
    name: Any = None
    regex: str | None = None
    within: Any = None
    min_ndim: int | None = None
    buffers: bool = False

    def __post_init__(self):
        if not isinstance(self.init, (Spec, Derived)):
            raise TypeError(f"Rule init must be a Spec or a Derived initializer; got {self.init!r}")
        object.__setattr__(self, "kind", _class_names(self.kind, "kind"))
        object.__setattr__(self, "role", _names(self.role, "role"))
        object.__setattr__(self, "name", _names(self.name, "name"))
        object.__setattr__(self, "within", _class_names(self.within, "within"))
        if self.min_ndim is not None and (not isinstance(self.min_ndim, int) or self.min_ndim < 0):
            raise TypeError(f"Rule min_ndim must be a non-negative int or None; got {self.min_ndim!r}")
        if not isinstance(self.buffers, bool):
            raise TypeError(f"Rule buffers must be True or False; got buffers={self.buffers!r}")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as err:
                raise ValueError(f"Rule regex {self.regex!r} is not a valid pattern: {err}") from None

    def matches(self, param: Param) -> bool:
        if param.buffer and not self.buffers:
            return False
        if self.kind is not None and not _class_match(self.kind, (param.kind, param.layer_type,
                                                                  *param.lineage)):
            return False
        if self.role is not None and param.role not in self.role:
            return False
        if self.name is not None and not any(fnmatch.fnmatchcase(param.name, p) for p in self.name):
            return False
        if self.regex is not None and re.fullmatch(self.regex, param.name) is None:
            return False
        if self.within is not None and not _class_match(self.within, param.attr("ancestors", ())):
            return False
        if self.min_ndim is not None and len(param.shape) < self.min_ndim:
            return False
        return True

    def to_config(self) -> dict[str, Any]:
        """A JSON-ready dict; :meth:`from_config` inverts it."""
        config: dict[str, Any] = {"init": init_config(self.init)}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name != "init" and value is not None and value != f.default:
                config[f.name] = list(value) if isinstance(value, tuple) else value
        return config

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Rule:
        args = dict(config)
        init = init_from_config(args.pop("init"))
        return cls(init, **{k: (tuple(v) if isinstance(v, list) else v) for k, v in args.items()})

    def __repr__(self) -> str:
        parts = [repr(self.init)]
        for arg in ("kind", "role", "name", "within"):
            value = getattr(self, arg)
            if value is not None:
                parts.append(f"{arg}={value[0]!r}" if len(value) == 1 else f"{arg}={value!r}")
        if self.regex is not None:
            parts.append(f"regex={self.regex!r}")
        if self.min_ndim is not None:
            parts.append(f"min_ndim={self.min_ndim}")
        if self.buffers:
            parts.append("buffers=True")
        return f"Rule({', '.join(parts)})"


def at_any_depth(*names: str) -> tuple[str, ...]:
    """Globs for ``names`` at the top of a model and below it: ``("fc.weight", "*.fc.weight")``.

    >>> at_any_depth("c_proj.weight")
    ('c_proj.weight', '*.c_proj.weight')
    """
    out: list[str] = []
    for n in names:
        out += [n, f"*.{n}"]
    return tuple(out)


def _class_match(wanted: tuple[str, ...], names) -> bool:
    """Whether any of ``names`` is one of ``wanted`` (exact names, or globs)."""
    names = tuple(names)
    for w in wanted:
        if _GLOB.search(w):
            if any(fnmatch.fnmatchcase(n, w) for n in names):
                return True
        elif w in names:
            return True
    return False


class PlanEntry(NamedTuple):
    """One line of a :class:`Plan`: a parameter, the rule that matched, the spec it gets.

    ``source`` says where its value comes from when no rule draws it: an
    adapter's plan marks tensors a checkpoint provides ``"loaded"``, buffers the
    model's own code computes ``"computed"`` and unmatched tensors to fill with
    zeros ``"zeros"``; None otherwise (drawn by its rule, or left as it is).
    """

    param: Param
    rule_index: int | None
    rule: Rule | None
    resolved: Resolved | None
    source: str | None = None

    @property
    def drawn(self) -> bool:
        """Whether a rule draws (or fills) this tensor."""
        return self.resolved is not None and self.source is None


#: What :attr:`PlanEntry.source` says in a plan's table.
_SOURCE_TEXT = {"loaded": "loaded from the checkpoint", "computed": "computed by the model",
                "zeros": "zeros (unmatched)"}


@dataclass(frozen=True)
class Plan:
    """A dry run: every parameter -> rule -> initializer, before anything is written.

    ``str(plan)`` is a table to read (one row per tensor: parameter or buffer);
    ``plan.unmatched`` lists the names no rule matched (and no checkpoint
    provides); ``plan.drawn`` and ``plan.loaded`` the names a rule draws and a
    checkpoint provides.
    """

    recipe: str
    entries: tuple[PlanEntry, ...]

    @property
    def unmatched(self) -> tuple[str, ...]:
        return tuple(e.param.name for e in self.entries if e.rule is None and e.source is None)

    @property
    def drawn(self) -> tuple[str, ...]:
        return tuple(e.param.name for e in self.entries if e.drawn)

    @property
    def loaded(self) -> tuple[str, ...]:
        return tuple(e.param.name for e in self.entries if e.source == "loaded")

    @property
    def computed(self) -> tuple[str, ...]:
        return tuple(e.param.name for e in self.entries if e.source == "computed")

    def with_sources(self, sources: Mapping[str, str]) -> Plan:
        """This plan with ``sources`` (name -> ``"loaded"``/``"computed"``/``"zeros"``) marked."""
        return Plan(self.recipe, tuple(e._replace(source=sources.get(e.param.name, e.source))
                                       for e in self.entries))

    def check(self) -> None:
        """Raise :class:`UnmatchedError` listing every unmatched parameter."""
        self.raise_unmatched(self.unmatched, "error", "parameter(s)/buffer")

    def raise_unmatched(self, names, unmatched: str, what: str = "parameter") -> None:
        """Raise :class:`UnmatchedError` listing ``names`` when ``unmatched`` is ``"error"``."""
        if names and unmatched == "error":
            raise UnmatchedError(
                f"recipe {self.recipe!r} has no rule for {len(names)} {what}(s): "
                f"{', '.join(names)}. Add rules (Recipe(...) + recipe), or pass "
                "unmatched='ignore' to leave them as they are or unmatched='zeros' to fill "
                "them with zeros"
            )

    def __str__(self) -> str:
        rows = [("name", "tensor", "kind/role", "shape", "dtype", "rule", "initializer")]
        for e in self.entries:
            p = e.param
            init = "UNMATCHED" if not p.buffer else "left as it is"
            if e.source is not None:
                init = _SOURCE_TEXT[e.source]
            elif e.resolved is not None:
                init = repr(e.resolved.spec)
                if e.resolved.zero_rows:
                    init += f", rows {list(e.resolved.zero_rows)} zeroed"
            rule = "-" if e.rule_index is None or e.source is not None else f"#{e.rule_index}"
            rows.append((p.name, "buffer" if p.buffer else "param", f"{p.kind}/{p.role}",
                         str(tuple(p.shape)), p.dtype, rule, init))
        widths = [max(len(r[i]) for r in rows) for i in range(6)]
        lines = [f"plan for recipe {self.recipe!r}:"]
        for r in rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r[:6], widths, strict=True)) + "  " + r[6])
        return "\n".join(lines)


@dataclass(frozen=True)
class Recipe:
    """An ordered tuple of rules with a name; the first matching rule wins.

    ``a + b`` is a recipe with ``a``'s rules, then ``b``'s (named ``a.name``).

    >>> r = Recipe("zeros", (Rule(Zeros()),))
    >>> r == Recipe("zeros", (Rule(Zeros()),))
    True
    """

    name: str
    rules: tuple[Rule, ...]

    def __post_init__(self):
        rules = tuple(self.rules)
        for r in rules:
            if not isinstance(r, Rule):
                raise TypeError(f"Recipe {self.name!r}: rules must be Rule objects; got {r!r}")
        object.__setattr__(self, "rules", rules)

    def __add__(self, other: Recipe) -> Recipe:
        if not isinstance(other, Recipe):
            return NotImplemented
        return Recipe(self.name, self.rules + other.rules)

    def to_config(self) -> dict[str, Any]:
        """``{"name": ..., "rules": [...]}``, JSON-ready; :meth:`from_config` inverts it.

        >>> r = gpt2(n_layer=6)
        >>> Recipe.from_config(r.to_config()) == r
        True
        """
        return {"name": self.name, "rules": [r.to_config() for r in self.rules]}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Recipe:
        """The recipe :meth:`to_config` wrote."""
        return cls(config["name"], tuple(Rule.from_config(r) for r in config["rules"]))

    def config_hash(self) -> str:
        """SHA-256 of the canonical JSON of :meth:`to_config` (what a manifest records)."""
        import hashlib
        import json

        text = json.dumps(self.to_config(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def match(self, param: Param) -> tuple[int, Rule] | None:
        """``(index, rule)`` of the first rule matching ``param``, or None."""
        for i, rule in enumerate(self.rules):
            if rule.matches(param):
                return i, rule
        return None

    def plan(self, params) -> Plan:
        """Match and resolve every parameter (validating each spec on its shape).

        Raises the spec's own error (e.g. :class:`~xinit.core.errors.ShapeError`)
        for a rule that does not suit a parameter, naming the parameter.
        """
        entries = []
        for p in params:
            hit = self.match(p)
            if hit is None:
                entries.append(PlanEntry(p, None, None, None))
                continue
            i, rule = hit
            try:
                res = resolve(rule.init, p)
                res.spec.plan(tuple(p.shape))
            except Exception as err:
                err.args = (f"parameter {p.name!r} (rule #{i} {rule!r}): {err}",) + err.args[1:]
                raise
            entries.append(PlanEntry(p, i, rule, res))
        return Plan(self.name, tuple(entries))

    def __str__(self) -> str:
        lines = [f"Recipe {self.name!r}:"]
        lines += [f"  #{i}: {r!r}" for i, r in enumerate(self.rules)]
        return "\n".join(lines)


# ------------------------------------------------------------------- built-ins

_SQRT5 = math.sqrt(5)
_NORM_RULES = (
    Rule(Ones(), kind="norm", role="weight"),
    Rule(Zeros(), kind="norm", role="bias"),
    Rule(Zeros(), kind="norm", role="running_mean", buffers=True),
    Rule(Ones(), kind="norm", role="running_var", buffers=True),
    Rule(Zeros(), kind="norm", role="num_batches_tracked", buffers=True),
)


def torch_default() -> Recipe:
    """What each ``torch.nn`` layer's own ``reset_parameters`` does.

    - Linear, Conv*d, ConvTranspose*d weight: ``kaiming_uniform_(a=sqrt(5))``,
      i.e. U(+-1/sqrt(fan_in)) with torch's fans of the weight as stored (so
      ConvTranspose's fan_in is ``out/groups * prod(k)``); bias U(+-1/sqrt(fan_in)).
    - Bilinear weight and bias: U(+-1/sqrt(in1_features)).
    - Embedding/EmbeddingBag: N(0, 1), padding row zeroed.
    - RNN/LSTM/GRU and cells: every parameter U(+-1/sqrt(hidden_size)).
    - MultiheadAttention: xavier_uniform on the packed in_proj (or on each of
      q/k/v_proj when kdim/vdim differ), in_proj_bias and out_proj.bias 0,
      out_proj.weight the Linear default, bias_k/bias_v xavier_normal.
    - Norms: weight 1, bias 0, running_mean 0, running_var 1, num_batches_tracked 0.
    - PReLU: the layer's ``init`` (0.25 where the layer keeps none, as Flax's).
    - Inside ``torch.nn.Transformer``: every parameter with 2 or more dimensions
      ``xavier_uniform`` (its ``_reset_parameters``); 1-D ones as above.
    """
    return Recipe(
        "torch_default",
        (
            Rule(XavierUniform(), within="torch.nn.modules.transformer.Transformer", min_ndim=2),
            Rule(KaimingUniform(a=_SQRT5), kind=("linear", "conv", "conv_transpose"), role="weight"),
            Rule(FanInUniform(), kind=("linear", "conv", "conv_transpose"), role="bias"),
            Rule(InvSqrtUniform("in1_features"), kind="bilinear", role=("weight", "bias")),
            Rule(PaddingZeroed(Normal(0.0, 1.0)), kind="embedding", role="weight"),
            Rule(InvSqrtUniform("hidden_size"), kind="recurrent"),
            Rule(
                XavierUniform(),
                kind="attention",
                role=("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"),
            ),
            Rule(Zeros(), kind="attention", role=("in_proj_bias", "out_proj_bias")),
            Rule(KaimingUniform(a=_SQRT5), kind="attention", role="out_proj_weight"),
            Rule(XavierNormal(), kind="attention", role=("bias_k", "bias_v")),
            *_NORM_RULES,
            Rule(AttrConstant("init", default=0.25), kind="prelu", role="weight"),
        ),
    )


_MATRIX_ROLES = ("weight", "in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight",
                 "out_proj_weight")
_BIAS_ROLES = ("bias", "in_proj_bias", "out_proj_bias")


def resnet(zero_init_residual=()) -> Recipe:
    """He et al. 2015 as torchvision's ResNet: ``kaiming_normal_(mode="fan_out", nonlinearity="relu")``.

    Convolution weights N(0, 2/fan_out); norm weight 1, bias 0 (running stats
    0/1); everything else the torch default (torchvision keeps the Linear default
    for ``fc``). ``zero_init_residual`` is a glob (or tuple of globs) naming the
    last norm weight of each residual block, which is set to 0 (Goyal et al.
    2017): ``"layer*.*.bn2.weight"`` for BasicBlock, ``"layer*.*.bn3.weight"``
    for Bottleneck.
    """
    zero = _names(zero_init_residual, "zero_init_residual") if zero_init_residual else None
    rules = []
    if zero:
        rules.append(Rule(Zeros(), kind="norm", role="weight", name=zero))
    rules += [
        Rule(KaimingNormal(mode="fan_out", nonlinearity="relu"), kind="conv", role="weight"),
        *_NORM_RULES,
    ]
    return Recipe("resnet", tuple(rules)) + torch_default()


def transformer() -> Recipe:
    """Vaswani et al. 2017 as commonly implemented: xavier_uniform matrices, zero biases.

    Linear and attention projection weights ``xavier_uniform``; their biases 0;
    embeddings N(0, 0.02) (padding row 0); norms 1/0; the rest torch default.
    """
    return Recipe(
        "transformer",
        (
            Rule(XavierUniform(), kind=("linear", "attention"), role=_MATRIX_ROLES),
            Rule(Zeros(), kind=("linear", "attention"), role=_BIAS_ROLES),
            Rule(PaddingZeroed(Normal(0.0, 0.02)), kind="embedding", role="weight"),
            *_NORM_RULES,
        ),
    ) + torch_default()


def gpt2(n_layer: int = 12, residual=("*c_proj.weight",)) -> Recipe:
    r"""Radford et al. 2019 (GPT-2, as in HF transformers and nanoGPT).

    Linear, attention and embedding weights N(0, 0.02); residual projections
    (names matching the globs ``residual``, by default ``*c_proj.weight``)
    N(0, 0.02/\sqrt{2\,n\_layer}); biases 0; norms 1/0; the rest torch default.
    ``residual=()`` (or None) scales nothing. ``get_recipe("gpt2")`` is GPT-2
    small (``n_layer=12``); for a transformers GPT-2 model, ``"hf"`` reads
    ``n_layer`` and ``initializer_range`` from its config.
    """
    n_layer = int(n_layer)
    if n_layer <= 0:
        raise ValueError(f"gpt2: n_layer must be a positive int; got n_layer={n_layer}")
    res = _names(residual, "residual") if residual else None
    rules = []
    if res:
        rules.append(Rule(Normal(0.0, 0.02 / math.sqrt(2 * n_layer)), role=_MATRIX_ROLES, name=res,
                          kind=("linear", "attention", "conv", "other")))
    rules += [
        Rule(Normal(0.0, 0.02), kind=("linear", "attention"), role=_MATRIX_ROLES),
        Rule(Zeros(), kind=("linear", "attention"), role=_BIAS_ROLES),
        Rule(PaddingZeroed(Normal(0.0, 0.02)), kind="embedding", role="weight"),
        *_NORM_RULES,
    ]
    return Recipe("gpt2", tuple(rules)) + torch_default()


def dcgan() -> Recipe:
    """Radford et al. 2016 (DCGAN): conv weights N(0, 0.02), norm weight N(1, 0.02), biases 0."""
    return Recipe(
        "dcgan",
        (
            Rule(Normal(0.0, 0.02), kind=("conv", "conv_transpose"), role="weight"),
            Rule(Zeros(), kind=("conv", "conv_transpose"), role="bias"),
            Rule(Normal(1.0, 0.02), kind="norm", role="weight"),
            *_NORM_RULES[1:],
        ),
    ) + torch_default()


def vit() -> Recipe:
    """Dosovitskiy et al. 2021 as timm: linear weights ``trunc_normal_(std=0.02)``, biases 0.

    ``trunc_normal_`` has torch/timm semantics: absolute bounds ``[-2, 2]``
    (which, at std 0.02, truncate nothing). Parameters named ``*pos_embed*`` get
    the same; ``*cls_token*`` N(0, 1e-6); norms 1/0; the rest (the patch
    embedding conv) torch default.
    """
    tn = TruncNormal(0.0, 0.02, -2.0, 2.0)
    return Recipe(
        "vit",
        (
            Rule(tn, kind=("linear", "attention"), role=_MATRIX_ROLES),
            Rule(Zeros(), kind=("linear", "attention"), role=_BIAS_ROLES),
            Rule(tn, name=("*pos_embed*", "*pos_embedding*")),
            Rule(Normal(0.0, 1e-6), name="*cls_token*"),
            *_NORM_RULES,
        ),
    ) + torch_default()


RECIPES = {
    "torch_default": torch_default,
    "resnet": resnet,
    "transformer": transformer,
    "gpt2": gpt2,
    "dcgan": dcgan,
    "vit": vit,
}


def get_recipe(recipe, config=None) -> Recipe:
    """A :class:`Recipe` as it is, or a built-in by name (with its default arguments).

    ``"hf"`` is built from a transformers model's ``config``
    (:func:`~xinit.core.recipes_hf.hf`); the adapters pass ``model.config``.

    >>> get_recipe("torch_default").name
    'torch_default'
    """
    if isinstance(recipe, Recipe):
        return recipe
    if recipe == "hf":
        from .recipes_hf import hf

        return hf(config)
    if isinstance(recipe, str) and recipe in RECIPES:
        return RECIPES[recipe]()
    raise ValueError(
        f"recipe must be a Recipe, 'hf' or one of {sorted(RECIPES)}; got {recipe!r}"
    )


def as_layer(mapping: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """Layer attributes in the hashable form :class:`Param` keeps (sorted pairs, tuples)."""
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in mapping.items()
                        if v is not None))


from .recipes_timm import timm  # noqa: E402 - it builds on the rules above

RECIPES["timm"] = timm
