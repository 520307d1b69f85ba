"""xinit.port: checkpoint porting between PyTorch and Flax, driven by the models' own structure.

    import xinit.port as xp

    variables = xp.torch_to_flax(torch_model, flax_model, example_input)   # linen: new variables
    xp.flax_to_torch(flax_model, variables, torch_model, example_input)   # in place
    print(xp.plan(torch_model, flax_model, example_input))                # the dry run, a table
    print(xp.compare(torch_model, flax_model, variables, x, input_map="NHWC->NCHW"))

Layer kinds and weight layouts come from the models: torch module classes,
linen modules traced on example inputs (``jax.eval_shape``, nothing computed),
nnx module graphs, and :func:`xinit.register_layer` for custom classes; never
from the rank of a tensor. The layout and name logic is framework-neutral
(:mod:`xinit.core.porting`); this package reads the two models and moves the
values. It is the one part of xinit that imports both torch and flax.
"""

try:
    import torch as _torch  # noqa: F401 - fail early with the install hint
except ImportError as err:  # pragma: no cover - exercised in a subprocess test
    raise ImportError("xinit.port requires PyTorch and Flax; install them with "
                      "pip install 'xinit[port]'") from err
try:
    import flax as _flax  # noqa: F401
except ImportError as err:  # pragma: no cover
    raise ImportError("xinit.port requires PyTorch and Flax; install them with "
                      "pip install 'xinit[port]'") from err

from xinit.core.porting import PlanRow as PlanRow
from xinit.core.porting import PortError as PortError
from xinit.core.porting import PortPlan as PortPlan
from xinit.core.porting import PortReport as PortReport
from xinit.core.porting import Problem as Problem

from ._compare import Comparison as Comparison
from ._compare import OutputDiff as OutputDiff
from ._compare import compare as compare
from ._convert import convert_file as convert_file
from ._convert import flax_to_torch as flax_to_torch
from ._convert import plan as plan
from ._convert import torch_to_flax as torch_to_flax
from ._files import load_flax_variables as load_flax_variables
from ._files import load_torch_state as load_torch_state

__all__ = [
    "torch_to_flax",
    "flax_to_torch",
    "plan",
    "compare",
    "convert_file",
    "load_torch_state",
    "load_flax_variables",
    "PortError",
    "PortReport",
    "PortPlan",
    "PlanRow",
    "Problem",
    "Comparison",
    "OutputDiff",
]
