r"""Flax initializers for every ``torch.nn.init`` function, and torch's layer defaults.

Each factory builds a core spec (validated here, at construction) and returns a
:class:`SpecInitializer`: a frozen, hashable callable with jax's
``Initializer`` signature ``init(key, shape, dtype=None, out_sharding=None)``
that plugs into linen (``kernel_init=``, ``bias_init=``, ``embedding_init=``) and
nnx. Calling it is one call of :func:`xinit.core.sample`; no math lives here.

Shapes are read in flax's kernel layout ``(*receptive, in, out)`` unless
``layout=`` says otherwise, so fans are those of the layer. For the same key, a
flax kernel equals the ``xinit.torch`` weight permuted into flax layout, bit for
bit (Dense ``W.T``, Conv ``W.permute(2, ..., 1, 0)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec, Sharding

from xinit.core import specs, threefry
from xinit.core.arrays import sample
from xinit.core.engine import x64_scope
from xinit.core.errors import XinitError
from xinit.core.layout import FLAX, TORCH, Layout

__all__ = [
    "SpecInitializer",
    "IDENTITY",
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
    "torch_linear_kernel",
    "torch_linear_bias",
    "torch_conv_kernel",
    "torch_conv_bias",
    "torch_conv_transpose_kernel",
    "torch_conv_transpose_bias",
    "torch_embedding",
]

#: The identity layout: the shape is used as it is (embedding tables, biases).
#: It is ``xinit.core.TORCH``: torch's ``(out, in, *receptive)`` is the canonical layout.
IDENTITY = TORCH

#: Layout of a flax ``ConvTranspose`` kernel ``(*k, in, out)`` read the way torch
#: reads its ``ConvTranspose`` weight ``(in, out, *k)``: torch's fan_in is ``out * prod(k)``.
CONV_TRANSPOSE = Layout(in_axis=-1, out_axis=-2, name="FLAX_CONV_TRANSPOSE")


def _check_layout(layout) -> Layout:
    if not isinstance(layout, Layout):
        raise TypeError(
            f"layout must be an xinit.core.Layout (e.g. xinit.core.FLAX, xinit.core.TORCH or "
            f"Layout(in_axis, out_axis)); got {layout!r}"
        )
    return layout


def _check_dtype(dtype):
    if dtype is None:
        return None
    try:
        return np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be a dtype or None; got {dtype!r}") from None


def resolve_dtype(dtype, default) -> np.dtype:
    """The dtype to draw in: the call's, else the factory's, else JAX's default float.

    JAX's default float is float32, or float64 when ``jax_enable_x64`` is on
    (as ``jax.nn.initializers``).
    """
    if dtype is None:
        dtype = default
    if dtype is None:
        return np.dtype(jnp.result_type(float))
    return np.dtype(dtype)


def apply_sharding(x: jax.Array, out_sharding) -> jax.Array:
    """Place ``x`` as ``out_sharding`` says: a ``Sharding``, or a ``PartitionSpec`` under a mesh."""
    if out_sharding is None:
        return x
    if isinstance(out_sharding, Sharding):
        return jax.device_put(x, out_sharding)
    if isinstance(out_sharding, PartitionSpec):
        return jax.sharding.reshard(x, out_sharding)
    raise TypeError(
        "out_sharding must be None, a jax.sharding.Sharding or a PartitionSpec (under "
        f"jax.set_mesh); got {type(out_sharding).__name__} {out_sharding!r}"
    )


def ensure_checked() -> None:
    """Run the core's one-time threefry self-check eagerly, even when called under a trace.

    A Flax user's first xinit call is often inside ``jax.jit(model.init)``; the
    check draws with a fixed key and must not be traced into the user's program.
    """
    with jax.ensure_compile_time_eval():
        threefry.ensure_checked()


def with_context(err: XinitError, name: str, shape, dtype, layout) -> XinitError:
    """The same error class, its message extended with the call that raised it."""
    return type(err)(
        f"{err} [xinit.flax.{name}: shape={tuple(shape)}, dtype={np.dtype(dtype)}, "
        f"layout={layout!r}]"
    )


@dataclass(frozen=True, repr=False)
class SpecInitializer:
    """A jax/flax initializer that draws a core spec: ``init(key, shape, dtype=None)``.

    Frozen and hashable (so it can sit in a linen module's fields), picklable, and
    comparable: two initializers with the same spec, layout and dtype are equal and
    give the same values for the same key.

    Attributes:
        spec: the :class:`xinit.core.Spec` drawn.
        layout: how ``shape`` maps to the canonical ``(out, in, *receptive)``.
        dtype: the default dtype (``None``: JAX's default float, float32 unless x64).
        name: the factory's name, for reprs and error messages.

    ``init(key, shape, dtype=None, out_sharding=None)`` follows
    ``jax.nn.initializers.Initializer``: ``key`` is a typed or raw threefry key
    (or an int seed), ``out_sharding`` a ``Sharding`` or a ``PartitionSpec``. It
    works eagerly, inside ``jax.jit`` and under ``jax.eval_shape``.

    float64 is always float64: it is drawn under a local x64 scope, so a float64
    array comes back even when the user's ``jax_enable_x64`` is off (the global
    config is never changed; JAX itself would warn and return float32 there).
    """

    spec: specs.Spec
    layout: Layout = FLAX
    dtype: Any = None
    name: str = field(default="", compare=False)

    def __call__(self, key, shape, dtype=None, out_sharding=None) -> jax.Array:
        dtype = resolve_dtype(dtype, self.dtype)
        ensure_checked()
        try:
            out = sample(self.spec, key, shape, dtype, layout=self.layout)
        except XinitError as err:
            raise with_context(err, self.name or self.spec.name, shape, dtype, self.layout) from err
        with x64_scope(dtype):
            return apply_sharding(out, out_sharding)

    def __repr__(self) -> str:
        args = [f"{f.name}={getattr(self.spec, f.name)!r}" for f in fields(self.spec)]
        args.append(f"layout={self.layout!r}")
        if self.dtype is not None:
            args.append(f"dtype={np.dtype(self.dtype).name}")
        return f"xinit.flax.{self.name or self.spec.name}({', '.join(args)})"


def _make(name: str, spec: specs.Spec, layout, dtype) -> SpecInitializer:
    return SpecInitializer(spec, _check_layout(layout), _check_dtype(dtype), name)


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
    (jax's :func:`truncated_normal` takes them in units of ``stddev``).

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

    The centre is ``k // 2`` on every spatial axis (jax's :func:`delta_orthogonal`
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
    truncated; use :func:`glorot_normal` for that).

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

    torch's ``kaiming_normal_`` (jax's ``he_normal`` is truncated: :func:`he_normal`).

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


def torch_linear_kernel(*, dtype=None):
    r"""Initializer of torch ``nn.Linear``'s default weight, for a flax Dense kernel ``(in, out)``.

    ``kaiming_uniform(a=sqrt(5))``, i.e. :math:`\mathcal{U}(\pm 1/\sqrt{\text{in}})`,
    with the bound computed through the kaiming formula as torch does (it differs
    from ``1/sqrt(in)`` by an ulp in float64). Bit-identical to
    ``nn.Linear(in, out).weight.T`` initialized by ``xinit.torch`` with the same key.

    >>> w = torch_linear_kernel()(jax.random.key(0), (400, 30))
    >>> bool(abs(w).max() <= 1 / 400 ** 0.5)
    True
    """
    return _make("torch_linear_kernel", specs.KaimingUniform(a=_SQRT5), FLAX, dtype)


def torch_conv_kernel(*, dtype=None):
    r"""Initializer of torch ``nn.Conv{1,2,3}d``'s default weight, for a flax Conv kernel.

    The flax kernel ``(*k, in / groups, out)`` is torch's ``(out, in / groups, *k)``
    weight permuted: :math:`\mathcal{U}(\pm 1/\sqrt{(\text{in}/\text{groups})\prod k})`
    via ``kaiming_uniform(a=sqrt(5))``.

    >>> w = torch_conv_kernel()(jax.random.key(0), (3, 3, 4, 32))
    >>> bool(abs(w).max() <= 1 / 36 ** 0.5)
    True
    """
    return _make("torch_conv_kernel", specs.KaimingUniform(a=_SQRT5), FLAX, dtype)


def torch_conv_transpose_kernel(*, dtype=None):
    r"""Initializer of torch ``nn.ConvTranspose{1,2,3}d``'s default weight, for a flax kernel.

    torch's weight is ``(in, out / groups, *k)`` and its "fan_in" is
    ``(out / groups) * prod(k)``; a flax ``ConvTranspose`` kernel is ``(*k, in, out)``,
    so this reads the **out** axis as torch's fan axis (layout
    ``Layout(in_axis=-1, out_axis=-2)``):
    :math:`\mathcal{U}(\pm 1/\sqrt{\text{out}\prod k})`. The values equal torch's
    weight ``W`` permuted to ``W.permute(2, ..., 0, 1)``. Exact for
    ``groups == 1`` (flax's grouped ConvTranspose kernel has no ``out / groups`` axis;
    use ``kaiming_uniform(a=sqrt(5), layout=...)`` on your own layout there).

    >>> w = torch_conv_transpose_kernel()(jax.random.key(0), (3, 3, 16, 32))
    >>> bool(abs(w).max() <= 1 / 288 ** 0.5)
    True
    """
    return _make(
        "torch_conv_transpose_kernel", specs.KaimingUniform(a=_SQRT5), CONV_TRANSPOSE, dtype
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


def torch_linear_bias(fan_in: int, *, dtype=None):
    r"""Initializer of torch ``nn.Linear``'s default bias, :math:`\mathcal{U}(\pm 1/\sqrt{n})`.

    ``n = fan_in``; a bias cannot see its layer's fan-in, so pass it: ``in_features``
    (the bound is 0 when ``fan_in == 0``, as torch).

    Raises:
        ValueError: ``fan_in`` is negative or not an integer.

    >>> b = torch_linear_bias(400)(jax.random.key(0), (30,))
    >>> bool(abs(b).max() <= 1 / 400 ** 0.5)
    True
    """
    return _torch_bias("torch_linear_bias", fan_in, dtype)


def torch_conv_bias(fan_in: int, *, dtype=None):
    r"""Initializer of torch ``nn.ConvNd``'s default bias, :math:`\mathcal{U}(\pm 1/\sqrt{n})`.

    ``n = fan_in = (in_features / groups) * prod(kernel_size)``: the fan-in of the
    sibling kernel, ``math.prod(kernel.shape[:-1])`` for a flax kernel.

    >>> torch_conv_bias(3 * 3 * 16)(jax.random.key(0), (32,)).shape
    (32,)
    """
    return _torch_bias("torch_conv_bias", fan_in, dtype)


def torch_conv_transpose_bias(fan_in: int, *, dtype=None):
    r"""Initializer of torch ``nn.ConvTranspose{1,2,3}d``'s default bias.

    :math:`\mathcal{U}(\pm 1/\sqrt{\text{fan\_in}})` with torch's transposed-conv
    fan-in ``fan_in = (out_features / groups) * prod(kernel_size)``.

    >>> torch_conv_transpose_bias(3 * 3 * 32)(jax.random.key(0), (32,)).shape
    (32,)
    """
    return _torch_bias("torch_conv_transpose_bias", fan_in, dtype)


@dataclass(frozen=True, repr=False)
class _PaddedEmbedding(SpecInitializer):
    """``SpecInitializer`` that zeroes one row afterwards (torch's ``padding_idx``)."""

    padding_idx: int = 0

    def __call__(self, key, shape, dtype=None, out_sharding=None) -> jax.Array:
        table = super().__call__(key, shape, dtype, None)
        if len(shape) != 2 or not -shape[0] <= self.padding_idx < shape[0]:
            raise ValueError(
                f"torch_embedding: padding_idx={self.padding_idx} must index a row of a 2-D "
                f"(num_embeddings, features) table; got shape {tuple(shape)}"
            )
        with x64_scope(table.dtype):
            return apply_sharding(table.at[self.padding_idx].set(0), out_sharding)

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, padding_idx={self.padding_idx})"


def torch_embedding(padding_idx: int | None = None, *, dtype=None):
    r"""Initializer of torch ``nn.Embedding``'s default weight: :math:`\mathcal{N}(0, 1)`.

    For a flax ``Embed`` table ``(num_embeddings, features)``, which is torch's
    weight as it is (identity layout): the values equal ``nn.Embedding``'s weight
    initialized by ``xinit.torch`` with the same key. ``padding_idx`` zeroes that
    row, as torch (flax's ``Embed`` has no padding index of its own). Flax's own
    default is :math:`\mathcal{N}(0, 1/\text{features})`.

    >>> t = torch_embedding(padding_idx=0)(jax.random.key(0), (10, 4))
    >>> t[0].tolist()
    [0.0, 0.0, 0.0, 0.0]
    """
    spec = specs.Normal(0.0, 1.0)
    if padding_idx is None:
        return _make("torch_embedding", spec, IDENTITY, dtype)
    if not isinstance(padding_idx, (int, np.integer)) or isinstance(padding_idx, bool):
        raise TypeError(f"torch_embedding: padding_idx must be an int or None; got {padding_idx!r}")
    return _PaddedEmbedding(spec, IDENTITY, _check_dtype(dtype), "torch_embedding",
                            int(padding_idx))
