"""The draw engine: any rectangular slice of any number of canonical tensors, bit for bit.

Every value xinit produces comes from :func:`run`. A :class:`Request` names one
canonical tensor (its plan, key, shape and dtype) and a *region* of it - one
``(start, stop)`` index range per canonical dimension - and the engine draws
exactly the values of that region, equal bit for bit to the same slice of the
whole draw: element ``i`` (flat row-major index in the whole tensor) always
comes from counter ``i`` under the tensor's key (see :mod:`xinit.core.threefry`).
A single tensor is a request with the whole region; a model is many requests; a
device's shard is a request whose region is the shard. The values go to a
*sink* (:class:`Sink`): new JAX arrays (:mod:`xinit.core.arrays`) or torch
tensors written in place (``xinit.torch``).

How a run draws:

- Elementwise requests are grouped by (family, dtype, device) and packed into
  chunks of up to :data:`~xinit.core.packing.MAX_ROWS` rows of
  :data:`~xinit.core.programs.ROW` elements; each row carries its own key,
  counters and parameters, so one compiled call draws many tensors and the
  programs do not depend on tensor shapes. A region is a set of *runs* (flat
  ranges of the tensor). Long runs take whole rows each (a run's padding is
  < ``ROW``); narrow regions (many short runs) are packed densely, one counter
  per element, so a 3-wide column slice costs ~3 elements per row of it, not 256.
- Orthogonal requests draw the whole matrix and slice it (the Haar matrix needs
  all of its entries: memory ~3x the whole matrix whatever the region). Sparse
  requests draw the region's columns only: the zero mask of a column depends
  on that column's selection uniforms over all rows up to the region's last row.
- Chunks are consumed in order; with ``ahead`` the next chunk is dispatched
  before the current one is handed to the sink, so drawing overlaps with
  copying (two chunks alive), else one chunk is alive (``materialize``).
- Segments (:class:`Segment`) of a request reach the sink in increasing region
  order; a segment is a flat range of the region's row-major order
  (:func:`flat_blocks` splits it into rectangular blocks of the destination).
- A run of one request (a drop-in call) looks its split up by the request
  without its key, and a small chunk of it comes packed once, the key written in
  per call: a small draw's cost is mostly the Python around it.

Reliability, engine-wide:

- *Prepared before the first write*: every program the run needs is compiled,
  and every buffer its elementwise chunks reuse is allocated, before any chunk
  is handed to the sink; chunks write into those buffers (XLA donation). So an
  allocation or compilation failure (``RESOURCE_EXHAUSTED``, LLVM "Unable to
  allocate section memory") happens before anything is written, and is raised as
  :class:`~xinit.core.errors.OutOfMemoryError` (a ``MemoryError`` and a
  ``RuntimeError``), never a process abort: results are waited for with
  ``block_until_ready`` before they are read. Orthogonal and sparse tensors are
  drawn first, so their large temporaries are allocated before elementwise
  tensors are written.
- *Interrupts*: for sinks that write in place (torch tensors), SIGINT is
  deferred on the main thread while a tensor is partly written: a Ctrl-C
  lets the tensors being written finish (no new one is started), then raises
  ``KeyboardInterrupt``; every tensor is either untouched or completely
  written (and, for torch, its version counter bumped). Any other exception
  mid-run lets the sink bump the versions of what it touched (``Sink.stop``).
"""

from __future__ import annotations

import _signal
import contextlib
import functools
import math
import signal
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import distributions as dist
from . import packing, programs
from ._keys import key_data
from .errors import DtypeError, OutOfMemoryError, ShapeError
from .layout import as_shape
from .packing import Segment
from .programs import memory_errors
from .specs import ComplexSparsePlan, Elementwise, OrthogonalPlan, RealView, Spec, UnitaryPlan
from .threefry import ensure_checked

__all__ = [
    "FLOAT_DTYPES",
    "COMPLEX_DTYPES",
    "DTYPES",
    "Region",
    "Request",
    "Segment",
    "Chunk",
    "Sink",
    "Piece",
    "canonical_dtype",
    "real_dtype",
    "checked_plan",
    "request",
    "run",
    "draw",
    "pieces",
    "flat_blocks",
    "zero_rows_in_region",
    "x64_scope",
    "device_scope",
    "release_buffers",
    "deferred_interrupts",
    "reuse_buffer",
]

FLOAT_DTYPES = tuple(np.dtype(d) for d in (jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64))
# Complex dtypes: random draws on their real view (see specs.RealView), fills directly.
COMPLEX_DTYPES = (np.dtype(np.complex64), np.dtype(np.complex128))
# Dtypes the deterministic families (constant, ones, zeros, eye, dirac) also fill.
DTYPES = FLOAT_DTYPES + COMPLEX_DTYPES + tuple(
    np.dtype(d) for d in (np.bool_, np.uint8, np.uint16, np.uint32, np.uint64, np.int8, np.int16,
                          np.int32, np.int64)
)

#: ``((start, stop), ...)``: one index range per canonical dimension.
Region = tuple[tuple[int, int], ...]


def canonical_dtype(dtype) -> np.dtype:
    """``dtype`` as a numpy dtype (``None`` -> float32); raises for unsupported ones."""
    if dtype is None:
        return np.dtype(np.float32)
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise DtypeError(f"dtype {dtype!r} is not a dtype xinit knows") from None
    if dt not in DTYPES:
        raise DtypeError(
            f"xinit does not support dtype {dt}; supported: {[str(d) for d in DTYPES]}"
        )
    return dt


def real_dtype(dtype) -> np.dtype:
    """The real dtype of a complex one's parts (complex64 -> float32); others as they are."""
    dtype = np.dtype(dtype)
    return np.dtype(f"f{dtype.itemsize // 2}") if dtype.kind == "c" else dtype


_NO_SCOPE = contextlib.nullcontext()


def x64_scope(dtype):
    """Enable 64-bit types locally for a 64-bit dtype (complex128 included); the user's
    config is untouched."""
    if real_dtype(dtype).itemsize == 8 and not jax.config.jax_enable_x64:
        return jax.enable_x64(True)
    return _NO_SCOPE


def device_scope(device):
    """``jax.default_device(device)``, or nothing to enter when ``device`` is None."""
    return jax.default_device(device) if device is not None else _NO_SCOPE


def draws_random(plan) -> bool:
    """Whether ``plan`` draws random floats (and so needs a floating dtype)."""
    return not isinstance(plan, Elementwise) or dist.FAMILIES[plan.family].random


def checked_plan(spec: Spec, shape: tuple[int, ...], dtype: np.dtype):
    """``spec``'s plan for the canonical ``shape``, its dtype checked (raises before any draw).

    For a complex dtype: the spec's :meth:`~xinit.core.Spec.complex_plan` (a
    :class:`~xinit.core.specs.RealView` for random values, drawn in the real dtype).
    """
    if dtype in COMPLEX_DTYPES:
        return spec.complex_plan(shape)
    plan = spec.plan(shape)
    if draws_random(plan) and dtype not in FLOAT_DTYPES:
        raise DtypeError(
            f"{spec.name} draws random floats and does not support dtype {dtype}; "
            f"use one of {[str(d) for d in FLOAT_DTYPES]} (constant, ones, zeros, eye and "
            "dirac also fill integer and bool tensors)"
        )
    return plan


def _is_tracer(x) -> bool:
    return isinstance(x, jax.core.Tracer)


# ------------------------------------------------------------------ requests


class Request(NamedTuple):
    """One canonical tensor, or a rectangular slice of it, to draw (see :func:`request`)."""

    plan: Any  # Elementwise, OrthogonalPlan, SparsePlan, UnitaryPlan or ComplexSparsePlan
    key: Any  # (2,) uint32 key data (a tracer inside a user's jit)
    shape: tuple[int, ...]  # canonical (out, in, *receptive)
    dtype: np.dtype
    region: Region  # canonical index ranges, one per dimension
    name: str = ""  # packing order only: values never depend on it
    device: Any = None  # a jax device, or None for the default
    zero_rows: tuple[int, ...] = ()  # canonical rows (dim 0) the sink sets to zero
    # Set when this request draws the real view (``shape = (*complex_shape, 2)``, parts
    # last, ``dtype`` real) of a tensor of this complex dtype.
    complex_dtype: np.dtype | None = None

    @property
    def region_shape(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in self.region)

    @property
    def size(self) -> int:
        return math.prod([b - a for a, b in self.region])


def _region(shape: tuple[int, ...], region) -> Region:
    if region is None:
        return tuple((0, n) for n in shape)
    try:
        out = tuple((int(a), int(b)) for a, b in region)
    except (TypeError, ValueError):
        raise ShapeError(f"region must be one (start, stop) pair per dimension; got {region!r}") from None
    if len(out) != len(shape) or any(not 0 <= a <= b <= n for (a, b), n in zip(out, shape, strict=False)):
        raise ShapeError(
            f"region {out} does not fit shape {shape}: it needs one (start, stop) pair per "
            "dimension with 0 <= start <= stop <= size"
        )
    return out


def request(plan, key, shape, dtype, *, region=None, name: str = "", device=None,
            zero_rows: Sequence[int] = ()) -> Request:
    """A validated :class:`Request`: ``plan`` (from :func:`checked_plan`) on the canonical
    ``shape``, restricted to ``region`` (``None``: the whole tensor).

    A :class:`~xinit.core.specs.RealView` plan (a complex tensor's random values)
    becomes a request for the real view: shape and region gain a last axis of 2
    (real and imaginary part), the dtype is the real one, and
    :attr:`Request.complex_dtype` says which complex dtype the parts make.
    """
    shape = as_shape(shape)
    dtype = np.dtype(dtype)
    kd = key_data(key)
    if not _is_tracer(kd):
        kd = np.asarray(kd, np.uint32).reshape(2)
    region = _region(shape, region)
    complex_dtype = None
    if isinstance(plan, RealView):
        real = real_dtype(dtype)
        complex_dtype = dtype if dtype.kind == "c" else np.result_type(real, np.complex64)
        plan, shape, dtype, region = plan.plan, (*shape, 2), real, (*region, (0, 2))
    return Request(plan, kd, shape, dtype, region, name, device, tuple(int(r) for r in zero_rows),
                   complex_dtype)


def zero_rows_in_region(req: Request) -> list[int]:
    """``req.zero_rows`` as row indices of its region (those that fall inside it)."""
    if not req.shape:
        return []
    a, b = req.region[0]
    return [r - a for r in req.zero_rows if a <= r < b]


class Chunk(NamedTuple):
    """A drawn array (``(rows, ROW)`` or flat; segments index it flattened) and the
    segments of requests it holds."""

    array: jax.Array
    segments: list[Segment]


class Sink(Protocol):
    """Where a run's values go. The engine calls :meth:`write` for each chunk (a
    request's segments arrive in increasing region order), :meth:`finish` once a
    request's region is complete (zero-element regions: once everything else is
    drawn, so that a run that fails finishes none of them), and
    :meth:`stop` if the run ends early (an exception or an interrupt).

    A sink may also define ``prepare(chunk)``: called once the chunk is dispatched
    and before it is ready, to set up what writing it needs (views of the
    destinations) while it computes."""

    #: True when the sink writes memory its caller already holds (a torch tensor):
    #: interrupts are then deferred while a tensor is partly written.
    in_place: bool

    def write(self, chunk: Chunk) -> bool:
        """Copy the chunk's segments; return True to keep ``chunk.array`` (the engine
        then does not reuse its buffer). The chunk is ready (computed) when called."""

    def finish(self, index: int) -> None:
        """Request ``index`` is complete: zero its rows, publish it."""

    def stop(self) -> None:
        """The run stopped early: leave what was written consistent (e.g. bump versions)."""


def flat_blocks(shape: tuple[int, ...], offset: int, length: int) -> list[tuple[tuple, int, int]]:
    """The rectangular blocks that the row-major range ``[offset, offset + length)`` of an
    array of ``shape`` covers, as ``(index, start, stop)``: ``view[index]`` receives
    ``values[start:stop]`` (reshaped to ``view[index].shape``). At most ``2 * ndim + 1``
    blocks; ``index`` is a tuple of ints and slices (numpy and torch both take it)."""
    blocks: list[tuple[tuple, int, int]] = []

    def split(prefix, shape, off, n, pos):
        if not shape:
            blocks.append((prefix, pos, pos + n))
            return
        inner = math.prod(shape[1:])
        i, r = divmod(off, inner)
        if r:  # the end of slice i
            take = min(inner - r, n)
            split((*prefix, i), shape[1:], r, take, pos)
            pos, n, i = pos + take, n - take, i + 1
        k = n // inner
        if k:
            blocks.append(((*prefix, slice(i, i + k)), pos, pos + k * inner))
            pos, n, i = pos + k * inner, n - k * inner, i + k
        if n:  # the start of slice i
            split((*prefix, i), shape[1:], 0, n, pos)

    if length:
        split((), tuple(shape), offset, length, 0)
    return blocks


# ------------------------------------------------------------------ buffers


class _Buffers:
    """Chunk output buffers kept between runs: ``(dtype, size, device) -> [jax.Array]``.

    Chunk programs write into a buffer they are given (donated), so a run reuses
    a few buffers instead of allocating one per chunk; at most :attr:`KEEP` per
    key are kept after a run, so repeated draws reuse warm memory.
    """

    KEEP = 2

    def __init__(self):
        self._free: dict[tuple, list[jax.Array]] = defaultdict(list)
        self._lock = threading.Lock()

    def take(self, key: tuple) -> jax.Array | None:
        with self._lock:
            free = self._free.get(key)
            while free:
                buf = free.pop()
                if not buf.is_deleted():
                    return buf
        return None

    def give(self, key: tuple, buf: jax.Array) -> None:
        with self._lock:
            free = self._free[key]
            if len(free) < self.KEEP and not buf.is_deleted():
                free.append(buf)

    def clear(self) -> None:
        with self._lock:
            self._free.clear()


_KEPT = _Buffers()


def release_buffers() -> None:
    """Free the chunk buffers xinit keeps for reuse between draws (at most two per
    dtype, chunk size and device: 32 MB for float32 4 Mi-element chunks)."""
    _KEPT.clear()


def reuse_buffer(array: jax.Array, device=None) -> None:
    """Hand a chunk a sink kept (``Sink.write`` returned True) back for reuse by later
    runs, once nothing reads it any more; ``device`` as in the chunk's requests. Arrays
    that are not full chunk buffers are left to be freed."""
    if array.ndim == 2 and array.shape[1] == packing.ROW and array.shape[0] in programs.ROW_BUCKETS:
        _KEPT.give(_buffer_key(array.dtype, tuple(array.shape), device), array)


def _buffer_key(dtype, shape: tuple[int, ...], device) -> tuple:
    return np.dtype(dtype), shape, device if device is not None else jax.config.jax_default_device


def _allocate(key: tuple) -> jax.Array:
    """A new chunk buffer, by a transfer of zeros (a program per size would be a
    compilation more in every cold process)."""
    dtype, shape, device = key
    with x64_scope(dtype), device_scope(device):
        return jax.device_put(np.zeros(shape, dtype), device, may_alias=False)


class _RunBuffers:
    """The buffers of one run: reserved (allocated) before its first write, reused by
    its chunks, given back to the kept ones at the end."""

    def __init__(self):
        self.free: dict[tuple, list[jax.Array]] = defaultdict(list)

    def reserve(self, need: dict[tuple, int]) -> None:
        fresh = []
        for key, count in need.items():
            while len(self.free[key]) < count:
                buf = _KEPT.take(key)
                if buf is None:
                    buf = _allocate(key)
                    fresh.append(buf)
                self.free[key].append(buf)
        for buf in fresh:  # an allocation failure surfaces here, before any write
            buf.block_until_ready()

    def take(self, key: tuple) -> jax.Array:
        free = self.free[key]
        while free:
            buf = free.pop()
            if not buf.is_deleted():
                return buf
        # not reserved (the normal draw under an orthogonal matrix) or kept by a sink
        buf = _KEPT.take(key)
        return buf if buf is not None else _allocate(key)

    def give(self, key: tuple, buf: jax.Array) -> None:
        self.free[key].append(buf)

    def close(self) -> None:
        for key, bufs in self.free.items():
            for buf in bufs:
                _KEPT.give(key, buf)
        self.free.clear()


# ------------------------------------------------------------------ launching chunks

_SDS = jax.ShapeDtypeStruct


_EXECUTABLES: dict[tuple, tuple] = {}  # group signature -> compiled executables
programs.on_clear(_EXECUTABLES.clear)


def _executables(g: packing.Group) -> tuple:
    """The compiled executables of ``g``'s programs (compiled on first use), in launch order."""
    key = (g.family, g.dtype, g.nrows, g.indexed, g.fast_div, g.split, str(g.device),
           jax.config.jax_enable_x64, jax.config.jax_default_device)
    exes = _EXECUTABLES.get(key)
    if exes is None:
        with x64_scope(g.dtype), device_scope(g.device):
            exes = _EXECUTABLES[key] = tuple(prog.compile(*types) for prog, types in packing.group_programs(g))
    return exes


class _Launcher(NamedTuple):
    """What dispatching a chunk of ``group`` takes, looked up once per run: its
    compiled programs and the buffer keys of its output and (split groups) uniforms."""

    group: packing.Group
    exes: tuple
    out_key: tuple
    u_key: tuple | None  # split groups: the uniforms' buffer (== out_key for a 32/64-bit output)

    @property
    def buffer_keys(self) -> list[tuple]:
        """The buffer keys one chunk takes."""
        return [self.out_key] if self.u_key in (None, self.out_key) else [self.u_key, self.out_key]


def _launcher(g: packing.Group) -> _Launcher:
    """``g``'s :class:`_Launcher` (compiles its programs on first use)."""
    out_key = _buffer_key(g.dtype, g.chunk_shape, g.device)
    u_key = _buffer_key(dist.param_dtype(g.family, g.dtype), g.chunk_shape, g.device) if g.split else None
    return _Launcher(g, _executables(g), out_key, u_key)


def _launch_rows(launch: _Launcher, args: packing.ChunkArgs, bufs) -> tuple[Chunk, list[tuple]]:
    """Dispatch one chunk of ``launch.group``; returns it and the (key, buffer) pairs it holds."""
    exes, out_key, u_key = launch.exes, launch.out_key, launch.u_key
    with x64_scope(launch.group.dtype):
        if u_key is None:
            out = exes[0](bufs.take(out_key), args.rows, *args.counters)
            return Chunk(out, args.segments), [(out_key, out)]
        u = exes[0](bufs.take(u_key), args.rows, *args.counters)
        if u_key != out_key:  # a 16-bit output: a buffer of its own
            out = exes[1](bufs.take(out_key), u, args.rows)
            return Chunk(out, args.segments), [(out_key, out), (u_key, u)]
        out = exes[1](u, args.rows)  # written over the uniforms
    return Chunk(out, args.segments), [(out_key, out)]


# ------------------------------------------------------------------ structured plans


def _normal_request(req: Request) -> Request:
    """The standard normal draw an orthogonal (unitary: both parts of each element)
    request is made from, in the compute dtype."""
    cdt = dist.compute_dtype(req.dtype)
    n = req.plan.rows * req.plan.cols * (2 if isinstance(req.plan, UnitaryPlan) else 1)
    return Request(Elementwise("normal", (0.0, 1.0)), req.key, (n,), cdt, ((0, n),), req.name,
                   req.device)


_orthogonal_method = "householder"  # "qr" once householder_product failed to compile


def _orthogonal_normal(req: Request) -> tuple[Request, packing.Runs, packing.Group]:
    """The normal draw under an orthogonal request: its request, runs and (one) group."""
    normal = _normal_request(req)
    rr = packing.runs_of(normal)
    (g,) = packing.groups_of([normal], {0: rr})
    return normal, rr, g


def _orthogonal_program(req: Request, method: str, traced: bool = False) -> programs.Program:
    """The orthogonal (or unitary) program of ``req``: the normal draw's chunks in (eager:
    as the engine draws them; traced: one exact-size chunk), ``req``'s region out."""
    normal, _, g = _orthogonal_normal(req)
    n = normal.size
    valids = (n,) if traced else tuple(min(g.size, n - k * g.size) for k in range(g.chunks))
    whole = req.region == tuple((0, d) for d in req.shape)
    region, shape = (None, None) if whole else (req.region, req.shape)
    if isinstance(req.plan, UnitaryPlan):
        return programs.unitary_program(req.plan.rows, req.plan.cols, req.dtype, valids, region, shape)
    return programs.orthogonal_program(req.plan.rows, req.plan.cols, req.dtype, valids, method,
                                       region, shape)


def _compile_orthogonal(req: Request) -> None:
    """Compile the orthogonal program of ``req`` (Householder; QR where that fails)."""
    global _orthogonal_method
    cdt = dist.compute_dtype(req.dtype)
    g = _orthogonal_normal(req)[2]
    arg_types = (_SDS((), cdt), *(_SDS(g.chunk_shape, cdt) for _ in range(g.chunks)))
    with x64_scope(req.dtype), device_scope(req.device):
        if isinstance(req.plan, UnitaryPlan):  # complex QR only
            _orthogonal_program(req, "qr").compile(*arg_types)
            return
        if _orthogonal_method == "householder":
            try:
                _orthogonal_program(req, "householder").compile(*arg_types)
                return
            except OutOfMemoryError:
                raise
            except Exception:  # noqa: BLE001 - e.g. a backend without orgqr: use QR from now on
                _orthogonal_method = "qr"
        _orthogonal_program(req, "qr").compile(*arg_types)


def _launch_orthogonal(req: Request, bufs) -> tuple[jax.Array, list[tuple]]:
    """The orthogonal matrix (or its region) and the buffers of the normal draw under it."""
    normal, rr, g = _orthogonal_normal(req)
    chunks, held = [], []
    launch = _launcher(g)
    for args in packing.pack(g, [normal], {0: rr}):
        chunk, h = _launch_rows(launch, args, bufs)
        chunks.append(chunk.array)
        held += h
    cdt = dist.compute_dtype(req.dtype)
    with x64_scope(req.dtype), device_scope(req.device):
        out = _orthogonal_program(req, _orthogonal_method)(np.asarray(req.plan.gain, cdt), *chunks)
    return out, held


def _sparse_args(req: Request):
    """``(program, args)`` of a sparse request's region (see :func:`programs.sparse_program`;
    complex: on the real view)."""
    (r0, r1), (c0, c1) = req.region[:2]
    rows, cols = req.shape[:2]
    cdt = dist.compute_dtype(req.dtype)
    parts = 2 if isinstance(req.plan, ComplexSparsePlan) else 1  # value counters per element

    def bases(first, nrows, offset, step):
        counters = offset + (np.arange(first, first + nrows, dtype=np.int64) * cols + c0) * step
        out = np.empty((2, nrows), np.uint32)
        packing.split64(counters, out[0], out[1])
        return out

    # A one-element block would compile to straight-line code, which XLA:CPU rounds
    # differently (1 ulp) from the loops every larger block runs: draw one more column.
    width = 2 if (r1 - r0) * (c1 - c0) == 1 else c1 - c0
    prog = programs.sparse_program(rows, r1, r1 - r0, width, req.dtype, parts)
    std = req.plan.std / np.sqrt(2) if parts == 2 else req.plan.std  # complex: E|w|^2 = std^2
    args = (req.key, np.int32(req.plan.zeros), np.asarray((0.0, std), cdt),
            bases(r0, r1 - r0, 0, parts), bases(0, r1, parts * rows * cols, 1))
    return prog, args


def _launch_other(req: Request, bufs) -> tuple[jax.Array, list[tuple]]:
    if isinstance(req.plan, (OrthogonalPlan, UnitaryPlan)):
        return _launch_orthogonal(req, bufs)
    prog, args = _sparse_args(req)
    with x64_scope(req.dtype), device_scope(req.device):
        return prog(*args), []


def _compile_other(req: Request) -> None:
    """Compile every program of a structured request."""
    if isinstance(req.plan, (OrthogonalPlan, UnitaryPlan)):
        _executables(_orthogonal_normal(req)[2])
        _compile_orthogonal(req)
        return
    prog, args = _sparse_args(req)
    with x64_scope(req.dtype), device_scope(req.device):
        prog.compile(*args)


# ------------------------------------------------------------------ interrupts


_SIGINT = int(signal.SIGINT)


class _Interrupts:
    """Defer SIGINT (on the main thread, when Python's own handler is installed): the
    run raises ``KeyboardInterrupt`` at the next point where no tensor is partly
    written (:meth:`check`), or at the end. Any other handler is left alone.

    With ``lazy``, the handler is installed by :meth:`arm`, which the engine calls
    once the first chunk is dispatched and before anything is written: the system
    call then overlaps with the chunk's computation instead of preceding it."""

    __slots__ = ("armable", "installed", "pending")

    def __init__(self, active: bool, *, lazy: bool = False):
        self.armable = active and threading.current_thread() is threading.main_thread()
        self.installed = False
        self.pending = False
        if not lazy:
            self.arm()

    def _handler(self, signum, frame):
        self.pending = True

    def arm(self) -> None:
        """Install the handler (once; a no-op when inactive or installed)."""
        if self.armable:
            self.armable = False
            # _signal: signal.signal without its enum conversions (called per drop-in)
            previous = _signal.signal(_SIGINT, self._handler)
            if previous is signal.default_int_handler:
                self.installed = True
            else:
                _signal.signal(_SIGINT, previous)

    def __enter__(self):
        return self

    def check(self) -> None:
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt

    def __exit__(self, exc_type, exc, tb):
        if self.installed:
            _signal.signal(_SIGINT, signal.default_int_handler)
            self.installed = False
        if exc_type is None:
            self.check()
        return False


def deferred_interrupts() -> _Interrupts:
    """A context in which SIGINT (on the main thread) is held until it exits, then raised
    as ``KeyboardInterrupt``: for a sink's writes of chunks drawn earlier (see
    ``xinit.torch.model.apply_fn``), so that no tensor is left partly written."""
    return _Interrupts(True)


# ------------------------------------------------------------------ running


def _look_ahead(items: Iterator, ahead: bool) -> Iterator:
    """``items``, with the next one produced (dispatched) before the current one is yielded."""
    if not ahead:
        yield from items
        return
    current = next(items, None)
    for following in items:  # JAX dispatch is asynchronous: `following` is being drawn
        yield current
        current = following
    if current is not None:
        yield current


def _without_mesh():
    """No ambient mesh while the engine's single-device programs run: under
    ``jax.set_mesh`` with Explicit axes, JAX would place their host arguments, and
    so their outputs (the chunk buffers kept for reuse), replicated over the mesh,
    and a buffer kept under one mesh would not fit the programs outside it."""
    if jax.sharding.get_abstract_mesh().empty:
        return _NO_SCOPE
    try:
        return jax.set_mesh(None)
    except ValueError:  # inside a user's trace: set_mesh is refused there
        return _NO_SCOPE


def run(requests: Iterable[Request], sink: Sink, *, ahead: bool = True) -> None:
    """Draw every request's region into ``sink``.

    Compiles and allocates everything first (see the module docstring), then
    dispatches chunk by chunk: with ``ahead`` (the default) the next chunk is
    dispatched before the current one is handed to the sink (two chunks alive),
    else one chunk is alive at a time. Requests with a traced key (inside a
    user's ``jit``) are drawn as traced programs, one per request, which inline.

    Raises:
        OutOfMemoryError: an allocation or compilation ran out of memory.
        KeyboardInterrupt: SIGINT, after the tensors being written are complete
            (in-place sinks).

    Example: the top-left quarter of a draw, as a JAX array.

    >>> from xinit.core import arrays, specs
    >>> from xinit.core.layout import TORCH
    >>> req = request(specs.Normal().plan((64, 32)), 0, (64, 32), "float32",
    ...               region=((0, 32), (0, 16)))
    >>> sink = arrays.JaxSink([req], [TORCH], host=True)
    >>> run([req], sink)
    >>> sink.results[0].shape
    (32, 16)
    """
    requests = list(requests)
    if any(_is_tracer(r.key) for r in requests):
        _run_traced(requests, sink)
        return
    left = [r.size for r in requests]
    split = _split(requests)
    bufs = _RunBuffers()
    try:
        with memory_errors("xinit: drawing"), _without_mesh():
            empty = [i for i, n in enumerate(left) if n == 0]
            if split.elementwise or split.others:
                ensure_checked()
                launchers = _prepare(requests, split, bufs, ahead)
                _consume(requests, split, launchers, left, bufs, sink, ahead)
            for i in empty:
                sink.finish(i)
    except BaseException:
        sink.stop()
        raise
    finally:
        bufs.close()


# Chunks up to this many elements are waited for by polling: XLA:CPU runs them on its
# worker threads, and a blocked caller's core can go idle, which on a virtual machine
# adds tens of microseconds to waking it up again (benchmarks/notes.md, "small draws").
SPIN_MAX_SIZE = 64 * packing.ROW


def _wait(array: jax.Array) -> None:
    """Wait until ``array`` is computed; raises (never aborts) if its program failed."""
    if array.size <= SPIN_MAX_SIZE:
        while not array.is_ready():
            pass
    array.block_until_ready()


def _consume(requests, split: _Split, launchers, left, bufs, sink, ahead) -> None:
    """Dispatch the run's chunks (one ahead or not) and hand each, once ready, to the sink."""

    def launches():
        for i in split.others:
            array, held = _launch_other(requests[i], bufs)
            yield Chunk(array, [Segment(i, 0, left[i], 0)]), held
        if split.packed is not None:
            yield _launch_rows(launchers[0], _keyed(split.packed, requests[0].key), bufs)
            return
        for launch in launchers:
            for args in packing.pack(launch.group, requests, split.elementwise):
                yield _launch_rows(launch, args, bufs)

    partial: set[int] = set()
    prepare = getattr(sink, "prepare", None)
    with _Interrupts(sink.in_place, lazy=True) as interrupts:
        for chunk, held in _look_ahead(launches(), ahead):
            interrupts.arm()  # before the first write, while the chunk computes
            if prepare is not None:
                prepare(chunk)
            if interrupts.pending:  # finish what is partly written, start nothing new
                chunk = chunk._replace(segments=[s for s in chunk.segments if s.index in partial])
            _wait(chunk.array)
            kept = sink.write(chunk)
            for seg in chunk.segments:
                left[seg.index] -= seg.length
                if left[seg.index]:
                    partial.add(seg.index)
                else:
                    partial.discard(seg.index)
                    sink.finish(seg.index)
            for key, buf in held:
                if not (kept and buf is chunk.array):
                    bufs.give(key, buf)
            del chunk, held
            if not partial:
                interrupts.check()


class _Split(NamedTuple):
    """How a run draws its requests (see :func:`_split`); shared between runs: read only."""

    elementwise: dict[int, packing.Runs]  # the elementwise requests' runs
    others: list[int]  # the structured requests (orthogonal, sparse: drawn first, by name)
    groups: list[packing.Group]  # the elementwise groups, chunk by chunk
    # A run of one request whose group is one small chunk: that chunk packed with a
    # zero key, and how many of its rows take the key.
    packed: tuple[packing.ChunkArgs, int] | None = None


# Packed once: chunks of at most 1024 rows in whole-row layout (~40 KiB of row data per
# entry; a densely packed narrow region would keep two counters per element).
_PACKED_MAX_ROWS = 1024


def _split(requests: list[Request]) -> _Split:
    """How a run draws ``requests``. Zero-element requests are in no part of it.

    It depends on everything but the keys: a run of one request (a drop-in call)
    looks it up by that request without its key, and a small chunk of it comes
    packed (:func:`_keyed`): the Python between two small draws is most of their
    cost (see benchmarks/notes.md, "Where a small drop-in call's time goes")."""
    if len(requests) == 1:
        try:
            return _split_one(requests[0]._replace(key=None), packing.MAX_ROWS)
        except TypeError:  # an unhashable parameter: computed afresh
            pass
    return _split_all(requests)


@functools.lru_cache(maxsize=16)
def _split_one(unkeyed: Request, max_rows: int) -> _Split:  # max_rows: the chunk size split for
    split = _split_all([unkeyed])
    g = split.groups[0] if len(split.groups) == 1 else None
    if g is not None and g.chunks == 1 and g.nrows <= _PACKED_MAX_ROWS and not g.indexed:
        zero_key = unkeyed._replace(key=np.zeros(2, np.uint32))
        (args,) = packing.pack(g, [zero_key], split.elementwise)
        return split._replace(packed=(args, split.elementwise[0].rows))
    return split


def _split_all(requests: list[Request]) -> _Split:
    elementwise = {i: packing.runs_of(r) for i, r in enumerate(requests)
                   if r.size and isinstance(r.plan, Elementwise)}
    others = sorted((i for i, r in enumerate(requests) if r.size and i not in elementwise),
                    key=lambda i: requests[i].name)
    return _Split(elementwise, others, packing.groups_of(requests, elementwise))


def _keyed(packed: tuple[packing.ChunkArgs, int], key) -> packing.ChunkArgs:
    """A packed chunk of one request with its key: what :func:`packing.pack` gives."""
    args, rows = packed
    out = args.rows.copy()
    out[:rows, programs.ROW_KEY] = key
    return args._replace(rows=out)


def _compile(requests: list[Request], split: _Split) -> list[_Launcher]:
    """Compile every program of a run (see :func:`_split`); the groups' launchers."""
    for i in split.others:
        _compile_other(requests[i])
    return [_launcher(g) for g in split.groups]


def compile_programs(requests: Iterable[Request]) -> None:
    """Compile every program a :func:`run` of ``requests`` will run, and nothing else
    (no buffer, no draw): for a caller that allocates much memory of its own before
    the run (``xinit.torch.materialize``), so that the compiler's transient memory
    comes and goes before that, not on top of it. Traced requests compile in the
    user's program: nothing to do."""
    requests = list(requests)
    if any(_is_tracer(r.key) for r in requests):
        return
    split = _split(requests)
    if split.others or split.groups:
        with memory_errors("xinit: compiling"), _without_mesh():
            ensure_checked()
            _compile(requests, split)


def _prepare(requests, split: _Split, bufs: _RunBuffers, ahead: bool) -> list[_Launcher]:
    """Compile every program of the run and reserve every buffer its chunks reuse;
    the groups' launchers.

    Structured requests (drawn first) take their buffers as they go: each of them
    is written only once it is complete, so a failure leaves it untouched.
    """
    launchers = _compile(requests, split)
    need: dict[tuple, int] = defaultdict(int)
    for launch in launchers:
        for key in launch.buffer_keys:
            need[key] += launch.group.chunks
    bufs.reserve({key: min(n, 2 if ahead else 1) for key, n in need.items()})
    return launchers


def _run_traced(requests: list[Request], sink: Sink) -> None:
    """Inside a user's trace: one exact-size traced program per request (they inline)."""
    ensure_checked()
    for i, req in enumerate(requests):
        if req.size == 0:
            sink.finish(i)
            continue
        with x64_scope(req.dtype), device_scope(req.device):
            segments = [Segment(i, 0, req.size, 0)]
            if isinstance(req.plan, Elementwise):
                array, segments = _traced_rows(req, i)
            elif isinstance(req.plan, (OrthogonalPlan, UnitaryPlan)):
                prog = _orthogonal_program(req, _orthogonal_method, traced=True)
                gain = np.asarray(req.plan.gain, dist.compute_dtype(req.dtype))
                array = prog.traced(gain, _traced_rows(_normal_request(req), 0)[0])
            else:
                prog, (kd, zeros, fparams, vbase, sbase) = _sparse_args(req)
                array = prog.traced(kd, zeros, lax.optimization_barrier(jnp.asarray(fparams)), vbase, sbase)
        sink.write(Chunk(array, segments))
        sink.finish(i)


def _traced_rows(req: Request, index: int) -> tuple[jax.Array, list[Segment]]:
    """An elementwise request as one exact-size traced program, and its segments."""
    rr = packing.runs_of(req)
    n = math.prod(req.shape)
    if req.size == n < 2**32:  # the whole tensor: key and parameters as scalars
        params = packing.row_params(req.plan.family, req.dtype, req.plan.fparams, req.plan.iparams)
        # parameters as a runtime value, as in eager programs: XLA would otherwise fold
        # the constants (e.g. trunc_normal's CDF values) with other arithmetic, ulps apart
        params = lax.optimization_barrier(jnp.asarray(params.reshape(-1)))
        prog = programs.tensor_program(req.plan.family, req.dtype, req.shape)
        return prog.traced(jnp.asarray(req.key, np.uint32).reshape(2), params), [Segment(index, 0, n, 0)]
    nrows = rr.rows
    g = packing.Group(req.plan.family, req.dtype, req.device, rr.indexed, False, [0], nrows, 1)
    ((args),) = packing.pack(g, [req._replace(key=np.zeros(2, np.uint32))], {0: rr})
    # The row data as a runtime value, as in eager programs (XLA would otherwise fold
    # the constant parameters, e.g. trunc_normal's CDF values, ulps apart), with the key.
    rest = lax.optimization_barrier(jnp.asarray(args.rows[:, 2:]))
    keys = jnp.broadcast_to(jnp.asarray(req.key, np.uint32).reshape(1, 2), (nrows, 2))
    rows = jnp.concatenate([keys, rest], axis=1)
    prog = programs.rows_program(req.plan.family, req.dtype, nrows, rr.indexed)
    return prog.traced(rows, *args.counters), args.segments


# ------------------------------------------------------------------ flat draws


class Piece(NamedTuple):
    """A drawn piece of a flat draw: ``array[:valid]`` are its next ``valid`` values."""

    array: jax.Array
    valid: int


class _Pieces:
    """A sink that keeps the chunks: the flat draw of one request as pieces."""

    in_place = False

    def __init__(self):
        self.pieces: list[Piece] = []

    def write(self, chunk: Chunk) -> bool:
        flat = chunk.array.reshape(-1)
        for seg in chunk.segments:
            if seg.start == 0:
                self.pieces.append(Piece(flat, seg.length))
            else:
                self.pieces.append(Piece(flat[seg.start : seg.start + seg.length], seg.length))
        return True

    def finish(self, index: int) -> None:
        pass

    def stop(self) -> None:
        pass


def pieces(req: Request) -> list[Piece]:
    """The flat draw of ``req``'s region as pieces (the chunks are kept, not reused)."""
    sink = _Pieces()
    run([req], sink)
    return sink.pieces


def draw(spec: Spec, key, shape, dtype=None, *, region=None, device=None) -> list[Piece]:
    """The flat row-major draw of ``spec`` on the canonical ``shape`` (or of a ``region``
    of it, in the region's row-major order), as pieces: a low-level view for tests
    and debugging. Validates everything before anything runs; ``[]`` for zero elements.

    Complex dtypes draw the spec's complex form (see
    :meth:`~xinit.core.Spec.complex_plan`).

    >>> from xinit.core import Uniform
    >>> pieces = draw(Uniform(-1, 1), 0, (4, 3))
    >>> [p.valid for p in pieces]
    [12]
    """
    shape = as_shape(shape)
    dtype = canonical_dtype(dtype)
    return pieces(request(checked_plan(spec, shape, dtype), key, shape, dtype, region=region,
                          device=device))
