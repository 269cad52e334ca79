"""The documentation a newcomer reads (issue 30): a short README that links every page under
docs/, links and pictures that resolve, a docs page named by every command's --help, and
`e4e --version`."""
from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest

from conftest import ROOT, run_e4e

README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
README_MAX_LINES = 200

FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)


def _prose(path: Path) -> str:
    """The text outside code, where a `[x](y)` is a link and not an example."""
    return INLINE_CODE.sub("", FENCE.sub("", path.read_text()))


def _links(path: Path) -> list[str]:
    return LINK.findall(_prose(path))


def _anchors(path: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens, -1, -2... on repeats."""
    seen: dict[str, int] = {}
    out = set()
    for title in HEADING.findall(FENCE.sub("", path.read_text())):
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        out.add(slug if count == 0 else f"{slug}-{count}")
    return out


def test_readme_is_short():
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; the details belong under docs/"


def test_readme_links_every_docs_page():
    linked = {(README.parent / target.split("#")[0]).resolve() for target in _links(README)}
    assert PAGES, "no pages under docs/"
    unlinked = [page.name for page in PAGES if page.resolve() not in linked]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


@pytest.mark.parametrize("path", [README, *PAGES], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_and_pictures_resolve(path):
    broken = []
    for target in _links(path):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ... not checked offline
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path.resolve()
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no such heading in {dest.name})")
    assert not broken, f"{path.name}: {broken}"


def _commands(*group: str) -> list[str]:
    """The command names a --help lists under 'Commands:'."""
    proc = run_e4e(*group, "--help")
    assert proc.returncode == 0, proc.stderr
    listing = proc.stdout.split("Commands:\n", 1)[1].split("\n\n", 1)[0]  # the epilog follows a blank line
    return re.findall(r"^  (\S+)\s", listing, re.M)


def _all_commands() -> list[tuple[str, ...]]:
    top = _commands()
    assert "invert" in top and "directions" in top, top
    return [(name,) for name in top] + [("directions", sub) for sub in _commands("directions")]


def test_every_command_help_names_an_existing_docs_page():
    missing = []
    for command in _all_commands():
        proc = run_e4e(*command, "--help")
        assert proc.returncode == 0, (command, proc.stderr)
        pages = re.findall(r"docs/[\w-]+\.md", proc.stdout)
        if not pages or not all((ROOT / page).is_file() for page in pages):
            missing.append((" ".join(command), pages))
    assert not missing, f"--help without an existing docs page: {missing}"


def test_version_prints_the_installed_version():
    proc = run_e4e("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"e4e {metadata.version('e4e-cli')}\n", proc.stdout
    assert proc.stderr == ""


def test_every_setting_is_documented():
    names = set(re.findall(r"E4E_[A-Z0-9_]+", (ROOT / "e4e_cli" / "settings.py").read_text()))
    table = (DOCS / "troubleshooting.md").read_text()
    assert names and not sorted(n for n in names if n not in table), "settings missing from docs/troubleshooting.md"
