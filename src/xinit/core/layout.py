"""Layouts map a framework's weight shape onto xinit's canonical ``(out, in, *receptive)``.

Every sampler works on the canonical shape, which is PyTorch's weight layout, and
fans are computed there exactly as ``torch.nn.init._calculate_fan_in_and_fan_out``.
A :class:`Layout` says where a framework keeps the ``in`` and ``out`` axes; the
remaining axes are the receptive field, kept in their order.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import NamedTuple

from .errors import AxisError, ShapeError

__all__ = ["Layout", "TORCH", "FLAX", "IDENTITY", "Fans", "as_shape", "compute_fans", "canonical_shape"]


def as_shape(shape) -> tuple[int, ...]:
    """``shape`` as a tuple of Python ints, read as JAX reads shapes.

    An int is a 1-D shape (``5`` -> ``(5,)``); a sequence may hold ints, numpy
    integers or concrete integer arrays. Negative, float and other non-integer
    dimensions raise ``TypeError`` with the message of JAX's
    ``canonicalize_shape`` (JAX itself lets some negative dimensions through to
    an XLA error; xinit rejects them all before anything is drawn).

    >>> as_shape(5), as_shape([2, 3])
    ((5,), (2, 3))
    """
    dims = None
    if not isinstance(shape, (tuple, list)):  # a sequence is never an index: no exception
        try:
            dims = (operator.index(shape),)
        except TypeError:
            pass
    if dims is None:
        try:
            dims = tuple(operator.index(d) for d in shape)
        except TypeError:
            dims = None
    if dims is None or any(d < 0 for d in dims):
        raise TypeError(
            "Shapes must be 1D sequences of concrete values of integer type, got "
            f"{shape!r}; every dimension must be an integer >= 0"
        )
    return dims


class Fans(NamedTuple):
    fan_in: int
    fan_out: int


@dataclass(frozen=True)
class Layout:
    """Where a framework keeps the ``in`` and ``out`` axes of a weight.

    Args:
        in_axis: axis of the input features (negative counts from the end).
        out_axis: axis of the output features.
        name: a label for reprs and error messages.

    ``TORCH = Layout(1, 0)`` is the canonical layout (the identity);
    ``FLAX = Layout(-2, -1)`` is flax's kernel layout ``(*receptive, in, out)``.
    Shapes with fewer than two dimensions are used as they are (identity), which
    is what embedding tables, biases and norm scales need.
    """

    in_axis: int = 1
    out_axis: int = 0
    name: str = ""

    def __post_init__(self) -> None:
        for arg in ("in_axis", "out_axis"):
            value = getattr(self, arg)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"Layout {arg} must be an int; got {value!r}")

    def _axes(self, ndim: int) -> tuple[int, int]:
        i, o = self.in_axis % ndim, self.out_axis % ndim
        for arg, value in (("in_axis", self.in_axis), ("out_axis", self.out_axis)):
            if not -ndim <= value < ndim:
                raise AxisError(f"Layout {arg}={value} is out of range for a {ndim}-D shape")
        if i == o:
            raise ShapeError(
                f"Layout in_axis={self.in_axis} and out_axis={self.out_axis} name the same axis "
                f"of a {ndim}-D shape"
            )
        return i, o

    def permutation(self, ndim: int) -> tuple[int, ...]:
        """Axes of a shape in this layout, in canonical order: ``canonical = x.transpose(perm)``."""
        if ndim < 2:
            return tuple(range(ndim))
        i, o = self._axes(ndim)
        rest = [d for d in range(ndim) if d not in (i, o)]
        return (o, i, *rest)

    def inverse_permutation(self, ndim: int) -> tuple[int, ...]:
        """``x = canonical.transpose(inverse)`` brings a canonical array back to this layout."""
        perm = self.permutation(ndim)
        inv = [0] * ndim
        for k, p in enumerate(perm):
            inv[p] = k
        return tuple(inv)

    def is_identity(self, ndim: int) -> bool:
        return self.permutation(ndim) == tuple(range(ndim))

    def __repr__(self) -> str:
        return self.name or f"Layout(in_axis={self.in_axis}, out_axis={self.out_axis})"


TORCH = Layout(1, 0, name="TORCH")
FLAX = Layout(-2, -1, name="FLAX")
IDENTITY = TORCH


def canonical_shape(shape, layout: Layout = TORCH) -> tuple[int, ...]:
    """``shape`` (in ``layout``) reordered to the canonical ``(out, in, *receptive)``."""
    shape = tuple(int(d) for d in shape)
    return tuple(shape[p] for p in layout.permutation(len(shape)))


def compute_fans(shape, layout: Layout = TORCH) -> Fans:
    """Fan-in and fan-out of a weight of ``shape`` stored in ``layout``.

    ``fan_in = in * prod(receptive)`` and ``fan_out = out * prod(receptive)``,
    exactly as ``torch.nn.init._calculate_fan_in_and_fan_out`` on the canonical
    shape.

    Raises:
        ShapeError (a ``ValueError``): for fewer than two dimensions, as torch.

    >>> compute_fans((16, 8, 3, 3))
    Fans(fan_in=72, fan_out=144)
    >>> compute_fans((3, 3, 8, 16), FLAX)
    Fans(fan_in=72, fan_out=144)
    """
    shape = tuple(int(d) for d in shape)
    if len(shape) < 2:
        raise ShapeError(
            "Fan in and fan out can not be computed for tensor with fewer than 2 dimensions "
            f"(got shape {shape}); fan-based initializers need a weight matrix or kernel, "
            "use normal_/uniform_ for vectors"
        )
    canon = canonical_shape(shape, layout)
    receptive = math.prod(canon[2:])
    return Fans(canon[1] * receptive, canon[0] * receptive)
