"""The front page and the pages under docs/ link only to what exists, and the front page stays short.

Every relative link of README.md and docs/*.md must name a file or folder inside the repository, and a
`#anchor` must name a heading of the page it points to. Anchors follow GitHub's rule (its
TableOfContentsFilter, as in the html-pipeline gem): the heading's text, lower-cased, every character
that is not a word character, a hyphen or a space dropped, each space made a hyphen (runs of hyphens
are kept), and a repeated anchor given `-1`, `-2`, ... in page order. Links inside code (fenced blocks
and `spans`) are text, not links, so they are not checked.
"""
from __future__ import annotations

import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FRONT_PAGE_MAX_LINES = 220

FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+)(?!`).+?(?<!`)\1(?!`)", re.DOTALL)
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.MULTILINE)
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$", re.MULTILINE)
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
NOT_IN_ANCHOR = re.compile(r"[^\w\- ]")


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def prose(markdown: str) -> str:
    """The text outside fenced code blocks."""
    return FENCE.sub("", markdown)


def heading_text(source: str) -> str:
    """A heading's text as rendered: code spans' content, links' text, no emphasis markers."""
    text = CODE_SPAN.sub(lambda m: m.group(0)[len(m.group(1)):-len(m.group(1))], source)
    text = re.sub(r"!?\[((?:[^\[\]]|\[[^\]]*\])*)\]\([^)]*\)", r"\1", text)
    return re.sub(r"<[^>]+>", "", text)


def anchor(text: str) -> str:
    return NOT_IN_ANCHOR.sub("", text.lower()).replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    seen: set[str] = set()
    for match in HEADING.finditer(prose(markdown)):
        base = anchor(heading_text(match.group(2)))
        candidate, n = base, 0
        while candidate in seen:
            n += 1
            candidate = f"{base}-{n}"
        seen.add(candidate)
    return seen


@cache
def anchors_of(page: Path) -> frozenset[str]:
    return frozenset(anchors(page.read_text()))


def links(markdown: str) -> list[str]:
    text = CODE_SPAN.sub("", prose(markdown))
    return [m.group(1) for m in INLINE_LINK.finditer(text)] + REFERENCE_DEFINITION.findall(text)


def broken_links(page: Path) -> list[str]:
    problems = []
    for target in links(page.read_text()):
        if SCHEME.match(target):
            continue  # http(s), mailto: not ours to check offline
        path_part, _, fragment = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        where = f"{page.relative_to(ROOT)}: link {target!r}"
        if not resolved.is_relative_to(ROOT):
            problems.append(f"{where} leaves the repository")
        elif not resolved.exists():
            problems.append(f"{where}: no file {resolved.relative_to(ROOT)}")
        elif fragment and (resolved.suffix != ".md" or fragment not in anchors_of(resolved)):
            problems.append(f"{where}: no heading #{fragment} in {resolved.relative_to(ROOT)}")
    return problems


def test_anchors_follow_githubs_rule():
    # Expected values: GitHub's rule applied by hand (punctuation dropped, spaces -> hyphens, no squeeze).
    assert anchor(heading_text("Caches on object storage (`--out s3://bucket/prefix`)")) == (
        "caches-on-object-storage---out-s3bucketprefix")
    assert anchor(heading_text("CPU cores per GPU")) == "cpu-cores-per-gpu"
    assert anchor(heading_text("Evidence: training from the cache")) == "evidence-training-from-the-cache"
    assert anchor(heading_text("The `lease_seconds` and [link](x.md)")) == "the-lease_seconds-and-link"
    assert anchors("# A\n## A\n```\n# A\n```\n## A\n") == {"a", "a-1", "a-2"}


def test_links_skip_code_and_find_every_form():
    text = "[a](x.md) `[b](y.md)` ![c](d/e.png \"t\")\n```\n[f](g.md)\n```\n[r]: ref.md\n[h](#sec)"
    assert links(text) == ["x.md", "d/e.png", "#sec", "ref.md"]


def test_every_relative_link_resolves():
    problems = [problem for page in pages() for problem in broken_links(page)]
    assert not problems, "\n".join(problems)


def test_the_front_page_is_short():
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= FRONT_PAGE_MAX_LINES, f"README.md has {lines} lines: move detail to a docs/ page"
