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

from xinit.torch._checkpoint import _ST_DTYPES, LazySafetensors, load_torch_state

__all__ = ["LazySafetensors", "load_torch_state", "load_flax_variables", "format_of",
           "write_safetensors", "write_msgpack", "save_orbax", "save_torch"]

TORCH_SUFFIXES = (".pt", ".pth", ".bin")
SAFETENSORS = ".safetensors"
MSGPACK = ".msgpack"

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
