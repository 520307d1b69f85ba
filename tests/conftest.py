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
