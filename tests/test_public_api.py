"""The public surface: import isolation and the install hints of the adapters."""

import subprocess
import sys

import pytest

import xinit
import xinit.core


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
