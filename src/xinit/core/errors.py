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


class OutOfMemoryError(XinitError, MemoryError, RuntimeError):
    """Memory ran out while drawing (an XLA allocation or compilation, or a host buffer).

    A ``MemoryError`` (what Python and numpy raise) and a ``RuntimeError`` (what
    torch raises when it cannot allocate): ``except MemoryError`` and ``except
    RuntimeError`` both catch it. Raised before anything is written wherever the
    engine can arrange it (see :mod:`xinit.core.engine`).
    """
