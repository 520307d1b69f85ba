"""The machine's physical limits for drawing into torch tensors, and each row's distance to them.

    .venv/bin/python benchmarks/limits.py            # prints the limits as JSON (~20 s)

What bounds any implementation of xinit's draws on this CPU:

- **the threefry hash**: ``jax.random``'s bits (and so xinit's values, bit for bit)
  are one threefry-2x32 hash per value. Measured as XLA's compiled threefry over a
  large buffer - xinit's unrolled hash with the CPU's widest vectors (AVX-512 where
  the CPU has it: ``xla_cpu_prefer_vector_width=512``) and ``jax.random.bits`` as
  JAX compiles it - on every core and pinned to one core (a fresh process), in
  values/s and ns/value. numpy's and torch's own generators (different algorithms,
  for reference) on one core.
- **memory writes**: filling a large buffer, into fresh pages (first touch: the
  kernel maps each page) and into warm ones, with numpy (one thread) and torch
  (its thread pool).
- **the copy into torch**: memcpy bandwidth from a host JAX buffer into a torch
  tensor (numpy views of both, one thread: what xinit's torch sink does), into a
  warm and into a fresh tensor.
- **a call's fixed cost**: the latency of one compiled xinit chunk program of 1 Ki
  values, from dispatch until its result is ready, back to back and after the cores
  sat idle for 200 us (as between the calls of a loop over small tensors). XLA:CPU
  runs such a program on its worker threads (only programs under ~1000 flops run
  on the caller's), so each call pays two thread hand-offs; torch's kernel runs
  on the caller's thread. And the time to ``import jax`` in a fresh process where
  torch is already imported: every cold start of xinit pays it before anything
  else.

:func:`floor_seconds` turns these into a lower bound for a row that writes ``n``
float32 values into a torch tensor: the hash and the copy, each at its measured
rate, perfectly spread over every core. ``run.py --sections limits`` measures
them and renders each target row's distance to its floor.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

N = 1 << 24  # 16 Mi values: 64 MB of float32, far beyond every cache


def _best(fn, repeats: int = 7) -> float:
    """Median seconds of ``fn`` after one warm-up call."""
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def measure_hash(n: int = N) -> dict:
    """XLA's compiled threefry over ``n`` counters (float32 unit uniforms out), in this
    process's threads; and numpy's and torch's generators for reference."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    from jax import lax

    from xinit.core import distributions, programs
    from xinit.core.threefry import unit_uniform

    f32 = np.dtype(np.float32)

    def ours(kd):
        lo = lax.iota(np.uint32, n)
        return unit_uniform(kd[0], kd[1], jnp.zeros((), np.uint32), lo, f32)

    def compiled(fn, *args):
        lowered = jax.jit(fn).lower(*args)
        try:
            return lowered.compile(compiler_options=programs.CPU_COMPILER_OPTIONS)
        except Exception:  # noqa: BLE001 - an XLA without the option
            return lowered.compile()

    kd = np.array([0, 42], np.uint32)
    exe = compiled(ours, kd)
    unit = np.asarray(exe(kd))
    # the normal families' transform (jax.random.normal's erf_inv), as xinit runs it
    # for a full chunk: a program of its own over the unit uniforms
    transform = compiled(lambda u: distributions.standard_normal(u, f32), unit)
    key = jax.random.key(42)
    jax_bits = jax.jit(lambda k: jax.random.bits(k, (n,), jnp.uint32))
    jax_uniform = jax.jit(lambda k: jax.random.uniform(k, (n,), jnp.float32))
    rng = np.random.default_rng(0)
    out32 = np.empty(n, np.float32)
    t = torch.empty(n)
    seconds = {
        "xinit threefry (unit uniforms)": _best(lambda: exe(kd).block_until_ready()),
        "xinit normal transform (erf_inv, after the hash)": _best(
            lambda: transform(unit).block_until_ready()),
        "jax.random.bits": _best(lambda: jax_bits(key).block_until_ready()),
        "jax.random.uniform": _best(lambda: jax_uniform(key).block_until_ready()),
        "numpy PCG64 random (float32)": _best(lambda: rng.random(n, np.float32, out=out32)),
        "numpy standard_normal (float32)": _best(
            lambda: rng.standard_normal(n, np.float32, out=out32)),
        "torch uniform_": _best(lambda: t.uniform_()),
        "torch normal_": _best(lambda: t.normal_()),
    }
    return {name: {"ns_per_value": s / n * 1e9, "values_per_s": n / s} for name, s in seconds.items()}


def measure_memory(n: int = N) -> dict:
    """Write bandwidth (GB/s) into fresh and warm pages, and the copy into torch."""
    import jax.numpy as jnp
    import numpy as np
    import torch

    nbytes = 4 * n
    warm = np.empty(n, np.float32)
    warm.fill(0.0)
    tw = torch.empty(n)
    tw.fill_(0.0)
    src = np.asarray(jnp.arange(n, dtype=jnp.float32))  # a host JAX buffer, viewed by numpy

    def fresh_numpy():
        a = np.empty(n, np.float32)
        a.fill(1.0)

    def fresh_torch():
        torch.empty(n).fill_(1.0)

    def copy_fresh():
        np.copyto(torch.empty(n).numpy(), src)

    seconds = {
        "numpy fill, fresh pages": _best(fresh_numpy),
        "numpy fill, warm pages": _best(lambda: warm.fill(1.0)),
        "torch fill_, fresh pages": _best(fresh_torch),
        "torch fill_, warm pages": _best(lambda: tw.fill_(1.0)),
        "copy JAX buffer -> torch tensor, warm": _best(lambda: np.copyto(tw.numpy(), src)),
        "copy JAX buffer -> torch tensor, fresh": _best(copy_fresh),
    }
    return {name: {"GB_per_s": nbytes / s / 1e9, "ns_per_value": s / n * 1e9}
            for name, s in seconds.items()}


def measure_call(gap_us: float = 200.0, calls: int = 400) -> dict:
    """Microseconds from dispatch to ready of one 1 Ki-value xinit chunk program (the
    rows program xinit runs for a small uniform tensor), back to back and after
    ``gap_us`` of busy Python (the caller's core busy, XLA's threads idle); torch's
    ``uniform_`` on the same 1 Ki values for reference."""
    import numpy as np
    import torch

    from xinit.core import engine, packing, specs

    shape = (4, packing.ROW)
    req = engine.request(specs.Uniform(-1.0, 1.0).plan(shape), 0, shape, np.float32)
    runs = packing.runs_of(req)
    (group,) = packing.groups_of([req], {0: runs})
    (exe,) = engine._executables(group)
    args = next(packing.pack(group, [req], {0: runs}))
    out = [np.zeros(group.chunk_shape, np.float32)]
    t = torch.empty(shape)

    def xla_call():
        out[0] = exe(out[0], args.rows)
        out[0].block_until_ready()

    def timed(fn, gap):
        fn()
        ts = []
        for _ in range(calls):
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < gap * 1e-6:
                pass
            t1 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t1)
        return statistics.median(ts) * 1e6

    return {"xinit chunk program, back to back": timed(xla_call, 0.0),
            f"xinit chunk program, after {gap_us:g} us idle": timed(xla_call, gap_us),
            f"torch uniform_, after {gap_us:g} us idle": timed(t.uniform_, gap_us)}


def measure_import_jax(repeats: int = 3) -> float:
    """Median seconds to ``import jax`` in a fresh process that has imported torch."""
    code = ("import time, torch; t0 = time.perf_counter(); import jax; "
            "print(time.perf_counter() - t0)")
    ts = []
    for _ in range(repeats):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True)
        ts.append(float(proc.stdout.strip().splitlines()[-1]))
    return statistics.median(ts)


def _pinned_child(n: int) -> dict:
    """The hash and memory measurements in a fresh process pinned to one core."""
    cmd = [sys.executable, os.path.abspath(__file__), "--one-core", "--n", str(n)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"limits.py --one-core failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cpu_info() -> dict:
    """The CPU's model name (``lscpu``), vector capability as torch sees it, and cores."""
    import torch

    model = "unknown"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if model == "unknown":
        try:
            with open("/proc/cpuinfo") as f:
                model = next((ln.split(":", 1)[1].strip() for ln in f
                              if ln.startswith("model name")), model)
        except OSError:
            pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"model": model, "capability": torch.backends.cpu.get_cpu_capability(),
            "cores": cores}


def measure(n: int = N, one_core: bool = True) -> dict:
    """Every limit: ``{"cpu", "all_cores": {"hash", "memory"}, "one_core": {...}}``."""
    out = {"cpu": cpu_info(), "n": n,
           "all_cores": {"hash": measure_hash(n), "memory": measure_memory(n)},
           "call_us": measure_call(), "import_jax_s": measure_import_jax()}
    if one_core:
        out["one_core"] = _pinned_child(n)
    return out


TRANSFORM = "xinit normal transform (erf_inv, after the hash)"


def floor_seconds(limits: dict, n: float, itemsize: int = 4, normal: bool = False) -> float:
    """A lower bound for drawing ``n`` values into a torch tensor on this machine.

    One threefry hash per value and one copy of ``n * itemsize`` bytes into the
    tensor, each at its one-core rate, spread perfectly over every core (the
    hash program writes its own output, so its write is in its rate); with
    ``normal``, also ``jax.random.normal``'s ``erf_inv`` transform per value.
    """
    one = limits.get("one_core") or limits["all_cores"]
    cores = 1 if "one_core" not in limits else limits["cpu"]["cores"]
    hash_ns = one["hash"]["xinit threefry (unit uniforms)"]["ns_per_value"]
    if normal:
        hash_ns += one["hash"][TRANSFORM]["ns_per_value"]
    copy_gbs = one["memory"]["copy JAX buffer -> torch tensor, warm"]["GB_per_s"]
    core_seconds = n * hash_ns * 1e-9 + n * itemsize / (copy_gbs * 1e9)
    return core_seconds / max(cores, 1)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=N, help="values per measurement")
    ap.add_argument("--one-core", action="store_true",
                    help="(internal) pin this process to one core and measure")
    args = ap.parse_args(argv)
    if args.one_core:
        if hasattr(os, "sched_setaffinity"):  # before JAX and torch start their thread pools
            os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        import torch

        torch.set_num_threads(1)
        out = {"hash": measure_hash(args.n), "memory": measure_memory(args.n)}
    else:
        out = measure(args.n)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
