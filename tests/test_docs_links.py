"""The user docs' relative links lead somewhere: every linked file exists and every ``#anchor``
names a heading of its target (GitHub's heading ids), so renaming a section cannot silently
break the references to it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
LINK = re.compile(r"\]\(([^)#\s]*)(?:#([^)\s]+))?\)")


def heading_id(heading: str) -> str:
    """GitHub's id for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def heading_ids(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)  # not code blocks
    return {heading_id(h) for h in re.findall(r"^#+ (.*)$", text, re.M)}


def test_heading_ids_follow_github() -> None:
    assert heading_id("Running the full gate in pieces (`--cells`)") == (
        "running-the-full-gate-in-pieces---cells"
    )
    assert heading_id("Quantization (`bench/quantization.py`)") == (
        "quantization-benchquantizationpy"
    )


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc: Path) -> None:
    broken = []
    for target, anchor in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked here
        path = (doc.parent / target) if target else doc
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in heading_ids(path):
            broken.append(f"{target}#{anchor}: no such heading")
    assert not broken, broken
