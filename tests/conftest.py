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

    qualified, bare = dict(layers._qualified), dict(layers._bare)
    yield
    layers._qualified.clear()
    layers._qualified.update(qualified)
    layers._bare.clear()
    layers._bare.update(bare)
    layers._cache.clear()
