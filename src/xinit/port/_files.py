"""Checkpoint files: torch ``.pt``/``.bin``/``.safetensors``; Flax msgpack, Orbax, safetensors.

Readers return mappings that load lazily where the format allows it:
``.safetensors`` is read tensor by tensor (the file is opened for each read, so
no mapping of the whole file stays resident), torch pickles are memory-mapped
(``torch.load(weights_only=True, mmap=True)``). Writers stream where the format
allows it: safetensors and msgpack files are written tensor by tensor from an
iterator, with their headers computed from the conversion plan; ``.pt``/``.bin``
and Orbax need the whole tree in memory.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

TORCH_SUFFIXES = (".pt", ".pth", ".bin")
SAFETENSORS = ".safetensors"
MSGPACK = ".msgpack"

# safetensors' dtype names (the format's spec)
_ST_DTYPES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL",
}


def format_of(path, *, flax: bool) -> str:
    """``"torch"``, ``"safetensors"``, ``"msgpack"`` or ``"orbax"`` from a path's suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == SAFETENSORS:
        return "safetensors"
    if suffix in TORCH_SUFFIXES and not flax:
        return "torch"
    if suffix == MSGPACK and flax:
        return "msgpack"
    if flax and (path.is_dir() or suffix in ("", ".orbax")):
        return "orbax"
    allowed = ("a .msgpack file, a .safetensors file or an Orbax directory" if flax
               else "a .pt, .pth, .bin or .safetensors file")
    raise ValueError(f"{path}: unknown checkpoint format {suffix or '(no suffix)'!r}; expected {allowed}")


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
        from safetensors import safe_open

        if name not in self._meta:
            raise KeyError(name)
        with safe_open(self.path, self.framework) as f:  # no mapping outlives the read
            return f.get_tensor(name)

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
    kind = format_of(path, flax=False)
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if kind == "safetensors":
        return LazySafetensors(path, framework)
    import torch

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


def _nested(flat: Mapping[str, np.ndarray]) -> dict:
    out: dict = {}
    for key, value in flat.items():
        *parents, leaf = key.split("/")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def load_flax_variables(path) -> dict:
    """Flax variables from a msgpack file, an Orbax directory or a safetensors file
    (keys ``params/conv1/kernel``), as a nested dict of arrays."""
    kind = format_of(path, flax=True)
    if kind != "orbax" and not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if kind == "msgpack":
        from flax import serialization

        return serialization.msgpack_restore(Path(path).read_bytes())
    if kind == "safetensors":
        from safetensors.numpy import load_file

        return _nested(load_file(str(path)))
    import orbax.checkpoint as ocp

    with ocp.PyTreeCheckpointer() as ckpt:
        return ckpt.restore(os.path.abspath(path))


# ---------------------------------------------------------------------- writers


@contextlib.contextmanager
def _replacing(tmp: Path, path):
    """Write ``tmp``, then move it to ``path``; on an error remove it (``path`` untouched)."""
    try:
        with open(tmp, "wb") as f:
            yield f
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)



def _st_dtype(dtype: np.dtype) -> str:
    try:
        return _ST_DTYPES[np.dtype(dtype).name]
    except KeyError:
        raise TypeError(f"safetensors cannot store dtype {dtype}") from None


def write_safetensors(path, layout: list[tuple[str, tuple[int, ...], np.dtype]],
                      produce: Callable[[str], np.ndarray],
                      metadata: Mapping[str, str] | None = None,
                      progress: Callable[[int], None] | None = None) -> None:
    """Write a safetensors file tensor by tensor: the header from ``layout`` (name,
    shape, dtype per tensor, in order), then ``produce(name)`` for each, in order.

    safetensors' own ``save_file`` needs every tensor in memory at once; this
    writes the same format (8-byte header size, JSON header padded to 8 bytes,
    then the tensors back to back in header order) with one tensor in memory.
    """
    header: dict = {}
    offset = 0
    for name, shape, dtype in layout:
        size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        header[name] = {"dtype": _st_dtype(dtype), "shape": list(shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = dict(metadata)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    tmp = Path(str(path) + ".partial")
    with _replacing(tmp, path) as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name, shape, dtype in layout:
            arr = produce(name)
            if tuple(arr.shape) != tuple(shape) or arr.dtype != np.dtype(dtype):
                raise ValueError(f"{name}: expected {shape} {dtype}, got {arr.shape} {arr.dtype}")
            arr = np.ascontiguousarray(arr)
            f.write(memoryview(arr.reshape(-1).view(np.uint8)))
            if progress is not None:
                progress(arr.nbytes)


def write_msgpack(path, tree_paths: list[tuple[str, ...]],
                  produce: Callable[[tuple[str, ...]], np.ndarray],
                  progress: Callable[[int], None] | None = None) -> None:
    """Write Flax's msgpack format leaf by leaf: ``flax.serialization.msgpack_restore``
    reads it back as the nested dict with leaves at ``tree_paths``, each made by
    ``produce(path)`` when it is written.

    Each leaf is encoded by ``flax.serialization.msgpack_serialize`` itself; the
    nesting is msgpack map headers written ahead of the leaves they contain.
    """
    import msgpack
    from flax import serialization

    tree: dict = {}
    for p in tree_paths:
        node = tree
        for k in p[:-1]:
            node = node.setdefault(k, {})
        node[p[-1]] = None
    packer = msgpack.Packer()
    tmp = Path(str(path) + ".partial")
    with _replacing(tmp, path) as f:

        def emit(node, prefix):
            f.write(packer.pack_map_header(len(node)))
            for key, child in node.items():
                f.write(packer.pack(key))
                if child is None:
                    arr = produce((*prefix, key))
                    f.write(serialization.msgpack_serialize(np.ascontiguousarray(arr)))
                    if progress is not None:
                        progress(arr.nbytes)
                else:
                    emit(child, (*prefix, key))

        emit(tree, ())


def save_orbax(path, tree: Mapping) -> None:
    import orbax.checkpoint as ocp

    path = os.path.abspath(path)
    with ocp.PyTreeCheckpointer() as ckpt:
        ckpt.save(path, tree, force=True)


def save_torch(path, state: Mapping) -> None:
    import torch

    torch.save(dict(state), path)
