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
:func:`resnet`, :func:`transformer`, :func:`gpt2`, :func:`dcgan`, :func:`vit`.
The literature recipes end with the ``torch_default`` rules, so layers they say
nothing about keep PyTorch's defaults (as torchvision and timm do).
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

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
            ``(key, value)`` pairs: ``weight_shape`` (the sibling weight's
            canonical shape), ``hidden_size``, ``in1_features``, ``padding_idx``,
            ``init`` (PReLU).
        buffer: True for buffers (running statistics), False for parameters.
    """

    name: str
    kind: str
    role: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    layer_type: str = ""
    layer: tuple[tuple[str, Any], ...] = ()
    buffer: bool = False

    def attr(self, key: str, default: Any = None) -> Any:
        """The layer attribute ``key`` (see ``layer``), or ``default``."""
        return dict(self.layer).get(key, default)


# ------------------------------------------------------ layer-dependent specs


class Resolved(NamedTuple):
    """A spec for a concrete parameter, plus rows to zero after drawing."""

    spec: Spec
    zero_rows: tuple[int, ...] = ()


class Derived:
    """Base of initializers whose arguments depend on the parameter's layer."""

    def resolve(self, param: Param) -> Resolved:
        raise NotImplementedError


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

    attr: str = "hidden_size"

    def resolve(self, param: Param) -> Resolved:
        n = _need(param, self.attr, "InvSqrtUniform")
        bound = 1.0 / math.sqrt(n) if n > 0 else 0
        return Resolved(Uniform(-bound, bound))

    def __repr__(self) -> str:
        return f"uniform(+-1/sqrt({self.attr}))"


@dataclass(frozen=True)
class AttrConstant(Derived):
    """Every element the layer attribute ``attr`` (``default`` when the layer has none).

    ``AttrConstant("init", 0.25)`` is ``torch.nn.PReLU``'s default.
    """

    attr: str = "init"
    default: float = 0.25

    def resolve(self, param: Param) -> Resolved:
        return Resolved(Constant(param.attr(self.attr, self.default)))

    def __repr__(self) -> str:
        return f"constant({self.attr}, default={self.default!r})"


@dataclass(frozen=True)
class PaddingZeroed(Derived):
    """``spec``, then the embedding row ``padding_idx`` (a layer attribute) set to 0.

    Negative indices count from the end, as ``torch.nn.Embedding``; a layer
    without ``padding_idx`` gets ``spec`` alone.
    """

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


@dataclass(frozen=True)
class Rule:
    """Match parameters and name their initializer.

    Args:
        init: a :class:`~xinit.core.Spec` or a :class:`Derived` initializer.
        kind: layer kind(s) or layer class name(s); None matches any.
        role: role(s) in the layer (``"weight"``, ``"bias"``, ...); None matches any.
        name: glob pattern(s) on the canonical dotted name (``fnmatch``, case
            sensitive, ``*`` also crosses dots); None matches any.
        regex: a regular expression that must match the whole name; None matches any.
        within: class name(s) of which one must enclose the layer (the layer
            attribute ``ancestors``, e.g. ``"Transformer"``); None matches any.
        min_ndim: the parameter must have at least this many dimensions.

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

    def __post_init__(self):
        if not isinstance(self.init, (Spec, Derived)):
            raise TypeError(f"Rule init must be a Spec or a Derived initializer; got {self.init!r}")
        object.__setattr__(self, "kind", _names(self.kind, "kind"))
        object.__setattr__(self, "role", _names(self.role, "role"))
        object.__setattr__(self, "name", _names(self.name, "name"))
        object.__setattr__(self, "within", _names(self.within, "within"))
        if self.min_ndim is not None and (not isinstance(self.min_ndim, int) or self.min_ndim < 0):
            raise TypeError(f"Rule min_ndim must be a non-negative int or None; got {self.min_ndim!r}")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as err:
                raise ValueError(f"Rule regex {self.regex!r} is not a valid pattern: {err}") from None

    def matches(self, param: Param) -> bool:
        if self.kind is not None and param.kind not in self.kind and param.layer_type not in self.kind:
            return False
        if self.role is not None and param.role not in self.role:
            return False
        if self.name is not None and not any(fnmatch.fnmatchcase(param.name, p) for p in self.name):
            return False
        if self.regex is not None and re.fullmatch(self.regex, param.name) is None:
            return False
        if self.within is not None and not set(self.within) & set(param.attr("ancestors", ())):
            return False
        if self.min_ndim is not None and len(param.shape) < self.min_ndim:
            return False
        return True

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
        return f"Rule({', '.join(parts)})"


class PlanEntry(NamedTuple):
    """One line of a :class:`Plan`: a parameter, the rule that matched, the spec it gets."""

    param: Param
    rule_index: int | None
    rule: Rule | None
    resolved: Resolved | None


@dataclass(frozen=True)
class Plan:
    """A dry run: every parameter -> rule -> initializer, before anything is written.

    ``str(plan)`` is a table to read; ``plan.unmatched`` lists the names no rule
    matched.
    """

    recipe: str
    entries: tuple[PlanEntry, ...]

    @property
    def unmatched(self) -> tuple[str, ...]:
        return tuple(e.param.name for e in self.entries if e.rule is None)

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
        rows = [("name", "kind/role", "shape", "dtype", "rule", "initializer")]
        for e in self.entries:
            p = e.param
            init = "UNMATCHED"
            if e.resolved is not None:
                init = repr(e.resolved.spec)
                if e.resolved.zero_rows:
                    init += f", rows {list(e.resolved.zero_rows)} zeroed"
            rule = "-" if e.rule_index is None else f"#{e.rule_index}"
            rows.append((p.name, f"{p.kind}/{p.role}", str(tuple(p.shape)), p.dtype, rule, init))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = [f"plan for recipe {self.recipe!r}:"]
        for r in rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True)) + "  " + r[5])
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
    Rule(Zeros(), kind="norm", role="running_mean"),
    Rule(Ones(), kind="norm", role="running_var"),
    Rule(Zeros(), kind="norm", role="num_batches_tracked"),
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
    - PReLU: the layer's ``init`` (0.25 by default).
    - Inside ``torch.nn.Transformer``: every parameter with 2 or more dimensions
      ``xavier_uniform`` (its ``_reset_parameters``); 1-D ones as above.
    """
    return Recipe(
        "torch_default",
        (
            Rule(XavierUniform(), within="Transformer", min_ndim=2),
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
            Rule(AttrConstant("init", 0.25), kind="prelu", role="weight"),
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
    ``get_recipe("gpt2")`` is GPT-2 small (``n_layer=12``).
    """
    n_layer = int(n_layer)
    if n_layer <= 0:
        raise ValueError(f"gpt2: n_layer must be a positive int; got n_layer={n_layer}")
    res = _names(residual, "residual")
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


def get_recipe(recipe) -> Recipe:
    """A :class:`Recipe` as it is, or a built-in by name (with its default arguments).

    >>> get_recipe("torch_default").name
    'torch_default'
    """
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, str) and recipe in RECIPES:
        return RECIPES[recipe]()
    raise ValueError(
        f"recipe must be a Recipe or one of {sorted(RECIPES)}; got {recipe!r}"
    )


def as_layer(mapping: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """Layer attributes in the hashable form :class:`Param` keeps (sorted pairs, tuples)."""
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in mapping.items()
                        if v is not None))
