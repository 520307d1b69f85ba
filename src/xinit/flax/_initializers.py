"""The initializer objects xinit.flax returns, and what every call of one does.

A :class:`SpecInitializer` holds a core spec, the layout it reads shapes in and
a default dtype; it is a frozen, hashable callable with jax's ``Initializer``
signature ``init(key, shape, dtype=None, out_sharding=None)`` that plugs into
linen (``kernel_init=``, ``bias_init=``, ``embedding_init=``) and nnx. Calling
it is one call of :func:`xinit.core.sample`, then the result is placed as
``out_sharding`` (and an ambient mesh) say, exactly as JAX places the results of
its own initializers (:func:`place`). No math lives here.

Two readings of ``dtype`` exist: :class:`SpecInitializer` (``xinit.flax.torch_init``)
returns float64 as float64 even when ``jax_enable_x64`` is off, so a kernel
equals ``xinit.torch``'s float64 weight; :class:`JaxInitializer` (the names
``jax.nn.initializers`` has) reads dtypes as JAX does.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from xinit.core import specs, threefry
from xinit.core.arrays import sample
from xinit.core.engine import x64_scope
from xinit.core.errors import DtypeError, XinitError
from xinit.core.layout import FLAX, TORCH, Layout, as_shape

__all__ = ["SpecInitializer", "JaxInitializer", "IDENTITY", "CONV_TRANSPOSE", "place", "shard_target"]

#: The identity layout: the shape is used as it is (embedding tables, biases).
#: It is ``xinit.core.TORCH``: torch's ``(out, in, *receptive)`` is the canonical layout.
IDENTITY = TORCH

#: Layout of a flax ``ConvTranspose`` kernel ``(*k, in, out)`` read the way torch
#: reads its ``ConvTranspose`` weight ``(in, out, *k)``: torch's fan_in is ``out * prod(k)``.
CONV_TRANSPOSE = Layout(in_axis=-1, out_axis=-2, name="FLAX_CONV_TRANSPOSE")


def check_layout(layout) -> Layout:
    if not isinstance(layout, Layout):
        raise TypeError(
            f"layout must be an xinit.core.Layout (e.g. xinit.core.FLAX, xinit.core.TORCH or "
            f"Layout(in_axis, out_axis)); got {layout!r}"
        )
    return layout


def check_dtype(dtype):
    """A factory's ``dtype=`` argument: ``None`` or anything ``np.dtype`` reads."""
    if dtype is None:
        return None
    try:
        return np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be a dtype or None; got {dtype!r}") from None


def default_float() -> np.dtype:
    """JAX's default float: float32, or float64 when ``jax_enable_x64`` is on."""
    return np.dtype(jnp.result_type(float))


def place(x: jax.Array, out_sharding, api_name: str) -> jax.Array:
    """Place ``x`` as a ``jax.nn.initializers`` initializer places its result.

    ``out_sharding`` (``None``, a ``NamedSharding``, or a ``PartitionSpec`` under
    ``jax.set_mesh``) is canonicalized by JAX's own function, with JAX's errors
    (a spec naming Auto or Manual axes, a ``PartitionSpec`` outside a mesh, a
    mesh other than the ambient one, any other type); the array then goes
    through ``jax.sharding.auto_axes`` over the mesh's Explicit axes, as JAX's
    samplers do. With no ``out_sharding`` under an ambient mesh the array is
    replicated over it (what JAX's initializers return there); with neither,
    ``x`` is returned as it is. Eagerly and under a trace alike. ``x`` must be
    uncommitted (as xinit's drawn arrays are), like JAX's own intermediates.
    """
    from jax._src.sharding_impls import canonicalize_sharding  # JAX's own rules and errors

    target = canonicalize_sharding(out_sharding, api_name)
    if target is None:
        mesh = jax.sharding.get_abstract_mesh()
        if mesh.empty:
            return x
        if mesh.explicit_axes:  # typed replicated along every dimension, as JAX's ops type it
            return jax.sharding.reshard(x, PartitionSpec(*([None] * x.ndim)))
        return _replicate(x)
    return jax.sharding.auto_axes(_identity, out_sharding=target, axes=target.mesh.explicit_axes)(x)


def shard_target(out_sharding, api_name: str, ndim: int, traced: bool = False) -> NamedSharding | None:
    """The sharding to draw shard by shard for ``out_sharding``, or ``None`` (then
    :func:`place` places a whole draw): a ``NamedSharding`` that shards some axis,
    canonicalized by JAX's own function (so with JAX's errors, raised before
    anything is drawn) and with its spec padded to ``ndim`` as JAX types its
    results. Replicated targets (and none) are left to :func:`place`, whose
    result sharding is JAX's there (a single device, or the ambient mesh).
    ``traced`` (inside a user's jit): the mesh may stay abstract."""
    from jax._src.sharding_impls import canonicalize_sharding  # JAX's own rules and errors

    target = canonicalize_sharding(out_sharding, api_name)
    if not isinstance(target, NamedSharding):
        return None
    mesh = target.mesh
    if isinstance(mesh, jax.sharding.AbstractMesh) and not traced:  # a PartitionSpec under jax.set_mesh
        mesh = jax.sharding.get_mesh()
        if mesh.empty or mesh.abstract_mesh != target.mesh:
            return None
    spec = tuple(target.spec)
    if ndim < len(spec) or all(axis is None for axis in spec):
        return None
    return NamedSharding(mesh, PartitionSpec(*spec, *([None] * (ndim - len(spec)))),
                         memory_kind=target.memory_kind)


def _identity(x):
    return x


_replicate = jax.jit(_identity)  # an uncommitted array onto the ambient (Auto) mesh, replicated


def _fill_key(key):
    """The key a fill (``zeros``, ``constant``, ...) draws with: it reads none, so any
    key the user passes (even a batch of keys, as JAX allows) is fine. Under a
    trace the stand-in is traced too, so the fill is staged into the user's
    program instead of becoming a constant there."""
    if isinstance(key, jax.core.Tracer):
        return jnp.zeros((2,), np.uint32)
    return 0


def ensure_checked() -> None:
    """Run the core's one-time threefry self-check eagerly, even when called under a trace.

    A Flax user's first xinit call is often inside ``jax.jit(model.init)``; the
    check draws with a fixed key and must not be traced into the user's program.
    """
    with jax.ensure_compile_time_eval():
        threefry.ensure_checked()


def with_context(err: XinitError, qualname: str, shape, dtype, layout) -> XinitError:
    """The same error class, its message extended with the call that raised it."""
    return type(err)(
        f"{err} [{qualname}: shape={tuple(shape)}, dtype={np.dtype(dtype)}, layout={layout!r}]"
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
    (or an int seed; fills such as ``zeros`` ignore it), ``shape`` a sequence of
    ints (or one int), ``out_sharding`` a ``NamedSharding`` or a
    ``PartitionSpec`` under ``jax.set_mesh``, placed as JAX places its own
    initializers' results (see :func:`place`). It works eagerly, inside
    ``jax.jit`` and under ``jax.eval_shape``.

    float64 is always float64 here: it is drawn under a local x64 scope, so a
    float64 array comes back even when the user's ``jax_enable_x64`` is off (the
    global config is never changed; JAX itself would warn and return float32,
    and so does :class:`JaxInitializer`).
    """

    spec: specs.Spec
    layout: Layout = FLAX
    dtype: Any = None
    name: str = field(default="", compare=False)

    namespace: ClassVar[str] = "xinit.flax.torch_init"

    @property
    def qualname(self) -> str:
        """The factory's full name, e.g. ``xinit.flax.torch_init.uniform``."""
        return f"{self.namespace}.{self.name or self.spec.name}"

    def resolve_dtype(self, dtype) -> np.dtype:
        """The dtype to draw in: the call's, else the factory's, else JAX's default float."""
        if dtype is None:
            dtype = self.dtype
        return default_float() if dtype is None else np.dtype(dtype)

    def check_call(self, shape: tuple[int, ...], dtype: np.dtype, out_sharding) -> None:
        """Reject what this initializer does not accept, before anything is drawn."""

    def zero_rows(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Canonical rows the draw sets to zero (an embedding's padding row): none."""
        return ()

    def __call__(self, key, shape, dtype=None, out_sharding=None) -> jax.Array:
        shape = as_shape(shape)
        dtype = self.resolve_dtype(dtype)
        self.check_call(shape, dtype, out_sharding)
        if not self.spec.random:
            key = _fill_key(key)
        ensure_checked()
        traced = isinstance(key, jax.core.Tracer)
        target = shard_target(out_sharding, self.qualname, len(shape), traced)
        try:
            if traced and target is not None:
                # Inside a user's jit: the draw is staged with the mesh's axes Auto and its
                # result constrained to the target, so XLA's partitioner gives each device
                # only its shard of the (elementwise) draw, as jit's out_shardings do.
                def draw(k):
                    return sample(self.spec, k, shape, dtype, layout=self.layout,
                                  zero_rows=self.zero_rows(shape))

                with x64_scope(dtype):
                    return jax.sharding.auto_axes(draw, out_sharding=target,
                                                  axes=target.mesh.explicit_axes)(key)
            out = sample(self.spec, key, shape, dtype, layout=self.layout, sharding=target,
                         zero_rows=self.zero_rows(shape))
        except XinitError as err:
            raise with_context(err, self.qualname, shape, dtype, self.layout) from err
        if target is not None:  # drawn shard by shard (xinit.core.sharding)
            return out
        with x64_scope(dtype):
            return place(out, out_sharding, self.qualname)

    def __repr__(self) -> str:
        args = [f"{f.name}={getattr(self.spec, f.name)!r}" for f in fields(self.spec)]
        args.append(f"layout={self.layout!r}")
        if self.dtype is not None:
            args.append(f"dtype={np.dtype(self.dtype).name}")
        return f"{self.qualname}({', '.join(args)})"


_X64_HINT = (
    "To enable more dtypes, set the jax_enable_x64 configuration option or the "
    "JAX_ENABLE_X64 shell environment variable. See "
    "https://github.com/jax-ml/jax#current-gotchas for more."
)


@dataclass(frozen=True, repr=False)
class JaxInitializer(SpecInitializer):
    """A :class:`SpecInitializer` with ``jax.nn.initializers``' reading of its call.

    As JAX: ``dtype=None`` is the factory's dtype, else JAX's default float; a
    64-bit dtype without ``jax_enable_x64`` is drawn in its 32-bit counterpart,
    with JAX's warning; exception types are JAX's for the same bad call.

    Attributes:
        real_only: floating dtypes only (JAX's ``uniform``: no complex form).
        shardable: ``False`` where JAX raises ``NotImplementedError`` for any
            ``out_sharding`` (``orthogonal``).
        args: the factory's arguments, for the repr.
    """

    real_only: bool = False
    shardable: bool = True
    args: tuple = field(default=(), compare=False)

    namespace: ClassVar[str] = "xinit.flax"

    def resolve_dtype(self, dtype) -> np.dtype:
        requested = super().resolve_dtype(dtype)
        dt = np.dtype(jax.dtypes.canonicalize_dtype(requested))
        if dt != requested:
            warnings.warn(
                f"Explicitly requested dtype {requested} requested in {self.name} is not "
                f"available, and will be truncated to dtype {dt}. {_X64_HINT}",
                stacklevel=3,
            )
        return dt

    def check_call(self, shape, dtype, out_sharding) -> None:
        if not self.shardable and out_sharding is not None:
            raise NotImplementedError(
                f"{self.qualname} does not take out_sharding (jax.nn.initializers."
                f"{self.name} raises NotImplementedError here too); place the result with "
                "jax.device_put or jax.sharding.reshard"
            )
        if self.real_only and not jnp.issubdtype(dtype, jnp.floating):
            raise DtypeError(f"dtype argument to `{self.name}` must be a float dtype, got {dtype}")
        if isinstance(self.spec, specs.Constant) and isinstance(self.spec.val, complex) and (
            dtype.kind != "c"
        ):
            raise DtypeError(
                f"xinit.flax.constant: the complex value {self.spec.val!r} does not fit dtype "
                f"{dtype}; use a complex dtype"
            )

    def __repr__(self) -> str:
        args = [f"{k}={v!r}" for k, v in self.args]
        if self.dtype is not None:
            args.append(f"dtype={np.dtype(self.dtype).name}")
        return f"{self.qualname}({', '.join(args)})"
