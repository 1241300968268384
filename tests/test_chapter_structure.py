"""Every chapter has the book's shape: learning goals first, then at the end
a summary, a "when to use" box, exercises each with a collapsed hint and a
worked solution, and references cited from references.bib."""

from __future__ import annotations

import json
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
from notebook_tools import toc_files  # noqa: E402

CHAPTERS = [
    ROOT / f"{entry}.ipynb"
    for entry in toc_files()
    if (ROOT / f"{entry}.ipynb").exists()
]
BIB_KEYS = set(
    re.findall(r"^@\w+\{([^,]+),", (ROOT / "references.bib").read_text(), re.M)
)


def markdown(path: pathlib.Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    return "\n\n".join(
        "".join(c["source"]) for c in cells if c["cell_type"] == "markdown"
    )


def cited_keys(text: str) -> set[str]:
    keys = set()
    for group in re.findall(r"\{cite(?::\w+)?\}`([^`]+)`", text):
        keys.update(k.strip() for k in group.split(","))
    return keys


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_shape(path):
    text = markdown(path)
    missing = []
    if "Learning goals" not in text.split("\n## ", 1)[0]:
        missing.append("learning goals before the first section")
    if not re.search(r"^## Summary", text, re.M):
        missing.append("a '## Summary' section")
    if not re.search(
        r"^:::\{admonition\} [^\n]*[Ww]hen to use[^\n]*\n", text, re.M
    ):
        missing.append("an admonition box titled '... when to use ...'")
    exercises = re.search(
        r"^## Exercises\n(.*?)(?=^## |\Z)", text, re.M | re.S
    )
    if not exercises:
        missing.append("a '## Exercises' section")
    elif ":class: dropdown" not in exercises.group(1):
        missing.append("a hint or solution in a dropdown among the exercises")
    if "notation.md" not in text or "glossary.md" not in text:
        missing.append("links to notation.md and glossary.md")
    references = re.search(r"^## References\n(.*)", text, re.M | re.S)
    if not references or "{cite" not in references.group(1):
        missing.append("'## References' with {cite} roles")
    assert not missing, f"{path.name} lacks: " + "; ".join(missing)


def test_cited_keys_are_in_the_bibliography():
    pages = [*CHAPTERS, *sorted((ROOT / "book").glob("*.md"))]
    unknown = {}
    for page in pages:
        text = markdown(page) if page.suffix == ".ipynb" else page.read_text()
        missing = cited_keys(text) - BIB_KEYS
        if missing:
            unknown[page.name] = sorted(missing)
    assert not unknown, f"keys not in references.bib: {unknown}"


def test_the_bibliography_has_its_papers():
    assert len(BIB_KEYS) >= 30
    text = (ROOT / "references.bib").read_text()
    for arxiv in ("2004.05150", "2007.14062", "2205.14135", "1910.01108"):
        assert f"eprint = {{{arxiv}}}" in text, arxiv


def exercises(text: str) -> list[str]:
    """The numbered items of the '## Exercises' section, each with the
    lines indented under it."""
    section = re.search(r"^## Exercises\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    if not section:
        return []
    return re.split(r"^\d+\. ", section.group(1), flags=re.M)[1:]


def dropdowns(item: str) -> set[str]:
    return set(
        re.findall(r":::\{admonition\} (\w+)\n\s*:class: dropdown", item)
    )


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_every_exercise_has_a_hint_and_a_worked_solution(path):
    items = exercises(markdown(path))
    assert items, f"{path.name} has no numbered exercises"
    lacking = {
        number: sorted({"Hint", "Solution"} - dropdowns(item))
        for number, item in enumerate(items, start=1)
        if not {"Hint", "Solution"} <= dropdowns(item)
    }
    assert not lacking, f"{path.name}: exercises lacking {lacking}"


def test_the_exercise_check_can_fail():
    text = (
        "## Exercises\n\n1. Do this.\n\n   :::{admonition} Hint\n"
        "   :class: dropdown\n   Look.\n   :::\n2. And that.\n"
    )
    items = exercises(text)
    assert [dropdowns(item) for item in items] == [{"Hint"}, set()]


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_a_solution_that_runs_is_the_collapsed_code_cell_below_it(path):
    """A solution that says its code runs below is followed by a code cell
    that the site collapses (``hide-cell``) and nbval runs, headed with the
    exercise's number."""
    cells = json.loads(path.read_text())["cells"]
    wrong = []
    for index, cell in enumerate(cells[:-1]):
        text = "".join(cell["source"])
        if cell["cell_type"] != "markdown" or "hidden cell below" not in text:
            continue
        numbers = re.findall(r"^(\d+)\. ", text, flags=re.M)
        below = cells[index + 1]
        first = "".join(below["source"]).split("\n")[0]
        if (
            below["cell_type"] != "code"
            or "hide-cell" not in below["metadata"].get("tags", [])
            or not numbers
            or not first.startswith(f"# Exercise {numbers[-1]}, a solution")
        ):
            wrong.append((index, first))
    assert not wrong, f"{path.name}: solutions without their cell: {wrong}"
