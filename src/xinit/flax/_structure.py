"""The layer structure of a Flax model: which class made each variable, with its attributes.

A linen module is traced (:func:`trace`): ``jax.eval_shape`` of its ``init`` on
example inputs, under ``flax.linen.intercept_methods``, records every module
that runs (its path, class and dataclass attributes such as
``transpose_kernel`` or ``feature_group_count``) without computing or
allocating anything. An nnx module is read from its module graph. Either way
the result, :class:`Traced`, maps each module path to a :class:`FlaxLayer`
whose kind and weight layout come from the layer registry
(:mod:`xinit.core.layers`), so ``xinit.flax.initialize``/``plan``/``describe``
and ``xinit.port`` never guess a layer from the rank of its kernel.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np

from xinit.core.layers import container_of, layer_of, lineage, qualified_name
from xinit.core.layout import TORCH, Layout

__all__ = ["FlaxLayer", "Traced", "trace"]

_AUTO_NAME = re.compile(r"^(?P<cls>[A-Za-z_]\w*?)_(?P<index>\d+)$")


@dataclass(frozen=True)
class FlaxLayer:
    """One module of a Flax model, as the registry and its attributes describe it.

    Args:
        path: its path in the variables tree (nnx integer keys as strings).
        type_name: the class name (``"Dense"``).
        qualname: the qualified class name (``"flax.linen.linear.Dense"``).
        kind: the registry's layer kind (``"other"`` for unregistered classes).
        layout: the layout of its weight (``kernel``).
        attrs: hyper-parameters read from the module (``features``,
            ``kernel_size``, ``padding``, ``epsilon``, ``num_heads``, ...): plain
            values only; functions by their name.
        container: ``"sequential"``, ``"rnn"`` or ``"bidirectional"`` for those
            container modules, else None.
        cell_of: for a recurrent cell run by an ``RNN``: the path of the layer
            torch would call it (the ``RNN``, or its ``Bidirectional``) and
            whether it runs backwards; None otherwise.
        lineage: the class and its bases by qualified and bare name
            (:func:`xinit.core.layers.lineage`), for rules naming a class.
    """

    path: tuple[str, ...]
    type_name: str
    qualname: str
    kind: str
    layout: Layout = TORCH
    attrs: Mapping[str, Any] = field(default_factory=dict)
    container: str | None = None
    cell_of: tuple[tuple[str, ...], bool] | None = None
    lineage: tuple[str, ...] = ()

    @property
    def auto_index(self) -> int | None:
        """``k`` when the module has linen's automatic name ``<Class>_<k>``, else None."""
        if not self.path:
            return None
        m = _AUTO_NAME.match(self.path[-1])
        if m is None or m["cls"] != self.type_name:
            return None
        return int(m["index"])


@dataclass(frozen=True)
class Traced:
    """A Flax model's structure: its (abstract) variables and a :class:`FlaxLayer` per module.

    Made by :func:`trace`. ``xinit.flax.initialize``, ``plan`` and ``describe``
    accept it in place of a variables tree (they then read layer kinds from it),
    and ``xinit.port`` uses it for both directions.

    Attributes:
        module: the linen or nnx module.
        framework: ``"linen"`` or ``"nnx"``.
        variables: linen: the abstract variables ``jax.eval_shape(module.init,
            ...)`` (``ShapeDtypeStruct`` leaves); nnx: ``nnx.state(module)``.
        layers: module path -> :class:`FlaxLayer`.
        example_args, example_kwargs: the inputs it was traced with (linen).
    """

    module: Any
    framework: str
    variables: Any
    layers: Mapping[tuple[str, ...], FlaxLayer]
    example_args: tuple = ()
    example_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def layer(self, path) -> FlaxLayer | None:
        """The layer at module path ``path`` (a tuple of names), or None."""
        return self.layers.get(tuple(str(p) for p in path))


def _plain(value) -> Any:
    """``value`` if it is plain data (numbers, strings, dtypes, tuples of those); a
    function's name; else a marker that drops it."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        items = [_plain(v) for v in value]
        return _DROP if any(v is _DROP for v in items) else tuple(items)
    if isinstance(value, np.dtype):
        return value.name
    if callable(value) and hasattr(value, "__name__") and not hasattr(value, "scope"):
        try:  # a scalar type (jnp.float32) names a dtype
            return np.dtype(value).name
        except TypeError:
            return f"{value.__name__}()"
    return _DROP


_DROP = object()
_SKIP_FIELDS = frozenset({"parent", "name", "rngs"})


def _attrs(items) -> dict[str, Any]:
    out = {}
    for key, value in items:
        if key.startswith("_") or key in _SKIP_FIELDS:
            continue
        plain = _plain(value)
        if plain is not _DROP:
            out[key] = plain
    return out


def _record(module, path: tuple[str, ...], attrs: dict, cell_of=None) -> FlaxLayer:
    cls = type(module)
    entry = layer_of(cls)
    return FlaxLayer(
        path=path,
        type_name=cls.__name__,
        qualname=qualified_name(cls),
        kind=entry.kind if entry is not None else "other",
        layout=entry.layout if entry is not None else TORCH,
        attrs=attrs,
        container=container_of(cls),
        cell_of=cell_of,
        lineage=lineage(cls),
    )


# ------------------------------------------------------------------------ linen


def _linen_attrs(module) -> dict[str, Any]:
    if not dataclasses.is_dataclass(module):
        return {}
    return _attrs((f.name, getattr(module, f.name, None)) for f in dataclasses.fields(module))


def trace(model, *example_args, **example_kwargs) -> Traced:
    """The layer structure of a Flax model, for initialization and porting.

    Args:
        model: a linen ``Module`` (traced from the example inputs with
            ``jax.eval_shape`` of ``model.init``: nothing is computed or
            allocated), an nnx ``Module`` (read from its module graph; example
            inputs are not needed and are ignored), or a :class:`Traced`
            (returned as it is).
        *example_args, **example_kwargs: the inputs ``model.init`` takes after
            the key (linen only), e.g. ``jnp.zeros((1, 224, 224, 3))``.

    Returns:
        a :class:`Traced`: the abstract variables and, per module path, the
        layer's class, kind, weight layout and attributes.

    Raises:
        TypeError: ``model`` is not a Flax module.

    >>> import flax.linen as nn, jax.numpy as jnp
    >>> t = trace(nn.Dense(3), jnp.ones((1, 4)))
    >>> t.layer(()).kind, t.variables["params"]["kernel"].shape
    ('linear', (4, 3))
    """
    if isinstance(model, Traced):
        return model
    from flax import linen, nnx

    if isinstance(model, nnx.Module):  # built already: its graph says everything, inputs unused
        return _nnx_structure(model)
    if not isinstance(model, linen.Module):
        raise TypeError(
            "trace expects a flax.linen Module (with example inputs) or a flax.nnx Module; "
            f"got {type(model).__name__}"
        )
    layers: dict[tuple[str, ...], FlaxLayer] = {}
    stack: list[tuple[tuple[str, ...], Any]] = []  # (path, module) of the methods running now
    directions: dict[tuple[str, ...], list[tuple[str, ...]]] = {}  # Bidirectional -> its RNNs

    def owner_of_cell(path):
        """(layer torch would name, backwards?) for a cell called inside an RNN."""
        rnn = next(((p, m) for p, m in reversed(stack) if container_of(type(m)) == "rnn"), None)
        if rnn is None:
            return None
        rnn_path = rnn[0]
        below = stack[: next(i for i, (p, _) in enumerate(stack) if p == rnn_path)]
        outer = [p for p, m in below if container_of(type(m)) == "bidirectional"]
        if outer and stack[len(below) - 1][0] == outer[-1]:  # the RNN is run by a Bidirectional
            bi_path = outer[-1]
            seen = directions.setdefault(bi_path, [])
            if rnn_path not in seen:
                seen.append(rnn_path)
            return bi_path, seen.index(rnn_path) == 1
        return rnn_path, False

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        scope = getattr(module, "scope", None)
        if scope is None:
            return next_fun(*args, **kwargs)
        path = tuple(str(p) for p in scope.path)
        if path not in layers:
            entry = layer_of(type(module))
            cell_of = owner_of_cell(path) if entry is not None and entry.kind == "recurrent" else None
            layers[path] = _record(module, path, _linen_attrs(module), cell_of)
        stack.append((path, module))
        try:
            return next_fun(*args, **kwargs)
        finally:
            stack.pop()

    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    with linen.intercept_methods(interceptor):
        variables = jax.eval_shape(lambda: model.init(rngs, *example_args, **example_kwargs))
    return Traced(model, "linen", variables, layers, tuple(example_args), dict(example_kwargs))


# -------------------------------------------------------------------------- nnx


def _nnx_attrs(module) -> dict[str, Any]:
    from flax import nnx

    items = []
    for key, value in vars(module).items():
        if isinstance(value, (nnx.Variable, nnx.Module)):
            continue
        items.append((key, value))
    return _attrs(items)


def _nnx_structure(model) -> Traced:
    from flax import nnx

    modules = {tuple(str(p) for p in path): m for path, m in nnx.iter_modules(model)}
    layers = {}
    for path, m in modules.items():
        cell_of = None
        entry = layer_of(type(m))
        if entry is not None and entry.kind == "recurrent" and path:
            parent = modules.get(path[:-1])
            if parent is not None and container_of(type(parent)) == "rnn":
                cell_of = (path[:-1], False)
                grand = modules.get(path[:-2]) if len(path) >= 2 else None
                if grand is not None and container_of(type(grand)) == "bidirectional":
                    cell_of = (path[:-2], path[-2] == "backward_rnn")
        layers[path] = _record(m, path, _nnx_attrs(m), cell_of)
    return Traced(model, "nnx", nnx.state(model), layers)
