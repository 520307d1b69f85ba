"""xinit.core: framework-neutral initializers on jax.random keys.

Never imports torch or flax. Shapes are canonical ``(out, in, *receptive)``
unless a :class:`Layout` says otherwise.

``__all__`` is the user surface: specs, layouts and fans, gains, recipes,
:func:`sample` (and one functional sampler per spec), per-parameter keys,
errors and the compilation cache. Tools for looking inside (compile counts,
raw draws, key data, recipe resolution) are in :mod:`xinit.core.debug`.

Where things are, from what a user asks for down to the bits:

- what to draw: :mod:`.specs` (initializers as data), :mod:`.gains`,
  :mod:`.layout` (canonical shapes and fans), :mod:`.layers` (which layer stores
  its weight how), :mod:`.recipes` (+ ``recipes_hf``, ``recipes_timm``: which
  parameter gets what), :mod:`._keys` (user keys to key data);
- how values are made: :mod:`.threefry` (the hash and its self-check) and
  :mod:`.distributions` (each family's values from unit uniforms or indices);
- the one draw engine: :mod:`.engine` (requests for any region of any tensors,
  run chunk by chunk into a sink), :mod:`.packing` (regions as runs, chunks as
  packed rows), :mod:`.programs` (compiled programs, compile counts, memory
  release), :mod:`.host_memory` (aligned buffers and copies on the host);
- sinks: :mod:`.arrays` (new JAX arrays; ``xinit.torch._sink`` writes torch
  tensors in place) and :mod:`.sharding` (each device's shard of a ``Sharding``);
- around it: :mod:`.samplers` (one function per initializer), :mod:`.porting`
  (checkpoint layouts and names between frameworks), :mod:`.manifest`,
  :mod:`.cache`, :mod:`.errors`.
"""

from . import debug as debug
from . import errors as errors
from ._keys import fold_in_name as fold_in_name
from .arrays import sample as sample
from .cache import default_cache_dir as default_cache_dir
from .cache import enable_compilation_cache as enable_compilation_cache
from .errors import XinitError as XinitError
from .gains import NONLINEARITIES as NONLINEARITIES
from .gains import calculate_gain as calculate_gain
from .layers import register_layer as register_layer
from .layout import FLAX as FLAX
from .layout import TORCH as TORCH
from .layout import Fans as Fans
from .layout import Layout as Layout
from .layout import canonical_shape as canonical_shape
from .layout import compute_fans as compute_fans
from .manifest import Manifest as Manifest
from .recipes import KINDS as KINDS
from .recipes import RECIPES as RECIPES
from .recipes import AttrConstant as AttrConstant
from .recipes import Derived as Derived
from .recipes import FanInUniform as FanInUniform
from .recipes import InvSqrtUniform as InvSqrtUniform
from .recipes import PaddingZeroed as PaddingZeroed
from .recipes import Param as Param
from .recipes import Plan as Plan
from .recipes import Recipe as Recipe
from .recipes import Rule as Rule
from .recipes import UnmatchedError as UnmatchedError
from .recipes import dcgan as dcgan
from .recipes import get_recipe as get_recipe
from .recipes import gpt2 as gpt2
from .recipes import resnet as resnet
from .recipes import torch_default as torch_default
from .recipes import transformer as transformer
from .recipes import vit as vit
from .samplers import constant as constant
from .samplers import dirac as dirac
from .samplers import eye as eye
from .samplers import kaiming_normal as kaiming_normal
from .samplers import kaiming_uniform as kaiming_uniform
from .samplers import normal as normal
from .samplers import ones as ones
from .samplers import orthogonal as orthogonal
from .samplers import sparse as sparse
from .samplers import trunc_normal as trunc_normal
from .samplers import uniform as uniform
from .samplers import xavier_normal as xavier_normal
from .samplers import xavier_uniform as xavier_uniform
from .samplers import zeros as zeros
from .specs import REGISTRY as REGISTRY
from .specs import Constant as Constant
from .specs import Dirac as Dirac
from .specs import Eye as Eye
from .specs import KaimingNormal as KaimingNormal
from .specs import KaimingUniform as KaimingUniform
from .specs import Normal as Normal
from .specs import Ones as Ones
from .specs import Orthogonal as Orthogonal
from .specs import Sparse as Sparse
from .specs import Spec as Spec
from .specs import TruncatedNormal as TruncatedNormal
from .specs import TruncNormal as TruncNormal
from .specs import Uniform as Uniform
from .specs import VarianceScaling as VarianceScaling
from .specs import XavierNormal as XavierNormal
from .specs import XavierUniform as XavierUniform
from .specs import Zeros as Zeros
from .specs import from_config as from_config

__all__ = [
    "errors",
    "XinitError",
    "enable_compilation_cache",
    "default_cache_dir",
    "fold_in_name",
    "sample",
    "NONLINEARITIES",
    "calculate_gain",
    "Layout",
    "TORCH",
    "FLAX",
    "Fans",
    "canonical_shape",
    "compute_fans",
    "register_layer",
    "Manifest",
    "uniform",
    "normal",
    "trunc_normal",
    "constant",
    "ones",
    "zeros",
    "eye",
    "dirac",
    "xavier_uniform",
    "xavier_normal",
    "kaiming_uniform",
    "kaiming_normal",
    "orthogonal",
    "sparse",
    "Spec",
    "REGISTRY",
    "from_config",
    "Uniform",
    "Normal",
    "TruncNormal",
    "Constant",
    "Ones",
    "Zeros",
    "Eye",
    "Dirac",
    "XavierUniform",
    "XavierNormal",
    "KaimingUniform",
    "KaimingNormal",
    "Orthogonal",
    "Sparse",
    "VarianceScaling",
    "TruncatedNormal",
    # recipes
    "Recipe",
    "Rule",
    "Param",
    "Plan",
    "UnmatchedError",
    "Derived",
    "FanInUniform",
    "InvSqrtUniform",
    "AttrConstant",
    "PaddingZeroed",
    "torch_default",
    "resnet",
    "transformer",
    "gpt2",
    "dcgan",
    "vit",
    "RECIPES",
    "get_recipe",
    "KINDS",
]
