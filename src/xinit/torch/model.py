"""Whole-module initialization for PyTorch: recipes, ``model.apply`` hooks, meta materialization.

Every parameter gets the initializer of the first matching rule of a
:class:`~xinit.core.recipes.Recipe` and its own key,
``fold_in(root_key, crc32(name))`` with ``name`` its ``named_parameters()`` name,
so its value depends only on (root key, name, shape, dtype, rule): not on which
other parameters exist, nor on their order. Parameters are drawn in batches (one
compiled call per chunk of many parameters of the same family and dtype) and
copied into the tensors in place via DLPack.

    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> initialize(net, "torch_default", key=0) is net
    True
    >>> print(plan(net, "transformer"))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import re
import sys
import warnings
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from xinit.core import _batch, _host
from xinit.core._keys import key_data
from xinit.core.errors import DtypeError
from xinit.core.recipes import Param, Plan, UnmatchedError, as_layer, get_recipe

from . import _bridge

__all__ = ["initialize", "plan", "apply_fn", "materialize", "no_init", "describe"]


# --------------------------------------------------------------- classification

_RNN_ROLE = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)(_l\d+)?(_reverse)?$")
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.RMSNorm)


def _layer(module: nn.Module, parent: tuple[nn.Module, str] | None) -> tuple[str, dict[str, Any]]:
    """The layer kind of ``module`` and the attributes layer-dependent rules read."""
    if isinstance(module, nn.Linear):
        if parent is not None and isinstance(parent[0], nn.MultiheadAttention) and parent[1] == "out_proj":
            return "attention", {}
        return "linear", {}
    if isinstance(module, nn.Bilinear):
        return "bilinear", {"in1_features": module.in1_features}
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return "conv_transpose", {}
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv", {}
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return "embedding", {"padding_idx": module.padding_idx}
    if isinstance(module, (nn.RNNBase, nn.RNNCellBase)):
        return "recurrent", {"hidden_size": module.hidden_size}
    if isinstance(module, nn.MultiheadAttention):
        return "attention", {}
    if isinstance(module, _NORMS):
        return "norm", {}
    if isinstance(module, nn.PReLU):
        return "prelu", {"init": module.init}
    return "other", {}


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
        kind, attrs = _layer(m, parent)
        if above:
            attrs = {**attrs, "ancestors": above}
        weight = m._parameters.get("weight")
        if (weight is not None and kind in ("linear", "conv", "conv_transpose", "attention")
                and not isinstance(weight, nn.parameter.UninitializedTensorMixin)):
            attrs = {**attrs, "weight_shape": tuple(weight.shape)}
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
            p = Param(
                name=name,
                kind=kind,
                role=_role(kind, attr, m, parent),
                shape=tuple(t.shape),
                dtype=_np_dtype(t, name).name,
                layer_type=type(m).__name__,
                layer=as_layer(attrs),
                buffer=is_buffer,
            )
            out.append(Entry(p, t, m))
    return out


def plan(module: nn.Module, recipe="torch_default") -> Plan:
    """The dry run: every parameter and buffer -> rule -> initializer, nothing written.

    ``print(plan(model, "gpt2"))`` shows a table; ``.unmatched`` lists names no
    rule matches (buffers a recipe does not cover are left alone by
    :func:`initialize`).
    """
    return get_recipe(recipe).plan([e.param for e in _collect(module)])


def describe(module: nn.Module) -> list[Param]:
    """The :class:`~xinit.core.recipes.Param` records recipes see for ``module`` (for writing rules)."""
    return [e.param for e in _collect(module)]


# --------------------------------------------------------------------- drawing


def _check_unmatched(p: Plan, unmatched: str, allowed: tuple[str, ...], *, buffers_too: bool) -> None:
    if unmatched not in allowed:
        raise ValueError(f"unmatched must be one of {list(allowed)}; got {unmatched!r}")
    missing = [e.param.name for e in p.entries if e.rule is None and (buffers_too or not e.param.buffer)]
    if missing and unmatched == "error":
        raise UnmatchedError(
            f"recipe {p.recipe!r} has no rule for {len(missing)} "
            f"{'tensor' if buffers_too else 'parameter'}(s): {', '.join(missing)}. Add rules "
            f"(Recipe(...) + recipe) or pass unmatched={allowed[1]!r}"
        )


def _fold_keys(root_key, names: list[str]) -> list[np.ndarray]:
    from xinit.core._keys import stable_hash

    return list(_batch.fold_in_many(key_data(root_key), [stable_hash(n) for n in names]))


def _write_all(entries: list[Entry], resolved, root_key, targets: list[torch.Tensor], *,
               ahead: bool = True) -> None:
    """Draw ``resolved[i]`` for each entry and copy it into ``targets[i]`` in place.

    Everything is validated (dtype against spec) before anything is drawn.
    ``ahead``: draw the next chunk while copying the current one (one chunk more
    memory; see :func:`xinit.core._batch.draw_items`).
    """
    items, jobs = [], []
    for e, res, t in zip(entries, resolved, targets, strict=True):
        if t.is_meta or t.numel() == 0:
            continue
        shape = tuple(t.shape)
        sp = res.spec.plan(shape)
        np_dtype = _bridge.check_dtype(t, res.spec, sp, f"initialize ({e.param.name})")
        _bridge.check_params(sp, t, f"initialize ({e.param.name})")
        items.append((e.param.name, shape, np_dtype, sp, _bridge.jax_device(t.device)))
        jobs.append((t, res.zero_rows))
    if not items:
        return
    keys = _fold_keys(root_key, [it[0] for it in items])
    batch = [_batch.Item(n, k, s, d, sp, dev) for (n, s, d, sp, dev), k in zip(items, keys, strict=True)]
    flats: dict[int, torch.Tensor] = {}
    for i, (t, _) in enumerate(jobs):
        flats[i] = t.view(-1) if t.is_contiguous() else torch.empty(t.numel(), dtype=t.dtype,
                                                                    device=t.device)
    with torch.no_grad():
        if all(f.device.type == "cpu" for f in flats.values()):
            _copy_chunks_on_host(_batch.draw_items(batch, ahead=ahead), flats)
        else:
            for chunk in _batch.draw_items(batch, ahead=ahead):
                srcs: dict[int, torch.Tensor] = {}
                for seg in chunk:
                    src = srcs.get(id(seg.array))
                    if src is None:
                        src = srcs[id(seg.array)] = torch.from_dlpack(seg.array)
                    flats[seg.index][seg.offset : seg.offset + seg.length].copy_(
                        src[seg.start : seg.start + seg.length]
                    )
                del chunk, srcs, src  # release this chunk before the next one is drawn
        for i, (t, rows) in enumerate(jobs):
            if t.is_contiguous():
                _bridge.bump_version(t)
            else:
                t.copy_(flats[i].view(t.shape))
            for r in rows:
                t[r].zero_()


def _copy_chunks_on_host(chunks, flats: dict[int, torch.Tensor]) -> None:
    """CPU tensors: each segment is one ``memcpy`` between byte views (see
    ``_bridge.host_bytes``), made once per tensor and once per chunk."""
    dst = {i: _bridge.host_bytes(f) for i, f in flats.items()}
    size = {i: f.element_size() for i, f in flats.items()}
    fresh = set(dst)
    for chunk in chunks:
        srcs: dict[int, np.ndarray] = {}
        for seg in chunk:
            src = srcs.get(id(seg.array))
            if src is None:
                src = srcs[id(seg.array)] = _bridge.host_bytes(seg.array)
            if seg.index in fresh:  # map a fresh tensor's pages at once, not one fault at a time
                fresh.discard(seg.index)
                _host.prefault(dst[seg.index])
            k = size[seg.index]
            np.copyto(dst[seg.index][seg.offset * k : (seg.offset + seg.length) * k],
                      src[seg.start * k : (seg.start + seg.length) * k])
        del chunk, srcs, src  # release this chunk before the next one is drawn


def _root_key(key):
    return key if key is not None else _bridge.seed_from_torch(None)


def initialize(module: nn.Module, recipe="torch_default", *, key=None, unmatched: str = "error"):
    """Initialize every parameter of ``module`` (and the buffers the recipe covers) in place.

    Args:
        module: any ``torch.nn.Module``.
        recipe: a :class:`~xinit.core.recipes.Recipe` or a built-in's name
            (``"torch_default"``, ``"resnet"``, ``"transformer"``, ``"gpt2"``,
            ``"dcgan"``, ``"vit"``).
        key: root key (``jax.random.key``, ``uint32[2]`` key or int seed). Without
            it a seed is drawn from torch's global RNG (``torch.manual_seed``
            makes runs repeatable).
        unmatched: ``"error"`` (default): a parameter no rule matches raises
            :class:`~xinit.core.recipes.UnmatchedError` listing every such name,
            before anything is written; ``"ignore"``: leave those as they are.
            Buffers no rule matches are always left alone.

    Parameter objects, their storage and ``requires_grad`` are kept; a tensor
    shared by several modules is initialized once, under its first name. Meta
    tensors are skipped (see :func:`materialize`).

    Returns:
        ``module``.

    >>> m = torch.nn.Linear(3, 2)
    >>> w = m.weight
    >>> initialize(m, key=0).weight is w
    True
    """
    recipe = get_recipe(recipe)
    entries = _collect(module)
    p = recipe.plan([e.param for e in entries])
    _check_unmatched(p, unmatched, ("error", "ignore"), buffers_too=False)
    todo = [(e, pe.resolved) for e, pe in zip(entries, p.entries, strict=True) if pe.resolved is not None]
    _write_all([e for e, _ in todo], [r for _, r in todo], _root_key(key), [e.tensor for e, _ in todo])
    return module


# --------------------------------------------------------------------- apply_fn

_APPLY_CODE = nn.Module.apply.__code__


def _apply_root(skip: int = 2) -> nn.Module | None:
    """``self`` of the outermost ``nn.Module.apply`` on the call stack, or None."""
    f = sys._getframe(skip)
    root = None
    while f is not None:
        if f.f_code is _APPLY_CODE:
            root = f.f_locals.get("self")
        f = f.f_back
    return root


def apply_fn(recipe="torch_default", *, key=None, unmatched: str = "error"):
    """A function for ``model.apply(fn)`` that gives the same values as :func:`initialize`.

    ``Module.apply`` calls ``fn`` on every submodule, children first, and never
    says where a submodule sits in the model; but a parameter's key comes from its
    full dotted name. So on the first call of an ``apply`` pass ``fn`` finds the
    root (the ``self`` of the outermost ``Module.apply`` on the call stack), names
    and validates every parameter of the root once (an unmatched parameter
    raises before anything is written), and then each call initializes the
    parameters and covered buffers held directly by its module. Called outside
    ``Module.apply``, ``fn(module)`` initializes the whole ``module``.

    Without ``key``, one seed is drawn from torch's global RNG when ``apply_fn``
    is called, so every pass of the same ``fn`` gives the same values.

    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    >>> _ = net.apply(apply_fn("torch_default", key=0))
    """
    recipe = get_recipe(recipe)
    root_key = _root_key(key)
    passes: dict[int, tuple[nn.Module, dict[int, list]]] = {}

    def init_fn(module: nn.Module) -> None:
        root = _apply_root()
        if root is None:
            initialize(module, recipe, key=root_key, unmatched=unmatched)
            return
        state = passes.get(id(root))
        if state is None or state[0] is not root:
            entries = _collect(root)
            p = recipe.plan([e.param for e in entries])
            _check_unmatched(p, unmatched, ("error", "ignore"), buffers_too=False)
            by_owner: dict[int, list] = {}
            for e, pe in zip(entries, p.entries, strict=True):
                if pe.resolved is not None:
                    by_owner.setdefault(id(e.owner), []).append((e, pe.resolved))
            state = passes[id(root)] = (root, by_owner)
        todo = state[1].pop(id(module), [])
        if todo:
            _write_all([e for e, _ in todo], [r for _, r in todo], root_key,
                       [e.tensor for e, _ in todo])
        if module is root:
            del passes[id(root)]

    init_fn.recipe = recipe
    return init_fn


# ------------------------------------------------------------------ materialize


def materialize(module: nn.Module, device="cpu", recipe="torch_default", *, key=None,
                unmatched: str = "error") -> nn.Module:
    """Give a module built on the ``meta`` device real, initialized tensors on ``device``.

    Torch's own initialization never runs. Every meta parameter and buffer is
    replaced by a new tensor on ``device`` (parameters keep ``requires_grad``,
    buffers keep persistence) and written by ``recipe`` with the keys of
    :func:`initialize`, so ``materialize(meta_model, key=k)`` equals
    ``initialize(real_model, key=k)``. Tied parameters (GPT-2's
    ``lm_head.weight is wte.weight``) stay tied: one new tensor is made per
    meta tensor and set on every module that held it (``Module.to_empty`` would
    break the tie). Tensors that are already real are left as they are. Tensors
    are drawn chunk by chunk, so the peak memory is the model plus one chunk.

    It is transactional: every rule, shape, dtype and value is checked before
    anything is allocated, and if anything fails afterwards (an allocation, a
    draw, ``KeyboardInterrupt``) every module gets its original meta tensors
    back (the same objects, ties and buffer persistence intact; without ``key``,
    torch's global RNG is rewound too) before the error propagates. No tensor is
    ever left holding ``empty`` garbage.

    Args:
        module: a module whose tensors are (partly) on ``meta``.
        device: where the new tensors live.
        recipe, key: as :func:`initialize`.
        unmatched: ``"error"`` (default): parameters *or buffers* no rule matches
            (e.g. a causal-mask buffer made in ``__init__``) raise
            :class:`~xinit.core.recipes.UnmatchedError` naming every one, before
            anything is allocated; ``"zeros"``: they are zero-filled, with a
            warning naming them.

    Returns:
        ``module``.

    >>> with torch.device("meta"):
    ...     net = torch.nn.Linear(3, 2)
    >>> materialize(net, key=0).weight.device.type
    'cpu'
    """
    recipe = get_recipe(recipe)
    device = torch.device(device)
    entries = [e for e in _collect(module) if e.tensor.is_meta]
    p = recipe.plan([e.param for e in entries])
    _check_unmatched(p, unmatched, ("error", "zeros"), buffers_too=True)
    todo = [(e, pe.resolved) for e, pe in zip(entries, p.entries, strict=True) if pe.resolved is not None]
    zeros = [e for e, pe in zip(entries, p.entries, strict=True) if pe.resolved is None]
    for e, res in todo:  # everything _write_all checks, before anything is allocated
        t = e.tensor
        if t.numel():
            sp = res.spec.plan(tuple(t.shape))
            _bridge.check_dtype(t, res.spec, sp, f"materialize ({e.param.name})")
            _bridge.check_params(sp, t, f"materialize ({e.param.name})")
    rng_state = torch.get_rng_state() if key is None else None
    swapped: list[tuple[nn.Module, str, torch.Tensor]] = []
    try:
        root_key = _root_key(key)
        new = _swap_in_real_tensors(module, device, swapped)
        # One chunk in flight (not two): materialize is where peak memory matters most.
        _write_all([e for e, _ in todo], [r for _, r in todo], root_key,
                   [new[id(e.tensor)] for e, _ in todo], ahead=False)
        with torch.no_grad():
            for e in zeros:
                new[id(e.tensor)].zero_()
    except BaseException:
        _swap_back(swapped)
        if rng_state is not None:
            torch.set_rng_state(rng_state)
        raise
    if zeros:
        warnings.warn(
            f"materialize: recipe {recipe.name!r} has no rule for {', '.join(e.param.name for e in zeros)}; "
            "they were filled with zeros",
            stacklevel=2,
        )
    return module


def _swap_in_real_tensors(module: nn.Module, device: torch.device,
                          swapped: list[tuple[nn.Module, str, torch.Tensor]]) -> dict[int, torch.Tensor]:
    """Replace every meta parameter and buffer by a new tensor on ``device`` (one per meta
    tensor, so ties stay), recording each replacement in ``swapped`` as it is made."""
    new: dict[int, torch.Tensor] = {}
    for m in module.modules():
        for attr, t in list(m._parameters.items()):
            if t is not None and t.is_meta:
                if id(t) not in new:
                    new[id(t)] = nn.Parameter(torch.empty_like(t, device=device),
                                              requires_grad=t.requires_grad)
                swapped.append((m, attr, t))
                setattr(m, attr, new[id(t)])
        for attr, t in list(m._buffers.items()):
            if t is not None and t.is_meta:
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
