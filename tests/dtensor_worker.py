"""One rank of the gloo jobs of ``tests/test_torch_dtensor.py`` (and the cases both sides share).

Run as ``python tests/dtensor_worker.py OUT`` with ``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR`` and ``MASTER_PORT`` set. Every rank initializes DTensors (the
drop-ins on ``distribute``d tensors; ``initialize`` and ``materialize`` on
tensor-parallel and FSDP2 models), gathers each result with torch's own
``full_tensor()`` (torch assembles the shards from their placements, so a shard
written to the wrong region shows), and rank 0 saves them to ``OUT``. The test
process computes the same recipes single-process, on plain tensors
(:func:`reference`), and compares bit for bit.
"""

from __future__ import annotations

import contextlib
import os
import sys

import torch
from torch import nn

import xinit.torch as xt

# (name, function, kwargs, global shape, dtype): every family, uneven shapes.
CALLS = [
    ("normal", "normal_", {"std": 0.02}, (7, 5), torch.float32),
    ("uniform", "uniform_", {"a": -1.0, "b": 2.0}, (9, 6), torch.float32),
    ("trunc_normal", "trunc_normal_", {"std": 0.5, "a": -1.0, "b": 1.0}, (7, 5), torch.float32),
    ("xavier_uniform", "xavier_uniform_", {}, (6, 4, 3), torch.float32),
    ("kaiming_normal", "kaiming_normal_", {"mode": "fan_out"}, (10, 3, 2, 2), torch.float32),
    ("orthogonal", "orthogonal_", {}, (6, 9), torch.float32),
    ("sparse", "sparse_", {"sparsity": 0.3}, (10, 7), torch.float32),
    ("eye", "eye_", {}, (5, 7), torch.float32),
    ("dirac", "dirac_", {}, (4, 2, 3), torch.float32),
    ("constant", "constant_", {"val": 0.5}, (3, 5), torch.float32),
    ("normal_bf16", "normal_", {}, (6, 5), torch.bfloat16),
    ("normal_complex", "normal_", {"std": 2.0}, (5, 4), torch.complex64),
    ("sparse_complex", "sparse_", {"sparsity": 0.5}, (6, 5), torch.complex64),
    ("eye_complex", "eye_", {}, (5, 6), torch.complex128),
]
KEYED = {"eye_", "dirac_", "constant_"}  # no key argument

# (name, mesh shape, placements) per world size; "SS0" is _StridedShard(0, split_factor=2).
PLACEMENTS = {
    2: [("S0", (2,), ("S0",)), ("S1", (2,), ("S1",)), ("R", (2,), ("R",))],
    4: [("S0", (4,), ("S0",)), ("S1", (4,), ("S1",)), ("R", (4,), ("R",)),
        ("S0S1", (2, 2), ("S0", "S1")), ("S1S0", (2, 2), ("S1", "S0")),
        ("S0S0", (2, 2), ("S0", "S0")), ("RS1", (2, 2), ("R", "S1")),
        ("SS0S0", (2, 2), ("SS0", "S0"))],
}


def call(fn: str, kwargs: dict, tensor: torch.Tensor, key: int) -> torch.Tensor:
    if fn in KEYED:
        return getattr(xt, fn)(tensor, **kwargs)
    return getattr(xt, fn)(tensor, **kwargs, key=key)


def mlp() -> nn.Module:
    """A small model with uneven dims (10 rows over 4 ranks) and a norm."""
    return nn.Sequential(nn.Linear(6, 10), nn.GELU(), nn.Linear(10, 7), nn.LayerNorm(7))


TP_PLAN = {"0": "colwise", "2": "rowwise"}


@contextlib.contextmanager
def conv1d_registered():
    """Hugging Face's Conv1D (weight stored ``(in, out)``) registered as a linear layer."""
    from xinit.core import layers
    from xinit.core.layout import Layout

    saved = dict(layers._qualified), dict(layers._bare)
    layers.register_layer("Conv1D", kind="linear", layout=Layout(in_axis=0, out_axis=1))
    try:
        yield
    finally:
        for table, old in zip((layers._qualified, layers._bare), saved, strict=True):
            table.clear()
            table.update(old)
        layers._cache.clear()


def conv1d_model() -> nn.Module:
    from transformers.pytorch_utils import Conv1D

    return nn.Sequential(Conv1D(10, 6), nn.GELU(), Conv1D(7, 10))  # weights (6, 10), (10, 7)


#: Conv1D weights sharded on their stored dims: dim 1 (canonical out), dim 0 (canonical in).
CONV1D_PLAN = {"0.weight": "S1", "0.bias": "S0", "2.weight": "S0", "2.bias": "R"}


#: Entries of ``checkpoint()`` (the rest is drawn): a colwise (Shard(0)) and a rowwise
#: (Shard(1)) weight, a replicated bias, a norm weight (plain under tensor parallelism).
CHECKPOINT_KEYS = ("0.weight", "2.weight", "2.bias", "3.weight")

#: (case, key) of the checkpoint cases: initialize and materialize with ``checkpoint()``.
CHECKPOINT_CASES = (("ckpt_tp_init", 13), ("ckpt_tp_meta", 14), ("ckpt_fsdp", 15),
                    ("ckpt_dtensors", 16), ("ckpt_fsdp_tp", 17), ("ckpt_fsdp_tp_file", 18))


def checkpoint() -> dict[str, torch.Tensor]:
    """A full (unsharded) checkpoint of part of ``mlp()``: other values than any recipe
    draws, ``2.weight`` in float64 (cast on loading)."""
    model = mlp()
    xt.initialize(model, "torch_default", key=99)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items() if k in CHECKPOINT_KEYS}
    sd["2.weight"] = sd["2.weight"].double()
    return sd


def reference() -> dict[str, torch.Tensor]:
    """The single-process values of every case (plain tensors, the same calls and keys)."""
    out = {}
    for k, (name, fn, kwargs, shape, dtype) in enumerate(CALLS):
        out[name] = call(fn, kwargs, torch.zeros(shape, dtype=dtype), 100 + k).clone()
    torch.manual_seed(1000)  # rank 0's seed in the no-key case
    out["nokey"] = xt.normal_(torch.zeros(9, 4))
    torch.manual_seed(2000)
    model = mlp()
    xt.initialize(model, "transformer")
    out.update({f"nokey_init.{n}": p.detach().clone() for n, p in model.named_parameters()})
    for case, key in (("tp_init", 7), ("tp_meta", 8), ("fsdp", 9), ("fsdp_tp", 10)):
        model = mlp()
        xt.initialize(model, "transformer", key=key)
        out.update({f"{case}.{n}": p.detach().clone() for n, p in model.named_parameters()})
    with conv1d_registered():
        for case, key in (("conv1d_init", 11), ("conv1d_meta", 12)):
            model = conv1d_model()
            xt.initialize(model, key=key)
            out.update({f"{case}.{n}": p.detach().clone() for n, p in model.named_parameters()})
    for case, key in CHECKPOINT_CASES:
        model = mlp()
        xt.initialize(model, "transformer", key=key, state_dict=checkpoint())
        out.update({f"{case}.{n}": p.detach().clone() for n, p in model.named_parameters()})
    return out


# ---------------------------------------------------------------------- the worker


def _placement(code: str):
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.placement_types import _StridedShard

    if code == "R":
        return Replicate()
    if code.startswith("SS"):
        return _StridedShard(int(code[2:]), split_factor=2)
    return Shard(int(code[1:]))


def _dtensor(shape, dtype, mesh, placements):
    """A zero DTensor, built from its local shard alone (no communication)."""
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    local_shape, _ = compute_local_shape_and_global_offset(shape, mesh, placements)
    stride = torch.empty(shape, device="meta").stride()
    return DTensor.from_local(torch.zeros(local_shape, dtype=dtype), mesh, placements,
                              run_check=False, shape=torch.Size(shape), stride=stride)


def _parallelize(model, mesh):
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    styles = {"colwise": ColwiseParallel, "rowwise": RowwiseParallel}
    return parallelize_module(model, mesh, {k: styles[v]() for k, v in TP_PLAN.items()})


def _full(model, case, out):
    """Every parameter's global values (a plain parameter is the same on every rank)."""
    from torch.distributed.tensor import DTensor

    for n, p in model.named_parameters():
        out[f"{case}.{n}"] = (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone()


def _versions(t: torch.Tensor) -> tuple[int, int | None]:
    """The version counters of ``t`` and, for a DTensor, of its local tensor."""
    from torch.distributed.tensor import DTensor

    return t._version, t.to_local()._version if isinstance(t, DTensor) else None


def _moved(t: torch.Tensor, before: tuple[int, int | None]) -> tuple[int, int | None]:
    """How far each counter of :func:`_versions` moved since ``before``."""
    now = _versions(t)
    return now[0] - before[0], None if now[1] is None else now[1] - before[1]


def _model_versions(model: nn.Module) -> dict[str, tuple[int, int | None]]:
    return {n: _versions(p) for n, p in model.named_parameters()}


def _model_moved(model: nn.Module, before: dict) -> dict[str, tuple[int, int | None]]:
    return {n: _moved(p, before[n]) for n, p in model.named_parameters()}


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter's local values (a plain parameter's own)."""
    from torch.distributed.tensor import DTensor

    return {n: (p.to_local() if isinstance(p, DTensor) else p).detach().clone()
            for n, p in model.named_parameters()}


def _same(model: nn.Module, snapshot: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, snapshot[n]) for n, v in _snapshot(model).items())


def _torch_versions(mesh, placements) -> dict[str, tuple[int, int | None] | str]:
    """What torch's own ``torch.nn.init`` moves on DTensors (the error, where torch refuses)."""
    out: dict[str, tuple[int, int | None] | str] = {}
    for name, fn, kwargs, shape, dtype in CALLS:
        dt = _dtensor(shape, dtype, mesh, placements)
        before = _versions(dt)
        try:
            getattr(torch.nn.init, fn)(dt, **kwargs)
        except Exception as err:  # noqa: BLE001 - recorded: torch refuses some families
            out[name] = f"{type(err).__name__}: {err}"
            continue
        out[name] = _moved(dt, before)
    return out


def _checkpoint_cases(rank: int, world: int, mesh, path: str, out: dict, versions: dict,
                      reads: dict) -> None:
    """initialize/materialize with a full checkpoint on sharded models; refused DTensor
    entries. ``reads``: elements read from the .safetensors file, and the rank's local
    elements of the parameters it holds."""
    from safetensors.torch import save_file
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor, Replicate, distribute_tensor

    from xinit.core.errors import CheckpointError
    from xinit.torch._checkpoint import LazySafetensors

    keys = dict(CHECKPOINT_CASES)

    model = _parallelize(mlp(), mesh)  # tensor parallel: real model, initialize
    before = _model_versions(model)
    xt.initialize(model, "transformer", key=keys["ckpt_tp_init"], state_dict=checkpoint())
    versions["ckpt_tp_init"] = _model_moved(model, before)
    _full(model, "ckpt_tp_init", out)

    with torch.device("meta"):  # tensor parallel on meta, materialize
        model = mlp()
    _parallelize(model, mesh)
    xt.materialize(model, "cpu", "transformer", key=keys["ckpt_tp_meta"], state_dict=checkpoint())
    _full(model, "ckpt_tp_meta", out)

    with torch.device("meta"):  # FSDP2 on meta, materialize from a .safetensors file
        model = mlp()
    for layer in (model[0], model[2]):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    file = f"{path}.rank{rank}.safetensors"
    save_file(checkpoint(), file)
    read = LazySafetensors.read
    blocks = []

    def recording_read(self, name, box=None):
        blocks.append(value := read(self, name, box))
        return value

    LazySafetensors.read = recording_read
    try:
        xt.materialize(model, "cpu", "transformer", key=keys["ckpt_fsdp"], state_dict=file)
    finally:
        LazySafetensors.read = read
    params = dict(model.named_parameters())
    reads["ckpt_fsdp"] = (sum(b.numel() for b in blocks),
                          sum(params[k].to_local().numel() for k in CHECKPOINT_KEYS))
    _full(model, "ckpt_fsdp", out)

    # DTensor entries: the model's own placements, or Replicate (torch's copy_ redistributes)
    model = _parallelize(mlp(), mesh)
    params = dict(model.named_parameters())
    sd = {}
    for k, v in checkpoint().items():
        p = params[k]
        if isinstance(p, DTensor):
            placements = (Replicate(),) if k == "0.weight" else p.placements
            v = distribute_tensor(v, p.device_mesh, placements)
        sd[k] = v
    xt.initialize(model, "transformer", key=keys["ckpt_dtensors"], state_dict=sd)
    _full(model, "ckpt_dtensors", out)

    # refused before anything is written: a DTensor entry for a plain parameter, one on another mesh
    other = init_device_mesh("cpu", (1, world))
    bad = {**checkpoint(),
           "3.weight": distribute_tensor(checkpoint()["3.weight"], mesh, (Replicate(),)),
           "0.weight": distribute_tensor(checkpoint()["0.weight"], other, (Replicate(), Replicate()))}
    model = _parallelize(mlp(), mesh)
    snapshot, before, state = _snapshot(model), _model_versions(model), torch.get_rng_state()
    try:
        xt.initialize(model, "transformer", state_dict=bad)
        out["ckpt_refused"] = ""
    except CheckpointError as err:
        out["ckpt_refused"] = str(err)
    versions["ckpt_refused"] = _model_moved(model, before)
    out["ckpt_refused_untouched"] = _same(model, snapshot) and torch.equal(state, torch.get_rng_state())
    with torch.device("meta"):
        model = mlp()
    _parallelize(model, mesh)
    try:
        xt.materialize(model, "cpu", "transformer", key=0, state_dict=bad)
        out["ckpt_refused_meta"] = ""
    except CheckpointError as err:
        out["ckpt_refused_meta"] = str(err)
    out["ckpt_refused_meta_untouched"] = all(p.is_meta for p in model.parameters())

    if world == 4:  # FSDP2 over tensor parallelism: _StridedShard slices with gaps,
        mesh2 = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))  # from a dict
        for case, state_dict in (("ckpt_fsdp_tp", checkpoint()), ("ckpt_fsdp_tp_file", file)):
            with torch.device("meta"):  # and from the .safetensors file (blocks read around them)
                model = mlp()
            _parallelize(model, mesh2["tp"])
            fully_shard(model, mesh=mesh2["dp"])
            xt.materialize(model, "cpu", "transformer", key=keys[case], state_dict=state_dict)
            _full(model, case, out)


def worker(path: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Partial

    from engine_spy import record_requests  # tests/, this script's directory
    from xinit.core import engine

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    drawn = record_requests(engine)  # every request the engine's runs draw

    def elements(requests) -> int:  # complex requests count pairs of parts
        return sum(r.size // (1 if r.complex_dtype is None else 2) for r in requests)

    out, counts, versions = {}, {}, {}
    for pname, mesh_shape, codes in PLACEMENTS[world]:
        mesh = init_device_mesh("cpu", mesh_shape)
        placements = tuple(_placement(c) for c in codes)
        for k, (name, fn, kwargs, shape, dtype) in enumerate(CALLS):
            dt = _dtensor(shape, dtype, mesh, placements)
            local = dt.to_local()
            ptr = local.data_ptr()
            drawn.clear()
            before = _versions(dt)
            assert call(fn, kwargs, dt, 100 + k) is dt
            versions[f"{pname}/{name}"] = _moved(dt, before)
            assert dt.to_local().data_ptr() == ptr  # written in place
            counts[f"{pname}/{name}"] = (elements(drawn), local.numel())
            out[f"{pname}/{name}"] = dt.full_tensor().clone()

    mesh = init_device_mesh("cpu", (world,))
    # without key: every rank seeds differently; all take rank 0's seed
    torch.manual_seed(1000 + rank)
    dt = _dtensor((9, 4), torch.float32, mesh, (_placement("S0"),))
    xt.normal_(dt)
    out["nokey"] = dt.full_tensor()
    torch.manual_seed(2000 + rank)
    model = _parallelize(mlp(), mesh)
    xt.initialize(model, "transformer")
    _full(model, "nokey_init", out)
    torch.manual_seed(2000 + rank)
    model = _parallelize(mlp(), mesh)
    before = _model_versions(model)
    model.apply(xt.apply_fn("transformer"))
    versions["nokey_apply"] = _model_moved(model, before)
    _full(model, "nokey_apply", out)

    # a Partial DTensor is refused, nothing consumed
    partial = torch.distributed.tensor.DTensor.from_local(torch.ones(3, 3), mesh, (Partial(),))
    state, before = torch.get_rng_state(), _versions(partial)
    try:
        xt.normal_(partial)
        out["partial_error"] = ""
    except ValueError as e:
        out["partial_error"] = str(e)
    out["partial_untouched"] = bool((partial.to_local() == 1).all() and torch.equal(state, torch.get_rng_state()))
    versions["partial"] = _moved(partial, before)
    # a refused value: nothing written, no counter moved
    dt = _dtensor((7, 5), torch.float32, mesh, (_placement("S0"),))
    before = _versions(dt)
    with contextlib.suppress(ValueError):
        xt.normal_(dt, std=-1.0, key=0)
    versions["negative_std"] = _moved(dt, before)

    # tensor parallel: real model, initialize
    model = _parallelize(mlp(), mesh)
    before = _model_versions(model)
    xt.initialize(model, "transformer", key=7)
    versions["tp_init"] = _model_moved(model, before)
    _full(model, "tp_init", out)

    # tensor parallel on meta, materialize (new tensors: their counters from 0)
    with torch.device("meta"):
        model = mlp()
    _parallelize(model, mesh)
    xt.materialize(model, "cpu", "transformer", key=8)
    versions["tp_meta"] = _model_versions(model)
    _full(model, "tp_meta", out)

    # FSDP2 on meta, materialize; then a training step runs on the FSDP storage
    with torch.device("meta"):
        model = mlp()
    for layer in (model[0], model[2]):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    drawn.clear()
    xt.materialize(model, "cpu", "transformer", key=9)
    versions["fsdp"] = _model_versions(model)
    counts["fsdp"] = (elements(drawn), sum(p.to_local().numel() for p in model.parameters()))
    # memory each rank holds: its (padded) shard, never the global tensor
    out["fsdp_storage"] = [(p.to_local().untyped_storage().nbytes(), p.nbytes, p.shape[0])
                           for p in model.parameters()]
    _full(model, "fsdp", out)
    torch.manual_seed(0)
    x = torch.randn(3, 6)
    y = model(x)
    y.sum().backward()
    out["fsdp_forward"] = y.detach().clone()

    # layouts: Conv1D's (in, out) weights sharded on either stored dim
    from torch.distributed.tensor import distribute_tensor

    with conv1d_registered():
        for case, key, device in (("conv1d_init", 11, "cpu"), ("conv1d_meta", 12, "meta")):
            with torch.device(device):
                model = conv1d_model()
            for n, p in list(model.named_parameters()):
                owner, attr = model.get_submodule(n.rsplit(".", 1)[0]), n.rsplit(".", 1)[1]
                setattr(owner, attr, nn.Parameter(
                    distribute_tensor(p.detach(), mesh, (_placement(CONV1D_PLAN[n]),))))
            if device == "meta":
                xt.materialize(model, "cpu", key=key)
            else:
                xt.initialize(model, key=key)
            _full(model, case, out)

    if world == 4:  # FSDP2 over tensor parallelism: _StridedShard
        mesh2 = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
        with torch.device("meta"):
            model = mlp()
        _parallelize(model, mesh2["tp"])
        fully_shard(model, mesh=mesh2["dp"])
        xt.materialize(model, "cpu", "transformer", key=10)
        out["fsdp_tp_placements"] = [str(p.placements) for p in model.parameters()]
        _full(model, "fsdp_tp", out)

    reads: dict = {}
    _checkpoint_cases(rank, world, mesh, path, out, versions, reads)
    # last: torch's own DTensor random ops start its RNG tracker (which syncs RNG states)
    versions["torch"] = _torch_versions(mesh, (_placement("S0"),))

    all_counts, all_versions, all_reads = [None] * world, [None] * world, [None] * world
    dist.all_gather_object(all_counts, counts)
    dist.all_gather_object(all_versions, versions)
    dist.all_gather_object(all_reads, reads)
    if rank == 0:
        out["counts"] = all_counts
        out["versions"] = all_versions
        out["reads"] = all_reads
        torch.save(out, path)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    worker(sys.argv[1])
    os._exit(0)  # skip interpreter teardown (JAX and gloo threads)
