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

Layer kinds and kernel layouts come from the model's structure where it is
given: an nnx module's graph, or a linen module traced with
:func:`~xinit.flax.trace` (``initialize(trace(model, x), ...)``), each module's
class looked up in the layer registry (:mod:`xinit.core.layers`, extended with
:func:`xinit.register_layer`). The sub-layers of an attention or recurrent layer
take its kind, with roles ``query_weight``... (attention) and
``weight_ih``/``weight_hh``/``bias_ih``/``bias_hh`` (recurrent cells, with the
layer attribute ``hidden_size``).

Only for a bare tree (a variables dict without its module, an ``nnx.State``)
are kinds guessed from the leaves: ``kernel`` of rank 2 is ``linear``, of rank
>= 3 ``conv`` (``conv_transpose`` when its module's name starts with
``ConvTranspose``); ``embedding`` is ``embedding``; ``scale`` and its sibling
``bias`` (or a module with batch stats) are ``norm``; a ``bias`` next to a kernel
has the kernel's kind and takes its fan-in. Kernels are canonicalized with
:data:`xinit.core.FLAX` (``(*k, in, out)`` -> ``(out, in, *k)``); a
ConvTranspose kernel ``(*k, in, out)`` maps to torch's ConvTranspose weight
layout ``(in, out, *k)``, so ``torch_default`` gives torch's (reversed) fans.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from xinit.core import engine, host_memory, sharding
from xinit.core._keys import key_data, stable_hash
from xinit.core.arrays import JaxSink
from xinit.core.engine import canonical_dtype
from xinit.core.layers import FLAX_CONV_TRANSPOSE
from xinit.core.layout import FLAX, TORCH, Layout, canonical_shape
from xinit.core.recipes import Param, Plan, Resolved, as_layer, check_unmatched, get_recipe
from xinit.core.specs import Zeros
from xinit.core.threefry import fold_in_many

from ._sharding import leaf_shardings
from ._structure import FlaxLayer, Traced, trace

__all__ = ["initialize", "plan", "describe", "canonical_name", "trace", "Traced"]

CONV_TRANSPOSE = FLAX_CONV_TRANSPOSE
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


_COMPOSITE = ("attention", "recurrent")  # layers whose sub-modules' variables are theirs
_LEAF_ROLES = {"kernel": "weight", "embedding": "weight", "scale": "weight",
               "negative_slope": "weight"}


def _registered(lf: _Leaf, layers: Mapping[tuple, FlaxLayer]):
    """(kind, role, layout, layer type, attrs, lineage) of a leaf whose module the structure
    knows; None when it does not (then the tree alone is read)."""
    mod = tuple(str(p) for p in lf.path[:-1])
    leaf = str(lf.path[-1])
    owner = next((layers[mod[:d]] for d in range(len(mod) + 1)
                  if mod[:d] in layers and layers[mod[:d]].kind in _COMPOSITE), None)
    if owner is not None and owner.path != mod:  # a sub-layer of an attention or recurrent layer
        sub = mod[len(owner.path)]
        base = "weight" if leaf == "kernel" else leaf
        if owner.kind == "recurrent":
            role = f"{base}_{'ih' if sub.startswith('i') or sub == 'dense_i' else 'hh'}"
            hidden = owner.attrs.get("features", owner.attrs.get("hidden_features"))
            attrs = {"hidden_size": hidden}
        else:
            role, attrs = f"{sub}_{base}", {}
        layout = FLAX if leaf == "kernel" else TORCH
        return owner.kind, role, layout, owner.type_name, attrs, owner.lineage
    layer = layers.get(mod)
    if layer is None:
        return None
    attrs = dict(layer.attrs)
    if lf.collection == "batch_stats" and leaf in _STAT_LEAVES:
        return layer.kind, _STAT_LEAVES[leaf], TORCH, layer.type_name, attrs, layer.lineage
    layout = TORCH
    if leaf == "kernel":
        layout = FLAX if layer.attrs.get("transpose_kernel") else layer.layout
    return layer.kind, _LEAF_ROLES.get(leaf, leaf), layout, layer.type_name, attrs, layer.lineage


def _classify(leaves: list[_Leaf], layers: Mapping[tuple, FlaxLayer],
              rename) -> list[tuple[Param, Layout]]:
    """The Param record and layout of every leaf: from the model's structure (``layers``,
    see :func:`xinit.flax.trace`) where it has the leaf's module, else guessed from the tree."""
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
        stats = lf.collection == "batch_stats" and leaf in _STAT_LEAVES
        layout, attrs, role, names = TORCH, {}, leaf, ()
        kernel = siblings.get("kernel")
        known = _registered(lf, layers) if layers else None
        if known is not None:
            kind, role, layout, ltype, attrs, names = known
            if kernel is not None and kind in ("linear", "conv", "conv_transpose") and lf is not kernel:
                klayout = _registered(kernel, layers)[2]
                attrs = {**attrs, "weight_shape": canonical_shape(kernel.shape, klayout)}
            elif kind in ("linear", "conv", "conv_transpose") and lf is kernel:
                attrs = {**attrs, "weight_shape": canonical_shape(kernel.shape, layout)}
        else:  # a bare tree: the kind is guessed from the leaf's name and rank
            ltype = _layer_type(mod, {})
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
            lineage=names,
        )
        out.append((p, layout))
    return out


def _prepare(tree, rename):
    """(kind of input, leaves, params with layouts, linen collections flag, the input tree)."""
    from flax import nnx

    if isinstance(tree, Traced):
        if tree.framework == "nnx":
            leaves = _leaves_nnx(nnx.state(tree.module))
            return "nnx_module", leaves, _classify(leaves, tree.layers, rename), None, tree.module
        leaves, collections = _leaves_linen(tree.variables)
        return "linen", leaves, _classify(leaves, tree.layers, rename), collections, tree.variables
    if isinstance(tree, nnx.Module):
        leaves = _leaves_nnx(nnx.state(tree))
        return "nnx_module", leaves, _classify(leaves, trace(tree).layers, rename), None, tree
    if isinstance(tree, nnx.State):
        leaves = _leaves_nnx(tree)
        return "nnx_state", leaves, _classify(leaves, {}, rename), None, tree
    if isinstance(tree, Mapping):
        leaves, collections = _leaves_linen(tree)
        return "linen", leaves, _classify(leaves, {}, rename), collections, tree
    raise TypeError(
        "initialize expects a linen variables/params dict (or FrozenDict), xinit.flax.trace(...)'s "
        f"result, an nnx.State or an nnx.Module; got {type(tree).__name__}"
    )


def describe(model, *, rename: Callable[[str], str] | None = None) -> list[Param]:
    """The :class:`~xinit.core.recipes.Param` records recipes see for ``model``."""
    return [p for p, _ in _prepare(model, rename)[2]]


def plan(model, recipe="torch_default", *, rename: Callable[[str], str] | None = None) -> Plan:
    """The dry run for a flax tree or nnx module: every leaf -> rule -> initializer, nothing drawn."""
    return get_recipe(recipe).plan(describe(model, rename=rename))


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


def initialize(model, recipe="torch_default", *, key=None, unmatched: str = "error",
               rename: Callable[[str], str] | None = None, shardings=None):
    """Initialize a whole flax model by ``recipe``.

    The same arguments as ``xinit.torch.initialize``; for the same recipe, key and
    canonical names the values are the torch model's (in flax layout).

    Args:
        model: a linen variables dict (``{"params": ..., "batch_stats": ...}``), a
            linen params dict (no collection level), either of them abstract
            (``jax.eval_shape(model.init, ...)``: ``ShapeDtypeStruct`` leaves) or
            boxed (``nn.Partitioned``); an ``nnx.State``; an ``nnx.Module``; or
            :func:`~xinit.flax.trace`'s result for a linen module (then layer
            kinds come from the module's classes, not from the tree; the result
            is a new variables dict).
        recipe: a :class:`~xinit.core.recipes.Recipe` or a built-in's name
            (default ``"torch_default"``).
        key: root key (``jax.random.key``, ``uint32[2]`` key or int seed).
            Required: JAX has no global random state to draw one from, so
            ``key=None`` raises ``TypeError``.
        unmatched: what happens to params no rule matches (see
            :data:`~xinit.core.recipes.UNMATCHED`): ``"error"`` (default) raises
            :class:`~xinit.core.recipes.UnmatchedError` listing them all, before
            anything is drawn; ``"ignore"`` leaves them as they are (an abstract
            leaf stays abstract, with a warning naming it); ``"zeros"`` fills them
            with zeros. Non-param leaves (batch stats) no rule matches are always
            left as they are.
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
    params dict. Arrays without a sharding are made on JAX's default device;
    sharded ones (``shardings=``, or declared) are drawn shard by shard onto
    their devices, and boxes keep their metadata. This runs xinit's own
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
    if key is None:
        raise TypeError(
            "xinit.flax.initialize needs key=: JAX has no global random state to draw a key "
            "from (xinit.torch draws one from torch's); pass key=jax.random.key(0) or an int seed"
        )
    check_unmatched(unmatched)
    recipe = get_recipe(recipe)
    kind, leaves, classified, collections, tree = _prepare(model, rename)
    params = [p for p, _ in classified]
    pl = recipe.plan(params)
    missing = [i for i, e in enumerate(pl.entries) if e.rule is None and not e.param.buffer]
    pl.raise_unmatched([params[i].name for i in missing], unmatched, "parameter")
    resolved = [e.resolved for e in pl.entries]
    if unmatched == "zeros":
        for i in missing:
            resolved[i] = Resolved(Zeros())
    elif missing and any(_is_abstract(leaves[i].value) for i in missing):
        warnings.warn(
            f"xinit.flax.initialize: recipe {pl.recipe!r} has no rule for "
            f"{', '.join(params[i].name for i in missing if _is_abstract(leaves[i].value))}; "
            "with unmatched='ignore' these stay abstract (jax.ShapeDtypeStruct)",
            stacklevel=2,
        )
    todo = [i for i, r in enumerate(resolved) if r is not None]
    shards = leaf_shardings(leaves, shardings, _user_paths(leaves, kind, collections))
    arrays = _draw([params[i] for i in todo], [classified[i][1] for i in todo],
                   [resolved[i] for i in todo], key, [shards[i] for i in todo])
    new = {i: a for i, a in zip(todo, arrays, strict=True)}
    return _rebuild(tree, kind, leaves, new, collections)


def _is_abstract(value) -> bool:
    return isinstance(value, jax.ShapeDtypeStruct)


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
