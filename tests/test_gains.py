"""calculate_gain equals torch's for every name and parameter, and fails the same way."""

import pytest
import torch

from xinit.core import NONLINEARITIES, calculate_gain
from xinit.core.errors import NonlinearityError

CASES = [(name, None) for name in NONLINEARITIES] + [
    ("leaky_relu", 0.2),
    ("leaky_relu", 0),
    ("leaky_relu", 5**0.5),
    ("leaky_relu", -1.5),
    ("relu", 0.3),
    ("tanh", "ignored"),
]


@pytest.mark.parametrize("name,param", CASES, ids=lambda v: str(v))
def test_gain_equals_torch(name, param):
    ours = calculate_gain(name, param)
    theirs = torch.nn.init.calculate_gain(name, param)
    assert ours == theirs
    assert type(ours) is type(theirs)


@pytest.mark.parametrize(
    "name,param", [("gelu", None), ("leaky_relu", True), ("leaky_relu", "0.2"), (None, None)]
)
def test_gain_errors_match_torch(name, param):
    with pytest.raises(Exception) as theirs:
        torch.nn.init.calculate_gain(name, param)
    with pytest.raises(NonlinearityError) as ours:
        calculate_gain(name, param)
    assert isinstance(ours.value, type(theirs.value))


def test_unknown_nonlinearity_lists_allowed():
    with pytest.raises(ValueError, match="gelu.*'relu'.*'selu'"):
        calculate_gain("gelu")
