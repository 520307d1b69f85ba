"""xinit: neural-network weight initialization, one JAX core, native in PyTorch and Flax.

``import xinit`` loads the framework-neutral core only (jax, numpy); the
adapters are ``xinit.torch`` and ``xinit.flax``.
"""

from .core import *  # noqa: F403 - the documented core surface, see xinit.core.__all__
from .core import __all__ as _core_all

__version__ = "0.1.0"
__all__ = ["__version__", *_core_all]
