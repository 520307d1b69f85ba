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

import contextlib
import functools

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
    "rows_program",
    "unit_program",
    "transform_program",
    "orthogonal_program",
    "sparse_program",
    "buffer_program",
    "fold_program",
    "clear_caches",
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


_OOM_MARKERS = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory", "Unable to allocate",
                "Cannot allocate memory", "Failed to allocate")


@contextlib.contextmanager
def memory_errors(what: str = "xinit"):
    """Re-raise XLA's and numpy's allocation failures as :class:`OutOfMemoryError`.

    XLA reports a failed allocation as a ``JaxRuntimeError`` (``RESOURCE_EXHAUSTED``
    when a buffer cannot be allocated, "Unable to allocate section memory" when
    the compiler cannot map code); numpy raises ``MemoryError``. Other errors
    pass through unchanged.
    """
    try:
        yield
    except OutOfMemoryError:
        raise
    except MemoryError as err:
        raise OutOfMemoryError(f"{what}: out of memory ({err})") from err
    except Exception as err:
        if isinstance(err, jax.errors.JaxRuntimeError) and any(m in str(err) for m in _OOM_MARKERS):
            raise OutOfMemoryError(f"{what}: out of memory ({str(err).splitlines()[0]})") from err
        raise


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


def _row_counters(base_lo, base_hi, nrows):
    local = lax.broadcasted_iota(np.uint32, (nrows, ROW), 1)
    return counter_words(base_lo[:, None], base_hi[:, None], local)


def _counters(a, b, nrows, indexed):
    """``(hi, lo)`` counters of a chunk: per-row bases ``a = lo, b = hi`` (+ the column),
    or (``indexed``) one counter per element, ``a = lo``, ``b = hi`` of shape (nrows, ROW)."""
    if indexed:
        return b, a
    return _row_counters(a, b, nrows)


@functools.cache
def rows_program(family: str, out_dtype: np.dtype, nrows: int, indexed: bool = False,
                 fast_div: bool = False) -> Program:
    """``family``'s values for a chunk of ``nrows`` rows: ``(keys, a, b, fparams, iparams)``.

    ``keys`` (nrows, 2) key data; ``a``/``b`` the counters (see :func:`_counters`);
    ``fparams`` (nrows, n) in the family's parameter dtype (uniform: its cap
    appended, see :func:`xinit.core.distributions.program_fparams`); ``iparams``
    (nrows, m) int32. Returns the flat ``nrows * ROW`` values.
    """
    out_dtype = np.dtype(out_dtype)
    cdt = dist.param_dtype(family, out_dtype)

    def program(keys, a, b, fparams, iparams):
        count_trace()
        hi, lo = _counters(a, b, nrows, indexed)
        k1, k2 = keys[:, 0:1], keys[:, 1:2]
        out = dist.family_values(
            family, cdt, out_dtype, lo, lambda: unit_uniform(k1, k2, hi, lo, cdt),
            lambda j: fparams[:, j : j + 1].astype(cdt), lambda j: iparams[:, j : j + 1], fast_div,
        )
        return out.reshape(-1)

    return Program(program, out=True)


@functools.cache
def unit_program(cdt: np.dtype, nrows: int, indexed: bool = False) -> Program:
    """The unit uniforms of a chunk's counters: ``(keys, a, b)`` as :func:`rows_program`."""
    cdt = np.dtype(cdt)

    def program(keys, a, b):
        count_trace()
        hi, lo = _counters(a, b, nrows, indexed)
        return unit_uniform(keys[:, 0:1], keys[:, 1:2], hi, lo, cdt).reshape(-1)

    return Program(program, out=True)


@functools.cache
def transform_program(family: str, out_dtype: np.dtype, nrows: int) -> Program:
    """``family``'s values from a chunk of unit uniforms: ``(u, fparams)``.

    The uniforms are dead afterwards: when they have the output's dtype XLA
    writes the values over them (donated); 16-bit outputs get a buffer of their own.
    """
    out_dtype = np.dtype(out_dtype)
    cdt = dist.param_dtype(family, out_dtype)

    def program(u, fparams):
        count_trace()
        out = dist.values_from_unit(family, cdt, out_dtype, u.reshape(nrows, ROW),
                                    lambda j: fparams[:, j : j + 1].astype(cdt))
        return out.reshape(-1)

    if cdt == out_dtype:
        return Program(program, donate=(0,))
    return Program(program, out=True)


def concat_prefix(chunks, valids, n):
    """The first ``n`` values of the valid prefixes of ``chunks``, concatenated (traced)."""
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
def sparse_program(total_rows: int, sel_rows: int, val_rows: int, width: int,
                   out_dtype: np.dtype) -> Program:
    """Sparse values of a block of columns: ``(key, zeros, fparams, vbase, sbase)``.

    ``vbase`` (2, val_rows): the (lo, hi) counter of each wanted row's first
    column (its values); ``sbase`` (2, sel_rows): the same for the selection
    uniforms of rows ``0 .. sel_rows - 1``. The zero mask is drawn over those
    rows (each column's own uniforms), and the last ``val_rows`` of it apply.
    Row ``i`` of a whole ``(rows, cols)`` tensor has value counters
    ``i * cols + c`` and selection counters ``rows * cols + i * cols + c``.
    """
    out_dtype = np.dtype(out_dtype)
    cdt = dist.compute_dtype(out_dtype)

    def program(kd, zeros, fparams, vbase, sbase):
        count_trace()
        k1, k2 = kd[0], kd[1]
        shi, slo = _sparse_counters(sbase, sel_rows, width)
        mask = dist.select_zeros(unit_uniform(k1, k2, shi, slo, cdt), zeros, total_rows)
        vhi, vlo = _sparse_counters(vbase, val_rows, width)
        z = dist.standard_normal(unit_uniform(k1, k2, vhi, vlo, cdt), cdt)
        vals = fparams[0] + fparams[1] * z
        return jnp.where(mask[sel_rows - val_rows :], jnp.zeros((), cdt), vals).astype(out_dtype).reshape(-1)

    return Program(program)


def _sparse_counters(base, nrows, width):
    local = lax.broadcasted_iota(np.uint32, (nrows, width), 1)
    return counter_words(base[0][:, None], base[1][:, None], local)


@functools.cache
def buffer_program(dtype: np.dtype, size: int) -> Program:
    """A new ``(size,)`` buffer of ``dtype`` for the chunk programs to write into."""
    dtype = np.dtype(dtype)

    def program():
        count_trace()
        return jnp.zeros((size,), dtype)

    return Program(program)


@functools.cache
def fold_program(n: int) -> Program:
    """``jax.random.fold_in`` of one key with ``n`` hashes (used if the self-check fails)."""

    def program(kd, hashes):
        count_trace()
        typed = jax.random.wrap_key_data(kd, impl="threefry2x32")
        return jax.vmap(lambda h: jax.random.key_data(jax.random.fold_in(typed, h)))(hashes)

    return Program(program)


def clear_caches() -> None:
    """Forget every built program (after the hash implementation changed)."""
    for builder in (rows_program, unit_program, transform_program, orthogonal_program,
                    sparse_program, buffer_program, fold_program):
        builder.cache_clear()
