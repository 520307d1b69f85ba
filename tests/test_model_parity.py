"""Cross-framework identity: the same recipe and key give a torch model and a flax model with
matching names the same numbers, bit for bit (flax kernel == torch weight permuted)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from xinit.core.recipes import gpt2
from xinit.flax.model import initialize as flax_init
from xinit.torch.model import initialize as torch_init

D, V, T = 32, 100, 8


# ----------------------------------------------------------------- MLP


class TorchMLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(12, 64)
        self.fc2 = torch.nn.Linear(64, 64)
        self.out = torch.nn.Linear(64, 3)


class FlaxMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(64, name="fc1")(x))
        x = nn.relu(nn.Dense(64, name="fc2")(x))
        return nn.Dense(3, name="out")(x)


# ----------------------------------------------------------------- CNN


class TorchCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 16, 3)
        self.bn1 = torch.nn.BatchNorm2d(16)
        self.conv2 = torch.nn.Conv2d(16, 32, (3, 5))
        self.bn2 = torch.nn.BatchNorm2d(32)
        self.fc = torch.nn.Linear(32, 10)


class FlaxCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(16, (3, 3), padding="VALID", name="conv1")(x)
        x = nn.BatchNorm(use_running_average=True, name="bn1")(x)
        x = nn.Conv(32, (3, 5), padding="VALID", name="conv2")(x)
        x = nn.BatchNorm(use_running_average=True, name="bn2")(x)
        return nn.Dense(10, name="fc")(x.mean(axis=(1, 2)))


# ------------------------------------------------------- small transformer


class TorchBlock(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1 = torch.nn.LayerNorm(D)
        self.q = torch.nn.Linear(D, D)
        self.k = torch.nn.Linear(D, D)
        self.v = torch.nn.Linear(D, D)
        self.c_proj = torch.nn.Linear(D, D)
        self.ln_2 = torch.nn.LayerNorm(D)
        self.fc = torch.nn.Linear(D, 4 * D)
        self.mlp_c_proj = torch.nn.Linear(4 * D, D)


class TorchTransformer(torch.nn.Module):
    def __init__(self, n_layer=2):
        super().__init__()
        self.wte = torch.nn.Embedding(V, D)
        self.wpe = torch.nn.Embedding(T, D)
        for i in range(n_layer):
            self.add_module(f"h{i}", TorchBlock())
        self.ln_f = torch.nn.LayerNorm(D)
        self.head = torch.nn.Linear(D, V)


class FlaxBlock(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.LayerNorm(name="ln_1")(x)
        q, k, v = (nn.Dense(D, name=n)(h) for n in "qkv")
        a = jax.nn.softmax(q @ k.swapaxes(-1, -2) / D**0.5) @ v
        x = x + nn.Dense(D, name="c_proj")(a)
        h = nn.LayerNorm(name="ln_2")(x)
        return x + nn.Dense(D, name="mlp_c_proj")(nn.gelu(nn.Dense(4 * D, name="fc")(h)))


class FlaxTransformer(nn.Module):
    n_layer: int = 2

    @nn.compact
    def __call__(self, tokens):
        x = nn.Embed(V, D, name="wte")(tokens) + nn.Embed(T, D, name="wpe")(jnp.arange(T))
        for i in range(self.n_layer):
            x = FlaxBlock(name=f"h{i}")(x)
        return nn.Dense(V, name="head")(nn.LayerNorm(name="ln_f")(x))


# ----------------------------------------------------------------- checks


def to_flax_layout(name, t):
    """A torch tensor in the layout flax keeps for the parameter ``name``."""
    a = t.detach().numpy()
    if name.endswith("weight") and a.ndim == 2 and "wte" not in name and "wpe" not in name:
        return a.T
    if a.ndim == 4:
        return a.transpose(2, 3, 1, 0)
    return a


def flax_leaves(variables):
    from xinit.flax.model import canonical_name

    out = {}
    for coll, tree in variables.items():
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            keys = tuple(p.key for p in path)
            out[canonical_name(keys, stats=coll == "batch_stats")] = np.asarray(leaf)
    return out


def assert_same(torch_model, variables):
    got = flax_leaves(variables)
    state = torch_model.state_dict()
    matched = 0
    for name, t in state.items():
        if name.endswith("num_batches_tracked"):
            continue
        want = to_flax_layout(name, t)
        assert got[name].shape == want.shape, name
        np.testing.assert_array_equal(got[name], want, err_msg=name)
        matched += 1
    assert matched == len(got)


CASES = [
    ("mlp", TorchMLP, FlaxMLP, (jnp.ones((1, 12)),)),
    ("cnn", TorchCNN, FlaxCNN, (jnp.ones((1, 9, 9, 3)),)),
    ("transformer", TorchTransformer, FlaxTransformer, (jnp.zeros((1, T), jnp.int32),)),
]
RECIPES = ["torch_default", "transformer", "gpt2", "dcgan", "resnet", "vit"]


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_torch_and_linen_give_the_same_numbers(case, recipe):
    _, tcls, fcls, args = case
    tmodel = torch_init(tcls(), recipe, key=2024)
    abstract = jax.eval_shape(fcls().init, jax.random.key(0), *args)
    assert_same(tmodel, flax_init(abstract, recipe, key=2024))


@pytest.mark.slow
def test_real_and_abstract_linen_trees_agree_and_key_matters():
    real = FlaxTransformer().init(jax.random.key(1), jnp.zeros((1, T), jnp.int32))
    abstract = jax.eval_shape(FlaxTransformer().init, jax.random.key(1), jnp.zeros((1, T), jnp.int32))
    a = flax_init(real, gpt2(n_layer=2), key=5)
    b = flax_init(abstract, gpt2(n_layer=2), key=5)
    c = flax_init(abstract, gpt2(n_layer=2), key=6)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a["params"]["head"]["kernel"], c["params"]["head"]["kernel"])


def test_torch_and_nnx_give_the_same_numbers():
    class NnxMLP(nnx.Module):
        def __init__(self, rngs):
            self.fc1 = nnx.Linear(12, 64, rngs=rngs)
            self.fc2 = nnx.Linear(64, 64, rngs=rngs)
            self.out = nnx.Linear(64, 3, rngs=rngs)

    tmodel = torch_init(TorchMLP(), "torch_default", key=7)
    model = flax_init(NnxMLP(nnx.Rngs(0)), "torch_default", key=7)
    for name in ("fc1", "fc2", "out"):
        tl = getattr(tmodel, name)
        fl = getattr(model, name)
        np.testing.assert_array_equal(np.asarray(fl.kernel[...]), tl.weight.detach().numpy().T)
        np.testing.assert_array_equal(np.asarray(fl.bias[...]), tl.bias.detach().numpy())


def test_flax_values_are_the_core_per_tensor_draw():
    """Each value is xinit.core.sample with the per-name key, bit for bit."""
    from xinit.core import FLAX, fold_in_name, sample
    from xinit.core.specs import KaimingUniform, Normal

    abstract = jax.eval_shape(FlaxTransformer().init, jax.random.key(0), jnp.zeros((1, T), jnp.int32))
    v = flax_init(abstract, "torch_default", key=3)["params"]
    k = sample(KaimingUniform(a=5**0.5), fold_in_name(3, "h0.fc.weight"), (D, 4 * D), layout=FLAX)
    np.testing.assert_array_equal(v["h0"]["fc"]["kernel"], k)
    e = sample(Normal(0.0, 1.0), fold_in_name(3, "wte.weight"), (V, D))
    np.testing.assert_array_equal(v["wte"]["embedding"], e)


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16", "float16"])
def test_batched_draw_equals_per_tensor_draw(dtype, monkeypatch):
    """The packed model-level program gives each parameter exactly its per-tensor draw."""
    from xinit.core import engine, fold_in_name, packing, sample, specs

    monkeypatch.setattr(packing, "MAX_ROWS", 64)  # 16 Ki-element chunks: parameters span chunks
    dt = jnp.dtype(dtype)
    cases = [
        (specs.Normal(0.0, 0.02), (300, 77)),
        (specs.Uniform(-0.1, 0.1), (5000,)),
        # draws that round up to b (the [a, b) fix-up, precomputed per row), b = 0, a == b
        (specs.Uniform(0.999, 1.0), (3000,)),
        (specs.Uniform(1.0, 1.0 + 2**-20), (3000,)),
        (specs.Uniform(-1e-3, 0.0), (3000,)),
        (specs.Uniform(0.5, 0.5), (300,)),
        (specs.TruncNormal(0.0, 0.02, -0.04, 0.04), (33, 65)),
        # far tails (offsets from the inner bound): main's per-tensor kernel and its model
        # program rounded these float64 values up to 2 ulp apart
        (specs.TruncNormal(0.0, 1.0, 15.0, 16.0), (37, 29)),
        (specs.TruncNormal(1.0, 2.0, -100.0, -60.0), (37, 29)),
        (specs.Normal(1.0, 0.02), (1000,)),
        (specs.Constant(0.25), (7,)),
        (specs.Eye(), (9, 13)),
        (specs.Dirac(2), (8, 3, 3, 3)),
        (specs.KaimingUniform(a=5**0.5), (110, 400)),  # spans three chunks
        (specs.Orthogonal(), (6, 4)),
    ]
    items = [
        engine.request(spec.plan(shape), np.asarray(fold_in_name(0, f"p{i}")), shape, dt, name=f"p{i}")
        for i, (spec, shape) in enumerate(cases)
    ]
    got = {i: np.zeros(int(np.prod(it.shape)), dt) for i, it in enumerate(items)}

    class Collect:
        in_place = False

        def write(self, chunk):
            for s in chunk.segments:
                got[s.index][s.offset : s.offset + s.length] = np.asarray(
                    chunk.array
                ).reshape(-1)[s.start : s.start + s.length]
            return False

        def finish(self, index):
            pass

        def stop(self):
            pass

    with engine.x64_scope(dt):
        engine.run(items, Collect())
        monkeypatch.undo()  # the per-tensor reference in default-size chunks
        for i, it in enumerate(items):
            ref = np.asarray(sample(cases[i][0], it.key, it.shape, dt)).ravel()
            assert np.array_equal(got[i].view(np.uint8), ref.view(np.uint8)), cases[i][0]


@pytest.mark.parametrize("own_threefry", [True, False])
def test_fold_in_many_is_jax_fold_in(own_threefry, monkeypatch):
    from xinit.core import threefry

    key = jax.random.key(1234)
    kd = jax.random.key_data(key)
    hashes = [0, 1, 2**31, 2**32 - 1, 0xDEADBEEF, 77]
    ref = np.stack([np.asarray(jax.random.key_data(jax.random.fold_in(key, h))) for h in hashes])
    monkeypatch.setattr(threefry, "ensure_checked", lambda: own_threefry)
    np.testing.assert_array_equal(threefry.fold_in_many(np.asarray(kd), hashes), ref)
