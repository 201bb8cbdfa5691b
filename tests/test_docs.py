"""README.md and docs/*.md link only to files that exist in the repository."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# [text](target) and ![alt](target); the target stops at whitespace or ")" (an optional "title" follows).
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)")


def relative_targets(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.DOTALL)  # code blocks
    targets = (m.group(1) for m in LINK.finditer(text))
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:|#", t)]  # not URLs, mailto:, #anchors


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_resolve(page):
    dead = [t for t in relative_targets(page) if not (page.parent / t.split("#")[0]).exists()]
    assert not dead, f"{page.relative_to(REPO)} links to missing files: {dead}"


def test_the_link_check_sees_links():
    page = REPO / "README.md"
    assert "docs/model.md" in relative_targets(page)
    assert "LICENSE" in relative_targets(page)


def test_readme_layout_names_every_package_and_module():
    """The Layout block of the README matches the tree: every package, sub-package and top-level module."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    layout = text.split("## Layout", 1)[1].split("```")[1]
    package = REPO / "crosslmm"
    names = [f"crosslmm/{p.name}" for p in package.glob("*.py") if p.name != "__init__.py"]
    for init in package.glob("*/**/__init__.py"):
        sub = init.parent.relative_to(package)
        names.append(f"crosslmm/{sub.as_posix()}/" if len(sub.parts) == 1 else f"{sub.name}/")
    missing = sorted(n for n in names if n not in layout)
    assert not missing, f"README.md's Layout does not mention {missing}"
