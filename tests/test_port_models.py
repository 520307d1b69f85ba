"""xinit.port on whole models: a ResNet with BatchNorm, a GPT-2-style transformer with a
tied head and a custom ``(in, out)`` layer, names, dtypes, meta models, bad input,
hyper-parameter warnings, and ``compare`` locating a wrong layer.

Every architecture is built in torch and in Flax here, in the test.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
linen = pytest.importorskip("flax.linen")
nnx = pytest.importorskip("flax.nnx")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import xinit  # noqa: E402
import xinit.port as xp  # noqa: E402
import xinit.torch as xt  # noqa: E402
from test_port_pairs import randomize  # noqa: E402
from xinit.core import layers as registry  # noqa: E402

# ------------------------------------------------------------------ ResNet


class TorchBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class TorchResNet(nn.Module):
    def __init__(self, width=8, classes=5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = nn.Sequential(TorchBlock(width, width, 1), TorchBlock(width, width, 1))
        self.layer2 = nn.Sequential(TorchBlock(width, 2 * width, 2))
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(x.mean(dim=(2, 3)))


class LinenBlock(linen.Module):
    cin: int
    cout: int
    stride: int
    eps: float = 1e-5

    def setup(self):
        s = (self.stride, self.stride)
        self.conv1 = linen.Conv(self.cout, (3, 3), s, padding=1, use_bias=False)
        self.bn1 = linen.BatchNorm(use_running_average=True, epsilon=self.eps)
        self.conv2 = linen.Conv(self.cout, (3, 3), padding=1, use_bias=False)
        self.bn2 = linen.BatchNorm(use_running_average=True, epsilon=self.eps)
        if self.stride != 1 or self.cin != self.cout:  # downsample/layers_0 is torch's downsample.0
            self.downsample = linen.Sequential([
                linen.Conv(self.cout, (1, 1), s, use_bias=False),
                linen.BatchNorm(use_running_average=True, epsilon=self.eps)])

    def __call__(self, x):
        y = linen.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return linen.relu(y + (self.downsample(x) if hasattr(self, "downsample") else x))


class LinenResNet(linen.Module):
    width: int = 8
    classes: int = 5
    eps: float = 1e-5

    @linen.compact
    def __call__(self, x):
        w = self.width
        x = linen.Conv(w, (3, 3), padding=1, use_bias=False, name="conv1")(x)
        x = linen.relu(linen.BatchNorm(use_running_average=True, epsilon=self.eps, name="bn1")(x))
        x = LinenBlock(w, w, 1, self.eps, name="layer1_0")(x)  # torch's layer1.0: matched by name
        x = LinenBlock(w, w, 1, self.eps, name="layer1_1")(x)
        x = LinenBlock(w, 2 * w, 2, self.eps, name="layer2_0")(x)
        return linen.Dense(self.classes, name="fc")(x.mean(axis=(1, 2)))


class NnxBlock(nnx.Module):
    def __init__(self, cin, cout, stride, rngs):
        s = (stride, stride)
        self.conv1 = nnx.Conv(cin, cout, (3, 3), s, padding=1, use_bias=False, rngs=rngs)
        self.bn1 = nnx.BatchNorm(cout, use_running_average=True, epsilon=1e-5, rngs=rngs)
        self.conv2 = nnx.Conv(cout, cout, (3, 3), padding=1, use_bias=False, rngs=rngs)
        self.bn2 = nnx.BatchNorm(cout, use_running_average=True, epsilon=1e-5, rngs=rngs)
        if stride != 1 or cin != cout:
            self.downsample = nnx.Sequential(
                nnx.Conv(cin, cout, (1, 1), s, use_bias=False, rngs=rngs),
                nnx.BatchNorm(cout, use_running_average=True, epsilon=1e-5, rngs=rngs))

    def __call__(self, x):
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return nnx.relu(y + (self.downsample(x) if hasattr(self, "downsample") else x))


class NnxResNet(nnx.Module):
    def __init__(self, width=8, classes=5, rngs=None):
        rngs = rngs or nnx.Rngs(0)
        self.conv1 = nnx.Conv(3, width, (3, 3), padding=1, use_bias=False, rngs=rngs)
        self.bn1 = nnx.BatchNorm(width, use_running_average=True, epsilon=1e-5, rngs=rngs)
        self.layer1 = nnx.Sequential(NnxBlock(width, width, 1, rngs), NnxBlock(width, width, 1, rngs))
        self.layer2 = nnx.List([NnxBlock(width, 2 * width, 2, rngs)])
        self.fc = nnx.Linear(2 * width, classes, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        for block in self.layer2:
            x = block(x)
        return self.fc(x.mean(axis=(1, 2)))


IMAGES = np.random.default_rng(0).standard_normal((2, 12, 12, 3)).astype(np.float32)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("framework", [
    "linen",
    pytest.param("nnx", marks=pytest.mark.slow),  # eager nnx, ~20 s; docs/porting.md runs it too
])
def test_resnet_with_batchnorm_to_flax_and_back(framework):
    torch.manual_seed(0)
    tm = randomize(TorchResNet())
    fm = LinenResNet() if framework == "linen" else NnxResNet()
    out = xp.torch_to_flax(tm, fm, IMAGES)
    variables = out if framework == "linen" else None
    if framework == "linen":
        assert set(out) == {"params", "batch_stats"}
        np.testing.assert_array_equal(np.asarray(out["batch_stats"]["layer2_0"]["downsample"]
                                                 ["layers_1"]["var"]),
                                      tm.layer2[0].downsample[1].running_var.numpy())
    result = xp.compare(tm, fm, variables, IMAGES, input_map="NHWC->NCHW")
    assert result.ok, str(result)

    back = randomize(TorchResNet(), seed=3)
    tracked = back.bn1.num_batches_tracked.clone()
    xp.flax_to_torch(fm, variables, back, IMAGES)
    for name, value in _state(tm).items():
        if name.endswith("num_batches_tracked"):
            continue
        assert torch.equal(value, back.state_dict()[name]), name
    assert torch.equal(back.bn1.num_batches_tracked, tracked)  # torch-only, left alone


def test_plan_is_a_dry_run_table():
    tm = TorchResNet()
    before = _state(tm)
    p = xp.plan(tm, LinenResNet(), IMAGES)
    text = str(p)
    assert "layer1.0.conv1.weight" in text and "params/layer1_0/conv1/kernel" in text
    assert "permute(2, 3, 1, 0)" in text
    row = next(r for r in p.rows if r.destination == "batch_stats/bn1/mean")
    assert (row.source, row.kind, row.operation) == ("bn1.running_mean", "norm", "copy")
    assert p.report.ok and not p.warnings
    assert all(torch.equal(v, tm.state_dict()[k]) for k, v in before.items())
    back = xp.plan(tm, LinenResNet(), IMAGES, to="torch")
    assert back.direction == "flax_to_torch"
    assert any(r.destination == "fc.weight" and r.operation == "transpose" for r in back.rows)


def test_compare_names_the_first_diverging_layer():
    torch.manual_seed(0)
    tm = randomize(TorchResNet())
    fm = LinenResNet()
    variables = xp.torch_to_flax(tm, fm, IMAGES)
    params = jax.tree.map(lambda a: a, variables["params"])  # a copy of the tree
    conv = params["layer1_1"]["conv2"]["kernel"]
    params["layer1_1"]["conv2"]["kernel"] = conv.at[0, 0, 0, 0].add(0.5)
    bad = {"params": params, "batch_stats": variables["batch_stats"]}
    result = xp.compare(tm, fm, bad, IMAGES, input_map="NHWC->NCHW")
    assert not result.ok
    assert result.first_divergence is not None
    assert result.first_divergence.name.startswith("layer1.1.conv2 / layer1_1/conv2")
    assert "first diverging layer: layer1.1.conv2" in str(result)


# ----------------------------------------------------------- GPT-2 style


class Conv1D(nn.Module):
    """Hugging Face's Conv1D: a linear layer whose weight is stored (in, out)."""

    def __init__(self, nf, nx):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.02)
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).reshape(
            *x.shape[:-1], -1)


class TorchGPTBlock(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(d)
        self.c_attn = Conv1D(3 * d, d)
        self.c_proj = Conv1D(d, d)
        self.ln_2 = nn.LayerNorm(d)
        self.c_fc = Conv1D(4 * d, d)
        self.c_out = Conv1D(d, 4 * d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        x = x + self.c_proj(y)
        return x + self.c_out(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class TorchGPT(nn.Module):
    def __init__(self, vocab=50, d=16, heads=2, layers=2, positions=12):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(positions, d)
        self.h = nn.ModuleList(TorchGPTBlock(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


class LinenGPTBlock(linen.Module):
    heads: int
    eps: float = 1e-5

    @linen.compact
    def __call__(self, x):
        b, t, d = x.shape
        qkv = linen.Dense(3 * d, name="c_attn")(linen.LayerNorm(self.eps, name="ln_1")(x))
        q, k, v = (z.reshape(b, t, self.heads, d // self.heads) for z in jnp.split(qkv, 3, -1))
        mask = linen.make_causal_mask(jnp.ones((b, t)))
        y = linen.dot_product_attention(q, k, v, mask=mask).reshape(b, t, d)
        x = x + linen.Dense(d, name="c_proj")(y)
        h = linen.gelu(linen.Dense(4 * d, name="c_fc")(linen.LayerNorm(self.eps, name="ln_2")(x)))
        return x + linen.Dense(d, name="c_out")(h)


class LinenGPT(linen.Module):
    vocab: int = 50
    d: int = 16
    heads: int = 2
    layers: int = 2
    positions: int = 12
    eps: float = 1e-5

    @linen.compact
    def __call__(self, idx):
        wte = linen.Embed(self.vocab, self.d, name="wte")
        x = wte(idx) + linen.Embed(self.positions, self.d, name="wpe")(jnp.arange(idx.shape[1]))
        for i in range(self.layers):
            x = LinenGPTBlock(self.heads, self.eps, name=f"h_{i}")(x)
        return wte.attend(linen.LayerNorm(self.eps, name="ln_f")(x))  # the tied head


TOKENS = np.random.default_rng(1).integers(0, 50, (2, 7)).astype(np.int32)


def test_gpt_with_tied_head_and_declared_conv1d(restore_registry):
    torch.manual_seed(0)
    tm = randomize(TorchGPT())
    with pytest.raises(xp.PortError, match=r"Conv1D is not a known layer.*register_layer\("
                                           r"'[\w.]*Conv1D', kind='linear', "
                                           r"layout=xinit\.Layout\(in_axis=0, out_axis=1\)\)"):
        xp.torch_to_flax(tm, LinenGPT(), TOKENS)
    xinit.register_layer(Conv1D, kind="linear", layout=xinit.Layout(in_axis=0, out_axis=1))
    p = xp.plan(tm, LinenGPT(), TOKENS)
    row = next(r for r in p.rows if r.source == "h.0.c_attn.weight")
    assert row.operation == "copy"  # (in, out) is Dense's kernel layout already
    variables = xp.torch_to_flax(tm, LinenGPT(), TOKENS)
    assert "lm_head" not in variables["params"]  # the tied head has no Flax variable
    np.testing.assert_array_equal(np.asarray(variables["params"]["h_1"]["c_fc"]["kernel"]),
                                  tm.h[1].c_fc.weight.detach().numpy())
    result = xp.compare(tm, LinenGPT(), variables, TOKENS)
    assert result.ok, str(result)

    back = randomize(TorchGPT(), seed=5)
    xp.flax_to_torch(LinenGPT(), variables, back, TOKENS)
    assert back.lm_head.weight is back.wte.weight  # still tied
    for name, value in tm.state_dict().items():
        assert torch.equal(value, back.state_dict()[name]), name


def test_registered_layout_gives_canonical_fans_to_recipes(restore_registry):
    """A declared (in, out) layer is initialized as the Linear it is: same canonical values."""
    xinit.register_layer("Conv1D", kind="linear", layout=xinit.Layout(in_axis=0, out_axis=1))

    class WithConv1D(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = Conv1D(30, 400)

    class WithLinear(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(400, 30)

    a = xt.initialize(WithConv1D(), "torch_default", key=0)
    b = xt.initialize(WithLinear(), "torch_default", key=0)
    assert torch.equal(a.proj.weight, b.proj.weight.T)
    assert torch.equal(a.proj.bias, b.proj.bias)
    assert float(a.proj.weight.detach().abs().max()) <= 1 / 400 ** 0.5  # fan_in = in = 400, not 30
    (p,) = [q for q in xt.describe(WithConv1D()) if q.role == "weight"]
    assert (p.kind, p.shape) == ("linear", (30, 400))


def test_wrong_declared_layout_names_the_fix(restore_registry):
    xinit.register_layer(Conv1D, kind="linear", layout=xinit.TORCH)  # wrong: Conv1D stores (in, out)
    tm = TorchGPT()
    with pytest.raises(xp.PortError) as err:
        xp.torch_to_flax(tm, LinenGPT(), TOKENS)
    text = str(err.value)
    assert "h.0.c_attn.weight" in text and "(16, 48)" in text and "(48, 16)" in text
    assert "layout=xinit.Layout(in_axis=0, out_axis=1)" in text


def test_unknown_flax_layer_says_what_to_declare(restore_registry):
    class MyDense(linen.Module):  # stores (out, in), unregistered
        features: int

        @linen.compact
        def __call__(self, x):
            w = self.param("kernel", linen.initializers.lecun_normal(), (self.features, x.shape[-1]))
            return x @ w.T

    class Net(linen.Module):
        @linen.compact
        def __call__(self, x):
            return MyDense(3, name="fc")(x)

    class TorchNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3, bias=False)

        def forward(self, x):
            return self.fc(x)

    x = np.ones((2, 4), np.float32)
    with pytest.raises(xp.PortError, match=r"MyDense is not a known layer.*register_layer\(.*"
                                           r"MyDense', kind='linear'"):
        xp.torch_to_flax(TorchNet(), Net(), x)
    xinit.register_layer(MyDense, kind="linear", layout=xinit.TORCH)
    torch.manual_seed(0)
    tm = TorchNet()
    variables = xp.torch_to_flax(tm, Net(), x)
    np.testing.assert_array_equal(np.asarray(variables["params"]["fc"]["kernel"]),
                                  tm.fc.weight.detach().numpy())  # (out, in) as it is
    assert xp.compare(tm, Net(), variables, x).ok


# ---------------------------------------------------------------- names


class TorchMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        self.blocks = nn.ModuleList([nn.Linear(3, 3), nn.Linear(3, 3)])

    def forward(self, x):
        x = self.body(x)
        for b in self.blocks:
            x = b(x)
        return x


class LinenMLPSetup(linen.Module):  # linen Sequential in setup: layers_0, layers_2; a list: blocks_0
    def setup(self):
        self.body = linen.Sequential([linen.Dense(8), linen.relu, linen.Dense(3)])
        self.blocks = [linen.Dense(3), linen.Dense(3)]

    def __call__(self, x):
        x = self.body(x)
        for b in self.blocks:
            x = b(x)
        return x


class LinenMLPAuto(linen.Module):  # automatic names in compact: Dense_0, Dense_1 under "body"
    @linen.compact
    def __call__(self, x):
        x = Body(name="body")(x)
        for i in range(2):
            x = linen.Dense(3, name=f"blocks_{i}")(x)
        return x


class Body(linen.Module):
    @linen.compact
    def __call__(self, x):
        h = linen.relu(linen.Dense(8)(x))  # Dense_0 (automatic names follow construction order)
        return linen.Dense(3)(h)  # Dense_1


class NnxMLP(nnx.Module):  # nnx Sequential: layers.0, layers.2; nnx.List: blocks.0
    def __init__(self, rngs=None):
        rngs = rngs or nnx.Rngs(0)
        self.body = nnx.Sequential(nnx.Linear(4, 8, rngs=rngs), nnx.relu, nnx.Linear(8, 3, rngs=rngs))
        self.blocks = nnx.List([nnx.Linear(3, 3, rngs=rngs), nnx.Linear(3, 3, rngs=rngs)])

    def __call__(self, x):
        x = self.body(x)
        for b in self.blocks:
            x = b(x)
        return x


X4 = np.random.default_rng(2).standard_normal((5, 4)).astype(np.float32)


@pytest.mark.parametrize("flax_model", [LinenMLPSetup, LinenMLPAuto, NnxMLP],
                         ids=["linen-sequential-and-list", "linen-automatic-names", "nnx"])
def test_automatic_names_map_onto_torch(flax_model):
    torch.manual_seed(0)
    tm = randomize(TorchMLP())
    fm = flax_model()
    out = xp.torch_to_flax(tm, fm, X4)
    variables = out if isinstance(fm, linen.Module) else None
    assert xp.compare(tm, fm, variables, X4).ok
    rows = {r.source: r.destination for r in xp.plan(tm, flax_model(), X4).rows}
    expected = {
        LinenMLPSetup: "params/body/layers_2/kernel",
        LinenMLPAuto: "params/body/Dense_1/kernel",
        NnxMLP: "body/layers/2/kernel",  # nnx.to_pure_dict's keys: no collection
    }[flax_model]
    assert rows["body.2.weight"] == expected


def test_rename_callable_and_regex_list():
    class Named(linen.Module):
        @linen.compact
        def __call__(self, x):
            x = linen.Dense(8, name="first")(x)
            x = linen.Dense(3, name="second")(linen.relu(x))
            for i in range(2):
                x = linen.Dense(3, name=f"extra{i}")(x)
            return x

    tm = randomize(TorchMLP())
    with pytest.raises(xp.PortError) as err:
        xp.torch_to_flax(tm, Named(), X4)
    text = str(err.value)
    assert "8 missing" in text and "first.weight" in text and "rename=" in text
    pairs = [(r"^first\.", "body.0."), (r"^second\.", "body.2."), (r"^extra(\d)\.", r"blocks.\1.")]
    v1 = xp.torch_to_flax(tm, Named(), X4, rename=pairs)
    table = {"first": "body.0", "second": "body.2", "extra0": "blocks.0", "extra1": "blocks.1"}
    v2 = xp.torch_to_flax(tm, Named(), X4,
                          rename=lambda n: table[n.split(".")[0]] + "." + n.split(".", 1)[1])
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), v1, v2))
    assert xp.compare(tm, Named(), v1, X4, rename=pairs).ok
    with pytest.raises(TypeError, match="pair of strings"):
        xp.torch_to_flax(tm, Named(), X4, rename=["^first"])


# ------------------------------------------------------------ bad input


class TorchTwo(nn.Module):
    def __init__(self, hidden=8):
        super().__init__()
        self.fc1 = nn.Linear(4, hidden)
        self.fc2 = nn.Linear(hidden, 3)
        self.extra = nn.Linear(3, 3)

    def forward(self, x):
        return self.extra(self.fc2(self.fc1(x)))


class LinenTwo(linen.Module):
    hidden: int = 6

    @linen.compact
    def __call__(self, x):
        x = linen.Dense(self.hidden, name="fc1")(x)
        x = linen.Dense(3, name="fc2")(x)
        return linen.Dense(3, name="other")(x)


def test_every_bad_key_in_one_error_and_nothing_written():
    tm = TorchTwo()
    before = _state(tm)
    with pytest.raises(xp.PortError) as err:
        xp.torch_to_flax(tm, LinenTwo(), X4)
    report = err.value.report
    assert {p.name for p in report.missing} == {"other.weight", "other.bias"}
    assert {p.name for p in report.unexpected} == {"extra.weight", "extra.bias"}
    assert {p.name for p in report.mismatched} == {"fc1.weight", "fc1.bias", "fc2.weight"}
    text = str(err.value)
    assert "(8, 4)" in text and "(6, 4)" in text  # fc1.weight: both shapes
    assert "2 missing, 2 unexpected, 3 mismatched" in text

    flax_vars = LinenTwo().init(jax.random.key(0), X4)
    with pytest.raises(xp.PortError):
        xp.flax_to_torch(LinenTwo(), flax_vars, tm, X4)
    for name, value in before.items():  # nothing written
        assert torch.equal(value, tm.state_dict()[name]), name


def test_strict_false_converts_what_matches_and_returns_the_report():
    tm = randomize(TorchTwo())
    variables, report = xp.torch_to_flax(tm, LinenTwo(), X4, strict=False)
    assert not report.ok and "params/fc2/bias" in report.converted
    np.testing.assert_array_equal(np.asarray(variables["params"]["fc2"]["bias"]), tm.fc2.bias.detach().numpy())
    assert isinstance(variables["params"]["fc1"]["kernel"], jax.ShapeDtypeStruct)  # no source
    assert isinstance(variables["params"]["other"]["kernel"], jax.ShapeDtypeStruct)

    back = TorchTwo()
    flax_vars = LinenTwo().init(jax.random.key(0), X4)
    fc1 = back.fc1.weight.detach().clone()
    out, report = xp.flax_to_torch(LinenTwo(), flax_vars, back, X4, strict=False)
    assert out is back and report.converted == ("fc2.bias",)
    np.testing.assert_array_equal(back.fc2.bias.detach().numpy(),
                                  np.asarray(flax_vars["params"]["fc2"]["bias"]))
    assert torch.equal(back.fc1.weight, fc1)  # mismatched: left alone


def test_converted_arrays_are_copies_not_views_of_torch_memory():
    torch.manual_seed(0)
    tm = randomize(TorchMLP())
    variables = xp.torch_to_flax(tm, LinenMLPSetup(), X4)
    before = jax.tree.map(lambda a: np.array(a), variables)
    with torch.no_grad():
        for p in tm.parameters():
            p.add_(1.0)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), before, variables))


def test_nnx_gru_refuses_a_hidden_n_bias_it_cannot_hold():
    class Torch(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = nn.GRU(4, 3, batch_first=True)

        def forward(self, x):
            return self.gru(x)[0]

    class Flax(nnx.Module):
        def __init__(self):
            self.gru = nnx.RNN(nnx.GRUCell(4, 3, rngs=nnx.Rngs(0)))

        def __call__(self, x):
            return self.gru(x)

    x = np.random.default_rng(0).standard_normal((2, 5, 4)).astype(np.float32)
    tm = Torch()
    fm = Flax()
    kernel = np.asarray(fm.gru.cell.dense_i.kernel[...]).copy()
    with pytest.raises(xp.PortError, match=r"gru\.bias_hh_l0.*rows 6:9 is not zero"):
        xp.torch_to_flax(tm, fm, x)
    assert np.array_equal(np.asarray(fm.gru.cell.dense_i.kernel[...]), kernel)  # untouched
    with torch.no_grad():
        tm.gru.bias_hh_l0[6:].zero_()
    xp.torch_to_flax(tm, fm, x)
    assert xp.compare(tm, fm, None, x).ok


def test_type_errors():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        xp.torch_to_flax(object(), LinenTwo(), X4)
    with pytest.raises(TypeError, match="linen Module"):
        xp.torch_to_flax(TorchTwo(), object(), X4)
    with pytest.raises(TypeError, match="mapping or a checkpoint path"):
        xp.flax_to_torch(NnxMLP(), 42, TorchMLP())
    with pytest.raises(TypeError, match="variables=None"):
        xp.compare(TorchMLP(), NnxMLP(), {"body": {}}, X4)
    with pytest.raises(ValueError, match="to must be"):
        xp.plan(TorchTwo(), LinenTwo(), X4, to="jax")


# ---------------------------------------------------------- hyper-parameters


def test_hyper_parameter_differences_are_warned_by_plan_and_compare():
    torch.manual_seed(0)
    tm = randomize(TorchGPT())
    xinit.register_layer(Conv1D, kind="linear", layout=xinit.Layout(in_axis=0, out_axis=1))
    try:
        fm = LinenGPT(eps=1e-6)  # linen's default epsilon, torch's is 1e-5
        p = xp.plan(tm, fm, TOKENS)
        eps = [w for w in p.warnings if "epsilon" in w]
        assert len(eps) == 5 and "h.0.ln_1: epsilon differs: torch LayerNorm eps=1e-05 vs Flax " \
                                  "LayerNorm epsilon=1e-06" in eps[0]
        assert "warning: h.0.ln_1" in str(p)
        variables = xp.torch_to_flax(tm, fm, TOKENS)
        c = xp.compare(tm, fm, variables, TOKENS)
        assert any("epsilon" in w for w in c.warnings)
        assert not xp.plan(tm, LinenGPT(), TOKENS).warnings
    finally:
        registry.unregister_layer(Conv1D)


def test_padding_difference_is_warned():
    class T(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

    class Valid(linen.Module):
        @linen.compact
        def __call__(self, x):
            return linen.Conv(4, (3, 3), padding="VALID", name="conv")(x)

    class Same(linen.Module):
        @linen.compact
        def __call__(self, x):
            return linen.Conv(4, (3, 3), padding="SAME", name="conv")(x)

    (w,) = xp.plan(T(), Valid(), IMAGES).warnings
    assert "conv: padding differs" in w and "padding=[(1, 1), (1, 1)]" in w
    assert not xp.plan(T(), Same(), IMAGES).warnings


# ------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_dtypes_are_kept_and_round_trips_are_exact(dtype):
    torch.manual_seed(0)
    tm = randomize(TorchResNet()).to(dtype)
    fm = LinenResNet()
    variables = xp.torch_to_flax(tm, fm, IMAGES)
    np_dtype = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32",
                torch.float64: "float64"}[dtype]
    assert {a.dtype.name for a in jax.tree.leaves(variables)} == {np_dtype}
    back = randomize(TorchResNet(), seed=4).to(dtype)
    xp.flax_to_torch(fm, variables, back, IMAGES)
    for name, value in tm.state_dict().items():
        assert torch.equal(value, back.state_dict()[name]), name
    if dtype != torch.float32:
        cast = xp.torch_to_flax(tm, fm, IMAGES, cast=True)  # the Flax model's own dtype
        assert {a.dtype.name for a in jax.tree.leaves(cast)} == {"float32"}
        with pytest.raises(xp.PortError, match="dtypes differ; pass cast=True"):
            xp.flax_to_torch(fm, cast, back, IMAGES)
        xp.flax_to_torch(fm, cast, back, IMAGES, cast=True)


# --------------------------------------------------------- meta + state_dict


def test_meta_model_with_state_dict_mapping_or_file(tmp_path):
    torch.manual_seed(0)
    real = randomize(TorchResNet())
    expected = xp.torch_to_flax(real, LinenResNet(), IMAGES)
    with torch.device("meta"):
        meta = TorchResNet()
    with pytest.raises(ValueError, match="meta device: pass state_dict="):
        xp.torch_to_flax(meta, LinenResNet(), IMAGES)
    path = tmp_path / "resnet.pt"
    torch.save(real.state_dict(), path)
    for sd in (real.state_dict(), path, str(path)):
        got = xp.torch_to_flax(meta, LinenResNet(), IMAGES, state_dict=sd)
        assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), got, expected))
    partial = dict(real.state_dict())
    del partial["fc.bias"]
    partial["head.weight"] = torch.zeros(2)
    with pytest.raises(xp.PortError) as err:
        xp.torch_to_flax(meta, LinenResNet(), IMAGES, state_dict=partial)
    text = str(err.value)
    assert "fc.bias" in text and "not in the state dict" in text
    assert "head.weight" in text and "in the state dict, not in the torch model" in text
