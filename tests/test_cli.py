"""The ``xinit`` command line: report, list, recipes, bench, and its usage errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("scipy")
pytest.importorskip("rich")

from xinit import _report, cli  # noqa: E402


def run_cli(capsys, *argv):
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_report_subset_writes_markdown_and_histograms(capsys, tmp_path):
    out_dir = tmp_path / "rep"
    rc, out, err = run_cli(
        capsys, "report", "--quick", "--only", "uniform,constant,glorot_normal",
        "--backends", "core,torch,flax", "--out", str(out_dir),
    )
    assert rc == 0, out + err
    md = (out_dir / "report.md").read_text()
    assert "| initializer |" in md and "KS p" in md and "bit identity" in md
    for name in ("uniform", "constant", "glorot_normal"):
        assert (out_dir / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert f"`{name}(" in md
    assert " 0 failed" in out
    assert "FAIL" not in md


def test_report_quick_selects_a_subset():
    quick = _report.select_cases(quick=True)
    assert {c.name for c in quick} == set(_report.QUICK)
    assert len(quick) < len(_report.CASES)
    assert [c.name for c in _report.select_cases(["normal"])] == ["normal"]


def test_report_fails_when_xinit_disagrees(capsys, monkeypatch):
    """The report is not a rubber stamp: a wrong distribution gives a FAIL row and exit 1."""
    real = _report.xinit_sample

    def too_wide(case, backend, seed):
        x = real(case, backend, seed)
        return None if x is None else x * 1.1

    monkeypatch.setattr(_report, "xinit_sample", too_wide)
    rc, out, _ = run_cli(capsys, "report", "--only", "uniform", "--backends", "torch")
    assert rc == 1
    assert "FAIL" in out and "outside" in out and "KS p" in out


def test_report_flags_broken_bit_identity(monkeypatch):
    case = next(c for c in _report.CASES if c.name == "normal")
    real = _report.xinit_sample

    def shifted(case, backend, seed):
        x = real(case, backend, seed)
        return np.nextafter(x, np.inf) if backend == "core" else x

    monkeypatch.setattr(_report, "xinit_sample", shifted)
    ref = _report.reference_sample(case, 1)
    row = _report.check_row(case, "core", 0, ref)
    assert row.status == "FAIL" and row.bits == "!= torch"


def test_report_skips_flax_rows_without_xinit_flax(capsys, monkeypatch):
    monkeypatch.setattr(_report, "flax_module", lambda: None)
    rc, out, err = run_cli(capsys, "report", "--only", "normal,he_uniform")
    assert rc == 0
    assert "xinit.flax is not available" in err
    assert "2 skipped" in out and "0 failed" in out


@pytest.mark.parametrize("case", _report.CASES, ids=lambda c: f"{c.name}-{c.family}")
def test_every_case_has_a_formula(case):
    mean, std, bounds = _report.expected(case)
    assert case.name in _report.FORMULAS
    assert bounds is None or bounds[0] <= bounds[1]


def test_unknown_backend_is_a_usage_error(capsys):
    rc, out, err = run_cli(capsys, "report", "--backends", "core,tensorflow")
    assert rc == 2
    assert err.strip().count("\n") == 0
    assert "unknown backend 'tensorflow'" in err and "core, torch, flax" in err


def test_unknown_initializer_is_a_usage_error(capsys):
    rc, _, err = run_cli(capsys, "report", "--only", "he_uniformm")
    assert rc == 2 and "unknown initializer 'he_uniformm'" in err


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_unwritable_out_is_a_usage_error(capsys, tmp_path, where):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    out = blocker if where == "file" else blocker / "sub"
    rc, _, err = run_cli(capsys, "report", "--only", "uniform", "--out", str(out))
    assert rc == 2
    assert err.startswith("xinit report: error: cannot write to --out")
    assert err.strip().count("\n") == 0


def test_list_shows_every_initializer_with_its_formula(capsys):
    rc, out, _ = run_cli(capsys, "list")
    assert rc == 0
    for name in _report.FORMULAS:
        assert name in out
    assert "gain * sqrt(6 / (fan_in + fan_out))" in out
    assert "restricted to [a, b]; a, b absolute" in out  # brackets are text, not markup
    assert "torch.nn.init.kaiming_normal_" in out and "jax.nn.initializers.he_uniform" in out


def test_recipes_lists_builtins_with_their_rules(capsys):
    recipes = pytest.importorskip("xinit.core.recipes")
    rc, out, _ = run_cli(capsys, "recipes")
    assert rc == 0
    for name in recipes.RECIPES:
        assert f"{name} (" in out
    # torch_default's first rule: Linear/Conv weights are kaiming_uniform(a=sqrt(5)).
    assert "linear, conv, conv_transpose" in out and "kaiming_uniform(a=2.236" in out


def test_recipes_prints_a_users_rules(capsys, monkeypatch):
    recipes = pytest.importorskip("xinit.core.recipes")
    from xinit.core import Normal, Zeros

    mine = recipes.Recipe("mine", (
        recipes.Rule(Normal(0.0, 0.02), kind="linear", role="weight", name="head.*"),
        recipes.Rule(Zeros(), role="bias", regex=r"blocks\.[0-9]+\..*"),
    ))
    monkeypatch.setattr(cli, "load_recipes", lambda: {"mine": mine})
    rc, out, _ = run_cli(capsys, "recipes")
    assert rc == 0
    assert "mine (2 rules, first match wins)" in out
    assert "head.*" in out and "normal(mean=0.0, std=0.02)" in out
    assert r"re:blocks\.[0-9]+\..*" in out


def test_recipes_shows_every_condition_of_a_rule(capsys, monkeypatch):
    """Conditions beyond kind/role/name (e.g. ``within``) are printed, not hidden."""
    recipes = pytest.importorskip("xinit.core.recipes")
    import dataclasses

    from xinit.core import Ones

    extra = [f for f in dataclasses.fields(recipes.Rule)
             if f.name not in ("init", "kind", "role", "name", "regex")]
    if not extra:
        pytest.skip("Rule has no further conditions")
    field = extra[0]
    value = 2 if "ndim" in field.name else "Block"
    rule = recipes.Rule(Ones(), **{field.name: value})
    monkeypatch.setattr(cli, "load_recipes", lambda: {"r": recipes.Recipe("r", (rule,))})
    rc, out, _ = run_cli(capsys, "recipes")
    assert rc == 0 and f"{field.name}={value}" in out


def test_recipes_without_recipe_module_is_one_line(capsys, monkeypatch):
    monkeypatch.setattr(cli, "load_recipes", lambda: None)
    rc, out, err = run_cli(capsys, "recipes")
    assert rc == 1 and out == ""
    assert err.strip().endswith("(xinit.core.recipes is not available)")


def test_bench_without_suite_is_one_clear_line(capsys, monkeypatch):
    monkeypatch.setattr(cli, "find_benchmarks", lambda: None)
    rc, _, err = run_cli(capsys, "bench")
    assert rc == 2
    assert err.strip() == (
        "xinit bench: benchmarks/run.py not found; run it from a source checkout of xinit"
    )


def test_bench_runs_the_quick_set_and_prints_ratios(capsys, monkeypatch, tmp_path):
    import json

    script = tmp_path / "benchmarks" / "run.py"
    script.parent.mkdir()
    script.write_text("")
    calls = []

    def fake_call(cmd, cwd):
        calls.append((cmd, cwd))
        out = Path(cmd[cmd.index("--out") + 1])
        rows = [{"section": "single", "case": "uniform_", "shape": "4096x4096",
                 "dtype": "float32", "peer": "torch.nn.init", "xinit_s": 0.05,
                 "peer_s": 0.1, "ratio": 2.0}]
        (out / "performance.json").write_text(json.dumps({"meta": {}, "rows": rows}))
        return 0

    monkeypatch.setattr(cli, "find_benchmarks", lambda: script)
    monkeypatch.setattr(cli.subprocess, "call", fake_call)
    rc, out, _ = run_cli(capsys, "bench")
    assert rc == 0
    (cmd, cwd), = calls
    assert cmd[:3] == [sys.executable, str(script), "--quick"] and cwd == tmp_path
    assert cmd[3] == "--out" and "docs" not in cmd[4]  # never overwrites docs/performance.md
    assert "uniform_" in out and "2.00x" in out and "50.0" in out


def test_console_entry_point_usage_error():
    proc = subprocess.run(
        [sys.executable, "-c", "import sys, xinit.cli; sys.exit(xinit.cli.main())",
         "report", "--backends", "mxnet"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "xinit report: error: unknown backend 'mxnet'; choose from core, torch, flax"
    ]


@pytest.mark.slow
def test_full_report_agrees(capsys):
    """What `make report` checks: every initializer on every backend agrees."""
    rc, out, err = run_cli(capsys, "report")
    assert rc == 0, out
    assert " 0 failed" in out
