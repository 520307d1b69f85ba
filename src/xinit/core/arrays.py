"""Drawing into new JAX arrays: the JAX sink, and :func:`sample` for one tensor.

:class:`JaxSink` receives the engine's chunks (:func:`xinit.core.engine.run`)
and builds one ``jax.Array`` per request, of the request's region in any
*layout* (the canonical values permuted, e.g. flax's ``(*k, in, out)``), with
rows zeroed where a request says so (an embedding's padding row):

- on the CPU (JAX's default platform), each value is copied once from a numpy
  view of the chunk into a 64-byte-aligned host buffer, transposed on the fly,
  and JAX adopts the buffer (``jax.device_put``, no copy, an uncommitted array;
  :func:`xinit.core.host_memory.adopt`): nothing is compiled per shape. A
  request that is exactly one full chunk in canonical layout is that chunk;
- on accelerators, and inside a user's ``jit``, with JAX operations (slices,
  a concatenation, a transpose), which stay on the device or inline.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import host_memory
from .engine import (
    Chunk,
    Request,
    canonical_dtype,
    checked_plan,
    pieces,
    request,
    run,
    x64_scope,
    zero_rows_in_region,
)
from .errors import ShapeError
from .layout import TORCH, Layout, as_shape, canonical_shape
from .packing import chunk_size
from .specs import Elementwise, Spec

__all__ = ["JaxSink", "sample"]


def _is_tracer(x) -> bool:
    return isinstance(x, jax.core.Tracer)


class JaxSink:
    """Builds a ``jax.Array`` of each request's region in its layout (see the module doc).

    Args:
        requests: the requests of the run.
        layouts: one :class:`~xinit.core.layout.Layout` per request: the result of
            request ``i`` is its canonical region transposed by
            ``layouts[i].inverse_permutation``.
        host: assemble in host memory (CPU) rather than with JAX operations.
        devices: where each result goes (``None`` or a ``None`` entry: where it
            is drawn, JAX's default device on the host); a host buffer is
            adopted by its device without a copy (sharded draws,
            :mod:`xinit.core.sharding`).

    After the run, :attr:`results` holds the arrays, in request order. Results are
    new arrays, visible only when the run returns, so an interrupted or failed
    run leaves nothing half-written.
    """

    in_place = False

    def __init__(self, requests: list[Request], layouts: list[Layout], *, host: bool,
                 devices: list | None = None):
        self.requests = requests
        self.layouts = layouts
        self.host = host
        self.devices = devices if devices is not None else [None] * len(requests)
        self.results: list[jax.Array | None] = [None] * len(requests)
        self._outs: dict[int, np.ndarray] = {}  # host buffers in the result's layout
        self._canon: dict[int, np.ndarray] = {}  # the same buffers seen in canonical order
        self._whole: dict[int, jax.Array] = {}  # requests that are one whole chunk
        self._parts: dict[int, list[jax.Array]] = {}

    def _axes(self, i: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(result shape, canonical-from-layout permutation, its inverse) of request ``i``;
        a complex request's real view keeps its parts axis last."""
        req = self.requests[i]
        rshape = req.region_shape
        if req.complex_dtype is None:
            ndim = len(rshape)
            perm, inv = self.layouts[i].permutation(ndim), self.layouts[i].inverse_permutation(ndim)
            return tuple(rshape[k] for k in inv), perm, inv
        ndim = len(rshape) - 1
        perm = (*self.layouts[i].permutation(ndim), ndim)
        inv = (*self.layouts[i].inverse_permutation(ndim), ndim)
        return tuple(rshape[k] for k in inv[:-1]), perm, inv

    def _canonical(self, i: int) -> np.ndarray:
        view = self._canon.get(i)
        if view is None:
            req = self.requests[i]
            shape, perm, _ = self._axes(i)
            if req.complex_dtype is None:
                out = self._outs[i] = host_memory.aligned_empty(shape, req.dtype)
                view = out
            else:  # the complex result's real view (*shape, 2)
                out = self._outs[i] = host_memory.aligned_empty(shape, req.complex_dtype)
                view = out.reshape(-1).view(req.dtype).reshape(*shape, 2)
            view = self._canon[i] = view.transpose(perm)
        return view

    def write(self, chunk: Chunk) -> bool:
        if not self.host:
            flat = None
            for seg in chunk.segments:
                with x64_scope(self.requests[seg.index].dtype):
                    if flat is None:
                        flat = chunk.array.reshape(-1)
                    part = flat[seg.start : seg.start + seg.length]
                self._parts.setdefault(seg.index, []).append(part)
            return True  # the parts are views of it (on accelerators: no reuse)
        src, kept = None, False
        for seg in chunk.segments:
            i = seg.index
            req = self.requests[i]
            if (seg.length == req.size == chunk.array.size == chunk_size() and not req.zero_rows
                    and req.complex_dtype is None and self.layouts[i].is_identity(len(req.shape))):
                self._whole[i] = chunk.array  # a full chunk that is the result: no copy
                kept = True
                continue
            if src is None:
                src = np.asarray(chunk.array).reshape(-1)
            host_memory.write_range(self._canonical(i), seg.offset, src[seg.start : seg.start + seg.length])
        return kept

    def finish(self, index: int) -> None:
        req = self.requests[index]
        shape, _, inv = self._axes(index)
        dtype = req.complex_dtype or req.dtype
        rows = zero_rows_in_region(req)
        with x64_scope(dtype):
            if req.size == 0:
                self.results[index] = jnp.zeros(shape, dtype)
            elif index in self._whole:
                self.results[index] = self._whole.pop(index).reshape(shape)
            elif self.host:
                canon = self._canonical(index)
                for r in rows:
                    canon[r] = 0
                self.results[index] = host_memory.adopt(self._outs.pop(index), self.devices[index])
                del self._canon[index]
            else:
                parts = self._parts.pop(index)
                flat = parts[0] if len(parts) == 1 else jnp.concatenate(parts)
                arr = flat.reshape(req.region_shape)
                for r in rows:
                    arr = arr.at[r].set(0)
                arr = arr.transpose(inv)
                if req.complex_dtype is not None:
                    arr = lax.complex(arr[..., 0], arr[..., 1])
                self.results[index] = arr
            device = self.devices[index]
            if device is not None and self.results[index].devices() != {device}:
                self.results[index] = jax.device_put(self.results[index], device)

    def stop(self) -> None:
        self._outs.clear()
        self._canon.clear()
        self._whole.clear()
        self._parts.clear()


def sample(spec: Spec, key, shape, dtype=None, *, layout: Layout = TORCH, device=None,
           region=None, sharding=None, zero_rows: Sequence[int] = ()) -> jax.Array:
    """Draw ``spec`` for a weight of ``shape`` stored in ``layout`` (or a ``region`` of it).

    The values are those of the canonical shape, moved into ``layout`` by a pure
    transpose: ``sample(s, k, (3, 3, 8, 16), layout=FLAX)`` equals
    ``sample(s, k, (16, 8, 3, 3)).transpose(2, 3, 1, 0)`` bit for bit.

    Complex dtypes draw the spec's complex form (see
    :meth:`~xinit.core.Spec.complex_plan`): random values as their real view.

    Args:
        spec: the initializer.
        key: a ``jax.random.key``, a ``uint32[2]`` key or an int seed.
        shape: the array's shape, in ``layout``.
        dtype: the array's dtype (``None``: float32).
        layout: how ``shape`` maps to the canonical ``(out, in, *receptive)``.
        device: the JAX device to draw on (``None``: JAX's default device).
        region: ``((start, stop), ...)``, one range per axis of ``shape``: only
            that slice is drawn and returned, equal bit for bit to
            ``sample(spec, key, shape, ...)[start:stop, ...]``; memory is the
            slice plus a chunk (orthogonal draws the whole matrix, see
            :mod:`xinit.core.engine`).
        sharding: a ``jax.sharding.Sharding`` (or a ``PartitionSpec`` under
            ``jax.set_mesh``) of the array: each of this process's devices
            draws only its shard, and the result is one global array with
            exactly that sharding, equal bit for bit to the unsharded draw
            (see :mod:`xinit.core.sharding`). Not with ``device`` or
            ``region``, nor inside ``jax.jit``.
        zero_rows: canonical rows (dimension 0) set to zero after the draw
            (an embedding's padding row), in every region or shard that holds
            them.

    >>> from xinit.core import Uniform
    >>> sample(Uniform(-1, 1), 0, (4, 3)).shape
    (4, 3)
    >>> sample(Uniform(-1, 1), 0, (4, 3), region=((1, 3), (0, 3))).shape
    (2, 3)
    """
    shape = as_shape(shape)
    dtype = canonical_dtype(dtype)
    canon = canonical_shape(shape, layout)
    plan = checked_plan(spec, canon, dtype)
    if region is not None:
        region = tuple(region)
        if len(region) != len(shape):
            raise ShapeError(f"region {region!r} needs one (start, stop) pair per axis of shape {shape}")
        region = tuple(region[p] for p in layout.permutation(len(shape)))
    req = request(plan, key, canon, dtype, region=region, device=device, zero_rows=zero_rows)
    if sharding is not None:
        from . import sharding as sharded

        if device is not None or region is not None or _is_tracer(req.key):
            raise ValueError("sample: sharding= does not combine with device=, region= or a traced key")
        return sharded.draw([req], [layout], [sharded.as_sharding(sharding)])[0]
    host = device is None and host_memory.on_host() and not _is_tracer(req.key)
    if host and req.size and isinstance(plan, Elementwise) and plan.family == "constant":
        return _fill(req, layout)
    sink = JaxSink([req], [layout], host=host)
    run([req], sink)
    return sink.results[0]


def _fill(req: Request, layout: Layout) -> jax.Array:
    """A constant: one fill of its value as the kernel casts it (no chunk to copy)."""
    one = request(req.plan, req.key, (1,), req.dtype)
    with x64_scope(req.dtype):
        value = np.asarray(pieces(one)[0].array)[0]
        rshape = req.region_shape
        out = host_memory.aligned_empty(tuple(rshape[k] for k in layout.inverse_permutation(len(rshape))),
                                        req.dtype)
        out.fill(value)
        return host_memory.adopt(out)
