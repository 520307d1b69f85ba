"""Host memory for the CPU sinks: aligned buffers JAX adopts, mapped pages, and copies.

On the CPU, drawn chunks are host memory already. Moving them into a result
with JAX operations (concatenate, transpose, ``.at[].set``) would compile one
program per distinct shape; writing numpy views of the chunks into one
64-byte-aligned buffer, which ``jax.device_put`` adopts as it is,
compiles nothing and copies each value once. The JAX sink
(:mod:`xinit.core.arrays`) and the torch sink (``xinit.torch``) write CPU
destinations with :func:`write_range`.
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

from .engine import flat_blocks
from .programs import default_platform

__all__ = ["on_host", "aligned_empty", "prefault", "copy_canonical", "write_range", "adopt"]

_ALIGN = 64  # bytes: JAX's CPU client adopts (does not copy) host buffers aligned like this
_BLOCK = 64  # output rows per transposing copy: keeps both sides in cache


_MADV_POPULATE_WRITE = 23  # Linux >= 5.14
PREFAULT_MIN_BYTES = 1 << 20  # smaller buffers are left to fault in


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
    touch, one page fault per 4 KiB; ``madvise(MADV_POPULATE_WRITE)`` maps the
    same pages in one call (measurements: ``benchmarks/notes.md``). Buffers
    under 1 MiB, memory whose first whole page is already mapped (a warm
    tensor: nothing to gain), kernels without the call (< 5.14) and other
    systems are left alone. Changes no value.
    """
    libc = _libc()
    if libc is None or buf.nbytes < PREFAULT_MIN_BYTES:
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
    return default_platform() == "cpu"


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

    numpy copies a transposed view element by element across cache lines; 64
    canonical rows at a time keep both sides in cache.
    """
    if dst.flags.c_contiguous or dst.ndim < 2:
        np.copyto(dst, src)
        return
    for r in range(0, dst.shape[0], _BLOCK):
        np.copyto(dst[r : r + _BLOCK], src[r : r + _BLOCK])


def write_range(dst: np.ndarray, offset: int, src: np.ndarray) -> None:
    """Write the flat values ``src`` into elements ``[offset, offset + len(src))`` of
    ``dst`` in its row-major order; ``dst`` may be any strided (e.g. transposed) view.

    A contiguous ``dst`` is one copy; otherwise the range is split into
    rectangular blocks (:func:`xinit.core.engine.flat_blocks`), each copied
    with :func:`copy_canonical`.
    """
    if dst.flags.c_contiguous:
        dst.reshape(-1)[offset : offset + len(src)] = src
        return
    for index, start, stop in flat_blocks(dst.shape, offset, len(src)):
        view = dst[index]
        copy_canonical(view, src[start:stop].reshape(view.shape))


def adopt(out: np.ndarray) -> jax.Array:
    """``out`` as a ``jax.Array`` on the default CPU device, without a copy.

    ``jax.device_put`` of a 64-byte-aligned host buffer aliases it on the CPU
    (every dtype) and gives an *uncommitted* array, like ``jnp.asarray`` and
    JAX's own initializers (``jax.dlpack.from_dlpack`` gives a committed one,
    which JAX then refuses to combine with arrays on a multi-device mesh).
    Call under :func:`xinit.core.engine.x64_scope` for 64-bit dtypes."""
    return jax.device_put(out)
