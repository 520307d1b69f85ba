"""One functional sampler per initializer: ``f(key, shape, *args, dtype=...) -> jax.Array``.

Shapes are canonical ``(out, in, *receptive)`` (PyTorch's layout); pass
``layout=FLAX`` for flax kernels. Every function is a thin call of
:func:`xinit.core.sample` with the matching spec, so its values are exactly those
of ``xinit.torch`` and ``xinit.flax.torch_init`` for the same key.
"""

from __future__ import annotations

from .arrays import sample
from .layout import TORCH, Layout
from .specs import (
    Constant,
    Dirac,
    Eye,
    KaimingNormal,
    KaimingUniform,
    Normal,
    Ones,
    Orthogonal,
    Sparse,
    TruncNormal,
    Uniform,
    XavierNormal,
    XavierUniform,
    Zeros,
)

__all__ = [
    "uniform",
    "normal",
    "trunc_normal",
    "constant",
    "ones",
    "zeros",
    "eye",
    "dirac",
    "xavier_uniform",
    "xavier_normal",
    "kaiming_uniform",
    "kaiming_normal",
    "orthogonal",
    "sparse",
]


def uniform(key, shape, a=0.0, b=1.0, *, dtype=None, layout: Layout = TORCH):
    r"""Sample :math:`\mathcal{U}(a, b)`; bit-identical to ``jax.random.uniform`` in float32/64.

    >>> uniform(0, (2, 3), -1.0, 1.0).shape
    (2, 3)
    """
    return sample(Uniform(a, b), key, shape, dtype, layout=layout)


def normal(key, shape, mean=0.0, std=1.0, *, dtype=None, layout: Layout = TORCH):
    r"""Sample :math:`\mathcal{N}(\text{mean}, \text{std}^2)`."""
    return sample(Normal(mean, std), key, shape, dtype, layout=layout)


def trunc_normal(key, shape, mean=0.0, std=1.0, a=-2.0, b=2.0, *, dtype=None, layout=TORCH):
    r"""Sample :math:`\mathcal{N}(\text{mean}, \text{std}^2)` truncated to the absolute ``[a, b]``."""
    return sample(TruncNormal(mean, std, a, b), key, shape, dtype, layout=layout)


def constant(key, shape, val, *, dtype=None, layout: Layout = TORCH):
    """Fill with ``val`` (``key`` is accepted for a uniform signature and ignored)."""
    return sample(Constant(val), key, shape, dtype, layout=layout)


def ones(key, shape, *, dtype=None, layout: Layout = TORCH):
    """Fill with 1."""
    return sample(Ones(), key, shape, dtype, layout=layout)


def zeros(key, shape, *, dtype=None, layout: Layout = TORCH):
    """Fill with 0."""
    return sample(Zeros(), key, shape, dtype, layout=layout)


def eye(key, shape, *, dtype=None, layout: Layout = TORCH):
    """The 2-D (rectangular) identity."""
    return sample(Eye(), key, shape, dtype, layout=layout)


def dirac(key, shape, groups=1, *, dtype=None, layout: Layout = TORCH):
    """The Dirac delta for 3/4/5-D convolution kernels, per group."""
    return sample(Dirac(groups), key, shape, dtype, layout=layout)


def xavier_uniform(key, shape, gain=1.0, *, dtype=None, layout: Layout = TORCH):
    r""":math:`\mathcal{U}(\pm\,\text{gain}\sqrt{6/(\text{fan\_in}+\text{fan\_out})})` (Glorot & Bengio 2010)."""
    return sample(XavierUniform(gain), key, shape, dtype, layout=layout)


def xavier_normal(key, shape, gain=1.0, *, dtype=None, layout: Layout = TORCH):
    r""":math:`\mathcal{N}(0, 2\,\text{gain}^2/(\text{fan\_in}+\text{fan\_out}))`, untruncated."""
    return sample(XavierNormal(gain), key, shape, dtype, layout=layout)


def kaiming_uniform(
    key, shape, a=0, mode="fan_in", nonlinearity="leaky_relu", *, dtype=None, layout=TORCH
):
    r""":math:`\mathcal{U}(\pm\,\text{gain}\sqrt{3/\text{fan\_mode}})` (He et al. 2015)."""
    return sample(KaimingUniform(a, mode, nonlinearity), key, shape, dtype, layout=layout)


def kaiming_normal(
    key, shape, a=0, mode="fan_in", nonlinearity="leaky_relu", *, dtype=None, layout=TORCH
):
    r""":math:`\mathcal{N}(0, \text{gain}^2/\text{fan\_mode})`, untruncated (He et al. 2015)."""
    return sample(KaimingNormal(a, mode, nonlinearity), key, shape, dtype, layout=layout)


def orthogonal(key, shape, gain=1.0, *, dtype=None, layout: Layout = TORCH):
    """A Haar-random (semi-)orthogonal matrix times ``gain``; trailing dims flattened."""
    return sample(Orthogonal(gain), key, shape, dtype, layout=layout)


def sparse(key, shape, sparsity, std=0.01, *, dtype=None, layout: Layout = TORCH):
    """N(0, std) with exactly ``ceil(sparsity * rows)`` zeros per column; 2-D only."""
    return sample(Sparse(sparsity, std), key, shape, dtype, layout=layout)
