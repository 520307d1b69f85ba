"""FSDP2 materialization on 4 CPU ranks: ``xinit.torch.materialize`` vs torch's own recipe.

    PYTHONPATH=src .venv/bin/python benchmarks/sharding_torch.py            # GPT-2 small shape
    PYTHONPATH=src .venv/bin/python benchmarks/sharding_torch.py --layers 2 --width 256 --vocab 8000

A GPT-2-shaped model (token and position embeddings, ``--layers`` blocks of
LayerNorm + qkv/out/fc/proj ``nn.Linear``) is built on ``meta`` and sharded with
FSDP2's ``fully_shard`` (every block, then the root) over ``--world`` gloo ranks
(subprocesses on this machine). Then, per rank:

- **xinit**: ``xinit.torch.materialize(model, "cpu", "torch_default", key=0)``:
  allocates each local shard and draws only its region of the single-process values;
- **torch**: ``model.to_empty(device="cpu")`` then every module's ``reset_parameters()``
  (the FSDP2 documentation's recipe; DTensor random ops, torch's RNG tracker).

Both sides give the same distributions (torch's defaults). Each side runs in its own
set of fresh processes, twice on a fresh meta model each time ("first" includes
xinit's program compilation and the DTensor RNG tracker's setup; "second" is warm).
Reported per rank: wall time, and the peak RSS increase over the RSS before the
step (``VmHWM`` reset through ``/proc/self/clear_refs``), beside the rank's local
parameter bytes. Where the peak is the RSS at the step's end (it is, for both
sides: nothing is freed at the end), the increase is also split into anonymous
memory (what the process allocated) and pages of mapped files (the code of
shared libraries, e.g. XLA's compiler on its first use). The slowest rank's time
and the largest increase are the headline. Nothing here asserts; ``--json``
writes the raw numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from rss import peak_rss_bytes, rss_bytes, rss_parts

HERE = Path(__file__).resolve().parent


# ------------------------------------------------------------------ the model


def gpt2_shaped(layers: int, width: int, vocab: int, positions: int = 1024):
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1 = nn.LayerNorm(width)
            self.qkv = nn.Linear(width, 3 * width)
            self.out = nn.Linear(width, width)
            self.ln_2 = nn.LayerNorm(width)
            self.fc = nn.Linear(width, 4 * width)
            self.proj = nn.Linear(4 * width, width)

        def forward(self, x):
            q, k, v = self.qkv(self.ln_1(x)).chunk(3, dim=-1)
            x = x + self.out(torch.nn.functional.scaled_dot_product_attention(q, k, v))
            return x + self.proj(torch.nn.functional.gelu(self.fc(self.ln_2(x))))

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(vocab, width)
            self.wpe = nn.Embedding(positions, width)
            self.blocks = nn.ModuleList(Block() for _ in range(layers))
            self.ln_f = nn.LayerNorm(width)

        def forward(self, ids):
            x = self.wte(ids) + self.wpe(torch.arange(ids.shape[-1]))
            for b in self.blocks:
                x = b(x)
            return self.ln_f(x)

    return Model()


# ------------------------------------------------------------------ one rank


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM (peak RSS) to the current RSS


def _sharded_meta_model(args, mesh):
    import torch
    from torch.distributed.fsdp import fully_shard

    with torch.device("meta"):
        model = gpt2_shaped(args.layers, args.width, args.vocab)
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _step(side: str, model) -> None:
    if side == "xinit":
        import xinit.torch as xt

        xt.materialize(model, "cpu", "torch_default", key=0)
    else:
        import torch

        model.to_empty(device="cpu")
        with torch.no_grad():
            for m in model.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()


def rank_main(args) -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    if args.side == "xinit":
        import xinit.torch  # noqa: F401  (imports outside the measured step, as torch's)
    result = {"rank": rank, "runs": []}
    for _ in range(2):
        model = _sharded_meta_model(args, mesh)
        dist.barrier()
        before, parts_before = rss_bytes(), rss_parts()
        _reset_peak()
        t0 = time.perf_counter()
        _step(args.side, model)
        seconds = time.perf_counter() - t0
        peak = peak_rss_bytes()
        after, parts_after = rss_bytes(), rss_parts()
        at_end = peak - after <= 2**20 and parts_before.keys() == parts_after.keys() >= {"anon", "file"}
        local = sum(p.to_local().nbytes for p in model.parameters())
        result["runs"].append({"seconds": seconds, "rss_before": before, "peak_increase": peak - before,
                               # the peak's parts, when the peak is the end (else None)
                               "anon_increase": parts_after["anon"] - parts_before["anon"] if at_end else None,
                               "file_increase": parts_after["file"] - parts_before["file"] if at_end else None,
                               "local_param_bytes": local,
                               "global_param_bytes": sum(p.nbytes for p in model.parameters())})
        if args.check:  # a forward pass on the FSDP2 storage
            model(torch.zeros(1, 8, dtype=torch.long))
        del model
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, result)
    if rank == 0:
        Path(args.result).write_text(json.dumps(gathered))
    dist.barrier()
    dist.destroy_process_group()


# ------------------------------------------------------------------ the driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_side(side: str, args, tmp: Path) -> list[dict]:
    result = tmp / f"{side}.json"
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "WORLD_SIZE": str(args.world), "OMP_NUM_THREADS": "1",
           "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"}
    cmd = [sys.executable, __file__, "--rank-main", "--side", side, "--result", str(result),
           "--layers", str(args.layers), "--width", str(args.width), "--vocab", str(args.vocab)]
    if args.check:
        cmd.append("--check")
    procs = [subprocess.Popen(cmd, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)})
             for r in range(args.world)]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise RuntimeError(f"{side}: a rank failed (exit codes {codes})")
    return json.loads(result.read_text())


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def summarize(side: str, ranks: list[dict], run: int) -> dict:
    runs = [r["runs"][run] for r in ranks]
    worst = max(runs, key=lambda r: r["peak_increase"] / max(r["local_param_bytes"], 1))
    split = all(r["anon_increase"] is not None for r in runs)
    return {"side": side, "run": ("first", "second")[run],
            "seconds": max(r["seconds"] for r in runs),
            "peak_increase": max(r["peak_increase"] for r in runs),
            "anon_increase": max(r["anon_increase"] for r in runs) if split else None,
            "file_increase": max(r["file_increase"] for r in runs) if split else None,
            "local_param_bytes": max(r["local_param_bytes"] for r in runs),
            "worst_ratio": worst["peak_increase"] / worst["local_param_bytes"],
            "global_param_bytes": runs[0]["global_param_bytes"]}


def table(rows: list[dict]) -> list[str]:
    mib = 2**20
    out = ["| side | run | slowest rank s | peak RSS increase MiB (max rank) | of it anonymous MiB "
           "| of it file pages MiB | local params MiB | increase / local params |",
           "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        anon, file = (f"{r[k] / mib:.0f}" if r[k] is not None else "-" for k in ("anon_increase", "file_increase"))
        out.append(f"| {r['side']} | {r['run']} | {r['seconds']:.2f} | {r['peak_increase'] / mib:.0f} "
                   f"| {anon} | {file} | {r['local_param_bytes'] / mib:.0f} | {r['worst_ratio']:.2f} |")
    return out


def bench(world=4, layers=12, width=768, vocab=50257, check=False) -> tuple[list[dict], dict]:
    """Both sides, in fresh processes each; returns the summary rows and the setup."""
    import tempfile

    args = argparse.Namespace(world=world, layers=layers, width=width, vocab=vocab, check=check)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for side in ("xinit", "torch"):
            ranks = run_side(side, args, Path(tmp))
            rows += [summarize(side, ranks, k) for k in (0, 1)]
    setup = {"world": world, "layers": layers, "width": width, "vocab": vocab,
             "global_param_bytes": rows[0]["global_param_bytes"], "cpu": cpu_model(),
             "cores": os.cpu_count(), "load": os.getloadavg()}
    return rows, setup


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world", type=int, default=4)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--check", action="store_true", help="run a forward pass after each step")
    ap.add_argument("--json", help="write the summary rows and setup here")
    ap.add_argument("--rank-main", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--side", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rank_main:
        rank_main(args)
        os._exit(0)
    rows, setup = bench(args.world, args.layers, args.width, args.vocab, args.check)
    print(f"FSDP2 materialize, {setup['world']} gloo ranks, {setup['layers']} layers x {setup['width']}, "
          f"vocab {setup['vocab']}: {setup['global_param_bytes'] / 2**20:.0f} MiB of float32 parameters; "
          f"CPU {setup['cpu']} ({setup['cores']} cores), load {setup['load'][0]:.2f}")
    print("\n".join(table(rows)))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "setup": setup}, indent=1))


if __name__ == "__main__":
    main()
