"""Looking inside xinit: compile counts, raw draws, key data, recipe resolution.

Not needed to initialize anything; for tests, benchmarks and debugging. The
names are the ones the core uses internally, re-exported here under their names:

* :func:`compile_count`: how many xinit programs this process has traced for
  compilation (a cold-start or per-shape-recompilation check);
* :func:`draw`: the flat row-major draw of a spec on a canonical shape (or of a
  region of it), as the engine's chunks (what :func:`xinit.core.sample` assembles);
* :func:`key_data`: the two uint32 words of threefry key data xinit reads from a
  key (typed, raw ``uint32[2]`` or an int seed); :func:`stable_hash`: the CRC-32
  of a parameter name that :func:`xinit.core.fold_in_name` folds into the key;
* :func:`resolve`, :class:`Resolved`, :class:`PlanEntry`: how a recipe's rule
  becomes a spec for one parameter, and one row of a :class:`xinit.core.Plan`;
* :data:`DTYPES`, :data:`FLOAT_DTYPES`, :data:`COMPLEX_DTYPES`: the dtypes the
  core draws (random families need a floating or complex one).

>>> from xinit.core import Normal
>>> from xinit.core.debug import draw, key_data
>>> key_data(0).tolist()
[0, 0]
>>> sum(piece.valid for piece in draw(Normal(), 0, (3, 4)))
12
"""

from ._keys import key_data as key_data
from ._keys import stable_hash as stable_hash
from .engine import COMPLEX_DTYPES as COMPLEX_DTYPES
from .engine import DTYPES as DTYPES
from .engine import FLOAT_DTYPES as FLOAT_DTYPES
from .engine import draw as draw
from .programs import compile_count as compile_count
from .recipes import PlanEntry as PlanEntry
from .recipes import Resolved as Resolved
from .recipes import resolve as resolve

__all__ = [
    "compile_count",
    "draw",
    "key_data",
    "stable_hash",
    "resolve",
    "Resolved",
    "PlanEntry",
    "DTYPES",
    "FLOAT_DTYPES",
    "COMPLEX_DTYPES",
]
