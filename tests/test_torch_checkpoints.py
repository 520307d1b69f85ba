"""Half-loaded checkpoints (``state_dict=``) and the reproducibility manifest in xinit.torch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import xinit
import xinit.torch as xt
from xinit.core.errors import CheckpointError
from xinit.core.manifest import Manifest
from xinit.core.recipes import Recipe, Rule, get_recipe
from xinit.core.specs import Normal


class Net(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.body = nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.Linear(32, 16))
        self.bn = nn.BatchNorm1d(16)
        self.head = nn.Linear(16, classes)
        self.out = nn.Linear(16, 50, bias=False)
        self.out.weight = self.emb.weight  # tied


def trained(seed=1, classes=10):
    torch.manual_seed(seed)
    m = Net(classes)
    with torch.no_grad():
        m.bn.running_mean.normal_()
        m.bn.num_batches_tracked += 7
    return m


@pytest.fixture
def drawn(monkeypatch):
    """The names xinit draws (everything passes through _write_all)."""
    names: list[str] = []
    real = xt.model._write_all

    def counting(entries, *args, **kwargs):
        names.extend(e.param.name for e in entries)
        return real(entries, *args, **kwargs)

    monkeypatch.setattr(xt.model, "_write_all", counting)
    return names


def body_of(m):
    return {k: v for k, v in m.state_dict().items() if not k.startswith("head.")}


@pytest.mark.parametrize("how", ["initialize", "materialize"])
def test_checkpoint_tensors_are_loaded_and_only_the_rest_drawn(how, drawn):
    sd = body_of(trained())
    if how == "initialize":
        m = Net()
        xt.initialize(m, "transformer", key=5, state_dict=sd)
    else:
        with torch.device("meta"):
            m = Net()
        xt.materialize(m, "cpu", "transformer", key=5, state_dict=sd)
    assert sorted(drawn) == ["head.bias", "head.weight"]
    for k, v in sd.items():
        assert torch.equal(m.state_dict()[k], v), k
    assert m.out.weight is m.emb.weight
    full = Net()
    xt.initialize(full, "transformer", key=5)
    assert torch.equal(m.head.weight, full.head.weight)  # a drawn tensor is the same with or without
    p = xt.plan(Net(), "transformer", state_dict=sd)
    assert set(p.drawn) == {"head.weight", "head.bias"} and "bn.num_batches_tracked" in p.loaded
    assert "loaded from the checkpoint" in str(p)


def test_a_tied_tensor_loads_under_any_of_its_names():
    src = trained()
    sd = {("out.weight" if k == "emb.weight" else k): v for k, v in src.state_dict().items()}
    m = Net()
    xt.initialize(m, key=0, state_dict=sd)
    assert torch.equal(m.emb.weight, src.emb.weight) and m.out.weight is m.emb.weight
    both = dict(src.state_dict())
    both["out.weight"] = both["emb.weight"].clone()
    xt.initialize(m, key=0, state_dict=both)
    both["out.weight"] = both["out.weight"] + 1
    with pytest.raises(CheckpointError, match="emb.weight and out.weight are one tied tensor"):
        xt.initialize(m, key=0, state_dict=both)


def test_dtypes_are_checked_floats_cast():
    sd = {k: (v.double() if v.is_floating_point() else v) for k, v in trained().state_dict().items()}
    m = Net()
    xt.initialize(m, key=0, state_dict=sd)
    assert m.head.weight.dtype == torch.float32 and torch.allclose(m.head.weight.double(), sd["head.weight"])
    sd["bn.num_batches_tracked"] = sd["bn.num_batches_tracked"].float()
    with pytest.raises(CheckpointError, match="bn.num_batches_tracked: dtype torch.float32"):
        xt.initialize(m, key=0, state_dict=sd)


def test_a_mismatched_checkpoint_changes_nothing():
    sd = dict(trained(classes=3).state_dict())
    sd["model.extra"] = torch.zeros(2)
    sd["bn.running_mean"] = torch.zeros(16, device="meta")
    m = Net()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    torch.manual_seed(0)
    rng = torch.get_rng_state()
    with pytest.raises(CheckpointError) as err:
        xt.initialize(m, "transformer", state_dict=sd)  # no key: a seed would come from torch
    text = str(err.value)
    assert "model.extra" in text and "head.weight: shape (3, 16)" in text and "head.bias" in text
    assert "bn.running_mean: the checkpoint's tensor is on the meta device" in text
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)
    with torch.device("meta"):
        meta = Net()
    with pytest.raises(CheckpointError):
        xt.materialize(meta, "cpu", key=0, state_dict=sd)
    assert all(t.is_meta for t in meta.state_dict().values())


def test_checkpoint_files_and_arrays(tmp_path):
    src = trained()
    torch.save({"state_dict": src.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    m = Net()
    xt.initialize(m, key=0, state_dict=tmp_path / "ckpt.pt")
    assert torch.equal(m.head.weight, src.head.weight)
    arrays = {k: v.numpy() for k, v in src.state_dict().items()}
    m2 = Net()
    xt.initialize(m2, key=0, state_dict=arrays)
    assert torch.equal(m2.bn.running_mean, src.bn.running_mean)
    with pytest.raises(FileNotFoundError):
        xt.initialize(m, key=0, state_dict=tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="unknown checkpoint format '.npz'"):
        xt.initialize(m, key=0, state_dict=tmp_path / "ckpt.npz")
    with pytest.raises(TypeError, match="state_dict must be a mapping"):
        xt.initialize(m, key=0, state_dict=[1, 2])


def test_a_safetensors_checkpoint_is_read_once_per_tensor(tmp_path, monkeypatch):
    """Checking which keys a .safetensors file holds reads its header, not its tensors
    (Mapping's default ``in`` would read each tensor whole): initialize reads every
    tensor once, to load it."""
    from safetensors.torch import save_file

    from xinit.torch._checkpoint import LazySafetensors, load_torch_state

    src = trained()
    state = {k: v for k, v in src.state_dict().items() if k != "out.weight"}  # tied: saved once
    save_file(state, tmp_path / "ckpt.safetensors")
    read, names = LazySafetensors.read, []

    def recording_read(self, name, box=None):
        names.append(name)
        return read(self, name, box)

    monkeypatch.setattr(LazySafetensors, "read", recording_read)
    sd = load_torch_state(tmp_path / "ckpt.safetensors")
    assert "head.weight" in sd and "missing" not in sd and names == []
    m = Net()
    xt.initialize(m, key=0, state_dict=tmp_path / "ckpt.safetensors")
    assert torch.equal(m.head.weight, src.head.weight)
    assert sorted(names) == sorted(state)


# ---------------------------------------------------------------------- manifest


def test_manifest_reproduces_a_run_bit_for_bit(tmp_path):
    torch.manual_seed(123)
    a = Net()
    xt.initialize(a, "gpt2", save_manifest=tmp_path / "run.json")  # the root seed came from torch
    data = json.loads((tmp_path / "run.json").read_text())
    assert data["rng"] == "threefry2x32" and len(data["key"]) == 2
    assert data["recipe"]["name"] == "gpt2" and data["recipe_hash"] == get_recipe("gpt2").config_hash()
    assert {"xinit", "jax", "torch"} <= set(data["versions"])
    rows = {t["name"]: t for t in data["tensors"]}
    assert rows["body.0.weight"]["source"] == "drawn" and rows["body.0.weight"]["rule"] == 1
    assert rows["body.0.weight"]["init"] == "normal(mean=0.0, std=0.02)"
    assert rows["bn.running_var"]["buffer"] is True
    b = Net()
    xt.initialize(b, manifest=tmp_path / "run.json")
    for (k, v), (k2, w) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, w), k
    with torch.device("meta"):
        c = Net()
    xt.materialize(c, manifest=Manifest.load(tmp_path / "run.json"))
    assert all(torch.equal(v, w) for v, w in zip(a.state_dict().values(), c.state_dict().values(), strict=True))
    assert Manifest.load(tmp_path / "run.json").recipe_object() == get_recipe("gpt2")


def test_manifest_with_a_checkpoint(tmp_path):
    sd = body_of(trained())
    with torch.device("meta"):
        a = Net()
    xt.materialize(a, "cpu", "transformer", key=9, state_dict=sd, save_manifest=tmp_path / "m.json")
    record = Manifest.load(tmp_path / "m.json")
    assert set(record.drawn) == {"head.weight", "head.bias"} and "emb.weight" in record.loaded
    b = Net()
    with pytest.raises(ValueError, match="loaded from a checkpoint when recorded; pass the same state_dict"):
        xt.initialize(b, manifest=tmp_path / "m.json")
    xt.initialize(b, manifest=tmp_path / "m.json", state_dict=sd)
    assert all(torch.equal(v, w) for v, w in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_manifest_refuses_another_model_or_recipe(tmp_path):
    xt.initialize(Net(), "gpt2", key=1, save_manifest=tmp_path / "m.json")
    m = Net(classes=4)
    before = m.head.weight.clone()
    with pytest.raises(ValueError, match=r"head.weight: \(10, 16\) float32 in the manifest, \(4, 16\)"):
        xt.initialize(m, manifest=tmp_path / "m.json")
    assert torch.equal(m.head.weight, before)
    with pytest.raises(ValueError, match="either manifest= .* or key="):
        xt.initialize(Net(), key=1, manifest=tmp_path / "m.json")
    with pytest.raises(ValueError, match="not the manifest's recipe 'gpt2'"):
        xt.initialize(Net(), "transformer", manifest=tmp_path / "m.json")
    other = Recipe("gpt2", (Rule(Normal(0.0, 1.0), kind="linear"),)) + get_recipe("gpt2")
    with pytest.raises(ValueError, match="now drawn by rule #0"):
        xt.initialize(Net(), other, manifest=Manifest.load(tmp_path / "m.json").__class__.from_dict(
            {**json.loads((tmp_path / "m.json").read_text()), "recipe": other.to_config(),
             "recipe_hash": other.config_hash()}))
    data = json.loads((tmp_path / "m.json").read_text())
    data["recipe"]["rules"][0]["init"]["std"] = 0.5
    with pytest.raises(ValueError, match="does not match its recorded hash"):
        xt.initialize(Net(), manifest=data)
    data["format"] = 99
    with pytest.raises(ValueError, match="format 99"):
        Manifest.from_dict(data)


def test_manifest_is_plain_data():
    plan = get_recipe("gpt2").plan([xt.describe(Net())[0]])
    m = Manifest.from_plan(plan, get_recipe("gpt2"), key=np.array([1, 2], dtype=np.uint32),
                           unmatched="error")
    assert m.key == (1, 2) and Manifest.from_json(m.to_json()) == m
    assert "drawn" in str(m) and m.versions["xinit"] == xinit.__version__
