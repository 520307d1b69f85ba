"""xinit.flax: initializers for Flax, a drop-in for ``jax.nn.initializers``.

Three parts, all returning initializers with jax's ``Initializer`` signature
``init(key, shape, dtype=None, out_sharding=None)`` that plug into linen and nnx::

    import flax.linen as nn
    import xinit.flax as initializers            # instead of jax.nn.initializers
    from xinit.flax import torch_init

    nn.Dense(30, kernel_init=initializers.glorot_normal())                 # JAX's semantics
    nn.Dense(30, kernel_init=torch_init.kaiming_uniform(nonlinearity="relu"))  # torch's
    nn.Dense(30, kernel_init=torch_init.linear_kernel(),                   # torch's layer defaults
             bias_init=torch_init.linear_bias(fan_in=400))

* **jax.nn.initializers' names** (:data:`JAX_NAMES`): ``constant``,
  ``delta_orthogonal``, ``glorot_normal``, ``glorot_uniform``, ``he_normal``,
  ``he_uniform``, ``kaiming_normal``, ``kaiming_uniform``, ``lecun_normal``,
  ``lecun_uniform``, ``normal``, ``ones``, ``orthogonal``, ``truncated_normal``,
  ``uniform``, ``variance_scaling``, ``xavier_normal``, ``xavier_uniform``,
  ``zeros`` and the ``Initializer`` protocol, plus flax's ``zeros_init`` and
  ``ones_init``: JAX's signatures, semantics (``uniform(scale)`` is
  :math:`\\mathcal{U}[0, \\text{scale})`, ``kaiming_normal`` is truncated, ``zeros``
  is an initializer, not a factory), dtypes (also complex), sharding and
  exception types. Equal to JAX in distribution, not in bits.
* :mod:`xinit.flax.torch_init`: ``torch.nn.init``'s functions with torch's
  arguments and distributions, and torch's layer defaults; for the same key a
  flax kernel equals ``xinit.torch``'s weight permuted into flax layout, bit for bit.
* **whole param trees**: :func:`initialize`, :func:`plan`, :func:`describe`,
  :func:`canonical_name`: a recipe over a linen tree or an nnx module, with the
  values ``xinit.torch.initialize`` gives a torch model of the same names;
  :func:`trace` reads a model's layer structure (linen: traced on example inputs,
  nothing computed) so that layer kinds come from its classes.

This module needs only JAX and Flax; it never imports torch.
"""

import importlib.util as _importlib_util

if _importlib_util.find_spec("flax") is None:  # pragma: no cover - needs an env without flax
    raise ImportError("xinit.flax requires Flax; install it with pip install 'xinit[flax]'")

from jax.nn.initializers import Initializer as Initializer

from xinit.core.gains import calculate_gain as calculate_gain

from . import torch_init as torch_init
from ._initializers import JaxInitializer as JaxInitializer
from ._initializers import SpecInitializer as SpecInitializer
from ._native import DeltaOrthogonal as DeltaOrthogonal
from ._native import constant as constant
from ._native import delta_orthogonal as delta_orthogonal
from ._native import glorot_normal as glorot_normal
from ._native import glorot_uniform as glorot_uniform
from ._native import he_normal as he_normal
from ._native import he_uniform as he_uniform
from ._native import kaiming_normal as kaiming_normal
from ._native import kaiming_uniform as kaiming_uniform
from ._native import lecun_normal as lecun_normal
from ._native import lecun_uniform as lecun_uniform
from ._native import normal as normal
from ._native import ones as ones
from ._native import ones_init as ones_init
from ._native import orthogonal as orthogonal
from ._native import truncated_normal as truncated_normal
from ._native import uniform as uniform
from ._native import variance_scaling as variance_scaling
from ._native import xavier_normal as xavier_normal
from ._native import xavier_uniform as xavier_uniform
from ._native import zeros as zeros
from ._native import zeros_init as zeros_init
from .model import Traced as Traced
from .model import canonical_name as canonical_name
from .model import describe as describe
from .model import initialize as initialize
from .model import plan as plan
from .model import trace as trace

#: Every name ``jax.nn.initializers`` exports, in its order: each is here with JAX's meaning.
JAX_NAMES = (
    "constant", "Initializer", "delta_orthogonal", "glorot_normal", "glorot_uniform",
    "he_normal", "he_uniform", "kaiming_normal", "kaiming_uniform", "lecun_normal",
    "lecun_uniform", "normal", "ones", "orthogonal", "truncated_normal", "uniform",
    "variance_scaling", "xavier_normal", "xavier_uniform", "zeros",
)

__all__ = [
    *JAX_NAMES,
    "zeros_init", "ones_init", "JAX_NAMES",
    "torch_init", "calculate_gain",
    "SpecInitializer", "JaxInitializer", "DeltaOrthogonal",
    # whole param trees (xinit.flax.model)
    "initialize", "plan", "describe", "canonical_name", "trace", "Traced",
]

# Names of xinit 0.1 that moved to torch_init (0.2.0 renamed them; see CHANGELOG.md).
_MOVED = {
    "trunc_normal": "torch_init.trunc_normal",
    "eye": "torch_init.eye",
    "dirac": "torch_init.dirac",
    "sparse": "torch_init.sparse",
    "torch_linear_kernel": "torch_init.linear_kernel",
    "torch_linear_bias": "torch_init.linear_bias",
    "torch_conv_kernel": "torch_init.conv_kernel",
    "torch_conv_bias": "torch_init.conv_bias",
    "torch_conv_transpose_kernel": "torch_init.conv_transpose_kernel",
    "torch_conv_transpose_bias": "torch_init.conv_transpose_bias",
    "torch_embedding": "torch_init.embedding",
    "IDENTITY": "torch_init.IDENTITY",
    "CONV_TRANSPOSE": "torch_init.CONV_TRANSPOSE",
    "DROP_INS": "torch_init.DROP_INS",
}


def __getattr__(name: str):
    """Only for names that moved: an ``AttributeError`` that says where they went."""
    if name in _MOVED:
        raise AttributeError(
            f"xinit.flax.{name} moved to xinit.flax.{_MOVED[name]} in xinit 0.2.0 (the top level "
            "of xinit.flax now has jax.nn.initializers' names and meanings; torch's semantics "
            "live in xinit.flax.torch_init; see CHANGELOG.md)"
        )
    raise AttributeError(f"module 'xinit.flax' has no attribute {name!r}")
