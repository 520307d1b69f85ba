"""MkDocs hooks: the performance page appears in the site once it exists.

``docs/performance.md`` is written by the benchmark suite (``make bench``). Until
it exists, a nav entry or a link to it would fail ``mkdocs build --strict``; so
the nav entry is added here only when the file is there, and links to it are
reduced to their text while it is not.
"""

from __future__ import annotations

import re
from pathlib import Path

PAGE = "performance.md"
TITLE = "Performance"
_LINK = re.compile(r"\[([^\]]+)\]\(performance\.md(#[^)]*)?\)")


def nav_with_performance(nav: list, docs_dir: str | Path) -> list:
    """``nav`` plus a top-level ``Performance`` entry when ``docs_dir/performance.md`` exists."""
    if not (Path(docs_dir) / PAGE).is_file():
        return nav
    if any(PAGE in str(item) for item in nav):
        return nav
    return [*nav[:-1], {TITLE: PAGE}, nav[-1]] if nav else [{TITLE: PAGE}]


def unlink_missing_performance(markdown: str, docs_dir: str | Path) -> str:
    """``markdown`` with links to the performance page turned into text while it is missing."""
    if (Path(docs_dir) / PAGE).is_file():
        return markdown
    return _LINK.sub(r"\1", markdown)


def on_config(config, **kwargs):
    if config["nav"] is not None:
        config["nav"] = nav_with_performance(config["nav"], config["docs_dir"])
    return config


def on_page_markdown(markdown, page, config, files, **kwargs):
    return unlink_missing_performance(markdown, config["docs_dir"])
