"""DTensor parameters: each rank writes its own shard with its slice of the single-process values.

A DTensor (``torch.distributed.tensor``: ``distribute_tensor``, tensor
parallelism's ``parallelize_module``, FSDP2's ``fully_shard``) is a global
tensor of which each rank holds a *local shard*. Its placements say which
global indices the shard holds, dimension by dimension: ``Shard(d)`` splits
dim ``d`` as ``torch.chunk`` does (uneven last chunks, empty ones past the end),
``_StridedShard(d, split_factor)`` (FSDP2 over tensor parallelism) splits it
right to left, and ``Replicate()`` keeps it whole. :func:`parts` turns a
DTensor into the engine's terms: the local tensor, cut into blocks whose
global indices are contiguous in every dimension (one block in every case
but strided shards with gaps), each with its *region* of the global tensor.
The engine draws exactly those regions (:func:`xinit.core.engine.run`), so a
rank's shard equals the same slice of the unsharded draw, bit for bit, and no
rank draws or allocates the full tensor. Replicated dimensions are whole on
every rank, with no communication.

What a rank draws beyond its shard: orthogonal draws the whole matrix on every
rank (the Haar matrix needs all of its entries; about 3x the whole matrix in
memory, transiently) and writes its slice; sparse draws the shard's columns and,
for the zero pattern, one uniform per row of them up to the shard's last row.

Keys. With ``key=`` every rank uses that key: the values are the single-process
ones. Without it, each rank draws a seed from its own torch generator (advancing
it as a single-process call would) and then takes the seed of the mesh's first
rank (:func:`agreed_seed`, one broadcast per mesh dimension), as torch's own
DTensor random ops take rank 0's RNG state: ranks whose generators disagree
still write one consistent tensor.

Version counters, as torch's own in-place ops on a DTensor move them: the
DTensor's (the parameter's) counter moves, on every rank of its mesh (also one
that holds none of the tensor), and its local tensor's does not (DTensor's ops
write the local tensor below autograd). xinit writes a shard through an alias of
the local tensor that autograd does not track (``.data``), and
:class:`VersionedSink` moves the DTensor's counter once per call, when its part
on this rank is complete (or, if the run stops early, once something of it was
written); fills and checkpoint loads go through torch's own ``fill_`` and
``copy_`` on the DTensor, which do the same.

Checkpoints (:func:`load_`): a full, unsharded tensor is sliced, each rank
taking its shard's indices without communication; a DTensor entry is copied with
torch's ``copy_`` (as ``load_state_dict`` does: no communication where the
placements agree, a redistribution where they differ), and must live on the
parameter's mesh (:func:`load_problem`).
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from xinit.core.engine import Chunk, Region, Request

from ._sink import TorchSink, bump_version

__all__ = ["Part", "is_dtensor", "parts", "VersionedSink", "torch_sink", "load_problem", "load_",
           "agreed_seed", "meshes", "adopt_fsdp"]


def _dtensor_class():
    """``torch.distributed.tensor.DTensor`` once something has imported it (a DTensor
    cannot exist before), else None: importing it costs a cold start ~0.5 s."""
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None)


class Part(NamedTuple):
    """A block of a tensor to write: ``target`` (the tensor, or a view of a DTensor's
    local tensor, written in place) holds ``region`` of the global tensor (``None``:
    the whole tensor). ``dtensor``: the DTensor whose shard it is (``None`` for a plain
    tensor): its version counter moves when the part is written, not ``target``'s."""

    target: torch.Tensor
    region: Region | None
    dtensor: torch.Tensor | None = None


def is_dtensor(tensor) -> bool:
    cls = _dtensor_class()
    return cls is not None and isinstance(tensor, cls)


def _global_indices(tensor) -> list[np.ndarray] | None:
    """The global indices the local shard holds along each dimension, in local order
    (None: this rank is not in the tensor's mesh)."""
    from torch.distributed.tensor.placement_types import (
        Shard,
        _StridedShard,
        _StridedShardOffsetMode,
    )

    mesh = tensor.device_mesh
    coordinate = mesh.get_coordinate()
    if coordinate is None:
        return None
    indices = [np.arange(n) for n in tensor.shape]
    for mesh_dim, placement in enumerate(tensor.placements):
        if placement.is_replicate():
            continue
        if placement.is_partial():
            raise ValueError(
                f"a DTensor with a Partial placement ({placement}) holds partial sums, not a "
                "shard of the tensor, and cannot be initialized; redistribute it to Shard or "
                "Replicate placements first"
            )
        chunks, rank = mesh.size(mesh_dim), coordinate[mesh_dim]
        d = placement.dim
        if isinstance(placement, _StridedShard):
            _, offsets = placement.local_shard_size_and_offset(
                len(indices[d]), chunks, rank, _StridedShardOffsetMode.ALL)
            indices[d] = indices[d][np.asarray(offsets, dtype=np.int64)]
        elif isinstance(placement, Shard):
            size, offset = Shard.local_shard_size_and_offset(len(indices[d]), chunks, rank)
            indices[d] = indices[d][offset : offset + size]
        else:
            raise NotImplementedError(
                f"xinit cannot tell which part of the tensor a {type(placement).__name__} "
                f"placement holds ({placement}); supported: Shard, _StridedShard, Replicate"
            )
    return indices


def _runs(index: np.ndarray) -> list[tuple[int, int, int]]:
    """``index`` as maximal runs of consecutive values: ``(local start, local stop, global start)``."""
    if not len(index):
        return []
    breaks = np.flatnonzero(np.diff(index) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(index)]])
    return [(int(a), int(b), int(index[a])) for a, b in zip(starts, stops, strict=True)]


def parts(tensor: torch.Tensor) -> list[Part]:
    """The blocks of ``tensor`` this rank writes: ``[Part(tensor, None)]`` for a plain
    tensor; for a DTensor, its local shard as blocks with their global regions (one
    empty block, of an empty region, when this rank holds none of it: its version
    counter still moves, as torch's does). The targets alias the local tensor outside
    autograd's tracking (see the module docstring). Raises ``ValueError`` for Partial
    placements and ``NotImplementedError`` for placements of unknown meaning, before
    anything is drawn."""
    if not is_dtensor(tensor):
        return [Part(tensor, None)]
    indices = _global_indices(tensor)
    with torch.no_grad():
        local = tensor.to_local().data  # the local tensor's memory; writes move no counter of it
    if indices is not None:
        expected = tuple(len(i) for i in indices)
        if tuple(local.shape) != expected:
            raise RuntimeError(
                f"the local shard of a DTensor of shape {tuple(tensor.shape)} with placements "
                f"{tensor.placements} has shape {tuple(local.shape)}, where its placements give "
                f"{expected}"
            )
    if indices is None or 0 in expected:
        return [Part(local, tuple((0, 0) for _ in tensor.shape), tensor)]
    out = []
    for runs in itertools.product(*(_runs(i) for i in indices)):
        view = local[tuple(slice(a, b) for a, b, _ in runs)]
        region = tuple((g, g + b - a) for a, b, g in runs)
        out.append(Part(view, region, tensor))
    return out


class VersionedSink:
    """A :class:`~xinit.torch._sink.TorchSink` that also moves the version counter of
    the DTensor each request belongs to (``dtensors[i]``, ``None`` for a plain tensor),
    once per DTensor: when one of its requests is complete, or, if the run stops
    early, when something of it was written. Its targets alias local tensors that
    autograd does not track, so their own bumps move nothing a user sees."""

    in_place = True

    def __init__(self, sink: TorchSink, dtensors: list[torch.Tensor | None]):
        self.sink = sink
        self.dtensors = dtensors
        self._written: set[int] = set()  # requests of which something was (being) written
        self._moved: set[int] = set()  # ids of the DTensors whose counter moved

    def _move(self, index: int) -> None:
        t = self.dtensors[index]
        if t is not None and id(t) not in self._moved:
            self._moved.add(id(t))
            bump_version(t)

    def prepare(self, chunk: Chunk) -> None:
        self.sink.prepare(chunk)

    def write(self, chunk: Chunk) -> bool:
        self._written.update(s.index for s in chunk.segments)  # before: a write may stop midway
        return self.sink.write(chunk)

    def finish(self, index: int) -> None:
        self.sink.finish(index)
        self._move(index)

    def stop(self) -> None:
        self.sink.stop()
        for i in sorted(self._written):
            self._move(i)


def torch_sink(requests: list[Request], targets: list[torch.Tensor],
               dtensors: list[torch.Tensor | None]) -> TorchSink | VersionedSink:
    """The sink that writes ``targets`` (parts' targets, or views of them) and moves the
    version counters their tensors' owners would: a :class:`VersionedSink` where some
    target is a DTensor's part (``dtensors[i]``), else the plain :class:`TorchSink`."""
    sink = TorchSink(requests, targets)
    if any(t is not None for t in dtensors):
        return VersionedSink(sink, dtensors)
    return sink


def load_problem(tensor: torch.Tensor, value) -> str | None:
    """Why the checkpoint entry ``value`` cannot be loaded into ``tensor`` (the model's
    tensor), or None; ``value=None``: only what ``tensor`` itself allows (an entry not
    read yet, e.g. of a ``.safetensors`` file, which holds no DTensors).

    A DTensor entry is loaded only into a DTensor on the same mesh: into a plain tensor
    it would need ``full_tensor()``, a collective every rank of its mesh has to run at
    the same point, which xinit cannot promise (torch's ``load_state_dict`` refuses it
    too); pass ``value.full_tensor()`` yourself. A DTensor of the model with a
    placement of unknown meaning (or Partial) takes no slice of a checkpoint."""
    if is_dtensor(value):
        if not is_dtensor(tensor):
            return ("a DTensor in the checkpoint, a plain tensor in the model; load its "
                    "full_tensor() (a collective: on every rank of its mesh) instead")
        if value.device_mesh != tensor.device_mesh:
            return (f"a DTensor on the device mesh {value.device_mesh} in the checkpoint, on "
                    f"{tensor.device_mesh} in the model")
    if is_dtensor(tensor):
        try:
            _global_indices(tensor)
        except (ValueError, NotImplementedError) as err:
            return str(err)
    return None


def _take(value: torch.Tensor, indices: list[np.ndarray]) -> torch.Tensor:
    """``value[np.ix_(*indices)]``, as views where the indices are one run."""
    for d, index in enumerate(indices):
        runs = _runs(index)
        if len(runs) > 1:  # a strided shard, with gaps
            value = value.index_select(d, torch.as_tensor(index, device=value.device))
        elif len(index) < value.shape[d]:  # one run (none: an empty shard)
            value = value.narrow(d, runs[0][2] if runs else 0, len(index))
    return value


def load_(tensor: torch.Tensor, value: torch.Tensor | Callable[[tuple[slice, ...]], torch.Tensor]) -> None:
    """Copy the checkpoint entry ``value`` into the DTensor ``tensor`` (checked with
    :func:`load_problem`), casting floating point dtypes: a plain (full) tensor gives
    each rank its shard's slice, with no communication; a DTensor is copied by torch
    (as ``load_state_dict`` does). Through torch's ``copy_`` on the DTensor, so its
    version counter moves as torch's does.

    ``value`` may also be a reader of blocks of the full tensor (``read(box)``, one
    ``slice`` per dimension, e.g. of a ``.safetensors`` file): each rank then reads
    only the block that bounds its shard, never the whole tensor."""
    from torch.distributed.tensor import DTensor

    with torch.no_grad():
        if not is_dtensor(value):
            indices = _global_indices(tensor)
            if indices is None:  # this rank is not in the mesh: it holds nothing
                indices = [np.arange(0)] * tensor.dim()
            if callable(value):
                box = tuple(slice(int(ix.min()), int(ix.max()) + 1) if len(ix) else slice(0, 0)
                            for ix in indices)
                value = value(box)
                indices = [ix - b.start for ix, b in zip(indices, box, strict=True)]
            value = DTensor.from_local(_take(value, indices), tensor.device_mesh, tensor.placements,
                                       run_check=False, shape=tensor.shape, stride=tensor.stride())
        tensor.copy_(value)


def meshes(tensors) -> list:
    """The distinct device meshes of the DTensors among ``tensors``, in order."""
    out = []
    for t in tensors:
        if is_dtensor(t) and not any(t.device_mesh is m or t.device_mesh == m for m in out):
            out.append(t.device_mesh)
    return out


def agreed_seed(seed: int, mesh_list) -> int:
    """``seed`` as the first rank of every mesh in ``mesh_list`` has it (one broadcast
    per mesh dimension: along dim 0, then dim 1, ... from coordinate 0)."""
    for mesh in mesh_list:
        if mesh.get_coordinate() is None:
            continue
        for d in range(mesh.ndim):
            if mesh.size(d) == 1:
                continue
            value = torch.tensor([seed], dtype=torch.int64, device=mesh.device_type)
            torch.distributed.broadcast(value, group=mesh.get_group(d), group_src=0)
            seed = int(value.item())
    return seed


def adopt_fsdp(module: torch.nn.Module) -> None:
    """Let every FSDP2 module under ``module`` take its newly set parameters.

    ``fully_shard`` keeps its own references to the sharded parameters and a
    padded copy of uneven local shards; ``FSDPModule._apply`` (behind
    ``to_empty``) re-reads them with ``FSDPParam.reset_sharded_param``, which
    this does too. Called after the parameters are replaced and before they are
    written, so the values land in the storage FSDP2 keeps.
    """
    fsdp = sys.modules.get("torch.distributed.fsdp")  # not imported: no FSDP2 module exists
    FSDPModule = getattr(fsdp, "FSDPModule", None)  # noqa: N806 - a class
    if FSDPModule is None:
        return
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, FSDPModule):
                for group in m._get_fsdp_state()._fsdp_param_groups:
                    for fsdp_param in group.fsdp_params:
                        fsdp_param.reset_sharded_param()
