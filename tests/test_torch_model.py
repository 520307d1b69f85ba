"""xinit.torch.model: initialize / apply_fn / materialize / no_init against torch's own layer init."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from xinit.core import programs
from xinit.core.debug import compile_count
from xinit.core.recipes import Recipe, Rule, UnmatchedError, gpt2, resnet
from xinit.core.specs import Normal, Zeros
from xinit.torch.model import apply_fn, describe, initialize, materialize, no_init, plan

P_MIN = 1e-4


def flat(module, names, scale=1.0):
    params = dict(module.named_parameters())
    return np.concatenate([params[n].detach().double().numpy().ravel() / scale for n in names])


def garbage_(module):
    with torch.no_grad():
        for p in module.parameters():
            p.fill_(float("nan"))


def ks(a, b):
    assert a.size >= 20_000 and b.size >= 20_000, (a.size, b.size)
    return stats.ks_2samp(a, b).pvalue


# ------------------------------------------------- torch_default vs each torch layer

# (id, factory, [(parameter names, "uniform"|"normal", scale)]): values of the listed
# parameters, divided by scale, share one distribution: U(-1, 1) or N(0, 1).
_u = "uniform"
_n = "normal"


def _lazy_linear():
    m = nn.LazyLinear(20_000)
    m(torch.zeros(1, 8))
    return m


def _lazy_conv():
    m = nn.LazyConv2d(20_000, 3)
    m(torch.zeros(1, 2, 3, 3))
    return m


def _mha_kv_list():
    return nn.ModuleList(
        nn.MultiheadAttention(64, 1, kdim=4, vdim=4, add_bias_kv=True) for _ in range(160)
    )


LAYERS = [
    ("Linear", lambda: nn.Linear(8, 20_000), [(["weight"], _u, 1 / math.sqrt(8)),
                                             (["bias"], _u, 1 / math.sqrt(8))]),
    ("LazyLinear", _lazy_linear, [(["weight", "bias"], _u, 1 / math.sqrt(8))]),
    ("LazyConv2d", _lazy_conv, [(["weight", "bias"], _u, 1 / math.sqrt(18))]),
    ("Bilinear", lambda: nn.Bilinear(3, 2, 20_000), [(["weight", "bias"], _u, 1 / math.sqrt(3))]),
    ("Conv1d", lambda: nn.Conv1d(4, 20_000, 3), [(["weight", "bias"], _u, 1 / math.sqrt(12))]),
    ("Conv2d_groups", lambda: nn.Conv2d(8, 20_000, 3, groups=4),
     [(["weight", "bias"], _u, 1 / math.sqrt(18))]),
    ("Conv3d", lambda: nn.Conv3d(2, 20_000, (1, 1, 2)), [(["weight", "bias"], _u, 1 / math.sqrt(4))]),
    ("ConvTranspose1d", lambda: nn.ConvTranspose1d(5, 20_000, 2),
     [(["weight", "bias"], _u, 1 / math.sqrt(40_000))]),
    ("ConvTranspose2d", lambda: nn.ConvTranspose2d(20_000, 3, 2),
     [(["weight"], _u, 1 / math.sqrt(12))]),
    ("ConvTranspose3d_groups", lambda: nn.ConvTranspose3d(4, 20_000, (1, 1, 2), groups=2),
     [(["weight", "bias"], _u, 1 / math.sqrt(20_000))]),
    ("Embedding", lambda: nn.Embedding(20_000, 2), [(["weight"], _n, 1.0)]),
    ("EmbeddingBag", lambda: nn.EmbeddingBag(10_000, 3), [(["weight"], _n, 1.0)]),
    ("RNN", lambda: nn.RNN(300, 60, num_layers=2, bidirectional=True),
     [(None, _u, 1 / math.sqrt(60))]),
    ("LSTM_proj", lambda: nn.LSTM(100, 40, proj_size=10, num_layers=2),
     [(None, _u, 1 / math.sqrt(40))]),
    ("GRU", lambda: nn.GRU(200, 50), [(None, _u, 1 / math.sqrt(50))]),
    ("RNNCell", lambda: nn.RNNCell(300, 70), [(None, _u, 1 / math.sqrt(70))]),
    ("LSTMCell", lambda: nn.LSTMCell(100, 50), [(None, _u, 1 / math.sqrt(50))]),
    ("GRUCell", lambda: nn.GRUCell(100, 70), [(None, _u, 1 / math.sqrt(70))]),
    ("MultiheadAttention", lambda: nn.MultiheadAttention(160, 4),
     [(["in_proj_weight"], _u, math.sqrt(6 / 640)), (["out_proj.weight"], _u, 1 / math.sqrt(160))]),
]


def _mha_kv_groups(m):
    n = len(m)
    q = [f"{i}.q_proj_weight" for i in range(n)]
    kv = [f"{i}.{w}" for i in range(n) for w in ("k_proj_weight", "v_proj_weight")]
    bias = [f"{i}.{b}" for i in range(n) for b in ("bias_k", "bias_v")]
    return [(q, _u, math.sqrt(6 / 128)), (kv, _u, math.sqrt(6 / 68)), (bias, _n, 1 / math.sqrt(64))]


LAYERS.append(("MultiheadAttention_kdim_bias_kv", _mha_kv_list, _mha_kv_groups))


@pytest.mark.parametrize("name,make,groups", LAYERS, ids=[c[0] for c in LAYERS])
def test_torch_default_matches_layer_init(name, make, groups):
    torch.manual_seed(0)
    ref = make()  # torch's own reset_parameters
    mine = make()
    garbage_(mine)
    initialize(mine, "torch_default", key=11)
    if callable(groups):
        groups = groups(mine)
    for names, dist, scale in groups:
        names = names or [n for n, _ in mine.named_parameters()]
        a, b = flat(mine, names, scale), flat(ref, names, scale)
        if dist == _u:  # exact bound: |x| <= bound, and the bound is reached
            assert np.abs(a).max() <= 1.0 and np.abs(a).max() > 0.99
            assert np.abs(b).max() <= 1.0 + 1e-6
        else:
            assert abs(a.std() - 1) < 0.05
        assert ks(a, b) > P_MIN, (name, names[:2])


def test_torch_default_attention_zeros_and_padding_rows():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 4)
    emb = nn.Embedding(50, 6, padding_idx=-3)
    bag = nn.EmbeddingBag(50, 6, padding_idx=7)
    for m in (mha, emb, bag):
        garbage_(m)
        initialize(m, key=1)
    assert torch.count_nonzero(mha.in_proj_bias) == 0 and torch.count_nonzero(mha.out_proj.bias) == 0
    assert emb.padding_idx == 47 and torch.count_nonzero(emb.weight[47]) == 0
    assert torch.count_nonzero(bag.weight[7]) == 0
    assert torch.count_nonzero(emb.weight[46]) == 6


NORMS = [
    lambda: nn.BatchNorm1d(7),
    lambda: nn.BatchNorm2d(7),
    lambda: nn.BatchNorm3d(7, momentum=None),
    lambda: nn.SyncBatchNorm(7),
    lambda: nn.InstanceNorm1d(7, affine=True, track_running_stats=True),
    lambda: nn.InstanceNorm2d(7, affine=True, track_running_stats=True),
    lambda: nn.InstanceNorm3d(7, affine=True, track_running_stats=True),
    lambda: nn.GroupNorm(7, 14),
    lambda: nn.LayerNorm((3, 7)),
    lambda: nn.RMSNorm(7),
    lambda: nn.PReLU(),
    lambda: nn.PReLU(num_parameters=5, init=0.1),
]


@pytest.mark.parametrize("make", NORMS, ids=lambda f: f().__class__.__name__)
def test_torch_default_constants_and_buffers_exact(make):
    ref = make()
    mine = make()
    with torch.no_grad():
        for t in [*mine.parameters(), *mine.buffers()]:
            t.fill_(3)
    initialize(mine, key=0)
    got = dict(mine.state_dict())
    for name, want in ref.state_dict().items():
        assert got[name].dtype == want.dtype and torch.equal(got[name], want), name


# ------------------------------------------------------------ module semantics


def test_identity_storage_requires_grad_kept_and_float_dtypes():
    m = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2).double(), nn.Linear(3, 2).to(torch.bfloat16))
    m[0].bias.requires_grad_(False)
    before = [(p, p.data_ptr(), p.requires_grad, p.dtype) for p in m.parameters()]
    initialize(m, key=0)
    after = list(m.parameters())
    for (p, ptr, rg, dt), q in zip(before, after, strict=True):
        assert p is q and q.data_ptr() == ptr and q.requires_grad == rg and q.dtype == dt
        assert torch.isfinite(q.float()).all() and q.abs().max() > 0


def test_non_contiguous_parameter_written_through_strides():
    m = nn.Linear(6, 5)
    m.weight = nn.Parameter(torch.empty(6, 5).t())
    assert not m.weight.is_contiguous()
    ref = nn.Linear(6, 5)
    initialize(m, key=4)
    initialize(ref, key=4)
    assert torch.equal(m.weight, ref.weight)


def test_unmatched_parameters_error_lists_all_and_writes_nothing():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)
            self.alpha = nn.Parameter(torch.full((2,), 7.0))
            self.beta = nn.Parameter(torch.full((2,), 7.0))

    m = Custom()
    w = m.fc.weight.detach().clone()
    with pytest.raises(UnmatchedError, match="alpha, beta"):
        initialize(m, key=0)
    assert torch.equal(m.fc.weight, w)
    initialize(m, key=0, unmatched="ignore")
    assert not torch.equal(m.fc.weight, w) and torch.equal(m.alpha, torch.full((2,), 7.0))
    custom = Recipe("custom", (Rule(Normal(0.0, 1.0), name=("alpha", "beta")),))
    initialize(m, custom, key=0, unmatched="ignore")
    assert not torch.equal(m.alpha, torch.full((2,), 7.0))
    with pytest.raises(ValueError, match="unmatched must be one of"):
        initialize(m, key=0, unmatched="skip")
    initialize(m, key=0, unmatched="zeros")
    assert torch.equal(m.alpha, torch.zeros(2)) and torch.equal(m.beta, torch.zeros(2))


def test_lazy_parameters_are_an_error():
    with pytest.raises(ValueError, match="uninitialized lazy parameter"):
        initialize(nn.LazyLinear(3), key=0)


def test_plan_is_a_dry_run():
    m = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    p = plan(m, "transformer")
    assert [e.param.name for e in p.entries][:2] == ["0.weight", "0.bias"]
    assert "xavier_uniform" in str(p) and "1.running_var" in str(p)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())


def test_tied_parameters_initialized_once_and_stay_tied():
    class LM(nn.Module):
        def __init__(self, tie=True):
            super().__init__()
            self.wte = nn.Embedding(100, 16)
            self.h = nn.Linear(16, 16)
            self.lm_head = nn.Linear(16, 100, bias=False)
            if tie:
                self.lm_head.weight = self.wte.weight

    tied, untied = LM(), LM(tie=False)
    initialize(tied, "gpt2", key=5)
    initialize(untied, "gpt2", key=5)
    assert tied.lm_head.weight is tied.wte.weight
    assert torch.equal(tied.wte.weight, untied.wte.weight)  # keyed by the first name
    assert not torch.equal(untied.lm_head.weight, untied.wte.weight)


class Two(nn.Module):
    def __init__(self, extra=False):
        super().__init__()
        if extra:
            self.extra = nn.Linear(7, 9)
            self.extra_norm = nn.LayerNorm(9)
        self.fc1 = nn.Linear(10, 20)
        self.emb = nn.Embedding(30, 20)
        self.fc2 = nn.Linear(20, 5)


@pytest.mark.parametrize("recipe", ["torch_default", "gpt2", "vit"])
def test_order_independence_adding_a_module_changes_nothing_else(recipe):
    a, b = Two(), Two(extra=True)
    initialize(a, recipe, key=9)
    initialize(b, recipe, key=9)
    pb = dict(b.named_parameters())
    for name, p in a.named_parameters():
        assert torch.equal(p, pb[name]), name


def test_determinism_and_seed_from_torch():
    def run(**kw):
        m = Two()
        initialize(m, **kw)
        return torch.cat([p.detach().ravel() for p in m.parameters()])

    assert torch.equal(run(key=1), run(key=1))
    assert not torch.equal(run(key=1), run(key=2))
    torch.manual_seed(3)
    a = run()
    torch.manual_seed(3)
    assert torch.equal(a, run())
    assert not torch.equal(a, run())  # the global RNG advanced


def test_parameter_value_matches_per_tensor_draw():
    """A parameter is the drop-in's draw with the key fold_in(key, crc32(name)), bit for bit."""
    from xinit.core import fold_in_name
    from xinit.torch.init import kaiming_uniform_, normal_

    m = Two()
    initialize(m, key=21)
    w = torch.empty(20, 10)
    kaiming_uniform_(w, a=math.sqrt(5), key=fold_in_name(21, "fc1.weight"))
    assert torch.equal(m.fc1.weight, w)
    e = torch.empty(30, 20)
    normal_(e, key=fold_in_name(21, "emb.weight"))
    assert torch.equal(m.emb.weight, e)


# ------------------------------------------------------------------ apply_fn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.PReLU())
        self.blocks = nn.ModuleList(nn.TransformerEncoderLayer(16, 2, 32) for _ in range(2))
        self.rnn = nn.GRU(16, 8)
        self.emb = nn.Embedding(20, 16, padding_idx=0)
        self.head = nn.Linear(16, 20)
        self.head.weight = self.emb.weight


@pytest.mark.parametrize("recipe", ["torch_default", "transformer"])
def test_apply_fn_equals_initialize(recipe):
    a, b = Net(), Net()
    with torch.no_grad():
        for t in [*b.parameters(), *b.buffers()]:
            t.fill_(5)
    initialize(a, recipe, key=13)
    out = b.apply(apply_fn(recipe, key=13))
    assert out is b and b.head.weight is b.emb.weight
    sa = a.state_dict()
    for k, v in b.state_dict().items():
        assert torch.equal(v, sa[k]), k


def _filled(model, value=5.0):
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            t.fill_(value)
    return model


def _deep_net():
    """Many small modules (convs, norms, linears), some above a small batch size."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), nn.Conv2d(8, 16, 3)),
        nn.Flatten(), nn.Linear(64, 300), nn.LayerNorm(300), nn.Linear(300, 10),
        nn.Embedding(50, 12, padding_idx=3),
    )


@pytest.mark.parametrize("batch", [None, 200])
def test_apply_fn_writes_each_module_at_its_own_call(batch, monkeypatch):
    """Values are drawn ahead for the modules that come next, but each tensor changes
    exactly at its module's call: a tensor read inside the pass holds its new values
    from its module's call on and its old values before (batch 200: some modules are
    drawn alone, straight into their tensors)."""
    from xinit.torch import model as xm

    if batch is not None:
        monkeypatch.setattr(xm._ApplyPass, "BATCH", batch)
    ref = initialize(_filled(_deep_net()), key=7)
    final = {k: v.clone() for k, v in ref.state_dict().items()}
    net = _filled(_deep_net())
    fn = apply_fn(key=7)
    owner = {}
    for prefix, m in net.named_modules():
        for name, _t in [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]:
            owner[f"{prefix}.{name}" if prefix else name] = m
    called: set[int] = set()
    checks = 0

    def spy(m):
        nonlocal checks
        fn(m)
        called.add(id(m))
        for k, v in net.state_dict().items():
            if id(owner[k]) in called and not k.endswith("num_batches_tracked"):
                assert torch.equal(v, final[k]), k  # written at (or before) this call
            elif id(owner[k]) not in called:
                assert torch.all(v == 5), k  # not yet: old values
            checks += 1

    net.apply(spy)
    assert checks > 0
    for k, v in net.state_dict().items():
        assert torch.equal(v, final[k]), k


def test_apply_fn_draws_many_small_modules_in_few_engine_runs(monkeypatch):
    from xinit.core import engine

    runs = []
    real = engine.run
    monkeypatch.setattr(engine, "run", lambda reqs, *a, **k: (runs.append(len(list(reqs))),
                                                               real(reqs, *a, **k))[1])
    net = _deep_net()
    net.apply(apply_fn(key=1))
    ref = initialize(_deep_net(), key=1)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(),
                                                    ref.state_dict().values(), strict=True))
    drawn = [m for m in net.modules() if any(True for _ in m.parameters(recurse=False))]
    assert len(runs) == 2  # the apply pass (one batch) and initialize: not one per module
    assert runs[0] >= len(drawn) - 3  # norms' ones/zeros are written by torch ops


def test_apply_fn_pass_after_one_that_stopped_midway_writes_every_module():
    """A pass interrupted by an exception leaves no state behind: the next pass of the same
    fn on the same model writes every module again (not only those the first did not reach)."""
    fn = apply_fn(key=6)
    net = _deep_net()
    calls = 0

    def stops(m):
        nonlocal calls
        calls += 1
        if calls == 4:
            raise RuntimeError("stop")
        fn(m)

    with pytest.raises(RuntimeError, match="stop"):
        net.apply(stops)
    _filled(net)
    net.apply(fn)
    ref = initialize(_filled(_deep_net()), key=6)
    for (k, v), r in zip(net.state_dict().items(), ref.state_dict().values(), strict=True):
        assert torch.equal(v, r), k


def test_apply_fn_wrapped_to_skip_modules_leaves_them_alone():
    fn = apply_fn(key=4)
    net = _filled(_deep_net())
    net.apply(lambda m: None if isinstance(m, nn.Linear) else fn(m))
    ref = initialize(_filled(_deep_net()), key=4)
    for (k, v), r in zip(net.state_dict().items(), ref.state_dict().values(), strict=True):
        if k.startswith(("5.", "7.")):  # the two Linear layers
            assert torch.all(v == 5), k
        else:
            assert torch.equal(v, r), k


def test_apply_fn_outside_apply_initializes_the_module_and_validates_first():
    a, b = Two(), Two()
    apply_fn(key=3)(a)
    initialize(b, key=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    m = Two()
    m.free = nn.Parameter(torch.zeros(3))
    w = m.fc1.weight.detach().clone()
    with pytest.raises(UnmatchedError, match="free"):
        m.apply(apply_fn(key=3))
    assert torch.equal(m.fc1.weight, w)


def test_apply_fn_without_key_is_fixed_at_creation():
    torch.manual_seed(0)
    fn = apply_fn()
    a, b = Two(), Two()
    a.apply(fn)
    torch.randn(3)
    b.apply(fn)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


# ---------------------------------------------------------------- materialize


class GPTish(nn.Module):
    def __init__(self, n_layer=2, d=16, vocab=50):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(8, d)
        self.h = nn.ModuleList(
            nn.ModuleDict({"ln_1": nn.LayerNorm(d), "c_attn": nn.Linear(d, 3 * d),
                           "c_proj": nn.Linear(d, d), "ln_2": nn.LayerNorm(d),
                           "c_fc": nn.Linear(d, 4 * d), "mlp_c_proj": nn.Linear(4 * d, d)})
            for _ in range(n_layer)
        )
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.wte.weight


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.lstm = nn.LSTM(4, 6, num_layers=2)
        self.attn = nn.MultiheadAttention(8, 2, add_bias_kv=True)
        self.emb = nn.Embedding(10, 8, padding_idx=1)
        self.frozen = nn.Linear(8, 8)
        self.frozen.weight.requires_grad_(False)


@pytest.mark.parametrize("cls,recipe", [(GPTish, "gpt2"), (Mixed, "torch_default")])
def test_materialize_from_meta_equals_initialize(cls, recipe):
    torch.manual_seed(0)
    real = cls()
    initialize(real, recipe, key=8)
    with torch.device("meta"):
        meta = cls()
    out = materialize(meta, "cpu", recipe, key=8)
    assert out is meta
    assert len(list(meta.parameters())) == len(list(real.parameters()))
    for (n, t), (n2, t2) in zip(meta.named_parameters(), real.named_parameters(), strict=True):
        assert n == n2 and t.device.type == "cpu" and t.requires_grad == t2.requires_grad
        assert torch.equal(t, t2), n
    for (n, t), (n2, t2) in zip(meta.named_buffers(), real.named_buffers(), strict=True):
        assert n == n2 and not t.is_meta and torch.equal(t, t2), n
    if cls is GPTish:
        assert meta.lm_head.weight is meta.wte.weight
    if cls is Mixed:
        assert torch.equal(meta.bn.running_var, torch.ones(4))
        assert meta.bn.num_batches_tracked.dtype == torch.int64
        meta.lstm(torch.zeros(2, 1, 4))  # flat weights point at the new parameters
        assert meta.lstm._flat_weights[0] is meta.lstm.weight_ih_l0


def test_materialize_reports_uncovered_buffers_by_name():
    with torch.device("meta"):
        m = nn.Linear(4, 4)
        m.register_buffer("mask", torch.ones(4, 4))
        m.register_buffer("pos", torch.ones(4), persistent=False)
        m.scale = nn.Parameter(torch.ones(2))
    with pytest.raises(UnmatchedError, match="scale, mask, pos"):
        materialize(m, key=0)
    del m.scale
    assert m.weight.is_meta  # nothing allocated
    with pytest.warns(UserWarning, match="mask, pos.*stay on the meta device"):
        materialize(m, key=0, unmatched="ignore")
    assert m.mask.is_meta and m.pos.is_meta and not m.weight.is_meta
    with torch.device("meta"):
        m = nn.Linear(4, 4)
        m.register_buffer("mask", torch.ones(4, 4))
        m.register_buffer("pos", torch.ones(4), persistent=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # asked for: no warning
        materialize(m, key=0, unmatched="zeros")
    assert torch.equal(m.mask, torch.zeros(4, 4)) and "pos" not in m.state_dict()
    assert torch.equal(m.pos, torch.zeros(4)) and not m.weight.is_meta


def test_materialize_compiles_before_it_allocates(monkeypatch):
    """XLA's transient compiler memory comes and goes before the parameters exist, so a
    cold call's peak is not the parameters plus the compiler (benchmarks/sharding_torch.py)."""
    from xinit.core import engine

    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(24, 40), nn.ReLU(), nn.Linear(40, 8))
    seen = []
    executables = engine._executables

    def spying(g):
        seen.append(all(p.is_meta for p in model.parameters()))
        return executables(g)

    monkeypatch.setattr(engine, "_executables", spying)
    materialize(model, "cpu", "torch_default", key=3)
    assert seen and seen[0], "the first program was looked up after the parameters were allocated"
    reference = nn.Sequential(nn.Linear(24, 40), nn.ReLU(), nn.Linear(40, 8))
    initialize(reference, "torch_default", key=3)
    for a, b in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(a, b)


def test_materialize_leaves_real_tensors_alone():
    with torch.device("meta"):
        m = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    m[1] = nn.Linear(3, 3)
    real = m[1].weight.detach().clone()
    materialize(m, key=1)
    assert torch.equal(m[1].weight, real) and not m[0].weight.is_meta


def test_apply_fn_with_a_module_registered_twice():
    shared = nn.Linear(4, 4)
    a = nn.Sequential(shared, nn.ReLU(), shared)
    b = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    b.add_module("2", b[0])
    a.apply(apply_fn(key=2))
    initialize(b, key=2)
    assert a[0] is a[2] and torch.equal(a[0].weight, b[0].weight)


def test_materialize_without_key_uses_torch_seed():
    def run():
        with torch.device("meta"):
            m = nn.Linear(5, 5)
        return materialize(m).weight.detach()

    torch.manual_seed(4)
    a = run()
    torch.manual_seed(4)
    assert torch.equal(a, run())


# -------------------------------------------------------------------- no_init


def test_no_init_skips_torch_init_and_restores():
    torch.manual_seed(0)
    state = torch.get_rng_state()
    with no_init():
        nn.Linear(50, 50)
        nn.MultiheadAttention(16, 2, add_bias_kv=True)
        nn.LSTM(4, 4)
        nn.Conv2d(3, 3, 3)
        emb = nn.Embedding(5, 3, padding_idx=0)
    assert torch.equal(torch.get_rng_state(), state)  # no draws happened
    assert torch.count_nonzero(emb.weight[0]) == 0
    nn.Linear(3, 3)
    assert not torch.equal(torch.get_rng_state(), state)  # restored
    from torch.nn.modules import activation

    assert activation.xavier_uniform_ is torch.nn.init.xavier_uniform_
    with pytest.raises(RuntimeError), no_init():
        raise RuntimeError("boom")
    assert torch.nn.init.kaiming_uniform_.__name__ == "kaiming_uniform_"


# ------------------------------------------------------------- compile count


class Block(nn.Module):
    def __init__(self, d=32):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.out = nn.Linear(4 * d, d)


def _cold_compiles(n_blocks, recipe):
    model = nn.Sequential(nn.Embedding(64, 32), *[Block() for _ in range(n_blocks)])
    programs.clear_caches()
    before = compile_count()
    initialize(model, recipe, key=0)
    return compile_count() - before


@pytest.mark.parametrize("recipe", ["torch_default", "gpt2"])
def test_compile_count_does_not_grow_with_blocks(recipe):
    one = _cold_compiles(1, recipe)
    twelve = _cold_compiles(12, recipe)
    assert twelve <= one <= 5, (one, twelve)


# ------------------------------------------------------- recipes on torch models


def test_resnet_recipe_on_torch():
    m = nn.Sequential(nn.Conv2d(64, 64, 3), nn.BatchNorm2d(64))
    m.add_module("layer1", nn.Sequential(nn.Module()))
    m.layer1[0].bn2 = nn.BatchNorm2d(8)
    initialize(m, resnet(zero_init_residual="layer*.*.bn2.weight"), key=2)
    ref = torch.empty(64, 64, 3, 3)
    torch.manual_seed(0)
    nn.init.kaiming_normal_(ref, mode="fan_out", nonlinearity="relu")
    assert ks(m[0].weight.detach().numpy().ravel(), ref.numpy().ravel()) > P_MIN
    assert torch.count_nonzero(m.layer1[0].bn2.weight) == 0
    assert torch.equal(m[1].weight, torch.ones(64))


@pytest.mark.parametrize("recipe,ref_fn", [
    ("transformer", lambda t: nn.init.xavier_uniform_(t)),
    ("gpt2", lambda t: nn.init.normal_(t, 0, 0.02)),
    ("vit", lambda t: nn.init.trunc_normal_(t, std=0.02)),
])
def test_linear_weight_recipes_on_torch(recipe, ref_fn):
    m = nn.Sequential(nn.Linear(250, 100), nn.LayerNorm(100))
    initialize(m, recipe, key=3)
    torch.manual_seed(0)
    ref = ref_fn(torch.empty(100, 250))
    assert ks(m[0].weight.detach().numpy().ravel(), ref.numpy().ravel()) > P_MIN
    assert torch.count_nonzero(m[0].bias) == 0
    assert torch.equal(m[1].weight, torch.ones(100)) and torch.count_nonzero(m[1].bias) == 0
    if recipe == "transformer":
        assert m[0].weight.abs().max() <= math.sqrt(6 / 350)


def test_gpt2_residual_projection_std():
    m = nn.ModuleDict({"c_proj": nn.Linear(200, 200), "c_fc": nn.Linear(200, 200)})
    initialize(m, gpt2(n_layer=8), key=1)
    torch.manual_seed(0)
    ref = nn.init.normal_(torch.empty(200, 200), 0, 0.02 / math.sqrt(16))
    assert ks(m.c_proj.weight.detach().numpy().ravel(), ref.numpy().ravel()) > P_MIN
    assert abs(m.c_fc.weight.std().item() - 0.02) < 0.001


def test_dcgan_recipe_on_torch():
    m = nn.Sequential(nn.ConvTranspose2d(100, 64, 4), nn.BatchNorm2d(20_000))
    initialize(m, "dcgan", key=1)
    torch.manual_seed(0)
    ref = nn.init.normal_(torch.empty(100 * 64 * 16), 0, 0.02)
    assert ks(m[0].weight.detach().numpy().ravel(), ref.numpy()) > P_MIN
    ref_bn = nn.init.normal_(torch.empty(20_000), 1.0, 0.02)
    assert ks(m[1].weight.detach().numpy(), ref_bn.numpy()) > P_MIN
    assert torch.count_nonzero(m[0].bias) == 0 and torch.count_nonzero(m[1].bias) == 0


def test_initialize_warns_nothing_for_plain_models():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        initialize(Two(), key=0)


def test_torch_default_reproduces_nn_transformer_reset():
    def make():
        return nn.Transformer(64, 2, num_encoder_layers=1, num_decoder_layers=1,
                              dim_feedforward=256, batch_first=True)

    def xavier_normalized(m):
        out = []
        for _, p in m.named_parameters():
            if p.dim() > 1:
                bound = math.sqrt(6 / (p.shape[0] + p.shape[1]))
                out.append(p.detach().numpy().ravel() / bound)
        return np.concatenate(out)

    torch.manual_seed(0)
    ref, mine = make(), make()
    garbage_(mine)
    initialize(mine, key=5)
    a, b = xavier_normalized(mine), xavier_normalized(ref)
    assert np.abs(a).max() <= 1.0 and np.abs(a).max() > 0.99
    assert ks(a, b) > P_MIN
    lin1 = mine.encoder.layers[0].linear1
    assert lin1.bias.abs().max() <= 1 / math.sqrt(64)  # 1-D: Linear default
    assert lin1.bias.abs().max() > 0.9 / math.sqrt(64)
    attn = mine.decoder.layers[0].multihead_attn
    assert torch.count_nonzero(attn.in_proj_bias) == 0
    assert torch.equal(mine.encoder.norm.weight, torch.ones(64))
    # a TransformerEncoderLayer on its own keeps the per-layer defaults
    layer = nn.TransformerEncoderLayer(64, 2, 256)
    initialize(layer, key=5)
    assert layer.linear1.weight.abs().max() <= 1 / math.sqrt(64)
    assert layer.linear1.weight.abs().max() > 0.99 / math.sqrt(64)  # not xavier: sqrt(6/320)


def test_initialize_marks_parameters_modified_for_autograd():
    """The write bumps each tensor's version, so a stale graph cannot silently use new values."""
    lin = nn.Linear(4, 3)
    w_version, b_version = lin.weight._version, lin.bias._version
    loss = (lin.weight**2).sum() + (lin.bias**2).sum()  # saves both for backward
    initialize(lin, key=0)
    assert lin.weight._version > w_version and lin.bias._version > b_version
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


class _Named(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 4)


def _fc_rename(name: str) -> str:
    return name.replace("0.", "fc.", 1)


def test_rename_maps_canonical_names_before_keying_and_matching():
    named = initialize(_Named(), key=5)
    seq = initialize(nn.Sequential(nn.Linear(3, 4)), key=5, rename=_fc_rename)
    assert torch.equal(seq[0].weight, named.fc.weight) and torch.equal(seq[0].bias, named.fc.bias)
    assert [p.name for p in describe(seq, rename=_fc_rename)] == ["fc.weight", "fc.bias"]
    assert plan(seq, rename=_fc_rename).entries[0].param.name == "fc.weight"
    zero_fc = Recipe("zero-fc", (Rule(Zeros(), name="fc.*"),))
    initialize(seq, zero_fc, key=0, rename=_fc_rename)  # rules see the renamed names
    assert not seq[0].weight.any() and not seq[0].bias.any()

    with torch.device("meta"):
        meta = nn.Sequential(nn.Linear(3, 4))
    materialize(meta, key=5, rename=_fc_rename)
    applied = nn.Sequential(nn.Linear(3, 4))
    applied.apply(apply_fn(key=5, rename=_fc_rename))
    for m in (meta, applied):
        assert torch.equal(m[0].weight, named.fc.weight) and torch.equal(m[0].bias, named.fc.bias)


def test_no_init_replaces_only_the_init_functions(monkeypatch):
    """Regression: a lookup that treated every None-valued module global as an init function
    replaced those globals too (transformers then failed on its own cache variables)."""
    import sys
    import types

    weight_init = types.ModuleType("timm.layers.weight_init")
    weight_init.trunc_normal_ = lambda tensor, std=1.0: tensor.fill_(std)
    user = types.ModuleType("timm.models.user")
    user.trunc_normal_ = weight_init.trunc_normal_  # `from timm.layers import trunc_normal_`
    user.normal_ = torch.nn.init.normal_
    user.nothing, user.number = None, 3
    monkeypatch.setitem(sys.modules, "timm.layers.weight_init", weight_init)
    monkeypatch.setitem(sys.modules, "timm.models.user", user)
    t = torch.zeros(3)
    with no_init():
        assert user.nothing is None and user.number == 3
        assert user.trunc_normal_(t, std=2.0) is t and (t == 0).all()
        user.normal_(t)
        weight_init.trunc_normal_(t)
        assert (t == 0).all()
    assert user.trunc_normal_ is weight_init.trunc_normal_ and user.normal_ is torch.nn.init.normal_
    assert (user.trunc_normal_(t, std=2.0) == 2).all()


def test_no_init_leaves_no_stand_in_in_modules_imported_inside_it(tmp_path, monkeypatch):
    """Regression: a module first imported inside no_init (transformers' initialization module,
    which keeps a table of torch's functions) kept the do-nothing stand-ins after the block, so
    transformers' zeros_ stayed a no-op for the rest of the process."""
    import importlib
    import sys

    (tmp_path / "xinit_probe_late.py").write_text(
        "import torch\n"
        "from torch.nn.init import normal_\n"
        "TABLE = {'zeros_': torch.nn.init.zeros_, 'n': 1}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    original = torch.nn.init.normal_
    with no_init():
        late = importlib.import_module("xinit_probe_late")
        assert late.normal_ is not original and late.normal_.__wrapped__ is original  # a stand-in
    assert late.normal_ is original and late.TABLE["zeros_"] is torch.nn.init.zeros_
    assert late.TABLE["n"] == 1
    sys.modules.pop("xinit_probe_late", None)
