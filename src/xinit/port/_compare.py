"""Forward equivalence: run a torch model and a Flax model on the same inputs and compare."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from xinit.flax._structure import trace

from ._convert import _flax_values, _pair
from ._flax import canonical_path
from ._torch import from_numpy, to_numpy

__all__ = ["compare", "Comparison", "OutputDiff"]

#: Default relative tolerance per output dtype: a few hundred units in the last
#: place (torch and XLA sum and fuse in different orders), more for half precision.
RTOL = {"float64": 1e-9, "float32": 1e-4, "float16": 1e-2, "bfloat16": 5e-2}


@dataclass(frozen=True)
class OutputDiff:
    """One output (or one layer's output) compared: ``max|torch - flax|`` and that over ``max|flax|``."""

    name: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    ok: bool

    def __str__(self) -> str:
        mark = "ok" if self.ok else "DIFFERS"
        return f"{self.name} {self.shape}: max abs {self.max_abs:.3g}, max rel {self.max_rel:.3g}  {mark}"


@dataclass(frozen=True)
class Comparison:
    """The result of :func:`compare`: per output the differences, and where they begin.

    Attributes:
        outputs: one :class:`OutputDiff` per output array.
        first_divergence: when an output differs, the first layer (in torch's
            execution order) whose own output already differs, as an
            :class:`OutputDiff` named ``"torch name / Flax path"``; None otherwise.
        warnings: hyper-parameters that differ between matched layers.
        rtol, atol: the tolerance used (``max_abs <= atol + rtol * max|flax|``).
    """

    outputs: tuple[OutputDiff, ...]
    first_divergence: OutputDiff | None
    warnings: tuple[str, ...]
    rtol: float
    atol: float

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outputs)

    def __str__(self) -> str:
        lines = [f"compare (rtol {self.rtol:g}, atol {self.atol:g}): "
                 + ("outputs agree" if self.ok else "outputs DIFFER")]
        lines += [f"  output {o}" for o in self.outputs]
        if self.first_divergence is not None:
            lines.append(f"  first diverging layer: {self.first_divergence}")
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _layout_map(spec: str) -> Callable[[np.ndarray], np.ndarray]:
    """``"NHWC->NCHW"``: arrays with as many dims as the pattern are permuted; others kept."""
    m = re.fullmatch(r"\s*(\w+)\s*->\s*(\w+)\s*", spec)
    if m is None or sorted(m[1]) != sorted(m[2]) or len(set(m[1])) != len(m[1]):
        raise ValueError(f"a layout map must look like 'NHWC->NCHW' (a permutation of letters); "
                         f"got {spec!r}")
    perm = tuple(m[1].index(c) for c in m[2])

    def apply(x):
        return np.transpose(x, perm) if np.ndim(x) == len(perm) else x

    return apply


def _inverse_spec(spec: str) -> str:
    a, b = (s.strip() for s in spec.split("->"))
    return f"{b}->{a}"


def _as_map(value, default=None):
    if value is None:
        return default or (lambda x: x)
    if isinstance(value, str):
        return _layout_map(value)
    if callable(value):
        return value
    raise TypeError(f"expected None, a 'NHWC->NCHW' string or a callable; got {value!r}")


def _arrays(out) -> list:
    """The array leaves of a model output, in order (tuples, lists, dicts flattened)."""
    if isinstance(out, (torch.Tensor, np.ndarray)) or hasattr(out, "__array__"):
        return [out]
    if isinstance(out, Mapping):
        return [a for v in out.values() for a in _arrays(v)]
    if isinstance(out, (tuple, list)):
        return [a for v in out for a in _arrays(v)]
    return []


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return to_numpy(x)
    return np.asarray(x)


def _diff(name, t: np.ndarray, f: np.ndarray, rtol, atol) -> OutputDiff:
    t64, f64 = t.astype(np.float64), f.astype(np.float64)
    max_abs = float(np.max(np.abs(t64 - f64))) if t64.size else 0.0
    scale = float(np.max(np.abs(f64))) if f64.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    return OutputDiff(name, tuple(f.shape), max_abs, max_rel, bool(max_abs <= atol + rtol * scale))


def compare(torch_model: nn.Module, flax_model, variables, *inputs, input_map=None,
            output_map=None, rename=None, rtol: float | None = None, atol: float = 0.0,
            torch_kwargs: Mapping | None = None, flax_kwargs: Mapping | None = None) -> Comparison:
    """Run both models on the same inputs and report how far their outputs are apart.

    Args:
        torch_model: the torch model (run in eval mode under ``torch.no_grad()``;
            its mode is restored afterwards).
        flax_model: the linen module (applied to ``variables``) or nnx module
            (``variables`` None), configured for inference (e.g.
            ``use_running_average=True``, ``deterministic=True``).
        variables: linen variables (a dict or a checkpoint path); None for nnx.
        *inputs: numpy arrays in the Flax model's layout.
        input_map: how an input becomes torch's: a layout map such as
            ``"NHWC->NCHW"`` (applied to inputs with that many dimensions) or a
            callable on each numpy input.
        output_map: how a torch output (and a layer's output) becomes Flax's
            layout; default: the inverse of a string ``input_map``
            (``"NCHW->NHWC"``), else unchanged.
        rename: as for :func:`xinit.port.torch_to_flax` (to pair the layers).
        rtol, atol: an output agrees when ``max|torch - flax| <= atol + rtol *
            max|flax|``; ``rtol`` defaults by the output's dtype (:data:`RTOL`).
        torch_kwargs, flax_kwargs: extra keyword arguments of each forward.

    Returns:
        a :class:`Comparison`. When an output differs, its
        ``first_divergence`` names the first layer, in torch's execution order,
        whose own output already differs (torch forward hooks against Flax's
        captured intermediates: ``capture_intermediates`` in linen,
        ``nnx.capture`` in nnx).
    """
    traced = trace(flax_model, *inputs) if not hasattr(flax_model, "framework") else flax_model
    if traced.framework == "nnx" and variables is not None:
        raise TypeError("compare: an nnx module runs with its own state; pass variables=None")
    to_torch = _as_map(input_map)
    default_out = _layout_map(_inverse_spec(input_map)) if isinstance(input_map, str) else None
    to_flax = _as_map(output_map, default_out)
    values, _ = _flax_values(traced, variables)
    pr = _pair(torch_model, traced, (), {}, state_dict=None, rename=rename,
               flax_values=values if traced.framework == "linen" else None)
    # layer pairs: torch module name -> Flax module path (the modules whose outputs compare)
    pairs: dict[str, tuple[str, ...]] = {}
    for name, (unit, _) in pr.matched.items():
        pairs.setdefault(pr.torch[name].unit, canonical_path(unit))

    flax_out, _ = _run_flax(traced, values, inputs, dict(flax_kwargs or {}), capture=False)
    torch_out, records = _run_torch(torch_model, [to_torch(np.asarray(x)) for x in inputs],
                                    dict(torch_kwargs or {}), set(pairs))
    t_arrays = [to_flax(_np(a)) for a in _arrays(torch_out)]
    f_arrays = [_np(a) for a in _arrays(flax_out)]
    if len(t_arrays) != len(f_arrays):
        raise ValueError(f"compare: the torch model returned {len(t_arrays)} arrays and the Flax "
                         f"model {len(f_arrays)}")
    outs = []
    for i, (t, f) in enumerate(zip(t_arrays, f_arrays, strict=True)):
        if t.shape != f.shape:
            raise ValueError(f"compare: output {i} has shape {t.shape} in torch (after output_map) "
                             f"and {f.shape} in Flax; pass output_map=")
        tol = RTOL.get(f.dtype.name, 1e-4) if rtol is None else rtol
        outs.append(_diff(str(i), t, f, tol, atol))
    first = None
    inter = {}
    if not all(o.ok for o in outs):
        try:
            _, inter = _run_flax(traced, values, inputs, dict(flax_kwargs or {}), capture=True)
        except Exception:  # noqa: BLE001 - e.g. nnx.capture inside nnx.scan (nnx.RNN): no locating
            inter = {}
        for name, out in records:
            path = pairs.get(name)
            got = inter.get(path)
            if got is None:
                continue
            t_list = [to_flax(_np(a)) for a in _arrays(out)]
            f_list = [_np(a) for a in _arrays(got)]
            if not t_list or not f_list or t_list[0].shape != f_list[0].shape:
                continue
            tol = RTOL.get(f_list[0].dtype.name, 1e-4) if rtol is None else rtol
            d = _diff(f"{name} / {'/'.join(path) or '(root)'}", t_list[0], f_list[0], tol, atol)
            if not d.ok:
                first = d
                break
    tol = RTOL.get(f_arrays[0].dtype.name, 1e-4) if (rtol is None and f_arrays) else (rtol or 0.0)
    return Comparison(tuple(outs), first, tuple(pr.warnings), tol, atol)


def _run_torch(model: nn.Module, inputs, kwargs, wanted: set[str]):
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    args = [from_numpy(np.ascontiguousarray(x)).to(device) for x in inputs]
    records: list[tuple[str, object]] = []
    handles = []
    for name, m in model.named_modules():
        if name in wanted:
            handles.append(m.register_forward_hook(
                lambda mod, a, out, name=name: records.append((name, out))))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            out = model(*args, **kwargs)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return out, records


def _run_flax(traced, variables, inputs, kwargs, capture: bool):
    """(output, {module path: that module's __call__ output} when ``capture``)."""
    import jax.numpy as jnp

    args = [jnp.asarray(x) for x in inputs]
    inter: dict[tuple[str, ...], object] = {}
    if not capture:
        if traced.framework == "nnx":
            return traced.module(*args, **kwargs), inter
        return traced.module.apply(variables, *args, **kwargs), inter
    if traced.framework == "nnx":
        from flax import nnx

        out, state = nnx.capture(traced.module, nnx.Intermediate,
                                 method_outputs=nnx.Intermediate)(*args, **kwargs)
        for path, var in nnx.to_flat_state(state):
            if str(path[-1]) == "__call__":
                value = var.get_value() if hasattr(var, "get_value") else var.value
                inter[tuple(str(p) for p in path[:-1])] = value[0] if isinstance(value, tuple) else value
        return out, inter
    from flax import traverse_util

    out, state = traced.module.apply(variables, *args, capture_intermediates=True,
                                     mutable=["intermediates"], **kwargs)
    flat = traverse_util.flatten_dict(dict(state.get("intermediates", {})))
    for path, value in flat.items():
        if str(path[-1]) == "__call__":
            inter[tuple(str(p) for p in path[:-1])] = value[0] if isinstance(value, tuple) else value
    return out, inter
