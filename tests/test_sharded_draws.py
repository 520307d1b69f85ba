"""Sharded draws on JAX meshes: every device gets its slice of the unsharded values, and only that.

Run in a subprocess with 8 CPU devices (``--xla_force_host_platform_device_count``
must be set before JAX is imported). For every family (orthogonal and sparse
included), float dtype, layout (torch ``(out, in)``, flax ``(in, out)`` and conv
kernels, HF Conv1D), mesh shape and sharded dimension: the global array equals
the unsharded draw bit for bit, each addressable shard equals the same slice of
it, and the sharding is the one asked for. The engine's requests are recorded:
each is one shard's region (replicas drawn once), never the whole tensor -
except orthogonal, drawn whole once by design. Model level: ``xinit.flax.
initialize`` with ``shardings=`` (full trees and prefixes), and with the
shardings linen boxes (``nn.with_partitioning``, ``nn.with_logical_partitioning``
under ``nn.logical_axis_rules``) and nnx metadata declare; single initializers'
``out_sharding`` (JAX-named and ``torch_init``, orthogonal included). Errors
(a sharding that does not fit, a tree that does not match) are raised before
anything is drawn.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("flax")

SCRIPT = r'''
import json
import jax, jax.numpy as jnp, numpy as np
import flax.linen as nn
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
import xinit.flax as xf
from xinit.core import FLAX, TORCH, Layout, sample, specs
from xinit.core import sharding as sharded

assert len(jax.devices()) == 8
failures, checked = [], 0
from engine_spy import record_requests  # tests/, the script's working directory
recorded = record_requests(sharded)

MESHES = {s: jax.make_mesh(s, ("a", "b")) for s in [(2, 4), (4, 2), (8, 1)]}
CONV1D = Layout(in_axis=0, out_axis=1, name="HF_CONV1D")  # transformers' Conv1D weight (in, out)
SPECS = {
    "normal": specs.Normal(0.5, 2.0), "uniform": specs.Uniform(-1, 1),
    "trunc_normal": specs.TruncNormal(0.0, 1.0, -2, 2), "kaiming_uniform": specs.KaimingUniform(),
    "orthogonal": specs.Orthogonal(2.0), "sparse": specs.Sparse(0.5), "zeros": specs.Zeros(),
    "eye": specs.Eye(),
}
CASES = [((24, 16), TORCH), ((16, 24), FLAX), ((16, 24), CONV1D), ((3, 2, 8, 16), FLAX), ((32,), TORCH)]

def specs_for(shape):
    for name, spec in SPECS.items():
        if name in ("sparse", "eye") and len(shape) != 2:
            continue
        if name in ("orthogonal", "kaiming_uniform") and len(shape) < 2:
            continue
        yield name, spec

def partitions(ndim):
    yield P()
    for axis in range(ndim):
        for names in ("b", ("a", "b")):
            yield P(*([None] * axis), names)
    if ndim >= 2:
        yield P("a", "b")
        yield P(*([None] * (ndim - 2)), "b", "a")

def check(tag, out, ref, sharding):
    global checked
    checked += 1
    if out.sharding != sharding:
        failures.append(f"{tag}: sharding {out.sharding} != {sharding}")
    if out.dtype != ref.dtype or not np.array_equal(np.asarray(out), ref):
        failures.append(f"{tag}: values differ from the unsharded draw")
    for shard in out.addressable_shards:
        if not np.array_equal(np.asarray(shard.data), ref[shard.index]):
            failures.append(f"{tag}: shard on {shard.device} differs")

# ---------------------------------------------------------------- core: sample(sharding=)
for dtype in ("float32", "bfloat16"):
    for lshape, layout in CASES:
        canon = tuple(lshape[p] for p in layout.permutation(len(lshape)))
        for name, spec in specs_for(canon):
            if dtype == "bfloat16" and (name not in ("normal", "orthogonal") or len(lshape) != 2):
                continue
            ref = np.asarray(sample(spec, 7, lshape, dtype, layout=layout))
            for mshape, mesh in MESHES.items():
                for spec_p in partitions(len(lshape)):
                    sh = NamedSharding(mesh, spec_p)
                    try:
                        sh.shard_shape(lshape)
                    except ValueError:
                        continue
                    tag = f"{name} {dtype} {lshape} {layout.name or layout} mesh{mshape} {spec_p}"
                    recorded.clear()
                    out = sample(spec, 7, lshape, dtype, layout=layout, sharding=sh)
                    check(tag, out, ref, sh)
                    regions = set(sharded.shard_regions(canon, layout, sh).values())
                    whole = tuple((0, n) for n in canon)
                    got = [r.region for r in recorded]
                    if name == "orthogonal":
                        if got != [whole]:
                            failures.append(f"{tag}: orthogonal drawn as {got}, not once whole")
                    elif sorted(got) != sorted(regions) or len(got) != len(set(got)):
                        failures.append(f"{tag}: drew regions {got}, not the shards' {sorted(regions)}")

# complex: the real view's regions
ref = np.asarray(sample(specs.Normal(), 3, (8, 16), "complex64", layout=FLAX))
for spec_p in (P("a"), P(None, "b"), P("b", "a")):
    sh = NamedSharding(MESHES[(2, 4)], spec_p)
    check(f"complex64 {spec_p}", sample(specs.Normal(), 3, (8, 16), "complex64", layout=FLAX, sharding=sh), ref, sh)

# a sharding that does not fit: JAX's ValueError, nothing drawn
recorded.clear()
try:
    sample(specs.Normal(), 0, (6, 4), sharding=NamedSharding(MESHES[(2, 4)], P("b")))
    failures.append("uneven sharding: no error")
except ValueError:
    if recorded:
        failures.append("uneven sharding: drew before raising")

# ---------------------------------------------------------------- xinit.flax.initialize
mesh = MESHES[(2, 4)]

class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Dense(32, kernel_init=nn.with_partitioning(nn.initializers.lecun_normal(), (None, "b")),
                     bias_init=nn.with_partitioning(nn.initializers.zeros, ("b",)))(x)
        x = nn.Dense(16, kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                                  ("mlp", "embed")))(x)
        x = nn.Conv(8, (3, 3), kernel_init=nn.with_partitioning(nn.initializers.lecun_normal(),
                                                                (None, None, "a", "b")))(x.reshape(1, 2, 2, 4))
        x = nn.Embed(64, 8, embedding_init=nn.with_partitioning(nn.initializers.normal(), ("a", "b")))(
            jnp.zeros((1,), jnp.int32))
        return nn.LayerNorm()(x)

abstract = jax.eval_shape(Block().init, jax.random.key(0), jnp.ones((1, 16)))
reference = jax.tree.map(np.asarray, nn.unbox(xf.initialize(abstract, key=5)))
rules = (("mlp", "a"), ("embed", "b"))
declared = {
    ("params", "Dense_0", "kernel"): P(None, "b"), ("params", "Dense_0", "bias"): P("b"),
    ("params", "Dense_1", "kernel"): P("a", "b"), ("params", "Conv_0", "kernel"): P(None, None, "a", "b"),
    ("params", "Embed_0", "embedding"): P("a", "b"),
}

def leaves_of(tree):
    from flax import traverse_util
    return traverse_util.flatten_dict(nn.unbox(tree))

def check_tree(tag, out, expect):
    flat_ref = leaves_of(reference)
    for path, value in leaves_of(out).items():
        want = expect(path)
        if want is None:
            if len(value.sharding.device_set) != 1:
                failures.append(f"{tag} {path}: sharded {value.sharding}, expected unsharded")
            if not np.array_equal(np.asarray(value), flat_ref[path]):
                failures.append(f"{tag} {path}: values differ")
        else:
            check(f"{tag} {path}", value, flat_ref[path], want)

with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    recorded.clear()
    out = xf.initialize(abstract, key=5)
check_tree("declared", out, lambda p: NamedSharding(mesh, declared[p]) if p in declared else None)
if not isinstance(out["params"]["Dense_1"]["kernel"], nn.LogicallyPartitioned):
    failures.append("declared: boxes lost")
whole = [r for r in recorded if r.size == int(np.prod(r.shape)) and r.size > 64]
if whole:
    failures.append(f"declared: sharded params drawn whole: {[r.name for r in whole]}")

# shardings= : a full tree (nn.logical_to_mesh_sharding), a prefix, a PartitionSpec prefix
full = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, rules + (("a", "a"), ("b", "b")))
out = xf.initialize(abstract, key=5, shardings=full)
check_tree("shardings=full", out, lambda p: NamedSharding(mesh, declared.get(p, P())))
out = xf.initialize(abstract, key=5, shardings={"params": {"Dense_0": NamedSharding(mesh, P("a")),
        "Dense_1": None, "Conv_0": None, "Embed_0": NamedSharding(mesh, P(None, "a")), "LayerNorm_0": None}})
check_tree("shardings=prefix", out, lambda p: {"Dense_0": NamedSharding(mesh, P("a")),
           "Embed_0": NamedSharding(mesh, P(None, "a"))}.get(p[1]))
with jax.set_mesh(mesh):
    out = xf.initialize(abstract, key=5, shardings=P())
check_tree("shardings=P()", out, lambda p: NamedSharding(mesh, P()))

for bad in ({"params": {"Nope": None}}, {"other": None}):
    recorded.clear()
    try:
        xf.initialize(abstract, key=5, shardings=bad)
        failures.append(f"shardings={bad}: no error")
    except ValueError:
        if recorded:
            failures.append(f"shardings={bad}: drew before raising")
try:
    xf.initialize(abstract, key=5, shardings=P("a"))
    failures.append("PartitionSpec without a mesh: no error")
except ValueError:
    pass
recorded.clear()
try:
    xf.initialize(abstract, key=5, shardings=NamedSharding(MESHES[(8, 1)], P("a")))
    failures.append("shardings that do not fit: no error")
except ValueError:
    if recorded:
        failures.append("shardings that do not fit: drew before raising")

# nnx: variables' out_sharding metadata, under the ambient mesh; State and Module
class Net(nnx.Module):
    def __init__(self, rngs):
        self.up = nnx.Linear(16, 32, kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, "b")),
                             rngs=rngs)
        self.down = nnx.Linear(32, 16, kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), ("a", "b")),
                               rngs=rngs)
        self.norm = nnx.LayerNorm(16, rngs=rngs)

with jax.set_mesh(mesh):
    model = nnx.eval_shape(lambda: Net(nnx.Rngs(0)))
ref_state = {tuple(map(str, p)): np.asarray(v.get_value()) for p, v in
             nnx.to_flat_state(xf.initialize(nnx.state(model), key=9))}
nnx_declared = {("up", "kernel"): P(None, "b"), ("down", "kernel"): P("a", "b")}
with jax.set_mesh(mesh):
    state = xf.initialize(nnx.state(model), key=9)
    by_tree = xf.initialize(nnx.state(model), key=9, shardings=nnx.get_named_sharding(nnx.state(model), mesh))
for tag, st, default in (("nnx declared", state, None), ("nnx shardings=", by_tree, P())):
    for p, v in nnx.to_flat_state(st):
        p = tuple(map(str, p))
        spec_p = nnx_declared.get(p, default)
        value = v.get_value()
        if spec_p is None:
            if not np.array_equal(np.asarray(value), ref_state[p]):
                failures.append(f"{tag} {p}: values differ")
        else:
            check(f"{tag} {p}", value, ref_state[p], NamedSharding(mesh, spec_p))

# ---------------------------------------------------------------- single initializers' out_sharding
key = jax.random.key(3)
with jax.set_mesh(mesh):
    for name, init, shape in [
        ("lecun_normal", xf.lecun_normal(), (16, 24)),
        ("orthogonal", xf.orthogonal(), (16, 24)),
        ("orthogonal column_axis=0 3-D", xf.orthogonal(column_axis=0), (8, 4, 6)),
        ("truncated_normal", xf.truncated_normal(), (16, 24)),
        ("torch_init.linear_kernel", xf.torch_init.linear_kernel(), (16, 24)),
        ("torch_init.orthogonal", xf.torch_init.orthogonal(), (16, 24)),
        ("torch_init.sparse", xf.torch_init.sparse(0.5), (16, 24)),
        ("torch_init.embedding padding_idx", xf.torch_init.embedding(padding_idx=-3), (16, 24)),
    ]:
        ref = np.asarray(init(key, shape))
        for spec_p in (P("a"), P(None, "b"), P("b", "a")):
            spec_full = P(*spec_p, *([None] * (len(shape) - len(spec_p))))
            recorded.clear()
            out = init(key, shape, None, spec_p)
            check(f"{name} out_sharding={spec_p}", out, ref, NamedSharding(mesh, spec_full))
            if not recorded:
                failures.append(f"{name} out_sharding={spec_p}: not drawn shard by shard")

# ---------------------------------------------------------------- inside a user's jit
# A traced draw is elementwise in the tensor's own shape: under an initializer's
# out_sharding (Explicit axes) or jit's out_shardings (Auto axes) XLA's partitioner
# computes each device's shard only, so its temporaries shrink with the shard count.
auto = jax.make_mesh((2, 4), ("a", "b"), axis_types=(jax.sharding.AxisType.Auto,) * 2)

def temp_bytes(f):
    return f.lower(key).compile().memory_analysis().temp_size_in_bytes

for name, init, shape in [
    ("normal", xf.normal(0.02), (512, 256)),
    ("lecun_normal", xf.lecun_normal(), (512, 256)),
    ("truncated_normal", xf.truncated_normal(), (512, 256)),
    ("uniform", xf.uniform(), (512, 256)),
    ("torch_init.linear_kernel", xf.torch_init.linear_kernel(), (512, 256)),
    ("lecun_normal 4-D", xf.lecun_normal(), (3, 3, 32, 64)),
    ("torch_init.embedding padding_idx", xf.torch_init.embedding(padding_idx=300), (512, 256)),
]:
    ref = np.asarray(init(key, shape))
    whole_temp = temp_bytes(jax.jit(lambda k: init(k, shape)))
    for spec_p in (P("a"), P(None, "b"), P(*([None] * (len(shape) - 1)), ("a", "b")), P("b", "a")):
        spec_full = P(*spec_p, *([None] * (len(shape) - len(spec_p))))
        for axes, m in (("explicit", mesh), ("auto", auto)):
            sh = NamedSharding(m, spec_full)
            try:
                sh.shard_shape(shape)
            except ValueError:
                continue
            if axes == "explicit":
                f = jax.jit(lambda k: init(k, shape, None, spec_p))
            else:
                f = jax.jit(lambda k: init(k, shape), out_shardings=sh)
            with jax.set_mesh(m):
                out, temp = f(key), temp_bytes(f)
            tag = f"jit {name} {axes} {spec_p}"
            check(tag, out, ref, sh)
            shards = len({tuple((s.start, s.stop) for s in idx) for idx in sh.devices_indices_map(shape).values()})
            if temp > whole_temp / shards * 1.25 + 4096:
                failures.append(f"{tag}: {temp} bytes of temporaries per device, the whole draw "
                                f"takes {whole_temp}: not drawn shard by shard")

print(json.dumps({"checked": checked, "failures": failures}))
'''


@pytest.fixture(scope="module")
def result() -> dict:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=900,
                       env=env, cwd=Path(__file__).parent)
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_every_shard_equals_its_slice_of_the_unsharded_draw(result):
    assert result["checked"] > 800
    assert not result["failures"], "\n".join(result["failures"][:40])


PAGE = r'''
import sys
from pathlib import Path
root = Path(sys.argv[1])
sys.path.insert(0, str(root / "tests"))
import jax
from test_docs import code_blocks
assert len(jax.devices()) == 8
namespace = {"__name__": "docs_sharding"}
blocks = code_blocks(root / "docs" / "sharding.md")
for block in blocks:
    if block["kind"] == "skip":  # the PyTorch section's torchrun scripts (run by test_torch_dtensor.py)
        continue
    assert block["kind"] is None, block
    exec(compile(block["source"], f"docs/sharding.md:{block['line']}", "exec", dont_inherit=True), namespace)
print(len(blocks))
'''


def test_sharding_page_runs_on_8_devices():
    """tests/test_docs.py runs docs/sharding.md on this process's one device; here on 8."""
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", PAGE, str(root)], capture_output=True, text=True,
                       timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    assert int(r.stdout.strip().splitlines()[-1]) >= 4
