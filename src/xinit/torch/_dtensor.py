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
"""

from __future__ import annotations

import itertools
import sys
from typing import NamedTuple

import numpy as np
import torch

from xinit.core.engine import Region

__all__ = ["Part", "is_dtensor", "parts", "agreed_seed", "meshes", "adopt_fsdp"]



def _dtensor_class():
    """``torch.distributed.tensor.DTensor`` once something has imported it (a DTensor
    cannot exist before), else None: importing it costs a cold start ~0.5 s."""
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None)


class Part(NamedTuple):
    """A block of a tensor to write: ``target`` (a view of the local tensor, in place)
    holds ``region`` of the global tensor (``None``: the whole tensor)."""

    target: torch.Tensor
    region: Region | None


def is_dtensor(tensor) -> bool:
    cls = _dtensor_class()
    return cls is not None and isinstance(tensor, cls)


def _global_indices(tensor) -> list[np.ndarray] | None:
    """The global indices the local shard holds along each dimension, in local order
    (None: this rank is not in the tensor's mesh)."""
    from torch.distributed.tensor.placement_types import Shard, _StridedShard, _StridedShardOffsetMode

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
    tensor; for a DTensor, its local shard as blocks with their global regions
    (``[]`` when this rank holds none of it). Raises ``ValueError`` for Partial
    placements and ``NotImplementedError`` for placements of unknown meaning,
    before anything is drawn."""
    if not is_dtensor(tensor):
        return [Part(tensor, None)]
    indices = _global_indices(tensor)
    with torch.no_grad():
        local = tensor.to_local()  # the local tensor itself (no autograd view)
    if indices is None:
        return []
    expected = tuple(len(i) for i in indices)
    if tuple(local.shape) != expected:
        raise RuntimeError(
            f"the local shard of a DTensor of shape {tuple(tensor.shape)} with placements "
            f"{tensor.placements} has shape {tuple(local.shape)}, where its placements give "
            f"{expected}"
        )
    if 0 in expected:
        return []
    out = []
    for runs in itertools.product(*(_runs(i) for i in indices)):
        view = local[tuple(slice(a, b) for a, b, _ in runs)]
        region = tuple((g, g + b - a) for a, b, g in runs)
        out.append(Part(view, region))
    return out


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
