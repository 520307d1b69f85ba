"""Fans and layouts: canonical fans equal torch's, and flax-layout fans equal the canonical ones."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from jax._src.nn.initializers import _compute_fans

from xinit.core import FLAX, TORCH, Layout, canonical_shape, compute_fans
from xinit.core.errors import ShapeError

SHAPES = [
    (5, 3),
    (16, 8, 5),
    (16, 8, 3, 3),
    (16, 8, 3, 3, 3),
    (1, 1),
    (7, 2, 1, 4),
    (0, 3),
    (3, 0, 2),
]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_torch_layout_fans_equal_torch(shape):
    expected = torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))
    assert compute_fans(shape, TORCH) == expected


@pytest.mark.parametrize("shape", [s for s in SHAPES if 0 not in s], ids=str)
def test_flax_layout_fans_equal_jax(shape):
    flax_shape = (*shape[2:], shape[1], shape[0])
    fan_in, fan_out = _compute_fans(flax_shape, -2, -1)
    assert compute_fans(flax_shape, FLAX) == (int(fan_in), int(fan_out))


def test_dense_kernel_fans_follow_layout():
    # A flax Dense kernel (in=100, out=400): fan_in is 100.
    assert compute_fans((100, 400), FLAX).fan_in == 100
    assert compute_fans((100, 400), TORCH).fan_in == 400


@given(st.lists(st.integers(1, 7), min_size=2, max_size=5))
@settings(max_examples=60, deadline=None)
def test_fans_invariant_under_layout_permutation(shape):
    shape = tuple(shape)
    flax_shape = tuple(shape[p] for p in FLAX.inverse_permutation(len(shape)))
    assert canonical_shape(flax_shape, FLAX) == shape
    assert compute_fans(flax_shape, FLAX) == compute_fans(shape, TORCH)


@given(st.lists(st.integers(1, 5), min_size=2, max_size=5), st.data())
@settings(max_examples=40, deadline=None)
def test_explicit_axes_layout(shape, data):
    ndim = len(shape)
    i = data.draw(st.integers(-ndim, ndim - 1))
    o = data.draw(st.integers(-ndim, ndim - 1).filter(lambda o: o % ndim != i % ndim))
    fan_in, fan_out = _compute_fans(tuple(shape), i, o)
    assert compute_fans(shape, Layout(i, o)) == (int(fan_in), int(fan_out))


@pytest.mark.parametrize("shape", [(), (5,)], ids=str)
def test_fewer_than_two_dims_raises_like_torch(shape):
    with pytest.raises(ValueError) as torch_err:
        torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))
    with pytest.raises(ShapeError, match="fewer than 2 dimensions") as ours:
        compute_fans(shape)
    assert isinstance(ours.value, type(torch_err.value))
    assert str(shape) in str(ours.value)


def test_layout_rejects_same_axis():
    with pytest.raises(ShapeError, match="same axis"):
        compute_fans((3, 4), Layout(0, -2))
