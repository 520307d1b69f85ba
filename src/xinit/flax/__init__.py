"""xinit.flax: xinit initializers with JAX's ``init(key, shape, dtype)`` signature, for Flax.

Three families, all returning a :class:`SpecInitializer` (a jax
``Initializer``) that plugs into linen and nnx layers::

    import flax.linen as nn
    import xinit.flax as xf

    nn.Dense(30, kernel_init=xf.kaiming_uniform(nonlinearity="relu"))      # torch semantics
    nn.Dense(30, kernel_init=xf.glorot_normal())                           # jax semantics
    nn.Dense(30, kernel_init=xf.torch_linear_kernel(),                     # torch's defaults
             bias_init=xf.torch_linear_bias(fan_in=400))

* **torch drop-ins** — ``uniform``, ``normal``, ``trunc_normal``, ``constant``,
  ``ones``, ``zeros``, ``eye``, ``dirac``, ``xavier_uniform``, ``xavier_normal``,
  ``kaiming_uniform``, ``kaiming_normal``, ``orthogonal``, ``sparse``: the
  arguments and distributions of ``torch.nn.init.<name>_``. Shapes are read in
  flax's kernel layout ``(*receptive, in, out)`` (``layout=`` selects another:
  ``xinit.core.TORCH``/:data:`IDENTITY` for shapes used as they are, such as
  embedding tables, or ``xinit.core.Layout(in_axis, out_axis)``). For the same
  key a flax kernel is the ``xinit.torch`` weight permuted into flax layout, bit
  for bit; an embedding table drawn with ``layout=IDENTITY`` is torch's
  ``Embedding.weight`` as it is.
* **jax family** — ``variance_scaling``, ``lecun_*``, ``glorot_*``, ``he_*``,
  ``truncated_normal``, ``delta_orthogonal``: ``jax.nn.initializers``' names,
  arguments and distributions (equal in distribution, not in bits).
* **whole param trees** — ``initialize``, ``plan``, ``describe``, ``canonical_name``
  (from :mod:`xinit.flax.model`): a recipe over a linen tree or an nnx module;
  ``trace`` reads a model's layer structure (linen: traced on example inputs,
  nothing computed) so that layer kinds come from its classes.
* **torch layer defaults** — ``torch_linear_kernel``/``_bias``,
  ``torch_conv_kernel``/``_bias``, ``torch_conv_transpose_kernel``/``_bias``,
  ``torch_embedding``: what ``reset_parameters`` of torch's Linear, Conv,
  ConvTranspose and Embedding draws. A bias takes its layer's ``fan_in``.

Name clashes are resolved by semantics: ``xavier_normal`` and ``kaiming_normal``
here are torch's (untruncated); jax's truncated ones are ``glorot_normal`` and
``he_normal``. ``uniform(a, b)``/``normal(mean, std)`` take torch's arguments.

dtypes: float16, bfloat16, float32 and float64 (and integer/bool for the
deterministic ``constant``/``ones``/``zeros``/``eye``/``dirac``). ``dtype=None``
means JAX's default float (float32 unless x64 is on). float64 is drawn in a local
x64 scope and returned as float64 even when ``jax_enable_x64`` is off; the global
config is never changed.

Called eagerly, the values equal ``xinit.torch``'s bit for bit (permuted into
the layout). Inside a user's ``jit`` (e.g. ``model.init``) the sampler is traced
into the user's program: the random bits are the same, and the floats agree to
within 2 units in the last place of the array's largest magnitude for
16/32-bit floats and 16 for float64 (measured: at most 1, and 9 in the float64
truncated normals), because XLA may fold the same operations differently
(tested in ``tests/test_cross_framework.py``).

Embedding tables: torch's ``Embedding.weight`` ``(num, dim)`` is used as it is,
so draw a flax ``Embed`` table ``(num, features)`` with ``layout=IDENTITY`` (as
:func:`torch_embedding` does) for torch's values; fan-based initializers then
read ``num`` as "out" and ``features`` as "in", as torch does. Flax's own
``Embed`` default is :func:`variance_scaling` ``(1.0, "fan_in", "normal",
out_axis=0)``.

This module needs only JAX; it never imports torch.
"""

import importlib.util as _importlib_util

if _importlib_util.find_spec("flax") is None:  # pragma: no cover - needs an env without flax
    raise ImportError("xinit.flax requires Flax; install it with pip install 'xinit[flax]'")

from xinit.core.layout import FLAX as FLAX
from xinit.core.layout import TORCH as TORCH
from xinit.core.layout import Layout as Layout

from ._initializers import CONV_TRANSPOSE as CONV_TRANSPOSE
from ._initializers import IDENTITY as IDENTITY
from ._initializers import SpecInitializer as SpecInitializer
from ._initializers import constant as constant
from ._initializers import dirac as dirac
from ._initializers import eye as eye
from ._initializers import kaiming_normal as kaiming_normal
from ._initializers import kaiming_uniform as kaiming_uniform
from ._initializers import normal as normal
from ._initializers import ones as ones
from ._initializers import orthogonal as orthogonal
from ._initializers import sparse as sparse
from ._initializers import torch_conv_bias as torch_conv_bias
from ._initializers import torch_conv_kernel as torch_conv_kernel
from ._initializers import torch_conv_transpose_bias as torch_conv_transpose_bias
from ._initializers import torch_conv_transpose_kernel as torch_conv_transpose_kernel
from ._initializers import torch_embedding as torch_embedding
from ._initializers import torch_linear_bias as torch_linear_bias
from ._initializers import torch_linear_kernel as torch_linear_kernel
from ._initializers import trunc_normal as trunc_normal
from ._initializers import uniform as uniform
from ._initializers import xavier_normal as xavier_normal
from ._initializers import xavier_uniform as xavier_uniform
from ._initializers import zeros as zeros
from ._native import DeltaOrthogonal as DeltaOrthogonal
from ._native import delta_orthogonal as delta_orthogonal
from ._native import glorot_normal as glorot_normal
from ._native import glorot_uniform as glorot_uniform
from ._native import he_normal as he_normal
from ._native import he_uniform as he_uniform
from ._native import lecun_normal as lecun_normal
from ._native import lecun_uniform as lecun_uniform
from ._native import truncated_normal as truncated_normal
from ._native import variance_scaling as variance_scaling
from .model import Traced as Traced
from .model import canonical_name as canonical_name
from .model import describe as describe
from .model import initialize as initialize
from .model import plan as plan
from .model import trace as trace

#: The torch drop-ins: ``xinit.flax.<name>`` for ``torch.nn.init.<name>_``.
DROP_INS = (
    "uniform", "normal", "trunc_normal", "constant", "ones", "zeros", "eye", "dirac",
    "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "orthogonal",
    "sparse",
)

__all__ = [
    "FLAX", "TORCH", "IDENTITY", "CONV_TRANSPOSE", "Layout", "SpecInitializer",
    "DeltaOrthogonal", "DROP_INS",
    *DROP_INS,
    "variance_scaling", "lecun_normal", "lecun_uniform", "glorot_normal", "glorot_uniform",
    "he_normal", "he_uniform", "truncated_normal", "delta_orthogonal",
    "torch_linear_kernel", "torch_linear_bias", "torch_conv_kernel", "torch_conv_bias",
    "torch_conv_transpose_kernel", "torch_conv_transpose_bias", "torch_embedding",
    # whole param trees (xinit.flax.model)
    "initialize", "plan", "describe", "canonical_name", "trace", "Traced",
]
