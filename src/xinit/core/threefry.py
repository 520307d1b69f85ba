"""Random bits: the threefry-2x32 hash, the unit uniforms made from it, and its self-check.

Every random value xinit draws comes from threefry-2x32 with the *partitionable*
counter layout that ``jax.random`` uses by default: element ``i`` of a draw is
hashed from the 64-bit counter ``i`` split into ``(hi, lo)`` words, under the
tensor's key. The hash is written here in plain uint32 arithmetic with its 20
rounds unrolled, so the same function runs in ``jax.numpy`` (inside xinit's
compiled programs) and in numpy (on the host, e.g. :func:`fold_in_many`). Its
values are bit-identical to ``jax.random.bits`` (tested), and :func:`self_check`
switches to ``jax.extend.random.threefry2x32_p`` should a JAX release ever
disagree. Why it is unrolled (speed) is in ``benchmarks/notes.md``.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
    "threefry2x32",
    "hash_counters",
    "unit_uniform",
    "counter_words",
    "self_check",
    "ensure_checked",
    "fold_in_many",
]

_U32 = np.uint32
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _rotl(x, d):
    return (x << _U32(d)) | (x >> _U32(32 - d))


def threefry2x32(k1, k2, x1, x2):
    """Threefry-2x32 with 20 rounds (Salmon et al. 2011), unrolled; elementwise.

    Works on ``jax.numpy`` and numpy uint32 values alike (numpy: call under
    ``np.errstate(over="ignore")``, the additions wrap by design).
    """
    k3 = k1 ^ k2 ^ _U32(0x1BD11BDA)
    ks = (k1, k2, k3)
    x1 = x1 + k1
    x2 = x2 + k2
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x1 = x1 + x2
            x2 = _rotl(x2, r)
            x2 = x1 ^ x2
        x1 = x1 + ks[(i + 1) % 3]
        x2 = x2 + ks[(i + 2) % 3] + _U32(i + 1)
    return x1, x2


# False once self_check found xinit's hash disagreeing with this JAX release.
_use_own_threefry = True


def hash_counters(k1, k2, hi, lo):
    """The two threefry output words for counters ``(hi, lo)`` under key ``(k1, k2)`` (traced)."""
    if _use_own_threefry:
        return threefry2x32(k1, k2, hi, lo)
    from jax.extend.random import threefry2x32_p

    return tuple(threefry2x32_p.bind(k1, k2, hi, lo))


def unit_uniform(k1, k2, hi, lo, cdt):
    """``[0, 1)`` floats in ``cdt`` from the counters, exactly as ``jax.random.uniform``.

    float32 takes 23 mantissa bits of the xor of the two words, float64 52 bits of
    both words: the random bits every random family starts from.
    """
    b1, b2 = hash_counters(k1, k2, hi, lo)
    finfo = jnp.finfo(cdt)
    if cdt == np.float64:
        bits = (b1.astype(np.uint64) << np.uint64(32)) | b2.astype(np.uint64)
        one = np.array(1.0, np.float64).view(np.uint64)
        mant = (bits >> np.uint64(64 - finfo.nmant)) | one
    else:
        bits = b1 ^ b2
        one = np.array(1.0, np.float32).view(np.uint32)
        mant = (bits >> _U32(32 - finfo.nmant)) | one
    return lax.bitcast_convert_type(mant, cdt) - cdt.type(1.0)


def counter_words(base_lo, base_hi, local):
    """The 64-bit counters ``base + local`` as ``(hi, lo)`` uint32 words (carry included)."""
    lo = base_lo + local
    return base_hi + (lo < base_lo).astype(np.uint32), lo


def self_check() -> bool:
    """Check the unrolled threefry against ``jax.random.bits``; fall back if they differ.

    Runs once per process on first use (see :func:`ensure_checked`). Returns True
    when xinit's own hash is used.
    """
    global _use_own_threefry
    key = jax.random.key(20240531)
    n = 1000
    kd = np.asarray(jax.random.key_data(key))
    lo = np.arange(2**32 - 500, 2**32 + 500, dtype=np.uint64)  # crosses the hi-word carry
    hi32, lo32 = (lo >> 32).astype(np.uint32), (lo & 0xFFFFFFFF).astype(np.uint32)
    # xinit's hash in numpy (the same uint32 arithmetic, no compilation); JAX's
    # primitive and jax.random.bits in one compiled program (a cold start pays
    # for one compilation, not three).
    with np.errstate(over="ignore"):
        ours = threefry2x32(kd[0], kd[1], hi32, lo32)
        mine = threefry2x32(kd[0], kd[1], np.zeros(n, np.uint32), np.arange(n, dtype=np.uint32))
    from jax.extend.random import threefry2x32_p

    def reference(key, k, hi, lo):
        return tuple(threefry2x32_p.bind(k[0], k[1], hi, lo)), jax.random.bits(key, (n,), np.uint32)

    ref, bits = jax.jit(reference)(key, kd, hi32, lo32)
    ok = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(ours, ref, strict=True))
    ok = ok and bool((np.asarray(bits) == (mine[0] ^ mine[1])).all())
    if not ok:
        warnings.warn(
            "xinit's threefry does not match this JAX release's jax.random bits; "
            "falling back to jax.extend.random.threefry2x32_p (slower on CPU).",
            RuntimeWarning,
            stacklevel=2,
        )
        _use_own_threefry = False
        from . import programs

        programs.clear_caches()  # programs traced with the own hash
    return ok


def _check_marker():
    """Where a passed self-check is remembered: the persistent compilation cache, if on.

    The result depends only on the versions of xinit, jax and jaxlib and on the
    backend, which the file name carries; the cache directory is trusted by
    JAX already (it holds executables). ``None`` when no cache is configured.
    """
    directory = jax.config.jax_compilation_cache_dir
    if not directory:
        return None
    import jaxlib

    from xinit import __version__

    from .programs import default_platform

    name = f"xinit-{__version__}-selfcheck-jax{jax.__version__}-jaxlib{jaxlib.__version__}"
    return Path(directory) / f"{name}-{default_platform()}.ok"


@functools.cache
def ensure_checked() -> bool:
    """Run :func:`self_check` once per process, eagerly even when first reached
    inside a user's ``jit`` (e.g. ``jax.jit(model.init)``).

    With a persistent compilation cache on (see
    :func:`xinit.core.cache.enable_compilation_cache`), a pass is remembered
    there, so later processes skip the check's compilation.
    """
    marker = _check_marker()
    if marker is not None and marker.exists():
        return True
    with jax.ensure_compile_time_eval():
        ok = self_check()
    if ok and marker is not None:
        try:
            marker.touch()
        except OSError:  # a read-only cache: check again next time
            pass
    return ok


def fold_in_many(kd, hashes) -> np.ndarray:
    """``jax.random.fold_in(key, h)`` key data for every hash ``h``: ``(len(hashes), 2) uint32``.

    Equals :func:`xinit.core.fold_in_name` per name (``h = stable_hash(name)``).
    ``fold_in(key, h)`` is the hash of the counter ``(0, h)`` under the key, so it
    is computed on the host with the self-checked threefry (nothing to trace or
    compile); should the self-check fail, by one compiled call to
    ``jax.random.fold_in``, padded to a power of two so the program count stays small.
    """
    n = len(hashes)
    if n == 0:
        return np.zeros((0, 2), np.uint32)
    if ensure_checked():
        k = np.asarray(kd, np.uint32)
        h = np.asarray(hashes, np.uint32)
        with np.errstate(over="ignore"):
            a, b = threefry2x32(k[0], k[1], np.zeros_like(h), h)
        return np.stack([a, b], axis=1)
    from . import programs

    size = 2
    while size < n:
        size *= 2
    h = np.zeros(size, np.uint32)
    h[:n] = np.asarray(hashes, np.uint32)
    out = programs.fold_program(size)(np.asarray(kd, np.uint32), h)
    return np.asarray(out)[:n]
