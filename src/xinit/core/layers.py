"""The layer registry: which kind of layer a class is, and how it stores its weight.

Recipes, ``describe``/``plan``/``initialize`` and checkpoint porting all ask the
same question of every module of a model: what kind of layer is this
(:data:`~xinit.core.recipes.KINDS`), and in which :class:`~xinit.core.Layout`
does it keep its weight? The answer comes from one table, keyed by class name,
never from the rank of a tensor:

- the built-in layers of ``torch.nn``, ``flax.linen`` and ``flax.nnx`` are
  entries of it (by qualified name, so nothing is imported to fill it);
- :func:`register_layer` declares any other class, on either side: a class
  object, or its name as a string (bare, ``"Conv1D"``, or qualified,
  ``"transformers.pytorch_utils.Conv1D"``).

A lookup walks the class's method resolution order, checking each class's
qualified name and then its bare name, so subclasses of a registered class
(timm's ``Conv2dSame(nn.Conv2d)``, ``BatchNormAct2d(nn.BatchNorm2d)``) get the
entry of their nearest registered ancestor. A user's declaration replaces a
built-in one with the same key. A name may also be a glob (``"*RMSNorm"``),
matched against the bare names of the class and its bases when no exact entry
matched.

Built-in knowledge of two libraries, by name (neither is imported): Hugging
Face's ``transformers.pytorch_utils.Conv1D`` is a linear layer storing its
weight ``(in, out)``; and, as transformers itself recognizes them, classes
whose name ends in ``LayerNorm`` or ``RMSNorm`` (``LlamaRMSNorm``,
``T5LayerNorm``; timm's ``RmsNorm``) are norms. timm's layers subclass
torch's, so they need no entries.

The layout applies to the layer's weight (the parameter named ``weight`` in
torch, ``kernel`` in Flax): the canonical weight is ``weight.transpose(
layout.permutation(ndim))``, PyTorch's ``(out, in, *receptive)``; vectors
(biases, norm scales) are used as they are.

    >>> from xinit.core import Layout
    >>> _ = register_layer("Conv1D", kind="linear", layout=Layout(in_axis=0, out_axis=1))
    >>> class Conv1D: ...
    >>> layer_of(Conv1D).kind
    'linear'
    >>> unregister_layer("Conv1D")

This module never imports torch or flax.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from .layout import FLAX, TORCH, Layout
from .recipes import KINDS

__all__ = [
    "RegisteredLayer",
    "lineage",
    "register_layer",
    "unregister_layer",
    "layer_of",
    "container_of",
    "qualified_name",
    "FLAX_CONV_TRANSPOSE",
]

#: Hugging Face's ``Conv1D``: a linear layer whose weight is stored ``(in, out)``.
HF_CONV1D = Layout(in_axis=0, out_axis=1)

#: flax's ConvTranspose kernel ``(*k, in, out)`` read in torch's ConvTranspose
#: weight order ``(in, out, *k)`` (torch's fans of a transposed convolution).
FLAX_CONV_TRANSPOSE = Layout(in_axis=-1, out_axis=-2, name="FLAX_CONV_TRANSPOSE")


@dataclass(frozen=True)
class RegisteredLayer:
    """One entry of the layer registry.

    Args:
        key: the class name it was registered under (qualified or bare).
        kind: the layer kind, one of :data:`~xinit.core.recipes.KINDS`.
        layout: how the layer stores its weight relative to the canonical
            ``(out, in, *receptive)``.
        builtin: True for the entries xinit ships (torch.nn, flax.linen, flax.nnx).
    """

    key: str
    kind: str
    layout: Layout = TORCH
    builtin: bool = False


def qualified_name(cls: type) -> str:
    """``module.QualName`` of a class, the registry's key for it."""
    return f"{cls.__module__}.{cls.__qualname__}"


def _builtin_table() -> dict[str, RegisteredLayer]:
    torch_nn = {
        "torch.nn.modules.linear.Linear": "linear",
        "torch.nn.modules.linear.Bilinear": "bilinear",
        "torch.nn.modules.conv._ConvTransposeNd": "conv_transpose",
        "torch.nn.modules.conv._ConvNd": "conv",
        "torch.nn.modules.sparse.Embedding": "embedding",
        "torch.nn.modules.sparse.EmbeddingBag": "embedding",
        "torch.nn.modules.rnn.RNNBase": "recurrent",
        "torch.nn.modules.rnn.RNNCellBase": "recurrent",
        "torch.nn.modules.activation.MultiheadAttention": "attention",
        "torch.nn.modules.batchnorm._NormBase": "norm",  # BatchNorm*, SyncBatchNorm, InstanceNorm*
        "torch.nn.modules.normalization.GroupNorm": "norm",
        "torch.nn.modules.normalization.LayerNorm": "norm",
        "torch.nn.modules.normalization.RMSNorm": "norm",
        "torch.nn.modules.activation.PReLU": "prelu",
    }
    flax_layers = {  # (kind, kernel layout); the same names in linen and nnx where they exist
        "linear.Dense": ("linear", FLAX),
        "linear.DenseGeneral": ("linear", FLAX),
        "linear.Linear": ("linear", FLAX),
        "linear.LinearGeneral": ("linear", FLAX),
        "linear.Conv": ("conv", FLAX),
        "linear.ConvTranspose": ("conv_transpose", FLAX_CONV_TRANSPOSE),
        "linear.Embed": ("embedding", TORCH),
        "normalization.LayerNorm": ("norm", TORCH),
        "normalization.RMSNorm": ("norm", TORCH),
        "normalization.GroupNorm": ("norm", TORCH),
        "normalization.BatchNorm": ("norm", TORCH),
        "normalization.InstanceNorm": ("norm", TORCH),
        "attention.MultiHeadDotProductAttention": ("attention", FLAX),
        "attention.MultiHeadAttention": ("attention", FLAX),
        "recurrent.LSTMCell": ("recurrent", FLAX),
        "recurrent.OptimizedLSTMCell": ("recurrent", FLAX),
        "recurrent.GRUCell": ("recurrent", FLAX),
        "activation.PReLU": ("prelu", TORCH),
        "activations.PReLU": ("prelu", TORCH),
    }
    libraries = {  # by name: importing neither library
        "transformers.pytorch_utils.Conv1D": ("linear", HF_CONV1D),
        # transformers finds norms by class name ("LayerNorm"/"RMSNorm" in the name)
        "*LayerNorm": ("norm", TORCH),
        "*RMSNorm": ("norm", TORCH),
        "*RmsNorm": ("norm", TORCH),  # timm
        "*RmsNorm2d": ("norm", TORCH),
        "*LayerNorm2d": ("norm", TORCH),
    }
    table = {k: RegisteredLayer(k, kind, TORCH, True) for k, kind in torch_nn.items()}
    table.update({k: RegisteredLayer(k, kind, layout, True) for k, (kind, layout) in libraries.items()})
    for package in ("flax.linen.", "flax.nnx.nn."):
        for name, (kind, layout) in flax_layers.items():
            key = package + name
            table[key] = RegisteredLayer(key, kind, layout, True)
    return table


#: Modules that hold other layers and change their names or roles (not layers themselves).
CONTAINERS = {
    "flax.linen.combinators.Sequential": "sequential",
    "flax.nnx.helpers.Sequential": "sequential",
    "flax.linen.recurrent.RNN": "rnn",
    "flax.nnx.nn.recurrent.RNN": "rnn",
    "flax.linen.recurrent.Bidirectional": "bidirectional",
    "flax.nnx.nn.recurrent.Bidirectional": "bidirectional",
}

_GLOB = re.compile(r"[*?\[]")


def _table_for(key: str) -> dict[str, RegisteredLayer]:
    if _GLOB.search(key):
        return _patterns
    return _qualified if "." in key else _bare


_qualified: dict[str, RegisteredLayer] = {}
_bare: dict[str, RegisteredLayer] = {}
_patterns: dict[str, RegisteredLayer] = {}
for _k, _entry in _builtin_table().items():
    _table_for(_k)[_k] = _entry
_cache: dict[type, RegisteredLayer | None] = {}
_lineages: dict[type, tuple[str, ...]] = {}


def _key(cls_or_name) -> str:
    if isinstance(cls_or_name, type):
        return qualified_name(cls_or_name)
    if isinstance(cls_or_name, str) and cls_or_name.strip(". ") == cls_or_name and cls_or_name:
        return cls_or_name
    raise TypeError(
        "register_layer: cls_or_name must be a class or its name as a non-empty string "
        f"('Conv1D', 'transformers.pytorch_utils.Conv1D' or a glob such as '*RMSNorm'); "
        f"got {cls_or_name!r}"
    )


def register_layer(cls_or_name, kind: str, layout: Layout = TORCH):
    """Declare the kind and weight layout of a layer class, for recipes and porting alike.

    Args:
        cls_or_name: the class, or its name: bare (``"Conv1D"``, matches any class
            of that name), qualified (``"transformers.pytorch_utils.Conv1D"``) or
            a glob on bare names (``"*RMSNorm"``, consulted when no exact name
            matches). Subclasses match too.
        kind: the layer kind, one of :data:`~xinit.core.recipes.KINDS`
            (``"linear"``, ``"conv"``, ``"norm"``, ...).
        layout: where the class keeps the ``in`` and ``out`` axes of its weight:
            :data:`~xinit.core.TORCH` for ``(out, in, *k)``, :data:`~xinit.core.FLAX`
            for ``(*k, in, out)``, or any :class:`~xinit.core.Layout`. Hugging
            Face's ``Conv1D`` stores a linear weight as ``(in, out)``:
            ``Layout(in_axis=0, out_axis=1)`` (a built-in entry).

    Returns:
        ``cls_or_name``.

    Raises:
        ValueError: ``kind`` is not a known kind.
        TypeError: ``layout`` is not a :class:`~xinit.core.Layout`, or
            ``cls_or_name`` is neither a class nor a name.

    >>> from xinit.core import Layout
    >>> _ = register_layer("MyConv1D", kind="linear", layout=Layout(in_axis=0, out_axis=1))
    >>> unregister_layer("MyConv1D")
    """
    key = _key(cls_or_name)
    if kind not in KINDS:
        raise ValueError(f"register_layer: kind must be one of {list(KINDS)}; got kind={kind!r}")
    if not isinstance(layout, Layout):
        raise TypeError(
            f"register_layer: layout must be an xinit.Layout (e.g. xinit.TORCH, xinit.FLAX, "
            f"xinit.Layout(in_axis=0, out_axis=1)); got layout={layout!r}"
        )
    _table_for(key)[key] = RegisteredLayer(key, kind, layout, False)
    _cache.clear()
    return cls_or_name


def unregister_layer(cls_or_name) -> None:
    """Remove a user's declaration (a built-in entry it replaced comes back)."""
    key = _key(cls_or_name)
    table = _table_for(key)
    if key not in table or table[key].builtin:
        raise KeyError(f"unregister_layer: {key!r} was not registered by register_layer")
    del table[key]
    builtin = _builtin_table().get(key)
    if builtin is not None:
        table[key] = builtin
    _cache.clear()


def _mro(cls) -> tuple:
    return tuple(c for c in getattr(cls, "__mro__", (cls,)) if c is not object)


def layer_of(cls: type) -> RegisteredLayer | None:
    """The registry entry of ``cls`` or of its nearest registered ancestor; None if none.

    Exact names first (per class, nearest first: a user's declaration before a
    built-in one), then glob entries on the bare names.

    >>> class Plain: ...
    >>> layer_of(Plain) is None
    True
    >>> class LlamaRMSNorm: ...
    >>> layer_of(LlamaRMSNorm).kind
    'norm'
    """
    try:
        return _cache[cls]
    except (KeyError, TypeError):
        pass
    found = None
    mro = _mro(cls)
    for c in mro:
        hits = [e for e in (_qualified.get(qualified_name(c)), _bare.get(c.__name__)) if e is not None]
        if hits:
            found = next((e for e in hits if not e.builtin), hits[0])
            break
    if found is None:
        patterns = sorted(_patterns.values(), key=lambda e: e.builtin)  # users' first
        found = next((e for c in mro for e in patterns if fnmatch.fnmatchcase(c.__name__, e.key)),
                     None)
    try:
        _cache[cls] = found
    except TypeError:  # an unhashable class object: answer without caching
        pass
    return found


def lineage(cls: type) -> tuple[str, ...]:
    """The names of ``cls`` and its bases (nearest first), each qualified then bare.

    What :class:`~xinit.core.recipes.Param` keeps so that a rule naming a class
    (``Rule(kind="Conv2d")``) matches its subclasses.

    >>> class Base: ...
    >>> class Child(Base): ...
    >>> [n for n in lineage(Child) if "." not in n]
    ['Child', 'Base']
    """
    try:
        return _lineages[cls]
    except (KeyError, TypeError):
        pass
    names: list[str] = []
    for c in _mro(cls):
        names += [qualified_name(c), c.__name__]
    out = tuple(dict.fromkeys(names))
    try:
        _lineages[cls] = out
    except TypeError:
        pass
    return out


def container_of(cls: type) -> str | None:
    """``"sequential"``, ``"rnn"`` or ``"bidirectional"`` for Flax's container modules, else None."""
    for c in getattr(cls, "__mro__", (cls,)):
        role = CONTAINERS.get(qualified_name(c))
        if role is not None:
            return role
    return None
