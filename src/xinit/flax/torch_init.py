r"""torch.nn.init's semantics for Flax: ``xinit.flax.torch_init``.

Every ``torch.nn.init`` function as a Flax initializer factory, with torch's
arguments and distributions (``uniform(a, b)``, ``normal(mean, std)``,
``trunc_normal(mean, std, a, b)`` with absolute bounds, untruncated
``xavier_normal``/``kaiming_normal``, ...), and the defaults torch's layers draw
in ``reset_parameters`` (:func:`linear_kernel`, :func:`linear_bias`,
:func:`conv_kernel`, ..., :func:`embedding`)::

    import flax.linen as nn
    from xinit.flax import torch_init

    nn.Dense(30, kernel_init=torch_init.kaiming_uniform(nonlinearity="relu"))
    nn.Dense(30, kernel_init=torch_init.linear_kernel(),
             bias_init=torch_init.linear_bias(fan_in=400))

Each factory builds a core spec (validated here, at construction) and returns a
:class:`~xinit.flax.SpecInitializer` with jax's ``Initializer`` signature
``init(key, shape, dtype=None, out_sharding=None)``. Shapes are read in flax's
kernel layout ``(*receptive, in, out)`` unless ``layout=`` says otherwise
(:data:`IDENTITY` for shapes used as they are, such as embedding tables;
:data:`CONV_TRANSPOSE`; or ``Layout(in_axis, out_axis)``), so fans are those of
the layer.

**The cross-framework guarantee:** for the same key, a flax kernel equals the
``xinit.torch`` weight permuted into flax layout, bit for bit (Dense ``W.T``,
Conv ``W.permute(2, ..., 1, 0)``; an embedding table drawn with
``layout=IDENTITY`` is ``Embedding.weight`` as it is), in every dtype: float64
is drawn as float64 even when ``jax_enable_x64`` is off (in a local x64 scope;
the global config is never changed). Inside a user's ``jit`` (e.g.
``model.init``) the random bits are the same and the floats agree to within 2
units in the last place of the array's largest magnitude for 16/32-bit floats
and 16 for float64 (measured: at most 1, and 9 in the float64 truncated
normals), because XLA may fold the same operations differently.

Complex dtypes are drawn where torch draws them: ``uniform``, ``normal``,
``constant``, ``ones``, ``zeros``, ``eye``, ``dirac``, the xavier/kaiming
families and ``sparse`` (``orthogonal`` too: a unitary matrix, where torch's
``orthogonal_`` raises).

The names ``jax.nn.initializers`` has (``xinit.flax.uniform(scale)``,
``xinit.flax.normal(stddev)``, ``xinit.flax.kaiming_normal()``, ...) keep JAX's
meaning at the top level of :mod:`xinit.flax`; this namespace is torch's.
This module needs only JAX; it never imports torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from xinit.core import specs
from xinit.core.layout import FLAX, TORCH, Layout

from ._initializers import (
    CONV_TRANSPOSE,
    IDENTITY,
    SpecInitializer,
    check_dtype,
    check_layout,
)

#: The torch drop-ins: ``torch_init.<name>`` for ``torch.nn.init.<name>_``.
DROP_INS = (
    "uniform", "normal", "trunc_normal", "constant", "ones", "zeros", "eye", "dirac",
    "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "orthogonal",
    "sparse",
)
#: torch's layer defaults: ``torch_init.<name>`` for what ``reset_parameters`` draws.
LAYER_DEFAULTS = (
    "linear_kernel", "linear_bias", "conv_kernel", "conv_bias", "conv_transpose_kernel",
    "conv_transpose_bias", "embedding",
)

__all__ = [
    "FLAX", "TORCH", "IDENTITY", "CONV_TRANSPOSE", "Layout", "DROP_INS", "LAYER_DEFAULTS",
    *DROP_INS, *LAYER_DEFAULTS,
]


def _make(name: str, spec: specs.Spec, layout, dtype) -> SpecInitializer:
    return SpecInitializer(spec, check_layout(layout), check_dtype(dtype), name)


# --------------------------------------------------------------- drop-ins


def uniform(a: float = 0.0, b: float = 1.0, *, layout: Layout = FLAX, dtype=None):
    r"""Initializer drawing :math:`\mathcal{U}(a, b)`, as ``torch.nn.init.uniform_``.

    Not jax's ``uniform(scale)`` (which is :math:`\mathcal{U}[0, \text{scale})`).

    Args:
        a: lower bound. b: upper bound.
        layout: layout of the shapes it will receive (default flax kernel layout;
            it fixes only which element gets which random value).
        dtype: default dtype when the call passes none.

    Raises:
        BoundsError (``ValueError``): ``a > b``.

    >>> init = uniform(-0.1, 0.1)
    >>> init(jax.random.key(0), (3, 4)).shape
    (3, 4)
    """
    return _make("uniform", specs.Uniform(a, b), layout, dtype)


def normal(mean: float = 0.0, std: float = 1.0, *, layout: Layout = FLAX, dtype=None):
    r"""Initializer drawing :math:`\mathcal{N}(\text{mean}, \text{std}^2)`, as ``normal_``.

    Raises:
        BoundsError (``ValueError``): ``std < 0``.

    >>> normal(std=0.02)(jax.random.key(0), (3, 4)).dtype
    dtype('float32')
    """
    return _make("normal", specs.Normal(mean, std), layout, dtype)


def trunc_normal(
    mean: float = 0.0, std: float = 1.0, a: float = -2.0, b: float = 2.0, *,
    layout: Layout = FLAX, dtype=None,
):
    r"""Initializer drawing :math:`\mathcal{N}(\text{mean}, \text{std}^2)` truncated to ``[a, b]``.

    ``a`` and ``b`` are **absolute** bounds, as ``torch.nn.init.trunc_normal_``
    (JAX's :func:`xinit.flax.truncated_normal` takes them in units of ``stddev``).

    Raises:
        ZeroSizeError (``ZeroDivisionError``): ``std == 0``.
        BoundsError (``ValueError``): ``a > b`` or ``std < 0``.

    >>> w = trunc_normal(std=0.02, a=-0.04, b=0.04)(jax.random.key(0), (64, 32))
    >>> bool(abs(w).max() <= 0.04)
    True
    """
    return _make("trunc_normal", specs.TruncNormal(mean, std, a, b), layout, dtype)


def constant(val: float, *, layout: Layout = FLAX, dtype=None):
    """Initializer filling with ``val`` (the key is ignored).

    >>> constant(0.5)(jax.random.key(0), (2,)).tolist()
    [0.5, 0.5]
    """
    return _make("constant", specs.Constant(val), layout, dtype)


def ones(*, layout: Layout = FLAX, dtype=None):
    """Initializer filling with 1 (``torch.nn.init.ones_``).

    >>> ones()(jax.random.key(0), (2,)).tolist()
    [1.0, 1.0]
    """
    return _make("ones", specs.Ones(), layout, dtype)


def zeros(*, layout: Layout = FLAX, dtype=None):
    """Initializer filling with 0 (``torch.nn.init.zeros_``).

    >>> zeros()(jax.random.key(0), (2,)).tolist()
    [0.0, 0.0]
    """
    return _make("zeros", specs.Zeros(), layout, dtype)


def eye(*, layout: Layout = FLAX, dtype=None):
    """Initializer of the identity matrix, 2-D only (``torch.nn.init.eye_``).

    In flax layout a Dense kernel ``(in, out)`` gets ``eye(out, in).T``, which is
    the rectangular identity again, so ``x @ kernel`` copies the inputs.

    Raises:
        ShapeError (``ValueError``): the shape is not 2-D.

    >>> eye()(jax.random.key(0), (2, 3)).tolist()
    [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    """
    return _make("eye", specs.Eye(), layout, dtype)


def dirac(groups: int = 1, *, layout: Layout = FLAX, dtype=None):
    """Initializer of the Dirac delta for 3/4/5-D conv kernels (``torch.nn.init.dirac_``).

    The centre is ``k // 2`` on every spatial axis (JAX's :func:`xinit.flax.delta_orthogonal`
    uses ``(k - 1) // 2``). A flax ``Conv(padding='SAME')`` kernel ``(*k, in, out)``
    initialized this way passes its first ``min(in, out / groups)`` channels through.

    Raises:
        ZeroSizeError (``ZeroDivisionError``): ``groups == 0``.
        ShapeError (``ValueError``): not 3/4/5-D, or ``out % groups != 0``.

    >>> dirac()(jax.random.key(0), (3, 3, 2, 2))[1, 1].tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    """
    return _make("dirac", specs.Dirac(groups), layout, dtype)


def xavier_uniform(gain: float = 1.0, *, layout: Layout = FLAX, dtype=None):
    r"""Initializer drawing :math:`\mathcal{U}(\pm a)`, as ``torch.nn.init.xavier_uniform_``.

    :math:`a = \text{gain}\sqrt{6/(\text{fan\_in}+\text{fan\_out})}`, fans read
    in ``layout``. Equal in distribution to jax's ``glorot_uniform`` for ``gain=1``.

    Raises:
        BoundsError (``ValueError``): ``gain < 0``.
        ShapeError (``ValueError``): fewer than 2 dimensions.

    >>> w = xavier_uniform()(jax.random.key(0), (300, 100))
    >>> bool(abs(w).max() <= (6 / 400) ** 0.5)
    True
    """
    return _make("xavier_uniform", specs.XavierUniform(gain), layout, dtype)


def xavier_normal(gain: float = 1.0, *, layout: Layout = FLAX, dtype=None):
    r"""Initializer drawing :math:`\mathcal{N}(0, \sigma^2)`, as ``torch.nn.init.xavier_normal_``.

    :math:`\sigma = \text{gain}\sqrt{2/(\text{fan\_in}+\text{fan\_out})}`.

    torch's ``xavier_normal_``: **untruncated** (jax's ``glorot_normal`` is
    truncated; use :func:`xinit.flax.glorot_normal` for that).

    >>> xavier_normal()(jax.random.key(0), (3, 3, 8, 16)).shape
    (3, 3, 8, 16)
    """
    return _make("xavier_normal", specs.XavierNormal(gain), layout, dtype)


def kaiming_uniform(
    a: float = 0, mode: str = "fan_in", nonlinearity: str = "leaky_relu", *,
    layout: Layout = FLAX, dtype=None,
):
    r"""Initializer drawing :math:`\mathcal{U}(\pm\,\text{gain}\sqrt{3/\text{fan\_mode}})`.

    torch's ``kaiming_uniform_``: ``gain = calculate_gain(nonlinearity, a)``;
    ``mode`` is ``'fan_in'`` or ``'fan_out'`` (case-insensitive), read in
    ``layout``: a Dense kernel ``(in, out)`` has ``fan_in = in``.

    Raises:
        ModeError (``ValueError``): unknown ``mode``.
        NonlinearityError (``ValueError``): unknown ``nonlinearity`` or bad ``a``.

    >>> w = kaiming_uniform()(jax.random.key(0), (100, 400))
    >>> bool(abs(w).max() <= (6 / 100) ** 0.5)
    True
    """
    return _make("kaiming_uniform", specs.KaimingUniform(a, mode, nonlinearity), layout, dtype)


def kaiming_normal(
    a: float = 0, mode: str = "fan_in", nonlinearity: str = "leaky_relu", *,
    layout: Layout = FLAX, dtype=None,
):
    r"""Initializer drawing :math:`\mathcal{N}(0, \text{gain}^2/\text{fan\_mode})`, untruncated.

    torch's ``kaiming_normal_`` (JAX's ``he_normal``/``kaiming_normal`` is truncated: :func:`xinit.flax.he_normal`).

    >>> kaiming_normal(mode="fan_out", nonlinearity="relu")(jax.random.key(0), (3, 3, 8, 16)).shape
    (3, 3, 8, 16)
    """
    return _make("kaiming_normal", specs.KaimingNormal(a, mode, nonlinearity), layout, dtype)


def orthogonal(gain: float = 1.0, *, layout: Layout = FLAX, dtype=None):
    """Initializer of a (semi-)orthogonal matrix times ``gain`` (``torch.nn.init.orthogonal_``).

    torch flattens its weight ``(out, in, *k)`` to ``(out, in * prod(k))``; here
    the same matrix is drawn on the canonical view of the kernel and transposed
    into its layout, so the values are torch's weight permuted, bit for bit, for
    every rank (Dense ``(in, out)``: ``W.T``; Conv ``(*k, in, out)``:
    ``W.permute(2, ..., 1, 0)``). jax's ``orthogonal(column_axis=-1)`` flattens a
    conv kernel as ``kernel.reshape(-1, out)`` instead; the two flattenings differ
    by a permutation of the ``in * prod(k)`` axis, which keeps orthogonality (and
    the Haar distribution), so the kernel is orthogonal in both views.
    float16/bfloat16 are computed in float32.

    >>> q = orthogonal()(jax.random.key(0), (5, 3))
    >>> bool(jnp.allclose(q.T @ q, jnp.eye(3), atol=1e-5))
    True
    """
    return _make("orthogonal", specs.Orthogonal(gain), layout, dtype)


def sparse(sparsity: float, std: float = 0.01, *, layout: Layout = FLAX, dtype=None):
    """Initializer of ``N(0, std)`` with ``ceil(sparsity * out)`` zeros per input (2-D only).

    torch's ``sparse_`` zeroes ``ceil(sparsity * rows)`` of each column of the
    ``(out, in)`` weight; in flax layout ``(in, out)`` those are the same entries
    of ``kernel.T``: every row of the kernel has that many zeros.

    >>> w = sparse(0.5)(jax.random.key(0), (4, 10))
    >>> (w == 0).sum(axis=1).tolist()
    [5, 5, 5, 5]
    """
    return _make("sparse", specs.Sparse(sparsity, std), layout, dtype)


# -------------------------------------------------------- torch defaults

_SQRT5 = math.sqrt(5)


def linear_kernel(*, dtype=None):
    r"""Initializer of torch ``nn.Linear``'s default weight, for a flax Dense kernel ``(in, out)``.

    ``kaiming_uniform(a=sqrt(5))``, i.e. :math:`\mathcal{U}(\pm 1/\sqrt{\text{in}})`,
    with the bound computed through the kaiming formula as torch does (it differs
    from ``1/sqrt(in)`` by an ulp in float64). Bit-identical to
    ``nn.Linear(in, out).weight.T`` initialized by ``xinit.torch`` with the same key.

    >>> w = linear_kernel()(jax.random.key(0), (400, 30))
    >>> bool(abs(w).max() <= 1 / 400 ** 0.5)
    True
    """
    return _make("linear_kernel", specs.KaimingUniform(a=_SQRT5), FLAX, dtype)


def conv_kernel(*, dtype=None):
    r"""Initializer of torch ``nn.Conv{1,2,3}d``'s default weight, for a flax Conv kernel.

    The flax kernel ``(*k, in / groups, out)`` is torch's ``(out, in / groups, *k)``
    weight permuted: :math:`\mathcal{U}(\pm 1/\sqrt{(\text{in}/\text{groups})\prod k})`
    via ``kaiming_uniform(a=sqrt(5))``.

    >>> w = conv_kernel()(jax.random.key(0), (3, 3, 4, 32))
    >>> bool(abs(w).max() <= 1 / 36 ** 0.5)
    True
    """
    return _make("conv_kernel", specs.KaimingUniform(a=_SQRT5), FLAX, dtype)


def conv_transpose_kernel(*, dtype=None):
    r"""Initializer of torch ``nn.ConvTranspose{1,2,3}d``'s default weight, for a flax kernel.

    torch's weight is ``(in, out / groups, *k)`` and its "fan_in" is
    ``(out / groups) * prod(k)``; a flax ``ConvTranspose`` kernel is ``(*k, in, out)``,
    so this reads the **out** axis as torch's fan axis (layout
    ``Layout(in_axis=-1, out_axis=-2)``):
    :math:`\mathcal{U}(\pm 1/\sqrt{\text{out}\prod k})`. The values equal torch's
    weight ``W`` permuted to ``W.permute(2, ..., 0, 1)``. Exact for
    ``groups == 1`` (flax's grouped ConvTranspose kernel has no ``out / groups`` axis;
    use ``kaiming_uniform(a=sqrt(5), layout=...)`` on your own layout there).

    >>> w = conv_transpose_kernel()(jax.random.key(0), (3, 3, 16, 32))
    >>> bool(abs(w).max() <= 1 / 288 ** 0.5)
    True
    """
    return _make(
        "conv_transpose_kernel", specs.KaimingUniform(a=_SQRT5), CONV_TRANSPOSE, dtype
    )


def _torch_bias(name: str, fan_in, dtype) -> SpecInitializer:
    try:
        fan = int(fan_in)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: fan_in must be an int >= 0; got {fan_in!r}") from None
    if fan != fan_in or fan < 0:
        raise ValueError(f"{name}: fan_in must be an int >= 0; got fan_in={fan_in!r}")
    bound = 1 / math.sqrt(fan) if fan > 0 else 0.0
    return _make(name, specs.Uniform(-bound, bound), IDENTITY, dtype)


def linear_bias(fan_in: int, *, dtype=None):
    r"""Initializer of torch ``nn.Linear``'s default bias, :math:`\mathcal{U}(\pm 1/\sqrt{n})`.

    ``n = fan_in``; a bias cannot see its layer's fan-in, so pass it: ``in_features``
    (the bound is 0 when ``fan_in == 0``, as torch).

    Raises:
        ValueError: ``fan_in`` is negative or not an integer.

    >>> b = linear_bias(400)(jax.random.key(0), (30,))
    >>> bool(abs(b).max() <= 1 / 400 ** 0.5)
    True
    """
    return _torch_bias("linear_bias", fan_in, dtype)


def conv_bias(fan_in: int, *, dtype=None):
    r"""Initializer of torch ``nn.ConvNd``'s default bias, :math:`\mathcal{U}(\pm 1/\sqrt{n})`.

    ``n = fan_in = (in_features / groups) * prod(kernel_size)``: the fan-in of the
    sibling kernel, ``math.prod(kernel.shape[:-1])`` for a flax kernel.

    >>> conv_bias(3 * 3 * 16)(jax.random.key(0), (32,)).shape
    (32,)
    """
    return _torch_bias("conv_bias", fan_in, dtype)


def conv_transpose_bias(fan_in: int, *, dtype=None):
    r"""Initializer of torch ``nn.ConvTranspose{1,2,3}d``'s default bias.

    :math:`\mathcal{U}(\pm 1/\sqrt{\text{fan\_in}})` with torch's transposed-conv
    fan-in ``fan_in = (out_features / groups) * prod(kernel_size)``.

    >>> conv_transpose_bias(3 * 3 * 32)(jax.random.key(0), (32,)).shape
    (32,)
    """
    return _torch_bias("conv_transpose_bias", fan_in, dtype)


@dataclass(frozen=True, repr=False)
class _PaddedEmbedding(SpecInitializer):
    """``SpecInitializer`` whose draw zeroes one row (torch's ``padding_idx``): in
    every shard that holds it, so a sharded table is drawn shard by shard too."""

    padding_idx: int = 0

    def check_call(self, shape: tuple[int, ...], dtype: np.dtype, out_sharding) -> None:
        super().check_call(shape, dtype, out_sharding)
        if len(shape) != 2 or not -shape[0] <= self.padding_idx < shape[0]:
            raise ValueError(
                f"embedding: padding_idx={self.padding_idx} must index a row of a 2-D "
                f"(num_embeddings, features) table; got shape {shape}"
            )

    def zero_rows(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (self.padding_idx % shape[0],)  # identity layout: the table's row

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, padding_idx={self.padding_idx})"


def embedding(padding_idx: int | None = None, *, dtype=None):
    r"""Initializer of torch ``nn.Embedding``'s default weight: :math:`\mathcal{N}(0, 1)`.

    For a flax ``Embed`` table ``(num_embeddings, features)``, which is torch's
    weight as it is (identity layout): the values equal ``nn.Embedding``'s weight
    initialized by ``xinit.torch`` with the same key. ``padding_idx`` zeroes that
    row, as torch (flax's ``Embed`` has no padding index of its own). Flax's own
    default is :math:`\mathcal{N}(0, 1/\text{features})`.

    >>> t = embedding(padding_idx=0)(jax.random.key(0), (10, 4))
    >>> t[0].tolist()
    [0.0, 0.0, 0.0, 0.0]
    """
    spec = specs.Normal(0.0, 1.0)
    if padding_idx is None:
        return _make("embedding", spec, IDENTITY, dtype)
    if not isinstance(padding_idx, (int, np.integer)) or isinstance(padding_idx, bool):
        raise TypeError(f"embedding: padding_idx must be an int or None; got {padding_idx!r}")
    return _PaddedEmbedding(spec, IDENTITY, check_dtype(dtype), "embedding",
                            int(padding_idx))
