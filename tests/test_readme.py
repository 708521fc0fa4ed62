"""The README is what a newcomer reads in five minutes: short, every link in it (and in docs/)
leads to a file or a section that exists, and its "What you'll see" is what the demo shows."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    in_code = False
    found = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            found.add(_slug(line.lstrip("#")))
    return found


def test_the_readme_fits_in_five_minutes():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 200


def test_every_relative_link_resolves():
    broken = []
    for doc in DOCS:
        for target in LINK.findall(doc.read_text(encoding="utf-8")):
            if re.match(r"^[a-z]+:", target):          # https:, mailto:, slack:
                continue
            path, _, anchor = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            if not file.exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
                broken.append(f"{doc.relative_to(ROOT)}: {target} (no such section)")
    assert broken == []


def test_the_readme_links_every_document():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = [doc.name for doc in DOCS[1:] if f"docs/{doc.name}" not in readme]
    assert missing == []


def test_what_you_will_see_is_the_scripted_demo():
    """The README's transcript is an excerpt of the real scripted demo (embedded PostgreSQL, the real
    bot over signed HTTP, localslack), its times, ids and pids made steady."""
    from bot.console import README_END, README_START, readme_excerpt
    from tests.support.demo import scripted_demo

    text, _ = scripted_demo()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split(README_START, 1)[1].split(README_END, 1)[0].strip("\n")
    assert block == readme_excerpt(text), (
        "README.md's demo transcript is out of date with the scripted demo: run `make readme-transcript` "
        "(python -m bot.console --readme README.md) and commit README.md")
