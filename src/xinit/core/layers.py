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
(timm's ``Conv2dSame(nn.Conv2d)``) get the entry of their nearest registered
ancestor. A user's declaration replaces a built-in one with the same key.

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

from dataclasses import dataclass

from .layout import FLAX, TORCH, Layout
from .recipes import KINDS

__all__ = [
    "RegisteredLayer",
    "register_layer",
    "unregister_layer",
    "layer_of",
    "container_of",
    "qualified_name",
    "FLAX_CONV_TRANSPOSE",
]

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
    table = {k: RegisteredLayer(k, kind, TORCH, True) for k, kind in torch_nn.items()}
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

_qualified: dict[str, RegisteredLayer] = _builtin_table()
_bare: dict[str, RegisteredLayer] = {}
_cache: dict[type, RegisteredLayer | None] = {}


def _key(cls_or_name) -> str:
    if isinstance(cls_or_name, type):
        return qualified_name(cls_or_name)
    if isinstance(cls_or_name, str) and cls_or_name.strip(". ") == cls_or_name and cls_or_name:
        return cls_or_name
    raise TypeError(
        "register_layer: cls_or_name must be a class or its name as a non-empty string "
        f"('Conv1D' or 'transformers.pytorch_utils.Conv1D'); got {cls_or_name!r}"
    )


def register_layer(cls_or_name, kind: str, layout: Layout = TORCH):
    """Declare the kind and weight layout of a layer class, for recipes and porting alike.

    Args:
        cls_or_name: the class, or its name: bare (``"Conv1D"``, matches any class
            of that name) or qualified (``"transformers.pytorch_utils.Conv1D"``).
            Subclasses match too.
        kind: the layer kind, one of :data:`~xinit.core.recipes.KINDS`
            (``"linear"``, ``"conv"``, ``"norm"``, ...).
        layout: where the class keeps the ``in`` and ``out`` axes of its weight:
            :data:`~xinit.core.TORCH` for ``(out, in, *k)``, :data:`~xinit.core.FLAX`
            for ``(*k, in, out)``, or any :class:`~xinit.core.Layout`. Hugging
            Face's ``Conv1D`` stores a linear weight as ``(in, out)``:
            ``Layout(in_axis=0, out_axis=1)``.

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
    entry = RegisteredLayer(key, kind, layout, False)
    (_qualified if "." in key else _bare)[key] = entry
    _cache.clear()
    return cls_or_name


def unregister_layer(cls_or_name) -> None:
    """Remove a user's declaration (a built-in entry it replaced comes back)."""
    key = _key(cls_or_name)
    table = _qualified if "." in key else _bare
    if key not in table or table[key].builtin:
        raise KeyError(f"unregister_layer: {key!r} was not registered by register_layer")
    del table[key]
    builtin = _builtin_table().get(key)
    if builtin is not None:
        _qualified[key] = builtin
    _cache.clear()


def layer_of(cls: type) -> RegisteredLayer | None:
    """The registry entry of ``cls`` or of its nearest registered ancestor; None if none.

    >>> class Plain: ...
    >>> layer_of(Plain) is None
    True
    """
    try:
        return _cache[cls]
    except (KeyError, TypeError):
        pass
    found = None
    for c in getattr(cls, "__mro__", (cls,)):
        found = _qualified.get(qualified_name(c)) or _bare.get(c.__name__)
        if found is not None:
            break
    try:
        _cache[cls] = found
    except TypeError:  # an unhashable class object: answer without caching
        pass
    return found


def container_of(cls: type) -> str | None:
    """``"sequential"``, ``"rnn"`` or ``"bidirectional"`` for Flax's container modules, else None."""
    for c in getattr(cls, "__mro__", (cls,)):
        role = CONTAINERS.get(qualified_name(c))
        if role is not None:
            return role
    return None
