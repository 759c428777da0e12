"""The Markdown documentation: every relative link and image resolves, and the README stays a front door."""

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from models.config import PROJECT_DIR

README_MAX_LINES = 160
EXTERNAL_SCHEMES = ("http://", "https://", "mailto:")

FENCED_BLOCK = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
# [text](target) and ![alt](target), with an optional "title" after the target.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")

MARKDOWN_FILES = [
    "README.md",
    "CONTRIBUTING.md",
    *sorted(path.relative_to(PROJECT_DIR).as_posix() for path in (PROJECT_DIR / "docs").glob("*.md")),
]


def relative_targets(markdown: str) -> list[str]:
    """Link and image targets that name a file, without #fragment; code and external links left out."""
    prose = INLINE_CODE.sub("", FENCED_BLOCK.sub("", markdown))
    targets = []
    for target in LINK.findall(prose):
        if target.startswith(EXTERNAL_SCHEMES) or target.startswith("#"):
            continue
        targets.append(unquote(target.split("#", 1)[0]))
    return targets


def test_relative_targets_skip_external_anchors_and_code() -> None:
    markdown = (
        "[api](docs/api.md#routes) ![plot](../plot.png) [site](https://example.org) [me](mailto:a@b.c)\n"
        '[here](#call-it) `[not](a-link.md)` [titled](model.md "Model")\n'
        "```bash\necho '[not](in-code.md)'\n```\n"
    )
    assert relative_targets(markdown) == ["docs/api.md", "../plot.png", "model.md"]


@pytest.mark.parametrize("name", MARKDOWN_FILES)
def test_docs_relative_links_resolve(name: str) -> None:
    path = PROJECT_DIR / name
    if not path.exists():
        pytest.skip(f"{name} does not exist")
    broken = [target for target in relative_targets(path.read_text()) if not (path.parent / target).exists()]
    assert broken == [], f"{name} links to missing files: {broken}"


def test_docs_directory_has_pages() -> None:
    assert len(MARKDOWN_FILES) > 2, "docs/*.md found no pages: the link test would check only the README"


def test_readme_links_every_docs_page() -> None:
    linked = {Path(target).as_posix() for target in relative_targets((PROJECT_DIR / "README.md").read_text())}
    pages = {name for name in MARKDOWN_FILES if name.startswith("docs/")}
    assert pages - linked == set()


def test_readme_is_at_most_160_lines() -> None:
    lines = len((PROJECT_DIR / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move details into docs/"
