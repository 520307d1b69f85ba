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
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import sys
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from xinit.core import engine
from xinit.core._keys import key_data, stable_hash
from xinit.core.errors import DtypeError
from xinit.core.layers import layer_of
from xinit.core.layout import TORCH, Layout, canonical_shape
from xinit.core.recipes import Param, Plan, Resolved, as_layer, check_unmatched, get_recipe
from xinit.core.specs import Elementwise, Zeros
from xinit.core.threefry import fold_in_many

from . import _bridge, _dtensor
from ._sink import TorchSink

__all__ = ["initialize", "plan", "apply_fn", "materialize", "no_init", "describe"]


# --------------------------------------------------------------- classification

_RNN_ROLE = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)(_l\d+)?(_reverse)?$")

#: Layer attributes that layer-dependent rules read, per kind (read with getattr,
#: so a registered custom layer without them simply lacks them).
_KIND_ATTRS = {
    "bilinear": ("in1_features",),
    "embedding": ("padding_idx",),
    "recurrent": ("hidden_size",),
    "prelu": ("init",),
}


def classify(module: nn.Module, parent: tuple[nn.Module, str] | None
           ) -> tuple[str, dict[str, Any], Layout]:
    """The layer kind of ``module``, the attributes layer-dependent rules read, and the
    layout of its weight, from the layer registry (:mod:`xinit.core.layers`)."""
    if (isinstance(module, nn.Linear) and parent is not None
            and isinstance(parent[0], nn.MultiheadAttention) and parent[1] == "out_proj"):
        return "attention", {}, TORCH
    entry = layer_of(type(module))
    if entry is None:
        return "other", {}, TORCH
    attrs = {a: getattr(module, a, None) for a in _KIND_ATTRS.get(entry.kind, ())}
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
    """Parameters (then, per module, buffers) in ``named_parameters`` order, deduplicated."""
    parents: dict[int, tuple[nn.Module, str]] = {}
    ancestors: dict[int, tuple[str, ...]] = {}
    seen: set[int] = set()
    out: list[Entry] = []
    for prefix, m in module.named_modules():
        above = ancestors.get(id(m), ())
        for cname, child in m.named_children():
            parents.setdefault(id(child), (m, cname))
            ancestors.setdefault(id(child), (*above, type(m).__name__))
        parent = parents.get(id(m))
        kind, attrs, layout = classify(m, parent)
        if above:
            attrs = {**attrs, "ancestors": above}
        weight = m._parameters.get("weight")
        if (weight is not None and kind in ("linear", "conv", "conv_transpose", "attention")
                and not isinstance(weight, nn.parameter.UninitializedTensorMixin)):
            attrs = {**attrs, "weight_shape": canonical_shape(weight.shape, layout)}
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
                layer=as_layer(attrs),
                buffer=is_buffer,
            )
            out.append(Entry(p, t, m, own))
    return out


def _renamed(entries: list[Entry], rename: Callable[[str], str] | None) -> list[Entry]:
    """``entries`` with ``rename`` applied to each canonical name (keys and matching use it)."""
    if rename is None:
        return entries
    return [e._replace(param=dataclasses.replace(e.param, name=rename(e.param.name)))
            for e in entries]


def plan(model: nn.Module, recipe="torch_default", *,
         rename: Callable[[str], str] | None = None) -> Plan:
    """The dry run: every parameter and buffer -> rule -> initializer, nothing written.

    ``print(plan(model, "gpt2"))`` shows a table; ``.unmatched`` lists names no
    rule matches (buffers a recipe does not cover are left alone by
    :func:`initialize`). ``rename`` as :func:`initialize`.
    """
    return get_recipe(recipe).plan([e.param for e in _renamed(_collect(model), rename)])


def describe(model: nn.Module, *, rename: Callable[[str], str] | None = None) -> list[Param]:
    """The :class:`~xinit.core.recipes.Param` records recipes see for ``model`` (for writing rules)."""
    return [e.param for e in _renamed(_collect(model), rename)]


# --------------------------------------------------------------------- drawing


def _todo(p: Plan, unmatched: str, *, buffers_too: bool) -> list[Resolved | None]:
    """What each plan entry gets: its resolved spec; zeros for an unmatched parameter
    (or buffer, with ``buffers_too``) under ``unmatched="zeros"``; None to leave it.

    Raises :class:`~xinit.core.recipes.UnmatchedError` under ``"error"``, before anything
    is written."""
    missing = [e.rule is None and (buffers_too or not e.param.buffer) for e in p.entries]
    p.raise_unmatched([e.param.name for e, m in zip(p.entries, missing, strict=True) if m],
                      unmatched, "tensor" if buffers_too else "parameter")
    return [Resolved(Zeros()) if m and unmatched == "zeros" else e.resolved
            for e, m in zip(p.entries, missing, strict=True)]


def _fold_keys(root_key, names: list[str]) -> list[np.ndarray]:
    return list(fold_in_many(key_data(root_key), [stable_hash(n) for n in names]))


class _Draws(NamedTuple):
    """A validated set of writes: engine requests with their destination tensors, and
    the structural plans (constant, eye, dirac) that torch's own ops write."""

    requests: list[engine.Request]
    dests: list[torch.Tensor]
    structural: list[tuple[torch.Tensor, Any]]  # (canonical view, Elementwise plan)
    sources: list[int]  # the entry of each request
    structural_sources: list[int]  # the entry of each structural write


def _draws(entries: list[Entry], resolved, root_key, targets: list[torch.Tensor]) -> _Draws:
    """Validate every entry (dtype against spec) and make its request; nothing is drawn.

    Constants, ``eye`` and ``dirac`` (without rows to zero) are written with torch's
    ops, as the drop-ins do (:func:`xinit.torch._bridge.write_structural_`: the
    engine kernel's values exactly, without a compiled call).
    """
    requests, dests, structural, sources, structural_sources = [], [], [], [], []
    for j, (e, res, t) in enumerate(zip(entries, resolved, targets, strict=True)):
        if t.is_meta or t.numel() == 0:
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
            sources.append(j)
    keys = _fold_keys(root_key, [r[0] for r in requests]) if requests else []
    reqs = [engine.request(sp, k, shape, dt, region=region, name=name, device=dev, zero_rows=rows)
            for (name, shape, dt, sp, dev, rows, region), k in zip(requests, keys, strict=True)]
    return _Draws(reqs, dests, structural, sources, structural_sources)


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
        engine.run(d.requests, TorchSink(d.requests, d.dests), ahead=ahead)
    _write_structural(d.structural)


def _root_key(key, tensors=()):
    """``key``, or a seed from torch's global RNG (for DTensors: the mesh's first rank's)."""
    if key is not None:
        return key
    return _dtensor.agreed_seed(_bridge.seed_from_torch(None), _dtensor.meshes(tensors))


def initialize(model: nn.Module, recipe="torch_default", *, key=None, unmatched: str = "error",
               rename: Callable[[str], str] | None = None):
    """Initialize every parameter of ``model`` (and the buffers the recipe covers) in place.

    The same arguments as ``xinit.flax.initialize``; for the same recipe, key and
    canonical names the values are the flax model's.

    Args:
        model: any ``torch.nn.Module``.
        recipe: a :class:`~xinit.core.recipes.Recipe` or a built-in's name
            (``"torch_default"``, ``"resnet"``, ``"transformer"``, ``"gpt2"``,
            ``"dcgan"``, ``"vit"``).
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
    check_unmatched(unmatched)
    recipe = get_recipe(recipe)
    entries = _renamed(_collect(model), rename)
    p = recipe.plan([e.param for e in entries])
    todo = [(e, r) for e, r in zip(entries, _todo(p, unmatched, buffers_too=False), strict=True)
            if r is not None]
    _write_all([e for e, _ in todo], [r for _, r in todo], _root_key(key, [e.tensor for e in entries]),
               [canonical_view(e.tensor, e.layout) for e, _ in todo])
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
        batch = (d, held, TorchSink(d.requests, d.dests))
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
    (as :func:`initialize`). ``unmatched`` and ``rename`` as :func:`initialize`.

    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    >>> _ = net.apply(apply_fn("torch_default", key=0))
    """
    check_unmatched(unmatched)
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
            p = recipe.plan([e.param for e in entries])
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


def materialize(module: nn.Module, device="cpu", recipe="torch_default", *, key=None,
                unmatched: str = "error", rename: Callable[[str], str] | None = None) -> nn.Module:
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

    Args:
        module: a module whose tensors are (partly) on ``meta``.
        device: where the new tensors live.
        recipe, key, rename: as :func:`initialize`.
        unmatched: for meta parameters *and buffers* no rule matches (e.g. a
            causal-mask buffer made in ``__init__``): ``"error"`` (default)
            raises :class:`~xinit.core.recipes.UnmatchedError` naming every one,
            before anything is allocated; ``"ignore"`` leaves them on ``meta``
            (ties kept), with a warning naming them; ``"zeros"`` fills them with
            zeros. Nothing is left holding ``empty`` garbage: on any failure
            (a bad parameter, out of memory, Ctrl-C) every tensor is back on
            ``meta`` and torch's global generator is as it was.

    Returns:
        ``module``.

    >>> with torch.device("meta"):
    ...     net = torch.nn.Linear(3, 2)
    >>> materialize(net, key=0).weight.device.type
    'cpu'
    """
    check_unmatched(unmatched)
    recipe = get_recipe(recipe)
    device = torch.device(device)
    entries = [e for e in _renamed(_collect(module), rename) if e.tensor.is_meta]
    p = recipe.plan([e.param for e in entries])
    resolved = _todo(p, unmatched, buffers_too=True)
    left = {id(e.tensor) for e, r in zip(entries, resolved, strict=True) if r is None}
    todo = [(e, r) for e, r in zip(entries, resolved, strict=True) if r is not None]
    for e, res in todo:  # everything _write_all checks, before anything is allocated
        t = e.tensor
        if t.numel():
            sp = res.spec.plan(tuple(canonical_view(t, e.layout).shape))
            _bridge.check_dtype(t, res.spec, sp, f"materialize ({e.param.name})")
            _bridge.check_params(sp, t, f"materialize ({e.param.name})")
    rng_state = torch.get_rng_state() if key is None else None
    swapped: list[tuple[nn.Module, str, torch.Tensor]] = []
    try:
        root_key = _root_key(key, [e.tensor for e in entries])
        new = _swap_in_real_tensors(module, device, left, swapped)
        _dtensor.adopt_fsdp(module)
        # One chunk in flight (not two): materialize is where peak memory matters most.
        _write_all([e for e, _ in todo], [r for _, r in todo], root_key,
                   [canonical_view(new[id(e.tensor)], e.layout) for e, _ in todo], ahead=False)
    except BaseException:
        _swap_back(swapped)
        _dtensor.adopt_fsdp(module)
        if rng_state is not None:
            torch.set_rng_state(rng_state)
        raise
    if left:
        warnings.warn(
            f"materialize: recipe {recipe.name!r} has no rule for "
            f"{', '.join(e.param.name for e, r in zip(entries, resolved, strict=True) if r is None)}; "
            "with unmatched='ignore' they stay on the meta device",
            stacklevel=2,
        )
    return module


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
                setattr(m, attr, new[id(t)])
        if isinstance(m, nn.RNNBase):
            m._init_flat_weights()
    return new


def _swap_back(swapped: list[tuple[nn.Module, str, torch.Tensor]]) -> None:
    """Undo :func:`_swap_in_real_tensors`: the original meta tensors, latest first."""
    for m, attr, t in reversed(swapped):
        setattr(m, attr, t)
    for m in {id(m): m for m, _, _ in swapped}.values():
        if isinstance(m, nn.RNNBase):
            m._init_flat_weights()


# ---------------------------------------------------------------------- no_init

_INIT_NAMES = tuple(n for n in nn.init.__all__ if n.endswith("_"))


def _skip(tensor, *args, **kwargs):
    return tensor


@contextlib.contextmanager
def no_init():
    """Construct torch layers without torch's own default initialization.

    Inside the block every ``torch.nn.init.*_`` function (and the copies that
    ``torch.nn`` modules imported by name, e.g. MultiheadAttention's
    ``xavier_uniform_``) returns its tensor untouched, so building a model
    allocates memory but draws nothing (and does not advance torch's RNG);
    initialize it afterwards with :func:`initialize`. Buffers that layers fill
    directly (BatchNorm's running stats, an Embedding's padding row) are still
    filled. Not thread-safe: other threads constructing layers meanwhile are
    affected too. The functions are restored on exit, also after an error.

    >>> with no_init():
    ...     layer = torch.nn.Linear(1000, 1000)
    >>> _ = initialize(layer, key=0)
    """
    originals = {name: getattr(nn.init, name) for name in _INIT_NAMES}
    by_obj = {id(fn): name for name, fn in originals.items()}
    patched: list[tuple[Any, str, Any]] = []
    for modname, mod in list(sys.modules.items()):
        if mod is None or not (modname == "torch.nn.init" or modname.startswith("torch.nn.modules")):
            continue
        for attr, value in list(vars(mod).items()):
            if id(value) in by_obj and value is originals[by_obj[id(value)]]:
                patched.append((mod, attr, value))
    try:
        for mod, attr, _ in patched:
            setattr(mod, attr, _skip)
        yield
    finally:
        for mod, attr, value in patched:
            setattr(mod, attr, value)
