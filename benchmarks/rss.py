"""This process's resident memory, for the benchmarks' memory rows (Linux ``/proc``).

The peak is ``VmHWM``, the high-water mark of this process's own address space:
``resource.getrusage(...).ru_maxrss`` would be wrong in a child started by a
large parent, because Linux carries the parent's peak across fork + exec into
it (``benchmarks/run.py`` reaches ~4 GiB before its memory sections).
"""

from __future__ import annotations

import os
import resource


def rss_bytes() -> int:
    """The resident set size now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _status_bytes(fields: dict[str, str]) -> dict[str, int]:
    """``/proc/self/status`` lines ``Field:  N kB`` as ``{fields[Field]: N * 1024}``
    (the fields present; empty where ``/proc`` is missing)."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                field, _, rest = line.partition(":")
                if field in fields:
                    out[fields[field]] = int(rest.split()[0]) * 1024  # kB
    except OSError:
        pass
    return out


def peak_rss_bytes() -> int:
    """The peak resident set size of this process (``VmHWM``; ``ru_maxrss`` where
    ``/proc`` is missing)."""
    peak = _status_bytes({"VmHWM": "peak"}).get("peak")
    if peak is not None:
        return peak
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def rss_parts() -> dict[str, int]:
    """The resident set now, by kind, in bytes (``/proc/self/status``): ``anon``,
    memory the process allocated; ``file``, pages of mapped files (shared
    libraries' code: JAX's compiler is ~40 MiB of it, made resident on its first
    use, shared between processes); ``shmem``, shared memory. Empty where
    ``/proc`` is missing."""
    return _status_bytes({"RssAnon": "anon", "RssFile": "file", "RssShmem": "shmem"})
