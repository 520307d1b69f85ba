"""Sharding: xinit.flax places its results exactly as jax.nn.initializers does.

For meshes of 1, 4 and 8 CPU devices (``--xla_force_host_platform_device_count``,
so each device count runs in its own process), every initializer is called with
every kind of ``out_sharding`` (None, a ``PartitionSpec`` under ``jax.set_mesh``,
a ``NamedSharding``; Explicit, Auto and mixed axis types; inside and outside a
mesh), eagerly and inside ``jax.jit``, next to JAX's own initializer for the same
call: the result's sharding must equal JAX's, or both must raise the same
exception type. The values never depend on the placement. Model level:
``xinit.flax.initialize`` on a tree of ``nn.Partitioned`` boxes inside a mesh, and
nnx layers with ``kernel_metadata={"out_sharding": ...}``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("flax")

SCRIPT = r'''
import json, os, sys
import jax, jax.numpy as jnp, numpy as np
import flax.linen as nn
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
import xinit.flax as xf

n = len(jax.devices())
ji = jax.nn.initializers
E, A = AxisType.Explicit, AxisType.Auto
meshes = {
    "explicit": jax.make_mesh((n,), ("x",), axis_types=(E,)),
    "auto": jax.make_mesh((n,), ("x",), axis_types=(A,)),
    "mixed": jax.make_mesh((max(n // 2, 1), 2 if n > 1 else 1), ("x", "y"), axis_types=(E, A)),
}
# One initializer per way JAX builds its result (a sampler, variance scaling, a
# complex normal, jnp.full, jnp.zeros, delta_orthogonal's scatter), orthogonal
# (which JAX refuses to shard, xinit draws whole and slices) and a torch_init
# initializer, placed the same way (compared with JAX's uniform).
INITS = {
    "uniform": lambda m: m.uniform(),
    "lecun_normal": lambda m: m.lecun_normal(),
    "vs_normal_complex": lambda m: m.variance_scaling(1.0, "fan_in", "normal", dtype=jnp.complex64),
    "constant": lambda m: m.constant(-7),
    "zeros": lambda m: m.zeros,
    # xinit's orthogonal takes out_sharding where JAX's refuses: placed as JAX's uniform
    "orthogonal": lambda m: m.orthogonal() if m is xf else m.uniform(),
    "delta_orthogonal": lambda m: m.delta_orthogonal(),
    "torch_init.linear_kernel": lambda m: m.torch_init.linear_kernel() if m is xf else m.uniform(),
}
JIT = ("uniform", "lecun_normal", "zeros", "orthogonal")  # also traced in the user's jit
SHAPES = {"delta_orthogonal": (3, 8, 8)}
# (scenario, context mesh name or None, out_sharding maker)
SCENARIOS = [
    ("nomesh/None", None, lambda ms: None),
    ("nomesh/P", None, lambda ms: P("x")),
    ("nomesh/NS-explicit", None, lambda ms: NamedSharding(ms["explicit"], P("x"))),
    ("nomesh/NS-explicit-replicated", None, lambda ms: NamedSharding(ms["explicit"], P())),
    ("nomesh/NS-auto-replicated", None, lambda ms: NamedSharding(ms["auto"], P())),
    ("nomesh/NS-auto", None, lambda ms: NamedSharding(ms["auto"], P("x"))),
    ("explicit/None", "explicit", lambda ms: None),
    ("explicit/P(x)", "explicit", lambda ms: P("x")),
    ("explicit/P(None,x)", "explicit", lambda ms: P(None, "x")),
    ("explicit/P()", "explicit", lambda ms: P()),
    ("explicit/NS", "explicit", lambda ms: NamedSharding(ms["explicit"], P("x"))),
    ("explicit/NS-other-mesh", "explicit", lambda ms: NamedSharding(ms["auto"], P())),
    ("auto/None", "auto", lambda ms: None),
    ("auto/P(x)", "auto", lambda ms: P("x")),
    ("auto/P()", "auto", lambda ms: P()),
    ("auto/NS", "auto", lambda ms: NamedSharding(ms["auto"], P())),
    ("mixed/None", "mixed", lambda ms: None),
    ("mixed/P(x)", "mixed", lambda ms: P("x")),
    ("mixed/P(y)", "mixed", lambda ms: P("y")),
    ("mixed/P(x,y)", "mixed", lambda ms: P("x", "y")),
    ("nomesh/NS-mixed", None, lambda ms: NamedSharding(ms["mixed"], P("x"))),
]

def outcome(module, name, ctx, osh, jit, shape):
    import contextlib
    try:
        with (jax.set_mesh(meshes[ctx]) if ctx else contextlib.nullcontext()):
            init = INITS[name](module)
            f = lambda k: init(k, shape, None, osh)
            out = jax.jit(f)(jax.random.key(0)) if jit else f(jax.random.key(0))
            return ("ok", out.sharding, np.asarray(out))
    except Exception as e:
        return ("error", type(e), f"{type(e).__name__}: {e}"[:200])

mismatches, checked = [], 0
plain = {}
for name in INITS:
    for shape in [SHAPES.get(name, (8, 8)), ()] if name in ("uniform", "zeros") else [SHAPES.get(name, (8, 8))]:
        for scen, ctx, make in SCENARIOS:
            for jit in (False, True) if name in JIT else (False,):
                osh = make(meshes)
                ours = outcome(xf, name, ctx, osh, jit, shape)
                theirs = outcome(ji, name, ctx, osh, jit, shape)
                checked += 1
                case = f"{name}{list(shape)} {scen} {'jit' if jit else 'eager'}"
                if ours[0] != theirs[0]:
                    mismatches.append(f"{case}: ours {ours[0]} {ours[1] if ours[0] == 'ok' else ours[2]}"
                                      f" / jax {theirs[0]} {theirs[1] if theirs[0] == 'ok' else theirs[2]}")
                elif ours[0] == "ok":
                    if ours[1] != theirs[1]:
                        mismatches.append(f"{case}: sharding {ours[1]} != jax's {theirs[1]}")
                    key = (name, shape)
                    ref = plain.setdefault(key, ours[2])
                    if not np.array_equal(ours[2], ref):
                        mismatches.append(f"{case}: values depend on the placement")
                elif not issubclass(ours[1], theirs[1]):
                    mismatches.append(f"{case}: ours raised {ours[2]} / jax {theirs[2]}")

# model level: nn.Partitioned boxes inside a mesh keep their metadata and are placed
model_checks = []
class M(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Dense(8, kernel_init=nn.with_partitioning(ji.lecun_normal(), (None, "x")),
                     bias_init=nn.with_partitioning(ji.zeros, ("x",)))(x)
        return nn.Dense(8, name="plain")(x)

abstract = jax.eval_shape(M().init, jax.random.key(0), jnp.zeros((1, 4)))
reference = xf.initialize(abstract, key=0)
for mesh_name in ("explicit", "auto"):
    with jax.set_mesh(meshes[mesh_name]):
        out = xf.initialize(abstract, key=0)
    k = out["params"]["Dense_0"]["kernel"]
    ok = (isinstance(k, nn.Partitioned) and k.names == (None, "x")
          and k.value.sharding.spec == P(None, "x")
          and np.array_equal(np.asarray(k.value), np.asarray(reference["params"]["Dense_0"]["kernel"].value))
          and out["params"]["Dense_0"]["bias"].value.sharding.spec == P("x"))
    model_checks.append((f"initialize Partitioned under {mesh_name} mesh", bool(ok)))

class L(nn.Module):
    @nn.compact
    def __call__(self, x):
        init = nn.with_logical_partitioning(ji.lecun_normal(), ("embed", "mlp"))
        return nn.Dense(8, kernel_init=init)(x)

abstract = jax.eval_shape(L().init, jax.random.key(0), jnp.zeros((1, 4)))
with jax.set_mesh(meshes["explicit"]), nn.logical_axis_rules((("embed", None), ("mlp", "x"))):
    k = xf.initialize(abstract, key=0)["params"]["Dense_0"]["kernel"]
model_checks.append(("initialize LogicallyPartitioned under a mesh and axis rules",
                     k.names == ("embed", "mlp") and k.value.sharding.spec == P(None, "x")))

with jax.set_mesh(meshes["explicit"]):
    ours = nnx.Linear(4, 8, kernel_init=xf.lecun_normal(), kernel_metadata={"out_sharding": (None, "x")},
                      rngs=nnx.Rngs(0))
    theirs = nnx.Linear(4, 8, kernel_metadata={"out_sharding": (None, "x")}, rngs=nnx.Rngs(0))
    model_checks.append(("nnx kernel_metadata out_sharding",
                         ours.kernel[...].sharding == theirs.kernel[...].sharding))

print(json.dumps({"devices": n, "checked": checked, "mismatches": mismatches,
                  "model_checks": model_checks}))
'''


def _run(devices: int) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=900,
                       env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("devices", [1, 4, 8])  # 2 adds nothing 4 does not (a minute of suite time)
def test_shardings_and_errors_are_jaxs_on_cpu_meshes(devices):
    result = _run(devices)
    assert result["devices"] == devices
    assert result["checked"] > 250
    assert not result["mismatches"], "\n".join(result["mismatches"][:40])
    failed = [name for name, ok in result["model_checks"] if not ok]
    assert not failed, failed
