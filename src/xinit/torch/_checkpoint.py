"""Reading torch checkpoints: ``.pt``/``.pth``/``.bin`` (``torch.load``) and ``.safetensors``.

Shared by ``xinit.torch`` (``initialize``/``materialize`` with ``state_dict=`` a
path) and ``xinit.port``. ``.safetensors`` files are read one tensor at a time;
torch pickles are memory-mapped where the file allows.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

__all__ = ["LazySafetensors", "load_torch_state"]

# safetensors' dtype names (the format's spec)
_ST_DTYPES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL",
}


class LazySafetensors(Mapping):
    """A ``.safetensors`` file as a mapping name -> array, read one tensor at a time.

    ``framework``: ``"numpy"`` (numpy arrays, bfloat16 via ml_dtypes) or ``"pt"``
    (torch tensors). ``shape(name)``/``dtype(name)`` come from the header
    without reading data.
    """

    def __init__(self, path, framework: str = "numpy"):
        from safetensors import safe_open

        self.path = str(path)
        self.framework = framework
        self._meta: dict[str, tuple[tuple[int, ...], str]] = {}
        with safe_open(self.path, "numpy") as f:
            for k in f.keys():
                s = f.get_slice(k)
                self._meta[k] = (tuple(s.get_shape()), s.get_dtype())

    def __getitem__(self, name: str) -> np.ndarray:
        return self.read(name)

    def read(self, name: str, box: tuple[slice, ...] | None = None):
        """Tensor ``name``, or only its block ``box`` (one ``slice(start, stop)`` per
        dimension), reading only that block's bytes from the file (safetensors'
        ``get_slice``)."""
        from safetensors import safe_open

        if name not in self._meta:
            raise KeyError(name)
        with safe_open(self.path, self.framework) as f:  # no mapping outlives the read
            if not box:  # the whole tensor (a 0-d tensor has no block either)
                return f.get_tensor(name)
            return f.get_slice(name)[box]

    def __contains__(self, name) -> bool:
        return name in self._meta  # from the header: Mapping's default would read the tensor

    def __iter__(self):
        return iter(self._meta)

    def __len__(self):
        return len(self._meta)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._meta[name][0]

    def dtype(self, name: str) -> np.dtype:
        name_of = {v: k for k, v in _ST_DTYPES.items()}[self._meta[name][1]]
        if name_of == "bfloat16":
            import ml_dtypes

            return np.dtype(ml_dtypes.bfloat16)
        return np.dtype(name_of)


def load_torch_state(path, *, framework: str = "pt") -> Mapping:
    """A torch checkpoint as a flat mapping name -> tensor.

    ``.pt``/``.pth``/``.bin``: ``torch.load(weights_only=True)``, memory-mapped
    where the file allows (a ``{"state_dict": ...}`` or ``{"model": ...}``
    wrapper is opened); ``.safetensors``: read lazily, one tensor per access
    (``framework="numpy"`` gives numpy arrays instead of torch tensors).
    """
    suffix = Path(path).suffix.lower()
    if suffix not in (".safetensors", ".pt", ".pth", ".bin"):
        raise ValueError(f"{path}: unknown checkpoint format {suffix or '(no suffix)'!r}; expected "
                         "a .pt, .pth, .bin or .safetensors file")
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if suffix == ".safetensors":
        return LazySafetensors(path, framework)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # the legacy (pre-zip) format cannot be memory-mapped
        state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and not all(isinstance(v, torch.Tensor) for v in state.values()):
        inner = [k for k in ("state_dict", "model", "model_state_dict") if isinstance(state.get(k), Mapping)]
        if inner:
            state = state[inner[0]]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a state dict (a mapping of names to tensors)")
    return state
