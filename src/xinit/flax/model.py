"""Whole-model initialization for Flax param trees (linen) and nnx States/Modules.

The same :class:`~xinit.core.recipes.Recipe` and key give a torch module and a
flax model with matching canonical names the same numbers: each parameter is
drawn on its canonical (torch-layout) shape with the key
``fold_in(root_key, crc32(name))`` by the same engine run as
``xinit.torch.initialize``, and written into flax's layout.

Canonical names: the path ``params/a/b/kernel`` is ``a.b.weight`` (collection
dropped, ``/`` -> ``.``, ``kernel``/``embedding``/``scale`` -> ``weight``);
BatchNorm's ``batch_stats/bn/mean`` and ``.../var`` are ``bn.running_mean`` and
``bn.running_var``, as in torch. nnx paths such as ``('blocks', 0, 'kernel')``
give ``blocks.0.weight``. Linen names list submodules ``blocks_0``; pass
``rename=`` to map names onto a torch model's (e.g. ``blocks_0`` -> ``blocks.0``).

Layer kinds are inferred from the tree: ``kernel`` of rank 2 is ``linear``, of
rank >= 3 ``conv`` (``conv_transpose`` when its module's name or class starts
with ``ConvTranspose``); ``embedding`` is ``embedding``; ``scale`` and its sibling
``bias`` (or a module with batch stats) are ``norm``; a ``bias`` next to a kernel
has the kernel's kind and takes its fan-in. Kernels are canonicalized with
:data:`xinit.core.FLAX` (``(*k, in, out)`` -> ``(out, in, *k)``); a
ConvTranspose kernel ``(*k, in, out)`` maps to torch's ConvTranspose weight
layout ``(in, out, *k)``, so ``torch_default`` gives torch's (reversed) fans.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from xinit.core import engine, host_memory, sharding
from xinit.core._keys import key_data, stable_hash
from xinit.core.arrays import JaxSink
from xinit.core.engine import canonical_dtype
from xinit.core.layout import FLAX, TORCH, Layout, canonical_shape
from xinit.core.recipes import Param, Plan, UnmatchedError, as_layer, get_recipe
from xinit.core.threefry import fold_in_many

from ._sharding import leaf_shardings

__all__ = ["initialize", "plan", "describe", "canonical_name"]

CONV_TRANSPOSE = Layout(in_axis=-1, out_axis=-2, name="FLAX_CONV_TRANSPOSE")
_WEIGHT_LEAVES = {"kernel": "weight", "embedding": "weight", "scale": "weight"}
_STAT_LEAVES = {"mean": "running_mean", "var": "running_var"}
_AUTO_NAME = re.compile(r"^(.*?)_\d+$")


def canonical_name(path, *, stats: bool = False) -> str:
    """The canonical dotted name of a flax path (collection already dropped).

    >>> canonical_name(("layer1_0", "conv1", "kernel"))
    'layer1_0.conv1.weight'
    >>> canonical_name(("bn", "mean"), stats=True)
    'bn.running_mean'
    """
    *mods, leaf = (str(p) for p in path)
    table = _STAT_LEAVES if stats else _WEIGHT_LEAVES
    return ".".join([*mods, table.get(leaf, leaf)])


class _Leaf:
    __slots__ = ("path", "collection", "value", "shape", "dtype", "is_param", "box", "var")

    def __init__(self, path, collection, value, is_param, box=None, var=None):
        self.path = tuple(path)
        self.collection = collection
        self.value = value
        self.shape = tuple(int(d) for d in value.shape)
        self.dtype = np.dtype(value.dtype)
        self.is_param = is_param
        self.box = box  # a flax AxisMetadata box (nn.Partitioned) around the value
        self.var = var  # an nnx Variable


def _unbox(x):
    """The leaf's value and its metadata box (``nn.Partitioned``), if any.

    The value is read from the box as it is: ``unbox()`` would apply the box's
    sharding constraint, which under an Explicit mesh asserts that the (abstract)
    value is already sharded so."""
    from flax.core import meta

    if isinstance(x, meta.AxisMetadata):
        return (x.value if hasattr(x, "value") else x.unbox()), x
    return x, None


# ------------------------------------------------------------- tree handling


def _leaves_linen(tree: Mapping) -> tuple[list[_Leaf], bool]:
    from flax import traverse_util
    from flax.core import meta

    plain = dict(tree)
    collections = "params" in plain and all(isinstance(v, Mapping) for v in plain.values())
    flat = traverse_util.flatten_dict(
        {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in plain.items()},
        is_leaf=lambda _, x: isinstance(x, meta.AxisMetadata),
    )
    leaves = []
    for path, leaf in flat.items():
        value, box = _unbox(leaf)
        if collections:
            coll, rest = path[0], path[1:]
        else:
            coll, rest = "params", path
        leaves.append(_Leaf(rest, coll, value, coll == "params", box))
    return leaves, collections


def _leaves_nnx(state) -> list[_Leaf]:
    from flax import nnx

    leaves = []
    for path, var in nnx.to_flat_state(state):
        value = var.get_value() if hasattr(var, "get_value") else var.value
        coll = "params" if isinstance(var, nnx.Param) else type(var).__name__
        is_stat = isinstance(var, nnx.BatchStat)
        leaves.append(_Leaf(path, "batch_stats" if is_stat else coll, value,
                            isinstance(var, nnx.Param), var=var))
    return leaves


def _layer_type(mod_path, types: Mapping) -> str:
    if mod_path in types:
        return types[mod_path]
    if not mod_path:
        return ""
    last = str(mod_path[-1])
    m = _AUTO_NAME.match(last)
    return m.group(1) if m else last


def _kernel_kind(k: _Leaf, ltype: str) -> tuple[str, Layout]:
    if len(k.shape) == 2:
        return "linear", FLAX
    if len(k.shape) >= 3:
        if ltype.startswith("ConvTranspose"):
            return "conv_transpose", CONV_TRANSPOSE
        return "conv", FLAX
    return "other", TORCH


def _classify(leaves: list[_Leaf], types: Mapping, rename) -> list[tuple[Param, Layout]]:
    by_module: dict[tuple, dict[str, _Leaf]] = {}
    stats_modules = set()
    for lf in leaves:
        by_module.setdefault(lf.path[:-1], {})
        if lf.is_param:
            by_module[lf.path[:-1]][str(lf.path[-1])] = lf
        elif lf.collection == "batch_stats":
            stats_modules.add(lf.path[:-1])
    out = []
    for lf in leaves:
        mod, leaf = lf.path[:-1], str(lf.path[-1])
        siblings = by_module.get(mod, {})
        ltype = _layer_type(mod, types)
        stats = lf.collection == "batch_stats" and leaf in _STAT_LEAVES
        layout, attrs, role = TORCH, {}, leaf
        kernel = siblings.get("kernel")

        if stats:
            kind, role = "norm", _STAT_LEAVES[leaf]
        elif not lf.is_param:
            kind = "other"
        elif leaf == "kernel":
            kind, layout = _kernel_kind(lf, ltype)
            role = "weight"
        elif leaf == "embedding":
            kind, role = "embedding", "weight"
        elif leaf == "scale":
            kind, role = "norm", "weight"
        elif leaf == "negative_slope":
            kind, role = "prelu", "weight"
        elif leaf == "bias" and kernel is not None:
            kind, _ = _kernel_kind(kernel, ltype)
        elif leaf == "bias" and ("scale" in siblings or mod in stats_modules or "Norm" in ltype):
            kind = "norm"
        else:
            kind = "other"
        if kernel is not None and kind in ("linear", "conv", "conv_transpose"):
            _, klayout = _kernel_kind(kernel, ltype)
            attrs["weight_shape"] = canonical_shape(kernel.shape, klayout)
        name = canonical_name(lf.path, stats=stats)
        if rename is not None:
            name = rename(name)
        p = Param(
            name=name,
            kind=kind,
            role=role,
            shape=canonical_shape(lf.shape, layout),
            dtype=(canonical_dtype(lf.dtype) if lf.is_param else np.dtype(lf.dtype)).name,
            layer_type=ltype,
            layer=as_layer(attrs),
            buffer=not lf.is_param,
        )
        out.append((p, layout))
    return out


def _prepare(tree, rename):
    """(kind of input, leaves, params with layouts, nnx module types)."""
    from flax import nnx

    if isinstance(tree, nnx.Module):
        types = {tuple(p): type(m).__name__ for p, m in nnx.iter_modules(tree)}
        leaves = _leaves_nnx(nnx.state(tree))
        return "nnx_module", leaves, _classify(leaves, types, rename), None
    if isinstance(tree, nnx.State):
        leaves = _leaves_nnx(tree)
        return "nnx_state", leaves, _classify(leaves, {}, rename), None
    if isinstance(tree, Mapping):
        leaves, collections = _leaves_linen(tree)
        return "linen", leaves, _classify(leaves, {}, rename), collections
    raise TypeError(
        "initialize expects a linen variables/params dict (or FrozenDict), an nnx.State or an "
        f"nnx.Module; got {type(tree).__name__}"
    )


def describe(tree, *, rename: Callable[[str], str] | None = None) -> list[Param]:
    """The :class:`~xinit.core.recipes.Param` records recipes see for ``tree``."""
    return [p for p, _ in _prepare(tree, rename)[2]]


def plan(tree, recipe="torch_default", *, rename: Callable[[str], str] | None = None) -> Plan:
    """The dry run for a flax tree: every leaf -> rule -> initializer, nothing drawn."""
    return get_recipe(recipe).plan(describe(tree, rename=rename))


# -------------------------------------------------------------------- drawing


def _draw(params: list[Param], layouts, resolved, root_key, shardings) -> list[jax.Array]:
    """One engine run for every parameter: arrays in their flax layouts (on the CPU
    assembled in host memory JAX adopts, see :class:`xinit.core.arrays.JaxSink`);
    a parameter with a sharding is drawn shard by shard (:mod:`xinit.core.sharding`)."""
    keys = fold_in_many(key_data(root_key), [stable_hash(p.name) for p in params])
    requests = [
        engine.request(res.spec.plan(tuple(p.shape)), k, tuple(p.shape), np.dtype(p.dtype), name=p.name,
                       zero_rows=res.zero_rows)
        for p, res, k in zip(params, resolved, keys, strict=True)
    ]
    if any(sh is not None for sh in shardings):
        return sharding.draw(requests, list(layouts), list(shardings))
    sink = JaxSink(requests, list(layouts), host=host_memory.on_host())
    engine.run(requests, sink)
    return sink.results


def initialize(tree, recipe, *, key, unmatched: str = "error",
               rename: Callable[[str], str] | None = None, shardings=None):
    """Initialize a whole flax model by ``recipe``.

    Args:
        tree: a linen variables dict (``{"params": ..., "batch_stats": ...}``), a
            linen params dict (no collection level), either of them abstract
            (``jax.eval_shape(model.init, ...)``: ``ShapeDtypeStruct`` leaves) or
            boxed (``nn.Partitioned``); an ``nnx.State``; or an ``nnx.Module``.
        recipe: a :class:`~xinit.core.recipes.Recipe` or a built-in's name.
        key: root key (``jax.random.key``, ``uint32[2]`` key or int seed).
        unmatched: ``"error"`` (default): params no rule matches raise
            :class:`~xinit.core.recipes.UnmatchedError` listing them all;
            ``"ignore"``: they are returned as they are (abstract leaves stay
            abstract). Non-param leaves (batch stats) no rule matches are
            always left as they are.
        rename: maps each canonical name before keying and matching (e.g. to
            match a torch model's names).
        shardings: the shardings of the result, as ``jax.jit``'s ``out_shardings``:
            a pytree of ``jax.sharding.Sharding`` (or ``PartitionSpec`` under
            ``jax.set_mesh``, or ``None``: unsharded) with the tree's structure,
            or a prefix of it. ``None`` (default): the shardings the model
            declares (``nn.with_partitioning``, ``nn.with_logical_partitioning``
            under ``nn.logical_axis_rules``, nnx ``out_sharding`` metadata) on
            the box's mesh or the ambient one (``jax.set_mesh``), else those its
            leaves carry. Each device draws only its own shard, equal bit for bit
            to the same slice of the unsharded result (see
            :mod:`xinit.core.sharding` and the "Large models and sharding" page).

    A mapping whose top level has a ``"params"`` key and only mappings as values is
    read as a variables dict (collections at the top); any other mapping as a
    params dict. Arrays are made on JAX's default device. This runs xinit's own
    compiled programs: call it outside ``jax.jit``.

    Returns:
        a new tree of the same structure with real arrays (the input is never
        changed); for an ``nnx.Module``, the module itself, updated in place
        with ``nnx.update`` (nnx modules are mutable objects; use
        ``nnx.state(module)`` for a functional update instead).

    >>> import flax.linen as nn
    >>> abstract = jax.eval_shape(nn.Dense(3).init, jax.random.key(0), jnp.ones((1, 4)))
    >>> initialize(abstract, "torch_default", key=0)["params"]["kernel"].shape
    (4, 3)
    """
    if unmatched not in ("error", "ignore"):
        raise ValueError(f"unmatched must be one of ['error', 'ignore']; got {unmatched!r}")
    recipe = get_recipe(recipe)
    kind, leaves, classified, collections = _prepare(tree, rename)
    params = [p for p, _ in classified]
    pl = recipe.plan(params)
    missing = [e.param.name for e in pl.entries if e.rule is None and not e.param.buffer]
    if missing and unmatched == "error":
        raise UnmatchedError(
            f"recipe {pl.recipe!r} has no rule for {len(missing)} parameter(s): "
            f"{', '.join(missing)}. Add rules (Recipe(...) + recipe) or pass unmatched='ignore'"
        )
    todo = [i for i, e in enumerate(pl.entries) if e.resolved is not None]
    shards = leaf_shardings(leaves, shardings, _user_paths(leaves, kind, collections))
    arrays = _draw([params[i] for i in todo], [classified[i][1] for i in todo],
                   [pl.entries[i].resolved for i in todo], key, [shards[i] for i in todo])
    new = {i: a for i, a in zip(todo, arrays, strict=True)}
    return _rebuild(tree, kind, leaves, new, collections)


def _user_paths(leaves, kind, collections) -> list[tuple[str, ...]]:
    """Each leaf's path in the tree as the user passed it (for ``shardings=``)."""
    if kind == "linen" and collections:
        return [(lf.collection, *(str(k) for k in lf.path)) for lf in leaves]
    return [tuple(str(k) for k in lf.path) for lf in leaves]


def _rebuild(tree, kind, leaves, new: dict[int, Any], collections):
    from flax import nnx

    if kind in ("nnx_module", "nnx_state"):
        flat = []
        for i, lf in enumerate(leaves):
            value = new.get(i, lf.value)
            flat.append((lf.path, lf.var.replace(value)))
        state = nnx.from_flat_state(flat)
        if kind == "nnx_module":
            nnx.update(tree, state)
            return tree
        return state
    from flax import traverse_util
    from flax.core import FrozenDict

    flat = {}
    for i, lf in enumerate(leaves):
        value = new.get(i, lf.value)
        if lf.box is not None:
            value = lf.box.replace_boxed(value)
        path = (lf.collection, *lf.path) if collections else lf.path
        flat[path] = value
    out = traverse_util.unflatten_dict(flat)
    return FrozenDict(out) if isinstance(tree, FrozenDict) else out
