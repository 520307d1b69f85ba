"""The torch side of a port: every ``state_dict`` entry of a module, with its layer and layout."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from xinit.core import porting
from xinit.core.layout import TORCH, Layout
from xinit.torch.model import classify, plain_attrs

_NP = {
    torch.float16: np.dtype(np.float16),
    torch.float32: np.dtype(np.float32),
    torch.float64: np.dtype(np.float64),
    torch.int64: np.dtype(np.int64),
    torch.int32: np.dtype(np.int32),
    torch.int16: np.dtype(np.int16),
    torch.int8: np.dtype(np.int8),
    torch.uint8: np.dtype(np.uint8),
    torch.bool: np.dtype(np.bool_),
}


def numpy_dtype(dtype: torch.dtype) -> np.dtype:
    """The numpy dtype of a torch dtype (bfloat16 via ml_dtypes)."""
    if dtype == torch.bfloat16:
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    try:
        return _NP[dtype]
    except KeyError:
        raise TypeError(f"xinit.port: tensors of dtype {dtype} are not supported") from None


def torch_dtype(dtype: np.dtype) -> torch.dtype:
    dtype = np.dtype(dtype)
    if dtype.name == "bfloat16":
        return torch.bfloat16
    for t, n in _NP.items():
        if n == dtype:
            return t
    raise TypeError(f"xinit.port: arrays of dtype {dtype} are not supported")


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A numpy view of a CPU tensor (a copy from other devices); bfloat16 kept."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(numpy_dtype(torch.bfloat16))
    return t.numpy()


def from_numpy(a: np.ndarray) -> torch.Tensor:
    """A torch tensor sharing ``a``'s memory where torch can (positive strides), else a copy.

    ``a`` may be read-only (a JAX array's memory): the result is only ever a
    source to copy from (call under :func:`read_only_sources`).
    """
    if any(s < 0 for s in a.strides):
        a = np.ascontiguousarray(a)
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


@contextlib.contextmanager
def read_only_sources():
    """Silence torch's warning about tensors made from read-only numpy arrays (JAX's
    memory), which :func:`from_numpy` only ever copies from."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        yield


@dataclass
class TorchEntry:
    """One ``state_dict`` key of a torch module.

    ``shape`` is as stored; ``layout`` reads it in canonical order (a registered
    custom layer's weight), so ``canonical_shape`` is what the Flax side is
    compared with. ``alias_of``: the first name of a tied tensor.
    """

    name: str
    unit: str  # the layer a port treats it in (MultiheadAttention for out_proj.*)
    unit_type: str  # that layer's class name
    kind: str
    type_name: str
    qualname: str
    layout: Layout
    shape: tuple[int, ...]
    dtype: np.dtype
    buffer: bool
    tensor: torch.Tensor
    alias_of: str | None = None
    attrs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ops(self) -> tuple:
        return porting.layout_ops(self.layout, len(self.shape))

    @property
    def canonical_shape(self) -> tuple[int, ...]:
        shape = self.shape
        for op in self.ops:
            shape = op.shape(shape)
        return shape


#: Torch-only state that a Flax model never holds and a port does not report.
TORCH_ONLY = ("num_batches_tracked",)


def entries(model: nn.Module) -> tuple[dict[str, TorchEntry], dict[str, tuple[str, str]]]:
    """Every ``state_dict`` key of ``model`` (ties included, as aliases), and its module tree.

    Returns ``(entries by name, module name -> (kind, class name))``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"xinit.port: torch_model must be a torch.nn.Module; got {type(model).__name__}")
    parents: dict[int, tuple[nn.Module, str]] = {}
    out: dict[str, TorchEntry] = {}
    first: dict[int, str] = {}
    modules: dict[str, tuple[str, str]] = {}
    for prefix, m in model.named_modules(remove_duplicate=False):
        for cname, child in m.named_children():
            parents.setdefault(id(child), (m, cname))
        parent = parents.get(id(m))
        kind, _, layout = classify(m, parent)
        modules.setdefault(prefix, (kind, type(m).__name__))
        unit, unit_module = prefix, m
        if kind == "attention" and parent is not None and not isinstance(m, nn.MultiheadAttention):
            unit, unit_module = prefix.rpartition(".")[0], parent[0]  # MultiheadAttention.out_proj
        attrs = plain_attrs(unit_module)
        members = [(n, t, False) for n, t in m._parameters.items()]
        members += [(n, t, True) for n, t in m._buffers.items() if n not in m._non_persistent_buffers_set]
        for attr, t, is_buffer in members:
            if t is None:
                continue
            name = f"{prefix}.{attr}" if prefix else attr
            if name in out:
                continue
            out[name] = TorchEntry(
                name=name, unit=unit, unit_type=type(unit_module).__name__, kind=kind,
                type_name=type(m).__name__,
                qualname=f"{type(m).__module__}.{type(m).__qualname__}",
                layout=layout if attr == "weight" else TORCH,
                shape=tuple(t.shape), dtype=numpy_dtype(t.dtype), buffer=is_buffer, tensor=t,
                alias_of=first.get(id(t)), attrs=attrs,
            )
            first.setdefault(id(t), name)
    return out, modules
