"""DTensor parameters on gloo (world sizes 2 and 4), against one process on plain tensors.

Each world size is one job of subprocesses (``tests/dtensor_worker.py``): the
drop-ins on DTensors of every family under ``Shard(0)``, ``Shard(1)``,
``Replicate`` and 2-D meshes (``_StridedShard`` included), with uneven shards;
``initialize`` on a tensor-parallel model; ``materialize`` on tensor-parallel,
FSDP2 and FSDP2-over-TP models built on ``meta``; both with a full checkpoint
(``state_dict=``). Every shard is gathered with torch's own ``full_tensor()`` and
compared bit for bit with the single-process values of the same call and key.
Each rank also reports the version counters it saw move, and torch's own
``torch.nn.init`` on the same DTensors.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import xinit.torch as xt

HERE = Path(__file__).parent
_spec = importlib.util.spec_from_file_location("dtensor_worker", HERE / "dtensor_worker.py")
cases = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cases)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(world: int, args: list[str]) -> list[str]:
    """Run ``python *args`` as ``world`` gloo ranks on this machine; their outputs."""
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "WORLD_SIZE": str(world),
        "OMP_NUM_THREADS": "1",
        "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
        "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    procs = [
        subprocess.Popen([sys.executable, *args], env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for r in range(world)
    ]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=600)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    if any(p.returncode for p in procs):
        pytest.fail("a rank failed:\n" + "\n---\n".join(log[-4000:] for log in logs))
    return logs


def _job(world: int, out: Path) -> dict:
    _launch(world, [str(HERE / "dtensor_worker.py"), str(out)])
    return torch.load(out, weights_only=False)


@pytest.fixture(scope="module")
def reference():
    return cases.reference()


@pytest.fixture(scope="module", params=[2, 4], ids=["world2", "world4"])
def job(request, tmp_path_factory):
    world = request.param
    return world, _job(world, tmp_path_factory.mktemp(f"world{world}") / "out.pt")


def _bits(t: torch.Tensor) -> torch.Tensor:
    t = torch.view_as_real(t) if t.is_complex() else t
    return t.contiguous().view(torch.uint8)


def _equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit for bit (bf16 and complex included)."""
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(_bits(a), _bits(b))


def test_dropins_write_each_shard_with_its_slice(job, reference):
    world, out = job
    for pname, _, _ in cases.PLACEMENTS[world]:
        for name, *_ in cases.CALLS:
            got, want = out[f"{pname}/{name}"], reference[name]
            assert _equal(got, want), f"{pname}/{name}"


def test_each_rank_draws_only_its_shard(job):
    """The engine is asked for the local shard's elements and no more (inside a request,
    orthogonal draws the whole matrix and sparse the selection numbers of the shard's
    columns: the region is still the shard's)."""
    world, out = job
    for rank_counts in out["counts"]:
        for case, (drawn, local) in rank_counts.items():
            if case.endswith("/constant"):
                assert drawn == 0, case  # written with fill_, nothing drawn
            else:
                assert drawn == local, case


def test_replicate_gives_the_full_values_on_every_rank(job, reference):
    world, out = job
    # full_tensor() of a Replicate DTensor is rank 0's local tensor; the counts show every
    # rank drew its whole (replicated) tensor
    for rank_counts in out["counts"]:
        for name, *_ in cases.CALLS:
            drawn, local = rank_counts[f"R/{name}"]
            assert drawn == local == reference[name].numel() or name == "constant"


def test_without_key_every_rank_takes_rank_0s_seed(job, reference):
    _, out = job
    assert _equal(out["nokey"], reference["nokey"])
    for n, _ in cases.mlp().named_parameters():
        assert _equal(out[f"nokey_init.{n}"], reference[f"nokey_init.{n}"]), n
        assert _equal(out[f"nokey_apply.{n}"], reference[f"nokey_init.{n}"]), n  # apply_fn


def test_partial_placement_is_refused_untouched(job):
    _, out = job
    assert "Partial" in out["partial_error"]
    assert out["partial_untouched"]


@pytest.mark.parametrize("case", ["tp_init", "tp_meta", "fsdp"])
def test_models_equal_the_single_process_model(job, reference, case):
    _, out = job
    for n, _ in cases.mlp().named_parameters():
        assert _equal(out[f"{case}.{n}"], reference[f"{case}.{n}"]), n


@pytest.mark.parametrize("case", ["conv1d_init", "conv1d_meta"])
def test_layouts_map_shards_to_canonical_regions(job, reference, case):
    """Hugging Face's Conv1D stores (in, out): a shard of stored dim 0 is a region of
    canonical dim 1, and the values are the single-process model's."""
    _, out = job
    for n in cases.CONV1D_PLAN:
        assert _equal(out[f"{case}.{n}"], reference[f"{case}.{n}"]), n


def test_fsdp_materialize_trains_on_the_written_storage(job, reference):
    """After materialize, FSDP2's forward all-gathers the written shards: the output is
    the single-process model's."""
    _, out = job
    model = cases.mlp()
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(reference[f"fsdp.{n}"])
    torch.manual_seed(0)
    x = torch.randn(3, 6)
    torch.testing.assert_close(out["fsdp_forward"], model(x).detach(), rtol=1e-6, atol=1e-6)


def test_fsdp_materialize_allocates_only_the_local_shards(job):
    """Each rank's storage is its shard padded to ceil(rows / world) rows (FSDP2's
    layout), never the global tensor."""
    world, out = job
    for storage, global_bytes, rows in out["fsdp_storage"]:
        assert storage == global_bytes // rows * -(-rows // world)


def test_fsdp_over_tensor_parallel(job, reference):
    world, out = job
    if world != 4:
        pytest.skip("a 2x2 mesh needs 4 ranks")
    assert any("_StridedShard" in p for p in out["fsdp_tp_placements"])
    for n, _ in cases.mlp().named_parameters():
        assert _equal(out[f"fsdp_tp.{n}"], reference[f"fsdp_tp.{n}"]), n


# ------------------------------------------------------------ version counters


def test_torch_moves_the_dtensors_counter_not_its_local_tensors(job):
    """What torch's own in-place initializers do on a DTensor, on every rank (one that
    holds none of the tensor too: 5 and 3 rows over 4 ranks): the DTensor's counter
    moves (by the number of in-place ops they run: trunc_normal_ two, dirac_ three), its
    local tensor's does not (DTensor writes it below autograd). sparse_ is refused (and
    orthogonal_ of a wide matrix: ``t_`` has no sharding strategy)."""
    _, out = job
    for rank_versions in out["versions"]:
        theirs = rank_versions["torch"]
        assert "got mixed torch.Tensor and DTensor" in theirs["sparse"]
        ran = {name: v for name, v in theirs.items() if not isinstance(v, str)}
        assert {"normal", "uniform", "xavier_uniform", "constant", "eye", "dirac"} <= set(ran)
        for name, (moved, local_moved) in ran.items():
            assert moved >= 1 and local_moved == 0, name


def test_dropins_move_the_dtensors_counter_as_torch_does(job):
    """Every drop-in moves the DTensor's counter once per call and leaves its local
    tensor's alone, on every rank and placement: also where the rank holds nothing of
    the tensor, where the shard is cut into several blocks (``_StridedShard``), and for
    fills (written by torch's ``fill_``)."""
    world, out = job
    for rank_versions in out["versions"]:
        theirs = rank_versions["torch"]
        for pname, _, _ in cases.PLACEMENTS[world]:
            for name, *_ in cases.CALLS:
                assert rank_versions[f"{pname}/{name}"] == (1, 0), f"{pname}/{name}"
                if not isinstance(theirs[name], str):
                    assert (theirs[name][0] > 0, theirs[name][1]) == (True, 0), name


def test_models_move_the_dtensors_counters(job):
    """initialize, apply_fn and materialize move each DTensor parameter's counter once,
    its local tensor's not at all; a plain parameter (a norm under tensor parallelism)
    moves as before."""
    _, out = job
    plain = {"3.weight", "3.bias"}  # not in TP_PLAN
    for rank_versions in out["versions"]:
        for case in ("tp_init", "nokey_apply", "ckpt_tp_init"):
            for n, (moved, local_moved) in rank_versions[case].items():
                if n in plain:
                    assert local_moved is None and moved > 0, (case, n)
                else:
                    assert (moved, local_moved) == (1, 0), (case, n)
        for n, (version, local_version) in rank_versions["tp_meta"].items():
            assert version == 1 and (local_version == 0 or n in plain), n  # new tensors
        for n, (version, _) in rank_versions["fsdp"].items():
            assert version == 1, n


def test_refused_calls_move_no_counter(job):
    _, out = job
    for rank_versions in out["versions"]:
        assert rank_versions["partial"] == (0, 0)
        assert rank_versions["negative_std"] == (0, 0)
        for n, moved in rank_versions["ckpt_refused"].items():
            assert moved[0] == 0 and moved[1] in (0, None), n


# ----------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("case", [c for c, _ in cases.CHECKPOINT_CASES])
def test_checkpoint_loads_each_rank_its_slice(job, reference, case):
    """A full checkpoint into sharded parameters (tensor parallel, FSDP2 from a
    ``.safetensors`` file, FSDP2 over tensor parallelism from a dict and from a file,
    DTensor entries): each rank
    holds its slice of the checkpoint's tensors (cast to the parameter's dtype), the
    other parameters are the single-process draws."""
    world, out = job
    if case.startswith("ckpt_fsdp_tp") and world != 4:
        pytest.skip("a 2x2 mesh needs 4 ranks")
    sd = cases.checkpoint()
    for n, _ in cases.mlp().named_parameters():
        assert _equal(out[f"{case}.{n}"], reference[f"{case}.{n}"]), n
        if n in sd:
            assert _equal(out[f"{case}.{n}"], sd[n].float()), n


def test_safetensors_checkpoint_is_read_per_shard(job):
    """From a .safetensors path, each rank reads its shards' blocks of the checkpoint
    (FSDP2's Shard(0): exactly its rows), not the whole tensors."""
    world, out = job
    for rank_reads in out["reads"]:
        read, local = rank_reads["ckpt_fsdp"]
        assert read == local


def test_checkpoint_dtensor_entries_refused_untouched(job):
    """A DTensor entry for a plain parameter (its full_tensor() would be a collective
    xinit cannot promise every rank runs) or on another mesh is refused before anything
    is written or drawn, by initialize and materialize alike."""
    _, out = job
    for key in ("ckpt_refused", "ckpt_refused_meta"):
        message = out[key]
        assert "3.weight: a DTensor in the checkpoint, a plain tensor in the model" in message
        assert "0.weight: a DTensor on the device mesh" in message
        assert out[f"{key}_untouched"], key


def test_plain_tensors_take_no_collective():
    """Outside torch.distributed (no process group), the drop-ins and initialize work as before."""
    w = torch.empty(4, 3)
    assert xt.normal_(w, key=0) is w
    xt.initialize(torch.nn.Linear(3, 2))


def test_docs_scripts_run_on_2_ranks(tmp_path):
    """The torchrun scripts of docs/sharding.md (not run in-process by test_docs) run as
    2 gloo ranks; their own asserts compare with the single-process values."""
    page = HERE.parent / "docs" / "sharding.md"
    spec = importlib.util.spec_from_file_location("test_docs", HERE / "test_docs.py")
    docs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(docs)
    scripts = [b["source"] for b in docs.code_blocks(page)
               if b["kind"] == "skip" and "test_docs_scripts_run_on_2_ranks" in b["arg"]]
    assert len(scripts) == 2
    for k, source in enumerate(scripts):
        path = tmp_path / f"script{k}.py"
        path.write_text(source)
        _launch(2, [str(path)])
