"""Exceptions raised by xinit.

Each error is an :class:`XinitError` and also the builtin exception type that
``torch.nn.init`` raises for the same mistake, so ``except ValueError`` (the JAX
convention) and ``except RuntimeError`` (what torch raises for reversed uniform
bounds) both keep working when code switches to xinit.
"""

from __future__ import annotations

__all__ = [
    "XinitError",
    "ShapeError",
    "AxisError",
    "BoundsError",
    "ModeError",
    "ModeTypeError",
    "NonlinearityError",
    "DtypeError",
    "ZeroSizeError",
    "ArgumentTypeError",
    "ComplexArgumentError",
    "NotScalarError",
    "IntegerError",
    "RangeError",
    "UnwritableTensorError",
    "CheckpointError",
    "OutOfMemoryError",
]


class XinitError(Exception):
    """Base class of every error xinit raises on purpose."""


class ShapeError(XinitError, ValueError):
    """The tensor's shape does not suit the initializer (e.g. fans of a 1-D tensor)."""


class AxisError(ShapeError, IndexError):
    """An axis argument out of range for the shape (JAX raises ``IndexError`` here)."""


class BoundsError(XinitError, ValueError, RuntimeError):
    """Invalid bounds or scale: ``a > b``, ``std < 0``.

    torch raises ``RuntimeError`` for these, JAX code expects ``ValueError``:
    this is both.
    """


class ModeError(XinitError, ValueError):
    """An unknown fan mode or distribution name."""


class ModeTypeError(XinitError, TypeError, AttributeError):
    """A fan mode that is not a string (torch raises ``AttributeError`` here)."""


class NonlinearityError(XinitError, ValueError):
    """An unknown nonlinearity, or an invalid ``param`` for ``leaky_relu``."""


class DtypeError(XinitError, NotImplementedError, TypeError, ValueError):
    """The initializer does not support the dtype.

    torch raises ``NotImplementedError`` (or ``TypeError``) for these,
    ``jax.nn.initializers`` ``ValueError`` (e.g. an integer dtype for a random
    initializer): this is all three.
    """


class ZeroSizeError(XinitError, ZeroDivisionError, ValueError):
    """A division by zero that torch also raises: e.g. ``groups=0``, ``std=0`` in
    ``trunc_normal_``, or Xavier on a tensor whose fans sum to zero."""


class ArgumentTypeError(XinitError, TypeError):
    """An argument of the wrong type: a string, bytes or ``None`` where a number is
    expected (numeric strings included: torch rejects ``'0.5'`` too)."""


class ComplexArgumentError(XinitError, TypeError, RuntimeError):
    """A complex number where a real one is expected.

    torch raises ``TypeError`` when its argument parser meets it (``uniform_``,
    ``normal_``, the gains) and ``RuntimeError`` when an op does (``orthogonal_``'s
    gain, ``constant_`` on a real tensor): this is both.
    """


class NotScalarError(XinitError, TypeError, ValueError, RuntimeError):
    """An array or tensor with more than one element where a single number is expected.

    torch raises ``TypeError``, ``ValueError`` or ``RuntimeError`` for this depending
    on the function (e.g. ``constant_`` and ``sparse_`` differ): this is all three.
    """


class IntegerError(XinitError, TypeError, ValueError):
    """A non-integer where an integer is expected (``dirac_``'s ``groups=2.0``).

    torch raises ``TypeError``, or ``ValueError`` where its divisibility check
    (``dim 0 must be divisible by groups``) meets the value first: this is both.
    """


class RangeError(BoundsError, OverflowError):
    """A value outside the range of the dtype it is written in or computed in:
    ``uniform_(-1e5, 1e5)`` on float16, a ``mean`` beyond float32 for a float32 tensor.

    torch raises ``RuntimeError`` from its kernels' range checks, or ``OverflowError``
    where its Python arithmetic overflows first (``trunc_normal_``): this is both.
    """


class UnwritableTensorError(XinitError, RuntimeError):
    """The tensor cannot be written in place: an inference tensor outside
    ``torch.inference_mode()``, or an expanded view whose elements share memory."""


class CheckpointError(XinitError, RuntimeError, ValueError):
    """A checkpoint that does not fit the model (keys it lacks, other shapes or dtypes).

    ``torch.nn.Module.load_state_dict`` raises ``RuntimeError`` for these; the
    message lists every problem, and nothing was written.
    """


class OutOfMemoryError(XinitError, MemoryError, RuntimeError):
    """Memory ran out while drawing (an XLA allocation or compilation, or a host buffer).

    A ``MemoryError`` (what Python and numpy raise) and a ``RuntimeError`` (what
    torch raises when it cannot allocate): ``except MemoryError`` and ``except
    RuntimeError`` both catch it. Raised before anything is written wherever the
    engine can arrange it (see :mod:`xinit.core.engine`).
    """
