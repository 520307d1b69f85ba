"""xinit's benchmark suite: xinit side by side with torch.nn.init and jax.nn.initializers.

    .venv/bin/python benchmarks/run.py            # everything (make bench), ~10 min here
    .venv/bin/python benchmarks/run.py --quick    # a subset, < 3 min on 2 cores
    .venv/bin/python benchmarks/run.py --out /tmp/bench --sections single,models

Writes ``performance.md`` (tables of medians and ratios, the machine, the targets)
and ``performance.png`` (a bar chart of the ratios) into ``--out`` (``docs/``).
Ratio = peer time / xinit time (> 1: xinit is faster). Peers run in the same
process, interleaved with xinit repeat by repeat, so load from other processes
hits both sides alike. Times are medians of warm repeats unless a row says cold.
Nothing here asserts a time; ``tests/test_benchmarks_smoke.py`` runs the code
paths on tiny sizes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import jax  # noqa: E402
import models  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import xinit.core  # noqa: E402
import xinit.torch as xt  # noqa: E402

SQRT5 = math.sqrt(5)


@dataclass
class Row:
    section: str
    case: str
    shape: str
    dtype: str
    xinit_s: float | None
    peer: str
    peer_s: float | None
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.xinit_s and self.peer_s:
            return self.peer_s / self.xinit_s
        return None


# ----------------------------------------------------------------------------- timing
def interleaved(fns: dict, repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds of each callable, the callables run in turn within each repeat."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


# ----------------------------------------------------------------------------- single tensors
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}

# (function, kwargs, shape override or None)
SINGLE = [
    ("uniform_", {"a": -0.1, "b": 0.1}, None),
    ("normal_", {"std": 0.02}, None),
    ("trunc_normal_", {"std": 0.02, "a": -0.04, "b": 0.04}, None),
    ("constant_", {"val": 0.5}, None),
    ("ones_", {}, None),
    ("zeros_", {}, None),
    ("eye_", {}, None),
    ("dirac_", {}, "conv"),
    ("xavier_uniform_", {}, None),
    ("xavier_normal_", {}, None),
    ("kaiming_uniform_", {"a": SQRT5}, None),
    ("kaiming_normal_", {"nonlinearity": "relu"}, None),
    ("orthogonal_", {}, "orthogonal"),
    ("sparse_", {"sparsity": 0.9}, "sparse"),
]
ORTHOGONAL_SHAPES = [(2048, 2048), (4096, 1024)]
SPARSE_SHAPES = [(1024, 8192)]


def single_cases(quick: bool, sizes=None, dtypes=None):
    """(fn, kwargs, shape, dtype) for the single-tensor table."""
    big = [(4096, 4096)] if quick else [(4096, 4096), (16384, 4096)]
    sizes = sizes or big
    dtypes = dtypes or (["float32"] if quick else ["float32", "bfloat16", "float64"])
    cases = []
    for dtype in dtypes:
        for fn, kw, kind in SINGLE:
            if kind == "orthogonal":
                shapes = ORTHOGONAL_SHAPES if sizes is big else [sizes[0]]
            elif kind == "sparse":
                shapes = SPARSE_SHAPES if sizes is big else [sizes[0]]
            elif kind == "conv":
                shapes = [(s[0], s[1], 1, 1) for s in sizes]
            else:
                shapes = sizes
            if dtype != "float32":  # other dtypes on the first (smaller) size only
                shapes = shapes[:1]
            cases += [(fn, kw, tuple(s), dtype) for s in shapes]
    return cases


def _warm_up_process() -> None:
    """Bring both libraries' thread pools and allocators up before the first timed case."""
    t = torch.empty(4096, 4096)
    for _ in range(3):
        xt.uniform_(t)
        torch.nn.init.uniform_(t)


def bench_single_torch(cases, repeats: int) -> list[Row]:
    rows = []
    if any(math.prod(shape) >= 2**20 for _, _, shape, _ in cases):
        _warm_up_process()
    for fn, kw, shape, dtype in cases:
        t = torch.empty(shape, dtype=TORCH_DTYPES[dtype])
        ours = getattr(xt, fn)
        peer = getattr(torch.nn.init, fn)
        note = ""
        fns = {"xinit": lambda f=ours, t=t, kw=kw: f(t, **kw),
               "torch": lambda f=peer, t=t, kw=kw: f(t, **kw)}
        try:
            peer(t, **kw)
        except Exception as err:  # torch lacks some dtypes (e.g. bf16 QR)
            note = f"torch: {type(err).__name__}"
            del fns["torch"]
        res = interleaved(fns, repeats)
        rows.append(Row("single", fn, "x".join(map(str, shape)), dtype, res["xinit"],
                        "torch.nn.init", res.get("torch"), note))
        print(f"  {fn:18s} {shape} {dtype}: {_fmt_row(rows[-1])}", flush=True)
    return rows


def bench_many_small(repeats: int, count: int = 200, shape=(256, 256)) -> list[Row]:
    """Dispatch overhead: ``count`` calls on small tensors."""
    ts = [torch.empty(shape) for _ in range(count)]

    def ours():
        for t in ts:
            xt.kaiming_uniform_(t, a=SQRT5)

    def peer():
        for t in ts:
            torch.nn.init.kaiming_uniform_(t, a=SQRT5)

    res = interleaved({"xinit": ours, "torch": peer}, repeats)
    row = Row("single", f"kaiming_uniform_ x{count}", "x".join(map(str, shape)), "float32",
              res["xinit"], "torch.nn.init", res["torch"], "per-call dispatch")
    print(f"  many small: {_fmt_row(row)}", flush=True)
    return [row]


def flax_pairs():
    """(label, xinit.flax initializer, jax.nn.initializers peer); None without xinit.flax."""
    try:
        import xinit.flax as xf
    except ImportError:
        return None
    ji, ti = jax.nn.initializers, xf.torch_init
    return [  # the same name on both sides: xinit.flax's (JAX's semantics) vs JAX's own
        ("uniform [0,1)", xf.uniform(1.0), ji.uniform(1.0)),
        ("normal", xf.normal(0.02), ji.normal(0.02)),
        ("truncated_normal", xf.truncated_normal(0.02), ji.truncated_normal(0.02)),
        ("xavier_uniform / glorot_uniform", ti.xavier_uniform(), ji.glorot_uniform()),
        ("kaiming_uniform(relu) / he_uniform", ti.kaiming_uniform(nonlinearity="relu"),
         ji.he_uniform()),
        ("glorot_normal", xf.glorot_normal(), ji.glorot_normal()),
        ("he_normal", xf.he_normal(), ji.he_normal()),
        ("orthogonal", xf.orthogonal(), ji.orthogonal()),
        ("constant", xf.constant(0.5), ji.constant(0.5)),
    ]


def bench_single_flax(shape, repeats: int, limit: int | None = None,
                      modes=("eager", "jit")) -> list[Row]:
    pairs = flax_pairs()
    if pairs is None:
        print("  xinit.flax is not importable: flax rows skipped", flush=True)
        return [Row("flax", "(skipped)", "", "", None, "jax.nn.initializers", None,
                    "xinit.flax not importable")]
    rows = []
    key = jax.random.key(0)
    for label, ours, peer in pairs[:limit]:
        oshape = (shape[0] // 2, shape[1] // 2) if label == "orthogonal" else shape
        for mode in modes:
            if mode == "jit":
                o = jax.jit(lambda k, f=ours, s=oshape: f(k, s, jax.numpy.float32))
                p = jax.jit(lambda k, f=peer, s=oshape: f(k, s, jax.numpy.float32))
            else:
                o = lambda k, f=ours, s=oshape: f(k, s, jax.numpy.float32)  # noqa: E731
                p = lambda k, f=peer, s=oshape: f(k, s, jax.numpy.float32)  # noqa: E731
            res = interleaved({"xinit": lambda o=o: o(key).block_until_ready(),
                               "jax": lambda p=p: p(key).block_until_ready()}, repeats)
            rows.append(Row("flax", label, "x".join(map(str, oshape)), "float32", res["xinit"],
                            f"jax.nn.initializers ({mode})", res["jax"], mode))
            print(f"  flax {label} {mode}: {_fmt_row(rows[-1])}", flush=True)
    return rows


# ----------------------------------------------------------------------------- models
def model_api():
    """``(initialize, materialize)`` from xinit.torch.model, or Nones until it exists."""
    try:
        from xinit.torch import model as m
    except ImportError:
        return None, None
    return getattr(m, "initialize", None), getattr(m, "materialize", None)


def _call_recipe(fn, model, recipe="torch_default"):
    import inspect

    params = inspect.signature(fn).parameters
    kwargs = {"key": 0} if "key" in params else {}
    if "recipe" in params:
        return fn(model, recipe=recipe, **kwargs)
    return fn(model, recipe, **kwargs)


def bench_models_warm(names, repeats: int) -> list[Row]:
    initialize, _ = model_api()
    rows = []
    for name in names:
        model = models.MODELS[name]()
        fns = {}
        if initialize is not None:
            fns["xinit initialize"] = lambda m=model: _call_recipe(initialize, m)
        fns["xinit.torch per tensor"] = lambda m=model: models.torch_default_by_hand(m, xt)
        fns["torch reset_parameters"] = lambda m=model: models.reset_parameters(m)
        fns["torch.nn.init by hand"] = lambda m=model: models.torch_default_by_hand(m, torch.nn.init)
        before = xinit.core.debug.compile_count()
        res = interleaved(fns, repeats)
        ours = "xinit initialize" if initialize is not None else "xinit.torch per tensor"
        note = "" if initialize is not None else "xinit.torch.model.initialize not available yet"
        shape = f"{models.parameter_count(model) / 1e6:.1f}M params"
        for peer in ("torch reset_parameters", "torch.nn.init by hand", "xinit.torch per tensor"):
            if peer == ours:
                continue
            rows.append(Row("models", f"{name} ({ours})", shape, "float32", res[ours], peer,
                            res[peer], note,
                            {"compiles_during": xinit.core.debug.compile_count() - before}))
            print(f"  {name} warm vs {peer}: {_fmt_row(rows[-1])}", flush=True)
    return rows


_JAX_COMPILES = [0, False]  # XLA backend compilations seen in this process, listener registered


def jax_compile_count() -> int:
    """Every XLA compilation JAX has run in this process (xinit's, eager ops', users' jits).

    Counted from JAX's ``/jax/core/compile/backend_compile_duration`` monitoring
    event, from the first call of this function on; persistent-cache hits are not
    compilations and are not counted.
    """
    if not _JAX_COMPILES[1]:
        def listener(event, duration, **kwargs):
            if event == "/jax/core/compile/backend_compile_duration":
                _JAX_COMPILES[0] += 1

        jax.monitoring.register_event_duration_secs_listener(listener)
        _JAX_COMPILES[1] = True
    return _JAX_COMPILES[0]


def bench_flax_models_warm(names, repeats: int, eager: bool = True) -> list[Row]:
    """Flax linen versions of the models: ``xinit.flax.initialize`` vs flax's own ``init``.

    xinit: ``initialize(abstract, "torch_default", key=...)`` on the
    ``jax.eval_shape(model.init, ...)`` tree (traced once, outside the clock).
    Peers: ``jax.jit(model.init)`` (compiled in the warm-up) with flax's layer
    defaults, and with torch's defaults written with ``jax.nn.initializers`` (the
    distributions xinit draws); optionally flax's eager ``model.init``. Every
    callable blocks until its arrays are ready.
    """
    try:
        import flax_models

        import xinit.flax as xf
    except ImportError as err:
        print(f"  flax models skipped: {err}", flush=True)
        return [Row("flax_models", "(skipped)", "", "", None, "flax", None, str(err))]
    rows = []
    key = jax.random.key(0)
    for name in names:
        fm = flax_models.MODELS[name]()
        fm_torch = flax_models.MODELS[name]("torch")
        t0 = time.perf_counter()
        abstract = fm.abstract(key)
        eval_shape_s = time.perf_counter() - t0

        def ours(a=abstract, fm=fm):
            return jax.block_until_ready(xf.initialize(a, "torch_default", key=0,
                                                       rename=fm.rename))

        def jitted(m):
            fn = jax.jit(m.module.init)
            return lambda: jax.block_until_ready(fn(key, *m.inputs))

        fns = {"xinit": ours,
               "flax jax.jit(model.init)": jitted(fm),
               "flax jax.jit(model.init), torch's defaults": jitted(fm_torch)}
        if eager:
            fns["flax model.init (eager)"] = lambda m=fm: jax.block_until_ready(
                m.module.init(key, *m.inputs))
        # the first call compiles what this process has not compiled yet; the second none
        counts = []
        for _ in range(2):
            before = (xinit.core.debug.compile_count(), jax_compile_count())
            ours()
            counts.append((xinit.core.debug.compile_count() - before[0], jax_compile_count() - before[1]))
        res = interleaved(fns, repeats)
        shape = f"{flax_models.parameter_count(abstract) / 1e6:.1f}M params"
        for peer in fns:
            if peer == "xinit":
                continue
            note = "flax's layer defaults" if "torch" not in peer else "same distributions"
            rows.append(Row("flax_models", f"{name} (xinit.flax initialize)", shape, "float32",
                            res["xinit"], peer, res[peer], note,
                            {"compiles_first_call": counts[0][0],
                             "jax_compiles_first_call": counts[0][1],
                             "jax_compiles_warm": counts[1][1], "eval_shape_s": eval_shape_s}))
            print(f"  {name} warm vs {peer}: {_fmt_row(rows[-1])}", flush=True)
    return rows


def bench_nnx_models_warm(names, repeats: int) -> list[Row]:
    """GPT-2 in nnx: ``xinit.flax.initialize`` on the ``nnx.eval_shape`` module vs building
    the module, eagerly (how nnx modules initialize) and under ``nnx.jit`` (compiled in the
    warm-up). Both peers use flax's layer defaults; every callable blocks on its arrays."""
    try:
        import flax_models
        from flax import nnx

        import xinit.flax as xf
    except ImportError as err:
        print(f"  nnx models skipped: {err}", flush=True)
        return [Row("flax_models", "(skipped)", "", "", None, "nnx", None, str(err))]
    rows = []
    for name in (n for n in names if n in flax_models.NNX_MODELS):
        build = flax_models.NNX_MODELS[name]
        abstract = nnx.eval_shape(lambda build=build: build(nnx.Rngs(0)))
        create = nnx.jit(lambda build=build: build(nnx.Rngs(0)))

        def ours(a=abstract):
            return jax.block_until_ready(nnx.state(xf.initialize(a, "torch_default", key=0)))

        fns = {"xinit": ours,
               "nnx constructor (eager)": lambda b=build: jax.block_until_ready(
                   nnx.state(b(nnx.Rngs(0)))),
               "nnx.jit(constructor)": lambda c=create: jax.block_until_ready(nnx.state(c()))}
        res = interleaved(fns, repeats)
        params = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
        for peer in fns:
            if peer == "xinit":
                continue
            rows.append(Row("flax_models", f"{name} nnx (xinit.flax initialize)",
                            f"{params / 1e6:.1f}M params", "float32", res["xinit"], peer,
                            res[peer], "flax's layer defaults", {}))
            print(f"  {name} nnx warm vs {peer}: {_fmt_row(rows[-1])}", flush=True)
    return rows


def _cold_once(model: str, who: str, cache: str = "", path: str = "no_init",
               framework: str = "torch") -> dict:
    cmd = [sys.executable, str(HERE / "cold.py"), "--model", model, "--who", who, "--path", path,
           "--framework", framework]
    if cache:
        cmd += ["--cache", cache]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"cold run {model}/{who} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _median_run(runs: list[dict]) -> dict:
    runs = sorted(runs, key=lambda r: r["seconds"])
    return runs[len(runs) // 2]


def bench_models_cold(names, repeats: int, meta_path: bool = False) -> list[Row]:
    """Fresh processes: torch building the model vs xinit with an empty / a filled cache."""
    rows = []
    for name in names:
        peer = _median_run([_cold_once(name, "torch") for _ in range(repeats)])
        runs: dict[str, list[dict]] = {"empty cache": [], "filled cache": []}
        if meta_path:
            runs["filled cache, meta + materialize"] = []
        with tempfile.TemporaryDirectory(prefix="xinit-jax-cache-") as base:
            for r in range(repeats):
                d = os.path.join(base, f"run{r}")  # a fresh, empty cache every time
                runs["empty cache"].append(_cold_once(name, "xinit", d))
                runs["filled cache"].append(_cold_once(name, "xinit", d))  # now filled
                if meta_path:
                    runs["filled cache, meta + materialize"].append(
                        _cold_once(name, "xinit", d, path="meta"))
        for label, rs in runs.items():
            res = _median_run(rs)
            rows.append(Row("cold", f"{name} cold, {label}", res["path"], "float32",
                            res["seconds"], "torch: construct on cpu", peer["seconds"], "",
                            {"compiles": res.get("compiles"), "peak_rss": res["peak_rss"],
                             "peer_peak_rss": peer["peak_rss"],
                             "state_bytes": res["state_bytes"]}))
            print(f"  {name} cold {label}: {_fmt_row(rows[-1])} compiles={res.get('compiles')}",
                  flush=True)
    return rows


def bench_flax_models_cold(names, repeats: int) -> list[Row]:
    """Fresh processes: flax's ``jax.jit(model.init)`` vs eval_shape + ``xinit.flax.initialize``,
    with no persistent compilation cache, and with a filled one on both sides (each side's own
    directory, filled by the process before; JAX's cache serves flax's program as well)."""
    rows = []
    for name in names:
        for label in ("no cache", "filled cache"):
            peers, ours = [], []
            with tempfile.TemporaryDirectory(prefix="xinit-flax-cache-") as base:
                for r in range(repeats):
                    dirs = {who: os.path.join(base, f"{who}{r}") if label != "no cache" else ""
                            for who in ("flax", "xinit")}
                    for who, out in (("flax", peers), ("xinit", ours)):
                        if dirs[who]:
                            _cold_once(name, who, dirs[who], framework="flax")  # fills the cache
                        out.append(_cold_once(name, who, dirs[who], framework="flax"))
            peer, res = _median_run(peers), _median_run(ours)
            case = f"{name} (Flax) cold" + (", filled cache" if label != "no cache" else "")
            rows.append(Row("flax_cold", case, res["path"], "float32",
                            res["seconds"], "flax: jax.jit(model.init)", peer["seconds"], "",
                            {"compiles": res.get("compiles"), "peak_rss": res["peak_rss"],
                             "peer_peak_rss": peer["peak_rss"], "state_bytes": res["state_bytes"]}))
            print(f"  {case}: {_fmt_row(rows[-1])} compiles={res.get('compiles')}", flush=True)
    return rows


def bench_materialize_memory(name: str = "transformer_1b") -> list[Row]:
    """Peak RSS of materializing a meta model vs torch building it on the CPU."""
    ours = _cold_once(name, "xinit", path="meta")
    peer = _cold_once(name, "torch")
    row = Row("memory", f"{name} materialize", ours["path"], "float32", ours["seconds"],
              "torch: construct on cpu", peer["seconds"], "cold, no persistent cache",
              {"state_bytes": ours["state_bytes"], "peak_rss": ours["peak_rss"],
               "rss_before": ours["rss_before"], "peer_peak_rss": peer["peak_rss"],
               "peer_rss_before": peer["rss_before"], "compiles": ours.get("compiles")})
    print(f"  {name}: {_fmt_row(row)} peak_rss={ours['peak_rss'] / 2**30:.2f} GiB "
          f"state={ours['state_bytes'] / 2**30:.2f} GiB", flush=True)
    return [row]


def bench_port(name: str = "gpt2", repeats: int = 5) -> list[Row]:
    """xinit.port on GPT-2 small's state dict in memory, both directions (``port.py``)."""
    import port

    rows = []
    for r in port.bench_speed(name, repeats):
        rows.append(Row("port", r["case"], r["shape"], "float32", r["xinit_s"], r["peer"],
                        r["peer_s"], "linen model traced once outside the clock",
                        {"trace_s": r["trace_s"]}))
        print(f"  {r['case']}: {_fmt_row(rows[-1])}", flush=True)
    return rows


def bench_port_memory(gib: float = 1.05, **shape) -> list[Row]:
    """Peak RSS converting a >= ``gib`` GiB safetensors checkpoint file to a Flax file."""
    import port

    res = port.bench_memory(gib, **shape)
    row = Row("port_memory", "safetensors -> Flax safetensors", f"{res['layers']} layers",
              "float32", res["seconds"], "-", None, "fresh process",
              {"peak_rss": res["peak_rss"], "rss_before": res["rss_before"],
               "checkpoint_bytes": res["checkpoint_bytes"], "tensors": res["tensors"]})
    print(f"  peak RSS {res['peak_rss'] / 2**30:.2f} GiB for a "
          f"{res['checkpoint_bytes'] / 2**30:.2f} GiB checkpoint", flush=True)
    return [row]


def bench_no_init(name: str = "gpt2", repeats: int = 5) -> list[Row]:
    """A transformers GPT-2 built under ``xt.no_init()`` vs eagerly (``no_init.py``)."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        print("  skipped: transformers is not installed", flush=True)
        return []
    import no_init

    r = no_init.bench_build(name, repeats)
    note = (f"RNG untouched: {'yes' if r['rng_untouched'] else 'NO'}, "
            f"head tied: {'yes' if r['head_tied'] else 'NO'}")
    row = Row("no_init", r["case"], f"{r['parameters'] / 1e6:.0f}M params", "float32", r["xinit_s"],
              r["peer"], r["peer_s"], note)
    print(f"  {_fmt_row(row)}; {note}", flush=True)
    return [row]


# ----------------------------------------------------------------------------- report
TARGETS = [
    # (label, section, case prefix, shape, dtype, peer, threshold)
    ("uniform_ 4096x4096", "single", "uniform_", "4096x4096", "float32", None, 1.5),
    ("kaiming_uniform_ 4096x4096", "single", "kaiming_uniform_", "4096x4096", "float32", None, 1.5),
    ("xavier_uniform_ 4096x4096", "single", "xavier_uniform_", "4096x4096", "float32", None, 1.5),
    ("normal_ 4096x4096", "single", "normal_", "4096x4096", "float32", None, 1.2),
    ("kaiming_normal_ 4096x4096", "single", "kaiming_normal_", "4096x4096", "float32", None, 1.2),
    ("xavier_normal_ 4096x4096", "single", "xavier_normal_", "4096x4096", "float32", None, 1.2),
    ("trunc_normal_ 4096x4096", "single", "trunc_normal_", "4096x4096", "float32", None, 3.0),
    ("sparse_ 1024x8192, 0.9", "single", "sparse_", "1024x8192", "float32", None, 10.0),
    ("orthogonal_ 2048x2048", "single", "orthogonal_", "2048x2048", "float32", None, 1.0),
    ("orthogonal_ 4096x1024", "single", "orthogonal_", "4096x1024", "float32", None, 1.0),
    ("GPT-2 small initialize warm vs reset_parameters", "models", "gpt2 (xinit initialize)",
     None, None, "torch reset_parameters", 2.0),
    ("GPT-2 small cold, filled cache", "cold", "gpt2 cold, filled cache", None, None, None, 1.0),
    ("ResNet-50 cold, filled cache", "cold", "resnet50 cold, filled cache", None, None, None, 0.7),
    ("GPT-2 small cold, empty cache", "cold", "gpt2 cold, empty cache", None, None, None, 0.7),
    ("ResNet-50 cold, empty cache", "cold", "resnet50 cold, empty cache", None, None, None, 0.4),
    ("GPT-2 small torch_to_flax vs a per-tensor loop", "port", "gpt2 torch_to_flax (in memory)",
     None, None, None, 1.0),
    ("GPT-2 small (transformers) built under no_init vs eager", "no_init",
     "gpt2 (transformers) built under no_init", None, None, None, 3.0),
]


MEMORY_TARGETS = [
    # (section, label, denominator, its extra key, limit, label when not measured)
    ("memory", "{case}", "parameter bytes", "state_bytes", 1.15, "materialize ~1B"),
    ("port_memory", "port {case}", "checkpoint bytes", "checkpoint_bytes", 1.25,
     "port >= 1 GiB file to file"),
]


def _find(rows, section, case, shape, dtype, peer):
    for r in rows:
        if (r.section == section and r.case == case and (shape is None or r.shape == shape)
                and (dtype is None or r.dtype == dtype) and (peer is None or r.peer == peer)):
            return r
    return None


def target_lines(rows) -> list[str]:
    out = ["| target | needed | measured | met |", "|---|---:|---:|:---:|"]
    for label, section, case, shape, dtype, peer, need in TARGETS:
        r = _find(rows, section, case, shape, dtype, peer)
        if r is None or r.ratio is None:
            out.append(f"| {label} | {need:g}x | not measured | - |")
        else:
            out.append(f"| {label} | {need:g}x | {r.ratio:.2f}x | "
                       f"{'yes' if r.ratio >= need else '**no**'} |")
    for section, label, per, bytes_key, limit, missing in MEMORY_TARGETS:
        mem = [r for r in rows if r.section == section]
        for r in mem:
            frac = r.extra["peak_rss"] / r.extra[bytes_key]
            out.append(f"| {label.format(case=r.case)}: peak RSS / {per} | <= {limit:g} | "
                       f"{frac:.2f} | {'yes' if frac <= limit else '**no**'} |")
        if not mem:
            out.append(f"| {missing}: peak RSS / {per} | <= {limit:g} | not measured "
                       "(full run only) | - |")
    out.append("| GPU targets | - | no GPU in this run | - |")
    return out


def _ms(s):
    return "-" if s is None else (f"{s * 1e3:.1f}" if s < 10 else f"{s * 1e3:.0f}")


def _fmt_row(r: Row) -> str:
    ratio = "-" if r.ratio is None else f"{r.ratio:.2f}x"
    return f"xinit {_ms(r.xinit_s)} ms, {r.peer} {_ms(r.peer_s)} ms, ratio {ratio}"


def _table(rows, cols) -> list[str]:
    out = ["| " + " | ".join(c for c, _ in cols) + " |",
           "|" + "|".join("---" if i < 2 else "---:" for i in range(len(cols))) + "|"]
    for r in rows:
        out.append("| " + " | ".join(str(f(r)) for _, f in cols) + " |")
    return out


def machine() -> list[str]:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import flax

        flax_v = flax.__version__
    except ImportError:
        flax_v = "not installed"
    import jaxlib

    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",) * 3
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return [
        f"- CPU: {cpu}, {os.cpu_count()} logical cores; GPU: {gpu}",
        f"- torch {torch.__version__} ({torch.get_num_threads()} threads), jax {jax.__version__}, "
        f"jaxlib {jaxlib.__version__}, flax {flax_v}, numpy {np.__version__}, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}",
        f"- JAX backend: {jax.default_backend()}; load average at start: "
        + ", ".join(f"{x:.2f}" if isinstance(x, float) else x for x in load)
        + " (the machine is shared; peers are interleaved with xinit so load hits both)",
    ]


def render(rows, meta, notes: str) -> str:
    ratio = ("ratio", lambda r: "-" if r.ratio is None else f"{r.ratio:.2f}x")
    lines = ["# Performance", "",
             "Generated by `benchmarks/run.py`" + (" --quick" if meta["quick"] else "")
             + f" on {meta['date']} in {meta['seconds']:.0f} s. Ratio = peer time / xinit "
             "time: above 1, xinit is faster. Warm rows are medians of "
             f"{meta['repeats']} interleaved repeats after a warm-up; cold rows are fresh "
             "processes.", "", "## Machine", "", *(meta.get("machine") or machine()), "",
             "## Targets", "",
             *target_lines(rows), ""]
    single = [r for r in rows if r.section == "single"]
    if single:
        lines += ["## Single tensors: `xinit.torch.<fn>_` vs `torch.nn.init.<fn>_`", "",
                  "The same tensor is written by both; warm medians.", ""]
        lines += _table(single, [("initializer", lambda r: f"`{r.case}`"),
                                 ("shape", lambda r: r.shape), ("dtype", lambda r: r.dtype),
                                 ("torch ms", lambda r: _ms(r.peer_s)),
                                 ("xinit ms", lambda r: _ms(r.xinit_s)), ratio,
                                 ("note", lambda r: r.note)])
        lines.append("")
    flax_rows = [r for r in rows if r.section == "flax"]
    if flax_rows:
        lines += ["## Single tensors: `xinit.flax` vs `jax.nn.initializers`", "",
                  "`init(key, shape, float32)`, both called eagerly or both inside `jax.jit` "
                  "(as in `model.init`); kernel layout `(in, out)`.", ""]
        lines += _table(flax_rows, [("initializer", lambda r: r.case),
                                    ("shape", lambda r: r.shape), ("mode", lambda r: r.note),
                                    ("jax ms", lambda r: _ms(r.peer_s)),
                                    ("xinit ms", lambda r: _ms(r.xinit_s)), ratio])
        lines.append("")
    # the leading columns of both warm whole-model tables
    model_columns = [("model (xinit path)", lambda r: r.case), ("size", lambda r: r.shape),
                     ("peer", lambda r: r.peer), ("peer ms", lambda r: _ms(r.peer_s)),
                     ("xinit ms", lambda r: _ms(r.xinit_s)), ratio]
    warm = [r for r in rows if r.section == "models"]
    if warm:
        lines += ["## Whole models, warm", "",
                  "Recipe `torch_default` (what every layer's `reset_parameters` does).", ""]
        lines += _table(warm, model_columns + [("note", lambda r: r.note)])
        lines.append("")
    fwarm = [r for r in rows if r.section == "flax_models"]
    if fwarm:
        lines += ["## Whole models (Flax), warm", "",
                  "Flax linen versions of the same models (`benchmarks/flax_models.py`; "
                  "GPT-2's head tied to `wte`, ResNet-50's BatchNorm statistics in "
                  "`batch_stats`). xinit: `xinit.flax.initialize(abstract, \"torch_default\", "
                  "key=...)` on the `jax.eval_shape(model.init, ...)` tree, traced once "
                  "outside the clock; peers: flax's `jax.jit(model.init)` (compiled in the "
                  "warm-up) with flax's own layer defaults (`lecun_normal` kernels) or with "
                  "torch's defaults written with `jax.nn.initializers` (the distributions "
                  "xinit draws), and flax's eager `model.init`. All wait for the arrays "
                  "(`jax.block_until_ready`). Compilations during xinit's first call in this "
                  "process: xinit's own programs (`xinit.core.debug.compile_count()`) / every XLA "
                  "compilation JAX ran (eager slices, concatenations and transposes "
                  "included); warm: XLA compilations in a later call. The `nnx` rows: GPT-2 "
                  "written as an nnx module (`flax_models.NnxGPT`); xinit initializes the "
                  "`nnx.eval_shape` module in place, the peers build the module, eagerly (how "
                  "nnx modules initialize) or under `nnx.jit` (compiled in the warm-up).", ""]
        lines += _table(fwarm, model_columns + [
                                ("compilations first call", lambda r: (
                                    f"{r.extra.get('compiles_first_call', '-')} / "
                                    f"{r.extra.get('jax_compiles_first_call', '-')}")),
                                ("warm", lambda r: r.extra.get("jax_compiles_warm", "-")),
                                ("note", lambda r: r.note)])
        lines.append("")
    cold = [r for r in rows if r.section == "cold"]
    if cold:
        lines += ["## Whole models, cold (fresh process)", "",
                  "xinit: from `import xinit.torch` (JAX import and all compilations included) "
                  "until the model is built and initialized - built inside "
                  "`xinit.torch.model.no_init()` then `initialize`d, or (marked) built on "
                  "`meta` then `materialize`d; torch: constructing the model on the CPU (its "
                  "layers initialize themselves). torch and the model code are imported before "
                  "the clock on both sides. Cache = JAX's persistent compilation cache via "
                  "`xinit.core.cache.enable_compilation_cache`; empty = a new directory, filled "
                  "= the same directory in the next process. Medians of "
                  f"{meta['cold_repeats']} process(es).", ""]
        lines += _table(cold, [("case", lambda r: r.case), ("xinit path", lambda r: r.shape),
                               ("torch s", lambda r: f"{r.peer_s:.2f}"),
                               ("xinit s", lambda r: f"{r.xinit_s:.2f}"), ratio,
                               ("compilations", lambda r: r.extra.get("compiles")),
                               ("xinit peak RSS MiB", lambda r: f"{r.extra['peak_rss'] / 2**20:.0f}"),
                               ("torch peak RSS MiB",
                                lambda r: f"{r.extra['peer_peak_rss'] / 2**20:.0f}")])
        lines.append("")
    fcold = [r for r in rows if r.section == "flax_cold"]
    if fcold:
        lines += ["## Whole models (Flax), cold (fresh process)", "",
                  "flax: `jax.jit(model.init)(key, x)` (tracing and compiling the whole init "
                  "included); xinit: from `import xinit.flax` until `initialize(jax.eval_shape("
                  "model.init, key, x), \"torch_default\", key=...)` returns. flax, JAX and "
                  "the model code are imported before the clock on both sides. Without a "
                  "persistent compilation cache, and with JAX's cache filled on both sides "
                  "(`enable_compilation_cache`, each side its own directory filled by the "
                  "process before). Medians of "
                  f"{meta['cold_repeats']} process(es).", ""]
        lines += _table(fcold, [("case", lambda r: r.case),
                                ("flax s", lambda r: f"{r.peer_s:.2f}"),
                                ("xinit s", lambda r: f"{r.xinit_s:.2f}"), ratio,
                                ("xinit programs", lambda r: r.extra.get("compiles")),
                                ("xinit peak RSS MiB",
                                 lambda r: f"{r.extra['peak_rss'] / 2**20:.0f}"),
                                ("flax peak RSS MiB",
                                 lambda r: f"{r.extra['peer_peak_rss'] / 2**20:.0f}")])
        lines.append("")
    mem = [r for r in rows if r.section == "memory"]
    if mem:
        lines += ["## Materializing a ~1B-parameter model built on `meta`", ""]
        lines += _table(mem, [("case", lambda r: r.case), ("xinit path", lambda r: r.shape),
                              ("parameter+buffer GiB", lambda r: f"{r.extra['state_bytes'] / 2**30:.2f}"),
                              ("xinit peak RSS GiB", lambda r: f"{r.extra['peak_rss'] / 2**30:.2f}"),
                              ("torch peak RSS GiB", lambda r: f"{r.extra['peer_peak_rss'] / 2**30:.2f}"),
                              ("torch s", lambda r: f"{r.peer_s:.2f}"),
                              ("xinit s", lambda r: f"{r.xinit_s:.2f}"), ratio])
        lines.append("")
    port_rows = [r for r in rows if r.section == "port"]
    if port_rows:
        lines += ["## Checkpoint porting (`xinit.port`)", "",
                  "GPT-2 small (`benchmarks/models.py`, `flax_models.py`) converted in memory "
                  "(`benchmarks/port.py`): `torch_to_flax` into new JAX arrays and "
                  "`flax_to_torch` into the existing torch tensors, against the loop one writes "
                  "by hand (names mapped outside the clock). The linen model is traced once "
                  "outside the clock (the trace's own time in the last column).", ""]
        lines += _table(port_rows, model_columns + [
            ("trace s", lambda r: f"{r.extra.get('trace_s', 0):.2f}")])
        lines.append("")
    port_mem = [r for r in rows if r.section == "port_memory"]
    if port_mem:
        lines += ["## Checkpoint porting, file to file: peak memory", "",
                  "A random GPT-style checkpoint of at least 1 GiB (`.safetensors`) converted "
                  "into a Flax `.safetensors` file by `xinit.port.convert_file` in a fresh "
                  "process (torch model on `meta`, linen model traced); peak RSS includes the "
                  "imports (RSS before the conversion in its own column).", ""]
        lines += _table(port_mem, [
            ("case", lambda r: r.case), ("model", lambda r: r.shape),
            ("checkpoint GiB", lambda r: f"{r.extra['checkpoint_bytes'] / 2**30:.2f}"),
            ("RSS before GiB", lambda r: f"{r.extra['rss_before'] / 2**30:.2f}"),
            ("peak RSS GiB", lambda r: f"{r.extra['peak_rss'] / 2**30:.2f}"),
            ("peak / checkpoint", lambda r: f"{r.extra['peak_rss'] / r.extra['checkpoint_bytes']:.2f}"),
            ("seconds", lambda r: f"{r.xinit_s:.1f}")])
        lines.append("")
    built = [r for r in rows if r.section == "no_init"]
    if built:
        lines += ["## Building a transformers model under `no_init`", "",
                  "A Hugging Face GPT-2 built whole (`GPT2LMHeadModel(config)`, "
                  "`benchmarks/no_init.py`) eagerly, where transformers draws every weight, and "
                  "inside `xinit.torch.no_init()`, where nothing is drawn (torch's RNG checked "
                  "untouched, the head still tied to the input embedding).", ""]
        lines += _table(built, model_columns + [("checks", lambda r: r.note)])
        lines.append("")
    lines += ["## Chart", "", "![ratios](performance.png)", ""]
    if notes:
        lines += [notes.strip(), ""]
    return "\n".join(lines)


def chart(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.ratio is not None]
    if not rows:
        return
    def label(r):
        if r.section == "single":
            return f"{r.case} {r.shape} {r.dtype}"
        if r.section == "flax":
            return f"flax {r.case.split(' / ')[0]} ({r.note})"
        if r.section == "models":
            return f"{r.case.split(' (')[0]} init vs {r.peer}"
        if r.section == "flax_models":
            return f"flax {r.case.split(' (')[0]} init vs {r.peer.removeprefix('flax ')}"
        return r.case

    labels = [label(r) for r in rows]
    ratios = [r.ratio for r in rows]
    fig, ax = plt.subplots(figsize=(10, 0.28 * len(rows) + 1.2))
    colors = ["#2a9d8f" if x >= 1 else "#e76f51" for x in ratios]
    ax.barh(range(len(rows)), ratios, color=colors)
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("peer time / xinit time (log scale; > 1: xinit faster)")
    ax.set_title("xinit vs torch.nn.init / jax.nn.initializers")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- main
SECTIONS = ("single", "flax", "models", "flax_models", "cold", "flax_cold", "memory", "port",
            "port_memory", "no_init")


def run(quick=False, out=HERE.parent / "docs", sections=SECTIONS, repeats=None,
        sizes=None, dtypes=None, model_names=None, cold_models=None, cold_repeats=None,
        memory_model="transformer_1b", notes_path=HERE / "notes.md",
        flax_limit=None, port_model="gpt2", port_gib=1.05, port_shape=None,
        no_init_model="gpt2") -> list[Row]:
    t0 = time.perf_counter()
    machine_lines = machine()  # the load average at the start
    repeats = repeats or (3 if quick else 5)
    rows: list[Row] = []
    if "single" in sections:
        print("single tensors (xinit.torch vs torch.nn.init)", flush=True)
        rows += bench_single_torch(single_cases(quick, sizes, dtypes), repeats)
        small = (8, 8) if sizes and max(max(s) for s in sizes) < 256 else (256, 256)
        rows += bench_many_small(repeats, 20 if small == (8, 8) else 200, small)
    if "flax" in sections:
        print("single tensors (xinit.flax vs jax.nn.initializers)", flush=True)
        rows += bench_single_flax(sizes[0] if sizes else (4096, 4096), repeats, flax_limit,
                                  ("jit",) if quick else ("eager", "jit"))
    if "models" in sections:
        print("whole models, warm", flush=True)
        rows += bench_models_warm(model_names or (["gpt2"] if quick else ["gpt2", "resnet50"]),
                                  repeats)
    if "flax_models" in sections:
        print("whole models in Flax, warm", flush=True)
        names = model_names or (["gpt2"] if quick else ["gpt2", "resnet50"])
        rows += bench_flax_models_warm(names, repeats, eager=not quick)
        rows += bench_nnx_models_warm(names, repeats)
    if "cold" in sections:
        print("whole models, cold", flush=True)
        rows += bench_models_cold(cold_models or ["gpt2", "resnet50"],
                                  cold_repeats or (1 if quick else 3), meta_path=not quick)
    if "flax_cold" in sections and not quick:
        print("whole models in Flax, cold", flush=True)
        rows += bench_flax_models_cold(cold_models or ["gpt2", "resnet50"], cold_repeats or 3)
    if "memory" in sections and not quick:
        print("materialize memory", flush=True)
        rows += bench_materialize_memory(memory_model)
    if "port" in sections:
        print("checkpoint porting (xinit.port vs a per-tensor loop)", flush=True)
        rows += bench_port(port_model, repeats)
    if "port_memory" in sections and not quick:
        print("checkpoint porting memory (file to file)", flush=True)
        rows += bench_port_memory(port_gib, **(port_shape or {}))
    if "no_init" in sections:
        print("building a transformers model under no_init", flush=True)
        rows += bench_no_init(no_init_model, repeats)
    meta = {"quick": quick, "repeats": repeats, "seconds": time.perf_counter() - t0,
            "cold_repeats": cold_repeats or (1 if quick else 3), "machine": machine_lines,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    notes = Path(notes_path).read_text() if notes_path and Path(notes_path).exists() else ""
    (out / "performance.md").write_text(render(rows, meta, notes))
    chart(rows, out / "performance.png")
    (out / "performance.json").write_text(json.dumps(
        {"meta": meta, "rows": [dict(asdict(r), ratio=r.ratio) for r in rows]}, indent=1))
    print(f"wrote {out / 'performance.md'} and performance.png in {meta['seconds']:.0f} s; "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    return rows


def rerender(out: Path, notes_path=HERE / "notes.md") -> None:
    """Write performance.md and .png again from ``out/performance.json``."""
    data = json.loads((out / "performance.json").read_text())
    rows = [Row(**{k: v for k, v in r.items() if k != "ratio"}) for r in data["rows"]]
    notes = Path(notes_path).read_text() if notes_path and Path(notes_path).exists() else ""
    (out / "performance.md").write_text(render(rows, data["meta"], notes))
    chart(rows, out / "performance.png")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a subset that runs in < 3 minutes")
    ap.add_argument("--out", default=str(HERE.parent / "docs"),
                    help="directory for performance.md/.png/.json (default: docs/)")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--repeats", type=int, default=None, help="warm repeats (default 3 quick, 5)")
    ap.add_argument("--render-only", action="store_true",
                    help="re-render performance.md/.png from --out's performance.json "
                         "(e.g. after editing benchmarks/notes.md); measures nothing")
    args = ap.parse_args(argv)
    if args.render_only:
        rerender(Path(args.out))
        return
    sections = tuple(s for s in args.sections.split(",") if s)
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        ap.error(f"--sections: unknown {sorted(unknown)}; allowed: {', '.join(SECTIONS)}")
    run(quick=args.quick, out=args.out, sections=sections, repeats=args.repeats)


if __name__ == "__main__":
    main()
