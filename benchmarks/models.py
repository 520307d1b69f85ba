"""Benchmark models in plain ``torch.nn`` (no torchvision, no transformers).

* :func:`gpt2` - GPT-2 small (124M parameters, ``lm_head`` tied to ``wte``).
* :func:`resnet50` - ResNet-50 (25.6M parameters), torchvision's parameter names.
* :func:`transformer_1b` - the GPT-2 architecture at ~1.01B parameters, built on
  ``meta`` by default (no memory allocated).

Every constructor takes a ``scale``-like argument so tests can build tiny versions
that run the same code paths. :func:`torch_default_by_hand` applies torch's own
per-layer defaults with a given ``init`` module (``torch.nn.init`` or
``xinit.torch``): the "same recipe by hand" peer of the benchmarks.
:func:`init_weights` is the pattern every tutorial teaches for
``model.apply(init_weights)``, and :func:`init_weights_recipe` the same as an
xinit recipe (for ``model.apply(xinit.torch.model.apply_fn(recipe))``).
"""

from __future__ import annotations

import math

import torch
from bench_configs import GPT2_SMALL, GPT_TINY, TRANSFORMER_1B, GPTConfig
from torch import nn
from torch.nn import functional as F


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.heads = cfg.heads
        self.c_attn = nn.Linear(cfg.width, 3 * cfg.width)
        self.c_proj = nn.Linear(cfg.width, cfg.width)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(b, t, c))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.width, 4 * cfg.width)
        self.c_proj = nn.Linear(4 * cfg.width, cfg.width)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.width)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.width)
        self.mlp = MLP(cfg)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """GPT-2: token and position embeddings, pre-norm blocks, tied output head."""

    def __init__(self, cfg: GPTConfig = GPT2_SMALL):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab, cfg.width)
        self.wpe = nn.Embedding(cfg.positions, cfg.width)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.width)
        self.lm_head = nn.Linear(cfg.width, cfg.vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as GPT-2

    def forward(self, idx):
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def gpt2(cfg: GPTConfig = GPT2_SMALL, device=None) -> GPT:
    """GPT-2 small (124,439,808 parameters) on ``device`` (torch's default when None)."""
    with torch.device(device) if device is not None else _nullcontext():
        return GPT(cfg)


def transformer_1b(cfg: GPTConfig = TRANSFORMER_1B, device="meta") -> GPT:
    """The GPT-2 architecture at width 2048, 18 layers: 1,013,573,632 parameters."""
    return gpt2(cfg, device)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet with bottleneck blocks; ``width`` 64 and ``(3, 4, 6, 3)`` is ResNet-50."""

    def __init__(self, layers=(3, 4, 6, 3), width=64, classes=1000):
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._stage(width, layers[0], 1)
        self.layer2 = self._stage(width * 2, layers[1], 2)
        self.layer3 = self._stage(width * 4, layers[2], 2)
        self.layer4 = self._stage(width * 8, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width * 8 * Bottleneck.expansion, classes)

    def _stage(self, planes, blocks, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * 4),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * 4
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet50(width=64, layers=(3, 4, 6, 3), classes=1000, device=None) -> ResNet:
    """ResNet-50 (25,557,032 parameters) on ``device``; smaller ``width`` for tests."""
    with torch.device(device) if device is not None else _nullcontext():
        return ResNet(layers, width, classes)


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


MODELS = {
    "gpt2": lambda device=None: gpt2(GPT2_SMALL, device),
    "resnet50": lambda device=None: resnet50(device=device),
    "transformer_1b": lambda device="meta": transformer_1b(TRANSFORMER_1B, device),
    "gpt_tiny": lambda device=None: gpt2(GPT_TINY, device),
    "resnet_tiny": lambda device=None: resnet50(8, (1, 1, 1, 1), 10, device),
}


def parameter_count(model: nn.Module) -> int:
    """Distinct parameters (a tied weight counts once)."""
    return sum(p.numel() for p in model.parameters())


def state_bytes(model: nn.Module) -> int:
    """Bytes of the distinct parameters and buffers."""
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def reset_parameters(model: nn.Module) -> None:
    """torch's own per-layer init: ``reset_parameters()`` of every module that has one."""
    for m in model.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()


def torch_default_by_hand(model: nn.Module, init=torch.nn.init) -> None:
    """What every layer's ``reset_parameters`` does, spelled out with ``init.<fn>_``.

    ``init`` is ``torch.nn.init`` or ``xinit.torch`` (one call per tensor, no
    model-level batching). Linear/Conv: ``kaiming_uniform_(w, a=sqrt(5))`` and a
    bias ``U(+-1/sqrt(fan_in))``; Embedding: ``normal_``; norms: ones/zeros and
    their running statistics reset. A tied tensor is initialized once.
    """
    seen: set[int] = set()

    def once(t):
        if t is None or id(t) in seen:
            return False
        seen.add(id(t))
        return True

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                if once(m.weight):
                    init.kaiming_uniform_(m.weight, a=math.sqrt(5))
                if once(m.bias):
                    fan_in = m.weight[0].numel()
                    bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                    init.uniform_(m.bias, -bound, bound)
            elif isinstance(m, nn.Embedding):
                if once(m.weight):
                    init.normal_(m.weight)
            elif isinstance(m, (nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
                if m.weight is not None and once(m.weight):
                    init.ones_(m.weight)
                if m.bias is not None and once(m.bias):
                    init.zeros_(m.bias)
                if getattr(m, "running_mean", None) is not None:
                    m.reset_running_stats()


def init_weights(init=torch.nn.init):
    """The seeds' ``model.apply(init_weights)`` function, written with ``init``
    (``torch.nn.init`` or ``xinit.torch``): ``kaiming_normal_(mode="fan_out",
    nonlinearity="relu")`` for Conv2d weights, ``xavier_uniform_`` for Linear
    weights, zeros for their biases, ones/zeros for BatchNorm and LayerNorm weight
    and bias. Other modules (embeddings) keep their values."""

    def fn(m: nn.Module) -> None:
        if isinstance(m, nn.Conv2d):
            init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            init.xavier_uniform_(m.weight)
            if m.bias is not None:
                init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
            init.ones_(m.weight)
            init.zeros_(m.bias)

    return fn


def init_weights_recipe():
    """:func:`init_weights` as an xinit recipe (parameters it does not cover are unmatched:
    pass ``unmatched="ignore"``)."""
    from xinit.core import KaimingNormal, Ones, XavierUniform, Zeros
    from xinit.core.recipes import Recipe, Rule

    return Recipe("init_weights", (
        Rule(KaimingNormal(mode="fan_out", nonlinearity="relu"), kind="conv", role="weight"),
        Rule(XavierUniform(), kind="linear", role="weight"),
        Rule(Zeros(), kind=("conv", "linear"), role="bias"),
        Rule(Ones(), kind="norm", role="weight"),
        Rule(Zeros(), kind="norm", role="bias"),
    ))
