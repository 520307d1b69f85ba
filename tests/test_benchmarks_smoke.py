"""The benchmark code paths on tiny sizes, so benchmarks/ cannot rot. No timing asserts."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def run():
    return _load("run")


@pytest.fixture(scope="module")
def models():
    return _load("models")


def test_model_sizes_are_the_published_ones(models):
    assert models.parameter_count(models.MODELS["gpt2"](device="meta")) == 124_439_808
    assert models.parameter_count(models.MODELS["resnet50"](device="meta")) == 25_557_032
    big = models.MODELS["transformer_1b"]()
    assert all(p.is_meta for p in big.parameters())
    assert 0.95e9 < models.parameter_count(big) < 1.1e9
    assert big.lm_head.weight is big.wte.weight


def test_tiny_models_run_forward_and_by_hand_recipe_matches_torch_bounds(models):
    gpt = models.MODELS["gpt_tiny"]()
    assert gpt(torch.zeros(1, 5, dtype=torch.long)).shape == (1, 5, 97)
    net = models.MODELS["resnet_tiny"]()
    assert net.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(7.0)
    models.torch_default_by_hand(net)
    bound = 1 / math.sqrt(net.fc.weight.shape[1])  # kaiming_uniform(a=sqrt(5)) bound
    assert net.fc.weight.abs().max() <= bound and net.fc.weight.std() > 0
    assert torch.all(net.bn1.weight == 1) and torch.all(net.bn1.bias == 0)


@pytest.fixture(scope="module")
def flax_models():
    pytest.importorskip("flax")
    return _load("flax_models")


def test_flax_model_sizes_are_the_published_ones(flax_models):
    import jax

    key = jax.random.key(0)
    gpt = flax_models.MODELS["gpt2"]().abstract(key)  # eval_shape: nothing allocated
    assert isinstance(gpt["params"]["wte"]["embedding"], jax.ShapeDtypeStruct)
    assert flax_models.parameter_count(gpt) == 124_439_808  # head tied to wte
    resnet = flax_models.MODELS["resnet50"]().abstract(key)
    assert flax_models.parameter_count(resnet) == 25_557_032
    assert set(resnet) == {"params", "batch_stats"}


@pytest.mark.parametrize("name", ["gpt_tiny", "resnet_tiny"])
def test_flax_tiny_models_mirror_the_torch_ones(flax_models, models, name):
    """Same names and shapes as the torch model; xinit.flax draws its values bit for bit."""
    import jax
    import numpy as np
    from flax import traverse_util

    import xinit.flax as xf
    from xinit.flax.model import canonical_name
    from xinit.torch.model import initialize

    fm = flax_models.MODELS[name]()
    abstract = fm.abstract(jax.random.key(0))
    tm = models.MODELS[name]()
    assert flax_models.parameter_count(abstract) == models.parameter_count(tm)
    # canonical names (after rename) and torch-layout shapes are the torch model's
    ours = {p.name: p.shape for p in xf.describe(abstract, rename=fm.rename)}
    theirs = {n: tuple(t.shape) for n, t in (*tm.named_parameters(), *tm.named_buffers())
              if not n.endswith("num_batches_tracked")}
    assert ours == theirs
    # flax's own init with torch's defaults builds the same tree
    peer = flax_models.MODELS[name]("torch")
    assert jax.tree.structure(jax.eval_shape(peer.module.init, jax.random.key(0), *peer.inputs)
                              ) == jax.tree.structure(abstract)

    variables = xf.initialize(abstract, "torch_default", key=3, rename=fm.rename)
    initialize(tm, "torch_default", key=3)
    state = tm.state_dict()
    for (coll, *path), value in traverse_util.flatten_dict(variables).items():
        ref = state[fm.rename(canonical_name(path, stats=coll == "batch_stats"))].numpy()
        if path[-1] == "kernel":  # torch (out, in, *k) -> flax (*k, in, out)
            ref = ref.transpose(*range(2, ref.ndim), 1, 0)
        np.testing.assert_array_equal(np.asarray(value), ref, err_msg="/".join(path))

    out = jax.jit(fm.module.apply)(variables, *fm.inputs)  # eager apply: ~4x slower
    assert out.shape == ((1, 8, 97) if name == "gpt_tiny" else (1, 10))
    assert np.isfinite(np.asarray(out)).all()


def test_nnx_gpt_mirrors_the_torch_one(flax_models, models):
    """GPT-2 in nnx: its parameter count is GPT-2 small's, its nnx paths are the torch names
    (no rename), and xinit.flax draws the torch model's values bit for bit."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    import xinit.flax as xf
    from xinit.torch.model import initialize

    big = nnx.eval_shape(lambda: flax_models.NNX_MODELS["gpt2"](nnx.Rngs(0)))
    assert sum(x.size for x in jax.tree.leaves(nnx.state(big, nnx.Param))) == 124_439_808
    abstract = nnx.eval_shape(lambda: flax_models.NNX_MODELS["gpt_tiny"](nnx.Rngs(0)))
    tm = models.MODELS["gpt_tiny"]()
    assert {p.name: p.shape for p in xf.describe(nnx.state(abstract))} == {
        n: tuple(t.shape) for n, t in tm.named_parameters()}
    module = xf.initialize(abstract, "torch_default", key=3)
    initialize(tm, "torch_default", key=3)
    state = dict(tm.named_parameters())
    for path, var in nnx.to_flat_state(nnx.state(module)):
        name = ".".join(map(str, path[:-1])) + "." + {"kernel": "weight", "embedding": "weight",
                                                      "scale": "weight"}.get(path[-1], path[-1])
        ref = state[name].detach().numpy()
        np.testing.assert_array_equal(np.asarray(var[...]), ref.T if path[-1] == "kernel" else ref,
                                      err_msg=name)
    out = module(jnp.zeros((1, 8), jnp.int32))
    assert out.shape == (1, 8, 97) and np.isfinite(np.asarray(out)).all()


def test_interleaved_returns_a_median_per_callable(run):
    calls = []
    res = run.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3)
    assert set(res) == {"a", "b"} and all(v >= 0 for v in res.values())
    assert calls == ["a", "b"] * 5  # two warm-up rounds, then interleaved repeats


def test_full_case_list_covers_every_initializer_and_dtype(run):
    cases = run.single_cases(quick=False)
    import xinit.torch as xt

    fns = {c[0] for c in cases}
    assert fns == {n for n in xt.__all__ if n.endswith("_") and n != "calculate_gain"} - {
        n for n in xt.__all__ if not hasattr(torch.nn.init, n)}
    assert {c[3] for c in cases} == {"float32", "bfloat16", "float64"}
    assert ("trunc_normal_", {"std": 0.02, "a": -0.04, "b": 0.04}, (4096, 4096), "float32") in cases
    assert any(c[0] == "sparse_" and c[2] == (1024, 8192) for c in cases)


@pytest.mark.slow
def test_single_flax_and_warm_models_on_tiny_sizes(run, tmp_path):
    rows = run.run(quick=True, out=tmp_path, sections=("single", "flax", "models"), repeats=1,
                   sizes=[(16, 16)], dtypes=["float32"], model_names=["gpt_tiny"],
                   notes_path=None, flax_limit=2)
    single = [r for r in rows if r.section == "single"]
    assert {r.case for r in single} >= {"uniform_", "orthogonal_", "sparse_", "dirac_"}
    assert all(r.xinit_s > 0 for r in single)
    assert any(r.ratio is not None for r in single)
    assert any(r.section == "models" and r.ratio is not None for r in rows)
    md = (tmp_path / "performance.md").read_text()
    assert "## Targets" in md and "| `uniform_` | 16x16 | float32 |" in md
    assert (tmp_path / "performance.png").stat().st_size > 1000
    data = json.loads((tmp_path / "performance.json").read_text())
    assert len(data["rows"]) == len(rows)


@pytest.mark.slow
def test_flax_models_section_on_tiny_models(run, tmp_path):
    pytest.importorskip("flax")
    # not quick: the eager peer too (ResNet's batch_stats path: the test above)
    rows = run.run(quick=False, out=tmp_path, sections=("flax_models",), repeats=1,
                   model_names=["gpt_tiny"], notes_path=None)
    assert {r.section for r in rows} == {"flax_models"}
    linen = [r for r in rows if r.case == "gpt_tiny (xinit.flax initialize)"]
    nnx_rows = [r for r in rows if r.case == "gpt_tiny nnx (xinit.flax initialize)"]
    assert len(linen) + len(nnx_rows) == len(rows)
    assert {r.peer for r in linen} == {"flax jax.jit(model.init)", "flax model.init (eager)",
                                       "flax jax.jit(model.init), torch's defaults"}
    assert {r.peer for r in nnx_rows} == {"nnx constructor (eager)", "nnx.jit(constructor)"}
    assert all(r.xinit_s > 0 and r.ratio is not None for r in rows)
    assert all(r.extra["jax_compiles_warm"] == 0 for r in linen)  # warm: nothing compiles
    md = (tmp_path / "performance.md").read_text()
    assert "## Whole models (Flax), warm" in md
    assert "| gpt_tiny (xinit.flax initialize) | 0.0M params | flax jax.jit(model.init) |" in md
    assert "| gpt_tiny nnx (xinit.flax initialize) | 0.0M params | nnx.jit(constructor) |" in md
    assert (tmp_path / "performance.png").stat().st_size > 1000


@pytest.mark.parametrize("who", ["flax", "xinit"])
def test_cold_flax_paths_in_process(flax_models, who):
    import jax

    cold = _load("cold")
    out = cold.main(["--framework", "flax", "--model", "gpt_tiny", "--who", who])
    assert out["seconds"] > 0 and out["peak_rss"] > out["state_bytes"] > 0
    abstract = flax_models.MODELS["gpt_tiny"]().abstract(jax.random.key(0))
    assert out["state_bytes"] == 4 * flax_models.parameter_count(abstract)  # float32, no stats
    with pytest.raises(SystemExit):
        cold.main(["--framework", "flax", "--model", "gpt_tiny", "--who", "torch"])


@pytest.mark.slow
def test_flax_cold_section_in_fresh_processes(run, tmp_path):
    pytest.importorskip("flax")
    rows = run.run(out=tmp_path, sections=("flax_cold",), cold_models=["gpt_tiny"],
                   cold_repeats=1, notes_path=None)
    assert [r.case for r in rows] == ["gpt_tiny (Flax) cold", "gpt_tiny (Flax) cold, filled cache"]
    assert all(r.ratio is not None and r.extra["compiles"] >= 1 for r in rows)
    md = (tmp_path / "performance.md").read_text()
    assert "## Whole models (Flax), cold (fresh process)" in md
    assert "| gpt_tiny (Flax) cold |" in md and "| gpt_tiny (Flax) cold, filled cache |" in md


def test_cold_torch_path_in_process():
    cold = _load("cold")
    out = cold.main(["--model", "gpt_tiny", "--who", "torch"])
    assert out["seconds"] > 0 and out["peak_rss"] > out["state_bytes"] > 0


@pytest.mark.slow
def test_cold_xinit_subprocess_with_a_persistent_cache(run, tmp_path):
    out = run._cold_once("gpt_tiny", "xinit", str(tmp_path / "cache"))
    assert out["seconds"] > 0 and out["compiles"] >= 1 and out["cache"]
    assert out["peak_rss"] > out["state_bytes"] > 0
    assert any((tmp_path / "cache").iterdir())  # programs were written to the cache


def test_targets_table_reports_missing_and_met(run):
    row = run.Row("single", "uniform_", "4096x4096", "float32", 1.0, "torch.nn.init", 2.0)
    lines = run.target_lines([row])
    assert any(line.startswith("| uniform_ 4096x4096 | 2x | 2.00x | yes |") for line in lines)
    assert any("sparse_" in line and "not measured" in line for line in lines)


def test_spread_targets_judge_every_run_rows_by_their_lowest_run(run):
    def rows(uniform, sparse):
        return [run.Row("single", "uniform_", "4096x4096", "float32", 1.0, "torch.nn.init", uniform),
                run.Row("single", "sparse_", "1024x8192", "float32", 1.0, "torch.nn.init", sparse)]

    runs = [rows(2.5, 11.0), rows(1.9, 9.0), rows(2.2, 12.0)]
    lines = run.target_lines(runs[-1], runs)
    # uniform_ must hold in every run: its lowest run (1.9x) misses 2x
    assert "| uniform_ 4096x4096 | 2x, every run | 1.90x / 2.20x / 2.50x | **no** |" in lines
    # sparse_ is judged by its median (11x)
    assert "| sparse_ 1024x8192, 0.9 | 10x | 9.00x / 11.00x / 12.00x | yes |" in lines
    spread = run.spread_lines(runs)
    assert "| uniform_ 4096x4096 float32 | torch.nn.init | 2.50 | 1.90 | 2.20 | 1.90 | 2.20 | 2.50 |" in spread


def test_runs_accumulate_into_one_json_and_render_limits_and_history(run, tmp_path, monkeypatch):
    fake = {"cpu": {"model": "Test CPU", "capability": "AVX512", "cores": 2}, "n": 1024,
            "all_cores": {"hash": {"xinit threefry (unit uniforms)": {"ns_per_value": 1.0,
                                                                      "values_per_s": 1e9}},
                          "memory": {"copy JAX buffer -> torch tensor, warm": {
                              "GB_per_s": 4.0, "ns_per_value": 1.0}}}}
    fake["one_core"] = {"hash": fake["all_cores"]["hash"], "memory": fake["all_cores"]["memory"]}
    fake["call_us"] = {"xinit chunk program, after 200 us idle": 61.25}
    fake["import_jax_s"] = 0.5
    monkeypatch.setattr(run.limits, "measure", lambda n, one_core=True: fake)
    measured = iter([2.0, 3.0, 4.0])

    def once(*args):
        return [run.Row("single", "uniform_", "4096x4096", "float32", 0.01, "torch.nn.init",
                        0.01 * next(measured))]

    monkeypatch.setattr(run, "measure_once", once)
    history = tmp_path / "history.md"
    history.write_text("Old machine numbers.\n")
    run.run(out=tmp_path, sections=("limits", "single"), runs=2, notes_path=None,
            history_path=history)
    run.run(out=tmp_path, sections=("single",), runs=1, accumulate=True, notes_path=None,
            history_path=history)
    data = json.loads((tmp_path / "performance.json").read_text())
    assert [r["rows"][0]["ratio"] for r in data["runs"]] == pytest.approx([2.0, 3.0, 4.0])
    assert data["limits"]["cpu"]["model"] == "Test CPU"  # kept from the first invocation
    md = (tmp_path / "performance.md").read_text()
    assert "| uniform_ 4096x4096 | 2x, every run | 2.00x / 3.00x / 4.00x | yes |" in md
    # floor: 16.8 M values * (1 ns hash + 4 bytes / 4 GB/s) / 2 cores = 16.8 ms
    assert "| uniform_ 4096x4096 | 16.8 M | 30.0 | 10.0 | 16.8 | 0.6x | 1.79x | 2x |" in md
    assert "| xinit chunk program, after 200 us idle | 61.2 |" in md
    assert "`import jax` in a fresh process that has imported torch: 0.50 s." in md
    assert "## Run-to-run spread (3 complete runs)" in md
    assert md.rstrip().endswith("## History\n\nOld machine numbers.")


def test_call_latency_limits_are_measured(run):
    lat = run.limits.measure_call(calls=20)
    assert set(lat) == {"xinit chunk program, back to back", "xinit chunk program, after 200 us idle",
                        "torch uniform_, after 200 us idle"}
    assert all(0 < us < 1e5 for us in lat.values())


def test_apply_rows_on_tiny_models(run):
    rows = run.bench_apply(["resnet_tiny"], repeats=1)
    assert [r.case for r in rows] == ["resnet_tiny model.apply(init_weights), xinit.torch",
                                      "resnet_tiny model.apply(apply_fn(recipe))",
                                      "resnet_tiny initialize(model, recipe)"]
    assert all(r.ratio is not None and r.peer == run.APPLY_PEER for r in rows)


def test_init_weights_recipe_matches_the_function(models):
    """The recipe and the drop-in function write the same distributions (same keys: same values)."""
    import xinit.torch as xt
    from xinit.torch.model import initialize

    a, b = models.MODELS["resnet_tiny"](), models.MODELS["resnet_tiny"]()
    b.load_state_dict(a.state_dict())
    torch.manual_seed(0)
    a.apply(models.init_weights(xt))
    initialize(b, models.init_weights_recipe(), key=0, unmatched="ignore")
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert pa.shape == pb.shape
        if name.endswith("bias") or "bn" in name or "downsample.1" in name:
            assert torch.equal(pa, pb), name  # zeros / ones on both sides
        else:  # same distribution, different keys: same std within sampling error
            assert abs(pa.std().item() / pb.std().item() - 1) < 0.25, name


@pytest.mark.slow
def test_flax_peer_uses_the_persistent_cache_it_is_given(tmp_path):
    """With --cache, the flax side runs with the same JAX cache settings as xinit's, so the
    'filled cache' rows compare like with like: its program lands in the directory."""
    pytest.importorskip("flax")
    cmd = [sys.executable, str(BENCH / "cold.py"), "--framework", "flax", "--model", "gpt_tiny",
           "--who", "flax", "--cache", str(tmp_path / "c")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert any((tmp_path / "c").iterdir())


def test_port_speed_code_paths():
    pytest.importorskip("flax")
    port = _load("port")
    rows = port.bench_speed("gpt_tiny", repeats=1)
    assert [r["case"] for r in rows] == ["gpt_tiny torch_to_flax (in memory)",
                                         "gpt_tiny flax_to_torch (in place)"]
    assert all(r["xinit_s"] > 0 and r["peer_s"] > 0 and r["trace_s"] > 0 for r in rows)
    assert 4 * port.parameter_count(port.memory_config(1.0)) >= 2**30  # the full run: >= 1 GiB


@pytest.mark.slow
def test_port_sections_on_a_tiny_model(run, tmp_path):
    pytest.importorskip("flax")
    pytest.importorskip("safetensors")
    rows = run.run(out=tmp_path, sections=("port", "port_memory"), repeats=1, port_model="gpt_tiny",
                   port_gib=0.0005, port_shape={"width": 32, "heads": 4, "vocab": 97,
                                                "positions": 16}, notes_path=None)
    assert [r.section for r in rows] == ["port", "port", "port_memory"]
    mem = rows[-1].extra
    assert mem["tensors"] > 0 and mem["peak_rss"] >= mem["rss_before"] > 0
    assert mem["checkpoint_bytes"] >= 0.0005 * 2**30
    md = (tmp_path / "performance.md").read_text()
    assert "## Checkpoint porting (`xinit.port`)" in md
    assert "| gpt_tiny torch_to_flax (in memory) |" in md
    assert "port safetensors -> Flax safetensors: peak RSS / checkpoint bytes | <= 1.25 |" in md


@pytest.mark.slow
def test_torch_sharding_section_on_a_tiny_model(run, tmp_path):
    """benchmarks/sharding_torch.py through run.py: 2 gloo ranks, a one-block model."""
    rows = run.run(out=tmp_path, sections=("torch_sharding",), notes_path=None,
                   torch_sharding_shape={"world": 2, "layers": 1, "width": 32, "vocab": 100})
    assert [r.case for r in rows] == ["FSDP2 materialize, 2 ranks, first call",
                                      "FSDP2 materialize, 2 ranks, second call"]
    for r in rows:
        assert r.xinit_s > 0 and r.peer_s > 0
        assert r.extra["local_bytes"] > 0 and r.extra["rise"] >= 0 and r.extra["peer_rise"] >= 0
        if r.extra["anon_rise"] is not None:  # the peak at the end: its parts add up to it
            assert abs(r.extra["anon_rise"] + r.extra["file_rise"] - r.extra["rise"]) <= 3 * 2**20
    md = (tmp_path / "performance.md").read_text()
    assert "## FSDP2 materialize on gloo ranks" in md and "| of it anonymous |" in md


def test_sharding_section_on_a_tiny_model(run, tmp_path):
    pytest.importorskip("flax")
    rows = run.run(out=tmp_path, sections=("sharding",), sharding_model="gpt_tiny", notes_path=None)
    (row,) = rows
    assert row.extra["parameters"] == 29_088 and row.xinit_s > 0 and row.peer_s > 0
    assert row.extra["peak_rss"] >= row.extra["rss_base"] > 0
    md = (tmp_path / "performance.md").read_text()
    assert "## Sharded initialization over 8 CPU devices" in md
    assert "| sharded gpt_tiny over 8 CPU devices: peak RSS / parameter bytes (rise) | <= 1.25 |" in md


def test_no_init_section_on_a_tiny_gpt2(run, tmp_path):
    pytest.importorskip("transformers")
    rows = run.run(out=tmp_path, sections=("no_init",), repeats=1, no_init_model="gpt2_tiny",
                   notes_path=None)
    (row,) = rows
    assert row.section == "no_init" and row.xinit_s > 0 and row.peer_s > 0
    assert row.note == "RNG untouched: yes, head tied: yes"
    md = (tmp_path / "performance.md").read_text()
    assert "## Building a transformers model under `no_init`" in md
    assert "| gpt2_tiny (transformers) built under no_init |" in md


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's /proc")
def test_a_child_measures_its_own_peak_not_its_parents():
    """The memory rows run their measured step in a child of a large process (run.py holds
    ~4 GiB by then); ``ru_maxrss`` carries the parent's peak into the child across
    fork + exec (it read 3.7-4.1 GiB for a 0.9 GiB conversion), ``rss.peak_rss_bytes`` does not."""
    import numpy as np

    ballast = np.ones(512 * 2**20 // 8)  # this process: at least 512 MiB resident
    probe = "import rss; print(rss.peak_rss_bytes())"
    out = subprocess.run([sys.executable, "-c", probe], cwd=BENCH, capture_output=True,
                         text=True, check=True)
    assert int(out.stdout) < ballast.nbytes / 4  # a bare interpreter's peak, not this one's


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's /proc")
def test_rss_parts_tell_allocated_memory_from_mapped_files():
    """``rss.rss_parts`` (the FSDP2 rows' split of a rise): 64 MiB written into a new
    array is anonymous memory; the RSS is its parts' sum."""
    probe = ("import numpy as np, rss\n"
             "a = rss.rss_parts(); x = np.ones(64 * 2**20 // 8); b = rss.rss_parts(); n = rss.rss_bytes()\n"
             "print(b['anon'] - a['anon'], b['file'] - a['file'], n - sum(b.values()))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=BENCH, capture_output=True,
                         text=True, check=True)
    anon, file, rest = (int(v) for v in out.stdout.split())
    assert 64 * 2**20 <= anon < 66 * 2**20
    assert abs(file) < 2**20 and abs(rest) < 2**20
