"""Checkpoint porting between PyTorch and Flax, framework-neutral: layouts, names, reports.

``xinit.port`` (the one package that imports both frameworks) reads the two
models' structures and hands this module plain descriptions: per Flax layer its
kind, class, attributes and variables; per torch tensor its name, layer kind
and layout. Everything that decides *what goes where* lives here, on numpy:

- :func:`conversion` - per layer kind, how a Flax layer's variables relate to
  the canonical (PyTorch ``state_dict``) tensors of the same layer, as
  expressions of transposes, reshapes, flips, row slices, concatenations and
  sums (:class:`Tensor`, :class:`Concat`, :class:`Sum`, :class:`Zeros`), in both
  directions: a Dense kernel is ``weight.T``; MultiHeadAttention's
  ``query``/``key``/``value`` are the row blocks of torch's packed
  ``in_proj_weight`` with the heads split; an LSTM's eight Dense kernels are
  torch's two packed gate matrices, and its Flax biases the sums of torch's two
  (the one lossy direction, stated in :attr:`Move.lossy`).
- names: a Flax module path's canonical dotted name (:func:`canonical_prefix`:
  linen ``Sequential``'s ``layers_0`` and nnx ``Sequential``'s ``layers.0`` are
  torch's ``0``), ``rename=`` (:func:`as_renamer`: a callable or an ordered list
  of regex replacements), and :class:`NameResolver`, which maps what is left
  onto the torch model's module tree (``blocks_0`` -> ``blocks.0``, linen's
  automatic ``Dense_1`` -> the second linear child).
- :func:`hyper_parameter_warnings`: settings that change the forward pass but
  not the weights (LayerNorm's epsilon, padding, strides).
- the results: :class:`PortPlan` (the dry run, a table), :class:`PortReport`
  and :class:`PortError` (every missing, unexpected and mismatched key at once).

Canonical names and shapes are PyTorch's: a parameter's ``state_dict`` key and
its shape in torch's own layout, the names initialization keys by.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .layers import FLAX_CONV_TRANSPOSE
from .layout import FLAX, Layout

__all__ = [
    "Permute",
    "Reshape",
    "Flip",
    "Rows",
    "Tensor",
    "Zeros",
    "Concat",
    "Sum",
    "Move",
    "Conversion",
    "conversion",
    "layout_ops",
    "evaluate",
    "shape_of",
    "describe",
    "canonical_segments",
    "canonical_prefix",
    "as_renamer",
    "NameResolver",
    "hyper_parameter_warnings",
    "Problem",
    "PortReport",
    "PortError",
    "PlanRow",
    "PortPlan",
]


# ------------------------------------------------------------------ operations


@dataclass(frozen=True)
class Permute:
    """``x.transpose(perm)``."""

    perm: tuple[int, ...]

    def apply(self, x):
        return x.transpose(self.perm)

    def shape(self, shape):
        return tuple(shape[p] for p in self.perm)

    def __str__(self):
        return "transpose" if self.perm == (1, 0) else f"permute{self.perm}"


@dataclass(frozen=True)
class Reshape:
    """``x.reshape(shape)`` (a view when ``x`` is contiguous)."""

    to: tuple[int, ...]

    def apply(self, x):
        return x.reshape(self.to)

    def shape(self, shape):
        if math.prod(shape) != math.prod(self.to):
            raise ValueError(f"cannot reshape {tuple(shape)} to {self.to}")
        return self.to

    def __str__(self):
        return f"reshape{self.to}"


@dataclass(frozen=True)
class Flip:
    """``x`` reversed along ``axes`` (a transposed convolution's spatial axes)."""

    axes: tuple[int, ...]

    def apply(self, x):
        return x[tuple(slice(None, None, -1) if d in self.axes else slice(None)
                       for d in range(x.ndim))]

    def shape(self, shape):
        return tuple(shape)

    def __str__(self):
        return "flip" + ("" if len(self.axes) != 1 else f"({self.axes[0]})")


@dataclass(frozen=True)
class Rows:
    """Rows ``start:stop`` of axis 0 (one gate, or one of q/k/v, of a packed matrix)."""

    start: int
    stop: int

    def apply(self, x):
        return x[self.start : self.stop]

    def shape(self, shape):
        if self.stop > shape[0]:
            raise ValueError(f"rows {self.start}:{self.stop} of a tensor of shape {tuple(shape)}")
        return (self.stop - self.start, *shape[1:])

    def __str__(self):
        return f"rows {self.start}:{self.stop}"


Op = Permute | Reshape | Flip | Rows


def layout_ops(layout: Layout, ndim: int) -> tuple[Op, ...]:
    """The operation that reads a weight stored in ``layout`` in canonical order (none if identity)."""
    if ndim < 2 or layout.is_identity(ndim):
        return ()
    return (Permute(layout.permutation(ndim)),)


def _inverse(ops: Sequence[Op], shape: tuple[int, ...]) -> tuple[Op, ...]:
    """The operations that undo ``ops`` applied to a tensor of ``shape`` (no Rows)."""
    shapes = [tuple(shape)]
    for op in ops:
        shapes.append(op.shape(shapes[-1]))
    out: list[Op] = []
    for op, before in zip(reversed(ops), reversed(shapes[:-1]), strict=True):
        if isinstance(op, Permute):
            inv = [0] * len(op.perm)
            for k, p in enumerate(op.perm):
                inv[p] = k
            out.append(Permute(tuple(inv)))
        elif isinstance(op, Reshape):
            out.append(Reshape(tuple(before)))
        elif isinstance(op, Flip):
            out.append(op)
        else:
            raise TypeError(f"{op} has no inverse")
    return tuple(out)


def _simplify(ops: Iterable[Op]) -> tuple[Op, ...]:
    """Consecutive permutations composed; identities dropped."""
    out: list[Op] = []
    for op in ops:
        if isinstance(op, Permute) and out and isinstance(out[-1], Permute):
            prev = out.pop()
            op = Permute(tuple(prev.perm[p] for p in op.perm))
        if isinstance(op, Permute) and op.perm == tuple(range(len(op.perm))):
            continue
        out.append(op)
    return tuple(out)


# ----------------------------------------------------------------- expressions


@dataclass(frozen=True)
class Tensor:
    """Source tensor ``name`` passed through ``ops``."""

    name: str
    ops: tuple[Op, ...] = ()


@dataclass(frozen=True)
class Zeros:
    """A block of zeros (torch's second RNN bias, where Flax keeps one)."""

    shape: tuple[int, ...]


@dataclass(frozen=True)
class Concat:
    """Parts stacked along axis 0 (torch's packed gates or q/k/v)."""

    parts: tuple[Any, ...]


@dataclass(frozen=True)
class Sum:
    """Parts added (torch's two RNN biases folded into Flax's one)."""

    parts: tuple[Any, ...]


Expr = Tensor | Zeros | Concat | Sum


def sources(expr) -> tuple[str, ...]:
    """The source tensor names ``expr`` reads, in order, without repeats."""
    if isinstance(expr, Tensor):
        return (expr.name,)
    if isinstance(expr, Zeros):
        return ()
    seen: dict[str, None] = {}
    for part in expr.parts:
        seen.update(dict.fromkeys(sources(part)))
    return tuple(seen)


def shape_of(expr, shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, ...]:
    """The shape ``expr`` evaluates to, given the source shapes (nothing is read)."""
    if isinstance(expr, Tensor):
        shape = tuple(shapes[expr.name])
        for op in expr.ops:
            shape = op.shape(shape)
        return shape
    if isinstance(expr, Zeros):
        return tuple(expr.shape)
    parts = [shape_of(p, shapes) for p in expr.parts]
    if isinstance(expr, Concat):
        if any(p[1:] != parts[0][1:] for p in parts):
            raise ValueError(f"cannot stack shapes {parts}")
        return (sum(p[0] for p in parts), *parts[0][1:])
    if any(p != parts[0] for p in parts):
        raise ValueError(f"cannot add shapes {parts}")
    return parts[0]


def evaluate(expr, get: Callable[[str], np.ndarray], dtype=None) -> np.ndarray:
    """``expr`` on numpy arrays (``get(name)`` reads a source); views where possible.

    ``dtype``: the dtype of :class:`Zeros` blocks (default: the first source's).
    """
    if isinstance(expr, Tensor):
        x = get(expr.name)
        for op in expr.ops:
            x = op.apply(x)
        return x
    if isinstance(expr, Zeros):
        return np.zeros(expr.shape, dtype or np.float32)
    first = next((get(n) for n in sources(expr)), None)
    dtype = dtype or (first.dtype if first is not None else np.float32)
    parts = [evaluate(p, get, dtype) for p in expr.parts]
    if isinstance(expr, Concat):
        return np.concatenate(parts, axis=0)
    out = parts[0].astype(dtype, copy=True)
    for p in parts[1:]:
        out += p
    return out


def describe(expr) -> str:
    """A short description of the layout operation, for plan tables."""
    if isinstance(expr, Tensor):
        ops = _simplify(expr.ops)
        return " + ".join(str(op) for op in ops) if ops else "copy"
    if isinstance(expr, Zeros):
        return "zeros"
    if isinstance(expr, Sum):
        return "fold (sum of " + ", ".join(
            n + (f"[{describe(p)}]" if isinstance(p, Tensor) and p.ops else "")
            for p in expr.parts for n in sources(p)) + ")"
    kinds = {describe(p) for p in expr.parts if not isinstance(p, Zeros)}
    inner = kinds.pop() if len(kinds) == 1 else "mixed"
    return f"merge {len(expr.parts)} ({inner})"


@dataclass(frozen=True)
class Move:
    """How one destination tensor is made: ``target = expr(sources)``.

    ``lossy``: why this direction cannot be undone exactly ("" when it can).
    """

    target: str
    expr: Any
    lossy: str = ""


@dataclass(frozen=True)
class Conversion:
    """How one Flax layer's variables relate to its canonical (torch) tensors.

    Attributes:
        to_canonical: moves whose targets are canonical local names (torch's,
            e.g. ``in_proj_weight``) and whose sources are the Flax layer's local
            variable paths (``query/kernel``).
        to_flax: the reverse moves.
        must_be_zero: canonical tensors (with rows) that have no place in the
            Flax layer: converting to Flax is exact only when they are zero.
        problems: why this layer cannot be converted (an empty tuple if it can).
    """

    to_canonical: tuple[Move, ...] = ()
    to_flax: tuple[Move, ...] = ()
    must_be_zero: tuple[Tensor, ...] = ()
    problems: tuple[str, ...] = ()


# ------------------------------------------------------- conversions per kind

_PLAIN_NAMES = {"kernel": "weight", "embedding": "weight", "scale": "weight", "bias": "bias",
                "mean": "running_mean", "var": "running_var", "negative_slope": "weight"}


def _t(name: str, *ops: Op) -> Tensor:
    return Tensor(name, tuple(ops))


def _pair(canonical: str, flax: str, ops: tuple[Op, ...], shape) -> tuple[Move, Move]:
    return Move(canonical, _t(flax, *ops)), Move(flax, _t(canonical, *_inverse(ops, shape)))


def _kernel_ops(kind: str, layout: Layout, attrs: Mapping, shape) -> tuple[Op, ...]:
    ndim = len(shape)
    if kind == "conv_transpose":
        # torch conv_transpose = a convolution of the dilated input with the weight
        # flipped and in/out swapped; lax.conv_transpose(transpose_kernel=True) does
        # that itself from a (*k, out, in) kernel, otherwise it takes the result.
        if attrs.get("transpose_kernel"):
            return layout_ops(FLAX, ndim)
        return (*layout_ops(FLAX_CONV_TRANSPOSE, ndim), Flip(tuple(range(2, ndim))))
    if kind == "linear" and ndim > 2:  # DenseGeneral / LinearGeneral: (*in, *out)
        axis = attrs.get("axis", -1)
        n_in = len(axis) if isinstance(axis, tuple) else 1
        fan_in, fan_out = math.prod(shape[:n_in]), math.prod(shape[n_in:])
        return (Reshape((fan_in, fan_out)), Permute((1, 0)))
    return layout_ops(layout, ndim)


def _plain(kind: str, layout: Layout, attrs: Mapping, variables: Mapping[str, tuple]) -> Conversion:
    to_c, to_f, problems = [], [], []
    for name, shape in variables.items():
        if "/" in name:
            problems.append(f"variable {name!r} of a sub-module: a {kind} layer has its own "
                            "variables only")
            continue
        canonical = _PLAIN_NAMES.get(name, name) if kind != "other" else _OTHER_NAMES.get(name, name)
        ops: tuple[Op, ...] = ()
        if name == "kernel":
            ops = _kernel_ops(kind, layout, attrs, shape)
        elif name == "bias" and kind == "linear" and len(shape) > 1:
            ops = (Reshape((math.prod(shape),)),)
        elif name == "negative_slope" and shape == ():
            ops = (Reshape((1,)),)
        c, f = _pair(canonical, name, ops, shape)
        to_c.append(c)
        to_f.append(f)
    return Conversion(tuple(to_c), tuple(to_f), problems=tuple(problems))


# Unregistered layers: names as initialization reads them, values as they are.
_OTHER_NAMES = {"kernel": "weight", "embedding": "weight", "scale": "weight"}


def _attention(variables: Mapping[str, tuple], attrs: Mapping) -> Conversion:
    """linen MultiHeadDotProductAttention / nnx MultiHeadAttention <-> nn.MultiheadAttention."""
    known = {f"{p}/{v}" for p in ("query", "key", "value", "out") for v in ("kernel", "bias")}
    extra = sorted(set(variables) - known)
    if extra:
        why = " (normalize_qk=True)" if any("_ln" in e for e in extra) else ""
        return Conversion(problems=(
            f"variables {extra}{why} have no counterpart in torch's nn.MultiheadAttention",))
    if "query/kernel" not in variables or "out/kernel" not in variables:
        return Conversion(problems=("an attention layer without query/out kernels",))
    e_q, heads, head_dim = variables["query/kernel"]
    hd = heads * head_dim
    e_out = variables["out/kernel"][-1]
    dims = [variables[f"{p}/kernel"][0] for p in ("query", "key", "value")]
    to_c, to_f = [], []

    def proj(p, e_in):
        return _t(f"{p}/kernel", Reshape((e_in, hd)), Permute((1, 0)))

    def unproj(src, start, e_in):
        return _t(src, Rows(start, start + hd), Permute((1, 0)), Reshape((e_in, heads, head_dim)))

    if dims[0] == dims[1] == dims[2]:  # torch packs q, k, v when kdim == vdim == embed_dim
        to_c.append(Move("in_proj_weight", Concat(tuple(proj(p, e_q) for p in ("query", "key", "value")))))
        for i, p in enumerate(("query", "key", "value")):
            to_f.append(Move(f"{p}/kernel", unproj("in_proj_weight", i * hd, e_q)))
    else:
        for p, e_in in zip(("query", "key", "value"), dims, strict=True):
            to_c.append(Move(f"{p[0]}_proj_weight", proj(p, e_in)))
            to_f.append(Move(f"{p}/kernel", unproj(f"{p[0]}_proj_weight", 0, e_in)))
    if "query/bias" in variables:
        to_c.append(Move("in_proj_bias", Concat(tuple(
            _t(f"{p}/bias", Reshape((hd,))) for p in ("query", "key", "value")))))
        for i, p in enumerate(("query", "key", "value")):
            to_f.append(Move(f"{p}/bias", _t("in_proj_bias", Rows(i * hd, (i + 1) * hd),
                                             Reshape((heads, head_dim)))))
    c, f = _pair("out_proj.weight", "out/kernel", (Reshape((hd, e_out)), Permute((1, 0))),
                 variables["out/kernel"])
    to_c.append(c)
    to_f.append(f)
    if "out/bias" in variables:
        to_c.append(Move("out_proj.bias", _t("out/bias")))
        to_f.append(Move("out/bias", _t("out_proj.bias")))
    return Conversion(tuple(to_c), tuple(to_f))


_FOLD = "torch's bias_ih and bias_hh are added into Flax's one bias (back in torch: all in bias_ih)"


def _recurrent(type_name: str, variables: Mapping[str, tuple], suffix: str) -> Conversion:
    """Flax LSTM/GRU cells <-> torch's packed ``weight_ih``/``weight_hh``/two biases.

    torch's gate order is i, f, g, o (LSTM) and r, z, n (GRU); Flax's cells have
    the same equations with one bias per gate: an LSTM gate's bias, and a GRU
    r/z gate's, is torch's ``b_ih + b_hh`` (lossy back to torch, where it all goes
    to ``bias_ih``); a GRU's n gate keeps torch's two biases apart (linen), or
    has no hidden bias at all (nnx ``GRUCell``: exact only when torch's is 0).
    """
    names = {n: s for n, s in variables.items()}
    w_ih, w_hh, b_ih, b_hh = (f"{n}{suffix}" for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))

    def kt(name):  # a Dense kernel (in, out) as torch's (out, in) rows
        return _t(name, Permute((1, 0)))

    def rows_t(src, start, size):  # torch rows back to a Dense kernel
        return _t(src, Rows(start, start + size), Permute((1, 0)))

    def rows(src, start, size):
        return _t(src, Rows(start, start + size))

    lstm = "LSTM" in type_name
    gru = "GRU" in type_name
    if "dense_i/kernel" in names:  # nnx OptimizedLSTMCell / GRUCell: gates packed as torch
        hidden = names["dense_h/kernel"][0]
        gates = names["dense_i/kernel"][1] // max(hidden, 1)
        to_c = [Move(w_ih, kt("dense_i/kernel")), Move(w_hh, kt("dense_h/kernel"))]
        to_f = [Move("dense_i/kernel", _t(w_ih, Permute((1, 0)))),
                Move("dense_h/kernel", _t(w_hh, Permute((1, 0))))]
        if "dense_h/bias" in names:  # LSTM: the bias is on the hidden side
            to_c += [Move(b_ih, _t("dense_h/bias")), Move(b_hh, Zeros((gates * hidden,)))]
            to_f.append(Move("dense_h/bias", Sum((_t(b_ih), _t(b_hh))), lossy=_FOLD))
            return Conversion(tuple(to_c), tuple(to_f))
        if gru and "dense_i/bias" in names:
            h = hidden
            to_c += [Move(b_ih, _t("dense_i/bias")), Move(b_hh, Zeros((3 * h,)))]
            to_f.append(Move("dense_i/bias", Concat((
                Sum((rows(b_ih, 0, h), rows(b_hh, 0, h))), Sum((rows(b_ih, h, h), rows(b_hh, h, h))),
                rows(b_ih, 2 * h, h))), lossy=_FOLD))
            return Conversion(tuple(to_c), tuple(to_f), must_be_zero=(rows(b_hh, 2 * h, h),))
        return Conversion(problems=(f"{type_name}: unknown packed cell layout {sorted(names)}",))
    if lstm:
        gate_in = [("ii", "if_" if "if_/kernel" in names else "if", "ig", "io")]
        i_names = gate_in[0]
        h_names = ("hi", "hf", "hg", "ho")
        need = [f"{g}/kernel" for g in (*i_names, *h_names)] + [f"{g}/bias" for g in h_names]
        if sorted(need) != sorted(names):
            return Conversion(problems=(f"{type_name}: expected the variables {sorted(need)}, "
                                        f"found {sorted(names)}",))
        hidden = names["hi/kernel"][0]
        to_c = [Move(w_ih, Concat(tuple(kt(f"{g}/kernel") for g in i_names))),
                Move(w_hh, Concat(tuple(kt(f"{g}/kernel") for g in h_names))),
                Move(b_ih, Concat(tuple(_t(f"{g}/bias") for g in h_names))),
                Move(b_hh, Zeros((4 * hidden,)))]
        to_f = []
        for k, (gi, gh) in enumerate(zip(i_names, h_names, strict=True)):
            to_f.append(Move(f"{gi}/kernel", rows_t(w_ih, k * hidden, hidden)))
            to_f.append(Move(f"{gh}/kernel", rows_t(w_hh, k * hidden, hidden)))
            to_f.append(Move(f"{gh}/bias", Sum((rows(b_ih, k * hidden, hidden),
                                                rows(b_hh, k * hidden, hidden))), lossy=_FOLD))
        return Conversion(tuple(to_c), tuple(to_f))
    if gru:
        need = [f"{g}/kernel" for g in ("ir", "iz", "in", "hr", "hz", "hn")]
        need += ["ir/bias", "iz/bias", "in/bias", "hn/bias"]
        if sorted(need) != sorted(names):
            return Conversion(problems=(f"{type_name}: expected the variables {sorted(need)}, "
                                        f"found {sorted(names)}",))
        h = names["hr/kernel"][0]
        to_c = [Move(w_ih, Concat(tuple(kt(f"{g}/kernel") for g in ("ir", "iz", "in")))),
                Move(w_hh, Concat(tuple(kt(f"{g}/kernel") for g in ("hr", "hz", "hn")))),
                Move(b_ih, Concat(tuple(_t(f"{g}/bias") for g in ("ir", "iz", "in")))),
                Move(b_hh, Concat((Zeros((h,)), Zeros((h,)), _t("hn/bias"))))]
        to_f = []
        for k, (gi, gh) in enumerate((("ir", "hr"), ("iz", "hz"), ("in", "hn"))):
            to_f.append(Move(f"{gi}/kernel", rows_t(w_ih, k * h, h)))
            to_f.append(Move(f"{gh}/kernel", rows_t(w_hh, k * h, h)))
        to_f += [Move("ir/bias", Sum((rows(b_ih, 0, h), rows(b_hh, 0, h))), lossy=_FOLD),
                 Move("iz/bias", Sum((rows(b_ih, h, h), rows(b_hh, h, h))), lossy=_FOLD),
                 Move("in/bias", rows(b_ih, 2 * h, h)),
                 Move("hn/bias", rows(b_hh, 2 * h, h))]
        return Conversion(tuple(to_c), tuple(to_f))
    return Conversion(problems=(
        f"{type_name} is declared recurrent, but only LSTM and GRU cells (linen and nnx) have a "
        "known torch layout; declare it as another kind or port it with rename= and kind 'other'",))


def conversion(kind: str, type_name: str, layout: Layout, attrs: Mapping,
               variables: Mapping[str, tuple[int, ...]], *, rnn_suffix: str = "") -> Conversion:
    """How a Flax layer's variables map onto its torch counterpart's ``state_dict`` entries.

    Args:
        kind: the layer's kind (from the registry; ``"other"`` for unregistered layers).
        type_name: its class name (``"LSTMCell"``, ``"OptimizedLSTMCell"``, ...).
        layout: the layout of its ``kernel``.
        attrs: its attributes (``transpose_kernel``, ``axis``, ...).
        variables: its variables, by path relative to the layer (``"kernel"``,
            ``"query/kernel"``, ``"mean"``), with their shapes.
        rnn_suffix: for a recurrent cell run by an ``RNN``: torch's parameter
            suffix (``"_l0"``, ``"_l0_reverse"``); ``""`` for a bare cell
            (torch's ``LSTMCell``).

    >>> c = conversion("linear", "Dense", FLAX, {}, {"kernel": (4, 3), "bias": (3,)})
    >>> [(m.target, describe(m.expr)) for m in c.to_canonical]
    [('weight', 'transpose'), ('bias', 'copy')]
    """
    if kind == "attention":
        return _attention(variables, attrs)
    if kind == "recurrent":
        return _recurrent(type_name, variables, rnn_suffix)
    return _plain(kind, layout, attrs, variables)


# ----------------------------------------------------------------------- names


def canonical_segments(path: Sequence[str], containers: Mapping[tuple[str, ...], str | None]
                       ) -> list[tuple[str, int]]:
    """The canonical name segments of a Flax module path, each with the length of the
    path prefix it ends (see :func:`canonical_prefix`)."""
    out: list[tuple[str, int]] = []
    path = tuple(str(p) for p in path)
    i = 0
    while i < len(path):
        seg = path[i]
        if containers.get(path[:i]) == "sequential":
            m = re.fullmatch(r"layers_(\d+)", seg)
            if m is not None:
                out.append((m[1], i + 1))
                i += 1
                continue
            if seg == "layers" and i + 1 < len(path) and path[i + 1].isdigit():
                out.append((path[i + 1], i + 2))
                i += 2
                continue
        out.append((seg, i + 1))
        i += 1
    return out


def canonical_prefix(path: Sequence[str], containers: Mapping[tuple[str, ...], str | None]) -> str:
    """The dotted canonical name of a Flax module path.

    ``containers`` maps module paths to ``"sequential"`` (etc.) where the module
    is one of Flax's container modules. A linen ``Sequential``'s ``layers_3`` and
    an nnx ``Sequential``'s ``layers.3`` are torch ``Sequential``'s ``3``.

    >>> canonical_prefix(("features", "layers_2"), {("features",): "sequential"})
    'features.2'
    >>> canonical_prefix(("seq", "layers", "0"), {("seq",): "sequential"})
    'seq.0'
    """
    return ".".join(seg for seg, _ in canonical_segments(path, containers))


def as_renamer(rename) -> Callable[[str], str] | None:
    """``rename=`` as a function: None, a callable, or an ordered list of ``(pattern,
    replacement)`` regex pairs applied one after the other with ``re.sub``.

    >>> as_renamer([(r"^h_(\\d+)\\.", r"h.\\1.")])("h_0.attn.weight")
    'h.0.attn.weight'
    """
    if rename is None or callable(rename):
        return rename
    if isinstance(rename, (str, bytes)) or not isinstance(rename, Iterable):
        raise TypeError("rename must be a callable or a list of (pattern, replacement) pairs; "
                        f"got {rename!r}")
    pairs = []
    for item in rename:
        if not (isinstance(item, (tuple, list)) and len(item) == 2
                and all(isinstance(x, str) for x in item)):
            raise TypeError(f"rename: each entry must be a (pattern, replacement) pair of strings; "
                            f"got {item!r}")
        try:
            pairs.append((re.compile(item[0]), item[1]))
        except re.error as err:
            raise ValueError(f"rename: {item[0]!r} is not a valid regular expression: {err}") from None

    def renamer(name: str) -> str:
        for pattern, repl in pairs:
            name = pattern.sub(repl, name)
        return name

    return renamer


_INDEXED = re.compile(r"^(?P<base>.+?)_(?P<index>\d+)$")


class NameResolver:
    """Maps Flax module paths onto the torch model's module names, segment by segment.

    For each segment, in this order: the same name in torch; ``name_k`` as
    ``name.k`` (linen names a list attribute's modules ``blocks_0``, torch a
    ``ModuleList``'s ``blocks.0``); and for linen's automatic names
    ``<Class>_<k>``, the k-th child of the torch parent that is the same kind of
    layer (or, for unregistered classes, has the same class name), among the
    children no Flax sibling names explicitly. A segment that matches nothing
    is kept (and then reported as missing or unexpected).

    Args:
        torch_modules: module name -> (kind, class name), in ``named_modules()``
            order (``""`` is the root).
    """

    def __init__(self, torch_modules: Mapping[str, tuple[str, str]]):
        self.modules = dict(torch_modules)
        self.children: dict[str, list[str]] = {}
        for name in self.modules:
            if name:
                parent, _, child = name.rpartition(".")
                self.children.setdefault(parent, []).append(child)

    def _join(self, prefix: str, seg: str) -> str:
        return f"{prefix}.{seg}" if prefix else seg

    def resolve(self, segments: Sequence[str], infos: Sequence[tuple[str, str, int | None] | None],
                siblings: Mapping[str, set[str]]) -> str:
        """The torch module name for Flax module path ``segments``.

        ``infos[i]``: (kind, class name, automatic index) of the Flax module at
        ``segments[:i+1]`` (None if unknown); ``siblings[prefix]``: the segment
        names the Flax modules under the (unresolved) canonical ``prefix`` use.
        """
        prefix = raw = ""
        for seg, info in zip(segments, infos, strict=True):
            cands = [seg]
            m = _INDEXED.match(seg)
            if m is not None:
                cands.append(f"{m['base']}.{m['index']}")
            found = next((c for c in cands if self._join(prefix, c) in self.modules), None)
            if found is None and info is not None and info[2] is not None:
                taken = {self._resolve_sibling(prefix, s) for s in siblings.get(raw, set()) if s != seg}
                found = self._structural(prefix, info, taken)
            prefix = self._join(prefix, found or seg)
            raw = self._join(raw, seg)
        return prefix

    def _resolve_sibling(self, prefix: str, seg: str) -> str:
        """The torch child a Flax sibling named ``seg`` takes by name (itself if none)."""
        m = _INDEXED.match(seg)
        if m is not None and self._join(prefix, f"{m['base']}.{m['index']}") in self.modules:
            return f"{m['base']}.{m['index']}"
        return seg

    def _structural(self, prefix: str, info, taken: set[str]) -> str | None:
        kind, type_name, index = info
        same = []
        taken_heads = {t.split(".")[0] for t in taken}
        for child in self.children.get(prefix, []):
            if child in taken_heads:
                continue
            c_kind, c_type = self.modules[self._join(prefix, child)]
            if (kind != "other" and c_kind == kind) or (kind == "other" and c_type == type_name):
                same.append(child)
        return same[index] if index < len(same) else None


# ------------------------------------------------------------ hyper-parameters


def _tuple(value, n: int, default: int = 1) -> tuple:
    if value is None:
        return (default,) * n
    if isinstance(value, int):
        return (value,) * n
    return tuple(value)


def _torch_pads(attrs: Mapping, n: int):
    """Torch conv padding as per-dim (low, high) pairs, or None if not comparable."""
    padding, k, d = attrs.get("padding"), _tuple(attrs.get("kernel_size"), n), _tuple(attrs.get("dilation"), n)
    if padding == "valid":
        return ((0, 0),) * n
    if padding == "same":
        return tuple((dd * (kk - 1) // 2, dd * (kk - 1) - dd * (kk - 1) // 2) for kk, dd in zip(k, d, strict=True))
    return tuple((p, p) for p in _tuple(padding, n, 0))


def _flax_conv_pads(attrs: Mapping, n: int, k: tuple):
    padding = attrs.get("padding", "SAME")
    d = _tuple(attrs.get("kernel_dilation"), n)
    s = _tuple(attrs.get("strides"), n)
    if isinstance(padding, str):
        if padding == "VALID":
            return ((0, 0),) * n
        if padding == "CAUSAL":
            return tuple((dd * (kk - 1), 0) for kk, dd in zip(k, d, strict=True))
        if padding in ("SAME", "CIRCULAR") and all(x == 1 for x in s):
            return tuple((dd * (kk - 1) // 2, dd * (kk - 1) - dd * (kk - 1) // 2)
                         for kk, dd in zip(k, d, strict=True))
        return None  # depends on the input size
    if isinstance(padding, int):
        return ((padding, padding),) * n
    return tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)


def _flax_conv_transpose_pads(attrs: Mapping, n: int, k: tuple):
    padding = attrs.get("padding", "SAME")
    d = _tuple(attrs.get("kernel_dilation"), n)
    s = _tuple(attrs.get("strides"), n)
    if isinstance(padding, int):
        return ((padding, padding),) * n
    if not isinstance(padding, str):
        return tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)
    if padding not in ("SAME", "VALID"):
        return None
    out = []
    for kk, dd, ss in zip(k, d, s, strict=True):  # lax.conv_transpose's string paddings
        keff = dd * (kk - 1) + 1
        if padding == "SAME":
            total = keff + ss - 2
            lo = keff - 1 if ss > keff - 1 else math.ceil(total / 2)
        else:
            total = keff + ss - 2 + max(keff - ss, 0)
            lo = keff - 1
        out.append((lo, total - lo))
    return tuple(out)


def _differs(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a is None or b is None or not math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
    return a != b


def hyper_parameter_warnings(name: str, kind: str, torch_type: str, torch_attrs: Mapping,
                             flax_type: str, flax_attrs: Mapping) -> list[str]:
    """Settings of a matched layer pair that differ and change the forward pass.

    ``torch_attrs`` are the torch module's (``eps``, ``stride``, ``padding``,
    ``dilation``, ``kernel_size``, ``groups``, ``padding_mode``,
    ``output_padding``, ``num_heads``, ``max_norm``, ``num_groups``), ``flax_attrs``
    the Flax module's (``epsilon``, ``strides``, ``padding``, ...). Returns one
    line per difference; none when the layers agree (or the setting cannot be
    read).
    """
    out = []

    def warn(what, t, f, extra=""):
        out.append(f"{name}: {what} differs: torch {torch_type} {t} vs Flax {flax_type} {f}{extra}")

    if kind == "norm":
        t_eps = torch_attrs.get("eps", "unset")
        f_eps = flax_attrs.get("epsilon", "unset")
        if t_eps != "unset" and f_eps != "unset":
            if t_eps is None:
                t_eps_s = "None (torch.finfo(dtype).eps)"
                if f_eps is not None:
                    warn("epsilon", t_eps_s, f"epsilon={f_eps}", " (pass epsilon= to match)")
            elif _differs(float(t_eps), float(f_eps)):
                warn("epsilon", f"eps={t_eps}", f"epsilon={f_eps}",
                     f" (pass epsilon={t_eps} to the Flax layer)")
        if "num_groups" in torch_attrs and "num_groups" in flax_attrs \
                and torch_attrs["num_groups"] != flax_attrs["num_groups"]:
            warn("num_groups", torch_attrs["num_groups"], flax_attrs["num_groups"])
    elif kind in ("conv", "conv_transpose"):
        k = torch_attrs.get("kernel_size")
        if k is None:
            return out
        n = len(k)
        ts, fs = _tuple(torch_attrs.get("stride"), n), _tuple(flax_attrs.get("strides"), n)
        if ts != fs:
            warn("stride", f"stride={ts}", f"strides={fs}")
        td, fd = _tuple(torch_attrs.get("dilation"), n), _tuple(flax_attrs.get("kernel_dilation"), n)
        if td != fd:
            warn("dilation", f"dilation={td}", f"kernel_dilation={fd}")
        if kind == "conv":
            fi = _tuple(flax_attrs.get("input_dilation"), n)
            if any(x != 1 for x in fi):
                warn("input dilation", "(none)", f"input_dilation={fi}")
            t_groups, f_groups = torch_attrs.get("groups", 1), flax_attrs.get("feature_group_count", 1)
            if t_groups != f_groups:
                warn("groups", f"groups={t_groups}", f"feature_group_count={f_groups}")
            t_circ = torch_attrs.get("padding_mode", "zeros") == "circular"
            f_circ = flax_attrs.get("padding") == "CIRCULAR"
            if torch_attrs.get("padding_mode", "zeros") not in ("zeros", "circular") or t_circ != f_circ:
                warn("padding mode", f"padding_mode={torch_attrs.get('padding_mode')!r}",
                     f"padding={flax_attrs.get('padding')!r}")
            tp, fp = _torch_pads(torch_attrs, n), _flax_conv_pads(flax_attrs, n, tuple(k))
            if fp is not None and tp != fp:
                warn("padding", f"padding={torch_attrs.get('padding')} (pads {tp})",
                     f"padding={flax_attrs.get('padding')!r} (pads {fp})",
                     f" (pass padding={[tuple(p) for p in tp]} to the Flax layer)")
        else:
            op = _tuple(torch_attrs.get("output_padding"), n, 0)
            want = tuple((dd * (kk - 1) - p, dd * (kk - 1) - p + o) for kk, dd, p, o
                         in zip(k, td, _tuple(torch_attrs.get("padding"), n, 0), op, strict=True))
            got = _flax_conv_transpose_pads(flax_attrs, n, tuple(k))
            if got is not None and got != want:
                warn("padding", f"padding={torch_attrs.get('padding')} output_padding={op}",
                     f"padding={flax_attrs.get('padding')!r} (pads {got})",
                     f" (torch's equals Flax padding={[tuple(p) for p in want]})")
    elif kind == "attention":
        if torch_attrs.get("num_heads") is not None and flax_attrs.get("num_heads") is not None \
                and torch_attrs["num_heads"] != flax_attrs["num_heads"]:
            warn("num_heads", torch_attrs["num_heads"], flax_attrs["num_heads"])
        if torch_attrs.get("add_zero_attn"):
            warn("zero attention", "add_zero_attn=True", "(none)")
    elif kind == "embedding":
        if torch_attrs.get("max_norm") is not None:
            warn("max_norm", f"max_norm={torch_attrs['max_norm']}", "(none)")
    elif kind == "recurrent":
        for attr, default in (("gate_fn", "sigmoid()"), ("activation_fn", "tanh()")):
            value = flax_attrs.get(attr, default)
            if value != default:
                warn(attr, f"{default[:-2]} (fixed)", f"{attr}={value}")
    return out


# --------------------------------------------------------------------- results


@dataclass(frozen=True)
class Problem:
    """One key that cannot be converted.

    ``what``: ``"missing"`` (the destination needs it, the source lacks it),
    ``"unexpected"`` (the source has it, nothing takes it) or ``"mismatched"``
    (both have it, and the shapes, dtypes or layer kinds disagree).
    """

    what: str
    name: str
    source: str = ""
    destination: str = ""
    detail: str = ""

    def __str__(self) -> str:
        parts = [self.name]
        if self.source:
            parts.append(f"source {self.source}")
        if self.destination:
            parts.append(f"destination {self.destination}")
        text = ", ".join(parts)
        return f"{text}: {self.detail}" if self.detail else text


@dataclass(frozen=True)
class PortReport:
    """What a conversion did: converted, missing, unexpected and mismatched keys, warnings.

    Returned with the converted model by ``strict=False``; carried by
    :class:`PortError` otherwise.
    """

    direction: str
    converted: tuple[str, ...] = ()
    missing: tuple[Problem, ...] = ()
    unexpected: tuple[Problem, ...] = ()
    mismatched: tuple[Problem, ...] = ()
    warnings: tuple[str, ...] = ()
    lossy: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        lines = [f"{self.direction}: {len(self.converted)} converted, {len(self.missing)} missing, "
                 f"{len(self.unexpected)} unexpected, {len(self.mismatched)} mismatched"]
        for title, items in (("missing", self.missing), ("unexpected", self.unexpected),
                             ("mismatched", self.mismatched)):
            for p in items:
                lines.append(f"  {title}: {p}")
        for w in self.lossy:
            lines.append(f"  lossy: {w}")
        for w in self.warnings:
            lines.append(f"  warning: {w}")
        return "\n".join(lines)


class PortError(ValueError):
    """A conversion that cannot be done as asked; nothing was written.

    The message lists every missing, unexpected and mismatched key with both
    shapes; :attr:`report` has them as data.
    """

    def __init__(self, report: PortReport, hint: str = ""):
        self.report = report
        text = str(report)
        if hint:
            text += "\n" + hint
        super().__init__(text)


@dataclass(frozen=True)
class PlanRow:
    """One destination tensor of a conversion: where it comes from and how."""

    source: str
    destination: str
    kind: str
    operation: str
    source_shape: str
    destination_shape: tuple[int, ...]
    dtype: str
    note: str = ""


@dataclass(frozen=True)
class PortPlan:
    """The dry run of a conversion, nothing read or written: ``print(plan)`` shows a table."""

    direction: str
    rows: tuple[PlanRow, ...]
    report: PortReport = field(default_factory=lambda: PortReport(""))

    @property
    def warnings(self) -> tuple[str, ...]:
        return self.report.warnings

    def __str__(self) -> str:
        head = ("source", "destination", "kind", "operation", "shapes", "dtype")
        rows = [head]
        for r in self.rows:
            shapes = f"{r.source_shape} -> {r.destination_shape}"
            op = r.operation + (f" [{r.note}]" if r.note else "")
            rows.append((r.source, r.destination, r.kind, op, shapes, r.dtype))
        widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
        lines = [f"port plan ({self.direction}): {len(self.rows)} tensors"]
        for row in rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if not self.report.ok or self.report.warnings or self.report.lossy:
            lines.append(str(self.report))
        return "\n".join(lines)
