"""Recommended gains for nonlinearities, exactly as ``torch.nn.init.calculate_gain``."""

from __future__ import annotations

import math

from .errors import NonlinearityError

__all__ = ["GAINS", "NONLINEARITIES", "calculate_gain"]


def _leaky_relu(param):
    if param is None:
        slope = 0.01
    elif (isinstance(param, int) and not isinstance(param, bool)) or isinstance(param, float):
        slope = param
    else:
        raise NonlinearityError(
            f"negative_slope {param} not a valid number: calculate_gain('leaky_relu', param) "
            f"needs an int or float slope (or None for 0.01); got {type(param).__name__} {param!r}"
        )
    return math.sqrt(2.0 / (1 + slope**2))


# name -> gain(param). The integer 1 (not 1.0) is what torch returns for these.
GAINS = {
    "linear": lambda param: 1,
    "conv1d": lambda param: 1,
    "conv2d": lambda param: 1,
    "conv3d": lambda param: 1,
    "conv_transpose1d": lambda param: 1,
    "conv_transpose2d": lambda param: 1,
    "conv_transpose3d": lambda param: 1,
    "sigmoid": lambda param: 1,
    "tanh": lambda param: 5.0 / 3,
    "relu": lambda param: math.sqrt(2.0),
    "leaky_relu": _leaky_relu,
    # Empirical value from pytorch PR #50664; use 'linear' for self-normalizing nets.
    "selu": lambda param: 3.0 / 4,
}
NONLINEARITIES = tuple(GAINS)


def calculate_gain(nonlinearity: str, param: int | float | None = None) -> float:
    r"""The recommended gain for a nonlinearity, as ``torch.nn.init.calculate_gain``.

    ================= ====================================================
    nonlinearity      gain
    ================= ====================================================
    Linear / Identity :math:`1`
    Conv{1,2,3}D      :math:`1`
    Sigmoid           :math:`1`
    Tanh              :math:`\frac{5}{3}`
    ReLU              :math:`\sqrt{2}`
    Leaky Relu        :math:`\sqrt{\frac{2}{1 + \text{negative\_slope}^2}}`
    SELU              :math:`\frac{3}{4}`
    ================= ====================================================

    Args:
        nonlinearity: one of :data:`NONLINEARITIES`.
        param: the negative slope of ``leaky_relu`` (default 0.01); ignored otherwise.

    Raises:
        NonlinearityError (a ``ValueError``): unknown name, or a non-numeric slope.

    >>> calculate_gain("relu")
    1.4142135623730951
    """
    try:
        gain = GAINS[nonlinearity]
    except (KeyError, TypeError):
        raise NonlinearityError(
            f"Unsupported nonlinearity {nonlinearity}: calculate_gain(nonlinearity=...) "
            f"accepts one of {list(NONLINEARITIES)}"
        ) from None
    return gain(param)
