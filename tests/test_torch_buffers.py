"""Buffers in xinit.torch: rules write them only when they say so, computed buffers survive
materialize (meta_params, the model's own hooks), and what cannot be recomputed is named."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import xinit.torch as xt
from xinit.core.errors import DtypeError
from xinit.core.recipes import Recipe, Rule, UnmatchedError, torch_default
from xinit.core.specs import Normal, Ones, Zeros


class WithBuffers(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.bn = nn.BatchNorm1d(8)
        self.register_buffer("pos_embed", torch.arange(16.0).reshape(2, 8))
        self.register_buffer("mask", torch.tril(torch.ones(4, 4)), persistent=False)


def test_a_rule_writes_a_buffer_only_when_it_names_buffers():
    m = WithBuffers()
    before = {n: b.clone() for n, b in m.named_buffers()}
    everything = Recipe("everything", (Rule(Zeros()),))
    xt.initialize(m, everything, key=0)
    assert (m.fc.weight == 0).all() and (m.bn.weight == 0).all()
    for n, b in m.named_buffers():
        assert torch.equal(b, before[n]), n
    xt.initialize(m, Recipe("buffers too", (Rule(Ones(), name="pos_embed", buffers=True),)) + torch_default(),
                  key=0)
    assert (m.pos_embed == 1).all() and torch.equal(m.mask, before["mask"])


def test_describe_and_plan_show_parameters_and_buffers():
    m = WithBuffers()
    kinds = {p.name: p.buffer for p in xt.describe(m)}
    assert kinds["fc.weight"] is False and kinds["pos_embed"] is True and kinds["bn.running_var"] is True
    rows = {line.split()[0]: line.split()[1] for line in str(xt.plan(m)).splitlines()[2:]}
    assert rows["fc.weight"] == "param" and rows["mask"] == "buffer" and rows["bn.num_batches_tracked"] == "buffer"
    assert "left as it is" in str(xt.plan(m))


def test_meta_params_puts_parameters_on_meta_and_keeps_buffers():
    torch.manual_seed(0)
    state = torch.get_rng_state()
    with xt.meta_params():
        m = WithBuffers()
        m.frozen = nn.Parameter(torch.ones(3), requires_grad=False)
    assert torch.equal(torch.get_rng_state(), state)  # torch's init did nothing on meta
    assert all(p.is_meta for p in m.parameters()) and not m.frozen.requires_grad
    assert not any(b.is_meta for b in m.buffers())
    assert torch.equal(m.pos_embed, torch.arange(16.0).reshape(2, 8))
    assert nn.Module.register_parameter.__name__ == "register_parameter"
    xt.materialize(m, "cpu", Recipe("frozen", (Rule(Ones(), name="frozen"),)) + torch_default(), key=4)
    assert torch.equal(m.pos_embed, torch.arange(16.0).reshape(2, 8)) and (m.frozen == 1).all()
    eager = WithBuffers()
    xt.initialize(eager, key=4)
    assert torch.equal(eager.fc.weight, m.fc.weight)
    with pytest.raises(RuntimeError, match="boom"), xt.meta_params():
        raise RuntimeError("boom")
    assert not nn.Linear(2, 2).weight.is_meta  # restored


def test_meta_params_keeps_a_parameter_subclass():
    class Tagged(nn.Parameter):
        pass

    with xt.meta_params():
        m = nn.Module()
        m.w = Tagged(torch.ones(2))
    assert type(m.w) is Tagged and m.w.is_meta


class Hooked(nn.Module):
    """A computed buffer and the module's own code that recomputes it (as timm's layers)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.register_buffer("table", torch.empty(5), persistent=False)
        self.init_non_persistent_buffers()

    def init_non_persistent_buffers(self):
        self.table.copy_(torch.arange(5.0, device=self.table.device) ** 2)


def test_materialize_recomputes_buffers_through_the_module_hook():
    with torch.device("meta"):
        m = nn.Sequential(Hooked(), nn.Linear(4, 2))
    p = xt.plan(m)
    assert p.unmatched == ("0.table",)  # no rule; materialize recomputes it
    xt.materialize(m, key=0)
    assert torch.equal(m[0].table, torch.arange(5.0) ** 2)


def test_materialize_names_buffers_it_cannot_recompute_and_the_fixes():
    with torch.device("meta"):
        m = WithBuffers()
    with pytest.raises(UnmatchedError) as err:
        xt.materialize(m, key=0)
    text = str(err.value)
    assert "pos_embed, mask" in text and "meta_params()" in text and "buffers=True" in text
    assert "state_dict=" in text and "unmatched='zeros'" in text
    assert all(t.is_meta for t in [*m.parameters(), *m.buffers()])  # nothing allocated


def test_materialize_puts_everything_back_when_it_fails():
    with torch.device("meta"):
        m = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
        m.register_buffer("steps", torch.zeros(3, dtype=torch.int64))
    m[1].weight = m[0].weight
    bad = Recipe("bad", (Rule(Normal(0.0, 1.0), name="steps", buffers=True),)) + torch_default()
    with pytest.raises(DtypeError):
        xt.materialize(m, "cpu", bad, key=0)
    assert all(t.is_meta for t in [*m.parameters(), *m.buffers()])
    assert m[1].weight is m[0].weight
