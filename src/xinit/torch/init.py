r"""Drop-in replacements for every function of ``torch.nn.init``.

Same names, signatures, defaults, distributions and exception types as
``torch.nn.init`` (torch 2.13); each random function also takes a keyword-only
``key=`` (a ``jax.random.key``, a ``uint32[2]`` key or an int seed). Without it a
63-bit seed is drawn from ``generator`` or, without that, from torch's global
RNG, so ``torch.manual_seed`` makes runs repeatable. Values come from xinit's
draw engine (:mod:`xinit.core.engine`) and are written into the tensor in place;
the same object is returned. Values equal ``torch.nn.init``'s *in distribution*, not bit for bit
(torch's generator is a different algorithm); for the same ``key`` they equal
``xinit.flax`` and ``xinit.core`` bit for bit.
``constant_``, ``ones_`` and ``zeros_`` have nothing to draw: they are written
with torch's own ``fill_`` (the same values, at memory speed).

Errors: a failed call raises the exception type torch raises for the same
mistake and changes nothing (not the tensor, its version counter, the global RNG
or ``generator``): every check runs before a seed is drawn. Deliberate
differences from torch, each with its reason, are listed in the docs page "What
PyTorch really does by default" (section "Differences from torch.nn.init"); among
them ``orthogonal_`` works on float16/bfloat16 tensors (computed in float32;
torch's CPU QR rejects them), ``sparse_`` draws its zero pattern from
``generator`` too (torch draws it from the global RNG even when given a
generator), and meta and zero-element tensors are validated like any other.

Running out of memory raises :class:`~xinit.core.errors.OutOfMemoryError` (a
``RuntimeError``, as torch's allocation failures, and a ``MemoryError``) with the
tensor untouched; a Ctrl-C during a write lets it finish, then raises
``KeyboardInterrupt`` (see :func:`xinit.core.engine.run`).
"""

from __future__ import annotations

import functools
import warnings

import torch

from xinit.core import specs
from xinit.core.gains import calculate_gain

from ._bridge import check_tensor, fill_

__all__ = [
    "calculate_gain",
    "uniform_",
    "normal_",
    "trunc_normal_",
    "constant_",
    "ones_",
    "zeros_",
    "eye_",
    "dirac_",
    "xavier_uniform_",
    "xavier_normal_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "orthogonal_",
    "sparse_",
    # deprecated aliases, as in torch.nn.init
    "uniform",
    "normal",
    "constant",
    "eye",
    "dirac",
    "xavier_uniform",
    "xavier_normal",
    "kaiming_uniform",
    "kaiming_normal",
    "orthogonal",
    "sparse",
]

Tensor = torch.Tensor


def uniform_(
    tensor: Tensor,
    a: float = 0.0,
    b: float = 1.0,
    generator: torch.Generator | None = None,
    *,
    key=None,
) -> Tensor:
    r"""Fill ``tensor`` with values from :math:`\mathcal{U}(a, b)`.

    Args:
        tensor: an n-dimensional floating (or complex) ``torch.Tensor``.
        a: the lower bound. b: the upper bound.
        generator: torch generator to draw the seed from (when ``key`` is None).
        key: keyword-only ``jax.random.key``, ``uint32[2]`` key or int seed.

    Raises:
        BoundsError (``RuntimeError``/``ValueError``): ``a > b``, a NaN or infinite bound.
        RangeError (``RuntimeError``): a bound, or ``b - a``, beyond the dtype's
            finite range (``uniform_(t, -1e5, 1e5)`` on float16).
        DtypeError (``NotImplementedError``): integer or bool tensors.
        ArgumentTypeError (``TypeError``): a bound that is not a number (``'0.5'``).
        UnwritableTensorError (``RuntimeError``): an inference tensor outside
            ``torch.inference_mode()``, or an expanded view.

    >>> w = torch.empty(3, 5)
    >>> uniform_(w, key=0).shape
    torch.Size([3, 5])
    """
    return fill_(tensor, specs.Uniform(a, b), key, generator, "uniform_")


def normal_(
    tensor: Tensor,
    mean: float = 0.0,
    std: float = 1.0,
    generator: torch.Generator | None = None,
    *,
    key=None,
) -> Tensor:
    r"""Fill ``tensor`` with values from :math:`\mathcal{N}(\text{mean}, \text{std}^2)`.

    Raises:
        BoundsError (``RuntimeError``/``ValueError``): ``std < 0`` or NaN.

    >>> normal_(torch.empty(3, 5), std=0.02, key=0).shape
    torch.Size([3, 5])
    """
    return fill_(tensor, specs.Normal(mean, std), key, generator, "normal_")


def trunc_normal_(
    tensor: Tensor,
    mean: float = 0.0,
    std: float = 1.0,
    a: float = -2.0,
    b: float = 2.0,
    generator: torch.Generator | None = None,
    *,
    key=None,
) -> Tensor:
    r"""Fill ``tensor`` with :math:`\mathcal{N}(\text{mean}, \text{std}^2)` truncated to ``[a, b]``.

    ``a`` and ``b`` are **absolute** bounds, not multiples of ``std``: with
    ``std=0.02`` the defaults ``a=-2, b=2`` truncate nothing (pass
    ``a=-2*std, b=2*std`` for two standard deviations). Sampled by inverse CDF,
    exact also far in the tails and on narrow intervals (there as an offset from
    the bound nearer the mean); values never leave ``[a, b]`` after rounding to
    the tensor's dtype, and are never NaN. Either bound may be infinite.

    Raises:
        ZeroSizeError (``ZeroDivisionError``): ``std == 0``.
        BoundsError (``RuntimeError``/``ValueError``): ``a > b``, ``std < 0``, a NaN or
            infinite ``mean`` or ``std``, a NaN bound.
        RangeError (``RuntimeError``/``OverflowError``): ``[a, b]`` outside the
            dtype's finite range, or ``mean`` beyond float32 for a float32 or 16-bit
            tensor (which are drawn in float32).

    Warns:
        UserWarning: when ``mean`` is more than 2 std outside ``[a, b]`` (as torch).

    >>> w = trunc_normal_(torch.empty(3, 5), std=0.02, a=-0.04, b=0.04, key=0)
    >>> bool(w.abs().max() <= 0.04)
    True
    """
    return fill_(tensor, specs.TruncNormal(mean, std, a, b), key, generator, "trunc_normal_")


def constant_(tensor: Tensor, val: float) -> Tensor:
    r"""Fill ``tensor`` with ``val``. Works on integer and bool tensors, as torch.

    >>> constant_(torch.empty(2, 2), 0.3).tolist()
    [[0.30000001192092896, 0.30000001192092896], [0.30000001192092896, 0.30000001192092896]]
    """
    return fill_(tensor, specs.Constant(val), 0, None, "constant_")


def ones_(tensor: Tensor) -> Tensor:
    r"""Fill ``tensor`` with 1.

    >>> ones_(torch.empty(2)).tolist()
    [1.0, 1.0]
    """
    return fill_(tensor, specs.Ones(), 0, None, "ones_")


def zeros_(tensor: Tensor) -> Tensor:
    r"""Fill ``tensor`` with 0.

    >>> zeros_(torch.empty(2)).tolist()
    [0.0, 0.0]
    """
    return fill_(tensor, specs.Zeros(), 0, None, "zeros_")


def eye_(tensor: Tensor) -> Tensor:
    r"""Fill the 2-D ``tensor`` with the (rectangular) identity matrix.

    Raises:
        ShapeError (``ValueError``): ``tensor.ndim != 2``.

    >>> eye_(torch.empty(2, 3)).tolist()
    [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    """
    return fill_(tensor, specs.Eye(), 0, None, "eye_")


def dirac_(tensor: Tensor, groups: int = 1) -> Tensor:
    r"""Fill the 3/4/5-D ``tensor`` with the Dirac delta, per group.

    Preserves the identity of the inputs in convolutional layers: for each group
    ``g`` and ``d < min(out/groups, in)``, ``w[g*out/groups + d, d, k//2, ...] = 1``.

    Raises:
        ShapeError (``ValueError``): ndim not in {3, 4, 5}, or ``size(0) % groups``.
        ZeroSizeError (``ZeroDivisionError``): ``groups == 0``.

    >>> dirac_(torch.empty(2, 2, 3))[:, :, 1].tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    """
    return fill_(tensor, specs.Dirac(groups), 0, None, "dirac_")


def xavier_uniform_(
    tensor: Tensor, gain: float = 1.0, generator: torch.Generator | None = None, *, key=None
) -> Tensor:
    r"""Xavier/Glorot uniform: :math:`\mathcal{U}(-a, a)`, :math:`a = \text{gain}\sqrt{6/(\text{fan\_in}+\text{fan\_out})}`.

    Glorot & Bengio (2010). Fans from the torch layout ``(out, in, *receptive)``.

    Raises:
        ShapeError (``ValueError``): fewer than 2 dims.
        ZeroSizeError (``ZeroDivisionError``): ``fan_in + fan_out == 0``, as torch.

    >>> w = xavier_uniform_(torch.empty(300, 100), key=0)
    >>> bool(w.abs().max() <= (6 / 400) ** 0.5)
    True
    """
    return fill_(tensor, specs.XavierUniform(gain), key, generator, "xavier_uniform_")


def xavier_normal_(
    tensor: Tensor, gain: float = 1.0, generator: torch.Generator | None = None, *, key=None
) -> Tensor:
    r"""Xavier/Glorot normal: :math:`\mathcal{N}(0, \text{gain}^2\cdot 2/(\text{fan\_in}+\text{fan\_out}))`.

    **Untruncated**, as torch (``jax.nn.initializers.glorot_normal`` is truncated).

    >>> xavier_normal_(torch.empty(3, 5), key=0).shape
    torch.Size([3, 5])
    """
    return fill_(tensor, specs.XavierNormal(gain), key, generator, "xavier_normal_")


def _zero_element(tensor: Tensor, fn: str) -> bool:
    check_tensor(tensor, fn)
    if 0 in tensor.shape:
        warnings.warn("Initializing zero-element tensors is a no-op", stacklevel=3)
        return True
    return False


def kaiming_uniform_(
    tensor: Tensor,
    a: float = 0,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
    generator: torch.Generator | None = None,
    *,
    key=None,
) -> Tensor:
    r"""Kaiming/He uniform: :math:`\mathcal{U}(-b, b)`, :math:`b = \text{gain}\sqrt{3/\text{fan\_mode}}`.

    He et al. (2015); ``gain = calculate_gain(nonlinearity, a)``. The defaults
    (``leaky_relu`` with ``a=0``) give gain :math:`\sqrt 2`. A zero-element tensor
    warns and is left unchanged, as torch.

    Raises:
        ModeError (``ValueError``): ``mode`` not fan_in/fan_out (case-insensitive).
        ModeTypeError (``AttributeError``/``TypeError``): ``mode`` not a string.
        NonlinearityError (``ValueError``): unknown nonlinearity or bad ``a``.

    >>> w = kaiming_uniform_(torch.empty(64, 100), key=0)
    >>> bool(w.abs().max() <= (6 / 100) ** 0.5)
    True
    """
    if _zero_element(tensor, "kaiming_uniform_"):
        return tensor
    spec = specs.KaimingUniform(a, mode, nonlinearity)
    return fill_(tensor, spec, key, generator, "kaiming_uniform_")


def kaiming_normal_(
    tensor: Tensor,
    a: float = 0,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
    generator: torch.Generator | None = None,
    *,
    key=None,
) -> Tensor:
    r"""Kaiming/He normal: :math:`\mathcal{N}(0, \text{gain}^2/\text{fan\_mode})`, **untruncated**.

    >>> kaiming_normal_(torch.empty(3, 5), mode="fan_out", nonlinearity="relu", key=0).shape
    torch.Size([3, 5])
    """
    if _zero_element(tensor, "kaiming_normal_"):
        return tensor
    spec = specs.KaimingNormal(a, mode, nonlinearity)
    return fill_(tensor, spec, key, generator, "kaiming_normal_")


def orthogonal_(
    tensor: Tensor, gain: float = 1, generator: torch.Generator | None = None, *, key=None
) -> Tensor:
    r"""Fill ``tensor`` with a Haar-random (semi-)orthogonal matrix times ``gain``.

    Saxe et al. (2013). Dims after the first are flattened: rows = ``size(0)``,
    cols = ``numel / rows``; rows are orthonormal if rows <= cols, else columns.
    Works on float16/bfloat16 (computed in float32).

    Raises:
        ShapeError (``ValueError``): fewer than 2 dims.

    >>> q = orthogonal_(torch.empty(3, 5), key=0)
    >>> bool(torch.allclose(q @ q.T, torch.eye(3), atol=1e-5))
    True
    """
    return fill_(tensor, specs.Orthogonal(gain), key, generator, "orthogonal_")


def sparse_(
    tensor: Tensor,
    sparsity: float,
    std: float = 0.01,
    generator: torch.Generator | None = None,
    *,
    key=None,
) -> Tensor:
    r"""Fill the 2-D ``tensor`` with :math:`\mathcal{N}(0, \text{std}^2)` and exactly
    ``ceil(sparsity * rows)`` zeros in every column (Martens 2010).

    A complex tensor gets torch's complex normal (each part
    :math:`\mathcal{N}(0, \text{std}^2/2)`) with whole elements zeroed, as torch.

    Raises:
        ShapeError (``ValueError``): ``tensor.ndim != 2``.

    >>> w = sparse_(torch.empty(10, 4), sparsity=0.3, key=0)
    >>> (w == 0).sum(0).tolist()
    [3, 3, 3, 3]
    """
    return fill_(tensor, specs.Sparse(sparsity, std), key, generator, "sparse_")


def _deprecated(fn):
    old = fn.__name__[:-1]

    @functools.wraps(fn)
    def alias(*args, **kwargs):
        warnings.warn(
            f"`nn.init.{old}` is now deprecated in favor of `nn.init.{fn.__name__}`.",
            FutureWarning,
            stacklevel=2,
        )
        return fn(*args, **kwargs)

    alias.__name__ = alias.__qualname__ = old
    alias.__doc__ = f"Deprecated alias of :func:`{fn.__name__}` (as in torch.nn.init)."
    return alias


uniform = _deprecated(uniform_)
normal = _deprecated(normal_)
constant = _deprecated(constant_)
eye = _deprecated(eye_)
dirac = _deprecated(dirac_)
xavier_uniform = _deprecated(xavier_uniform_)
xavier_normal = _deprecated(xavier_normal_)
kaiming_uniform = _deprecated(kaiming_uniform_)
kaiming_normal = _deprecated(kaiming_normal_)
orthogonal = _deprecated(orthogonal_)
sparse = _deprecated(sparse_)
