"""Whole-module initialization for PyTorch: recipes, ``model.apply`` hooks, meta materialization.

Every parameter gets the initializer of the first matching rule of a
:class:`~xinit.core.recipes.Recipe` and its own key,
``fold_in(root_key, crc32(name))`` with ``name`` its ``named_parameters()`` name,
so its value depends only on (root key, name, shape, dtype, rule): not on which
other parameters exist, nor on their order. All parameters are drawn in one run
of the draw engine (:func:`xinit.core.engine.run`: one compiled call per chunk of
many parameters of the same family and dtype) and written into the tensors in
place.

    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> initialize(net, "torch_default", key=0) is net
    True
    >>> print(plan(net, "transformer"))  # doctest: +SKIP

Models of Hugging Face transformers and timm work as they are: their layers are
classified by the layer registry (``Conv1D``, norms by class name), the
``"hf"`` recipe is read from ``model.config``, computed buffers are never
overwritten and are recomputed through the model's own code when they were
built on ``meta``, and :func:`no_init` also stops those libraries' own
initialization functions. Neither library is imported here.

Checkpoints: ``initialize``/``materialize`` with ``state_dict=`` load every
tensor a checkpoint has and draw only the others (:func:`plan` with the same
``state_dict`` shows which is which). ``save_manifest=`` writes a JSON record
(:class:`~xinit.core.manifest.Manifest`) from which ``manifest=`` reproduces the
same values bit for bit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from xinit.core import engine
from xinit.core._keys import key_data, stable_hash
from xinit.core.errors import CheckpointError, DtypeError
from xinit.core.layers import layer_of, lineage
from xinit.core.layout import TORCH, Layout, canonical_shape
from xinit.core.manifest import Manifest
from xinit.core.recipes import (
    Param,
    Plan,
    Recipe,
    Resolved,
    UnmatchedError,
    as_layer,
    check_unmatched,
    get_recipe,
)
from xinit.core.specs import Elementwise, Zeros
from xinit.core.threefry import fold_in_many

from . import _bridge, _dtensor
from ._checkpoint import LazySafetensors, load_torch_state

__all__ = ["initialize", "plan", "apply_fn", "materialize", "no_init", "meta_params", "describe"]

_log = logging.getLogger("xinit.torch")


# --------------------------------------------------------------- classification

_RNN_ROLE = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)(_l\d+)?(_reverse)?$")


def plain_attrs(module: nn.Module) -> dict[str, Any]:
    """The module's plain attributes (numbers, strings, tuples of them): what layer-dependent
    initializers (``AttrConstant("init_values")``, ``padding_idx``, ``hidden_size``) read."""
    out = {}
    for key, value in vars(module).items():
        if key.startswith("_") or key == "training":
            continue
        if value is None or isinstance(value, (bool, int, float, str)):
            out[key] = value
        elif isinstance(value, (tuple, list)) and all(isinstance(v, (int, float, str)) for v in value):
            out[key] = tuple(value)
    return out


def classify(module: nn.Module, parent: tuple[nn.Module, str] | None
           ) -> tuple[str, dict[str, Any], Layout]:
    """The layer kind of ``module``, its plain attributes and the layout of its weight,
    from the layer registry (:mod:`xinit.core.layers`)."""
    attrs = plain_attrs(module)
    if (isinstance(module, nn.Linear) and parent is not None
            and isinstance(parent[0], nn.MultiheadAttention) and parent[1] == "out_proj"):
        return "attention", attrs, TORCH
    entry = layer_of(type(module))
    if entry is None:
        return "other", attrs, TORCH
    return entry.kind, attrs, entry.layout


def _role(kind: str, attr: str, module: nn.Module, parent) -> str:
    if kind == "recurrent":
        m = _RNN_ROLE.match(attr)
        return m.group(1) if m else attr
    if kind == "attention" and isinstance(module, nn.Linear):
        return f"out_proj_{attr}"  # MultiheadAttention.out_proj.{weight,bias}
    return attr


class Entry(NamedTuple):
    param: Param  # what the recipe sees
    tensor: torch.Tensor
    owner: nn.Module  # the first module found holding the tensor
    layout: Layout = TORCH  # how ``tensor`` stores the canonical ``param.shape``
    attr: str = ""  # its attribute name on ``owner``
    aliases: tuple[str, ...] = ()  # every name it has (tied tensors have several)


def canonical_view(tensor: torch.Tensor, layout: Layout) -> torch.Tensor:
    """``tensor`` seen in the canonical ``(out, in, *k)`` order: a view, writes go through."""
    if layout.is_identity(tensor.dim()):
        return tensor
    return tensor.permute(layout.permutation(tensor.dim()))


def _np_dtype(t: torch.Tensor, name: str) -> np.dtype:
    if t.is_complex():
        raise DtypeError(f"parameter {name!r}: complex tensors ({t.dtype}) are not supported by "
                         "model-level initialization")
    return _bridge.numpy_dtype(t.dtype, f"initialize ({name})")


def _collect(module: nn.Module, *, buffers: bool = True) -> list[Entry]:
    """Parameters (then, per module, buffers) in ``named_parameters`` order, deduplicated.

    Each tensor appears once, under its first name, with all its names in ``aliases``.
    """
    parents: dict[int, tuple[nn.Module, str]] = {}
    ancestors: dict[int, tuple[str, ...]] = {}
    names: dict[int, list[str]] = {}
    for prefix, m in module.named_modules(remove_duplicate=False):
        members = [*m._parameters.items(), *(m._buffers.items() if buffers else ())]
        for attr, t in members:
            if t is not None:
                names.setdefault(id(t), []).append(f"{prefix}.{attr}" if prefix else attr)
    seen: set[int] = set()
    out: list[Entry] = []
    for prefix, m in module.named_modules():
        above = ancestors.get(id(m), ())
        inside = tuple(dict.fromkeys((*above, *lineage(type(m)))))
        for cname, child in m.named_children():
            parents.setdefault(id(child), (m, cname))
            ancestors.setdefault(id(child), inside)
        parent = parents.get(id(m))
        kind, attrs, layout = classify(m, parent)
        if above:
            attrs = {**attrs, "ancestors": above}
        weight = m._parameters.get("weight")
        if (weight is not None and kind in ("linear", "conv", "conv_transpose", "attention")
                and not isinstance(weight, nn.parameter.UninitializedTensorMixin)):
            attrs = {**attrs, "weight_shape": canonical_shape(weight.shape, layout)}
        layer = as_layer(attrs)
        members = [(n, t, False) for n, t in m._parameters.items()]
        if buffers:
            members += [(n, t, True) for n, t in m._buffers.items()]
        for attr, t, is_buffer in members:
            if t is None or id(t) in seen:
                continue
            seen.add(id(t))
            name = f"{prefix}.{attr}" if prefix else attr
            if isinstance(t, nn.parameter.UninitializedTensorMixin):
                raise ValueError(
                    f"{name!r} of {type(m).__name__} is an uninitialized lazy parameter or buffer; "
                    "run a forward pass (or call the module once) before initializing it"
                )
            own = layout if attr == "weight" else TORCH
            p = Param(
                name=name,
                kind=kind,
                role=_role(kind, attr, m, parent),
                shape=canonical_shape(t.shape, own),
                dtype=_np_dtype(t, name).name,
                layer_type=type(m).__name__,
                layer=layer,
                buffer=is_buffer,
                lineage=lineage(type(m)),
            )
            out.append(Entry(p, t, m, own, attr, tuple(names.get(id(t), [name]))))
    return out


def _renamed(entries: list[Entry], rename: Callable[[str], str] | None) -> list[Entry]:
    """``entries`` with ``rename`` applied to each canonical name (keys and matching use it)."""
    if rename is None:
        return entries
    return [e._replace(param=dataclasses.replace(e.param, name=rename(e.param.name)))
            for e in entries]


# ---------------------------------------------------------------------- recipes


def _recipe_for(recipe, model: nn.Module) -> Recipe:
    """``recipe`` as a :class:`Recipe`; ``"hf"`` built from the transformers model's config."""
    if not (isinstance(recipe, str) and recipe == "hf"):
        return get_recipe(recipe)
    from xinit.core.recipes_hf import HF_FAMILIES, HF_INIT_WEIGHTS

    hf_models = [m for m in model.modules()
                 if callable(getattr(m, "_init_weights", None)) and hasattr(m, "config")]
    if not hf_models:
        raise ValueError(
            f"recipe 'hf' initializes Hugging Face transformers models (with a .config and "
            f"_init_weights); {type(model).__name__} has neither, nor do its submodules"
        )
    config = hf_models[0].config
    family = HF_FAMILIES.get(getattr(config, "model_type", None), "base")
    for m in hf_models:
        owner = next(c for c in type(m).__mro__ if "_init_weights" in vars(c))
        known = HF_INIT_WEIGHTS.get(owner.__name__)
        if known not in ("base", family):
            raise ValueError(
                f"recipe 'hf': {type(m).__name__} initializes its weights with "
                f"{owner.__module__}.{owner.__name__}._init_weights, which xinit's 'hf' recipe does "
                f"not reproduce (it knows {', '.join(sorted(HF_INIT_WEIGHTS))}). Write a recipe for "
                "it (Recipe(...) + xinit.core.recipes_hf.hf(model.config))"
            )
    return get_recipe("hf", config=config)


# ------------------------------------------------------------------- checkpoints


def _checkpoint(state_dict) -> Mapping | None:
    """``state_dict`` as a mapping name -> tensor (a path is opened lazily)."""
    if state_dict is None or isinstance(state_dict, Mapping):
        return state_dict
    if isinstance(state_dict, (str, os.PathLike)):
        return load_torch_state(state_dict)
    raise TypeError(
        "state_dict must be a mapping of names to tensors or the path of a .pt, .pth, .bin or "
        f".safetensors file; got {type(state_dict).__name__}"
    )


def _torch_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    dtype = np.dtype(dtype)
    if dtype.name == "bfloat16":
        return torch.bfloat16
    return torch.from_numpy(np.empty(0, dtype)).dtype


def _header(sd: Mapping, key: str) -> tuple[tuple[int, ...], torch.dtype, bool]:
    """(shape, dtype, is_meta) of a checkpoint entry, without reading its data where possible."""
    if isinstance(sd, LazySafetensors):
        return tuple(sd.shape(key)), _torch_dtype(sd.dtype(key)), False
    value = sd[key]
    if isinstance(value, torch.Tensor):
        return tuple(value.shape), value.dtype, value.is_meta
    if isinstance(value, np.ndarray):
        return tuple(value.shape), _torch_dtype(value.dtype), False
    raise CheckpointError(f"state_dict[{key!r}] is a {type(value).__name__}, not a tensor or array")


def _tensor(sd: Mapping, key: str) -> torch.Tensor:
    return _as_torch(sd[key])


def _as_torch(value) -> torch.Tensor:
    """A checkpoint value (a torch tensor, or a numpy array) as a torch tensor."""
    if isinstance(value, np.ndarray):
        value = np.array(value, order="C", copy=not value.flags.c_contiguous)  # keeps 0-d arrays
        if value.dtype.name == "bfloat16":
            return torch.from_numpy(value.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(value)
    return value


def _match_checkpoint(entries: list[Entry], sd: Mapping | None) -> dict[int, str]:
    """Entry index -> the checkpoint key it is loaded from, after checking everything.

    Every key must name a tensor of the model (any of a tied tensor's names), with
    its shape, and its dtype (floating point may be cast to floating point). A tied
    tensor given under several names must have one value. All problems are listed
    in one :class:`~xinit.core.errors.CheckpointError` before anything is written.
    """
    if sd is None:
        return {}
    known = {name: i for i, e in enumerate(entries) for name in e.aliases}
    unexpected = [k for k in sd if k not in known]
    problems: list[str] = []
    found: dict[int, str] = {}
    for i, e in enumerate(entries):
        keys = [n for n in e.aliases if n in sd]
        if not keys:
            continue
        want_shape, want = tuple(e.tensor.shape), e.tensor.dtype
        for k in keys:
            shape, dtype, is_meta = _header(sd, k)
            if is_meta:
                problems.append(f"{k}: the checkpoint's tensor is on the meta device (it has no values)")
            elif shape != want_shape:
                problems.append(f"{k}: shape {shape} in the checkpoint, {want_shape} in the model")
            elif dtype != want and not (dtype.is_floating_point and want.is_floating_point):
                problems.append(f"{k}: dtype {dtype} in the checkpoint, {want} in the model")
            elif problem := _dtensor.load_problem(
                    e.tensor, None if isinstance(sd, LazySafetensors) else sd[k]):
                problems.append(f"{k}: {problem}")
        if len(keys) > 1 and not problems:
            first = _tensor(sd, keys[0])
            for k in keys[1:]:
                if not torch.equal(first.to(_tensor(sd, k).dtype), _tensor(sd, k)):
                    problems.append(f"{keys[0]} and {k} are one tied tensor in the model but have "
                                    "different values in the checkpoint")
        found[i] = keys[0]
    if unexpected or problems:
        lines = []
        if unexpected:
            lines.append(f"{len(unexpected)} key(s) the model does not have: {', '.join(unexpected)} "
                         "(drop or rename them: pass {k: v for k, v in state_dict.items() if ...})")
        lines += problems
        raise CheckpointError("state_dict does not fit the model; nothing was written:\n  "
                              + "\n  ".join(lines))
    return found


def _load(entries: list[Entry], found: dict[int, str], sd: Mapping, targets: dict[int, torch.Tensor]):
    """Copy each checkpoint tensor into its target (casting floating point dtypes); a
    DTensor target takes its shard's slice (:func:`xinit.torch._dtensor.load_`), read
    alone from a ``.safetensors`` file."""
    with torch.no_grad():
        for i, key in found.items():
            target = targets.get(i, entries[i].tensor)
            if _dtensor.is_dtensor(target) and not target.is_meta:
                if isinstance(sd, LazySafetensors):
                    _dtensor.load_(target, lambda box, key=key: _as_torch(sd.read(key, box)))
                else:
                    _dtensor.load_(target, _tensor(sd, key))
            elif not target.is_meta:
                target.copy_(_tensor(sd, key))


def plan(model: nn.Module, recipe="torch_default", *,
         rename: Callable[[str], str] | None = None, state_dict=None) -> Plan:
    """The dry run: every parameter and buffer -> rule -> initializer, nothing written.

    ``print(plan(model, "gpt2"))`` shows a table, one row per tensor (``param`` or
    ``buffer``); ``.unmatched`` lists names no rule matches (buffers a recipe does
    not cover are left alone by :func:`initialize`). With ``state_dict`` (a
    mapping or a checkpoint path, checked as :func:`initialize` checks it) the
    tensors it provides show as loaded: ``.loaded`` and ``.drawn`` are what
    ``initialize(model, recipe, state_dict=...)`` loads and draws. ``rename`` as
    :func:`initialize`.
    """
    entries = _renamed(_collect(model), rename)
    p = _recipe_for(recipe, model).plan([e.param for e in entries])
    found = _match_checkpoint(entries, _checkpoint(state_dict))
    return p.with_sources({entries[i].param.name: "loaded" for i in found})


def describe(model: nn.Module, *, rename: Callable[[str], str] | None = None) -> list[Param]:
    """The :class:`~xinit.core.recipes.Param` records recipes see for ``model`` (for writing
    rules): parameters then buffers (``Param.buffer``), with their kind, role, layer
    attributes and class lineage. ``rename`` as :func:`initialize`."""
    return [e.param for e in _renamed(_collect(model), rename)]


# --------------------------------------------------------------------- drawing


def _todo(p: Plan, unmatched: str, *, buffers_too: bool) -> list[Resolved | None]:
    """What each plan entry gets drawn: its resolved spec; zeros for an unmatched
    parameter (or buffer, with ``buffers_too``) under ``unmatched="zeros"``; None for
    entries left alone or given their values otherwise (loaded from a checkpoint,
    computed by the model).

    Raises :class:`~xinit.core.recipes.UnmatchedError` under ``"error"``, before anything
    is written."""
    missing = [e.rule is None and e.source is None and (buffers_too or not e.param.buffer)
               for e in p.entries]
    p.raise_unmatched([e.param.name for e, m in zip(p.entries, missing, strict=True) if m],
                      unmatched, "tensor" if buffers_too else "parameter")
    return [Resolved(Zeros()) if m and unmatched == "zeros" else (e.resolved if e.drawn else None)
            for e, m in zip(p.entries, missing, strict=True)]


def _fold_keys(root_key, names: list[str]) -> list[np.ndarray]:
    return list(fold_in_many(key_data(root_key), [stable_hash(n) for n in names]))


class _Draws(NamedTuple):
    """A validated set of writes: engine requests with their destination tensors, and
    the structural plans (constant, eye, dirac) that torch's own ops write."""

    requests: list[engine.Request]
    dests: list[torch.Tensor]
    dtensors: list[torch.Tensor | None]  # the DTensor each dest is a part of (None: plain)
    structural: list[tuple[torch.Tensor, Any]]  # (canonical view, Elementwise plan)
    sources: list[int]  # the entry of each request
    structural_sources: list[int]  # the entry of each structural write


def _draws(entries: list[Entry], resolved, root_key, targets: list[torch.Tensor], *,
           meta: bool = False) -> _Draws:
    """Validate every entry (dtype against spec) and make its request; nothing is drawn.

    Constants, ``eye`` and ``dirac`` (without rows to zero) are written with torch's
    ops, as the drop-ins do (:func:`xinit.torch._bridge.write_structural_`: the
    engine kernel's values exactly, without a compiled call). Meta targets are
    skipped, unless ``meta`` (the requests their real tensors will have, for
    compiling ahead: see :func:`materialize`).
    """
    requests, dests, dtensors, structural, sources, structural_sources = [], [], [], [], [], []
    for j, (e, res, t) in enumerate(zip(entries, resolved, targets, strict=True)):
        if (t.is_meta and not meta) or t.numel() == 0:
            continue
        shape = tuple(t.shape)
        sp = res.spec.plan(shape)
        np_dtype = _bridge.check_dtype(t, res.spec, sp, f"initialize ({e.param.name})")
        _bridge.check_params(sp, t, f"initialize ({e.param.name})")
        if (isinstance(sp, Elementwise) and sp.family in _bridge.STRUCTURAL and not res.zero_rows
                and not t.is_complex() and not _dtensor.is_dtensor(t)):
            structural.append((t, sp))
            structural_sources.append(j)
            continue
        blocks = _dtensor.parts(t)  # a DTensor: its local shard's blocks and their regions
        for b in blocks:
            requests.append((e.param.name, shape, np_dtype, sp, _bridge.jax_device(t.device),
                             res.zero_rows, b.region))
            dests.append(b.target)
            dtensors.append(b.dtensor)
            sources.append(j)
    keys = _fold_keys(root_key, [r[0] for r in requests]) if requests else []
    reqs = [engine.request(sp, k, shape, dt, region=region, name=name, device=dev, zero_rows=rows)
            for (name, shape, dt, sp, dev, rows, region), k in zip(requests, keys, strict=True)]
    return _Draws(reqs, dests, dtensors, structural, sources, structural_sources)


def _write_structural(structural) -> None:
    with torch.no_grad():
        for t, sp in structural:
            _bridge.write_structural_(t, sp)


def _write_all(entries: list[Entry], resolved, root_key, targets: list[torch.Tensor], *,
               ahead: bool = True) -> None:
    """Draw ``resolved[i]`` for each entry and write it into ``targets[i]`` in place.

    Everything is validated (dtype against spec) before anything is drawn, and
    the engine prepares every program and buffer before the first write (see
    :func:`xinit.core.engine.run`); the structural plans are written after the
    draws. ``ahead``: draw the next chunk while copying the current one (one
    chunk more memory).
    """
    d = _draws(entries, resolved, root_key, targets)
    if d.requests:
        engine.run(d.requests, _dtensor.torch_sink(d.requests, d.dests, d.dtensors), ahead=ahead)
    _write_structural(d.structural)


def _root_key(key, tensors=()):
    """``key``, or a seed from torch's global RNG (for DTensors: the mesh's first rank's)."""
    if key is not None:
        return key
    return _dtensor.agreed_seed(_bridge.seed_from_torch(None), _dtensor.meshes(tensors))


# -------------------------------------------------------------------- manifests


def _replay(manifest, recipe, key):
    """(recipe, key, unmatched, manifest) to reproduce ``manifest``."""
    m = Manifest.load(manifest)
    if key is not None:
        raise ValueError("pass either manifest= (whose root key is used) or key=, not both")
    recorded = m.recipe_object()
    if isinstance(recipe, Recipe) and recipe != recorded:
        raise ValueError(f"recipe {recipe.name!r} is not the manifest's recipe {recorded.name!r}; "
                         "leave recipe= out to use the manifest's")
    if isinstance(recipe, str) and recipe not in ("torch_default", recorded.name):
        raise ValueError(f"recipe {recipe!r} is not the manifest's recipe {recorded.name!r}; "
                         "leave recipe= out to use the manifest's")
    return recorded, m.root_key(), m.unmatched, m


def _check_replay(m: Manifest, p: Plan, *, whole: bool) -> None:
    """Every tensor of ``p`` must be what ``m`` recorded (same shape, dtype, source, rule)."""
    problems = []
    records = {t.name: t for t in m.tensors}
    for e in p.entries:
        rec = records.get(e.param.name)
        if rec is None:
            problems.append(f"{e.param.name}: not in the manifest")
            continue
        if rec.shape != tuple(e.param.shape) or rec.dtype != e.param.dtype:
            problems.append(f"{e.param.name}: {rec.shape} {rec.dtype} in the manifest, "
                            f"{tuple(e.param.shape)} {e.param.dtype} in the model")
        elif rec.source == "loaded" and e.source != "loaded":
            problems.append(f"{e.param.name}: loaded from a checkpoint when recorded; pass the same "
                            "state_dict= to reproduce it")
        elif e.drawn and (rec.source != "drawn" or rec.rule != e.rule_index):
            problems.append(f"{e.param.name}: recorded as {rec.source} (rule {rec.rule}), now drawn "
                            f"by rule #{e.rule_index}")
    if whole:
        names = {e.param.name for e in p.entries}
        problems += [f"{name}: in the manifest, not in the model" for name in records
                     if name not in names]
    if problems:
        raise ValueError("the model does not match the manifest; nothing was written:\n  "
                         + "\n  ".join(problems))


class _Run(NamedTuple):
    """What ``initialize``/``materialize`` work from, everything checked before anything is
    written: the recipe, key and ``unmatched`` (a manifest's, when one is replayed), the
    model's tensors and the checkpoint's keys matched to them."""

    recipe: Recipe
    key: Any
    unmatched: str
    recorded: Manifest | None
    entries: list[Entry]
    checkpoint: Mapping | None
    found: dict[int, str]

    @classmethod
    def prepare(cls, module, recipe, key, unmatched, rename, state_dict, manifest,
                save_manifest) -> _Run:
        recorded = None
        if manifest is not None:
            recipe, key, unmatched, recorded = _replay(manifest, recipe, key)
        check_unmatched(unmatched)
        recipe = _recipe_for(recipe, module)
        if save_manifest is not None:
            recipe.to_config()  # a recipe that cannot be recorded fails before anything is written
        entries = _renamed(_collect(module), rename)
        sd = _checkpoint(state_dict)
        return cls(recipe, key, unmatched, recorded, entries, sd, _match_checkpoint(entries, sd))


def _save_manifest(path, p: Plan, recipe: Recipe, root_key, unmatched: str) -> None:
    if path is None:
        return
    Manifest.from_plan(p, recipe, key=root_key, unmatched=unmatched,
                       versions={"torch": torch.__version__}).save(path)


def _report(what: str, p: Plan) -> None:
    if p.loaded:
        _log.info("%s: %d tensor(s) loaded from the checkpoint, %d drawn (%s)", what, len(p.loaded),
                  len(p.drawn), ", ".join(p.drawn) or "none")


# ------------------------------------------------------------------- initialize


def initialize(model: nn.Module, recipe="torch_default", *, key=None, unmatched: str = "error",
               rename: Callable[[str], str] | None = None, state_dict=None, manifest=None,
               save_manifest=None):
    """Initialize every parameter of ``model`` (and the buffers the recipe covers) in place.

    Args:
        model: any ``torch.nn.Module``.
        recipe: a :class:`~xinit.core.recipes.Recipe` or a built-in's name
            (``"torch_default"``, ``"resnet"``, ``"transformer"``, ``"gpt2"``,
            ``"dcgan"``, ``"vit"``, ``"timm"``, or ``"hf"``: a transformers
            model's own scheme, read from ``model.config``).
        key: root key (``jax.random.key``, ``uint32[2]`` key or int seed). Without
            it a seed is drawn from torch's global RNG (``torch.manual_seed``
            makes runs repeatable).
        unmatched: what happens to parameters no rule matches (see
            :data:`~xinit.core.recipes.UNMATCHED`): ``"error"`` (default) raises
            :class:`~xinit.core.recipes.UnmatchedError` listing every such name,
            before anything is written; ``"ignore"`` leaves them as they are;
            ``"zeros"`` fills them with zeros. Buffers no rule matches are always
            left alone.
        rename: maps each canonical name (``named_parameters()``'s) before keying
            and matching, exactly as ``xinit.flax.initialize``'s ``rename``: e.g. to
            give a torch model the values of a flax model with other names.
        state_dict: a checkpoint (a mapping of names to tensors, or the path of a
            ``.pt``/``.pth``/``.bin``/``.safetensors`` file) whose tensors are
            loaded instead of drawn; only the tensors it lacks are drawn (a new
            head when fine-tuning). Its keys, shapes and dtypes are checked
            first (floating point dtypes are cast), every problem listed in a
            :class:`~xinit.core.errors.CheckpointError`.
            ``plan(model, recipe, state_dict=...)`` shows what is loaded and
            what drawn. A DTensor parameter takes its local shard's slice of
            the full tensor on each rank, without communication; a DTensor
            entry loads into a DTensor on the same mesh (torch's ``copy_``,
            redistributing where the placements differ), never into a plain
            tensor (pass its ``full_tensor()``).
        manifest: a manifest written by ``save_manifest=`` (path or
            :class:`~xinit.core.manifest.Manifest`): its recipe, root key and
            ``unmatched`` are used, and every tensor is checked against its
            record first, so the values are the recorded run's, bit for bit.
        save_manifest: a path: write the :class:`~xinit.core.manifest.Manifest`
            of this run there (JSON).

    Parameter objects, their storage and ``requires_grad`` are kept; a tensor
    shared by several modules is initialized once, under its first name. Meta
    tensors are skipped (see :func:`materialize`).

    Every program and chunk buffer is prepared before the first write, and
    orthogonal and sparse tensors are drawn first: running out of memory raises
    :class:`~xinit.core.errors.OutOfMemoryError` with the tensors written so far
    complete and the rest untouched. A Ctrl-C finishes the tensors being written
    (and starts no other), then raises ``KeyboardInterrupt``: every tensor holds
    its old or its new values, and each changed one has its version counter
    bumped.

    Returns:
        ``model``.

    >>> m = torch.nn.Linear(3, 2)
    >>> w = m.weight
    >>> initialize(m, key=0).weight is w
    True
    """
    run = _Run.prepare(model, recipe, key, unmatched, rename, state_dict, manifest,
                       save_manifest)
    recipe, key, unmatched, recorded = run.recipe, run.key, run.unmatched, run.recorded
    entries, sd, found = run.entries, run.checkpoint, run.found
    p = recipe.plan([e.param for e in entries]).with_sources(
        {entries[i].param.name: "loaded" for i in found})
    resolved = _todo(p, unmatched, buffers_too=False)
    if recorded is not None:
        _check_replay(recorded, p, whole=True)
    root_key = _root_key(key, [e.tensor for e in entries])
    todo = [(e, r) for e, r in zip(entries, resolved, strict=True) if r is not None]
    # draw first: _write_all validates everything before writing, so a refusal writes nothing
    _write_all([e for e, _ in todo], [r for _, r in todo], root_key,
               [canonical_view(e.tensor, e.layout) for e, _ in todo])
    if found:
        _load(entries, found, sd, {})
    _report("initialize", p)
    _save_manifest(save_manifest, p, recipe, root_key, unmatched)
    return model


# --------------------------------------------------------------------- apply_fn

_APPLY_CODE = nn.Module.apply.__code__


def _apply_root(skip: int = 2) -> tuple[nn.Module | None, Any]:
    """``self`` of the outermost ``nn.Module.apply`` on the call stack and its frame
    (which tells one pass from the next), or ``(None, None)``."""
    f = sys._getframe(skip)
    root = frame = None
    while f is not None:
        if f.f_code is _APPLY_CODE:
            root, frame = f.f_locals.get("self"), f
        f = f.f_back
    return root, frame


class _Held:
    """A sink that keeps a run's chunks for later: drawn now, written into the tensors
    when their modules' turn comes (:class:`_ApplyPass`)."""

    in_place = False

    def __init__(self):
        self.chunks: list[engine.Chunk] = []

    def write(self, chunk: engine.Chunk) -> bool:
        self.chunks.append(chunk)
        return True  # keep the array: the engine does not reuse its buffer

    def finish(self, index: int) -> None:
        pass

    def stop(self) -> None:
        pass


def _apply_order(root: nn.Module) -> list[nn.Module]:
    """The modules in the order ``root.apply(fn)`` calls ``fn`` on them (children first)."""
    out: list[nn.Module] = []

    def visit(m: nn.Module) -> None:
        for child in m.children():
            visit(child)
        out.append(m)

    visit(root)
    return out


class _ApplyPass:
    """One ``model.apply(fn)`` pass of :func:`apply_fn`: what each module still has to
    write, and the values drawn ahead for the modules that come next.

    When ``fn(module)`` finds the module's values not drawn yet, it draws them
    together with those of the modules the pass calls next (``Module.apply``'s
    order), up to :data:`BATCH` elements, in one engine run whose chunks are kept
    (:class:`_Held`); each module's tensors are still written at its own call, from
    the kept chunks (the values do not depend on what is drawn together). So
    nothing is written early or late (a tensor read inside the pass holds its new
    values exactly from its module's call on), a batch holds at most about one
    chunk, and many small modules (a ResNet's BatchNorms and 1x1 convolutions) cost
    one compiled call instead of one each.
    """

    BATCH = engine.packing.chunk_size()  # elements drawn ahead at most (one full chunk)

    def __init__(self, root: nn.Module, frame, by_owner: dict[int, list], root_key):
        self.root = root
        self.frame = frame  # the outermost Module.apply call of this pass
        self.by_owner = by_owner
        self.root_key = root_key
        self.order = [id(m) for m in _apply_order(root)]
        self.position = {}
        for k, mid in enumerate(self.order):
            self.position.setdefault(mid, k)
        self.held: dict[int, tuple] = {}  # module id -> (batch, request indices, structural)

    def _size(self, todo) -> int:
        return sum(e.tensor.numel() for e, _ in todo)

    def _draw_from(self, mid: int) -> None:
        """Draw the module ``mid`` and those after it in the pass's order, up to BATCH."""
        chosen, total = [], 0
        for nid in self.order[self.position.get(mid, len(self.order)):] or [mid]:
            todo = self.by_owner.get(nid)
            if not todo or nid in self.held or any(c == nid for c, _ in chosen):
                continue
            size = self._size(todo)
            if chosen and total + size > self.BATCH:
                break
            chosen.append((nid, todo))
            total += size
        if not any(c == mid for c, _ in chosen):
            chosen.insert(0, (mid, self.by_owner[mid]))
        entries = [e for _, todo in chosen for e, _ in todo]
        resolved = [r for _, todo in chosen for _, r in todo]
        owners = [nid for nid, todo in chosen for _ in todo]
        d = _draws(entries, resolved, self.root_key,
                   [canonical_view(e.tensor, e.layout) for e in entries])
        held = _Held()
        if d.requests:
            engine.run(d.requests, held)
        batch = (d, held, _dtensor.torch_sink(d.requests, d.dests, d.dtensors))
        per: dict[int, tuple[list[int], list]] = {nid: ([], []) for nid, _ in chosen}
        for i, j in enumerate(d.sources):
            per[owners[j]][0].append(i)
        for w, j in zip(d.structural, d.structural_sources, strict=True):
            per[owners[j]][1].append(w)
        for nid, (idx, structural) in per.items():
            self.held[nid] = (batch, idx, structural)

    def write(self, module: nn.Module) -> None:
        """Write ``module``'s own tensors (drawing them, and what follows, if needed)."""
        mid = id(module)
        todo = self.by_owner.get(mid)
        if not todo:
            return
        if mid not in self.held and self._size(todo) >= self.BATCH:
            del self.by_owner[mid]  # a large module: drawn straight into its tensors
            _write_all([e for e, _ in todo], [r for _, r in todo], self.root_key,
                       [canonical_view(e.tensor, e.layout) for e, _ in todo])
            return
        if mid not in self.held:
            self._draw_from(mid)
        (d, held, sink), idx, structural = self.held.pop(mid)
        del self.by_owner[mid]
        if idx:
            mine = set(idx)
            with engine.deferred_interrupts():
                try:
                    with torch.no_grad():
                        for chunk in held.chunks:
                            segments = [s for s in chunk.segments if s.index in mine]
                            if segments:
                                sink.write(engine.Chunk(chunk.array, segments))
                    for i in idx:
                        sink.finish(i)
                except BaseException:
                    sink.stop()
                    raise
            # the chunks every module of the batch has written go back to the engine
            left = {i for _, (b, ix, _) in self.held.items() if b[1] is held for i in ix}
            keep = []
            for c in held.chunks:
                if any(s.index in left for s in c.segments):
                    keep.append(c)
                else:
                    engine.reuse_buffer(c.array, d.requests[c.segments[0].index].device)
            held.chunks = keep
        _write_structural(structural)


def apply_fn(recipe="torch_default", *, key=None, unmatched: str = "error",
             rename: Callable[[str], str] | None = None):
    """A function for ``model.apply(fn)`` that gives the same values as :func:`initialize`.

    ``Module.apply`` calls ``fn`` on every submodule, children first, and never
    says where a submodule sits in the model; but a parameter's key comes from its
    full dotted name. So on the first call of an ``apply`` pass ``fn`` finds the
    root (the ``self`` of the outermost ``Module.apply`` on the call stack), names
    and validates every parameter of the root once (an unmatched parameter
    raises before anything is written), and then each call initializes the
    parameters and covered buffers held directly by its module. The values of
    the modules that come next are drawn together, about one chunk at a time, and
    kept until their modules are called (see :class:`_ApplyPass`): each tensor
    is written at its own module's call. Called outside ``Module.apply``,
    ``fn(module)`` initializes the whole ``module``.

    Without ``key``, one seed is drawn from torch's global RNG when ``apply_fn``
    is called, so every pass of the same ``fn`` gives the same values; with
    DTensor parameters, the first pass takes the seed of the mesh's first rank
    (as :func:`initialize`). ``"hf"`` is read from the root's config on each
    pass. ``unmatched`` and ``rename`` as :func:`initialize`.

    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    >>> _ = net.apply(apply_fn("torch_default", key=0))
    """
    check_unmatched(unmatched)
    hf = isinstance(recipe, str) and recipe == "hf"
    if not hf:
        recipe = get_recipe(recipe)
    root_key = _root_key(key)
    agreed = key is not None  # the seed, once agreed with the other ranks of a mesh
    passes: dict[int, _ApplyPass] = {}

    def agree(tensors) -> None:
        nonlocal root_key, agreed
        meshes = _dtensor.meshes(tensors)
        if not agreed and meshes:
            root_key, agreed = _dtensor.agreed_seed(root_key, meshes), True

    def init_fn(module: nn.Module) -> None:
        root, frame = _apply_root()
        if root is None:
            agree(list(module.parameters()))
            initialize(module, recipe, key=root_key, unmatched=unmatched, rename=rename)
            return
        state = passes.get(id(root))
        if state is None or state.root is not root or state.frame is not frame:
            # a new pass (the one before may have stopped midway: its state is dropped)
            entries = _renamed(_collect(root), rename)
            agree([e.tensor for e in entries])
            p = _recipe_for(recipe, root).plan([e.param for e in entries])
            by_owner: dict[int, list] = {}
            for e, r in zip(entries, _todo(p, unmatched, buffers_too=False), strict=True):
                if r is not None:
                    by_owner.setdefault(id(e.owner), []).append((e, r))
            state = passes[id(root)] = _ApplyPass(root, frame, by_owner, root_key)
        state.write(module)
        if module is root:
            del passes[id(root)]

    init_fn.recipe = recipe
    return init_fn


# ------------------------------------------------------------------ materialize


class _BufferHook(NamedTuple):
    """The model's own code that recomputes a buffer: timm's ``init_non_persistent_buffers``
    on its module, or a transformers model's ``_init_weights`` applied to its module."""

    owner: nn.Module
    model: nn.Module | None  # the transformers model whose _init_weights runs; None for timm

    def __str__(self) -> str:
        if self.model is None:
            return f"{type(self.owner).__name__}.init_non_persistent_buffers()"
        return f"{type(self.model).__name__}._init_weights({type(self.owner).__name__})"


def _buffer_hook(owner: nn.Module, parents: dict[int, nn.Module]) -> _BufferHook | None:
    if callable(getattr(owner, "init_non_persistent_buffers", None)):
        return _BufferHook(owner, None)
    m: nn.Module | None = owner
    while m is not None:
        if callable(getattr(m, "_init_weights", None)) and hasattr(m, "config"):
            return _BufferHook(owner, m)
        m = parents.get(id(m))
    return None


@contextlib.contextmanager
def _hf_loaded(module: nn.Module, keep: set[int]):
    """Mark every tensor of ``module`` but ``keep`` as transformers marks loaded ones
    (``_is_hf_initialized``), so ``_init_weights`` writes only the buffers in ``keep``."""
    flagged = []
    for t in (*module.parameters(), *module.buffers()):
        if id(t) not in keep and not getattr(t, "_is_hf_initialized", False):
            t._is_hf_initialized = True
            flagged.append(t)
    try:
        yield
    finally:
        for t in flagged:
            del t._is_hf_initialized


def _recompute(module: nn.Module, jobs: list[tuple[Entry, _BufferHook]]) -> list[tuple[Entry, str]]:
    """Run each hook once; return the buffers it did not write (with the hook's description)."""
    before = {id(e.tensor): (e.owner._buffers[e.attr], e.owner._buffers[e.attr]._version)
              for e, _ in jobs}
    done: set[tuple[int, int]] = set()
    with torch.no_grad():
        for _, hook in jobs:
            if (id(hook.owner), id(hook.model)) in done:
                continue
            done.add((id(hook.owner), id(hook.model)))
            if hook.model is None:
                hook.owner.init_non_persistent_buffers()
            else:
                with _hf_loaded(module, {id(j.tensor) for j, _ in jobs}):
                    hook.model._init_weights(hook.owner)
    missed = []
    for e, hook in jobs:
        old, version = before[id(e.tensor)]
        now = e.owner._buffers.get(e.attr)
        if now is None or now.is_meta or (now is old and now._version == version):
            missed.append((e, str(hook)))
    return missed


_BUFFER_FIXES = (
    "Build the model under xinit.torch.meta_params() (parameters on meta, buffers computed for "
    "real), give them a rule with buffers=True, load them with state_dict=, or pass "
    "unmatched='zeros' to fill them with zeros"
)


def materialize(module: nn.Module, device="cpu", recipe="torch_default", *, key=None,
                unmatched: str = "error", rename: Callable[[str], str] | None = None,
                state_dict=None, manifest=None, save_manifest=None) -> nn.Module:
    """Give a module built on the ``meta`` device real, initialized tensors on ``device``.

    Torch's own initialization never runs. Every meta parameter and buffer is
    replaced by a new tensor on ``device`` (parameters keep ``requires_grad``,
    buffers keep persistence) and written by ``recipe`` with the keys of
    :func:`initialize`, so ``materialize(meta_model, key=k)`` equals
    ``initialize(real_model, key=k)``. Tied parameters (GPT-2's
    ``lm_head.weight is wte.weight``) stay tied: one new tensor is made per
    meta tensor and set on every module that held it (``Module.to_empty`` would
    break the tie). Tensors that are already real are left as they are. The
    tensors are allocated, then drawn chunk by chunk with one chunk in flight
    (not one ahead, as :func:`initialize`), so the peak memory is the model plus
    one chunk.

    It is transactional: every rule, shape, dtype and value is checked before
    anything is allocated, and if anything fails afterwards (an allocation, a
    draw, ``KeyboardInterrupt``) every module gets its original meta tensors
    back (the same objects, ties and buffer persistence intact; without ``key``,
    torch's global RNG is rewound too) before the error propagates. No tensor is
    ever left holding ``empty`` garbage.

    Computed buffers (rotary frequencies, position ids, relative-position
    indices, attention masks) are never drawn: build the model under
    :func:`meta_params` so that they are real from the start, or, for a model
    built entirely on ``meta``, they are recomputed by the model's own code:
    timm's ``init_non_persistent_buffers()`` on their module, or a transformers
    model's ``_init_weights`` on their module (with every other tensor marked
    loaded, as transformers does, so that nothing else is written).

    Args:
        module: a module whose tensors are (partly) on ``meta``.
        device: where the new tensors live.
        recipe, key, rename, state_dict, manifest, save_manifest: as
            :func:`initialize`; the checkpoint's tensors are loaded whether the
            model's tensor was on ``meta`` or not, and only the other meta
            tensors are drawn.
        unmatched: for meta parameters, and meta buffers the model cannot
            recompute (e.g. a causal mask made in ``__init__`` of a plain
            module), that no rule matches: ``"error"`` (default) raises
            :class:`~xinit.core.recipes.UnmatchedError` naming every one and the
            fixes, before anything is allocated; ``"ignore"`` leaves them on
            ``meta`` (ties kept), with a warning naming them; ``"zeros"`` fills
            them with zeros. Nothing is left holding ``empty`` garbage.

    Returns:
        ``module``.

    >>> with torch.device("meta"):
    ...     net = torch.nn.Linear(3, 2)
    >>> materialize(net, key=0).weight.device.type
    'cpu'
    """
    run = _Run.prepare(module, recipe, key, unmatched, rename, state_dict, manifest,
                       save_manifest)
    recipe, key, unmatched, recorded = run.recipe, run.key, run.unmatched, run.recorded
    entries, sd, found = run.entries, run.checkpoint, run.found
    device = torch.device(device)
    p = recipe.plan([e.param for e in entries])
    parents = {id(c): m for m in module.modules() for c in m.children()}
    sources: dict[str, str] = {}
    hooks: list[tuple[Entry, _BufferHook]] = []
    for i, (e, pe) in enumerate(zip(entries, p.entries, strict=True)):
        if i in found:
            sources[e.param.name] = "loaded"
        elif not e.tensor.is_meta:
            sources[e.param.name] = "left"
        elif e.param.buffer and pe.resolved is None:
            hook = _buffer_hook(e.owner, parents)
            if hook is not None:
                sources[e.param.name] = "computed"
                hooks.append((e, hook))
    p = p.with_sources(sources)
    try:
        resolved = _todo(p, unmatched, buffers_too=True)
    except UnmatchedError as err:
        uncomputable = [e.param.name for e, pe in zip(entries, p.entries, strict=True)
                        if e.param.buffer and pe.rule is None and pe.source is None]
        if not uncomputable:
            raise
        raise UnmatchedError(f"{err}. The buffers among them ({', '.join(uncomputable)}) the model "
                             f"cannot recompute: {_BUFFER_FIXES}") from None
    unmatched_names = [e.param.name for e, pe in zip(entries, p.entries, strict=True)
                       if pe.rule is None and pe.source is None]
    left = {id(e.tensor) for e, pe in zip(entries, p.entries, strict=True)
            if pe.rule is None and pe.source is None and unmatched == "ignore"}
    if unmatched == "zeros":
        p = p.with_sources({name: "zeros" for name in unmatched_names})
    if recorded is not None:
        _check_replay(recorded, p, whole=False)
    todo = [(e, r) for e, r in zip(entries, resolved, strict=True) if r is not None]
    for e, r in todo:  # everything _write_all checks, before anything is allocated
        if e.tensor.numel():
            sp = r.spec.plan(tuple(canonical_view(e.tensor, e.layout).shape))
            _bridge.check_dtype(e.tensor, r.spec, sp, f"materialize ({e.param.name})")
            _bridge.check_params(sp, e.tensor, f"materialize ({e.param.name})")
    rng_state = torch.get_rng_state() if key is None else None
    swapped: list[tuple[nn.Module, str, torch.Tensor]] = []
    try:
        root_key = _root_key(key, [e.tensor for e in entries])
        # Compile first: XLA's transient compiler memory then comes and goes before the
        # parameters are allocated, instead of on top of them (a cold call's peak RSS).
        _compile_for(device, [e for e, _ in todo], [r for _, r in todo], root_key)
        new = _swap_in_real_tensors(module, device, left, swapped)
        _dtensor.adopt_fsdp(module)
        targets = {i: new[id(e.tensor)] for i, e in enumerate(entries) if id(e.tensor) in new}
        if found:
            _load(entries, found, sd, targets)
        missed = _recompute(module, [(e._replace(tensor=new[id(e.tensor)]), h) for e, h in hooks])
        if missed and unmatched == "error":
            raise UnmatchedError(
                "materialize: the model's own code did not compute "
                f"{', '.join(f'{e.param.name} (by {hook})' for e, hook in missed)}. {_BUFFER_FIXES}"
            )
        meta = {e.param.name: e.tensor for e, _ in hooks}
        for e, _ in missed:  # what the hook may have replaced: the new tensor, or meta under "ignore"
            e.owner._buffers[e.attr] = meta[e.param.name] if unmatched == "ignore" else e.tensor
        # One chunk in flight (not two): materialize is where peak memory matters most.
        _write_all([e for e, _ in todo], [r for _, r in todo], root_key,
                   [canonical_view(new[id(e.tensor)], e.layout) for e, _ in todo], ahead=False)
        if unmatched == "zeros" and missed:
            with torch.no_grad():
                for e, _ in missed:
                    e.tensor.zero_()
    except BaseException:
        _swap_back(swapped)
        _dtensor.adopt_fsdp(module)
        if rng_state is not None:
            torch.set_rng_state(rng_state)
        raise
    missed_names = [e.param.name for e, _ in missed]
    if unmatched == "zeros":
        p = p.with_sources({name: "zeros" for name in missed_names})
    if missed_names or (unmatched == "ignore" and unmatched_names):
        # unmatched="zeros" was asked for; a buffer the model's own code was expected to
        # compute but did not is worth a warning either way
        fate = ("they stay on the meta device" if unmatched == "ignore"
                else "they were filled with zeros")
        warnings.warn(
            f"materialize: recipe {recipe.name!r} has no rule for "
            f"{', '.join(unmatched_names + missed_names)} (and the model does not compute them); "
            f"with unmatched={unmatched!r} {fate}",
            stacklevel=2,
        )
    _report("materialize", p)
    _save_manifest(save_manifest, p, recipe, root_key, unmatched)
    return module


def _compile_for(device: torch.device, entries: list[Entry], resolved, root_key) -> None:
    """Compile the programs that drawing ``entries`` (meta tensors) on ``device`` will run."""
    meta_views = [canonical_view(e.tensor, e.layout) for e in entries]
    d = _draws(entries, resolved, root_key, meta_views, meta=True)
    dev = _bridge.jax_device(torch.device(device))
    engine.compile_programs([r._replace(device=dev) for r in d.requests])


def _swap_in_real_tensors(module: nn.Module, device: torch.device, left: set[int],
                          swapped: list[tuple[nn.Module, str, torch.Tensor]]) -> dict[int, torch.Tensor]:
    """Replace every meta parameter and buffer not in ``left`` (ids) by a new tensor on
    ``device`` (one per meta tensor, so ties stay), recording each replacement in
    ``swapped`` as it is made."""
    new: dict[int, torch.Tensor] = {}
    for m in module.modules():
        for attr, t in list(m._parameters.items()):
            if t is not None and t.is_meta and id(t) not in left:
                if id(t) not in new:
                    new[id(t)] = nn.Parameter(torch.empty_like(t, device=device),
                                              requires_grad=t.requires_grad)
                swapped.append((m, attr, t))
                setattr(m, attr, new[id(t)])
        for attr, t in list(m._buffers.items()):
            if t is not None and t.is_meta and id(t) not in left:
                if id(t) not in new:
                    new[id(t)] = torch.empty_like(t, device=device)
                swapped.append((m, attr, t))
                m._buffers[attr] = new[id(t)]
        if isinstance(m, nn.RNNBase):
            m._init_flat_weights()
    return new


def _swap_back(swapped: list[tuple[nn.Module, str, torch.Tensor]]) -> None:
    """Undo :func:`_swap_in_real_tensors`: the original meta tensors, latest first."""
    for m, attr, t in reversed(swapped):
        if attr in m._parameters:
            m._parameters[attr] = t
        else:
            m._buffers[attr] = t
    for m in {id(m): m for m, _, _ in swapped}.values():
        if isinstance(m, nn.RNNBase):
            m._init_flat_weights()


# ------------------------------------------------------------------- meta_params


@contextlib.contextmanager
def meta_params():
    """Build modules with their parameters on ``meta`` and their buffers real.

    Inside the block every parameter a module registers is moved to the
    ``meta`` device (so it takes no memory and torch's initialization of it
    does nothing), while buffers stay where the module made them: computed
    buffers (a rotary embedding's ``inv_freq``, BERT's ``position_ids``, Swin's
    ``relative_position_index``) keep their values. Then :func:`materialize`
    draws the parameters and leaves those buffers alone. This is accelerate's
    ``init_empty_weights(include_buffers=False)``.

    Patches ``torch.nn.Module.register_parameter`` for the duration: not
    thread-safe (modules built by other threads meanwhile are affected too).
    Restored on exit, also after an error.

    >>> with meta_params():
    ...     bn = torch.nn.BatchNorm1d(4)
    >>> bn.weight.is_meta, bn.running_var.is_meta
    (True, False)
    >>> _ = materialize(bn, key=0)
    """
    original = nn.Module.register_parameter

    def register_parameter(self, name, param):
        original(self, name, param)
        p = self._parameters.get(name)
        if p is not None and not p.is_meta:
            meta = p.detach().to("meta")
            if type(p) is nn.Parameter:
                moved = nn.Parameter(meta, requires_grad=p.requires_grad)
                moved.__dict__.update(vars(p))
            else:  # a Parameter subclass: rebuilt with its own attributes, as accelerate does
                moved = type(p)(meta, **{**vars(p), "requires_grad": p.requires_grad})
            self._parameters[name] = moved

    nn.Module.register_parameter = register_parameter
    try:
        yield
    finally:
        nn.Module.register_parameter = original


# ---------------------------------------------------------------------- no_init

_INIT_NAMES = tuple(n for n in nn.init.__all__ if n.endswith("_"))

#: Libraries whose modules keep their own references to initialization functions.
_PATCHED_PACKAGES = ("torch.nn", "transformers", "timm")
#: Their own initialization functions (by module), skipped as torch's are. Not
#: transformers' ``copy_``: it writes computed buffers, which stay computed.
_LIBRARY_INIT = {
    "transformers.initialization": (*_INIT_NAMES, "lecun_normal_", "default_flax_embed_init_"),
    "timm.layers.weight_init": ("trunc_normal_", "trunc_normal_tf_", "variance_scaling_",
                                "lecun_normal_"),
}


def _skipping(fn):
    """A stand-in for the init function ``fn`` that returns its tensor untouched; it knows
    ``fn`` (``__wrapped__``), so a reference to it that outlives the block can be put back."""

    def skip(tensor, *args, **kwargs):
        return tensor

    skip.__wrapped__ = fn
    skip.__name__ = skip.__qualname__ = f"no_init({getattr(fn, '__name__', 'init')})"
    return skip


def _put_back(namespace: dict, stand_ins: set[int]) -> None:
    """Replace every stand-in among ``namespace``'s values (and its dicts' values) by its function.

    A module imported inside :func:`no_init` that bound an init function by name
    (``from torch.nn.init import normal_``, transformers' ``TORCH_INIT_FUNCTIONS``)
    bound the stand-in; this makes it the function again.
    """
    for key, value in list(namespace.items()):
        if id(value) in stand_ins:
            namespace[key] = value.__wrapped__
        elif isinstance(value, dict) and key != "__builtins__":
            for k, v in list(value.items()):
                if id(v) in stand_ins:
                    value[k] = v.__wrapped__


def _init_functions() -> dict[int, Any]:
    """id -> function, for every initialization function :func:`no_init` skips."""
    fns = [getattr(nn.init, name) for name in _INIT_NAMES]
    for modname, names in _LIBRARY_INIT.items():
        mod = sys.modules.get(modname)
        if mod is not None:
            fns += [getattr(mod, n) for n in names if callable(getattr(mod, n, None))]
    return {id(f): f for f in fns}


@contextlib.contextmanager
def no_init():
    """Construct torch layers without torch's own default initialization.

    Inside the block every ``torch.nn.init.*_`` function returns its tensor
    untouched, and so do the copies that modules imported by name (e.g.
    MultiheadAttention's ``xavier_uniform_``) and the initialization functions
    of Hugging Face transformers (``transformers.initialization``, which keeps
    its own references to torch's) and timm (``trunc_normal_`` and friends), in
    every loaded module of ``torch.nn``, ``transformers`` and ``timm``. So
    building a model allocates memory but draws nothing (and does not advance
    torch's RNG); initialize it afterwards with :func:`initialize`. Everything
    else still runs: buffers that layers compute (BatchNorm's running stats, an
    Embedding's padding row, rotary frequencies, position ids) are filled, and
    transformers still ties ``lm_head`` to the input embedding. Not
    thread-safe: other threads constructing layers meanwhile are affected too.
    The functions are restored on exit, also after an error, including the
    references that modules imported inside the block took to them (``from
    torch.nn.init import normal_``, transformers' table of torch's functions).
    Draws a constructor makes directly (``torch.randn`` in ``__init__``) are not
    stopped.

    >>> with no_init():
    ...     layer = torch.nn.Linear(1000, 1000)
    >>> _ = initialize(layer, key=0)
    """
    skipped = _init_functions()
    stand_in = {i: _skipping(fn) for i, fn in skipped.items()}
    loaded = set(sys.modules)
    patched: list[tuple[Any, str, Any]] = []
    for modname, mod in list(sys.modules.items()):
        if mod is None or not modname.startswith(_PATCHED_PACKAGES):
            continue
        try:
            items = list(vars(mod).items())
        except TypeError:
            continue
        for attr, value in items:
            if id(value) in skipped and skipped[id(value)] is value:
                patched.append((mod, attr, value))
    try:
        for mod, attr, value in patched:
            setattr(mod, attr, stand_in[id(value)])
        yield
    finally:
        for mod, attr, value in patched:
            setattr(mod, attr, value)
        ids = {id(f) for f in stand_in.values()}
        for modname, mod in list(sys.modules.items()):
            if modname not in loaded and mod is not None:
                try:
                    _put_back(vars(mod), ids)
                except TypeError:
                    continue
