"""Pairing a torch model with a Flax model, and converting between their checkpoints."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np
import torch
from torch import nn

from xinit.core import host_memory, porting
from xinit.core.engine import x64_scope
from xinit.core.porting import PlanRow, PortError, PortPlan, PortReport, Problem, Tensor, Zeros
from xinit.flax._structure import Traced, trace

from . import _files
from ._flax import Unit, canonical_path, units_of, variables_of
from ._torch import TORCH_ONLY, TorchEntry, entries, from_numpy, read_only_sources, to_numpy

__all__ = ["torch_to_flax", "flax_to_torch", "plan", "convert_file"]


# ------------------------------------------------------------------ torch data


class _TorchSource:
    """Where the torch tensors' values come from: the module itself or a state dict."""

    def __init__(self, entries: dict[str, TorchEntry], state_dict):
        self.entries = entries
        self.groups: dict[str, list[str]] = {}  # primary name -> every name of that tensor
        for e in entries.values():
            self.groups.setdefault(e.alias_of or e.name, []).append(e.name)
        if isinstance(state_dict, (str, Path)):
            state_dict = _files.load_torch_state(state_dict, framework="numpy")
        if state_dict is not None and not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping or a path; got {type(state_dict).__name__}")
        self.state = state_dict

    def key(self, entry: TorchEntry) -> str | None:
        """The state-dict key holding ``entry``'s values (an alias of a tie counts), or None."""
        if self.state is None:
            return entry.name
        for name in self.groups[entry.alias_of or entry.name]:
            if name in self.state:
                return name
        return None

    def shape(self, entry: TorchEntry) -> tuple[int, ...] | None:
        key = self.key(entry)
        if key is None:
            return None
        if self.state is None:
            return entry.shape
        if isinstance(self.state, _files.LazySafetensors):
            return self.state.shape(key)
        return tuple(self.state[key].shape)

    def dtype(self, entry: TorchEntry) -> np.dtype:
        key = self.key(entry)
        if self.state is None or key is None:
            return entry.dtype
        if isinstance(self.state, _files.LazySafetensors):
            return self.state.dtype(key)
        value = self.state[key]
        if isinstance(value, torch.Tensor):
            from ._torch import numpy_dtype

            return numpy_dtype(value.dtype)
        return np.dtype(value.dtype)

    def read(self, entry: TorchEntry) -> np.ndarray:
        """The stored values (torch layout) as a numpy array, a view where possible."""
        if self.state is None:
            if entry.tensor.is_meta:
                raise ValueError(
                    f"{entry.name} is on the meta device: pass state_dict= (a mapping or a "
                    "checkpoint path) to read its values")
            return to_numpy(entry.tensor)
        value = self.state[self.key(entry)]
        return to_numpy(value) if isinstance(value, torch.Tensor) else np.asarray(value)

    def unexpected_keys(self) -> list[str]:
        if self.state is None:
            return []
        return [k for k in self.state if k not in self.entries]

    @property
    def is_meta(self) -> bool:
        return self.state is None and any(e.tensor.is_meta for e in self.entries.values())


# --------------------------------------------------------------------- pairing


def _info(layer):
    return None if layer is None else (layer.kind, layer.type_name, layer.auto_index)


def _assign_names(units: list[Unit], traced: Traced, modules, renamer) -> None:
    containers = {p: layer.container for p, layer in traced.layers.items()}
    siblings: dict[str, set[str]] = {}
    for path in traced.layers:
        segs = porting.canonical_segments(path, containers)
        for i, (seg, _) in enumerate(segs):
            siblings.setdefault(".".join(s for s, _ in segs[:i]), set()).add(seg)
    resolver = porting.NameResolver(modules)
    for unit in units:
        cpath = canonical_path(unit)
        segs = porting.canonical_segments(cpath, containers)
        raw = ".".join(s for s, _ in segs)
        resolved = None
        for move in unit.conversion.to_canonical:
            local = move.target
            full = f"{raw}.{local}" if raw else local
            if renamer is not None:
                renamed = renamer(full)
                if renamed != full:
                    unit.names[local] = renamed
                    continue
            if resolved is None:
                infos = [_info(traced.layers.get(cpath[:end])) for _, end in segs]
                resolved = resolver.resolve([s for s, _ in segs], infos, siblings)
            unit.names[local] = f"{resolved}.{local}" if resolved else local


@dataclass
class _Pairing:
    traced: Traced
    units: list[Unit]
    torch: dict[str, TorchEntry]
    source: _TorchSource
    matched: dict[str, tuple[Unit, str]] = field(default_factory=dict)  # torch name -> (unit, local)
    flax_only: list[Problem] = field(default_factory=list)
    torch_only: list[Problem] = field(default_factory=list)
    mismatched: list[Problem] = field(default_factory=list)
    bad: set[str] = field(default_factory=set)  # torch names that cannot be converted
    warnings: list[str] = field(default_factory=list)


def _declare_hint(entry: TorchEntry, expected: tuple[int, ...], kind: str) -> str:
    layout = ""
    shape = entry.shape
    if len(shape) == 2 and len(expected) == 2 and shape == expected[::-1] and shape != expected:
        layout = ", layout=xinit.Layout(in_axis=0, out_axis=1)"
    elif len(shape) >= 2:
        layout = ", layout=xinit.TORCH"
    return f"xinit.register_layer({entry.qualname!r}, kind={kind!r}{layout})"


def _pair(torch_model: nn.Module, flax_model, example_args, example_kwargs, *, state_dict,
          rename, flax_values=None) -> _Pairing:
    traced = trace(flax_model, *example_args, **example_kwargs)
    table, modules = entries(torch_model)
    source = _TorchSource(table, state_dict)
    variables = variables_of(traced, flax_values)
    units = units_of(traced, variables)
    _assign_names(units, traced, modules, porting.as_renamer(rename))
    pr = _Pairing(traced, units, table, source)
    produced: dict[str, tuple[Unit, str]] = {}
    consumed: set[str] = set()
    seen_units: set[tuple[str, str]] = set()
    for unit in units:
        for problem in unit.conversion.problems:
            pr.mismatched.append(Problem("mismatched", "/".join(unit.path) or "(root)",
                                         detail=f"{unit.type_name}: {problem}"))
        if unit.conversion.problems:
            pr.bad.update(unit.names.values())
            continue
        shapes = unit.shapes()
        for move in unit.conversion.to_canonical:
            full = unit.names[move.target]
            expected = porting.shape_of(move.expr, shapes)
            flax_side = ", ".join(f"{unit.display(s)} {shapes[s]}" for s in porting.sources(move.expr))
            if full in produced:
                pr.mismatched.append(Problem("mismatched", full, destination=flax_side,
                                             detail=f"also made from {'/'.join(produced[full][0].path)}"))
                pr.bad.add(full)
                continue
            produced[full] = (unit, move.target)
            entry = table.get(full)
            if entry is None:
                pr.flax_only.append(Problem("", full, detail=f"Flax {flax_side} -> torch {expected}"))
                continue
            consumed.add(entry.alias_of or full)
            problem = _check_pair(entry, unit, expected, source, flax_side, _weight_of(table, unit, entry))
            if problem is not None:
                pr.mismatched.append(problem)
                pr.bad.add(full)
                continue
            pr.matched[full] = (unit, move.target)
            key = (entry.unit, "/".join(unit.path))
            if key not in seen_units:
                seen_units.add(key)
                pr.warnings += porting.hyper_parameter_warnings(
                    entry.unit or "(root)", unit.kind, entry.unit_type, entry.attrs,
                    unit.type_name, unit.attrs)
    for name, entry in table.items():
        primary = entry.alias_of or name
        if primary in consumed or name.rpartition(".")[2] in TORCH_ONLY:
            continue
        if entry.alias_of is not None and entry.alias_of in table:
            continue  # reported (or not) under its first name
        if source.key(entry) is None and source.state is not None:
            continue  # neither in the model's checkpoint nor needed
        pr.torch_only.append(Problem("", name, detail=f"torch {entry.type_name} {entry.shape}"))
    for key in source.unexpected_keys():
        if key.rpartition(".")[2] in TORCH_ONLY:
            continue
        pr.torch_only.append(Problem("", key, detail="in the state dict, not in the torch model"))
    return pr


def _weight_of(table, unit: Unit, entry: TorchEntry):
    """(torch weight entry, the Flax side's canonical weight shape) of ``entry``'s layer, for
    declaration hints; None when either is missing."""
    weight = table.get(f"{entry.name.rpartition('.')[0]}.weight" if "." in entry.name else "weight")
    move = next((m for m in unit.conversion.to_canonical if m.target == "weight"), None)
    if weight is None or move is None:
        return None
    return weight, porting.shape_of(move.expr, unit.shapes())


def _check_pair(entry: TorchEntry, unit: Unit, expected, source: _TorchSource, flax_side: str,
                weight=None):
    stored = source.shape(entry)
    if stored is None:
        return Problem("mismatched", entry.name, destination=flax_side,
                       detail="not in the state dict")
    if entry.kind != unit.kind:
        if entry.kind == "other":
            hint = _declare_hint(*weight, unit.kind) if weight else _declare_hint(entry, expected, unit.kind)
            return Problem("mismatched", entry.name, f"torch {entry.type_name} {stored}", flax_side,
                           f"{entry.type_name} is not a known layer, while Flax's {unit.type_name} is "
                           f"a {unit.kind} layer: declare it, e.g. {hint}")
        if unit.kind == "other":
            qual = unit.layer.qualname if unit.layer is not None else unit.type_name
            return Problem("mismatched", entry.name, f"torch {entry.type_name} {stored}", flax_side,
                           f"Flax's {unit.type_name} is not a known layer, while torch's "
                           f"{entry.type_name} is a {entry.kind} layer: declare it, e.g. "
                           f"xinit.register_layer({qual!r}, kind={entry.kind!r}, layout=xinit.FLAX)")
        return Problem("mismatched", entry.name, f"torch {entry.type_name} {stored}", flax_side,
                       f"layer kinds differ: {entry.kind} vs {unit.kind}")
    canonical = stored
    for op in entry.ops:
        canonical = op.shape(canonical)
    if tuple(canonical) != tuple(expected):
        detail = f"canonical shapes differ: torch {tuple(canonical)} vs Flax {tuple(expected)}"
        if sorted(canonical) == sorted(expected) and len(stored) >= 2:
            detail += (f"; if {entry.type_name} stores this weight in another order, declare it: "
                       f"{_declare_hint(entry, expected, entry.kind)} (now read with layout "
                       f"{entry.layout!r})")
        return Problem("mismatched", entry.name, f"torch {entry.type_name} {tuple(stored)}", flax_side, detail)
    return None


def _report(pr: _Pairing, direction: str, converted, extra: list[Problem] = ()) -> PortReport:
    to_flax = direction == "torch_to_flax"
    missing = pr.flax_only if to_flax else pr.torch_only
    unexpected = pr.torch_only if to_flax else pr.flax_only
    lossy = sorted({m.lossy for u in pr.units for m in (u.conversion.to_flax if to_flax else ())
                    if m.lossy})
    return PortReport(
        direction, tuple(converted),
        tuple(Problem("missing", p.name, p.source, p.destination, p.detail) for p in missing),
        tuple(Problem("unexpected", p.name, p.source, p.destination, p.detail) for p in unexpected),
        tuple(pr.mismatched) + tuple(extra), tuple(pr.warnings), tuple(lossy))


_HINT = ("Map names with rename= (a callable, or a list of (regex, replacement) pairs applied in "
         "order to the Flax names shown); pass strict=False to convert what matches")


# ------------------------------------------------------------- torch -> flax


def _substitute(expr, sub: Callable[[str], tuple[str, tuple]]):
    """``expr`` reading ``sub(name)`` = (new name, operations to apply first)."""
    if isinstance(expr, Tensor):
        name, ops = sub(expr.name)
        return Tensor(name, tuple(ops) + expr.ops)
    if isinstance(expr, Zeros):
        return expr
    return type(expr)(tuple(_substitute(p, sub) for p in expr.parts))


def _then(expr, ops: tuple):
    """``expr`` followed by ``ops`` (a torch layout applied to a canonical tensor)."""
    if not ops:
        return expr
    if isinstance(expr, Tensor):
        return Tensor(expr.name, expr.ops + tuple(ops))
    raise NotImplementedError("xinit.port: a declared torch layout on a tensor Flax keeps in "
                              "several pieces (attention, recurrent cells) is not supported")


def _flax_jobs(pr: _Pairing, cast: bool):
    """Per convertible Flax variable: (unit, move, FlaxVar, expression over state-dict keys,
    dtype, the canonical names it reads)."""
    jobs = []
    for unit in pr.units:
        if unit.conversion.problems:
            continue

        def sub(local, unit=unit):
            full = unit.names[local]
            entry = pr.torch[full]
            return pr.source.key(entry), entry.ops

        for move in unit.conversion.to_flax:
            srcs = porting.sources(move.expr)
            names = [unit.names[s] for s in srcs]
            if any(n not in pr.matched or n in pr.bad for n in names):
                continue
            var = unit.variables[move.target]
            expr = _substitute(move.expr, sub)
            src_dtype = pr.source.dtype(pr.torch[names[0]]) if names else var.dtype
            dtype = var.dtype if cast else src_dtype
            jobs.append((unit, move, var, expr, np.dtype(dtype), names))
    return jobs


def _zero_checks(pr: _Pairing) -> list[Problem]:
    out = []
    for unit in pr.units:
        for t in unit.conversion.must_be_zero:
            full = unit.names.get(t.name)
            if full not in pr.matched:
                continue
            entry = pr.torch[full]
            values = porting.evaluate(Tensor(pr.source.key(entry), entry.ops + t.ops), _reader(pr))
            if np.any(values != 0):
                out.append(Problem("mismatched", full, detail=(
                    f"{' '.join(str(op) for op in t.ops)} is not zero, and Flax's {unit.type_name} has no place for it "
                    "(its forward pass would differ); use linen's GRUCell, which keeps it")))
    return out


def _reader(pr: _Pairing):
    """``get(state-dict key)``: the torch values stored under it, read once per layer."""
    by_key: dict[str, TorchEntry] = {}
    for e in pr.torch.values():
        k = pr.source.key(e)
        if k is not None:
            by_key.setdefault(k, e)
    cache: dict[str, np.ndarray] = {}

    def get(key):
        value = cache.get(key)
        if value is None:
            value = cache[key] = pr.source.read(by_key[key])
        return value

    get.cache = cache
    return get


def _copy_into(out: np.ndarray, value: np.ndarray) -> None:
    """``out[...] = value`` where ``value`` may be a permuted view of a contiguous array:
    then the copy walks the source in its memory order, in cache-sized row blocks."""
    if value.dtype == out.dtype and value.ndim >= 2 and not value.flags.c_contiguous:
        order = tuple(int(i) for i in np.argsort([-s for s in value.strides], kind="stable"))
        base = value.transpose(order)
        if base.flags.c_contiguous:
            host_memory.copy_canonical(out.transpose(order), base)
            return
    np.copyto(out, value, casting="unsafe")


def _materialize(value: np.ndarray, dtype: np.dtype) -> jax.Array:
    """A new jax.Array with ``value``'s contents in ``dtype`` (one copy on the CPU)."""
    dtype = np.dtype(dtype)
    if (value.dtype == dtype and value.ndim >= 2 and not value.flags.c_contiguous
            and all(s > 0 for s in value.strides)):
        with x64_scope(dtype):  # XLA's own transposing copy (a permuted kernel)
            return jax.device_put(value)
    if host_memory.on_host():
        out = host_memory.aligned_empty(value.shape, dtype)
        _copy_into(out, value)
        with x64_scope(dtype):
            return host_memory.adopt(out)
    with x64_scope(dtype):
        return jax.device_put(np.ascontiguousarray(value, dtype=dtype))


def torch_to_flax(torch_model: nn.Module, flax_model, *example_args, state_dict=None, rename=None,
                  strict: bool = True, cast: bool = False, **example_kwargs):
    """Convert a PyTorch model's weights into a Flax model's variables.

    Layer kinds and layouts are read from the two models (torch module classes;
    the linen module traced on the example inputs; the nnx module graph; custom
    classes from :func:`xinit.register_layer`), never guessed from a tensor's
    rank. Names: the canonical names ``xinit.flax.describe`` shows (linen's
    ``Sequential`` ``layers_0`` and nnx's ``layers.0`` read as torch's ``0``),
    then ``rename=``, then what is left is matched against the torch model's
    modules (``blocks_0`` -> ``blocks.0``; linen's automatic ``Dense_1`` -> the
    second linear child of the same parent).

    Args:
        torch_model: an ``nn.Module`` on any device, ``meta`` included (then the
            values come from ``state_dict``).
        flax_model: a linen Module (traced from ``example_args``/
            ``example_kwargs`` with ``jax.eval_shape``: nothing is computed), an
            nnx Module (written in place), or ``xinit.flax.trace(...)``'s result.
        *example_args, **example_kwargs: the linen model's example inputs.
        state_dict: the torch values to use instead of the module's own: a
            mapping, or a checkpoint path (``.pt``/``.bin`` loaded with
            ``torch.load(weights_only=True)``; ``.safetensors`` read lazily).
        rename: maps each Flax canonical name to the torch model's name: a
            callable, or an ordered list of ``(regex, replacement)`` pairs.
        strict: True (default): any missing, unexpected or mismatched key raises
            :class:`PortError` listing them all, before anything is written.
            False: convert what matches and return ``(result, report)``.
        cast: False (default): every array keeps its torch dtype. True: cast to
            the dtype the Flax model declares for it.

    Returns:
        linen: the variables dict ``flax_model.init`` would return (``params``,
        ``batch_stats``, ...), as new arrays. nnx: the module, updated in place.
        With ``strict=False``: ``(that, report)``; variables with no source are
        left as ``jax.ShapeDtypeStruct`` (linen) or untouched (nnx).

    Raises:
        PortError: (a ``ValueError``) with ``strict=True``, for every key that
            cannot be converted, each named with both shapes.
    """
    pr = _pair(torch_model, flax_model, example_args, example_kwargs, state_dict=state_dict,
               rename=rename)
    extra = _zero_checks(pr) if (pr.source.state is not None or not pr.source.is_meta) else []
    jobs = _flax_jobs(pr, cast)
    report = _report(pr, "torch_to_flax", [j[2].key for j in jobs], extra)
    if strict and not report.ok:
        raise PortError(report, _HINT)
    if extra:
        bad = {p.name for p in extra}
        jobs = [j for j in jobs if not bad & set(j[5])]
    get = _reader(pr)
    values: dict[tuple[str, ...], Any] = {}
    current = None
    for unit, _, var, expr, dtype, _ in jobs:
        if unit is not current:  # one layer's torch values in memory at a time
            get.cache.clear()
            current = unit
        values[var.path] = _materialize(porting.evaluate(expr, get, dtype), dtype)
    get.cache.clear()
    result = _assemble(pr.traced, values)
    return result if strict else (result, report)


def _assemble(traced: Traced, values: Mapping[tuple[str, ...], Any]):
    if traced.framework == "nnx":
        from flax import nnx

        state = nnx.state(traced.module)
        flat = []
        for path, var in nnx.to_flat_state(state):
            p = tuple(str(x) for x in path)
            flat.append((path, var.replace(values[p]) if p in values else var))
        nnx.update(traced.module, nnx.from_flat_state(flat))
        return traced.module
    from flax import traverse_util
    from flax.core import meta

    flat = traverse_util.flatten_dict(_plain_dict(traced.variables),
                                      is_leaf=lambda _, x: isinstance(x, meta.AxisMetadata))
    out = {}
    for path, leaf in flat.items():
        rest = tuple(str(p) for p in path[1:])
        value = values.get(rest)
        if value is None:
            out[path] = leaf
        elif isinstance(leaf, meta.AxisMetadata):
            out[path] = leaf.replace_boxed(value)
        else:
            out[path] = value
    return traverse_util.unflatten_dict(out)


def _plain_dict(tree):
    if isinstance(tree, Mapping):
        return {k: _plain_dict(v) for k, v in tree.items()}
    return tree


# ------------------------------------------------------------- flax -> torch


def _flatten_keys(tree, prefix=()) -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        path = (*prefix, str(k))
        if isinstance(v, Mapping):
            out.update(_flatten_keys(v, path))
        else:
            out["/".join(path)] = v
    return out


def _flax_values(traced: Traced, variables) -> tuple[Any, Callable[[str], np.ndarray]]:
    """The Flax values to read: (the variables to pair with, ``read(key)``).

    linen: the given variables dict (or its ``params``), or a checkpoint path.
    nnx: None (the module's own state), or a pure dict (``nnx.to_pure_dict``)
    or checkpoint path with those values.
    """
    if isinstance(variables, (str, Path)):
        variables = _files.load_flax_variables(variables)
    if variables is not None and not isinstance(variables, Mapping):
        raise TypeError(f"variables must be a mapping or a checkpoint path; got "
                        f"{type(variables).__name__}")
    if traced.framework == "nnx":
        if variables is not None:
            by_key = _flatten_keys(variables)
        else:
            by_key = {var.key: leaf[1] for var, leaf in variables_of(traced).values()}
        return None, lambda key: np.asarray(by_key[key])
    if variables is None:
        raise TypeError("a linen model needs its variables (a dict or a checkpoint path)")
    if "params" not in variables:
        variables = {"params": variables}
    by_key = {}
    for var, leaf in variables_of(traced, variables).values():
        by_key[var.key] = leaf.unbox() if hasattr(leaf, "unbox") else leaf
    return variables, lambda key: np.asarray(by_key[key])


def _torch_jobs(pr: _Pairing):
    """Per torch tensor the Flax side makes: (entry, expression over Flax keys)."""
    jobs = []
    for full, (unit, local) in pr.matched.items():
        move = next(m for m in unit.conversion.to_canonical if m.target == local)
        entry = pr.torch[full]
        inv = porting._inverse(entry.ops, entry.canonical_shape) if entry.ops else ()
        expr = _then(_substitute(move.expr, lambda s, unit=unit: (unit.variables[s].key, ())), inv)
        jobs.append((entry, expr, unit))
    return jobs


def flax_to_torch(flax_model, variables, torch_model: nn.Module, *example_args, rename=None,
                  strict: bool = True, cast: bool = False, **example_kwargs) -> nn.Module:
    """Write a Flax model's variables into a PyTorch model, in place.

    The reverse of :func:`torch_to_flax`, with the same layer and name logic.
    Every tensor is written with ``copy_`` into the existing one: no new
    Parameter objects, so ties (``lm_head.weight is wte.weight``), optimizer
    references and ``requires_grad`` survive. Exact (bit for bit) for every
    layer pair except recurrent biases: Flax keeps one bias per gate, which goes
    to torch's ``bias_ih`` (``bias_hh`` becomes 0).

    Args:
        flax_model: a linen Module (traced from ``example_args``), an nnx Module
            (its own state is read), or ``xinit.flax.trace(...)``'s result.
        variables: linen: the variables dict (or its ``params``), or a checkpoint
            path (``.msgpack``, ``.safetensors``, an Orbax directory). nnx: None
            (the module's own state is read), or values in ``nnx.to_pure_dict``'s
            layout (a dict or a checkpoint path).
        torch_model: the destination ``nn.Module`` (not on ``meta``).
        rename, strict: as :func:`torch_to_flax`.
        cast: False (default): a Flax array whose dtype differs from its torch
            tensor's is an error. True: convert it to the tensor's dtype.

    Returns:
        ``torch_model`` (with ``strict=False``: ``(torch_model, report)``).

    Raises:
        PortError: with ``strict=True``, for every key that cannot be written.
    """
    traced = trace(flax_model, *example_args, **example_kwargs)
    variables, read_flax = _flax_values(traced, variables)
    pr = _pair(torch_model, traced, (), {}, state_dict=None, rename=rename,
               flax_values=variables if traced.framework == "linen" else None)
    extra = []
    jobs = []
    for entry, expr, unit in _torch_jobs(pr):
        if entry.tensor.is_meta:
            extra.append(Problem("mismatched", entry.name, detail=(
                "the torch tensor is on the meta device: materialize the model first "
                "(e.g. torch_model.to_empty(device='cpu')) or write a file with convert_file")))
            continue
        src = _expr_dtype(expr, unit)
        if src != entry.dtype and not cast:
            extra.append(Problem("mismatched", entry.name, f"Flax {src}", f"torch {entry.dtype}",
                                 "dtypes differ; pass cast=True to convert"))
            continue
        jobs.append((entry, expr))
    report = _report(pr, "flax_to_torch", [e.name for e, _ in jobs], extra)
    if strict and not report.ok:
        raise PortError(report, _HINT)
    arrays = [(entry, porting.evaluate(expr, read_flax)) for entry, expr in jobs]
    conflicts = _tie_conflicts(arrays)
    if conflicts:
        report = _report(pr, "flax_to_torch", [e.name for e, _ in jobs], extra + conflicts)
        if strict:
            raise PortError(report, _HINT)
        bad = {p.name for p in conflicts}
        arrays = [(e, a) for e, a in arrays if e.name not in bad]
    with torch.no_grad(), read_only_sources():
        for entry, value in arrays:
            entry.tensor.copy_(from_numpy(value))
    return torch_model if strict else (torch_model, report)


def _expr_dtype(expr, unit: Unit) -> np.dtype:
    """The dtype of what ``expr`` (over the unit's Flax keys) evaluates to: its first source's."""
    keys = porting.sources(expr)
    by_key = {v.key: v for v in unit.variables.values()}
    return by_key[keys[0]].dtype if keys else np.dtype(np.float32)


def _tie_conflicts(arrays) -> list[Problem]:
    by_tensor: dict[int, list] = {}
    for entry, value in arrays:
        by_tensor.setdefault(id(entry.tensor), []).append((entry, value))
    out = []
    for group in by_tensor.values():
        first_entry, first = group[0]
        for entry, value in group[1:]:
            if not np.array_equal(first, value):
                out.append(Problem("mismatched", entry.name, detail=(
                    f"tied to {first_entry.name} in torch, but the Flax values differ")))
    return out


# ------------------------------------------------------------------------ plan


def plan(torch_model: nn.Module, flax_model, *example_args, state_dict=None, rename=None,
         strict: bool = False, to: str = "flax", **example_kwargs) -> PortPlan:
    """The dry run of :func:`torch_to_flax` (or, ``to="torch"``, :func:`flax_to_torch`).

    Nothing is read or written: ``print(plan(...))`` shows, per destination
    tensor, its source(s), the layer kind, the layout operation (copy,
    transpose, permutation, split, merge, fold), the shapes and dtypes; then the
    missing, unexpected and mismatched keys and the hyper-parameter warnings
    (e.g. LayerNorm epsilon 1e-5 in torch vs 1e-6 in linen).

    Args: as :func:`torch_to_flax`; ``strict=True`` raises :class:`PortError`
    where the conversion would.
    """
    if to not in ("flax", "torch"):
        raise ValueError(f"plan: to must be 'flax' or 'torch'; got {to!r}")
    pr = _pair(torch_model, flax_model, example_args, example_kwargs, state_dict=state_dict,
               rename=rename)
    rows = []
    if to == "flax":
        for unit, move, var, expr, dtype, names in _flax_jobs(pr, False):
            srcs = porting.sources(expr)
            shapes = ", ".join(str(pr.source.shape(pr.torch[n])) for n in names)
            rows.append(PlanRow(", ".join(srcs), var.key, unit.kind, porting.describe(expr), shapes,
                                var.shape, f"{np.dtype(dtype).name}", move.lossy and "lossy"))
        direction = "torch_to_flax"
    else:
        for entry, expr, unit in _torch_jobs(pr):
            keys = porting.sources(expr)
            by_key = {v.key: v for v in unit.variables.values()}
            shapes = ", ".join(str(by_key[k].shape) for k in keys)
            rows.append(PlanRow(", ".join(keys), entry.name, unit.kind, porting.describe(expr), shapes,
                                entry.shape, by_key[keys[0]].dtype.name if keys else "",
                                "bias_hh = 0" if not keys else ""))
        direction = "flax_to_torch"
    report = _report(pr, direction, [r.destination for r in rows])
    if strict and not report.ok:
        raise PortError(report, _HINT)
    return PortPlan(direction, tuple(rows), report)


# ---------------------------------------------------------------------- files


def convert_file(src, dst, torch_model: nn.Module, flax_model, *example_args, to: str = "flax",
                 rename=None, progress: Callable[[int, int], None] | None = None,
                 **example_kwargs) -> PortReport:
    """Convert a checkpoint file into the other framework's format, tensor by tensor.

    Args:
        src: ``to="flax"``: a torch checkpoint (``.pt``/``.bin``/``.safetensors``);
            ``to="torch"``: Flax variables (``.msgpack``, ``.safetensors``, Orbax
            directory).
        dst: the output: ``to="flax"``: ``.msgpack``, ``.safetensors`` (keys such
            as ``params/conv1/kernel``) or an Orbax directory; ``to="torch"``:
            ``.safetensors``, ``.pt`` or ``.bin``.
        torch_model, flax_model, example_args: the two architectures (a torch
            model built on ``meta`` is enough: only its structure is read).
        progress: called as ``progress(bytes_done, bytes_total)`` after each tensor.

    Safetensors input and safetensors/msgpack output stream one tensor at a
    time (peak memory: the largest layer, not the checkpoint); ``.pt``/``.bin``
    input is memory-mapped; ``.pt``/``.bin`` and Orbax output are built in
    memory. Strict: any missing, unexpected or mismatched key raises
    :class:`PortError` before the output is created.
    """
    if to == "flax":
        out_kind = _files.format_of(dst, flax=True)
        pr = _pair(torch_model, flax_model, example_args, example_kwargs, state_dict=src,
                   rename=rename)
        extra = _zero_checks(pr)
        jobs = _flax_jobs(pr, False)
        report = _report(pr, "torch_to_flax", [j[2].key for j in jobs], extra)
        if not report.ok:
            raise PortError(report, _HINT)
        by_key = {j[2].key: j for j in jobs}
        total = sum(int(np.prod(j[2].shape)) * j[4].itemsize for j in jobs)
        done = [0]
        get = _reader(pr)
        current = [None]

        def produce(key):
            unit, move, var, expr, dtype, _ = by_key[key]
            if current[0] is not unit:  # one layer's sources in memory at a time
                get.cache.clear()
                current[0] = unit
            return np.asarray(porting.evaluate(expr, get, dtype), dtype=dtype)

        def tick(nbytes):
            done[0] += nbytes
            if progress is not None:
                progress(done[0], total)

        if out_kind == "safetensors":
            layout = [(j[2].key, j[2].shape, j[4]) for j in jobs]
            _files.write_safetensors(dst, layout, produce, {"format": "flax"}, tick)
        elif out_kind == "msgpack":
            paths = [tuple(k.split("/")) for k in by_key]
            _files.write_msgpack(dst, paths, lambda p: produce("/".join(p)), tick)
        else:
            tree: dict = {}
            for key in by_key:
                *parents, leaf = key.split("/")
                node = tree
                for p in parents:
                    node = node.setdefault(p, {})
                node[leaf] = np.array(produce(key))
                tick(node[leaf].nbytes)
            _files.save_orbax(dst, tree)
        return report
    if to != "torch":
        raise ValueError(f"convert_file: to must be 'flax' or 'torch'; got {to!r}")
    out_kind = _files.format_of(dst, flax=False)
    traced = trace(flax_model, *example_args, **example_kwargs)
    variables, read_flax = _flax_values(traced, src)
    pr = _pair(torch_model, traced, (), {}, state_dict=None, rename=rename, flax_values=variables)
    jobs = _torch_jobs(pr)
    report = _report(pr, "flax_to_torch", [e.name for e, _, _ in jobs])
    if not report.ok:
        raise PortError(report, _HINT)
    by_name = {e.name: (e, expr, u) for e, expr, u in jobs}
    total = sum(int(np.prod(e.shape)) * _expr_dtype(x, u).itemsize for e, x, u in jobs)
    done = [0]

    def produce_t(name):
        entry, expr, unit = by_name[name]
        return np.asarray(porting.evaluate(expr, read_flax))

    def tick_t(nbytes):
        done[0] += nbytes
        if progress is not None:
            progress(done[0], total)

    if out_kind == "safetensors":
        layout = [(e.name, e.shape, _expr_dtype(x, u)) for e, x, u in jobs]
        _files.write_safetensors(dst, layout, produce_t, {"format": "pt"}, tick_t)
    else:
        state = {}
        for name in by_name:
            state[name] = from_numpy(np.array(produce_t(name)))  # a copy: writable
            tick_t(state[name].numel() * state[name].element_size())
        _files.save_torch(dst, state)
    return report

