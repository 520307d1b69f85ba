"""The public surface: import isolation and the install hints of the adapters."""

import inspect
import subprocess
import sys

import pytest

import xinit
import xinit.core
import xinit.core.debug


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_import_xinit_loads_neither_torch_nor_flax():
    r = _run(
        "import sys, xinit, xinit.core; print(sorted(m for m in ('torch', 'flax') if m in sys.modules))"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_xinit_imports_neither_transformers_nor_timm():
    """Their layers and recipes are known by name; neither library is ever imported."""
    r = _run("import sys, xinit, xinit.torch, xinit.core.recipes_hf, xinit.core.recipes_timm; "
             "print([m for m in ('transformers', 'timm') if m in sys.modules])")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_xinit_torch_leaves_torch_distributed_unimported():
    """DTensor and FSDP2 are recognised once the user has imported them (no DTensor
    exists before): importing them eagerly would add ~0.5 s to every cold start."""
    r = _run("import sys, torch, xinit.torch, xinit.torch.model\n"
             "t = torch.empty(8, 8); xinit.torch.normal_(t); xinit.torch.initialize(torch.nn.Linear(4, 4))\n"
             "print([m for m in ('torch.distributed.tensor', 'torch.distributed.fsdp') if m in sys.modules])")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_xinit_torch_without_torch_names_the_extra():
    r = _run("import sys; sys.modules['torch'] = None; import xinit.torch")
    assert r.returncode != 0
    assert "ImportError" in r.stderr and "pip install 'xinit[torch]'" in r.stderr


@pytest.mark.parametrize("module", ["xinit.flax"])
def test_flax_adapter_never_imports_torch(module):
    r = _run(f"import sys, {module}; print('torch' in sys.modules)")
    if "No module named" in r.stderr:
        pytest.skip(f"{module} not present")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


@pytest.mark.parametrize("name", xinit.core.__all__)
def test_core_all_resolves(name):
    assert getattr(xinit.core, name) is getattr(xinit, name)


def test_version():
    assert xinit.__version__.count(".") == 2


# ------------------------------------------------------------ the user surface of xinit.core

INTERNALS = ("compile_count", "key_data", "stable_hash", "draw", "Resolved", "resolve", "PlanEntry",
             "DTYPES", "FLOAT_DTYPES")


def test_core_all_is_the_user_surface_and_internals_live_in_debug():
    import xinit.core.debug as debug

    for name in INTERNALS:
        assert name not in xinit.core.__all__, name
        assert name in debug.__all__ and getattr(debug, name) is not None
    for name in ("sample", "Layout", "compute_fans", "calculate_gain", "Recipe", "Rule", "Plan",
                 "UnmatchedError", "VarianceScaling", "enable_compilation_cache", "fold_in_name",
                 "XinitError"):
        assert name in xinit.core.__all__, name
    assert xinit.core.debug.key_data(0).tolist() == [0, 0]


@pytest.mark.parametrize("name", xinit.core.debug.__all__)
def test_debug_names_resolve(name):
    assert getattr(xinit.core.debug, name) is not None


# ------------------------------------------------------------ one API shape across the adapters


def _signature(fn):
    return [(p.name, p.default, p.kind) for p in inspect.signature(fn).parameters.values()]


# Keyword-only arguments only one adapter has, after the shared ones: torch's checkpoint
# loading and reproducibility manifest; flax's result shardings (JAX's out_shardings; torch's
# DTensors carry their own placements).
TORCH_ONLY = {"initialize": ["state_dict", "manifest", "save_manifest"], "plan": ["state_dict"],
              "describe": []}
FLAX_ONLY = {"initialize": ["shardings"], "plan": [], "describe": []}


@pytest.mark.parametrize("name", ["initialize", "plan", "describe"])
def test_model_level_functions_take_the_same_arguments_in_both_adapters(name):
    """The same arguments in the same order with the same defaults; an adapter's own extras
    come after them, keyword-only, defaulting to None (so a call written for one adapter
    runs unchanged on the other)."""
    xt = pytest.importorskip("xinit.torch")
    xf = pytest.importorskip("xinit.flax")
    torch_sig, flax_sig = _signature(getattr(xt, name)), _signature(getattr(xf, name))
    shared = len(flax_sig) - len(FLAX_ONLY[name])
    assert len(torch_sig) - len(TORCH_ONLY[name]) == shared
    assert torch_sig[:shared] == flax_sig[:shared]
    assert flax_sig[shared:] == [(n, None, inspect.Parameter.KEYWORD_ONLY) for n in FLAX_ONLY[name]]
    assert torch_sig[shared:] == [(n, None, inspect.Parameter.KEYWORD_ONLY) for n in TORCH_ONLY[name]]


def test_initialize_signature_is_the_agreed_one():
    xf = pytest.importorskip("xinit.flax")
    assert [(n, d, k.name) for n, d, k in _signature(xf.initialize)] == [
        ("model", inspect.Parameter.empty, "POSITIONAL_OR_KEYWORD"),
        ("recipe", "torch_default", "POSITIONAL_OR_KEYWORD"),
        ("key", None, "KEYWORD_ONLY"),
        ("unmatched", "error", "KEYWORD_ONLY"),
        ("rename", None, "KEYWORD_ONLY"),
        ("shardings", None, "KEYWORD_ONLY"),
    ]


def test_unmatched_vocabulary_is_one_for_every_model_level_function():
    from xinit.core.recipes import UNMATCHED

    xt = pytest.importorskip("xinit.torch")
    xf = pytest.importorskip("xinit.flax")
    assert UNMATCHED == ("error", "ignore", "zeros")
    for fn in (xt.initialize, xt.materialize, xt.apply_fn, xf.initialize):
        params = inspect.signature(fn).parameters
        assert params["unmatched"].default == "error" and params["rename"].default is None
        assert params["key"].kind.name == "KEYWORD_ONLY"
    import torch

    for call in (lambda: xt.initialize(torch.nn.Linear(2, 2), key=0, unmatched="skip"),
                 lambda: xt.materialize(torch.nn.Linear(2, 2), key=0, unmatched="skip"),
                 lambda: xt.apply_fn(key=0, unmatched="skip"),
                 lambda: xf.initialize({"params": {}}, key=0, unmatched="skip")):
        with pytest.raises(ValueError, match=r"unmatched must be one of \['error', 'ignore', 'zeros'\]"):
            call()
