"""The Flax side of a port: the model's layers as conversion units, and its variables."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xinit.core import porting
from xinit.core.layout import TORCH, Layout
from xinit.flax._structure import FlaxLayer, Traced

_COMPOSITE = ("attention", "recurrent")  # layers whose sub-modules' variables are theirs
_SKIP_COLLECTIONS = ("intermediates",)


@dataclass(frozen=True)
class FlaxVar:
    """One variable of a Flax model: its full path, collection, shape and dtype.

    ``key`` is how checkpoints name it: ``params/conv1/kernel`` in linen's
    variables dict; ``conv1/kernel`` in nnx's (``nnx.to_pure_dict`` has no
    collection level).
    """

    path: tuple[str, ...]
    collection: str
    shape: tuple[int, ...]
    dtype: np.dtype
    nnx: bool = False

    @property
    def key(self) -> str:
        return "/".join(self.path if self.nnx else (self.collection, *self.path))


@dataclass
class Unit:
    """One Flax layer converted as a whole, with its variables by local path."""

    path: tuple[str, ...]
    layer: FlaxLayer | None
    variables: dict[str, FlaxVar]
    conversion: porting.Conversion = field(default_factory=porting.Conversion)
    names: dict[str, str] = field(default_factory=dict)  # canonical local -> full canonical name

    @property
    def kind(self) -> str:
        return self.layer.kind if self.layer is not None else "other"

    @property
    def type_name(self) -> str:
        return self.layer.type_name if self.layer is not None else "?"

    @property
    def layout(self) -> Layout:
        return self.layer.layout if self.layer is not None else TORCH

    @property
    def attrs(self) -> Mapping[str, Any]:
        return self.layer.attrs if self.layer is not None else {}

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: v.shape for k, v in self.variables.items()}

    def display(self, local: str) -> str:
        """A Flax variable's path as users write it: ``params/attn/query/kernel``."""
        return self.variables[local].key


def variables_of(traced: Traced, values=None) -> dict[tuple[str, ...], tuple[FlaxVar, Any]]:
    """Every variable of the model: full path -> (description, value).

    ``values``: a linen variables dict to read instead of the traced (abstract)
    one; for nnx the module's own state is read.
    """
    out = {}
    if traced.framework == "nnx":
        from flax import nnx

        state = nnx.state(traced.module)
        for path, var in nnx.to_flat_state(state):
            if isinstance(var, nnx.RngState):
                continue
            value = var.get_value() if hasattr(var, "get_value") else var.value
            if isinstance(var, nnx.Param):
                coll = "params"
            elif isinstance(var, nnx.BatchStat):
                coll = "batch_stats"
            else:
                coll = type(var).__name__
            p = tuple(str(x) for x in path)
            out[p] = (FlaxVar(p, coll, tuple(value.shape), np.dtype(value.dtype), nnx=True),
                      (var, value))
        return out
    from flax import traverse_util
    from flax.core import meta

    tree = traced.variables if values is None else values
    flat = traverse_util.flatten_dict(_plain_dict(tree),
                                      is_leaf=lambda _, x: isinstance(x, meta.AxisMetadata))
    for path, leaf in flat.items():
        coll, rest = str(path[0]), tuple(str(p) for p in path[1:])
        if coll in _SKIP_COLLECTIONS:
            continue
        value = leaf.unbox() if isinstance(leaf, meta.AxisMetadata) else leaf
        out[rest] = (FlaxVar(rest, coll, tuple(value.shape), np.dtype(value.dtype)), leaf)
    return out


def _plain_dict(tree):
    if isinstance(tree, Mapping):
        return {k: _plain_dict(v) for k, v in tree.items()}
    return tree


def units_of(traced: Traced, variables: Mapping[tuple[str, ...], tuple[FlaxVar, Any]]) -> list[Unit]:
    """The model's variables grouped into conversion units, in variable order.

    A variable belongs to its module, unless an enclosing module is an attention
    or recurrent layer (those own their sub-modules' variables); a recurrent
    cell run by an ``RNN`` gets torch's ``_l0`` (``_l0_reverse``) suffix.
    """
    units: dict[tuple[str, ...], Unit] = {}
    for path, (var, _) in variables.items():
        owner = path[:-1]
        unit_path = owner
        for depth in range(len(owner) + 1):
            layer = traced.layers.get(owner[:depth])
            if layer is not None and layer.kind in _COMPOSITE:
                unit_path = owner[:depth]
                break
        unit = units.get(unit_path)
        if unit is None:
            unit = units[unit_path] = Unit(unit_path, traced.layers.get(unit_path), {})
        local = "/".join(path[len(unit_path):])
        unit.variables[local] = var
    for unit in units.values():
        suffix = ""
        if unit.layer is not None and unit.layer.cell_of is not None:
            suffix = "_l0_reverse" if unit.layer.cell_of[1] else "_l0"
        unit.conversion = porting.conversion(unit.kind, unit.type_name, unit.layout, unit.attrs,
                                             unit.shapes(), rnn_suffix=suffix)
    return list(units.values())


def canonical_path(unit: Unit) -> tuple[str, ...]:
    """The Flax module path torch names this unit by (a cell: its RNN's)."""
    if unit.layer is not None and unit.layer.cell_of is not None:
        return unit.layer.cell_of[0]
    return unit.path
