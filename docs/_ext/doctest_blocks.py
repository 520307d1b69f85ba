"""Griffe extension for the API pages: bare ``>>>`` doctests as code, ``:math:`` as math.

xinit's docstrings put their doctest examples after the Args/Raises sections
without an ``Examples:`` heading (so ``pytest --doctest-modules`` runs them).
Markdown would read those lines as nested block quotes, and text such as
``x["params"]["kernel"]`` as reference links. This wraps each run of doctest
lines (a ``>>>`` line up to the next blank line) in a ```` ```pycon ```` fence.
The docstrings also write formulas as reST ``:math:`...``` roles, which
Markdown would print literally; they become ``\\(...\\)`` for arithmatex/MathJax.
"""

from __future__ import annotations

import re

import griffe

_MATH_ROLE = re.compile(r":math:`([^`]+)`")


def math_roles(text: str) -> str:
    """``text`` with every reST ``:math:`x``` role written as inline math ``\\(x\\)``."""
    return _MATH_ROLE.sub(lambda m: "\\(" + m.group(1) + "\\)", text)


def fence_doctests(text: str) -> str:
    """``text`` with every bare doctest block fenced (already fenced code is left alone)."""
    out: list[str] = []
    in_fence = in_doctest = False
    indent = ""
    for line in text.split("\n"):
        stripped = line.lstrip()
        if in_doctest and not stripped:
            out.append(f"{indent}```")
            in_doctest = False
        if not in_doctest and stripped.startswith("```"):
            in_fence = not in_fence
        elif not in_fence and not in_doctest and stripped.startswith(">>>"):
            indent = line[: len(line) - len(stripped)]
            out.append(f"{indent}```pycon")
            in_doctest = True
        out.append(line)
    if in_doctest:
        out.append(f"{indent}```")
    return "\n".join(out)


class DoctestBlocks(griffe.Extension):
    """Fence bare doctests in every docstring griffe loads."""

    def on_object(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = math_roles(fence_doctests(obj.docstring.value))
