"""Engine-level reliability: running out of memory is an exception, never a process abort,
and leaves the tensor untouched (issue 15, bug 1); an interrupt never leaves a tensor
partly written or modified with its version counter unchanged (bug 4)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading

import jax
import numpy as np
import pytest
import torch
from torch import nn

import xinit.core as xc
import xinit.torch as xt
from xinit.core import host_memory, packing, programs
from xinit.core.errors import OutOfMemoryError

# ------------------------------------------------------------------ out of memory

OOM_SCRIPT = textwrap.dedent(r"""
    import gc, json, resource, sys, time
    import numpy as np, scipy.linalg, scipy.special  # mapped before the limit
    import jax, jax.numpy as jnp, torch
    import xinit.flax as xf, xinit.torch as xt
    from xinit.core import engine

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    SHAPES = {"normal_": (4096, 4096), "sparse_": (4096, 4096), "orthogonal_": (3000, 3000),
              "flax_orthogonal": (3000, 3000)}

    def address_space():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * resource.getpagesize()

    def settled_address_space():  # XLA frees released buffers asynchronously
        last = None
        while (now := address_space()) != last:
            last = now
            time.sleep(0.1)
        return now

    def call(case, t):
        if case == "normal_":
            return xt.normal_(t, 0.0, 0.02, key=5)
        if case == "sparse_":
            return xt.sparse_(t, 0.9, key=5)
        if case == "orthogonal_":
            return xt.orthogonal_(t, key=5)
        return xf.orthogonal()(jax.random.key(5), SHAPES[case])

    for arg in sys.argv[1:]:  # case=headroom,headroom,... (MiB of address space)
        case, headrooms = arg.split("=")
        shape = SHAPES[case]
        reference = call(case, torch.empty(shape))  # compiles every program the call needs
        reference = np.asarray(reference) if case == "flax_orthogonal" else reference.clone()
        for headroom in map(int, headrooms.split(",")):
            t = torch.full(shape, 3.0)
            getattr(engine, "release_buffers", lambda: None)()  # buffers allocated under the limit
            gc.collect()
            resource.setrlimit(resource.RLIMIT_AS, (settled_address_space() + headroom * 2**20, hard))
            try:
                out = call(case, t)
                outcome = "ok"
            except MemoryError as err:
                outcome = "MemoryError" + ("+RuntimeError" if isinstance(err, RuntimeError) else "")
            finally:
                resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
            if case == "flax_orthogonal":
                state = "untouched" if outcome != "ok" else (
                    "complete" if np.array_equal(np.asarray(out), reference) else "wrong")
            else:
                state = ("untouched" if bool((t == 3.0).all()) else
                         "complete" if torch.equal(t, reference) else "partial")
            print(json.dumps([case, headroom, outcome, state]), flush=True)
            del t
""")


def _glibc() -> bool:
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError, AttributeError):
        return False


def _run_oom(cases: dict[str, list[int]]) -> list:
    # glibc: a fixed mmap threshold (large blocks are mapped and unmapped, never kept in the
    # heap after a free) and one arena (no thread heap with address space reserved ahead),
    # so what a draw allocates needs new address space under the limit.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_ARENA_MAX": "1"}
    args = [f"{case}={','.join(map(str, hs))}" for case, hs in cases.items()]
    proc = subprocess.run([sys.executable, "-c", OOM_SCRIPT, *args], capture_output=True, text=True,
                          timeout=900, env=env)
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("[")]
    assert proc.returncode == 0, (f"the process died ({proc.returncode}) after {results}:\n"
                                  f"{proc.stderr[-3000:]}")
    return results


def _check_oom(results, tight: dict[str, int] | None = None):
    for case, headroom, outcome, state in results:
        if outcome == "ok":
            assert state == "complete", (case, headroom, outcome, state)
        else:
            assert outcome == "MemoryError+RuntimeError", (case, headroom, outcome)  # OutOfMemoryError
            assert state == "untouched", (case, headroom, outcome, state)
    if tight and _glibc():  # these headrooms are too small: the tests above did run the error path
        outcomes = {(case, h): o for case, h, o, _ in results}
        assert all(outcomes[item] != "ok" for item in tight.items()), outcomes


def test_out_of_memory_is_an_exception_and_changes_nothing():
    """In a subprocess under an address-space limit (RLIMIT_AS), for ``normal_`` running out
    while its chunk buffers are made, ``sparse_`` and ``orthogonal_`` whose programs do not
    fit, and ``xinit.flax.orthogonal()``: the call raises OutOfMemoryError (a MemoryError
    and a RuntimeError) instead of aborting the process (``Check failed:
    buffer_.IsConcrete()``), and the tensor holds its old values."""
    tight = {"normal_": 24, "sparse_": 40, "orthogonal_": 20, "flax_orthogonal": 20}
    _check_oom(_run_oom({case: [h] for case, h in tight.items()}), tight)


@pytest.mark.slow
def test_out_of_memory_sweep():
    """Every headroom from almost nothing to enough: each call either raises with the tensor
    untouched or completes with the right values; the process never dies."""
    headrooms = [0, 2, 8, 16, 24, 32, 40, 56, 80, 120, 200, 400, 800]
    _check_oom(_run_oom({case: headrooms for case in ("normal_", "sparse_", "orthogonal_", "flax_orthogonal")}))


def test_compiler_out_of_memory_is_out_of_memory_error(monkeypatch):
    """LLVM's "Unable to allocate section memory" while compiling (before anything is
    written) is an OutOfMemoryError, and the tensor is untouched."""
    programs.clear_caches()  # the draw below has to compile

    def failing_compile(self, *args, **kwargs):
        raise jax.errors.JaxRuntimeError("INTERNAL: Failed to materialize symbols: "
                                         "Unable to allocate section memory!")

    monkeypatch.setattr(jax.stages.Lowered, "compile", failing_compile)
    t = torch.full((64, 64), 3.0)
    version = t._version
    with pytest.raises(OutOfMemoryError, match="out of memory") as info:
        xt.normal_(t, key=0)
    assert isinstance(info.value, MemoryError) and isinstance(info.value, RuntimeError)
    assert torch.equal(t, torch.full((64, 64), 3.0)) and t._version == version


def test_a_failed_run_finishes_no_request_not_even_an_empty_one(monkeypatch):
    """Zero-element requests are finished only once the rest is drawn: a sink moves a
    version counter at ``finish`` (a DTensor's, on a rank that holds none of it), so a
    run that fails while compiling must finish nothing."""
    from xinit.core import engine, specs

    programs.clear_caches()

    def failing_compile(self, *args, **kwargs):
        raise jax.errors.JaxRuntimeError("INTERNAL: Unable to allocate section memory!")

    monkeypatch.setattr(jax.stages.Lowered, "compile", failing_compile)

    class Recording:
        in_place = True

        def __init__(self):
            self.finished, self.stopped = [], False

        def write(self, chunk):
            return False

        def finish(self, index):
            self.finished.append(index)

        def stop(self):
            self.stopped = True

    plan = specs.Normal().plan((8, 4))
    reqs = [engine.request(plan, 0, (8, 4), "float32", region=((0, 0), (0, 4))),
            engine.request(plan, 0, (8, 4), "float32")]
    sink = Recording()
    with pytest.raises(OutOfMemoryError):
        engine.run(reqs, sink)
    assert sink.finished == [] and sink.stopped
    monkeypatch.undo()
    sink = Recording()
    engine.run(reqs, sink)
    assert sorted(sink.finished) == [0, 1]


def test_ynnpack_workspace_failure_is_out_of_memory_error():
    """XLA:CPU's matrix products (YNNPACK) report a failed workspace allocation as a bare
    "YNNPACK operation failed" (seen in the sweep above for orthogonal_)."""
    with pytest.raises(OutOfMemoryError, match="YNNPACK") as info, programs.memory_errors("xinit: drawing"):
        raise jax.errors.JaxRuntimeError("INTERNAL: YNNPACK operation failed: error")
    assert isinstance(info.value, MemoryError) and isinstance(info.value, RuntimeError)


def test_other_runtime_errors_pass_through_unchanged(monkeypatch):
    programs.clear_caches()

    def failing_compile(self, *args, **kwargs):
        raise jax.errors.JaxRuntimeError("INTERNAL: something else")

    monkeypatch.setattr(jax.stages.Lowered, "compile", failing_compile)
    with pytest.raises(jax.errors.JaxRuntimeError, match="something else") as info:
        xt.normal_(torch.empty(8, 8), key=0)
    assert not isinstance(info.value, MemoryError)


# ------------------------------------------------------------------ interrupts

SMALL_CHUNKS = 4  # rows per chunk: 1 Ki-element chunks, so small tensors span several


def _sigint_after(monkeypatch, calls: int, module=host_memory, name="write_range"):
    """Make the ``calls``-th call of ``module.name`` send SIGINT to this process (delivered
    to the main thread at its next bytecode, as a Ctrl-C would be)."""
    real = getattr(module, name)
    count = [0]

    def write(*args, **kwargs):
        real(*args, **kwargs)
        count[0] += 1
        if count[0] == calls:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(module, name, write)
    return count


def test_ctrl_c_during_a_chunked_drop_in_finishes_the_tensor(monkeypatch):
    monkeypatch.setattr(packing, "MAX_ROWS", SMALL_CHUNKS)
    t = torch.zeros(5000)  # five chunks
    version = t._version
    count = _sigint_after(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        xt.normal_(t, key=3)
    assert count[0] == 5, "the write stopped part-way"
    monkeypatch.undo()
    assert torch.equal(t, torch.from_numpy(np.array(xc.normal(3, (5000,)))))
    assert t._version > version


def test_keyboard_interrupt_raised_inside_the_copy_still_bumps_the_version(monkeypatch):
    """An exception raised by the copy itself cannot be deferred: the tensor is left part
    written, but its version counter says it changed (autograd then refuses stale graphs)."""
    monkeypatch.setattr(packing, "MAX_ROWS", SMALL_CHUNKS)
    real = host_memory.write_range
    count = [0]

    def write(*args, **kwargs):
        count[0] += 1
        if count[0] == 2:
            raise KeyboardInterrupt
        real(*args, **kwargs)

    monkeypatch.setattr(host_memory, "write_range", write)
    t = torch.zeros(5000)
    version = t._version
    with pytest.raises(KeyboardInterrupt):
        xt.uniform_(t, key=3)
    assert t._version > version
    assert t[:1024].count_nonzero() > 0 and t[2048:].count_nonzero() == 0


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(40, 30)  # 1200 + 30
        self.b = nn.Linear(60, 50)  # 3000 + 50: spans chunks
        self.c = nn.Linear(20, 10)
        self.n = nn.LayerNorm(30)


def test_ctrl_c_during_initialize_leaves_every_tensor_untouched_or_complete(monkeypatch):
    monkeypatch.setattr(packing, "MAX_ROWS", SMALL_CHUNKS)
    reference = xt.initialize(_Model(), key=4)
    model = _Model()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(7.0)
    versions = {n: p._version for n, p in model.named_parameters()}
    real = host_memory.write_range
    fired = []

    def write(dst, offset, src):  # Ctrl-C right after the first part of a tensor is written
        real(dst, offset, src)
        if not fired and len(src) < dst.size:
            fired.append(dst.shape)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(host_memory, "write_range", write)
    with pytest.raises(KeyboardInterrupt):
        xt.initialize(model, key=4)
    states = {}
    for (name, p), ref in zip(model.named_parameters(), reference.parameters(), strict=True):
        if torch.equal(p, ref):
            states[name] = "complete"
            assert p._version > versions[name], name
        else:
            assert torch.equal(p, torch.full_like(p, 7.0)), f"{name} is partly written"
            assert p._version == versions[name], name
            states[name] = "untouched"
    assert fired and set(states.values()) == {"complete", "untouched"}, states


def test_a_user_sigint_handler_is_left_alone(monkeypatch):
    """Only Python's own KeyboardInterrupt handler is deferred; a handler the user installed
    runs when the signal arrives, and the draw completes."""
    monkeypatch.setattr(packing, "MAX_ROWS", SMALL_CHUNKS)
    calls = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: calls.append(signum))
    try:
        _sigint_after(monkeypatch, 1)
        t = xt.normal_(torch.zeros(5000), key=3)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert calls == [signal.SIGINT]
    monkeypatch.undo()
    assert torch.equal(t, torch.from_numpy(np.array(xc.normal(3, (5000,)))))
    assert signal.getsignal(signal.SIGINT) is previous


def test_drop_ins_work_off_the_main_thread(monkeypatch):
    monkeypatch.setattr(packing, "MAX_ROWS", SMALL_CHUNKS)
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("t", xt.normal_(torch.zeros(5000), key=3)))
    thread.start()
    thread.join()
    assert torch.equal(out["t"], torch.from_numpy(np.array(xc.normal(3, (5000,)))))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_sigint_handler_is_restored_after_every_run():
    xt.normal_(torch.zeros(100), key=0)
    with pytest.raises(ValueError):
        xt.kaiming_uniform_(torch.zeros(3, 3), mode="fan_sum", key=0)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
