"""xinit.torch: a drop-in for ``torch.nn.init`` backed by xinit's JAX core, plus
whole-model initialization.

    import xinit.torch as init     # instead of: import torch.nn.init as init
    init.kaiming_uniform_(layer.weight, a=5 ** 0.5)
    init.initialize(model, "gpt2", key=0)
"""

try:
    import torch as _torch  # noqa: F401 - fail early with the install hint
except ImportError as err:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "xinit.torch requires PyTorch; install it with pip install 'xinit[torch]'"
    ) from err

from .init import *  # noqa: F403
from .init import __all__ as _init_all
from .model import apply_fn as apply_fn
from .model import describe as describe
from .model import initialize as initialize
from .model import materialize as materialize
from .model import meta_params as meta_params
from .model import no_init as no_init
from .model import plan as plan

__all__ = [*_init_all, "initialize", "plan", "apply_fn", "materialize", "no_init", "meta_params", "describe"]
