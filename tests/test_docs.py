"""The README a newcomer reads top to bottom, and the docs site it points to: short, the
quick start first, every link resolving (the site's own links are checked by `make docs`,
mkdocs build --strict)."""

from __future__ import annotations

import re
import unicodedata

from imgclf.config import PROJECT_ROOT

README = PROJECT_ROOT / "README.md"
LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """The anchor Python-Markdown's toc (mkdocs) and GitHub give a heading."""
    text = re.sub(r"[`*_\[\]]", "", heading)
    text = unicodedata.normalize("NFKD", text).lower()
    return re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", text)).strip("-")


def anchors(page) -> set[str]:
    headings = re.findall(r"^#{1,6}\s+(.+)$", page.read_text(), re.M)
    return {slug(heading) for heading in headings}


def test_the_readme_is_short_and_starts_with_the_three_commands():
    lines = README.read_text().splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines: move detail to docs/"
    opening = "\n".join(lines[:40])
    for command in ("make run", "make test-fast", "make test "):
        assert command in opening, f"{command!r} is not in the README's first 40 lines"


def test_every_link_of_the_readme_resolves():
    for target in LINK.findall(README.read_text()):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        page = (README.parent / path) if path else README
        assert page.exists(), f"README links to {target}: no such file"
        if anchor:
            assert anchor in anchors(page), f"README links to {target}: no such heading"


def test_no_dated_narrative_outside_the_benchmarks():
    """Dates belong to measured tables (docs/benchmarks.md, deployment's measurements)."""
    for page in [README, *sorted((PROJECT_ROOT / "docs").glob("*.md"))]:
        if page.name in ("benchmarks.md", "deployment.md"):
            continue
        dated = re.findall(r".*\b20\d\d-\d\d-\d\d\b.*", page.read_text())
        assert not dated, f"{page.name}: {dated[:2]}"
