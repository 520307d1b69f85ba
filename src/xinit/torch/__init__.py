"""xinit.torch: a drop-in for ``torch.nn.init`` backed by xinit's JAX core.

import xinit.torch as init     # instead of: import torch.nn.init as init
init.kaiming_uniform_(layer.weight, a=5 ** 0.5)
"""

try:
    import torch as _torch  # noqa: F401 - fail early with the install hint
except ImportError as err:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "xinit.torch requires PyTorch; install it with pip install 'xinit[torch]'"
    ) from err

from .init import *  # noqa: F403
from .init import __all__ as _init_all

__all__ = list(_init_all)
