"""Checkpoint porting benchmarks: speed against a per-tensor numpy loop, peak memory file to file.

    .venv/bin/python benchmarks/port.py --speed gpt2          # in memory, side by side
    .venv/bin/python benchmarks/port.py --memory 1.1          # a >= 1 GiB file -> file, peak RSS

Speed: GPT-2 small's torch model converted into the linen model's variables in
memory. xinit: ``xinit.port.torch_to_flax(torch_model, traced, x)`` with the
linen model traced once outside the clock (as a Flax model object exists
before any converter runs); peer: what one writes by hand, a loop over the
state dict that transposes each Linear weight and copies the rest into JAX
arrays (``jnp.asarray``), with the names mapped by a dict built outside the
clock. Both wait for the arrays. The reverse (``flax_to_torch`` into an existing
model, vs ``param.copy_(torch.from_numpy(...))`` per tensor) too.

Memory: a GPT-style checkpoint of at least 1 GiB is written as ``.safetensors``
(tensor by tensor), then a fresh process converts it into a Flax
``.safetensors`` file with ``xinit.port.convert_file`` and reports its peak RSS
(``VmHWM``, :mod:`rss`) over the checkpoint's bytes. Run by ``benchmarks/run.py``
(sections ``port`` and ``port_memory``); nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_configs import GPT2_SMALL, GPT_TINY, GPTConfig  # noqa: E402
from rss import peak_rss_bytes  # noqa: E402

CONFIGS = {"gpt2": GPT2_SMALL, "gpt_tiny": GPT_TINY}


def _models(cfg: GPTConfig, device=None):
    import flax_models
    import models

    torch.manual_seed(0)
    tm = models.gpt2(cfg, device)
    fm = flax_models.gpt2(cfg)
    return tm, fm


def _by_hand_names(tm, variables) -> list[tuple[str, tuple[str, ...], bool]]:
    """(torch name, Flax path, transpose?) per tensor: the mapping one writes by hand."""
    import re

    out = []
    for name, t in tm.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied to wte
        flax_name = re.sub(r"^h\.(\d+)\.", r"h_\1.", name)
        *mods, leaf = flax_name.split(".")
        is_kernel = leaf == "weight" and t.dim() == 2 and not mods[-1].startswith(("wte", "wpe"))
        flax_leaf = {"weight": "kernel" if is_kernel else "scale"}.get(leaf, leaf)
        if mods[-1] in ("wte", "wpe"):
            flax_leaf = "embedding"
        out.append((name, ("params", *mods, flax_leaf), is_kernel))
    return out


def by_hand_to_flax(tm, mapping) -> dict:
    """The peer: a per-tensor numpy loop into JAX arrays."""
    import jax.numpy as jnp

    state = tm.state_dict()
    out: dict = {}
    for name, path, transpose in mapping:
        a = state[name].detach().numpy()
        node = out
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = jnp.asarray(a.T if transpose else a)
    return out


def by_hand_to_torch(variables, tm, mapping) -> None:
    """The reverse peer: ``copy_`` each Flax array into its torch tensor."""
    import warnings

    params = dict(tm.state_dict(keep_vars=True))
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    with torch.no_grad():
        for name, path, transpose in mapping:
            node = variables
            for p in path:
                node = node[p]
            a = np.asarray(node)
            params[name].copy_(torch.from_numpy(a.T if transpose else a))


def bench_speed(name: str = "gpt2", repeats: int = 5) -> list[dict]:
    """Median seconds of xinit and the by-hand loop, interleaved, both directions."""
    import jax

    import xinit.port as xp
    from xinit.flax import trace

    cfg = CONFIGS[name]
    tm, fm = _models(cfg)
    t0 = time.perf_counter()
    traced = trace(fm.module, *fm.inputs)
    trace_s = time.perf_counter() - t0
    mapping = _by_hand_names(tm, traced.variables)
    fns = {
        "xinit": lambda: jax.block_until_ready(xp.torch_to_flax(tm, traced)),
        "peer": lambda: jax.block_until_ready(by_hand_to_flax(tm, mapping)),
    }
    ref = fns["xinit"]()
    assert jax.tree.all(jax.tree.map(lambda a, b: bool((np.asarray(a) == np.asarray(b)).all()),
                                     ref, fns["peer"]()))
    from run import interleaved

    times = interleaved(fns, repeats, warmup=1)
    back = {
        "xinit": lambda: xp.flax_to_torch(traced, ref, tm),
        "peer": lambda: by_hand_to_torch(ref, tm, mapping),
    }
    back_times = interleaved(back, repeats, warmup=1)
    params = sum(p.numel() for p in tm.parameters())
    size = f"{params / 1e6:.1f}M params"
    return [
        {"case": f"{name} torch_to_flax (in memory)", "shape": size, "xinit_s": times["xinit"],
         "peer": "per-tensor numpy loop + jnp.asarray", "peer_s": times["peer"],
         "trace_s": trace_s},
        {"case": f"{name} flax_to_torch (in place)", "shape": size, "xinit_s": back_times["xinit"],
         "peer": "per-tensor copy_ loop", "peer_s": back_times["peer"], "trace_s": trace_s},
    ]


# --------------------------------------------------------------------- memory


def memory_config(gib: float, width: int = 1024, heads: int = 16, vocab: int = 50257,
                  positions: int = 1024) -> GPTConfig:
    """A GPT-2-shaped config whose float32 state is at least ``gib`` GiB."""
    per_layer = 12 * width * width + 13 * width
    fixed = (vocab + positions) * width + 2 * width
    layers = max(1, math.ceil((gib * 2**30 / 4 - fixed) / per_layer))
    return GPTConfig(vocab=vocab, positions=positions, width=width, layers=layers, heads=heads)


def parameter_count(cfg: GPTConfig) -> int:
    """Distinct parameters of the torch model of ``cfg`` (built on meta)."""
    tm, _ = _models(cfg, "meta")
    return sum(p.numel() for p in tm.parameters())


def write_checkpoint(cfg: GPTConfig, path: Path) -> int:
    """A random safetensors checkpoint of the torch model, written tensor by tensor."""
    from xinit.port import _files

    tm, _ = _models(cfg, "meta")
    state = {k: v for k, v in tm.state_dict().items() if k != "lm_head.weight"}
    rng = np.random.default_rng(0)
    layout = [(k, tuple(v.shape), np.dtype(np.float32)) for k, v in state.items()]
    _files.write_safetensors(path, layout, lambda k: rng.standard_normal(
        state[k].shape, dtype=np.float32))
    return path.stat().st_size


def convert_once(cfg: GPTConfig, src: Path, dst: Path) -> dict:
    """In this (fresh) process: convert src -> dst and report times and peak RSS."""
    import xinit.port as xp

    rss_before = peak_rss_bytes()
    tm, fm = _models(cfg, "meta")
    t0 = time.perf_counter()
    report = xp.convert_file(src, dst, tm, fm.module, *fm.inputs)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "tensors": len(report.converted),
            "peak_rss": peak_rss_bytes(),
            "rss_before": rss_before, "checkpoint_bytes": src.stat().st_size,
            "output_bytes": dst.stat().st_size}


def bench_memory(gib: float = 1.05, out_format: str = ".safetensors", **shape) -> dict:
    """Write a >= ``gib`` GiB checkpoint, convert it in a fresh process, report peak RSS.

    ``shape``: overrides of :func:`memory_config`'s width, heads, vocab, positions
    (the smoke test's tiny model).
    """
    cfg = memory_config(gib, **shape)
    with tempfile.TemporaryDirectory(prefix="xinit-port-mem-") as tmp:
        src = Path(tmp) / "model.safetensors"
        write_checkpoint(cfg, src)
        dst = Path(tmp) / f"flax{out_format}"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--convert-once",
               json.dumps(cfg.__dict__), str(src), str(dst)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"conversion failed:\n{proc.stderr[-3000:]}")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["layers"] = cfg.layers
    return res


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--speed", metavar="MODEL", help="gpt2 or gpt_tiny")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--memory", type=float, metavar="GIB", help="checkpoint size in GiB")
    ap.add_argument("--convert-once", nargs=3, metavar=("CONFIG", "SRC", "DST"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.convert_once:
        cfg = GPTConfig(**json.loads(args.convert_once[0]))
        print(json.dumps(convert_once(cfg, Path(args.convert_once[1]), Path(args.convert_once[2]))))
        return
    if args.speed:
        for row in bench_speed(args.speed, args.repeats):
            print(json.dumps(row))
    if args.memory:
        print(json.dumps(bench_memory(args.memory)))


if __name__ == "__main__":
    main()
