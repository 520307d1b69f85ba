"""Arrays assembled in host memory on the CPU backend, adopted by JAX without a copy.

On the CPU, drawn chunks are host memory already. Moving them into a result
with JAX operations (concatenate, transpose, ``.at[].set``) compiles one program
per distinct shape and runs XLA:CPU's slow transposes; writing numpy views of
the chunks into one 64-byte-aligned buffer, which ``jax.device_put`` adopts
as it is, compiles nothing and copies each value once. Used by
:func:`xinit.core.sample` and ``xinit.flax.initialize`` when JAX's default
platform is the CPU; :func:`prefault` also by the torch adapter's copies.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import mmap
import sys

import jax
import numpy as np

from . import _kernels

__all__ = ["on_host", "aligned_empty", "prefault", "copy_canonical", "write_flat", "adopt"]

_ALIGN = 64  # bytes: JAX's CPU client adopts (does not copy) host buffers aligned like this
_BLOCK = 64  # output rows per transposing copy: keeps both sides in cache


_MADV_POPULATE_WRITE = 23  # Linux >= 5.14
_PREFAULT_MIN_BYTES = 1 << 20


@functools.cache
def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
    except (OSError, AttributeError):
        return None
    return libc


def prefault(buf: np.ndarray) -> None:
    """Map the pages of a contiguous buffer that is about to be written in full.

    Fresh memory (``torch.empty``, a model built in ``no_init()`` or by
    ``to_empty``, a new numpy buffer) gets its pages from the kernel on first
    touch, one page fault per 4 KiB; a copy into 0.5 GB of it ran at half its
    speed here. ``madvise(MADV_POPULATE_WRITE)`` maps the same pages in one
    call, ~2.7x faster than faulting them in (125 ms against 335 ms for 512 MiB,
    of which the copy itself is 45 ms). Buffers under 1 MiB, memory whose first
    whole page is already mapped (a warm tensor: nothing to gain), kernels
    without the call (< 5.14) and other systems are left alone. Changes no value.
    """
    libc = _libc()
    if libc is None or buf.nbytes < _PREFAULT_MIN_BYTES:
        return
    page = mmap.PAGESIZE
    start = -(-buf.ctypes.data // page) * page
    end = (buf.ctypes.data + buf.nbytes) // page * page
    if end <= start:
        return
    resident = ctypes.c_ubyte(0)
    if libc.mincore(start, page, ctypes.byref(resident)) == 0 and resident.value & 1:
        return
    libc.madvise(start, end - start, _MADV_POPULATE_WRITE)  # a failure only costs the faults


def on_host() -> bool:
    """Whether results are assembled on the host: JAX's default platform is the CPU."""
    return _kernels._default_platform() == "cpu"


def aligned_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialized C-contiguous array whose data is 64-byte aligned, its pages
    mapped (:func:`prefault`): every caller writes all of it."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + _ALIGN, np.uint8)
    prefault(raw)
    start = -raw.ctypes.data % _ALIGN
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def copy_canonical(dst: np.ndarray, src: np.ndarray) -> None:
    """``dst[...] = src`` where ``dst`` is a (transposed) view and ``src`` is C-contiguous.

    numpy copies a transposed view element by element across cache lines
    (768x3072 float32: 17 ms); 64 canonical rows at a time it is ~9x faster.
    """
    if dst.flags.c_contiguous or dst.ndim < 2:
        np.copyto(dst, src)
        return
    for r in range(0, dst.shape[0], _BLOCK):
        np.copyto(dst[r : r + _BLOCK], src[r : r + _BLOCK])


def write_flat(dst: np.ndarray, srcs: list[np.ndarray]) -> None:
    """Write the flat row-major values ``concatenate(srcs)`` into ``dst`` (a possibly
    transposed view of ``dst.size`` elements), each source copied once: whole rows
    of ``dst`` straight from a source, a row split across two sources through a
    row-sized temporary."""
    if dst.flags.c_contiguous:
        flat = dst.reshape(-1)
        pos = 0
        for src in srcs:
            flat[pos : pos + len(src)] = src
            pos += len(src)
        return
    row, rows_shape = dst[0].size, dst.shape[1:]
    r, partial = 0, []
    for src in srcs:
        i = 0
        if partial:  # finish the row begun in an earlier source
            i = min(row - sum(map(len, partial)), len(src))
            partial.append(src[:i])
            if sum(map(len, partial)) == row:
                copy_canonical(dst[r : r + 1], np.concatenate(partial).reshape((1, *rows_shape)))
                r, partial = r + 1, []
        k = (len(src) - i) // row
        if k:
            copy_canonical(dst[r : r + k], src[i : i + k * row].reshape((k, *rows_shape)))
            r, i = r + k, i + k * row
        if i < len(src):
            partial.append(src[i:])


def adopt(out: np.ndarray) -> jax.Array:
    """``out`` as a ``jax.Array`` on the default CPU device, without a copy.

    ``jax.device_put`` of a 64-byte-aligned host buffer aliases it on the CPU
    (every dtype) and gives an *uncommitted* array, like ``jnp.asarray`` and
    JAX's own initializers (``jax.dlpack.from_dlpack`` gives a committed one,
    which JAX then refuses to combine with arrays on a multi-device mesh).
    Call under :func:`xinit.core.engine.x64_scope` for 64-bit dtypes."""
    return jax.device_put(out)
