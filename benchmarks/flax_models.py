"""The benchmark models of :mod:`models` in Flax linen, and GPT-2 in nnx (no torch imported here).

* GPT-2 small (124,439,808 parameters; the output head is ``wte.attend``, tied
  as in GPT-2) and ResNet-50 (25,557,032 parameters; BatchNorm's running
  statistics are the extra ``batch_stats`` collection), plus ``gpt_tiny`` and
  ``resnet_tiny``: the same code at test sizes. :data:`MODELS` has the same keys
  as ``models.MODELS``.
* Submodules carry the torch models' names, so ``xinit.flax.model`` canonical
  names equal the torch ``named_parameters()`` names after :func:`rename`
  (``h_0.attn.c_attn.weight`` -> ``h.0.attn.c_attn.weight``,
  ``layer1_0.downsample_1.weight`` -> ``layer1.0.downsample.1.weight``).
* ``inits="flax"`` (default) uses flax's own layer defaults (``lecun_normal``
  kernels, zero biases, ``variance_scaling(1, fan_in, normal)`` embeddings);
  ``inits="torch"`` gives every layer torch's ``reset_parameters`` distributions
  written with ``jax.nn.initializers`` - the same distributions xinit's
  ``torch_default`` recipe draws, so the two can be timed like for like.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp
from bench_configs import GPT2_SMALL, GPT_TINY, GPTConfig
from flax import nnx

INITS = ("flax", "torch")


# ------------------------------------------------------------------ layer defaults
def _torch_bias(fan_in: int):
    """torch's Linear/Conv bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


# kaiming_uniform_(a=sqrt(5)) on fan_in: gain^2 = 1/3, bound = sqrt(3 * (1/3) / fan_in).
_TORCH_KERNEL = jax.nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def dense(features: int, fan_in: int, inits: str, name: str, use_bias: bool = True) -> nn.Dense:
    if inits == "torch":
        return nn.Dense(features, use_bias=use_bias, kernel_init=_TORCH_KERNEL,
                        bias_init=_torch_bias(fan_in), name=name)
    return nn.Dense(features, use_bias=use_bias, name=name)


def conv(features: int, kernel: int, stride: int, padding: int, inits: str, name: str) -> nn.Conv:
    kw = {"kernel_init": _TORCH_KERNEL} if inits == "torch" else {}
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                   padding=((padding, padding), (padding, padding)), use_bias=False,
                   name=name, **kw)


def embed(num: int, features: int, inits: str, name: str) -> nn.Embed:
    if inits == "torch":
        return nn.Embed(num, features, embedding_init=jax.nn.initializers.normal(1.0), name=name)
    return nn.Embed(num, features, name=name)


# ------------------------------------------------------------------------- GPT-2
class CausalSelfAttention(nn.Module):
    cfg: GPTConfig
    inits: str = "flax"

    @nn.compact
    def __call__(self, x):
        b, t, c = x.shape
        h = self.cfg.heads
        qkv = dense(3 * c, c, self.inits, "c_attn")(x)
        q, k, v = (z.reshape(b, t, h, c // h) for z in jnp.split(qkv, 3, axis=-1))
        mask = nn.make_causal_mask(jnp.ones((b, t), bool))
        y = nn.dot_product_attention(q, k, v, mask=mask)
        return dense(c, c, self.inits, "c_proj")(y.reshape(b, t, c))


class MLP(nn.Module):
    cfg: GPTConfig
    inits: str = "flax"

    @nn.compact
    def __call__(self, x):
        c = self.cfg.width
        x = nn.gelu(dense(4 * c, c, self.inits, "c_fc")(x), approximate=True)
        return dense(c, 4 * c, self.inits, "c_proj")(x)


class Block(nn.Module):
    cfg: GPTConfig
    inits: str = "flax"

    @nn.compact
    def __call__(self, x):
        x = x + CausalSelfAttention(self.cfg, self.inits, name="attn")(
            nn.LayerNorm(epsilon=1e-5, name="ln_1")(x))
        return x + MLP(self.cfg, self.inits, name="mlp")(nn.LayerNorm(epsilon=1e-5, name="ln_2")(x))


class GPT(nn.Module):
    """GPT-2: token and position embeddings, pre-norm blocks, output head tied to ``wte``."""

    cfg: GPTConfig = GPT2_SMALL
    inits: str = "flax"

    @nn.compact
    def __call__(self, idx):
        wte = embed(self.cfg.vocab, self.cfg.width, self.inits, "wte")
        pos = jnp.arange(idx.shape[1])
        x = wte(idx) + embed(self.cfg.positions, self.cfg.width, self.inits, "wpe")(pos)
        for i in range(self.cfg.layers):
            x = Block(self.cfg, self.inits, name=f"h_{i}")(x)
        return wte.attend(nn.LayerNorm(epsilon=1e-5, name="ln_f")(x))


# ------------------------------------------------------------------------ ResNet
class Bottleneck(nn.Module):
    planes: int
    stride: int = 1
    downsample: bool = False
    inits: str = "flax"

    @nn.compact
    def __call__(self, x, train: bool = False):
        def bn(name):
            return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                                name=name)

        p, i = self.planes, self.inits
        out = nn.relu(bn("bn1")(conv(p, 1, 1, 0, i, "conv1")(x)))
        out = nn.relu(bn("bn2")(conv(p, 3, self.stride, 1, i, "conv2")(out)))
        out = bn("bn3")(conv(p * 4, 1, 1, 0, i, "conv3")(out))
        identity = x
        if self.downsample:
            identity = bn("downsample_1")(conv(p * 4, 1, self.stride, 0, i, "downsample_0")(x))
        return nn.relu(out + identity)


class ResNet(nn.Module):
    """ResNet with bottleneck blocks; ``width`` 64 and ``(3, 4, 6, 3)`` is ResNet-50."""

    layers: tuple = (3, 4, 6, 3)
    width: int = 64
    classes: int = 1000
    inits: str = "flax"

    @nn.compact
    def __call__(self, x, train: bool = False):
        w, i = self.width, self.inits
        x = conv(w, 7, 2, 3, i, "conv1")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name="bn1")(x)
        x = nn.max_pool(nn.relu(x), (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        inplanes = w
        for stage, (blocks, stride) in enumerate(zip(self.layers, (1, 2, 2, 2), strict=True)):
            planes = w * 2**stage
            for b in range(blocks):
                s = stride if b == 0 else 1
                down = b == 0 and (s != 1 or inplanes != planes * 4)
                x = Bottleneck(planes, s, down, i, name=f"layer{stage + 1}_{b}")(x, train)
                inplanes = planes * 4
        x = jnp.mean(x, axis=(1, 2))
        return dense(self.classes, x.shape[-1], i, "fc")(x)


# ------------------------------------------------------------------ GPT-2 in nnx
class NnxAttention(nnx.Module):
    def __init__(self, cfg: GPTConfig, rngs: nnx.Rngs):
        self.heads = cfg.heads
        self.c_attn = nnx.Linear(cfg.width, 3 * cfg.width, rngs=rngs)
        self.c_proj = nnx.Linear(cfg.width, cfg.width, rngs=rngs)

    def __call__(self, x):
        b, t, c = x.shape
        q, k, v = (z.reshape(b, t, self.heads, c // self.heads)
                   for z in jnp.split(self.c_attn(x), 3, axis=-1))
        y = nnx.dot_product_attention(q, k, v, mask=nnx.make_causal_mask(jnp.ones((b, t), bool)))
        return self.c_proj(y.reshape(b, t, c))


class NnxMLP(nnx.Module):
    def __init__(self, cfg: GPTConfig, rngs: nnx.Rngs):
        self.c_fc = nnx.Linear(cfg.width, 4 * cfg.width, rngs=rngs)
        self.c_proj = nnx.Linear(4 * cfg.width, cfg.width, rngs=rngs)

    def __call__(self, x):
        return self.c_proj(nnx.gelu(self.c_fc(x), approximate=True))


class NnxBlock(nnx.Module):
    def __init__(self, cfg: GPTConfig, rngs: nnx.Rngs):
        self.ln_1 = nnx.LayerNorm(cfg.width, epsilon=1e-5, rngs=rngs)
        self.attn = NnxAttention(cfg, rngs)
        self.ln_2 = nnx.LayerNorm(cfg.width, epsilon=1e-5, rngs=rngs)
        self.mlp = NnxMLP(cfg, rngs)

    def __call__(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NnxGPT(nnx.Module):
    """GPT-2 in nnx with flax's layer defaults; nnx paths are the torch names
    (``h.0.attn.c_attn.weight``), no rename needed. Built eagerly, as nnx modules are."""

    def __init__(self, cfg: GPTConfig, rngs: nnx.Rngs):
        self.wte = nnx.Embed(cfg.vocab, cfg.width, rngs=rngs)
        self.wpe = nnx.Embed(cfg.positions, cfg.width, rngs=rngs)
        self.h = nnx.List([NnxBlock(cfg, rngs) for _ in range(cfg.layers)])
        self.ln_f = nnx.LayerNorm(cfg.width, epsilon=1e-5, rngs=rngs)

    def __call__(self, idx):
        x = self.wte(idx) + self.wpe(jnp.arange(idx.shape[1]))
        for block in self.h:
            x = block(x)
        return self.wte.attend(self.ln_f(x))


#: nnx model constructors by name (the same names as :data:`MODELS`); call with ``nnx.Rngs``.
NNX_MODELS: dict[str, Callable[[nnx.Rngs], nnx.Module]] = {
    "gpt2": lambda rngs: NnxGPT(GPT2_SMALL, rngs),
    "gpt_tiny": lambda rngs: NnxGPT(GPT_TINY, rngs),
}


# ------------------------------------------------------------------------ registry
_GPT_RENAME = re.compile(r"^h_(\d+)\.")
_RESNET_RENAME = re.compile(r"(layer\d|downsample)_(\d+)(?=\.)")


def rename(name: str) -> str:
    """The flax canonical name -> the torch model's parameter name (both model families)."""
    return _RESNET_RENAME.sub(r"\1.\2", _GPT_RENAME.sub(r"h.\1.", name))


@dataclass(frozen=True)
class FlaxModel:
    """A linen module with the example inputs ``module.init`` takes."""

    module: nn.Module
    inputs: tuple
    rename: Callable[[str], str] = rename

    def abstract(self, key) -> dict:
        """``jax.eval_shape(module.init, key, *inputs)``: the variables, nothing allocated."""
        return jax.eval_shape(self.module.init, key, *self.inputs)

    def with_inits(self, inits: str) -> FlaxModel:
        return FlaxModel(self.module.clone(inits=inits), self.inputs, self.rename)


def gpt2(cfg: GPTConfig = GPT2_SMALL, inits: str = "flax") -> FlaxModel:
    """GPT-2 small in linen; init input: one sequence of 8 tokens."""
    return FlaxModel(GPT(cfg, inits), (jnp.zeros((1, min(8, cfg.positions)), jnp.int32),))


def resnet50(width=64, layers=(3, 4, 6, 3), classes=1000, inits: str = "flax",
             image: int = 32) -> FlaxModel:
    """ResNet-50 in linen (NHWC); init input: one ``image`` x ``image`` RGB image."""
    return FlaxModel(ResNet(tuple(layers), width, classes, inits),
                     (jnp.zeros((1, image, image, 3), jnp.float32),))


MODELS: dict[str, Callable[..., FlaxModel]] = {
    "gpt2": lambda inits="flax": gpt2(GPT2_SMALL, inits),
    "resnet50": lambda inits="flax": resnet50(inits=inits),
    "gpt_tiny": lambda inits="flax": gpt2(GPT_TINY, inits),
    "resnet_tiny": lambda inits="flax": resnet50(8, (1, 1, 1, 1), 10, inits),
}


def parameter_count(variables) -> int:
    """Elements in the ``params`` collection (real or abstract leaves)."""
    return sum(math.prod(x.shape) for x in jax.tree.leaves(variables["params"]))


def state_bytes(variables) -> int:
    """Bytes of every collection (params and batch_stats)."""
    return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize
               for x in jax.tree.leaves(variables))
