"""xinit.port with checkpoint files (every format, both directions) and the ``xinit port`` command."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

torch = pytest.importorskip("torch")
linen = pytest.importorskip("flax.linen")
nnx = pytest.importorskip("flax.nnx")
safetensors_torch = pytest.importorskip("safetensors.torch")
pytest.importorskip("rich")

import jax  # noqa: E402
from flax import serialization  # noqa: E402
from safetensors import safe_open  # noqa: E402

import xinit.port as xp  # noqa: E402
from test_port_models import IMAGES, LinenResNet, NnxResNet, TorchResNet  # noqa: E402
from test_port_pairs import randomize  # noqa: E402
from xinit import cli  # noqa: E402
from xinit.port import _files  # noqa: E402


def equal_trees(a, b) -> bool:
    fa = {"/".join(map(str, k)): np.asarray(v) for k, v in _flat(a).items()}
    fb = {"/".join(map(str, k)): np.asarray(v) for k, v in _flat(b).items()}
    return fa.keys() == fb.keys() and all(
        fa[k].dtype == fb[k].dtype and np.array_equal(fa[k], fb[k]) for k in fa)


def _flat(tree, prefix=()):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) or hasattr(v, "items"):
            out.update(_flat(v, (*prefix, str(k))))
        else:
            out[(*prefix, str(k))] = v
    return out


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    tm = randomize(TorchResNet())
    return tm, xp.torch_to_flax(tm, LinenResNet(), IMAGES)


def _meta_resnet():
    with torch.device("meta"):
        return TorchResNet()


@pytest.mark.parametrize("src_suffix", [".pt", ".bin", ".safetensors"])
@pytest.mark.parametrize("dst", ["out.msgpack", "out.safetensors", "orbax_dir"])
def test_torch_file_to_flax_file(tmp_path, resnet, src_suffix, dst):
    tm, expected = resnet
    src = tmp_path / f"model{src_suffix}"
    if src_suffix == ".safetensors":
        safetensors_torch.save_file(tm.state_dict(), src)
    else:
        torch.save(tm.state_dict(), src)
    seen = []
    report = xp.convert_file(src, tmp_path / dst, _meta_resnet(), LinenResNet(), IMAGES,
                             progress=lambda done, total: seen.append((done, total)))
    assert report.ok and len(report.converted) == len(jax.tree.leaves(expected))
    assert seen[-1][0] == seen[-1][1] == sum(np.asarray(a).nbytes for a in jax.tree.leaves(expected))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert equal_trees(xp.load_flax_variables(tmp_path / dst), expected)


def test_streamed_msgpack_is_flax_serialization(tmp_path, resnet):
    tm, expected = resnet
    src = tmp_path / "m.safetensors"
    safetensors_torch.save_file(tm.state_dict(), src)
    xp.convert_file(src, tmp_path / "out.msgpack", _meta_resnet(), LinenResNet(), IMAGES)
    restored = serialization.msgpack_restore((tmp_path / "out.msgpack").read_bytes())
    assert equal_trees(restored, expected)
    back = serialization.from_bytes(expected, (tmp_path / "out.msgpack").read_bytes())
    assert equal_trees(back, expected)


@pytest.mark.parametrize("src", ["in.msgpack", "in.safetensors", "orbax_in"])
@pytest.mark.parametrize("dst_suffix", [".safetensors", ".pt", ".bin"])
def test_flax_file_to_torch_file(tmp_path, resnet, src, dst_suffix):
    tm, variables = resnet
    path = tmp_path / src
    if src.endswith(".msgpack"):
        path.write_bytes(serialization.msgpack_serialize(jax.tree.map(np.asarray, variables)))
    elif src.endswith(".safetensors"):
        from safetensors.numpy import save_file

        save_file({"/".join(k): np.asarray(v) for k, v in _flat(variables).items()}, str(path))
    else:
        _files.save_orbax(path, jax.tree.map(np.asarray, variables))
    out = tmp_path / f"model{dst_suffix}"
    report = xp.convert_file(path, out, _meta_resnet(), LinenResNet(), IMAGES, to="torch")
    assert report.ok
    state = xp.load_torch_state(out)
    expected = {k: v for k, v in tm.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert set(state) == set(expected)
    for k, v in expected.items():
        got = state[k] if isinstance(state[k], torch.Tensor) else torch.from_numpy(np.asarray(state[k]))
        assert torch.equal(got, v), k
    # and the file-based API directly
    fresh = randomize(TorchResNet(), seed=2)
    xp.flax_to_torch(LinenResNet(), path, fresh, IMAGES)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in expected.items())


def test_safetensors_writer_matches_the_format(tmp_path):
    import ml_dtypes

    arrays = {"b/x": np.arange(6, dtype=np.float32).reshape(2, 3),
              "a": np.ones((3,), ml_dtypes.bfloat16), "c": np.arange(5, dtype=np.int64),
              "t": np.arange(12, dtype=np.float64).reshape(3, 4).T}  # a transposed view
    layout = [(k, v.shape, v.dtype) for k, v in arrays.items()]
    path = tmp_path / "x.safetensors"
    _files.write_safetensors(path, layout, arrays.__getitem__, {"format": "flax"})
    with safe_open(str(path), "numpy") as f:
        assert f.metadata() == {"format": "flax"}
        for k, v in arrays.items():
            got = f.get_tensor(k)
            assert got.dtype == v.dtype and np.array_equal(got, v), k
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    assert n % 8 == 0 and json.loads(raw[8 : 8 + n])["a"]["dtype"] == "BF16"
    with pytest.raises(ValueError, match="expected"):
        _files.write_safetensors(tmp_path / "y.safetensors", layout, lambda k: np.zeros(1))
    assert list(tmp_path.iterdir()) == [path]  # no partial file left behind


def test_torch_bf16_safetensors_to_flax(tmp_path):
    torch.manual_seed(0)
    tm = randomize(TorchResNet()).to(torch.bfloat16)
    src = tmp_path / "bf16.safetensors"
    safetensors_torch.save_file(tm.state_dict(), src)
    got = xp.torch_to_flax(_meta_resnet(), LinenResNet(), IMAGES, state_dict=src)
    expected = xp.torch_to_flax(tm, LinenResNet(), IMAGES)
    assert equal_trees(got, expected)
    assert {a.dtype.name for a in jax.tree.leaves(got)} == {"bfloat16"}


def test_nnx_files_use_pure_dict_keys(tmp_path, resnet):
    tm, _ = resnet
    src = tmp_path / "m.pt"
    torch.save(tm.state_dict(), src)
    xp.convert_file(src, tmp_path / "nnx.msgpack", _meta_resnet(), NnxResNet(), to="flax")
    pure = xp.load_flax_variables(tmp_path / "nnx.msgpack")
    assert "kernel" in pure["layer1"]["layers"]["0"]["conv1"]  # nnx.to_pure_dict's layout
    fm = NnxResNet(rngs=nnx.Rngs(9))
    state = nnx.state(fm)
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(fm, state)
    assert xp.compare(tm, fm, None, IMAGES, input_map="NHWC->NCHW").ok
    back = randomize(TorchResNet(), seed=1)
    xp.flax_to_torch(NnxResNet(), tmp_path / "nnx.msgpack", back)
    assert all(torch.equal(back.state_dict()[k], v) for k, v in tm.state_dict().items()
               if not k.endswith("num_batches_tracked"))


def test_file_errors(tmp_path, resnet):
    with pytest.raises(ValueError, match="unknown checkpoint format '.npz'"):
        xp.load_torch_state(tmp_path / "x.npz")
    with pytest.raises(FileNotFoundError):
        xp.load_torch_state(tmp_path / "missing.pt")
    (tmp_path / "notsd.pt").write_bytes(b"")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="not a state dict"):
        xp.load_torch_state(tmp_path / "list.pt")
    with pytest.raises(ValueError, match="unknown checkpoint format"):
        xp.convert_file(tmp_path / "x.pt", tmp_path / "y.pt", _meta_resnet(), LinenResNet(), IMAGES)


# ------------------------------------------------------------------------ CLI


def linen_resnet():
    return LinenResNet(), IMAGES


def linen_resnet_wrong_eps():
    return LinenResNet(eps=0.5), IMAGES


def traced_resnet():
    from xinit.flax import trace

    return trace(LinenResNet(), IMAGES)


def nnx_resnet():
    return NnxResNet(), IMAGES


def run_cli(capsys, *argv):
    rc = cli.main(["port", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_port_to_flax_and_back_with_check(tmp_path, capsys, resnet):
    tm, expected = resnet
    src = tmp_path / "m.pt"
    torch.save(tm.state_dict(), src)
    rc, out, err = run_cli(capsys, src, tmp_path / "f.msgpack", "--torch-model",
                           "test_port_models:TorchResNet", "--flax-model",
                           "test_port_files:linen_resnet", "--check", "--input-map", "NHWC->NCHW")
    assert rc == 0, out + err
    assert "wrote" in out and "outputs agree" in out
    assert equal_trees(xp.load_flax_variables(tmp_path / "f.msgpack"), expected)
    rc, out, err = run_cli(capsys, tmp_path / "f.msgpack", tmp_path / "t.safetensors", "--to",
                           "torch", "--torch-model", "test_port_models:TorchResNet", "--flax-model",
                           "test_port_files:traced_resnet", "--check", "--input-map", "NHWC->NCHW")
    assert rc == 0, out + err
    state = xp.load_torch_state(tmp_path / "t.safetensors")
    assert np.array_equal(state["fc.weight"], tm.fc.weight.detach().numpy())


def test_cli_port_nnx_and_check_failure(tmp_path, capsys, resnet):
    tm, _ = resnet
    src = tmp_path / "m.safetensors"
    safetensors_torch.save_file(tm.state_dict(), src)
    rc, out, err = run_cli(capsys, src, tmp_path / "n.msgpack", "--torch-model",
                           "test_port_models:TorchResNet", "--flax-model", "test_port_files:nnx_resnet",
                           "--check", "--input-map", "NHWC->NCHW")
    assert rc == 0, out + err
    rc, out, err = run_cli(capsys, src, tmp_path / "w.msgpack", "--torch-model",
                           "test_port_models:TorchResNet", "--flax-model",
                           "test_port_files:linen_resnet_wrong_eps", "--check", "--input-map",
                           "NHWC->NCHW")
    assert rc == 1 and "outputs DIFFER" in out and "epsilon differs" in out


@pytest.mark.parametrize("argv, message", [
    (["{src}", "{tmp}/o.msgpack", "--torch-model", "nope", "--flax-model", "x:y"],
     "must look like MODULE:FACTORY"),
    (["{src}", "{tmp}/o.msgpack", "--torch-model", "no_such_module_xyz:f", "--flax-model",
      "test_port_files:linen_resnet"], "cannot import 'no_such_module_xyz'"),
    (["{src}", "{tmp}/o.msgpack", "--torch-model", "test_port_models:nothing", "--flax-model",
      "test_port_files:linen_resnet"], "has no callable 'nothing'"),
    (["{tmp}/missing.pt", "{tmp}/o.msgpack", "--torch-model", "test_port_models:TorchResNet",
      "--flax-model", "test_port_files:linen_resnet"], "no such checkpoint file"),
    (["{src}", "{tmp}/o.msgpack", "--torch-model", "test_port_models:TorchGPT", "--flax-model",
      "test_port_files:linen_resnet"], "torch_to_flax: "),
    (["{src}", "{tmp}/o.npz", "--torch-model", "test_port_models:TorchResNet", "--flax-model",
      "test_port_files:linen_resnet"], "unknown checkpoint format"),
    (["{src}", "{tmp}/o.msgpack", "--torch-model", "test_port_files:linen_resnet", "--flax-model",
      "test_port_files:linen_resnet"], "must return a torch.nn.Module"),
])
def test_cli_port_user_errors_are_one_line_and_exit_2(tmp_path, capsys, resnet, argv, message):
    src = tmp_path / "m.pt"
    torch.save(resnet[0].state_dict(), src)
    rc, out, err = run_cli(capsys, *[a.format(src=src, tmp=tmp_path) for a in argv])
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xinit port: error: ") and message in lines[0]
