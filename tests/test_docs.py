"""The documentation: README.md and docs/*.md must not point at anything that is not there, and the README teaches
first (the tutorial near the top, every term explained before it is used).

Every relative link (and image) must name an existing file or folder of the repository, and every #anchor must name a
heading of the file it points into, slugged the way GitHub slugs headings: lowercase, punctuation dropped except
hyphens, underscores and spaces, spaces turned into hyphens, and -1, -2, ... added to repeated headings.
Links inside code (fenced blocks and `inline code`) are not links, and web addresses are not checked.
Plain re + pathlib: no Markdown library, no network, well under a second.
"""
import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
README_MAX_BYTES = 60_000

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)[ \t]*#*[ \t]*$")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
# [text](target "title") and ![alt](target); the text may hold brackets one level deep, e.g. [`x[0]`](y).
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^()\s<>]*)>?(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
HTML_LINK = re.compile(r"""<(?:a|img)\b[^>]*?\b(?:href|src)\s*=\s*["']([^"']*)["']""", re.IGNORECASE)
HTML_ANCHOR = re.compile(r"""<a\b[^>]*?\b(?:id|name)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def documentation_files():
    """README.md and every Markdown file directly in docs/."""
    return [REPO_ROOT / "README.md"] + sorted((REPO_ROOT / "docs").glob("*.md"))


def prose_lines(text, blank_inline_code=True):
    """(line number, line) of the lines outside fenced code blocks, with inline code spans blanked out (or kept)."""
    fence = None
    for number, line in enumerate(text.splitlines(), start=1):
        match = FENCE.match(line)
        if fence is not None:
            if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence):
                fence = None
            continue
        if match:
            fence = match.group(1)
            continue
        yield number, INLINE_CODE.sub(lambda m: " " * len(m.group(0)), line) if blank_inline_code else line


def github_slug(heading):
    """The anchor GitHub gives a heading (before duplicates are numbered)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading counts by its text
    text = re.sub(r"<[^>]+>", "", text)  # so does HTML
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)  # drop punctuation (backticks, colons, dots, quotes, ...)
    return text.replace(" ", "-")


def anchors(path):
    """Every anchor a Markdown file offers: its headings' slugs (repeats numbered -1, -2, ...) and <a id=...>."""
    found, seen = set(), {}
    text = path.read_text(encoding="utf-8")
    for _, line in prose_lines(text, blank_inline_code=False):  # `code` in a heading is part of its anchor
        match = HEADING.match(line)
        if match:
            slug = github_slug(match.group(2))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            found.add(slug if count == 0 else f"{slug}-{count}")
        found.update(HTML_ANCHOR.findall(line))
    return found


def links(path):
    """(line number, target) of every link and image in a Markdown file, outside code."""
    text = path.read_text(encoding="utf-8")
    for number, line in prose_lines(text):
        targets = INLINE_LINK.findall(line) + HTML_LINK.findall(line)
        definition = REFERENCE_DEFINITION.match(line)
        if definition:
            targets.append(definition.group(1))
        for target in targets:
            yield number, target


def broken_links(path, root=REPO_ROOT):
    """One message per link of `path` that points at a missing file, a file outside `root`, or a missing anchor."""
    problems, anchor_cache = [], {}
    for number, target in links(path):
        where = f"{path.relative_to(root)}:{number}: {target!r}"
        if not target:
            problems.append(f"{where}: empty link")
            continue
        if SCHEME.match(target) or target.startswith("//"):
            continue  # a web address (https:, mailto:, ...): not checked here
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path.resolve()
        if not linked.is_relative_to(root.resolve()):
            problems.append(f"{where}: points outside the repository")
            continue
        if not linked.exists():
            problems.append(f"{where}: no such file")
            continue
        if anchor:
            if linked.suffix.lower() != ".md" or linked.is_dir():
                problems.append(f"{where}: an anchor into a file that is not Markdown")
                continue
            if linked not in anchor_cache:
                anchor_cache[linked] = anchors(linked)
            if anchor not in anchor_cache[linked]:
                problems.append(f"{where}: no heading with the anchor #{anchor} in {linked.relative_to(root.resolve())}")
    return problems


# ----------------------------------------------------------------------------------------------------------------------
# The repository's documentation
# ----------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", documentation_files(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_no_dead_links(path):
    problems = broken_links(path)
    assert not problems, "dead links:\n" + "\n".join(problems)


def test_readme_stays_a_tutorial():
    """The README is the lesson; the operator's reference lives in docs/."""
    size = len((REPO_ROOT / "README.md").read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size:,} bytes, over {README_MAX_BYTES:,}: move reference to docs/"


def test_the_tutorial_comes_first():
    """Set-up and a two-line "Upscale a photo" come before the tutorial, everything else after it."""
    lines = (REPO_ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    start = next(number for number, line in enumerate(lines, start=1) if line.startswith("## Tutorial part 1"))
    assert start <= 0.15 * len(lines), f"the tutorial starts at line {start} of {len(lines)}: move reference below it"


# Terms the README uses, each with the words that explain it. A term's first use anywhere in the README (headings,
# tables, code and captions included) must not come before the line where its explanation starts; the explanation
# usually is that first use. {term: (regular expression of a use, the explaining text as written, line breaks aside)}
TERMS = {
    "x4": (r"\bx4\b", "**x4** (4 times the width and the height"),
    "HR": (r"\bHR\b", "**HR**, the high-resolution image"),
    "LR": (r"\bLR\b", "**LR**, the low-resolution image"),
    "bicubic": (r"(?i)\bbicubic\b", "**bicubic** interpolation (each new pixel a smooth weighted average"),
    "PReLU": (r"\bPReLU\b", "**PReLU** is a ReLU whose slope for negative inputs is learned"),
    "batch norm": (r"(?i)\bbatch norm", "**batch norm** (batch normalisation) rescales each channel"),
    "MSE": (r"\bMSE\b", "mean squared error (**MSE**)"),
    "PSNR": (r"\bPSNR\b", "**PSNR** (peak signal-to-noise ratio"),
    "SSIM": (r"\bSSIM\b", "**SSIM** (structural similarity"),
    "Y": (r"\bY\b(?![.-])", "**Y**, the luma (brightness) channel"),  # not an author's initial (T.-Y. Lin)
    "GAN": (r"\bGANs?\b", "**generative adversarial network (GAN)**"),
    "VGG": (r"\bVGG", "**VGG19** (VGG for short), a 19-layer classifier"),
    "EMA": (r"\bEMA\b|ema_decay", "an **EMA** (exponential moving average) of the generator's weights"),
    "NIQE": (r"\bNIQE\b", "**NIQE** scores how far an image's local statistics are from those of natural photos"),
    "SRVGGNetCompact": (r"\bSRVGGNetCompact\b", "`models.SRVGGNetCompact`, Part D of `models.py`: a plain stack"),
}


def terms_used_before_explained(text, terms):
    """One message per term whose first use comes on a line before its explanation, or whose explanation is missing."""
    def line_of(offset):
        return text.count("\n", 0, offset) + 1

    problems = []
    for term, (use, explanation) in terms.items():
        explained = re.search(re.escape(explanation).replace(r"\ ", r"\s+"), text)
        if explained is None:
            problems.append(f"{term!r}: its explanation {explanation!r} is missing")
            continue
        first_use = re.search(use, text)
        if line_of(first_use.start()) < line_of(explained.start()):
            problems.append(f"{term!r} is used on line {line_of(first_use.start())} "
                            f"({text[first_use.start():first_use.start() + 40]!r}...) before it is explained on line "
                            f"{line_of(explained.start())}")
    return problems


def test_the_readme_explains_each_term_before_using_it():
    problems = terms_used_before_explained((REPO_ROOT / "README.md").read_text(encoding="utf-8"), TERMS)
    assert not problems, "explain these terms at their first use, or use them later:\n" + "\n".join(problems)


def test_the_term_check_finds_an_early_use():
    terms = {"PSNR": (r"\bPSNR\b", "**PSNR** (peak signal-to-noise ratio")}
    explained = "Intro.\n\nWe maximise **PSNR**\n(peak signal-to-noise ratio), a score.\n\nPSNR again.\n"
    assert terms_used_before_explained(explained, terms) == []  # the explanation may break across lines
    early = "A table of PSNR figures.\n\n" + explained
    assert "used on line 1" in terms_used_before_explained(early, terms)[0]
    assert "missing" in terms_used_before_explained("PSNR, never explained.\n", terms)[0]


def test_every_reference_page_is_linked_from_the_readme():
    linked = {(REPO_ROOT / target.partition("#")[0]).resolve()
              for _, target in links(REPO_ROOT / "README.md") if not SCHEME.match(target) and target.partition("#")[0]}
    pages = sorted((REPO_ROOT / "docs").glob("*.md"))
    assert pages, "docs/ has no reference pages"
    missing = [str(page.relative_to(REPO_ROOT)) for page in pages if page.resolve() not in linked]
    assert not missing, f"reference pages that README.md never links to: {missing}"


# ----------------------------------------------------------------------------------------------------------------------
# The checker itself
# ----------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("heading, slug", [
    ("Set-up and tests", "set-up-and-tests"),
    ("Quick start: the whole pipeline on a CPU in minutes", "quick-start-the-whole-pipeline-on-a-cpu-in-minutes"),
    ("What `--recipe esrgan` sets", "what---recipe-esrgan-sets"),
    ("Using `eval.py`", "using-evalpy"),
    ('Why the generator\'s adversarial target is "HR"', "why-the-generators-adversarial-target-is-hr"),
    ("Pixel-unshuffle: x2 and x1 models from an x4 network", "pixel-unshuffle-x2-and-x1-models-from-an-x4-network"),
    ("The compact network: SRVGGNetCompact", "the-compact-network-srvggnetcompact"),
    ("channels_last", "channels_last"),
    ("Ctrl+C, cluster time limits and NaN", "ctrlc-cluster-time-limits-and-nan"),
    ("See [the guide](docs/x.md) now", "see-the-guide-now"),
])
def test_github_slug(heading, slug):
    assert github_slug(heading) == slug


def test_checker_finds_broken_links(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text(
        "# A page\n\n## Same\n\n## Same\n\n## Using `eval.py`\n\n```\n# not a heading\n```\n\n<a id=\"custom\"></a>\n", "utf-8")
    (tmp_path / "picture.png").write_bytes(b"")
    readme = tmp_path / "README.md"
    readme.write_text(
        "# Title: one\n\n## Part 1\n\n"
        "[fine](docs/page.md) [fine](docs/page.md#a-page) [fine](docs/page.md#same-1) [fine](docs/page.md#custom)\n"
        "[fine](docs/page.md#using-evalpy) [broken](docs/page.md#not-a-heading)\n"
        "[fine](#title-one) [fine](#part-1 \"a title\") ![fine](picture.png) [fine](https://example.org/nowhere.md)\n"
        "[fine](docs/) `[not a link](missing.md)`\n"
        "```\n[not a link](missing.md)\n```\n"
        "[broken](docs/missing.md)\n"
        "[broken](docs/page.md#same-2)\n"
        "[broken](#part-2)\n"
        "![broken](pictures.png)\n"
        "[broken](../outside.md)\n"
        "[broken][ref]\n\n[ref]: docs/gone.md\n", "utf-8")
    problems = broken_links(readme, root=tmp_path)
    assert [p.split(":")[1] for p in problems] == ["6", "12", "13", "14", "15", "16", "19"], problems
    assert "#not-a-heading" in problems[0] and "no such file" in problems[1]
    assert "#same-2" in problems[2] and "#part-2" in problems[3] and "outside the repository" in problems[5]
