"""Shared test configuration: markers and a GPU skip."""

import pytest


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device visible to torch (and jax)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def restore_registry():
    """Layer registrations (``xinit.register_layer``) made by a test are undone after it."""
    from xinit.core import layers

    tables = (layers._qualified, layers._bare, layers._patterns)
    saved = [dict(t) for t in tables]
    yield
    for table, old in zip(tables, saved, strict=True):
        table.clear()
        table.update(old)
    layers._cache.clear()
