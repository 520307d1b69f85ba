"""The documentation cannot rot: its code runs, and its facts about PyTorch, JAX and Flax are tested.

1. Every fenced ```python block of ``docs/*.md`` (the performance page excepted,
   which the benchmark suite writes) and of ``README.md`` runs, page by page, in
   one namespace per page, in order. A block right after ``<!-- skip: why -->``
   is not run; a block right after ``<!-- requires: a.b.c, d.e -->`` runs only
   once those names can be imported (features still being built).
2. Each fact the page "What PyTorch really does by default" and the
   conventions and randomness pages state is checked by a test below, run against
   torch / jax / flax themselves; the pages cite these tests by name, and a test
   checks that every cited test exists.
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
scipy_stats = pytest.importorskip("scipy.stats")

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.glob("**/*.md") if p.name != "performance.md") + [ROOT / "README.md"]

FENCE = re.compile(r"^(?P<indent> *)```(?P<info>[^\n`]*)$")
MARKER = re.compile(r"^\s*<!--\s*(?P<kind>skip|requires)\s*:?\s*(?P<arg>.*?)\s*-->\s*$")


def code_blocks(path: Path) -> list[dict]:
    """The ```python blocks of a markdown file: source, first line, and marker."""
    blocks, lines = [], path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m or not m["info"].strip():
            i += 1
            continue
        info, indent, start = m["info"].strip(), len(m["indent"]), i
        body = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][indent:])
            i += 1
        i += 1
        if info.split()[0] not in ("python", "py"):
            continue
        prev = next((ln for ln in reversed(lines[:start]) if ln.strip()), "")
        marker = MARKER.match(prev)
        blocks.append({
            "source": "\n".join(body) + "\n",
            "line": start + 1,
            "kind": marker["kind"] if marker else None,
            "arg": marker["arg"] if marker else "",
        })
    return blocks


def resolvable(dotted: str) -> bool:
    """Whether ``a.b.c`` can be imported (as a module, or an attribute of one)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_code_examples_run(page):
    blocks = code_blocks(page)
    if not blocks:
        pytest.skip("no python examples")
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    ran, skipped = 0, []
    for block in blocks:
        if block["kind"] == "skip":
            skipped.append(f"line {block['line']}: {block['arg']}")
            continue
        if block["kind"] == "requires":
            missing = [n.strip() for n in block["arg"].split(",") if not resolvable(n.strip())]
            if missing:
                skipped.append(f"line {block['line']}: needs {', '.join(missing)}")
                continue
        # dont_inherit: the page runs as a user's script would, without this file's
        # `from __future__ import annotations` (string annotations break dataclass
        # fields of classes defined in a namespace that is not a module, e.g. linen's)
        code = compile(block["source"], f"{page.relative_to(ROOT)}:{block['line']}", "exec",
                       dont_inherit=True)
        exec(code, namespace)  # noqa: S102 - running our own documentation
        ran += 1
    if not ran:
        pytest.skip("every example is waiting for a feature: " + "; ".join(skipped))


def test_marker_parsing(tmp_path):
    page = tmp_path / "p.md"
    page.write_text(
        "text\n\n<!-- skip: not yet -->\n```python\nraise SystemExit\n```\n\n"
        "<!-- requires: xinit.no_such_thing -->\n```python\nraise SystemExit\n```\n\n"
        "```bash\nmake test\n```\n\n"
        "- item\n\n    ```python\n    x = 1\n    ```\n"
    )
    blocks = code_blocks(page)
    assert [(b["kind"], b["arg"]) for b in blocks] == [
        ("skip", "not yet"), ("requires", "xinit.no_such_thing"), (None, "")
    ]
    assert blocks[2]["source"] == "x = 1\n"
    assert resolvable("xinit.core.sample") and not resolvable("xinit.no_such_thing")
    assert not resolvable("xinit.core.no_such_function")


CITED = re.compile(r"tests/(test_\w+)\.py::(test_\w+)")


def test_cited_tests_exist():
    """Every ``tests/test_x.py::test_y`` the docs cite is a test that exists."""
    cited = {m.groups() for p in PAGES for m in CITED.finditer(p.read_text(encoding="utf-8"))}
    assert cited, "the docs cite no tests"
    for module, name in sorted(cited):
        source = (ROOT / "tests" / f"{module}.py").read_text(encoding="utf-8")
        assert re.search(rf"^def {name}\(", source, re.M), f"docs cite missing test {module}::{name}"


def _load_ext(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_docs_ext_{name}", DOCS / "_ext" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_performance_page_joins_the_nav_once_it_exists(tmp_path):
    hooks = _load_ext("hooks")
    nav = [{"Home": "index.md"}, {"API reference": ["api/core.md"]}]
    text = "See [the performance page](performance.md#targets) and [recipes](recipes.md)."
    assert hooks.nav_with_performance(nav, tmp_path) == nav
    assert hooks.unlink_missing_performance(text, tmp_path) == (
        "See the performance page and [recipes](recipes.md)."
    )
    (tmp_path / "performance.md").write_text("# Performance\n")
    assert hooks.nav_with_performance(nav, tmp_path) == [
        {"Home": "index.md"}, {"Performance": "performance.md"}, {"API reference": ["api/core.md"]}
    ]
    assert hooks.unlink_missing_performance(text, tmp_path) == text
    assert "docs/_ext/hooks.py" in (ROOT / "mkdocs.yml").read_text()


def test_api_pages_render_bare_doctests_as_code():
    fence = _load_ext("doctest_blocks").fence_doctests
    doc = 'Summary.\n\nArgs:\n    x: y.\n\n>>> f(1)["a"]["b"]\n2\n\nMore text.\n'
    assert fence(doc) == (
        'Summary.\n\nArgs:\n    x: y.\n\n```pycon\n>>> f(1)["a"]["b"]\n2\n```\n\nMore text.\n'
    )
    already = "```python\n>>> x\n```\n"
    assert fence(already) == already
    math = _load_ext("doctest_blocks").math_roles
    assert math(r"Draw :math:`\mathcal{U}(a, b)` here.") == r"Draw \(\mathcal{U}(a, b)\) here."


def _public_callables(module) -> list[str]:
    return [n for n in module.__all__ if callable(getattr(module, n)) and not n.isupper()]


@pytest.mark.parametrize("module_name", ["xinit.core", "xinit.torch", "xinit.flax", "xinit.port"])
def test_every_public_callable_has_a_docstring_and_an_api_entry(module_name):
    module = pytest.importorskip(module_name)
    page = (DOCS / "api" / f"{module_name.split('.')[1]}.md").read_text(encoding="utf-8")
    covered = set()
    for target, options in re.findall(r"^::: ([\w.]+)\n((?:    .*\n)*)", page, re.M):
        if "members: false" in options:
            continue
        try:  # a module page documents its __all__
            covered |= set(importlib.import_module(target).__all__)
        except ModuleNotFoundError:  # an object page documents that object
            covered.add(target.rsplit(".", 1)[1])
    for name in _public_callables(module):
        home = getattr(getattr(module, name), "__module__", "") or ""
        if module_name != "xinit.core" and home.startswith("xinit.core"):
            continue  # a re-export of a core object, documented on the core page
        if not home.startswith("xinit"):
            continue  # a re-export of another library's object (jax's Initializer protocol)
        assert inspect.getdoc(getattr(module, name)), f"{module_name}.{name} has no docstring"
        assert name in covered, f"{module_name}.{name} is missing from docs/api/*.md"


@pytest.mark.slow
def test_site_builds_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "torch-defaults" / "index.html").is_file()


# ------------------------------------------------------- what PyTorch really does

nn = torch.nn


def amax(t) -> float:
    return float(t.detach().abs().max())


def _uniform_ks(x: torch.Tensor, bound: float) -> float:
    values = x.detach().double().flatten().numpy()
    return scipy_stats.kstest(values, scipy_stats.uniform(-bound, 2 * bound).cdf).pvalue


def test_linear_weight_is_uniform_inv_sqrt_fan_in_not_xavier():
    torch.manual_seed(0)
    layer = nn.Linear(1000, 100)
    bound = 1 / math.sqrt(1000)
    w = layer.weight
    assert amax(w) <= bound
    assert amax(w) > 0.99 * bound
    assert _uniform_ks(w, bound) > 1e-4
    xavier_bound = math.sqrt(6 / (1000 + 100))
    assert xavier_bound > 2 * bound  # so the max above rules Xavier out


def test_linear_bias_is_uniform_inv_sqrt_fan_in_not_zero():
    torch.manual_seed(0)
    layer = nn.Linear(64, 40_000)
    bound = 1 / 8
    b = layer.bias
    assert amax(b) <= bound and (b != 0).all()
    assert _uniform_ks(b, bound) > 1e-4


def test_conv_weight_and_bias_bound_uses_in_over_groups_times_kernel():
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 256, 3, groups=4)  # weight (256, 4, 3, 3): fan_in 36
    bound = 1 / math.sqrt(36)
    for p in (conv.weight, conv.bias):
        assert amax(p) <= bound
    assert amax(conv.weight) > 0.99 * bound
    assert _uniform_ks(conv.weight, bound) > 1e-4


def test_conv_transpose_fans_are_reversed():
    torch.manual_seed(0)
    layer = nn.ConvTranspose2d(16, 32, 3)  # weight (in=16, out=32, 3, 3)
    assert tuple(layer.weight.shape) == (16, 32, 3, 3)
    bound = 1 / math.sqrt(32 * 9)  # torch's "fan_in" is out * k * k = 288, not 16 * 9
    assert amax(layer.weight) <= bound
    assert amax(layer.weight) > 0.99 * bound
    assert amax(layer.bias) <= bound


def test_layers_do_not_know_their_activation():
    torch.manual_seed(0)
    relu_net = nn.Sequential(nn.Linear(50, 50), nn.ReLU())
    torch.manual_seed(0)
    tanh_net = nn.Sequential(nn.Linear(50, 50), nn.Tanh())
    assert torch.equal(relu_net[0].weight, tanh_net[0].weight)


@pytest.mark.parametrize(
    "layer", [nn.Linear, nn.Conv2d, nn.ConvTranspose2d, nn.Embedding, nn.LSTM,
              nn.MultiheadAttention, nn.Bilinear],
)
def test_layers_take_no_initializer_argument(layer):
    params = inspect.signature(layer).parameters
    assert not [p for p in params if "init" in p.lower()]


def test_trunc_normal_bounds_are_absolute():
    g = torch.Generator().manual_seed(0)
    w = nn.init.trunc_normal_(torch.empty(100_000), std=0.02, generator=g)  # a=-2, b=2
    assert amax(w) > 3 * 0.02  # not cut at 2 std: the bounds are +-2.0
    w = nn.init.trunc_normal_(torch.empty(100_000), std=0.02, a=-0.04, b=0.04, generator=g)
    assert amax(w) <= 0.04


def test_embedding_is_standard_normal_with_zero_padding_row():
    torch.manual_seed(0)
    emb = nn.Embedding(1000, 64, padding_idx=3)
    w = emb.weight.detach()
    assert (w[3] == 0).all()
    rest = torch.cat([w[:3], w[4:]]).flatten().double().numpy()
    assert abs(rest.std() - 1.0) < 0.02
    assert scipy_stats.kstest(rest, "norm").pvalue > 1e-4


def test_recurrent_parameters_are_all_uniform_inv_sqrt_hidden():
    torch.manual_seed(0)
    lstm = nn.LSTM(10, 20, num_layers=2, proj_size=5)
    bound = 1 / math.sqrt(20)
    for name, p in lstm.named_parameters():
        assert amax(p) <= bound, name
    assert amax(lstm.bias_ih_l0) > 0.5 * bound  # no forget-gate offset, no zeros


def test_multihead_attention_packed_xavier_zero_biases_linear_out_proj():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(64, 4)
    packed = math.sqrt(6 / (64 + 3 * 64))  # one xavier over the (3E, E) matrix
    assert amax(mha.in_proj_weight) <= packed
    assert amax(mha.in_proj_weight) > 0.95 * packed
    assert (mha.in_proj_bias == 0).all() and (mha.out_proj.bias == 0).all()
    assert amax(mha.out_proj.weight) <= 1 / 8  # Linear default, not Xavier


def test_transformer_encoder_layers_start_identical():
    layer = nn.TransformerEncoderLayer(32, 4, dim_feedforward=64)
    enc = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
    assert torch.equal(enc.layers[0].linear1.weight, enc.layers[1].linear1.weight)


def test_transformer_re_xaviers_every_matrix_but_keeps_vector_defaults():
    torch.manual_seed(0)
    model = nn.Transformer(d_model=32, nhead=4, num_encoder_layers=1, num_decoder_layers=1,
                           dim_feedforward=64, batch_first=True)  # (no nested-tensor warning)
    lin = model.encoder.layers[0].linear1  # weight (64, 32)
    assert amax(lin.weight) <= math.sqrt(6 / (32 + 64))
    assert amax(lin.weight) > 1 / math.sqrt(32)  # beyond the Linear default: re-initialized
    assert 0 < amax(lin.bias) <= 1 / math.sqrt(32)  # 1-D: the Linear default stays


def test_norm_layers_are_ones_and_zeros_with_running_stats():
    bn = nn.BatchNorm2d(8)
    assert (bn.weight == 1).all() and (bn.bias == 0).all()
    assert (bn.running_mean == 0).all() and (bn.running_var == 1).all()
    assert int(bn.num_batches_tracked) == 0
    ln = nn.LayerNorm(8)
    assert (ln.weight == 1).all() and (ln.bias == 0).all()


def test_bilinear_bound_uses_in1_only():
    torch.manual_seed(0)
    layer = nn.Bilinear(4, 100, 2000)  # weight (2000, 4, 100): bound 1/sqrt(4), not 1/sqrt(400)
    for p in (layer.weight, layer.bias):
        assert amax(p) <= 1 / 2
    assert amax(layer.weight) > 0.99 / 2


def test_prelu_default_is_a_quarter():
    assert (nn.PReLU(num_parameters=3).weight == 0.25).all()


def test_kaiming_defaults_are_leaky_relu_slope_zero_which_is_relu():
    sig = inspect.signature(nn.init.kaiming_uniform_).parameters
    assert sig["a"].default == 0 and sig["nonlinearity"].default == "leaky_relu"
    assert nn.init.calculate_gain("leaky_relu", 0) == nn.init.calculate_gain("relu")
    assert nn.init.calculate_gain("leaky_relu") == pytest.approx(math.sqrt(2 / (1 + 0.01**2)))


def test_torch_global_rng_makes_init_depend_on_construction_order():
    torch.manual_seed(0)
    first = nn.Linear(8, 8)
    torch.manual_seed(0)
    nn.Linear(3, 3)
    second = nn.Linear(8, 8)
    assert not torch.equal(first.weight, second.weight)


# ------------------------------------------------------------- conventions (JAX / Flax)


def test_torch_normal_initializers_are_untruncated_jax_ones_truncated():
    g = torch.Generator().manual_seed(0)
    w = nn.init.xavier_normal_(torch.empty(400, 400), generator=g)
    sigma = math.sqrt(2 / 800)
    assert amax(w) > 3.5 * sigma
    k = jax.nn.initializers.glorot_normal()(jax.random.key(0), (400, 400))
    assert float(abs(k).max()) <= 2 * sigma / 0.87962566103423978 * (1 + 1e-6)
    assert float(k.std()) == pytest.approx(sigma, rel=0.02)  # variance corrected


def test_jax_truncated_normal_bounds_are_in_std_units_without_correction():
    k = jax.nn.initializers.truncated_normal(0.02)(jax.random.key(0), (200_000,))
    assert float(abs(k).max()) <= 0.04 * (1 + 1e-6)
    assert float(k.std()) == pytest.approx(0.02 * 0.8796, rel=0.02)


def test_jax_validates_mode_lazily_xinit_at_construction():
    lazy = jax.nn.initializers.variance_scaling(1.0, "fan_avgg", "normal")  # builds
    with pytest.raises(ValueError):
        lazy(jax.random.key(0), (4, 4))
    xf = pytest.importorskip("xinit.flax")
    with pytest.raises(ValueError, match="fan_avgg"):
        xf.variance_scaling(1.0, "fan_avgg", "normal")


def test_flax_and_torch_fans_for_the_same_layer():
    from xinit.core import FLAX, compute_fans

    assert compute_fans((30, 400)) == compute_fans((400, 30), FLAX) == (400, 30)
    assert compute_fans((32, 16, 3, 3)) == compute_fans((3, 3, 16, 32), FLAX) == (144, 288)
    fans = jax._src.nn.initializers._compute_fans
    assert fans((3, 3, 16, 32)) == (144, 288)
    w = torch.empty(32, 16, 3, 3)
    assert nn.init._calculate_fan_in_and_fan_out(w) == (144, 288)


def test_flax_dense_default_is_truncated_lecun_normal_and_embed_is_one_over_features():
    flax_nn = pytest.importorskip("flax.linen")
    params = flax_nn.Dense(300).init(jax.random.key(0), np.zeros((1, 400)))["params"]
    kernel = params["kernel"]
    assert kernel.shape == (400, 300) and (params["bias"] == 0).all()
    assert float(abs(kernel).max()) <= 2 / math.sqrt(400) / 0.87962566103423978 * (1 + 1e-6)
    assert float(kernel.std()) == pytest.approx(1 / math.sqrt(400), rel=0.02)
    table = flax_nn.Embed(1000, 64).init(jax.random.key(0), np.zeros((1,), np.int32))
    assert float(table["params"]["embedding"].std()) == pytest.approx(1 / 8, rel=0.02)


# ------------------------------------------------------------- randomness


def test_same_key_same_bits_in_torch_and_flax_layouts():
    xt = pytest.importorskip("xinit.torch")
    xf = pytest.importorskip("xinit.flax")
    key = jax.random.key(42)
    w = xt.kaiming_normal_(torch.empty(32, 16, 3, 3), nonlinearity="relu", key=key)
    k = xf.torch_init.kaiming_normal(nonlinearity="relu")(key, (3, 3, 16, 32))
    assert np.array_equal(np.asarray(k), w.permute(2, 3, 1, 0).numpy())
    d = xt.xavier_uniform_(torch.empty(30, 400), key=key)
    assert np.array_equal(np.asarray(xf.torch_init.xavier_uniform()(key, (400, 30))), d.T.numpy())


def test_torch_manual_seed_makes_xinit_torch_reproducible():
    xt = pytest.importorskip("xinit.torch")
    torch.manual_seed(7)
    a = xt.normal_(torch.empty(64, 64))
    torch.manual_seed(7)
    b = xt.normal_(torch.empty(64, 64))
    torch.manual_seed(8)
    c = xt.normal_(torch.empty(64, 64))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_xinit_equals_torch_only_in_distribution():
    xt = pytest.importorskip("xinit.torch")
    torch.manual_seed(0)
    a = nn.init.normal_(torch.empty(40_000))
    torch.manual_seed(0)
    b = xt.normal_(torch.empty(40_000))
    assert not torch.equal(a, b)
    assert scipy_stats.ks_2samp(a.numpy(), b.numpy()).pvalue > 1e-4


def test_dtype_changes_the_values_but_not_the_key_stream_per_dtype():
    xc = pytest.importorskip("xinit.core")
    key = jax.random.key(0)
    f32 = np.asarray(xc.normal(key, (1000,), dtype=np.float32))
    f64 = np.asarray(xc.normal(key, (1000,), dtype=np.float64))
    assert f64.dtype == np.float64
    assert not np.allclose(f32, f64, atol=1e-3)
    assert np.array_equal(f32, np.asarray(xc.normal(key, (1000,), dtype=np.float32)))


def test_flat_draw_is_shape_prefix_stable():
    xc = pytest.importorskip("xinit.core")
    key = jax.random.key(0)
    long = np.asarray(xc.uniform(key, (10,)))
    assert np.array_equal(np.asarray(xc.uniform(key, (6,))), long[:6])
    assert np.array_equal(np.asarray(xc.uniform(key, (2, 3))).ravel(), long[:6])
    assert np.array_equal(long, np.asarray(jax.random.uniform(key, (10,))))


@pytest.mark.parametrize("name", ["normal", "kaiming_uniform", "trunc_normal", "lecun_normal"])
def test_initializer_traced_in_jit_matches_eager_within_ulps(name):
    xf = pytest.importorskip("xinit.flax")
    args = {"normal": {"std": 0.02}, "trunc_normal": {"std": 0.02, "a": -0.04, "b": 0.04}}
    module = xf if name == "lecun_normal" else xf.torch_init
    init = getattr(module, name)(**args.get(name, {}))
    key, shape = jax.random.key(0), (3, 3, 64, 64)
    eager = np.asarray(init(key, shape))
    traced = np.asarray(jax.jit(lambda k: init(k, shape) + 0.0)(key))
    assert np.all(np.abs(eager - traced) <= 4 * np.spacing(np.abs(eager)))
