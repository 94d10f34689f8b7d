"""The README is a front door and docs/ holds the detail: the README stays short, every relative link in them lands on
a file (and a heading, for `#anchor`s, by GitHub's slug rule), and every docs/ page is reachable from the README.
Pure text: no model, no import of modernlm."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
MAX_README_LINES = 200

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)  # fenced code blocks, whole
CODE_SPAN = re.compile(r"`+[^`]*`+")  # inline code: its brackets are not links
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")  # [text](target "title")
REF_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)  # [label]: target
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$", re.M)


def _prose(text: str) -> str:
    """The text outside fenced code blocks and code spans: where links and headings are."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def links(text: str) -> list[str]:
    prose = _prose(text)
    return INLINE_LINK.findall(prose) + REF_LINK.findall(prose)


def is_relative(target: str) -> bool:
    return not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target)  # no scheme: http:, https:, mailto:, ...


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its rendered text lowercased, punctuation dropped (letters, digits, spaces,
    hyphens and underscores kept), spaces turned into hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading's anchor; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    for _, heading in HEADING.findall(FENCE.sub("", text)):  # a `# comment` in a bash block is no heading
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def test_the_slug_rule_on_known_headings():
    assert slug("The two commands") == "the-two-commands"
    assert slug("Compress: quantized weights, GGUF export, QLoRA") == "compress-quantized-weights-gguf-export-qlora"
    assert slug("Describe a model: `info`") == "describe-a-model-info"
    assert slug("What is checked, and against what") == "what-is-checked-and-against-what"
    assert anchors("# A\n## A\n```bash\n# not a heading\n```\n") == {"a", "a-1"}


def test_the_readme_is_a_front_door():
    n = len(README.read_text().splitlines())
    assert n <= MAX_README_LINES, (
        f"README.md has {n} lines; move detail to a page under docs/ (at most {MAX_README_LINES})"
    )


@pytest.mark.parametrize("doc", [README, *PAGES], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc: Path):
    broken = []
    for target in links(doc.read_text()):
        if not is_relative(target):
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            broken.append(f"{target}: no file {file.relative_to(ROOT) if file.is_relative_to(ROOT) else file}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text()):
            broken.append(f"{target}: no heading with the anchor #{anchor} in {file.name}")
    assert not broken, f"{doc.name}: " + "; ".join(broken)


def test_every_docs_page_is_linked_from_the_readme():
    assert PAGES, "docs/ holds no page"
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in links(README.read_text()) if is_relative(t)}
    orphans = [p.name for p in PAGES if p.resolve() not in linked]
    assert not orphans, f"docs pages the README does not link to: {orphans}"
