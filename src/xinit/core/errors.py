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
    "BoundsError",
    "ModeError",
    "ModeTypeError",
    "NonlinearityError",
    "DtypeError",
    "ZeroSizeError",
    "CheckpointError",
]


class XinitError(Exception):
    """Base class of every error xinit raises on purpose."""


class ShapeError(XinitError, ValueError):
    """The tensor's shape does not suit the initializer (e.g. fans of a 1-D tensor)."""


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


class DtypeError(XinitError, NotImplementedError, TypeError):
    """The initializer does not support the dtype (torch: ``NotImplementedError``)."""


class ZeroSizeError(XinitError, ZeroDivisionError, ValueError):
    """A division by zero that torch also raises: e.g. ``groups=0``, ``std=0`` in
    ``trunc_normal_``, or Xavier on a tensor whose fans sum to zero."""


class CheckpointError(XinitError, RuntimeError, ValueError):
    """A checkpoint that does not fit the model (keys it lacks, other shapes or dtypes).

    ``torch.nn.Module.load_state_dict`` raises ``RuntimeError`` for these; the
    message lists every problem, and nothing was written.
    """
