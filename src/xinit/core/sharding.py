"""Sharded draws: every device gets its shard of the whole draw, and nothing more.

A tensor with a ``jax.sharding.Sharding`` is drawn as one engine request per
shard (:func:`xinit.core.engine.request` with the shard's region), so a device
receives exactly its slice of the unsharded values, bit for bit, whatever the
mesh, the sharded dimensions or the layout (a flax ``(in, out)`` kernel sharded
on ``out`` is a canonical column slice). The shards are assembled with
``jax.make_array_from_single_device_arrays``; only the shards of this
process's devices (``addressable_devices_indices_map``) are drawn, so under
``jax.distributed`` each process draws its own and no process communicates.

Where the values are made:

- on the CPU (JAX's default platform) every shard is drawn by the engine into a
  host buffer the size of the shard and adopted by its device without a copy;
  a replicated shard (the same region on several devices) is drawn once and
  copied to the other devices (a copy is cheaper than a draw). Peak memory:
  the shards plus the engine's chunk buffers (two chunks per dtype and family);
- on accelerators each shard is drawn on its own device (replicas included:
  drawing is cheaper than a transfer, and needs no communication);
- orthogonal tensors are drawn whole, once, on the default device, and sliced:
  the Haar matrix needs every entry of its Gaussian draw and the
  Householder/QR factorization runs on the whole matrix (memory: ~3x the whole
  matrix while it is drawn, then the shards);
- sparse tensors draw only their shard's columns, but the zero mask of a
  column needs that column's selection draws over all rows up to the shard's
  last row (memory: the shard plus ``rows_up_to_last x shard_columns``
  selection values, transient).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import PartitionSpec, Sharding

from . import host_memory
from .arrays import JaxSink
from .engine import Region, Request, run, x64_scope
from .errors import ShapeError
from .layout import Layout
from .specs import OrthogonalPlan, UnitaryPlan

__all__ = ["as_sharding", "layout_shape", "shard_regions", "draw"]


def as_sharding(value, what: str = "sharding") -> Sharding | None:
    """``value`` as a concrete ``Sharding``: a ``Sharding`` as it is, a ``PartitionSpec``
    on the ambient mesh (``jax.set_mesh``), ``None`` as ``None``.

    Raises:
        ValueError: a ``PartitionSpec`` with no ambient (concrete) mesh.
        TypeError: anything else.
    """
    if value is None or isinstance(value, Sharding):
        return value
    if isinstance(value, PartitionSpec):
        mesh = jax.sharding.get_mesh()
        if mesh.empty:
            raise ValueError(
                f"{what} {value} is a PartitionSpec but no mesh is set: use jax.set_mesh(mesh) "
                "or pass a jax.sharding.NamedSharding(mesh, spec)"
            )
        return jax.sharding.NamedSharding(mesh, value)
    raise TypeError(
        f"{what} must be a jax.sharding.Sharding, a PartitionSpec (under jax.set_mesh) or None; "
        f"got {value!r}"
    )


def layout_shape(shape: tuple[int, ...], layout: Layout) -> tuple[int, ...]:
    """The array's shape in ``layout`` of the canonical ``shape``."""
    return tuple(shape[k] for k in layout.inverse_permutation(len(shape)))


def _range(index: slice, n: int, axis: int) -> tuple[int, int]:
    start, stop, step = index.indices(n)
    if step != 1:
        raise ShapeError(f"a shard's index along axis {axis} has step {step}; xinit draws contiguous shards")
    return start, max(start, stop)


def shard_regions(shape: tuple[int, ...], layout: Layout, sharding: Sharding) -> dict:
    """``{device: canonical region}`` of this process's devices, for a canonical
    ``shape`` stored in ``layout`` and sharded by ``sharding``.

    Raises ``ValueError`` (JAX's) when ``sharding`` does not fit the shape (e.g. a
    dimension not divisible by its mesh axes), before anything is drawn.
    """
    lshape = layout_shape(shape, layout)
    sharding.shard_shape(lshape)  # JAX's own check and error
    perm = layout.permutation(len(shape))
    out = {}
    for device, index in sharding.addressable_devices_indices_map(lshape).items():
        lreg = tuple(_range(s, n, ax) for ax, (s, n) in enumerate(zip(index, lshape, strict=True)))
        out[device] = tuple(lreg[p] for p in perm)
    return out


def _slice(region: Region, layout: Layout) -> tuple[slice, ...]:
    inv = layout.inverse_permutation(len(region))
    return tuple(slice(*region[k]) for k in inv)


def _tensor_shape(req: Request) -> tuple[int, ...]:
    """The canonical shape of the tensor ``req`` draws (a complex one's, not its real view's)."""
    return req.shape[:-1] if req.complex_dtype is not None else req.shape


def _request_region(req: Request, region: Region) -> Region:
    """``region`` of the tensor as a region of ``req`` (a complex request's real view
    has both parts of each element)."""
    return (*region, (0, 2)) if req.complex_dtype is not None else region


def draw(requests: list[Request], layouts: list[Layout], shardings: list[Sharding | None]) -> list[jax.Array]:
    """The arrays of whole-tensor ``requests``, each in its layout, sharded by its
    sharding (``None``: one array on JAX's default device), by one engine run.

    Each sharded request becomes one request per shard (see the module doc);
    every sharding is checked against its shape before anything is drawn.
    """
    host = host_memory.on_host()
    regions = [None if sh is None else shard_regions(_tensor_shape(r), lay, sh)
               for r, lay, sh in zip(requests, layouts, shardings, strict=True)]
    reqs: list[Request] = []
    sink_layouts: list[Layout] = []
    targets: list = []
    # per input: None (unsharded, result index) or [(device, result index, slice or None)]
    wiring: list = []
    for req, lay, regs in zip(requests, layouts, regions, strict=True):
        if regs is None or isinstance(req.plan, (OrthogonalPlan, UnitaryPlan)):
            whole = len(reqs)
            reqs.append(req)
            sink_layouts.append(lay)
            targets.append(None)
            wiring.append(whole if regs is None else
                          [(d, whole, _slice(reg, lay)) for d, reg in regs.items()])
            continue
        first: dict[Region, int] = {}
        parts = []
        for d, reg in regs.items():
            if host and reg in first:  # a replica: copied from the first one drawn
                parts.append((d, first[reg], None))
                continue
            first[reg] = len(reqs)
            parts.append((d, len(reqs), None))
            reqs.append(req._replace(region=_request_region(req, reg), device=None if host else d))
            sink_layouts.append(lay)
            targets.append(d)
        wiring.append(parts)
    sink = JaxSink(reqs, sink_layouts, host=host, devices=targets)
    run(reqs, sink)
    results = sink.results
    out = []
    for req, lay, sh, wire in zip(requests, layouts, shardings, wiring, strict=True):
        if isinstance(wire, int):
            out.append(results[wire])
            continue
        with x64_scope(req.complex_dtype or req.dtype):
            arrays = []
            for d, j, index in wire:
                arr = results[j]
                if index is not None:  # a slice of a whole (orthogonal) draw
                    arr = np.ascontiguousarray(np.asarray(arr)[index]) if host else arr[index]
                if index is not None or next(iter(arr.devices())) != d:
                    arr = jax.device_put(arr, d)
                arrays.append(arr)
            out.append(jax.make_array_from_single_device_arrays(layout_shape(_tensor_shape(req), lay),
                                                                sh, arrays))
        for _, j, _ in wire:
            results[j] = None
    return out
