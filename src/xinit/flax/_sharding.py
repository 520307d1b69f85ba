"""The sharding of each leaf of a flax tree: given (``shardings=``) or declared by the model.

:func:`leaf_shardings` gives one concrete ``jax.sharding.Sharding`` (or ``None``:
unsharded, JAX's default device) per leaf of a tree that
``xinit.flax.initialize`` draws; :mod:`xinit.core.sharding` then draws each
device's shard. In order of precedence:

1. ``shardings=``: a pytree of ``Sharding`` / ``PartitionSpec`` (under
   ``jax.set_mesh``) / ``None`` leaves with the tree's structure, or a prefix
   of it (one sharding for a whole collection or the whole tree), as ``jit``'s
   ``out_shardings``: e.g. ``nn.get_sharding(abstract, mesh)`` for linen,
   ``nnx.get_named_sharding(state, mesh)`` for nnx;
2. what the model declares: linen ``nn.Partitioned`` boxes
   (``nn.with_partitioning``; mesh axis names) and ``nn.LogicallyPartitioned``
   (``nn.with_logical_partitioning``; logical names mapped by the box's rules
   or those of the ``nn.logical_axis_rules`` context, unassigned names
   replicated), on the box's mesh or the ambient one; nnx variables'
   ``out_sharding`` metadata (``nnx.with_partitioning``, logical names through
   ``sharding_rules`` and the context's rules, as ``nnx.get_partition_spec``);
3. the sharding a leaf already has: an array sharded over several devices, or
   an abstract leaf (``jax.ShapeDtypeStruct``) carrying a ``NamedSharding``
   (``nnx.get_abstract_model``).

Declarations without a mesh (none on the box, no ``jax.set_mesh``) shard
nothing, as Flax's own ``unbox`` then constrains nothing.
"""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import NamedSharding, PartitionSpec, Sharding

from xinit.core.sharding import as_sharding

__all__ = ["leaf_shardings"]


def _is_spec_leaf(x) -> bool:
    return x is None or isinstance(x, (Sharding, PartitionSpec))


def _key(entry) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def _given(shardings, paths: list[tuple[str, ...]]) -> list[Any]:
    """Each leaf's entry of the ``shardings`` pytree (longest prefix of its path)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(shardings, is_leaf=_is_spec_leaf)
    table: dict[tuple[str, ...], Any] = {}
    for path, value in flat:
        if not _is_spec_leaf(value):
            raise TypeError(
                "shardings must hold jax.sharding.Sharding, PartitionSpec or None leaves; got "
                f"{value!r} at {jax.tree_util.keystr(path)}"
            )
        keys = tuple(_key(k) for k in path)
        if keys and keys[-1] == "value" and type(path[-1]).__name__ == "GetAttrKey":
            keys = keys[:-1]  # an nnx Variable's value
        table[keys] = value
    used: set[tuple[str, ...]] = set()
    out = []
    missing = []
    for path in paths:
        for cut in range(len(path), -1, -1):
            if path[:cut] in table:
                used.add(path[:cut])
                out.append(table[path[:cut]])
                break
        else:
            missing.append("/".join(path))
            out.append(None)
    extra = ["/".join(p) or "<root>" for p in table if p not in used]
    if missing or extra:
        raise ValueError(
            "shardings does not match the tree's structure (it must have the tree's structure, or "
            "be a prefix of it, as jit's out_shardings): "
            + "; ".join(filter(None, [
                f"no sharding for {', '.join(missing)}" if missing else "",
                f"no leaf at {', '.join(extra)}" if extra else "",
            ]))
        )
    return out


def _ambient_mesh():
    mesh = jax.sharding.get_mesh()
    return None if mesh.empty else mesh


def _declared_by_box(box) -> Sharding | None:
    from flax.core import meta
    from flax.linen import spmd

    if not isinstance(box, meta.Partitioned):
        return None
    mesh = box.mesh or _ambient_mesh()
    if mesh is None:
        return None
    if isinstance(box, spmd.LogicallyPartitioned):
        spec = spmd.logical_to_mesh_axes(box.names, box.rules)
    else:
        spec = box.get_partition_spec()
    return NamedSharding(mesh, spec)


def _declared_by_variable(var) -> Sharding | None:
    from flax import nnx

    metadata = var.get_metadata()
    if not metadata.get("out_sharding"):
        return None
    mesh = metadata.get("mesh") or _ambient_mesh()
    if mesh is None:
        return None
    return NamedSharding(mesh, nnx.spmd.get_var_pspec(var))


def _carried(value) -> Sharding | None:
    sharding = getattr(value, "sharding", None)
    if not isinstance(sharding, Sharding):
        return None
    if isinstance(sharding, NamedSharding) and isinstance(sharding.mesh, jax.sharding.AbstractMesh):
        mesh = _ambient_mesh()
        if mesh is None or mesh.abstract_mesh != sharding.mesh:
            return None
        return NamedSharding(mesh, sharding.spec, memory_kind=sharding.memory_kind)
    return sharding if len(sharding.device_set) > 1 else None


def leaf_shardings(leaves, shardings, full_paths: list[tuple[str, ...]]) -> list[Sharding | None]:
    """One sharding (or ``None``) per leaf (``xinit.flax.model``'s leaves), by the
    precedence of the module doc; ``full_paths`` are the leaves' paths in the tree
    as the user sees it (with the collection level, when it has one)."""
    if shardings is not None:
        given = _given(shardings, full_paths)
        return [as_sharding(s, f"shardings[{'/'.join(p)}]") for s, p in zip(given, full_paths, strict=True)]
    out = []
    for lf in leaves:
        if lf.box is not None:
            sh = _declared_by_box(lf.box)
        elif lf.var is not None:
            sh = _declared_by_variable(lf.var)
        else:
            sh = None
        out.append(sh if sh is not None else _carried(lf.value))
    return out
