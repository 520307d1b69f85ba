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


def peak_rss_bytes() -> int:
    """The peak resident set size of this process (``VmHWM``; ``ru_maxrss`` where
    ``/proc`` is missing)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def rss_parts() -> dict[str, int]:
    """The resident set now, by kind, in bytes (``/proc/self/status``): ``anon``,
    memory the process allocated; ``file``, pages of mapped files (shared
    libraries' code: JAX's compiler is ~40 MiB of it, made resident on its first
    use, shared between processes); ``shmem``, shared memory. Empty where
    ``/proc`` is missing."""
    names = {"RssAnon:": "anon", "RssFile:": "file", "RssShmem:": "shmem"}
    parts = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                name = names.get(line.split(maxsplit=1)[0]) if line.strip() else None
                if name:
                    parts[name] = int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return parts
