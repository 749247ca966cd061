"""Every relative link and image in README.md and docs/**/*.md resolves: the file exists, and an
#anchor into a markdown file names one of its headings (GitHub's slug rules). A section moved
between pages then fails here instead of leaving a dead link."""

import re
import unicodedata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$", re.M)


def markdown_files(root=REPO):
    """README.md and every markdown file under docs/."""
    readme = root / "README.md"
    return ([readme] if readme.exists() else []) + sorted((root / "docs").rglob("*.md"))


def github_slug(heading):
    """The anchor GitHub gives a heading: its text as rendered (no code ticks, emphasis or link
    targets), lower-cased, every character that is not a letter, mark, number, space, hyphen or
    underscore dropped, spaces turned into hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link renders as its text
    text = text.replace("`", "").lower()
    kept = [
        c
        for c in text
        if c in " -_" or unicodedata.category(c)[0] in "LMN" or unicodedata.category(c) == "Pc"
    ]
    return "".join(kept).replace(" ", "-")


def anchors(path):
    """Every heading anchor of a markdown file; repeated slugs get -1, -2, ... as on GitHub."""
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    seen, found = {}, set()
    for _, heading in HEADING.findall(text):
        slug = github_slug(heading)
        if slug in seen:
            seen[slug] += 1
            slug = f"{slug}-{seen[slug]}"
        else:
            seen[slug] = 0
        found.add(slug)
    return found


def broken_links(path):
    """'file: target (why)' for each relative link or image of a markdown file that does not
    resolve. Links inside code (fenced or inline) are not links; absolute URLs are not checked."""
    text = INLINE_CODE.sub("", FENCE.sub("", path.read_text(encoding="utf-8")))
    problems = []
    for target in LINK.findall(text):
        if not target or re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):
            continue  # http(s):, mailto: and the like
        where, _, anchor = target.partition("#")
        dest = (path.parent / where).resolve() if where else path
        if not dest.exists():
            problems.append(f"{path}: {target} (no file {dest})")
        elif anchor and dest.suffix == ".md" and anchor.lower() not in anchors(dest):
            problems.append(f"{path}: {target} (no heading #{anchor} in {dest.name})")
    return problems


def test_github_slugs_of_this_projects_headings():
    assert github_slug("Where DDC-HM wins and where it loses") == (
        "where-ddc-hm-wins-and-where-it-loses"
    )
    # the em dash goes, both spaces beside it become hyphens
    assert github_slug("2026-12-03 (evening) — wide binary chains") == (
        "2026-12-03-evening--wide-binary-chains"
    )
    assert github_slug("Synthetic truths at 15 CPU s (`ddchm reproduce synthetic`)") == (
        "synthetic-truths-at-15-cpu-s-ddchm-reproduce-synthetic"
    )
    assert github_slug("The `wake_encodings` option, **in bold**") == (
        "the-wake_encodings-option-in-bold"
    )


def test_the_checker_finds_a_missing_file_a_missing_heading_and_nothing_else(tmp_path):
    (tmp_path / "docs" / "lab").mkdir(parents=True)
    (tmp_path / "docs" / "figures").mkdir()
    (tmp_path / "docs" / "figures" / "curve.png").write_bytes(b"png")
    (tmp_path / "docs" / "RESULTS.md").write_text(
        "# Results\n\n## Where it wins\n\n## Where it wins\n\n![curve](figures/curve.png)\n"
    )
    (tmp_path / "README.md").write_text(
        "[ok](docs/RESULTS.md#where-it-wins) [dup](docs/RESULTS.md#where-it-wins-1)\n"
        "[web](https://example.org/x) `[code](nowhere.md)`\n"
        "```\n[fenced](nowhere.md)\n```\n"
        "[gone](docs/MOVED.md) [no heading](docs/RESULTS.md#where-it-loses)\n"
    )
    (tmp_path / "docs" / "lab" / "2026-12-03.md").write_text(
        "# Lab\n\n[up](../RESULTS.md) [self](#lab) ![curve](../figures/curve.png)\n"
        "![lost](figures/curve.png)\n"
    )
    problems = [p for f in markdown_files(tmp_path) for p in broken_links(f)]
    assert len(problems) == 3, problems
    assert "docs/MOVED.md (no file" in problems[0]
    assert "#where-it-loses (no heading" in problems[1]
    assert "figures/curve.png (no file" in problems[2] and "2026-12-03.md" in problems[2]


def test_every_relative_link_and_image_in_the_docs_resolves():
    files = markdown_files()
    assert REPO / "README.md" in files and REPO / "docs" / "RESULTS.md" in files
    problems = [p for f in files for p in broken_links(f)]
    assert not problems, "broken links:\n" + "\n".join(problems)
