"""Notebook hygiene (README, "How the tests work"): listed, executed, clean."""

from __future__ import annotations

import json
import pathlib
import re
import tomllib

import nbformat
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
from notebook_tools import (  # noqa: E402
    LISTING_HEADER,
    listed_object,
    notebook_problems,
    toc_files,
)

NOTEBOOKS = sorted(
    p
    for p in (ROOT / "book").rglob("*.ipynb")
    if ".ipynb_checkpoints" not in p.parts
)
LISTED = toc_files()


def name_of(path: pathlib.Path) -> str:
    return path.relative_to(ROOT).with_suffix("").as_posix()


def test_there_are_notebooks():
    assert NOTEBOOKS, "book/ holds no notebook"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=name_of)
def test_notebook_hygiene(path):
    problems = notebook_problems(
        json.loads(path.read_text()), name_of(path), LISTED
    )
    assert not problems, "\n".join(problems)


def test_every_toc_entry_exists():
    for entry in LISTED:
        assert any(
            (ROOT / f"{entry}{suffix}").exists()
            for suffix in (".ipynb", ".md")
        ), entry


def configured_repository() -> tuple[str, str]:
    """The repository's address and branch (or release tag) in
    ``_config.yml``: the one place they are written down."""
    repository = yaml.safe_load((ROOT / "_config.yml").read_text())[
        "repository"
    ]
    return repository["url"], repository["branch"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=name_of)
def test_setup_cell_installs_from_the_configured_repository(path):
    url, ref = configured_repository()
    cells = json.loads(path.read_text())["cells"]
    setup = [
        c for c in cells if "ea.setup_notebook(seed=" in "".join(c["source"])
    ]
    assert len(setup) == 1, (
        "exactly one setup cell calls ea.setup_notebook(seed=...)"
    )
    source = "".join(setup[0]["source"])
    expected = [
        f'REPO = "{url}"',
        f'REF = "{ref}"',
        'PACKAGE = f"efficient_attention[notebook,models] @ git+{REPO}@{REF}"',
        '    %pip install --quiet "{PACKAGE}"',
    ]
    lines = [line.split("  #")[0] for line in source.splitlines()]
    missing = [line for line in expected if line not in lines]
    assert not missing, (
        f"the setup cell must install the package with its notebook extras "
        f"from {url} at {ref} (_config.yml's repository.url and .branch) "
        f"when it is missing; it lacks the lines {missing}"
    )
    assert "remove-cell" in setup[0]["metadata"].get("tags", []), (
        "hide the setup cell in the site"
    )


def test_every_mention_of_the_repository_uses_the_configured_address():
    url, ref = configured_repository()
    urls = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "urls"
    ]
    wrong = [name for name, link in urls.items() if not link.startswith(url)]
    assert not wrong, (
        f"pyproject.toml's [project.urls] {wrong} must start with {url} "
        f"(_config.yml's repository.url)"
    )
    readme = (ROOT / "README.md").read_text()
    github = re.findall(r"github\.com/[\w.-]+/[\w.-]+", readme)
    here = url.removeprefix("https://")
    assert set(github) <= {here}, (
        f"README.md names the repositories {sorted(set(github))}; every "
        f"address there must be {here} (_config.yml's repository.url)"
    )
    colab = (
        f"colab.research.google.com/{here.replace('.com', '', 1)}"
        f"/blob/{ref}/book/"
    )
    assert colab in readme, f"README.md's Colab link must open {colab}"


# The widest code line the built site shows without a scroll bar (a
# 1300-pixel window, the book theme's code font), measured in Chromium.
SITE_CODE_WIDTH = 77


@pytest.mark.parametrize("path", NOTEBOOKS, ids=name_of)
def test_code_lines_fit_the_page(path):
    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] == "code":
            long = [
                line
                for line in "".join(cell["source"]).splitlines()
                if len(line) > SITE_CODE_WIDTH
            ]
            assert not long, (
                f"code lines over {SITE_CODE_WIDTH} characters scroll in the "
                f"site: {long}"
            )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=name_of)
def test_committed_source_listings_show_the_current_source(path):
    # nbval compares a show_source cell's Markdown with the committed one:
    # a change to the function shown must update that output too.
    from efficient_attention.notebook import source_markdown

    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] != "code":
            continue
        for output in cell.get("outputs", []):
            listing = "".join(output.get("data", {}).get("text/markdown", ""))
            header = LISTING_HEADER.match(listing)
            if header is None:
                continue
            assert listing == source_markdown(listed_object(header)), (
                f"the committed listing of {header.group(1)} is stale: run "
                f"scripts/refresh_listings.py (or make execute)"
            )


def make_notebook(**cell_fields) -> dict:
    notebook = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("x = 1")
    cell.update(cell_fields)
    notebook.cells.append(cell)
    return json.loads(nbformat.writes(notebook))


def test_hygiene_catches_an_unexecuted_notebook():
    problems = notebook_problems(make_notebook(), "book/x", ["book/x"])
    assert any("never executed" in p for p in problems)
    assert (
        notebook_problems(
            make_notebook(execution_count=1), "book/x", ["book/x"]
        )
        == []
    )


@pytest.mark.parametrize(
    "fields,listed,expected",
    [
        ({"execution_count": 1}, [], "not listed in _toc.yml"),
        (
            {
                "execution_count": 1,
                "outputs": [
                    nbformat.v4.new_output(
                        "error", ename="E", evalue="", traceback=[]
                    )
                ],
            },
            ["book/x"],
            "error output",
        ),
        (
            {
                "execution_count": 1,
                "outputs": [
                    nbformat.v4.new_output(
                        "display_data", data={"image/svg+xml": "<svg/>"}
                    )
                ],
            },
            ["book/x"],
            "SVG",
        ),
        (
            {
                "execution_count": 1,
                "outputs": [
                    nbformat.v4.new_output(
                        "stream", name="stdout", text="saved to /home/me/x.png"
                    )
                ],
            },
            ["book/x"],
            "absolute path",
        ),
        (
            {"execution_count": 1, "source": "open('/work/data.tsv')"},
            ["book/x"],
            "absolute path",
        ),
        (
            {"execution_count": 1, "source": "  "},
            ["book/x"],
            "empty code cell",
        ),
    ],
)
def test_hygiene_catches_each_problem(fields, listed, expected):
    problems = notebook_problems(make_notebook(**fields), "book/x", listed)
    assert any(re.search(expected, p) for p in problems), problems


def test_an_error_in_a_raises_exception_cell_is_allowed():
    error = nbformat.v4.new_output(
        "error", ename="ValueError", evalue="", traceback=[]
    )
    notebook = make_notebook(
        execution_count=1,
        outputs=[error],
        metadata={"tags": ["raises-exception"]},
    )
    assert notebook_problems(notebook, "book/x", ["book/x"]) == []


def test_readme_figures_are_the_ones_the_chapters_drew():
    from readme_figures import readme_figures

    figures = readme_figures(ROOT / "book")
    assert figures, "no cell is marked readme_figure"
    readme = (ROOT / "README.md").read_text()
    for name, png in figures.items():
        assert f"docs/{name}" in readme, f"the README does not show {name}"
        committed = ROOT / "docs" / name
        assert committed.exists() and committed.read_bytes() == png, (
            f"docs/{name} differs from its chapter's figure: run "
            "python scripts/readme_figures.py"
        )
