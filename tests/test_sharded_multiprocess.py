"""Sharded draws across JAX processes: each process draws only its addressable shards.

Two processes on this machine (``jax.distributed.initialize`` with a localhost
coordinator and gloo CPU collectives), two CPU devices each, meshes spanning
both. Each process checks that its shards equal their slices of the
single-process draw bit for bit and that the engine drew exactly its own
shards' regions (no process draws a remote shard or the whole tensor); the
global arrays are then gathered across processes (``process_allgather``) and
compared with the single-process values.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("flax")

WORKER = r'''
import json, os, sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=sys.argv[2], num_processes=2, process_id=int(sys.argv[1]),
                           initialization_timeout=120)
import jax.numpy as jnp, numpy as np
import flax.linen as nn
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P
import xinit.flax as xf
from xinit.core import FLAX, sample, specs
from xinit.core import sharding as sharded

failures, checked = [], 0
from engine_spy import record_requests  # tests/, the script's working directory
recorded = record_requests(sharded)

def check(tag, out, ref, canon_shape, layout):
    global checked
    checked += 1
    local = {sharded.shard_regions(canon_shape, layout, out.sharding)[s.device] for s in out.addressable_shards}
    drawn = {r.region for r in recorded}
    if drawn != local:
        failures.append(f"{tag}: drew {sorted(drawn)}, its shards are {sorted(local)}")
    for s in out.addressable_shards:
        if not np.array_equal(np.asarray(s.data), ref[s.index]):
            failures.append(f"{tag}: shard {s.index} differs")
    full = np.asarray(multihost_utils.process_allgather(out, tiled=True))
    if not np.array_equal(full, ref):
        failures.append(f"{tag}: gathered array differs")

meshes = {"x4": jax.make_mesh((4,), ("x",)), "2x2": jax.make_mesh((2, 2), ("x", "y"))}
for name, spec in [("normal", specs.Normal()), ("kaiming_uniform", specs.KaimingUniform()),
                   ("sparse", specs.Sparse(0.5))]:
    ref = np.asarray(sample(spec, 11, (16, 24), layout=FLAX))  # (in, out): canonical (24, 16)
    for mname, pspec in [("x4", P("x")), ("x4", P(None, "x")), ("2x2", P("x", "y")), ("2x2", P("y", "x"))]:
        sh = NamedSharding(meshes[mname], pspec)
        recorded.clear()
        out = sample(spec, 11, (16, 24), layout=FLAX, sharding=sh)
        check(f"{name} {mname} {pspec}", out, ref, (24, 16), FLAX)

class Dense(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(8, kernel_init=nn.with_partitioning(nn.initializers.lecun_normal(), ("x", "y")))(x)

abstract = jax.eval_shape(Dense().init, jax.random.key(0), jnp.ones((1, 4)))
ref = np.asarray(xf.initialize(abstract, key=2)["params"]["Dense_0"]["kernel"].value)
with jax.set_mesh(meshes["2x2"]):
    recorded.clear()
    out = xf.initialize(abstract, key=2)["params"]["Dense_0"]["kernel"].value
recorded[:] = [r for r in recorded if len(r.shape) == 2]  # the bias is unsharded: drawn whole
check("initialize nn.Partitioned", out, ref, (8, 4), FLAX)

print(json.dumps({"process": jax.process_index(), "processes": jax.process_count(),
                  "devices": len(jax.devices()), "checked": checked, "failures": failures}))
jax.distributed.shutdown()
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_each_process_draws_only_its_shards():
    address = f"127.0.0.1:{_free_port()}"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(i), address], env=env,
                              cwd=Path(__file__).parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
             for i in range(2)]
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=600)
            assert p.returncode == 0, err[-4000:]
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for r in results:
        assert (r["processes"], r["devices"]) == (2, 4)
        assert r["checked"] == 13
        assert not r["failures"], "\n".join(r["failures"])
    assert sorted(r["process"] for r in results) == [0, 1]
