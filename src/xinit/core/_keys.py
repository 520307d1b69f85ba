"""Turning what users pass as a key into threefry key data: two uint32 words."""

from __future__ import annotations

import operator

import jax
import numpy as np

__all__ = ["key_data", "fold_in_name", "stable_hash"]

_MASK32 = 0xFFFFFFFF


def key_data(key) -> jax.Array | np.ndarray:
    """Return the ``(2,) uint32`` threefry key data of ``key``.

    ``key`` may be a typed key (``jax.random.key``), a legacy ``uint32[2]`` key
    (``jax.random.PRNGKey``) or an integer seed in the int64 range. A seed ``s``
    gives ``[s >> 32, s & 0xFFFFFFFF]`` of its 64-bit two's complement: the data of
    ``jax.random.key(s)`` under ``jax_enable_x64`` (without x64 JAX keeps only 32
    bits of the seed; xinit keeps all 64 whatever the config, so a seed means the
    same key everywhere). Inside ``jit`` the result is a tracer.
    """
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        seed = operator.index(key)
        if not -(2**63) <= seed < 2**64:
            raise ValueError(f"an int seed must fit in 64 bits; got {seed}")
        seed &= 0xFFFFFFFFFFFFFFFF
        return np.array([seed >> 32, seed & _MASK32], dtype=np.uint32)
    if isinstance(key, bool) or key is None:
        raise TypeError(
            f"key must be a jax.random.key, a uint32[2] key or an int seed; got {key!r}"
        )
    dtype = getattr(key, "dtype", None)
    if dtype is None:
        raise TypeError(
            f"key must be a jax.random.key, a uint32[2] key or an int seed; got {type(key).__name__}"
        )
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        impl = jax.random.key_impl(key)
        if "threefry2x32" not in str(impl):
            raise TypeError(
                f"xinit samples with threefry2x32 keys; got a key of impl {impl}. "
                "Make one with jax.random.key(seed, impl='threefry2x32')."
            )
        if key.shape != ():
            raise _batch_error(key.shape)
        return jax.random.key_data(key)
    if len(key.shape) > 1 and key.shape[-1] == 2 and np.dtype(dtype) == np.uint32:
        raise _batch_error(key.shape[:-1])
    if tuple(key.shape) != (2,) or np.dtype(dtype) != np.uint32:
        raise TypeError(
            f"a raw key must be uint32 of shape (2,) (jax.random.PRNGKey); got {np.dtype(dtype)}"
            f"{tuple(key.shape)}"
        )
    return key


def _batch_error(batch_shape) -> ValueError:
    # ValueError, as jax.random's functions raise for a batch of keys.
    return ValueError(
        f"xinit accepts a single key, but was given a key array of shape {tuple(batch_shape)} "
        "!= (). Use jax.vmap for batching, or draw each key on its own."
    )


def stable_hash(name: str) -> int:
    """A process-independent 32-bit hash of ``name`` (CRC-32 of its UTF-8 bytes).

    Python's ``hash`` is salted per process and would make keys irreproducible.
    """
    import zlib

    return zlib.crc32(name.encode("utf-8")) & _MASK32


def fold_in_name(key, name: str) -> jax.Array:
    """``jax.random.fold_in(key, stable_hash(name))`` as key data: the per-parameter key."""
    kd = key_data(key)
    typed = jax.random.wrap_key_data(kd, impl="threefry2x32")
    return jax.random.key_data(jax.random.fold_in(typed, stable_hash(name)))
