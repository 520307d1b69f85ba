"""xinit's compiled programs: building them, compiling them ahead of time, counting them.

Each builder here wraps the math of :mod:`xinit.core.distributions` and the
random bits of :mod:`xinit.core.threefry` into a :class:`Program` whose shapes
are few and fixed, so that the number of programs a process compiles does not
grow with the number of distinct tensor shapes:

- :func:`rows_program`: a chunk of ``nrows`` rows of :data:`ROW` elements of one
  elementwise family and dtype. Each row carries its own key, counter base and
  family parameters (broadcast along the row), so one call draws pieces of any
  number of tensors. ``indexed`` rows carry one counter per element instead
  (narrow slices of a tensor, packed densely).
- :func:`unit_program` + :func:`transform_program`: the same values for the normal
  families in two programs (hash, then transform), for large chunks.
- :func:`orthogonal_program` and :func:`sparse_program`: the structured families,
  one exact-size program per shape.

Eager calls run executables compiled ahead of time (with XLA:CPU options on the
CPU, see :data:`CPU_COMPILER_OPTIONS`); chunk programs write into an output
buffer they are given and that XLA reuses (donation), so a draw of many chunks
allocates its buffers once (see :class:`xinit.core.engine` for the pool). Under
a user's ``jit`` a program is the plain jitted function and inlines.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import distributions as dist
from .errors import OutOfMemoryError
from .threefry import counter_words, unit_uniform

__all__ = [
    "ROW",
    "MAX_ROWS",
    "MAX_CHUNK",
    "ROW_BUCKETS",
    "SPLIT_MIN_SIZE",
    "Program",
    "compile_count",
    "default_platform",
    "release_freed_memory",
    "memory_errors",
    "row_width",
    "pack_params",
    "rows_program",
    "tensor_program",
    "unit_program",
    "transform_program",
    "orthogonal_program",
    "sparse_program",
    "unitary_program",
    "fold_program",
    "clear_caches",
    "on_clear",
]

ROW = 256  # elements per row: the padding of every tensor (or run of a slice) is < ROW
MAX_ROWS = 4**7  # rows per chunk: 4 Mi elements
MAX_CHUNK = ROW * MAX_ROWS
# Row counts of the chunk programs. A group of rows that fits one chunk is padded to
# the next of these (powers of 4 bound padding at 4x where it is cheap and keep the
# program count small: 1 Ki .. 4 Mi elements); a larger group is drawn in full chunks.
ROW_BUCKETS = tuple(4**k for k in range(1, 8))

# From this chunk size on, the normal families run as two programs: the hash into
# unit uniforms, then the transform (see benchmarks/notes.md for why). Values are
# the same ops on the same numbers.
SPLIT_MIN_SIZE = 4**9

_COMPILES = 0


def compile_count() -> int:
    """How many xinit programs have been traced for compilation in this process."""
    return _COMPILES


def count_trace() -> None:
    """Called from inside every program xinit traces (see :func:`compile_count`)."""
    global _COMPILES
    _COMPILES += 1


def default_platform() -> str:
    """The platform of JAX's default device (``"cpu"``, ``"gpu"``, ``"tpu"``)."""
    dev = jax.config.jax_default_device
    if dev is None:
        return jax.default_backend()
    return dev if isinstance(dev, str) else dev.platform


@functools.cache
def _malloc_trim():
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows)
        return None


def release_freed_memory() -> None:
    """Hand memory the C heap holds but no longer uses back to the OS (glibc; else a no-op).

    XLA's compiler allocates and frees tens of MB per program; glibc keeps the
    freed pages in the process, where they count in its RSS for good. Called
    after each compilation (a few per process; ~1 ms).
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


# XLA:CPU runs matrix products (orthogonal's) through YNNPACK, which reports a failed
# allocation of its runtime workspace only as "YNNPACK operation failed: error" (after
# logging "allocate of <n> failed"; seen in tests/test_engine_reliability.py's sweep). The
# status carries no cause, so any YNNPACK failure is reported as out of memory, with
# XLA's message kept in the error.
_OOM_MARKERS = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory", "Unable to allocate",
                "Cannot allocate memory", "Failed to allocate", "YNNPACK operation failed")


class memory_errors:  # noqa: N801 - used as a context manager, like contextlib's
    """Re-raise XLA's and numpy's allocation failures as :class:`OutOfMemoryError`.

    XLA reports a failed allocation as a ``JaxRuntimeError`` (or a ``ValueError``
    when a buffer cannot be allocated at dispatch) saying ``RESOURCE_EXHAUSTED``,
    and "Unable to allocate section memory" when the compiler cannot map code;
    YNNPACK (XLA:CPU's matrix products) a bare "YNNPACK operation failed" when its
    workspace cannot be allocated; numpy raises ``MemoryError``. Other errors pass through unchanged.
    ``with memory_errors("what was running"): ...``
    """

    __slots__ = ("what",)

    def __init__(self, what: str = "xinit"):
        self.what = what

    def __enter__(self):
        return self

    def __exit__(self, exc_type, err, tb):
        if exc_type is None or issubclass(exc_type, OutOfMemoryError):
            return False
        if issubclass(exc_type, MemoryError):
            raise OutOfMemoryError(f"{self.what}: out of memory ({err})") from err
        # JaxRuntimeError, or ValueError where XLA reports a failed allocation at dispatch
        if issubclass(exc_type, (jax.errors.JaxRuntimeError, ValueError)) and any(
                m in str(err) for m in _OOM_MARKERS):
            raise OutOfMemoryError(f"{self.what}: out of memory ({str(err).splitlines()[0]})") from err
        return False


# XLA:CPU options for xinit's programs. AVX-512 machines run the integer-heavy
# threefry hash up to ~2x faster with 512-bit vectors than with XLA's default
# preference of 256 bits; integer ops and the float epilogues give the same bits
# (tested against jax.random). Ignored where the CPU has no 512-bit vectors.
CPU_COMPILER_OPTIONS = {"xla_cpu_prefer_vector_width": 512}
_use_cpu_options = True


def _is_tracer(x) -> bool:
    return isinstance(x, jax.core.Tracer)


class Program:
    """``jax.jit(fn)``, compiled ahead of time per argument signature for eager calls.

    ``out=True``: eager calls take a first extra argument, a buffer of the
    output's shape and dtype that is donated, so XLA writes the result into it
    (:meth:`__call__` ``(buffer, *args)``); ``donate``: indices of ``fn``'s own
    arguments XLA may overwrite. Under a trace (a user's ``jit``) :meth:`traced`
    is the plain jitted ``fn``, which inlines. Executables are kept per
    (argument types, default device, x64 mode); compiling goes through JAX, so
    its persistent compilation cache applies.
    """

    def __init__(self, fn, *, out: bool = False, donate: tuple[int, ...] = ()):
        self.fn = fn
        self.out = out
        if out:
            self.jit = jax.jit(lambda buffer, *args: fn(*args), keep_unused=True,
                               donate_argnums=(0, *(d + 1 for d in donate)))
        else:
            self.jit = jax.jit(fn, donate_argnums=donate)
        self._traced = jax.jit(fn) if out or donate else self.jit
        self._executables: dict = {}

    def traced(self, *args):
        """Call inside a trace (or without ahead-of-time compilation): the jitted ``fn``."""
        return self._traced(*args)

    def _key(self, args):
        sig = tuple((tuple(a.shape), np.dtype(a.dtype)) for a in args)
        return sig, jax.config.jax_default_device, jax.config.jax_enable_x64, default_platform()

    def compile(self, *args):
        """Compile for ``args`` (arrays or ``jax.ShapeDtypeStruct``), if not done already."""
        key = self._key(args)
        exe = self._executables.get(key)
        if exe is None:
            with memory_errors("compiling xinit's program"):
                lowered = self.jit.lower(*args)
                if _use_cpu_options and key[-1] == "cpu":
                    try:
                        exe = lowered.compile(compiler_options=CPU_COMPILER_OPTIONS)
                    except Exception as err:  # noqa: BLE001
                        if any(m in str(err) for m in _OOM_MARKERS):
                            raise
                        exe = lowered.compile()  # an XLA without the option: JAX's defaults
                else:
                    exe = lowered.compile()
            self._executables[key] = exe
            release_freed_memory()
        return exe

    def __call__(self, *args):
        if any(_is_tracer(a) for a in args):
            return self.traced(*(args[1:] if self.out else args))
        return self.compile(*args)(*args)


# A chunk's per-row data travels in one uint32 array (one transfer per call, not five):
# columns 0-1 the key, 2-3 the (lo, hi) words of the row's first counter, then the
# family's float parameters as words (see :func:`pack_params`), then its int parameters.
ROW_KEY, ROW_BASE_LO, ROW_BASE_HI, ROW_PARAMS = slice(0, 2), 2, 3, 4


def _param_words(pdt: np.dtype) -> int:
    return max(pdt.itemsize // 4, 1)  # complex128: 4 words, float64 and complex64: 2


def _n_float(family: str) -> int:
    # uniform also receives its cap (see distributions.program_fparams)
    return dist.FAMILIES[family].n_float + (1 if family == "uniform" else 0)


@functools.cache
def row_width(family: str, out_dtype) -> int:
    """Columns of a chunk's row data for ``family`` drawn in ``out_dtype``."""
    pdt = dist.param_dtype(family, out_dtype)
    return ROW_PARAMS + _n_float(family) * _param_words(pdt) + dist.FAMILIES[family].n_int


def pack_params(fparams: np.ndarray, iparams: np.ndarray) -> np.ndarray:
    """One row's parameters as uint32 words: ``fparams`` (1, n) in the parameter dtype
    (8- and 16-byte values as two and four words, 4-byte ones as one, 1- and 2-byte
    ones zero-extended), then ``iparams`` (1, m) int32. Unpacked bit for bit by the
    programs."""
    fparams = np.ascontiguousarray(fparams)
    size = fparams.dtype.itemsize
    if size < 4:
        words = fparams.view(np.uint8 if size == 1 else np.uint16).astype(np.uint32)
    else:
        words = fparams.view(np.uint32).reshape(1, -1)
    return np.concatenate([words, iparams.astype(np.int32).view(np.uint32)], axis=1)


def _unpack_params(rows, family: str, out_dtype: np.dtype, offset: int = ROW_PARAMS):
    """``fp(j)``, ``ip(j)``: the row parameters (from column ``offset`` on) as (nrows, 1)
    arrays (traced)."""
    pdt = dist.param_dtype(family, out_dtype)
    cdt = pdt
    n, w = _n_float(family), _param_words(pdt)
    words = rows[:, offset : offset + n * w]
    if pdt.kind == "c":  # (real, imag) parts, each in one or two words
        part = np.dtype(f"f{pdt.itemsize // 2}")
        shape = (rows.shape[0], n, 2, 2) if part.itemsize == 8 else (rows.shape[0], n, 2)
        parts = lax.bitcast_convert_type(words.reshape(shape), part)
        fvals = lax.complex(parts[..., 0], parts[..., 1])
    elif pdt.itemsize == 8:
        fvals = lax.bitcast_convert_type(words.reshape(rows.shape[0], n, 2), pdt)
    elif pdt.itemsize == 4:
        fvals = lax.bitcast_convert_type(words, pdt)
    elif pdt == np.bool_:
        fvals = words != 0
    else:
        fvals = lax.bitcast_convert_type(words.astype(np.uint8 if pdt.itemsize == 1 else np.uint16), pdt)
    ivals = lax.bitcast_convert_type(rows[:, offset + n * w :], np.int32)
    return (lambda j: fvals[:, j : j + 1].astype(cdt)), (lambda j: ivals[:, j : j + 1])


def _counters(rows, counters, nrows):
    """``(hi, lo)`` counters of a chunk: each row's first counter (from ``rows``) plus the
    column, or (indexed) one counter per element, ``counters = (lo, hi)`` (nrows, ROW)."""
    if counters:
        lo, hi = counters
        return hi, lo
    local = lax.broadcasted_iota(np.uint32, (nrows, ROW), 1)
    return counter_words(rows[:, ROW_BASE_LO : ROW_BASE_LO + 1], rows[:, ROW_BASE_HI : ROW_BASE_HI + 1], local)


@functools.cache
def rows_program(family: str, out_dtype: np.dtype, nrows: int, indexed: bool = False,
                 fast_div: bool = False) -> Program:
    """``family``'s values for a chunk of ``nrows`` rows: ``(rows)``, or ``(rows, lo, hi)``
    when ``indexed``.

    ``rows`` (nrows, :func:`row_width`) uint32: each row's key, first counter and
    parameters (see :data:`ROW_PARAMS`); ``lo``/``hi`` (nrows, ROW): one counter
    per element. Returns the ``(nrows, ROW)`` values (a chunk is 2-D so that a
    program writing over its input needs no reshape, which would cost XLA a copy).
    """
    out_dtype = np.dtype(out_dtype)
    cdt = dist.param_dtype(family, out_dtype)

    def program(rows, *counters):
        count_trace()
        hi, lo = _counters(rows, counters, nrows)
        k1, k2 = rows[:, 0:1], rows[:, 1:2]
        fp, ip = _unpack_params(rows, family, out_dtype)
        return dist.family_values(family, cdt, out_dtype, lo,
                                  lambda lo2=None: unit_uniform(k1, k2, hi, lo if lo2 is None else lo2, cdt),
                                  fp, ip, fast_div)

    return Program(program, out=True)


@functools.cache
def unit_program(cdt: np.dtype, nrows: int, indexed: bool = False) -> Program:
    """The unit uniforms of a chunk's counters: ``(rows)`` or ``(rows, lo, hi)``, as
    :func:`rows_program`."""
    cdt = np.dtype(cdt)

    def program(rows, *counters):
        count_trace()
        hi, lo = _counters(rows, counters, nrows)
        return unit_uniform(rows[:, 0:1], rows[:, 1:2], hi, lo, cdt)

    return Program(program, out=True)


@functools.cache
def transform_program(family: str, out_dtype: np.dtype, nrows: int) -> Program:
    """``family``'s values from a chunk of unit uniforms: ``(u, rows)``.

    The uniforms are dead afterwards: when they have the output's dtype XLA
    writes the values over them (donated); 16-bit outputs get a buffer of their own.
    """
    out_dtype = np.dtype(out_dtype)
    cdt = dist.param_dtype(family, out_dtype)

    def program(u, rows):
        count_trace()
        fp, _ = _unpack_params(rows, family, out_dtype)
        return dist.values_from_unit(family, cdt, out_dtype, u, fp)

    if cdt == out_dtype:
        return Program(program, donate=(0,))
    return Program(program, out=True)


@functools.cache
def tensor_program(family: str, out_dtype: np.dtype, shape: tuple[int, ...]) -> Program:
    """One whole tensor of ``shape`` (``< 2**32`` elements) inside a user's ``jit``:
    ``(key, params)``, its values in ``shape``.

    The rows programs' values for a single tensor, with its key and parameters
    (``params`` as :func:`pack_params` words) as scalars: inlined into the user's
    program, where per-row machinery would only cost (XLA:CPU vectorizes the fused
    hash + transform loop worse with per-row operands). Each element's counter (its
    row-major flat index) is computed from iotas over ``shape`` itself, so the
    program is elementwise in the tensor's own shape: XLA's partitioner can give
    each device only its shard's elements (see :func:`flat_index`).
    """
    out_dtype = np.dtype(out_dtype)
    cdt = dist.param_dtype(family, out_dtype)

    n = math.prod(shape)
    # One element would compile to straight-line code, which XLA:CPU rounds differently
    # (1 ulp) from the loops of every larger draw: draw two, keep one.
    size = max(n, 2)
    grid = shape if n > 1 else (size,)

    def program(key, params):
        count_trace()
        lo = flat_index(grid)
        hi = jnp.zeros((), np.uint32)
        fp, ip = _unpack_params(params.reshape(1, -1), family, out_dtype, offset=0)
        out = dist.family_values(
            family, cdt, out_dtype, lo,
            lambda lo2=None: unit_uniform(key[0], key[1], hi, lo if lo2 is None else lo2, cdt),
            lambda j: fp(j)[0, 0], lambda j: ip(j)[0, 0])
        return out if size == n else lax.optimization_barrier(out)[:n].reshape(shape)

    return Program(program)


def flat_index(shape: tuple[int, ...]) -> jax.Array:
    """The row-major flat index of every element of ``shape`` as uint32 (traced;
    ``prod(shape) < 2**32``), from one iota per dimension."""
    index = jnp.zeros(shape, np.uint32)
    stride = 1
    for d in range(len(shape) - 1, -1, -1):
        if shape[d] > 1:
            iota = lax.broadcasted_iota(np.uint32, shape, d)
            index = index + (iota * np.uint32(stride) if stride > 1 else iota)
        stride *= shape[d]
    return index


def concat_prefix(chunks, valids, n):
    """The first ``n`` values of the valid prefixes of ``chunks`` (flattened), concatenated (traced)."""
    chunks = [c.reshape(-1) for c in chunks]
    arrays = [c[:v] if v != c.shape[0] else c for c, v in zip(chunks, valids, strict=True)]
    flat = arrays[0] if len(arrays) == 1 else jnp.concatenate(arrays)
    return flat[:n]


@functools.cache
def orthogonal_program(rows: int, cols: int, out_dtype: np.dtype, valids: tuple[int, ...],
                       method: str, region: tuple[tuple[int, int], ...] | None = None,
                       shape: tuple[int, ...] | None = None) -> Program:
    """:func:`xinit.core.distributions.orthogonal` of a normal draw given as chunks:
    ``(gain, *chunks)``; ``region`` (of the canonical ``shape``) picks a slice of it."""
    out_dtype = np.dtype(out_dtype)

    def program(gain, *chunks):
        count_trace()
        normal = concat_prefix(chunks, valids, rows * cols)
        q = dist.orthogonal(normal, rows, cols, gain, method).astype(out_dtype)
        if region is not None:
            q = q.reshape(shape)[tuple(slice(a, b) for a, b in region)]
        return q.reshape(-1)

    return Program(program)


@functools.cache
def unitary_program(rows: int, cols: int, out_dtype: np.dtype, valids: tuple[int, ...],
                    region: tuple[tuple[int, int], ...] | None = None,
                    shape: tuple[int, ...] | None = None) -> Program:
    """:func:`xinit.core.distributions.unitary` of the real view of a complex normal draw
    given as chunks: ``(gain, *chunks)``; ``region`` (of the real view's canonical
    ``shape``) picks a slice of it."""
    out_dtype = np.dtype(out_dtype)

    def program(gain, *chunks):
        count_trace()
        parts = concat_prefix(chunks, valids, 2 * rows * cols)
        q = dist.unitary(parts, rows, cols, gain).astype(out_dtype)
        if region is not None:
            q = q.reshape(shape)[tuple(slice(a, b) for a, b in region)]
        return q.reshape(-1)

    return Program(program)


@functools.cache
def sparse_program(total_rows: int, sel_rows: int, val_rows: int, width: int,
                   out_dtype: np.dtype, parts: int = 1) -> Program:
    """Sparse values of a block of columns: ``(key, zeros, fparams, vbase, sbase)``.

    ``vbase`` (2, val_rows): the (lo, hi) counter of each wanted row's first
    column (its values); ``sbase`` (2, sel_rows): the same for the selection
    uniforms of rows ``0 .. sel_rows - 1``. The zero mask is drawn over those
    rows (each column's own uniforms), and the last ``val_rows`` of it apply.
    Row ``i`` of a whole ``(rows, cols)`` tensor has value counters
    ``i * cols + c`` and selection counters ``rows * cols + i * cols + c``.

    ``parts=2``: complex values as their real view, each part at its own value
    counter (``2 * (i * cols + c) + p``, selection counters from
    ``2 * rows * cols``); a chosen element is zero in both parts, and the result
    is ``(val_rows, width, 2)``, flattened.
    """
    out_dtype = np.dtype(out_dtype)
    cdt = dist.compute_dtype(out_dtype)

    def program(kd, zeros, fparams, vbase, sbase):
        count_trace()
        k1, k2 = kd[0], kd[1]
        shi, slo = _sparse_counters(sbase, sel_rows, width)
        mask = dist.select_zeros(unit_uniform(k1, k2, shi, slo, cdt), zeros, total_rows)
        vhi, vlo = _sparse_counters(vbase, val_rows, parts * width)
        z = dist.standard_normal(unit_uniform(k1, k2, vhi, vlo, cdt), cdt)
        vals = fparams[0] + fparams[1] * z
        chosen = mask[sel_rows - val_rows :]
        if parts == 2:
            vals, chosen = vals.reshape(val_rows, width, 2), chosen[..., None]
        return jnp.where(chosen, jnp.zeros((), cdt), vals).astype(out_dtype).reshape(-1)

    return Program(program)


def _sparse_counters(base, nrows, width):
    local = lax.broadcasted_iota(np.uint32, (nrows, width), 1)
    return counter_words(base[0][:, None], base[1][:, None], local)


@functools.cache
def fold_program(n: int) -> Program:
    """``jax.random.fold_in`` of one key with ``n`` hashes (used if the self-check fails)."""

    def program(kd, hashes):
        count_trace()
        typed = jax.random.wrap_key_data(kd, impl="threefry2x32")
        return jax.vmap(lambda h: jax.random.key_data(jax.random.fold_in(typed, h)))(hashes)

    return Program(program)


_ON_CLEAR: list = []


def on_clear(fn) -> None:
    """Call ``fn()`` whenever :func:`clear_caches` runs (for caches of built programs)."""
    _ON_CLEAR.append(fn)


def clear_caches() -> None:
    """Forget every built program (after the hash implementation changed)."""
    for builder in (rows_program, unit_program, transform_program, orthogonal_program,
                    sparse_program, unitary_program, fold_program):
        builder.cache_clear()
    for fn in _ON_CLEAR:
        fn()
