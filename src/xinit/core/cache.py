"""Opt-in persistent compilation cache: skip xinit's compilations in later processes.

Compiling xinit's programs is most of the cost of a process's first
initialization (about a second on a 2-core CPU; see ``docs/performance.md``).
JAX can keep compiled programs on disk and load them in the next process, but
its cache is off by default and, when on, skips any program that compiled in
under a second, which is every xinit program. :func:`enable_compilation_cache`
turns it on with thresholds that keep xinit's small programs.

It changes JAX's *global* configuration for this process (JAX has no other
switch), so xinit never calls it for you: the cache then also holds your own
jitted programs. Only use a directory that nobody else can write to: JAX treats
the cache's contents as trusted code.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

__all__ = ["enable_compilation_cache", "default_cache_dir"]


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/xinit/jax`` (``~/.cache/xinit/jax`` when the variable is unset).

    >>> default_cache_dir().parts[-2:]
    ('xinit', 'jax')
    """
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "xinit" / "jax"


def enable_compilation_cache(path: str | os.PathLike | None = None, *,
                             min_compile_time_secs: float = 0.0) -> Path:
    """Turn on JAX's persistent compilation cache at ``path`` for this process.

    Sets ``jax_compilation_cache_dir`` to ``path`` (default
    :func:`default_cache_dir`, created if missing),
    ``jax_persistent_cache_min_compile_time_secs`` to ``min_compile_time_secs``
    (JAX's default of 1 s would skip every xinit program) and
    ``jax_persistent_cache_min_entry_size_bytes`` to ``-1`` (no size limit).
    Call it before the first initialization; programs compiled earlier in the
    process are not written back.

    Args:
        path: the cache directory; ``None`` for :func:`default_cache_dir`.
        min_compile_time_secs: programs that compiled faster than this are not
            stored (``>= 0``).

    Returns:
        The cache directory as an absolute :class:`~pathlib.Path`.

    Raises:
        ValueError: ``min_compile_time_secs`` is negative or not a number.

    Example::

        >>> import xinit.core.cache
        >>> xinit.core.cache.enable_compilation_cache("/tmp/xinit-jax-cache")  # doctest: +SKIP
        PosixPath('/tmp/xinit-jax-cache')
    """
    try:
        min_time = float(min_compile_time_secs)
    except (TypeError, ValueError):
        min_time = float("nan")
    if not min_time >= 0.0:
        raise ValueError(
            f"enable_compilation_cache: min_compile_time_secs must be a number >= 0, "
            f"got {min_compile_time_secs!r}"
        )
    directory = Path(path if path is not None else default_cache_dir()).expanduser().resolve()
    directory.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_time)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return directory
