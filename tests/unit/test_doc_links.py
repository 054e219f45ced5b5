"""What the pages point a user to exists: every relative link of README.md, docs/*.md and the READMEs under
infra/ and functions/ names a file of the repository (and, with #anchor, a heading of that page), and every
repository path a page names in its text (`sensor/spool.py`, `infra/k8s/overlays/onprem`,
`tests/fixtures/notify/*.schema.json`) is there. A file moved or renamed otherwise leaves the page sending
readers to nothing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import REPO

PAGES = sorted([REPO / "README.md", *REPO.glob("docs/*.md"), *REPO.glob("infra/**/README.md"),
                *REPO.glob("functions/*/README.md")])
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_EXTERNAL_LINK = re.compile(r"\[[^\]]*\]\((?:https?|mailto):[^)]*\)")
_TOP = ("bench", "docs", "examples", "functions", "infra", "kubesonar", "lab", "scripts", "sensor", "shared", "tests")
# a path from one of the repository's top folders, not the tail of a longer one or of a URL
_PATH = re.compile(r"(?<![\w./<>-])((?:" + "|".join(_TOP) + r")/[\w.*<>/-]*)")
# named like a path, but no file: the sensor's namespace/service account, and what the native build writes
_NOT_FILES = {"kubesonar/kubesonar-sensor", "kubesonar/sensor/_native*.so"}


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    anchors, seen = set(), {}
    for line in page.read_text().splitlines():
        if match := re.match(r"#{1,6}\s+(.+?)\s*#*$", line):
            slug = _slug(match.group(1))
            anchors.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
            seen[slug] = seen.get(slug, 0) + 1
    return anchors


def _exists(page: Path, path: str) -> bool:
    """``path`` from the repository's root or the page's folder; <placeholder> and * match any name; an
    installed package path (kubesonar/sensor/...) is its folder in the checkout."""
    pattern = re.sub(r"<[^>]*>", "*", path)
    candidates = {pattern, re.sub(r"^kubesonar/(sensor|shared|functions)/", r"\1/", pattern)}
    for base in (REPO, page.parent):
        for candidate in candidates:
            if any(base.glob(candidate)) if "*" in candidate else (base / candidate).exists():
                return True
    return False


def test_there_are_pages():
    assert REPO / "docs" / "sensor.md" in PAGES and REPO / "infra" / "aws" / "README.md" in PAGES


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in _LINK.findall(page.read_text()):
        if re.match(r"(?:https?|mailto):", target):
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(REPO)}")
    assert not broken, broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_repository_path_a_page_names_exists(page):
    text = _EXTERNAL_LINK.sub("", page.read_text())  # a link's text may name a path of another repository
    named = {m.group(1).rstrip(".,:;-") for m in _PATH.finditer(text)}
    missing = sorted(p for p in named - _NOT_FILES if not _exists(page, p))
    assert not missing, f"{page.relative_to(REPO)} names {missing}, not in the repository"
