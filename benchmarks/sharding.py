"""Sharded initialization on 8 CPU devices: xinit.flax.initialize vs flax's jit init.

    .venv/bin/python benchmarks/sharding.py                    # GPT-2-XL shape (1.56B), both sides
    .venv/bin/python benchmarks/sharding.py --model gpt_tiny   # the code path on a tiny model

The GPT-2-XL-shaped linen model of :mod:`flax_models` (float32: 6.2 GB of
parameters) is sharded over 8 CPU devices (``--xla_force_host_platform_device_count
=8``): every kernel and embedding on its largest dimension that 8 divides, the
1-D parameters replicated. Each side runs in its own fresh subprocess (one
6 GB model at a time on a 23 GiB machine):

* ``xinit``: ``xinit.flax.initialize(abstract, "torch_default", key=0,
  shardings=tree)``: each device's shards drawn by xinit's engine;
* ``flax``: ``jax.jit(module.init, out_shardings=tree)`` with the same
  distributions written with ``jax.nn.initializers`` (``inits="torch"``), the
  way Flax users initialize sharded models.

Reported per side: seconds of the call (cold: compilation included, as a user
pays it once per process), the process's peak RSS (``VmHWM``, :mod:`rss`) and its rise
over the RSS just before the call, as a multiple of the parameter bytes (the
target: xinit <= 1.25x). ``run.py --sections sharding`` adds these rows to the
performance page (not in ``--quick``: a minute or more, 6 GB per side).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEVICES = 8
TARGET = 1.25  # peak RSS rise / parameter bytes, xinit side

WORKER = r'''
import json, math, sys, time
sys.path.insert(0, sys.argv[3])
import jax, jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import flax_models
from bench_configs import GPT2_XL
from rss import peak_rss_bytes, rss_bytes

side, name = sys.argv[1], sys.argv[2]
model = {"gpt2_xl": lambda inits: flax_models.gpt2(GPT2_XL, inits),
         "gpt_tiny": lambda inits: flax_models.MODELS["gpt_tiny"](inits)}[name]("torch")
mesh = jax.make_mesh((len(jax.devices()),), ("d",))
abstract = model.abstract(jax.random.key(0))
n = len(jax.devices())

def spec(x):
    """The largest dimension n divides, sharded; 1-D parameters (and the rest) replicated."""
    if x.ndim < 2:
        return P()
    for axis in sorted(range(x.ndim), key=lambda a: -x.shape[a]):
        if x.shape[axis] % n == 0:
            return P(*(["d" if a == axis else None for a in range(x.ndim)]))
    return P()

shardings = jax.tree.map(lambda x: NamedSharding(mesh, spec(x)), abstract)
param_bytes = sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(abstract))
sharded = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract) if spec(x) != P())

if side == "xinit":
    import xinit.flax as xf
    call = lambda: xf.initialize(abstract, "torch_default", key=0, shardings=shardings)
else:
    init = jax.jit(model.module.init, out_shardings=shardings)
    call = lambda: init(jax.random.key(0), *model.inputs)
before = rss_bytes()
t0 = time.perf_counter()
out = call()
jax.block_until_ready(out)
seconds = time.perf_counter() - t0
peak = peak_rss_bytes()
leaf = out["params"]["h_0"]["mlp"]["c_fc"]["kernel"]
print(json.dumps({"side": side, "model": name, "seconds": seconds, "param_bytes": param_bytes,
                  "parameters": sum(math.prod(x.shape) for x in jax.tree.leaves(abstract)),
                  "sharded_parameters": sharded, "rss_before": before, "peak_rss": peak,
                  "rise": (peak - before) / param_bytes, "devices": n,
                  "example_sharding": str(leaf.sharding.spec)}))
'''


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_side(side: str, model: str = "gpt2_xl", devices: int = DEVICES) -> dict:
    """One side in a fresh process: its seconds, peak RSS and RSS rise / parameter bytes."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", WORKER, side, model, str(HERE)], capture_output=True,
                       text=True, env=env, timeout=3600)
    if r.returncode:
        raise RuntimeError(f"{side} side failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def bench(model: str = "gpt2_xl", devices: int = DEVICES) -> dict:
    """Both sides, xinit first, each in its own process; plus the machine."""
    return {"xinit": run_side("xinit", model, devices), "flax": run_side("flax", model, devices),
            "cpu": cpu_model(), "cores": os.cpu_count(), "load": os.getloadavg()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="gpt2_xl", choices=["gpt2_xl", "gpt_tiny"])
    ap.add_argument("--devices", type=int, default=DEVICES)
    args = ap.parse_args(argv)
    res = bench(args.model, args.devices)
    for side in ("xinit", "flax"):
        r = res[side]
        print(f"{side:6s} {r['seconds']:7.2f} s  peak RSS {r['peak_rss'] / 2**30:6.2f} GiB  "
              f"rise {r['rise']:.2f}x of {r['param_bytes'] / 2**30:.2f} GiB parameters")
    print(f"CPU: {res['cpu']} ({res['cores']} cores), load {res['load']}")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
