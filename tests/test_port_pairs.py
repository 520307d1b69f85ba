"""Every layer pair of xinit.port, both directions, each proven by running both models.

For each pair the same one-layer architecture is built in torch and in Flax
(linen, and nnx where Flax has the layer) inside the test. Then:

1. torch -> Flax: every torch tensor gets random values (a seeded generator),
   ``torch_to_flax`` converts them, and ``compare`` runs both forward passes on
   the same random inputs: the outputs agree within a float32 tolerance.
2. Flax -> torch: the Flax model's own random init is written into a fresh torch
   model with ``flax_to_torch`` and the forward passes agree again.
3. torch -> Flax -> torch is bit-identical (a second fresh torch model gets the
   converted values back), except the stated lossy fold of torch's two RNN
   biases into Flax's one, where the sum is what survives.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
linen = pytest.importorskip("flax.linen")
nnx = pytest.importorskip("flax.nnx")

import jax  # noqa: E402
from torch import nn  # noqa: E402

import xinit.port as xp  # noqa: E402

# ----------------------------------------------------------------- wrappers


class TorchOne(nn.Module):
    """One torch layer named ``layer``, called by ``fn(layer, *inputs)``."""

    def __init__(self, layer: nn.Module, fn=None):
        super().__init__()
        self.layer = layer
        self.fn = fn

    def forward(self, *xs):
        return self.fn(self.layer, *xs) if self.fn is not None else self.layer(*xs)


class LinenOne(linen.Module):
    """One linen layer named ``layer`` (built by ``make(name=...)``), called by ``fn``."""

    make: Any
    fn: Any = None

    @linen.compact
    def __call__(self, *xs):
        layer = self.make(name="layer")
        return self.fn(layer, *xs) if self.fn is not None else layer(*xs)


class NnxOne(nnx.Module):
    def __init__(self, layer, fn=None):
        self.layer = layer
        self.fn = fn

    def __call__(self, *xs):
        return self.fn(self.layer, *xs) if self.fn is not None else self.layer(*xs)


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every tensor of the state dict random (running variances positive)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict(keep_vars=True).items():
            if not t.is_floating_point():
                continue
            t.copy_(torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.dtype))
            if name.endswith("running_var"):
                t.abs_().add_(0.5)
    return model


def lstm_carry_fn(cell, x):
    carry = cell.initialize_carry(jax.random.key(0), x.shape)
    _, y = cell(carry, x)
    return y


@dataclass(frozen=True)
class Case:
    """A one-layer architecture in torch, linen and (optionally) nnx, and its inputs."""

    id: str
    torch: Any  # () -> nn.Module layer
    linen: Any  # make(name=...) -> linen layer
    inputs: tuple  # input shapes in Flax layout (int inputs: ("int", shape, high))
    nnx: Any = None  # (rngs) -> nnx layer
    input_map: str | None = None
    torch_fn: Any = None
    flax_fn: Any = None
    lossy: tuple = ()  # torch names whose bias fold is lossy: compare b_ih + b_hh


def seq_out(layer, x):
    return layer(x)[0]


def mha_self(layer, x):
    return layer(x, x, x, need_weights=False)[0]


def mha_qkv(layer, q, k, v):
    return layer(q, k, v, need_weights=False)[0]


CASES = [
    Case("linear", lambda: nn.Linear(6, 5), partial(linen.Dense, 5), ((3, 6),),
         nnx=lambda r: nnx.Linear(6, 5, rngs=r)),
    Case("linear_no_bias", lambda: nn.Linear(6, 5, bias=False),
         partial(linen.Dense, 5, use_bias=False), ((3, 6),),
         nnx=lambda r: nnx.Linear(6, 5, use_bias=False, rngs=r)),
    Case("dense_general", lambda: nn.Linear(6, 8), partial(linen.DenseGeneral, features=(2, 4)),
         ((3, 6),), nnx=lambda r: nnx.LinearGeneral(6, (2, 4), rngs=r),
         torch_fn=lambda layer, x: layer(x).reshape(*x.shape[:-1], 2, 4)),
    Case("conv1d", lambda: nn.Conv1d(4, 6, 3, padding=1),
         partial(linen.Conv, 6, (3,), padding=1), ((2, 9, 4),),
         nnx=lambda r: nnx.Conv(4, 6, (3,), padding=1, rngs=r), input_map="NWC->NCW"),
    Case("conv2d_groups_stride", lambda: nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2),
         partial(linen.Conv, 8, (3, 3), strides=2, padding=1, feature_group_count=2),
         ((2, 9, 9, 4),), input_map="NHWC->NCHW",
         nnx=lambda r: nnx.Conv(4, 8, (3, 3), strides=2, padding=1, feature_group_count=2, rngs=r)),
    Case("conv2d_depthwise", lambda: nn.Conv2d(4, 8, 3, padding=1, groups=4),
         partial(linen.Conv, 8, (3, 3), padding=1, feature_group_count=4), ((2, 7, 7, 4),),
         input_map="NHWC->NCHW"),
    Case("conv3d", lambda: nn.Conv3d(2, 3, (2, 3, 3), padding=(0, 1, 1)),
         partial(linen.Conv, 3, (2, 3, 3), padding=((0, 0), (1, 1), (1, 1))), ((1, 4, 5, 5, 2),),
         input_map="NDHWC->NCDHW"),
    Case("conv_transpose1d", lambda: nn.ConvTranspose1d(4, 3, 3, stride=2, padding=1, output_padding=1),
         partial(linen.ConvTranspose, 3, (3,), strides=(2,), padding=((1, 2),)), ((2, 6, 4),),
         input_map="NWC->NCW",
         nnx=lambda r: nnx.ConvTranspose(4, 3, (3,), strides=(2,), padding=((1, 2),), rngs=r)),
    Case("conv_transpose2d", lambda: nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1),
         partial(linen.ConvTranspose, 3, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1))),
         ((2, 5, 6, 4),), input_map="NHWC->NCHW"),
    Case("conv_transpose2d_transpose_kernel", lambda: nn.ConvTranspose2d(4, 3, 4, stride=2, padding=1),
         partial(linen.ConvTranspose, 3, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)),
                 transpose_kernel=True),
         ((2, 5, 6, 4),), input_map="NHWC->NCHW",
         nnx=lambda r: nnx.ConvTranspose(4, 3, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)),
                                         transpose_kernel=True, rngs=r)),
    Case("conv_transpose3d", lambda: nn.ConvTranspose3d(2, 3, 2, stride=2),
         partial(linen.ConvTranspose, 3, (2, 2, 2), strides=(2, 2, 2), padding="VALID"),
         ((1, 3, 3, 3, 2),), input_map="NDHWC->NCDHW"),
    Case("embedding", lambda: nn.Embedding(11, 6), partial(linen.Embed, 11, 6),
         (("int", (2, 5), 11),), nnx=lambda r: nnx.Embed(11, 6, rngs=r)),
    Case("layer_norm", lambda: nn.LayerNorm(6), partial(linen.LayerNorm, epsilon=1e-5), ((3, 6),),
         nnx=lambda r: nnx.LayerNorm(6, epsilon=1e-5, rngs=r)),
    Case("rms_norm", lambda: nn.RMSNorm(6, eps=1e-6), partial(linen.RMSNorm, epsilon=1e-6), ((3, 6),),
         nnx=lambda r: nnx.RMSNorm(6, epsilon=1e-6, rngs=r)),
    Case("group_norm", lambda: nn.GroupNorm(2, 6), partial(linen.GroupNorm, num_groups=2, epsilon=1e-5),
         ((2, 5, 5, 6),), input_map="NHWC->NCHW",
         nnx=lambda r: nnx.GroupNorm(6, num_groups=2, epsilon=1e-5, rngs=r)),
    Case("batch_norm1d", lambda: nn.BatchNorm1d(6),
         partial(linen.BatchNorm, use_running_average=True, epsilon=1e-5), ((4, 6),),
         nnx=lambda r: nnx.BatchNorm(6, use_running_average=True, epsilon=1e-5, rngs=r)),
    Case("batch_norm2d", lambda: nn.BatchNorm2d(6),
         partial(linen.BatchNorm, use_running_average=True, epsilon=1e-5), ((2, 4, 4, 6),),
         input_map="NHWC->NCHW"),
    Case("batch_norm3d", lambda: nn.BatchNorm3d(3),
         partial(linen.BatchNorm, use_running_average=True, epsilon=1e-5), ((2, 2, 3, 3, 3),),
         input_map="NDHWC->NCDHW"),
    Case("multihead_attention", lambda: nn.MultiheadAttention(8, 2, batch_first=True),
         partial(linen.MultiHeadDotProductAttention, num_heads=2), ((2, 5, 8),),
         nnx=lambda r: nnx.MultiHeadAttention(2, 8, decode=False, rngs=r), torch_fn=mha_self),
    Case("multihead_attention_kdim_vdim",
         lambda: nn.MultiheadAttention(8, 2, kdim=6, vdim=4, batch_first=True),
         partial(linen.MultiHeadDotProductAttention, num_heads=2), ((2, 5, 8), (2, 3, 6), (2, 3, 4)),
         torch_fn=mha_qkv),
    Case("lstm", lambda: nn.LSTM(6, 5, batch_first=True),
         lambda name: linen.RNN(linen.LSTMCell(5), name=name), ((2, 4, 6),),
         nnx=lambda r: nnx.RNN(nnx.LSTMCell(6, 5, rngs=r)), torch_fn=seq_out,
         lossy=("layer.bias_ih_l0",)),
    Case("lstm_optimized_cell", lambda: nn.LSTM(6, 5, batch_first=True),
         lambda name: linen.RNN(linen.OptimizedLSTMCell(5), name=name), ((2, 4, 6),),
         nnx=lambda r: nnx.RNN(nnx.OptimizedLSTMCell(6, 5, rngs=r)), torch_fn=seq_out,
         lossy=("layer.bias_ih_l0",)),
    Case("lstm_bidirectional", lambda: nn.LSTM(6, 5, batch_first=True, bidirectional=True),
         lambda name: linen.Bidirectional(linen.RNN(linen.LSTMCell(5)), linen.RNN(linen.LSTMCell(5)),
                                          name=name),
         ((2, 4, 6),), torch_fn=seq_out, lossy=("layer.bias_ih_l0", "layer.bias_ih_l0_reverse"),
         nnx=lambda r: nnx.Bidirectional(nnx.RNN(nnx.LSTMCell(6, 5, rngs=r)),
                                         nnx.RNN(nnx.LSTMCell(6, 5, rngs=r)))),
    Case("lstm_cell", lambda: nn.LSTMCell(6, 5), partial(linen.LSTMCell, 5), ((3, 6),),
         torch_fn=lambda layer, x: layer(x)[0], flax_fn=lstm_carry_fn, lossy=("layer.bias_ih",)),
    Case("gru", lambda: nn.GRU(6, 5, batch_first=True),
         lambda name: linen.RNN(linen.GRUCell(5), name=name), ((2, 4, 6),), torch_fn=seq_out,
         lossy=("layer.bias_ih_l0",)),
    Case("prelu", lambda: nn.PReLU(), linen.PReLU, ((3, 6),),
         nnx=lambda r: nnx.PReLU()),
]


def _inputs(case: Case, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for spec in case.inputs:
        if spec[0] == "int":
            out.append(rng.integers(0, spec[2], spec[1]).astype(np.int32))
        else:
            out.append(rng.standard_normal(spec).astype(np.float32))
    return out


def _torch_model(case: Case, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return randomize(TorchOne(case.torch(), case.torch_fn), seed)


def _flax_model(case: Case, framework: str):
    if framework == "linen":
        return LinenOne(case.linen, case.flax_fn)
    return NnxOne(case.nnx(nnx.Rngs(3)), case.flax_fn)


def _state(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()
            if not k.endswith("num_batches_tracked")}


def _assert_round_trip(case: Case, before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    for name in before:
        if name in case.lossy:
            hh = name.replace("bias_ih", "bias_hh")
            np.testing.assert_allclose(before[name] + before[hh], after[name] + after[hh],
                                       rtol=1e-6, atol=1e-6, err_msg=name)
        elif name.replace("bias_hh", "bias_ih") in case.lossy:
            # Flax's one bias per gate went to bias_ih; a GRU's n gate keeps its own
            kept = 2 * len(after[name]) // 3 if "gru" in case.id else len(after[name])
            assert np.all(after[name][:kept] == 0), name
            assert np.array_equal(after[name][kept:], before[name][kept:]), name
        else:
            assert np.array_equal(before[name], after[name]), name


def _pairs(framework: str):
    return [pytest.param(c, id=c.id) for c in CASES if framework == "linen" or c.nnx is not None]


@pytest.mark.parametrize("case", _pairs("linen"))
def test_linen_pair_both_directions(case):
    _check_pair(case, "linen")


@pytest.mark.parametrize("case", _pairs("nnx"))
def test_nnx_pair_both_directions(case):
    _check_pair(case, "nnx")


def _check_pair(case: Case, framework: str):
    xs = _inputs(case)
    tm = _torch_model(case, 0)
    fm = _flax_model(case, framework)
    if framework == "linen":
        variables = xp.torch_to_flax(tm, fm, *xs)
    else:
        assert xp.torch_to_flax(tm, fm) is fm
        variables = None
    result = xp.compare(tm, fm, variables, *xs, input_map=case.input_map)
    assert result.ok, str(result)
    assert result.outputs[0].max_abs > 0 or result.outputs[0].max_rel == 0  # a real comparison ran

    # back: into a fresh torch model (different values), bit for bit
    back = _torch_model(case, 7)
    params_before = {n: p for n, p in back.named_parameters()}
    out = xp.flax_to_torch(fm, variables, back, *xs)
    assert out is back
    assert all(p is params_before[n] for n, p in back.named_parameters())  # no new Parameters
    _assert_round_trip(case, _state(tm), _state(back))

    # Flax's own values -> torch: the forward passes agree too
    fresh = _flax_model(case, framework)
    own = fresh.init(jax.random.key(5), *xs) if framework == "linen" else None
    if framework == "linen" and "batch_stats" in own:  # give the statistics non-trivial values
        own = jax.tree.map(lambda a: a + 0.25, own)
    target = _torch_model(case, 9)
    xp.flax_to_torch(fresh, own, target, *xs)
    result = xp.compare(target, fresh, own, *xs, input_map=case.input_map)
    assert result.ok, str(result)
