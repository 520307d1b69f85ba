"""Comparing a model initialized by xinit with the same model initialized by its own library."""

from __future__ import annotations

import torch
from scipy import stats

P_MIN = 1e-4


def tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer by its first name (tied tensors once)."""
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def assert_same_init(ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
    """Tensor by tensor: exact where the library's value is deterministic (a constant, a
    buffer, a zeroed row), else a two-sample KS test (p > 1e-4) against the library's draw."""
    mine, ref = tensors(ours), tensors(theirs)
    assert mine.keys() == ref.keys()
    buffers = dict(theirs.named_buffers())
    for name, a in ref.items():
        a, b = a.detach(), mine[name].detach()
        assert a.shape == b.shape and a.dtype == b.dtype, name
        if not a.is_floating_point() or name in buffers or bool(a.min() == a.max()):
            assert torch.equal(a, b), name
            continue
        if a.dim() == 2:  # padding rows: zero in both
            assert torch.equal((a == 0).all(dim=1), (b == 0).all(dim=1)), name
        p = stats.ks_2samp(a.double().numpy().ravel(), b.double().numpy().ravel()).pvalue
        assert p > P_MIN, (name, p, float(a.std()), float(b.std()))
