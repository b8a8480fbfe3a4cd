"""The manual (README.md and docs/*.md) holds together: every link is relative and reaches a file
of the repository (and a heading of it, when it names one), and the README's two commands are
the ones that install and run hapolicy and that CI runs (.ci/run). What each page says of the
code is held by the tests of that code (the option table: test_check_config.py, the bounds:
test_config_bounds.py, the examples, signals and commands: test_manpage.py and test_admin.py).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from testkit.repo import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """The anchors GitHub makes of a page's headings: lower case, punctuation dropped, blanks
    as dashes (no page repeats a heading)."""
    out = set()
    for title in re.findall(r"^#+ (.+)$", page.read_text(), re.M):
        out.add(re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-"))
    return out


def code_free(text: str) -> str:
    """The page without its code blocks and code spans (their brackets are not links)."""
    text = re.sub(r"^(    |\t).*$", "", text, flags=re.M)
    return re.sub(r"`[^`\n]*`", "", text)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_is_relative_and_reaches_a_file_and_heading(page):
    links = LINK.findall(code_free(page.read_text()))
    for link in links:
        assert not re.match(r"[a-z][a-z0-9+.-]*:", link, re.I), (page.name, link)  # no scheme
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        assert target.is_file(), (page.name, link)
        assert REPO.resolve() in target.parents, (page.name, link)
        if anchor:
            assert anchor in anchors(target), (page.name, link)


def test_no_page_points_outside_the_repository():
    for page in PAGES:
        assert not re.search(r"\]\(\s*(https?|ftp)://", page.read_text()), page.name
        assert not re.search(r"<https?://", page.read_text()), page.name


def test_the_readme_links_every_page_of_the_manual():
    readme = (REPO / "README.md").read_text()
    for page in PAGES[1:]:
        assert f"](docs/{page.name})" in readme, page.name


def test_the_readme_has_the_two_commands_ci_runs_the_second():
    readme = (REPO / "README.md").read_text()
    assert ("\n    pip install . && hapolicy --listen 127.0.0.1:10060 -L -l "
            "-s GREY1=127.0.0.1:10023\n") in readme
    assert "\n    ./scripts/run-tests\n" in readme
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == "./scripts/run-tests"
