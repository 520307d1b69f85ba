"""xinit's benchmark suite: xinit side by side with torch.nn.init and jax.nn.initializers.

    .venv/bin/python benchmarks/run.py            # everything (make bench), ~10 min here
    .venv/bin/python benchmarks/run.py --quick    # a subset, < 3 min on 2 cores
    .venv/bin/python benchmarks/run.py --out /tmp/bench --sections single,models
    .venv/bin/python benchmarks/run.py --sections torch_sharding  # FSDP2 materialize, 4 gloo ranks
    .venv/bin/python benchmarks/run.py --runs 5      # five full runs and their spread
    .venv/bin/python benchmarks/run.py --runs 2 --accumulate   # two more, added to the JSON

Writes ``performance.md`` (tables of medians and ratios, the machine, the targets,
the physical limits and each target's distance to them, the spread over every
run), ``performance.png`` (a bar chart of the ratios) and ``performance.json``
(every run's rows) into ``--out`` (``docs/``).
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
import limits  # noqa: E402
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


APPLY_PEER = "model.apply(init_weights), torch.nn.init"


def bench_apply(names, repeats: int) -> list[Row]:
    """The tutorials' ``model.apply(init_weights)`` (:func:`models.init_weights`): the
    function written with ``xinit.torch`` drop-ins, and xinit's own
    ``model.apply(apply_fn(recipe))`` / ``initialize(model, recipe)`` with the same
    recipe (:func:`models.init_weights_recipe`), against the function written with
    ``torch.nn.init``."""
    from xinit.torch.model import apply_fn, initialize

    recipe = models.init_weights_recipe()
    ours_fn, peer_fn = models.init_weights(xt), models.init_weights(torch.nn.init)
    rows = []
    for name in names:
        model = models.MODELS[name]()
        fns = {
            "drop-ins": lambda m=model: m.apply(ours_fn),
            "apply_fn": lambda m=model: m.apply(apply_fn(recipe, key=0, unmatched="ignore")),
            "initialize": lambda m=model: initialize(m, recipe, key=0, unmatched="ignore"),
            "torch": lambda m=model: m.apply(peer_fn),
        }
        res = interleaved(fns, repeats)
        shape = f"{models.parameter_count(model) / 1e6:.1f}M params"
        values = sum(p.numel() for m in model.modules() for p in m.parameters(recurse=False)
                     if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.BatchNorm2d,
                                       torch.nn.LayerNorm)))
        for who, case in (("drop-ins", "model.apply(init_weights), xinit.torch"),
                          ("apply_fn", "model.apply(apply_fn(recipe))"),
                          ("initialize", "initialize(model, recipe)")):
            rows.append(Row("apply", f"{name} {case}", shape, "float32", res[who], APPLY_PEER,
                            res["torch"], extra={"values": values}))
            print(f"  {name} {case}: {_fmt_row(rows[-1])}", flush=True)
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


def bench_torch_sharding(world: int = 4, **shape) -> list[Row]:
    """FSDP2 materialize on ``world`` gloo ranks vs to_empty + reset_parameters
    (``sharding_torch.py``): the first call in fresh processes, then a warm one."""
    import sharding_torch

    summary, setup = sharding_torch.bench(world, **shape)
    rows = []
    for run_name in ("first", "second"):
        ours, peer = (next(r for r in summary if r["side"] == side and r["run"] == run_name)
                      for side in ("xinit", "torch"))
        size = f"{setup['layers']} layers x {setup['width']}, {setup['global_param_bytes'] / 2**20:.0f} MiB"
        row = Row("torch_sharding", f"FSDP2 materialize, {world} ranks, {run_name} call", size, "float32",
                  ours["seconds"], "to_empty + reset_parameters", peer["seconds"],
                  "compiles included" if run_name == "first" else "warm",
                  {"local_bytes": ours["local_param_bytes"], "rise": ours["peak_increase"],
                   "anon_rise": ours["anon_increase"], "file_rise": ours["file_increase"],
                   "peer_rise": peer["peak_increase"], "cpu": setup["cpu"]})
        print(f"  {row.case}: {_fmt_row(row)} rise xinit {ours['worst_ratio']:.2f}x "
              f"torch {peer['worst_ratio']:.2f}x local", flush=True)
        rows.append(row)
    return rows


def bench_sharding(model: str = "gpt2_xl") -> list[Row]:
    """Sharded init over 8 CPU devices: xinit.flax.initialize vs flax's jit init (``sharding.py``)."""
    import sharding

    res = sharding.bench(model)
    ours, peer = res["xinit"], res["flax"]
    row = Row("sharding", f"{model} over {ours['devices']} CPU devices", "shardings=", "float32",
              ours["seconds"], "flax: jit(init, out_shardings)", peer["seconds"], "cold (compiles included)",
              {"param_bytes": ours["param_bytes"], "parameters": ours["parameters"],
               "peak_rss": ours["peak_rss"], "rss_base": ours["rss_before"],
               "peer_peak_rss": peer["peak_rss"], "peer_rss_before": peer["rss_before"],
               "cpu": res["cpu"]})
    print(f"  {model}: {_fmt_row(row)} rise xinit {ours['rise']:.2f}x flax {peer['rise']:.2f}x",
          flush=True)
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
EVERY_RUN = "every run"  # a target met only if every run of the spread meets it

TARGETS = [
    # (label, section, case, shape, dtype, peer, threshold[, EVERY_RUN]) - issue 16
    ("uniform_ 4096x4096", "single", "uniform_", "4096x4096", "float32", None, 2.0, EVERY_RUN),
    ("kaiming_uniform_ 4096x4096", "single", "kaiming_uniform_", "4096x4096", "float32", None,
     2.0, EVERY_RUN),
    ("xavier_uniform_ 4096x4096", "single", "xavier_uniform_", "4096x4096", "float32", None, 2.0,
     EVERY_RUN),
    ("normal_ 4096x4096", "single", "normal_", "4096x4096", "float32", None, 1.5, EVERY_RUN),
    ("kaiming_normal_ 4096x4096", "single", "kaiming_normal_", "4096x4096", "float32", None, 1.5,
     EVERY_RUN),
    ("xavier_normal_ 4096x4096", "single", "xavier_normal_", "4096x4096", "float32", None, 1.5,
     EVERY_RUN),
    ("trunc_normal_ 4096x4096 (keeps its lead)", "single", "trunc_normal_", "4096x4096",
     "float32", None, 3.0),
    ("sparse_ 1024x8192, 0.9", "single", "sparse_", "1024x8192", "float32", None, 10.0),
    ("orthogonal_ 2048x2048 (keeps its lead)", "single", "orthogonal_", "2048x2048", "float32",
     None, 1.0),
    ("orthogonal_ 4096x1024 (keeps its lead)", "single", "orthogonal_", "4096x1024", "float32",
     None, 1.0),
    ("200 x kaiming_uniform_ 256x256", "single", "kaiming_uniform_ x200", "256x256", "float32",
     None, 1.0),
    ("GPT-2 small initialize warm vs reset_parameters", "models", "gpt2 (xinit initialize)",
     None, None, "torch reset_parameters", 2.0),
    ("GPT-2 small initialize warm vs torch.nn.init by hand", "models", "gpt2 (xinit initialize)",
     None, None, "torch.nn.init by hand", 2.0),
    ("ResNet-50 model.apply(init_weights), xinit.torch drop-ins", "apply",
     "resnet50 model.apply(init_weights), xinit.torch", None, None, None, 1.0),
    ("GPT-2 small model.apply(init_weights), xinit.torch drop-ins", "apply",
     "gpt2 model.apply(init_weights), xinit.torch", None, None, None, 1.0),
    ("ResNet-50 model.apply(apply_fn(recipe))", "apply", "resnet50 model.apply(apply_fn(recipe))",
     None, None, None, 1.5),
    ("GPT-2 small model.apply(apply_fn(recipe))", "apply", "gpt2 model.apply(apply_fn(recipe))",
     None, None, None, 1.5),
    ("GPT-2 small cold, filled cache", "cold", "gpt2 cold, filled cache", None, None, None, 1.0),
    ("ResNet-50 cold, filled cache", "cold", "resnet50 cold, filled cache", None, None, None, 0.5),
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
    # rows with "rss_base": the rise of the peak over the RSS just before the call
    ("sharding", "sharded {case}", "parameter bytes (rise)", "param_bytes", 1.25,
     "sharded init GPT-2-XL over 8 CPU devices (--sections sharding)"),
]


def _find(rows, section, case, shape, dtype, peer):
    for r in rows:
        if (r.section == section and r.case == case and (shape is None or r.shape == shape)
                and (dtype is None or r.dtype == dtype) and (peer is None or r.peer == peer)):
            return r
    return None


def _ratios(runs, target) -> list[float]:
    """The target row's ratio in each run that measured it."""
    out = []
    for rows in runs:
        r = _find(rows, *target[1:6])
        if r is not None and r.ratio is not None:
            out.append(r.ratio)
    return out


def target_lines(rows, runs=None) -> list[str]:
    """The targets table: with several runs, min / median / max of each ratio; a target
    marked every-run is met only if its lowest run meets it, the others by the median."""
    runs = runs or [rows]
    multi = len(runs) > 1
    head = "| target | needed | measured" + (" (min / median / max)" if multi else "") + " | met |"
    out = [head, "|---|---:|---:|:---:|"]
    for target in TARGETS:
        label, need = target[0], target[6]
        every = len(target) > 7 and target[7] == EVERY_RUN
        ratios = _ratios(runs, target)
        needed = f"{need:g}x" + (", every run" if every and multi else "")
        if not ratios:
            out.append(f"| {label} | {needed} | not measured | - |")
            continue
        med = statistics.median(ratios)
        judged = min(ratios) if every else med
        shown = (f"{min(ratios):.2f}x / {med:.2f}x / {max(ratios):.2f}x" if multi
                 else f"{ratios[0]:.2f}x")
        out.append(f"| {label} | {needed} | {shown} | {'yes' if judged >= need else '**no**'} |")
    for section, label, per, bytes_key, limit, missing in MEMORY_TARGETS:
        mem = [r for r in rows if r.section == section]
        for r in mem:
            frac = (r.extra["peak_rss"] - r.extra.get("rss_base", 0)) / r.extra[bytes_key]
            out.append(f"| {label.format(case=r.case)}: peak RSS / {per} | <= {limit:g} | "
                       f"{frac:.2f} | {'yes' if frac <= limit else '**no**'} |")
        if not mem:
            out.append(f"| {missing}: peak RSS / {per} | <= {limit:g} | not measured "
                       "(full run only) | - |")
    out.append("| GPU targets | - | no GPU in this run | - |")
    return out


def _values(row: Row) -> float | None:
    """How many values a row writes (its ``values``, or from its shape text), or None."""
    if "values" in row.extra:
        return float(row.extra["values"])
    if row.shape.endswith("M params"):
        return float(row.shape.split("M")[0]) * 1e6
    try:
        n = math.prod(int(d) for d in row.shape.split("x"))
    except ValueError:
        return None
    count = row.case.rsplit(" x", 1)
    if len(count) == 2 and count[1].isdigit():
        n *= int(count[1])
    return float(n)


def limit_lines(lim: dict, rows, runs) -> list[str]:
    """The physical limits and every target row's distance to its floor."""
    cpu = lim["cpu"]
    one, every = lim.get("one_core"), lim["all_cores"]
    out = [f"Measured by `benchmarks/limits.py` on {cpu['model']} "
           f"(`torch.backends.cpu.get_cpu_capability()` = {cpu['capability']}, "
           f"{cpu['cores']} cores), {lim['n'] / 2**20:.0f} Mi float32 values per "
           "measurement, medians of 7. One core: a fresh process pinned to one core "
           "(torch on one thread); all cores: this process.", "",
           "| random bits | ns/value, one core | ns/value, all cores | values/s, all cores |",
           "|---|---:|---:|---:|"]
    for name, v in every["hash"].items():
        o = one["hash"][name]["ns_per_value"] if one else float("nan")
        out.append(f"| {name} | {o:.2f} | {v['ns_per_value']:.2f} | {v['values_per_s'] / 1e6:.0f} M |")
    out += ["", "| memory | GB/s, one core | GB/s, all cores |", "|---|---:|---:|"]
    for name, v in every["memory"].items():
        o = one["memory"][name]["GB_per_s"] if one else float("nan")
        out.append(f"| {name} | {o:.1f} | {v['GB_per_s']:.1f} |")
    if "call_us" in lim:
        out += ["", "| a call's fixed cost | us |", "|---|---:|"]
        out += [f"| {name} | {us:.1f} |" for name, us in lim["call_us"].items()]
        out += ["", "Each xinit call that draws random values runs at least one compiled "
                "program on XLA:CPU's worker threads: the row above is its floor per call, "
                "before any Python, against torch's whole kernel on the caller's thread. "
                "Rows of many small calls (200 x 256x256, `model.apply` with drop-ins) pay it "
                "once per tensor."]
    if "import_jax_s" in lim:
        out += ["", f"`import jax` in a fresh process that has imported torch: "
                f"{lim['import_jax_s']:.2f} s. Every cold start of xinit pays it before "
                "anything else: a cold row's ratio cannot exceed torch's time over this."]
    out += ["", "**Distance to the limits.** The floor of a row that writes *n* float32 values "
            "into torch tensors: one threefry hash per value (xinit's hash above, one core) "
            "plus one copy of 4*n* bytes into the tensor (the warm copy above, one core), "
            "spread perfectly over every core - nothing faster can produce `jax.random`'s "
            "bits and put them in the tensor. The normal families' floor adds the `erf_inv` "
            "transform per value (`jax.random.normal`'s values, bit for bit, need it). "
            "`torch / floor` is the highest ratio any implementation of these values could "
            "show against torch in that row: where it is below the target, the target is out "
            "of reach on this machine. Median times over the runs; whole-model rows count "
            "every value as uniform (their floor is a lower bound of a lower bound).", "",
            "| target row | values | torch ms | xinit ms | floor ms | xinit / floor | "
            "torch / floor | needed |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for target in TARGETS:
        r = _find(rows, *target[1:6])
        if r is None or r.ratio is None or r.section == "cold":
            continue
        n = _values(r)
        if n is None:
            continue
        xs = [x.xinit_s for x in (_find(rs, *target[1:6]) for rs in runs) if x and x.xinit_s]
        ps = [x.peer_s for x in (_find(rs, *target[1:6]) for rs in runs) if x and x.peer_s]
        normal = r.section == "single" and r.case in NORMAL_CASES
        floor = limits.floor_seconds(lim, n, normal=normal and limits.TRANSFORM in (
            (lim.get("one_core") or lim["all_cores"])["hash"]))
        xm, pm = statistics.median(xs), statistics.median(ps)
        out.append(f"| {target[0]} | {n / 1e6:.1f} M | {_ms(pm)} | {_ms(xm)} | {_ms(floor)} | "
                   f"{xm / floor:.1f}x | {pm / floor:.2f}x | {target[6]:g}x |")
    return out


NORMAL_CASES = ("normal_", "kaiming_normal_", "xavier_normal_", "sparse_")


def spread_lines(runs) -> list[str]:
    """Each row's ratio in every run, and their min / median / max."""
    n = len(runs)
    out = ["| row | peer | " + " | ".join(f"run {i + 1}" for i in range(n))
           + " | min | median | max |",
           "|---|---|" + "---:|" * (n + 3)]
    seen = []
    for rows in runs:
        for r in rows:
            k = (r.section, r.case, r.shape, r.dtype, r.peer)
            if k not in seen:
                seen.append(k)
    for k in seen:
        ratios = []
        for rows in runs:
            r = _find(rows, *k)
            ratios.append(r.ratio if r is not None else None)
        got = [x for x in ratios if x is not None]
        if not got:
            continue
        label = f"{k[1]} {k[2]} {k[3]}" if k[0] == "single" else f"{k[1]} ({k[2]})"
        cells = " | ".join("-" if x is None else f"{x:.2f}" for x in ratios)
        out.append(f"| {label} | {k[4]} | {cells} | {min(got):.2f} | "
                   f"{statistics.median(got):.2f} | {max(got):.2f} |")
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
    info = limits.cpu_info()
    cpu = (f"{info['model']} (lscpu), {info['cores']} cores usable, "
           f"torch.backends.cpu.get_cpu_capability() = {info['capability']}")
    try:
        import flax

        flax_v = flax.__version__
    except ImportError:
        flax_v = "not installed"
    import jaxlib

    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",) * 3
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return [
        f"- CPU: {cpu}; GPU: {gpu}",
        f"- torch {torch.__version__} ({torch.get_num_threads()} threads), jax {jax.__version__}, "
        f"jaxlib {jaxlib.__version__}, flax {flax_v}, numpy {np.__version__}, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}",
        f"- JAX backend: {jax.default_backend()}; load average at start: "
        + ", ".join(f"{x:.2f}" if isinstance(x, float) else x for x in load)
        + " (the machine is shared; peers are interleaved with xinit so load hits both)",
    ]


def render(rows, meta, notes: str, runs=None, lim=None, history: str = "") -> str:
    """The page: ``rows`` (the last run) in tables, the targets over ``runs`` (every run's
    rows), the limits ``lim``, the spread table, ``notes`` and the ``history``."""
    runs = runs or [rows]
    ratio = ("ratio", lambda r: "-" if r.ratio is None else f"{r.ratio:.2f}x")
    kind = "complete `--quick` runs" if meta["quick"] else "complete runs"
    spread = (f" The targets and the spread table cover {len(runs)} {kind}; the other "
              "tables show the last one." if len(runs) > 1 else "")
    lines = ["# Performance", "",
             "Generated by `benchmarks/run.py`" + (" --quick" if meta["quick"] else "")
             + f" on {meta['date']} in {meta['seconds']:.0f} s. Ratio = peer time / xinit "
             "time: above 1, xinit is faster. Warm rows are medians of "
             f"{meta['repeats']} interleaved repeats after a warm-up; cold rows are fresh "
             "processes." + spread, "", "## Machine", "", *(meta.get("machine") or machine()), "",
             "## Targets", "",
             *target_lines(rows, runs), ""]
    if lim:
        lines += ["## Physical limits of this machine", "", *limit_lines(lim, rows, runs), ""]
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
    applied = [r for r in rows if r.section == "apply"]
    if applied:
        lines += ["## `model.apply(init_weights)`, warm", "",
                  "The pattern the tutorials teach (`benchmarks/models.py` `init_weights`): "
                  "`kaiming_normal_(mode=\"fan_out\", nonlinearity=\"relu\")` for Conv2d "
                  "weights, `xavier_uniform_` for Linear weights, zeros for their biases, "
                  "ones/zeros for BatchNorm and LayerNorm (embeddings untouched). The peer: "
                  "that function written with `torch.nn.init`; xinit: the same function "
                  "written with `xinit.torch` drop-ins, `model.apply(xinit.torch.model."
                  "apply_fn(recipe))` and `initialize(model, recipe)` with the same rules as a "
                  "recipe (`init_weights_recipe`, `unmatched=\"ignore\"`).", ""]
        lines += _table(applied, model_columns)
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
    shard_rows = [r for r in rows if r.section == "sharding"]
    if shard_rows:
        lines += ["## Sharded initialization over 8 CPU devices", "",
                  "A GPT-2-XL-shaped linen model (`benchmarks/sharding.py`; float32) with every "
                  "kernel and embedding sharded on a dimension 8 divides, each side in a fresh "
                  "process: `xinit.flax.initialize(..., shardings=)` against "
                  "`jax.jit(model.init, out_shardings=)` with the same distributions. Peak RSS "
                  "rise: the process's peak over its RSS just before the call, per parameter "
                  "byte.", ""]
        rise = lambda key, base: lambda r: f"{(r.extra[key] - r.extra[base]) / r.extra['param_bytes']:.2f}"  # noqa: E731
        lines += _table(shard_rows, [
            ("case", lambda r: r.case),
            ("parameter GiB", lambda r: f"{r.extra['param_bytes'] / 2**30:.2f}"),
            ("xinit peak RSS rise", rise("peak_rss", "rss_base")),
            ("flax peak RSS rise", rise("peer_peak_rss", "peer_rss_before")),
            ("flax s", lambda r: f"{r.peer_s:.2f}"), ("xinit s", lambda r: f"{r.xinit_s:.2f}"),
            ratio, ("CPU", lambda r: r.extra.get("cpu", ""))])
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
    tshard = [r for r in rows if r.section == "torch_sharding"]
    if tshard:
        lines += ["## FSDP2 materialize on gloo ranks", "",
                  "A GPT-2-shaped model (`benchmarks/sharding_torch.py`; float32) built on `meta` "
                  "and sharded with `fully_shard` over 4 CPU ranks (the case says), each side in its own fresh "
                  "processes: `xinit.torch.materialize(model, \"cpu\", \"torch_default\", key=0)` "
                  "against `model.to_empty(device=\"cpu\")` and every module's "
                  "`reset_parameters()`. Times: the slowest rank; peak RSS rise: the largest "
                  "rank's peak over its RSS before the call, per local parameter byte; xinit's "
                  "split (its peak is the RSS at the call's end) into anonymous memory, what the "
                  "process allocated, and pages of mapped files: the code of JAX's compiler, "
                  "resident from its first use in a process and shared between processes.", ""]

        def rise(key):
            def cell(r):
                value = r.extra.get(key)
                return "-" if value is None else f"{value / r.extra['local_bytes']:.2f}"
            return cell

        lines += _table(tshard, [
            ("case", lambda r: r.case), ("model", lambda r: r.shape),
            ("local MiB", lambda r: f"{r.extra['local_bytes'] / 2**20:.0f}"),
            ("xinit peak RSS rise", rise("rise")), ("of it anonymous", rise("anon_rise")),
            ("of it file pages MiB", lambda r: "-" if r.extra.get("file_rise") is None
             else f"{r.extra['file_rise'] / 2**20:.0f}"),
            ("torch peak RSS rise", rise("peer_rise")),
            ("torch s", lambda r: f"{r.peer_s:.2f}"), ("xinit s", lambda r: f"{r.xinit_s:.2f}"),
            ratio, ("CPU", lambda r: r.extra.get("cpu", ""))])
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
    if len(runs) > 1:
        lines += [f"## Run-to-run spread ({len(runs)} {kind})", "",
                  "Each row's ratio in every run (same code, same machine; `-`: not measured "
                  "in that run).", "", *spread_lines(runs), ""]
    if notes:
        lines += [notes.strip(), ""]
    if history:
        lines += ["## History", "", history.strip(), ""]
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
SECTIONS = ("limits", "single", "flax", "models", "apply", "flax_models", "cold", "flax_cold",
            "memory", "port", "port_memory", "no_init", "torch_sharding", "sharding")
HISTORY = HERE / "history.md"


def measure_once(quick, sections, repeats, sizes, dtypes, model_names, cold_models,
                 cold_repeats, memory_model, flax_limit, port_model="gpt2", port_gib=1.05,
                 port_shape=None, torch_sharding_shape=None, sharding_model="gpt2_xl",
                 no_init_model="gpt2") -> list[Row]:
    """One full run of ``sections`` (the limits aside)."""
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
    names = model_names or ["gpt2", "resnet50"]
    if "models" in sections:
        print("whole models, warm", flush=True)
        rows += bench_models_warm(model_names or (["gpt2"] if quick else names), repeats)
    if "apply" in sections:
        print("model.apply(init_weights), warm", flush=True)
        rows += bench_apply(names, repeats)
    if "flax_models" in sections:
        print("whole models in Flax, warm", flush=True)
        fnames = model_names or (["gpt2"] if quick else names)
        rows += bench_flax_models_warm(fnames, repeats, eager=not quick)
        rows += bench_nnx_models_warm(fnames, repeats)
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
    if "torch_sharding" in sections and not quick:
        print("FSDP2 materialize on gloo ranks (GPT-2 small shape by default, fresh processes per side)", flush=True)
        rows += bench_torch_sharding(**(torch_sharding_shape or {}))
    if "sharding" in sections and not quick:
        print("sharded init over 8 CPU devices (GPT-2-XL shape, one process per side)", flush=True)
        rows += bench_sharding(sharding_model)
    return rows


def _rows_of(data: list[dict]) -> list[Row]:
    return [Row(**{k: v for k, v in r.items() if k != "ratio"}) for r in data]


def _json_rows(rows: list[Row]) -> list[dict]:
    return [dict(asdict(r), ratio=r.ratio) for r in rows]


def load_runs(path: Path) -> tuple[list[dict], dict | None]:
    """The runs (``{"meta", "rows"}``) and limits of an existing performance.json."""
    if not path.exists():
        return [], None
    data = json.loads(path.read_text())
    runs = data.get("runs") or ([{"meta": data["meta"], "rows": data["rows"]}]
                                if data.get("rows") else [])
    return runs, data.get("limits")


def write(out: Path, runs: list[dict], lim: dict | None, notes_path=HERE / "notes.md",
          history_path=HISTORY) -> None:
    """performance.json (every run), performance.md and performance.png (last run's tables,
    targets and spread over every run)."""
    out.mkdir(parents=True, exist_ok=True)
    last = runs[-1]
    rows = _rows_of(last["rows"])
    all_rows = [_rows_of(r["rows"]) for r in runs]
    notes = Path(notes_path).read_text() if notes_path and Path(notes_path).exists() else ""
    history = (Path(history_path).read_text()
               if history_path and Path(history_path).exists() else "")
    (out / "performance.json").write_text(json.dumps(
        {"meta": last["meta"], "rows": last["rows"], "runs": runs, "limits": lim}, indent=1))
    (out / "performance.md").write_text(render(rows, last["meta"], notes, all_rows, lim, history))
    chart(rows, out / "performance.png")


def run(quick=False, out=HERE.parent / "docs", sections=SECTIONS, repeats=None,
        sizes=None, dtypes=None, model_names=None, cold_models=None, cold_repeats=None,
        memory_model="transformer_1b", notes_path=HERE / "notes.md",
        flax_limit=None, port_model="gpt2", port_gib=1.05, port_shape=None, runs: int = 1,
        accumulate: bool = False, history_path=HISTORY, torch_sharding_shape=None,
        sharding_model="gpt2_xl", no_init_model="gpt2") -> list[Row]:
    """Measure ``runs`` full runs of ``sections`` and write the page; returns the last
    run's rows. ``accumulate``: add the runs to those already in ``out``'s JSON."""
    out = Path(out)
    repeats = repeats or (3 if quick else 5)
    previous, lim = load_runs(out / "performance.json") if accumulate else ([], None)
    if "limits" in sections:
        print("physical limits", flush=True)
        lim = limits.measure(2**20 if sizes else limits.N, one_core=True)
    done = list(previous)
    rows: list[Row] = []
    for k in range(runs):
        if runs > 1:
            print(f"run {k + 1} of {runs}", flush=True)
        t0 = time.perf_counter()
        machine_lines = machine()  # the load average at the start
        rows = measure_once(quick, sections, repeats, sizes, dtypes, model_names, cold_models,
                            cold_repeats, memory_model, flax_limit, port_model, port_gib,
                            port_shape, torch_sharding_shape, sharding_model, no_init_model)
        meta = {"quick": quick, "repeats": repeats, "seconds": time.perf_counter() - t0,
                "cold_repeats": cold_repeats or (1 if quick else 3), "machine": machine_lines,
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        done.append({"meta": meta, "rows": _json_rows(rows)})
        write(out, done, lim, notes_path, history_path)  # after every run: an interrupted
        # series keeps what it measured
    print(f"wrote {out / 'performance.md'} and performance.png ({len(done)} run(s)); "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    return rows


def rerender(out: Path, notes_path=HERE / "notes.md", history_path=HISTORY) -> None:
    """Write performance.md and .png again from ``out/performance.json``."""
    runs, lim = load_runs(out / "performance.json")
    write(out, runs, lim, notes_path, history_path)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="a subset covering every target row, a few minutes")
    ap.add_argument("--out", default=str(HERE.parent / "docs"),
                    help="directory for performance.md/.png/.json (default: docs/)")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--repeats", type=int, default=None, help="warm repeats (default 3 quick, 5)")
    ap.add_argument("--runs", type=int, default=1,
                    help="full runs to measure (the page shows their spread; default 1)")
    ap.add_argument("--accumulate", action="store_true",
                    help="add the runs to those already in --out's performance.json")
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
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    run(quick=args.quick, out=args.out, sections=sections, repeats=args.repeats,
        runs=args.runs, accumulate=args.accumulate)


if __name__ == "__main__":
    main()
