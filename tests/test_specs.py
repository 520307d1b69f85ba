"""Specs: hashable, round-trip through their config, validated at construction."""

import pytest

from xinit.core import REGISTRY, from_config, specs
from xinit.core.errors import (
    BoundsError,
    ModeError,
    ModeTypeError,
    NonlinearityError,
    ZeroSizeError,
)

EXAMPLES = [
    specs.Uniform(-1.0, 2.0),
    specs.Normal(0.5, 0.02),
    specs.TruncNormal(0.0, 0.02, -0.04, 0.04),
    specs.Constant(0.3),
    specs.Ones(),
    specs.Zeros(),
    specs.Eye(),
    specs.Dirac(2),
    specs.XavierUniform(2.0),
    specs.XavierNormal(),
    specs.KaimingUniform(5**0.5, "fan_out", "leaky_relu"),
    specs.KaimingNormal(0, "FAN_IN", "relu"),
    specs.Orthogonal(1.5),
    specs.Sparse(0.9, 0.02),
    specs.VarianceScaling(2.0, "fan_geo_avg", "uniform"),
    specs.TruncatedNormal(0.02, -3.0, 1.0),
]


def test_every_registered_spec_has_an_example():
    assert {s.name for s in EXAMPLES} == set(REGISTRY)


@pytest.mark.parametrize("spec", EXAMPLES, ids=lambda s: s.name)
def test_hashable_and_round_trips(spec):
    assert hash(spec) == hash(from_config(spec.to_config()))
    assert from_config(spec.to_config()) == spec
    assert repr(spec).startswith(spec.name + "(")


@pytest.mark.parametrize(
    "build,error,match",
    [
        (lambda: specs.Uniform(1, 0), BoundsError, "a=1.0 > b=0.0"),
        (lambda: specs.Normal(0, -1), BoundsError, "std=-1"),
        (lambda: specs.TruncNormal(0, 0), ZeroSizeError, "std=0"),
        (lambda: specs.TruncNormal(0, 1, 2, 1), BoundsError, "a=2.0 > b=1.0"),
        (lambda: specs.Dirac(0), ZeroSizeError, "groups=0"),
        (lambda: specs.KaimingUniform(0, "fan_avg"), ModeError, r"\['fan_in', 'fan_out'\]"),
        (lambda: specs.KaimingUniform(0, None), ModeTypeError, "None"),
        (lambda: specs.KaimingNormal(0, "fan_in", "gelu"), NonlinearityError, "gelu"),
        (lambda: specs.KaimingNormal(True, "fan_in", "leaky_relu"), NonlinearityError, "True"),
        (lambda: specs.VarianceScaling(1.0, "fan_avgg"), ModeError, "fan_avgg"),
        (lambda: specs.VarianceScaling(1.0, "fan_in", "gauss"), ModeError, "truncated_normal"),
        (lambda: specs.Uniform("x", 1), TypeError, "'x'"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_invalid_arguments_raise_at_construction(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_from_config_unknown_name():
    with pytest.raises(ValueError, match="unknown initializer name 'nope'"):
        from_config({"name": "nope"})


def test_trunc_normal_warns_when_mean_far_from_bounds():
    with pytest.warns(UserWarning, match="mean is more than 2 std from"):
        specs.TruncNormal(5.0, 1.0, -1.0, 1.0)
