"""The reproducibility manifest: a small JSON record of one whole-model initialization.

A tensor's value depends only on the root key, its canonical name, shape, dtype
and rule (DESIGN.md, "Randomness"). A :class:`Manifest` writes all of those
down: the root key as threefry key data, the recipe as its config (and that
config's SHA-256), the ``unmatched=`` policy, and for every tensor where its
value came from (``"drawn"`` by a rule, ``"loaded"`` from a checkpoint,
``"computed"`` by the model's own buffer code, ``"zeros"`` for an unmatched
tensor under ``unmatched="zeros"``, or ``"left"`` as it was) with the rule's
index and initializer. Versions of xinit, JAX and the framework come along.

The adapters write one (``save_manifest=path``) and read one back
(``manifest=path``): the same recipe and key, and every tensor checked against
its record before anything is written, so the values come out bit for bit.

    >>> from xinit.core.recipes import Param, get_recipe
    >>> plan = get_recipe("gpt2").plan([Param("h.0.mlp.c_fc.weight", "linear", "weight", (8, 4))])
    >>> m = Manifest.from_plan(plan, get_recipe("gpt2"), key=0, unmatched="error")
    >>> m.drawn
    ('h.0.mlp.c_fc.weight',)
    >>> Manifest.from_json(m.to_json()) == m
    True
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._keys import key_data
from .recipes import Plan, Recipe

__all__ = ["Manifest", "ManifestEntry", "SOURCES", "FORMAT"]

#: Where a tensor's value came from.
SOURCES = ("drawn", "loaded", "computed", "zeros", "left")
#: The manifest format version (a reader refuses newer ones).
FORMAT = 1
#: How a parameter's key is derived from the root key (DESIGN.md).
KEY_DERIVATION = "fold_in(root_key, crc32(utf8(name)))"


@dataclass(frozen=True)
class ManifestEntry:
    """One tensor of a :class:`Manifest`.

    Args:
        name: canonical dotted name.
        source: one of :data:`SOURCES`.
        shape: canonical shape.
        dtype: numpy dtype name.
        buffer: whether it is a buffer.
        rule: index of the rule that matched it (None if none did).
        init: the initializer it got, as printed (None if not drawn).
    """

    name: str
    source: str
    shape: tuple[int, ...]
    dtype: str
    buffer: bool = False
    rule: int | None = None
    init: str | None = None

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"ManifestEntry source must be one of {list(SOURCES)}; got {self.source!r}")
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))


@dataclass(frozen=True)
class Manifest:
    """What one initialization did, enough to do it again bit for bit.

    Args:
        key: the root key as two uint32 words (threefry2x32 key data).
        recipe: the recipe's config (:meth:`~xinit.core.recipes.Recipe.to_config`).
        recipe_hash: SHA-256 of that config's canonical JSON.
        unmatched: the ``unmatched=`` policy it ran with.
        tensors: one :class:`ManifestEntry` per parameter and buffer.
        versions: package versions (``xinit``, ``jax``, ``torch``...).
        rng: the random number generator, ``"threefry2x32"``.
        key_derivation: how each tensor's key comes from the root key.
        format: :data:`FORMAT`.
    """

    key: tuple[int, int]
    recipe: Mapping[str, Any] = field(compare=True, hash=False)
    recipe_hash: str
    unmatched: str
    tensors: tuple[ManifestEntry, ...]
    versions: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)
    rng: str = "threefry2x32"
    key_derivation: str = KEY_DERIVATION
    format: int = FORMAT

    # ------------------------------------------------------------ building

    @classmethod
    def from_plan(cls, plan: Plan, recipe: Recipe, *, key, unmatched: str,
                  versions: Mapping[str, str] | None = None) -> Manifest:
        """The manifest of running ``plan`` with root ``key``.

        A tensor's source is its plan entry's (``"loaded"``, ``"computed"``,
        ``"zeros"``), else ``"drawn"`` when a rule matched it, else ``"left"``.
        """
        words = np.asarray(key_data(key), dtype=np.uint32)
        tensors = []
        for e in plan.entries:
            p = e.param
            source = e.source or ("drawn" if e.resolved is not None else "left")
            drawn = source == "drawn"
            tensors.append(ManifestEntry(
                name=p.name, source=source, shape=tuple(p.shape), dtype=p.dtype, buffer=p.buffer,
                rule=e.rule_index if drawn else None,
                init=repr(e.resolved.spec) + (f", rows {list(e.resolved.zero_rows)} zeroed"
                                              if e.resolved.zero_rows else "") if drawn else None,
            ))
        return cls(
            key=(int(words[0]), int(words[1])),
            recipe=recipe.to_config(),
            recipe_hash=recipe.config_hash(),
            unmatched=unmatched,
            tensors=tuple(tensors),
            versions=dict(_core_versions(), **(versions or {})),
        )

    # ------------------------------------------------------------- reading

    def recipe_object(self) -> Recipe:
        """The recipe, rebuilt from its config (its hash checked)."""
        recipe = Recipe.from_config(self.recipe)
        if recipe.config_hash() != self.recipe_hash:
            raise ValueError(
                f"manifest: the recipe config does not match its recorded hash {self.recipe_hash[:12]}...; "
                "the file was edited or written by an incompatible xinit"
            )
        return recipe

    def root_key(self) -> np.ndarray:
        """The root key data, ``uint32[2]`` (what ``key=`` takes)."""
        return np.array(self.key, dtype=np.uint32)

    def _names(self, source: str) -> tuple[str, ...]:
        return tuple(t.name for t in self.tensors if t.source == source)

    @property
    def drawn(self) -> tuple[str, ...]:
        """Names of the tensors a rule drew (or filled with a constant)."""
        return self._names("drawn")

    @property
    def loaded(self) -> tuple[str, ...]:
        """Names of the tensors loaded from a checkpoint."""
        return self._names("loaded")

    @property
    def computed(self) -> tuple[str, ...]:
        """Names of the buffers the model's own code computed."""
        return self._names("computed")

    def entry(self, name: str) -> ManifestEntry | None:
        return next((t for t in self.tensors if t.name == name), None)

    # ------------------------------------------------------------------ I/O

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "rng": self.rng,
            "key_derivation": self.key_derivation,
            "key": list(self.key),
            "recipe_hash": self.recipe_hash,
            "recipe": self.recipe,
            "unmatched": self.unmatched,
            "versions": dict(self.versions),
            "tensors": [
                {"name": t.name, "source": t.source, "shape": list(t.shape), "dtype": t.dtype,
                 "buffer": t.buffer, "rule": t.rule, "init": t.init}
                for t in self.tensors
            ],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Manifest:
        fmt = data.get("format")
        if not isinstance(fmt, int) or fmt > FORMAT:
            raise ValueError(f"manifest: format {fmt!r} is not one this xinit reads (<= {FORMAT})")
        if data.get("rng") != "threefry2x32":
            raise ValueError(f"manifest: rng {data.get('rng')!r} is not threefry2x32")
        return cls(
            key=tuple(int(w) for w in data["key"]),
            recipe=data["recipe"],
            recipe_hash=data["recipe_hash"],
            unmatched=data["unmatched"],
            tensors=tuple(ManifestEntry(**t) for t in data["tensors"]),
            versions=data.get("versions", {}),
            rng=data["rng"],
            key_derivation=data.get("key_derivation", KEY_DERIVATION),
            format=fmt,
        )

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        return cls.from_dict(json.loads(text))

    def save(self, path) -> Path:
        """Write the JSON to ``path`` (atomically: a temporary file renamed over it)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_json() + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path_or_manifest) -> Manifest:
        """A manifest from a path (or a :class:`Manifest`, returned as it is)."""
        if isinstance(path_or_manifest, Manifest):
            return path_or_manifest
        if isinstance(path_or_manifest, Mapping):
            return cls.from_dict(path_or_manifest)
        return cls.from_json(Path(path_or_manifest).read_text(encoding="utf-8"))

    def __str__(self) -> str:
        counts = {s: sum(t.source == s for t in self.tensors) for s in SOURCES}
        parts = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        return (f"manifest: recipe {self.recipe.get('name')!r} ({self.recipe_hash[:12]}), "
                f"key {list(self.key)}, {parts}")


def _core_versions() -> dict[str, str]:
    import jax

    from xinit import __version__

    return {"xinit": __version__, "jax": jax.__version__, "numpy": np.__version__}
