"""The front page stays a front page, and every page, link and config path it and the docs name exists."""

from __future__ import annotations

import re

import pytest

from tests.conftest import REPO

PAGES = [REPO / "README.md", REPO / "benchmarks" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)\s]*)?\)")
CONFIG = re.compile(r"(?<![\w/.])configs/[\w/.-]+\.yaml\b")


def test_the_readme_is_a_front_page_that_links_every_docs_page():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    for page in (REPO / "docs").glob("*.md"):
        assert f"docs/{page.name}" in readme, f"README.md does not link docs/{page.name}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_and_config_a_page_names_exists(page):
    text = page.read_text()
    for target, _ in LINK.findall(text):
        if "://" not in target:
            assert (page.parent / target).exists(), f"{page.name} links {target}, which does not exist"
    for config in CONFIG.findall(text):
        assert (REPO / config).is_file(), f"{page.name} names {config}, which does not exist"
