"""A chapter's prose shows the numbers of its own run, in the reader's terms.

A measured number typed into Markdown drifts from the outputs under it at the
next run. In the chapters of ``BOUND``, a number that looks measured (a ratio
such as 3.4x or "3 to 4 times", a time, a size in bytes, a percentage, a
decimal such as 0.853 or 88.1)
must come through a myst-nb glue role (``notebook.glue`` in the code), or sit
in maths, code, a citation or the exercises, or be a constant of the setup
listed in ``SETUP_CONSTANTS`` with the reason it is not measured. Every glue
role names a value that the committed notebook glued, and a cell that glues
ignores its output under nbval (the value changes from run to run).
"""

from __future__ import annotations

import json
import pathlib
import re

import pytest
from test_chapter_structure import CHAPTERS

ROOT = pathlib.Path(__file__).resolve().parent.parent

BOUND = [
    "01_why_attention_is_slow",
    "local_attention",
    "sparse_attention",
    "low_rank_attention",
    "hierarchical_attention",
    "hardware_acceleration",
    "leaderboard",
    "mrpc_case_study",
    "choosing_a_strategy",
    "pruning",
    "mrpc_worked_example",
    "distillation",
    "quantization",
    "quality_when_trained",
]
"""Chapters whose prose is bound to their outputs: all fourteen."""

SETUP_CONSTANTS = {
    "mrpc_worked_example": {
        "0.82": "the teacher's aimed dev accuracy, chosen",
        "0.87": "the teacher's aimed dev F1, chosen",
        "0.90": "BERT-base's dev F1 in PyTorch's tutorial (cited)",
        "10%": "the warm-up's share of the steps, chosen",
        "0.01": "AdamW's weight decay, chosen",
        "22.7": "the encoder's parameters in millions, a model fact",
        "95%": "the confidence of the paired bootstrap interval, chosen",
    },
    "01_why_attention_is_slow": {
        "384 GiB": "the cost model's score matrices at 32,768 tokens",
        "8 MiB": "the cost model's score matrix at 1,024 tokens, 2 heads",
        "3%": "the share of pairs a (64, 64) window keeps at 4,096 tokens",
    },
    "local_attention": {
        "6%": "a lane group's w + 15 keys against w + 1, by arithmetic",
        "16 times": "FLOP ratios of the chosen window and lengths, arithmetic",
        "64 times": "the FLOP ratio at 16,384 tokens, by arithmetic",
    },
    "sparse_attention": {
        "10%": "the density of the timed layouts, chosen",
        "1%": "the smallest density of the product sweep, chosen",
        "50%": "2:4 sparsity's fixed share, and the largest density swept",
        "2x": "what NVIDIA's sparse tensor cores allow for 2:4, at most",
        "5x": "the block-sparse goal at 4,096 tokens, chosen",
        "8x": "the block-sparse goal at 16,384 tokens, chosen",
        "3x": "BigBird's goal at 4,096 tokens, chosen",
        "4x": "routing's goal at 16,384 tokens, chosen",
    },
    "low_rank_attention": {
        "8 times": "FLOP ratios at 4,096 tokens from the cost formulas",
        "30 times": "Nystrom-64's FLOP ratio at 4,096 tokens, by arithmetic",
        "88.1": "the Nystromformer paper's MRPC F1 (cited)",
        "1.2 times": "the Long Range Arena paper's steps per second (cited)",
        "5.5 and 5.7 times": "the same paper's speed-ups at 4K (cited)",
        "90%": "the energy fraction the rank is counted at, chosen",
        "99%": "the energy fractions of the weights' ranks, chosen",
        "95%": "the energy fractions of the weights' ranks, chosen",
    },
    "hardware_acceleration": {
        "1024 x": "the size of the timed matmul, chosen",
        "16x": "tensor cores' bf16 rate over fp32, at most (vendor figure)",
    },
    "leaderboard": {
        "12.5%": "the share of blocks the timed random layouts keep, chosen",
        "25%": "the spread from which the table marks a median, chosen",
        "95%": "the confidence of the exponents' intervals, chosen",
        "256 x": "the size of Nystrom's landmark matrix, chosen",
    },
    "mrpc_case_study": {
        "8 times": "8,192 tokens against 1,024, by arithmetic",
        "95%": "the confidence of the paired bootstrap intervals, chosen",
    },
    "choosing_a_strategy": {
        "0.97": "an example of the crossover rule, not a measurement",
        "10%": "an example of the crossover rule, not a measurement",
    },
    "hierarchical_attention": {
        "0.003": "the learning rate of the far_marker runs, chosen",
        "3x": "the goal at 4,096 tokens, chosen",
        "10x": "the goal at 16,384 tokens, chosen",
    },
    "quantization": {
        "99.9": "the percentile the activations' range is compared with",
        "95%": "the confidence of the paired intervals, chosen",
        "32 x": "the timed batch shape, 32 pairs of 128 tokens, chosen",
    },
    "pruning": {
        "70%": "the sparsity of the timed unstructured model, chosen",
        "90%": "a sparsity of the table and the scan, chosen",
        "99.9": "the percentile the histograms' axis stops at, chosen",
        "95%": "the collapse threshold and the intervals' confidence, chosen",
        "384 x": "the shape of the teacher's matrices",
        "32 x": "the timed batch, 32 pairs of 128 tokens",
    },
    "distillation": {
        "0.1": "the threshold of a confident probability, chosen",
        "0.9": "the threshold of a confident probability, chosen",
        "32 x": "the timed batch shape, 32 pairs of 128 tokens, chosen",
        "95%": "the confidence of the paired intervals, chosen",
    },
}
"""chapter -> {typed number: why it is a constant, not a measurement}."""

MEASURED_LOOKING = re.compile(
    r"(?<![\w.])(?:"
    r"\d[\d,]*(?:\.\d+)?\s?(?:x\b|×|%|ms\b|µs\b|s\b|GFLOP/s|GB/s"
    r"|MB\b|MiB\b|GiB\b|GB\b)"
    r"|\d[\d,]*(?:\.\d+)?(?:\s(?:to|and)\s\d[\d,]*(?:\.\d+)?)?\s(?:times|fold)\b"
    r"|\d+\.\d+(?![\d.]))"
)
NOT_PROSE = [
    re.compile(r"```.*?```", re.S),  # code blocks
    re.compile(r"\$\$.*?\$\$", re.S),  # display maths
    re.compile(r"\$[^$\n]*\$"),  # inline maths
    re.compile(r"\{[\w:]+\}`[^`]*`"),  # roles: glue, cite, term, ...
    re.compile(r"`[^`]*`"),  # inline code
]
GLUE_ROLE = re.compile(r"\{glue:\w+\}`([^`:]+)[^`]*`")
MAKING_OF = re.compile(  # how the book was made, not its subject
    r"\b(?:[Tt]he issue's|[Ii]ssue \d+|DESIGN(?:\.md| §)"
    r"|[Tt]he (?:book's )?outline's?)"
)


def cells(path: pathlib.Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def markdown_cells(path: pathlib.Path) -> list[str]:
    markdown = [c for c in cells(path) if c["cell_type"] == "markdown"]
    return ["".join(c["source"]) for c in markdown]


def prose(text: str) -> str:
    """The Markdown a reader reads as sentences, exercises and references
    left out."""
    text = re.split(r"^## Exercises", text, flags=re.M)[0]
    references = re.compile(r"^## References\n.*?(?=^## |\Z)", re.M | re.S)
    text = references.sub(" ", text)
    for pattern in NOT_PROSE:
        text = pattern.sub(" ", text)
    return text


def chapter_prose(path: pathlib.Path) -> list[str]:
    """``prose`` of each Markdown cell; the exercises may go on over several
    cells (solutions run in code cells between them), up to the next
    ``## `` heading."""
    texts, in_exercises = [], False
    for text in markdown_cells(path):
        if in_exercises:
            after = re.split(r"^(?=## )", text, maxsplit=1, flags=re.M)
            if len(after) == 1:
                texts.append("")
                continue
            text, in_exercises = after[1], False
        in_exercises = bool(re.search(r"^## Exercises", text, flags=re.M))
        texts.append(prose(text))
    return texts


def found_numbers(text: str) -> list[str]:
    """The measured-looking numbers of ``text``, blanks made single spaces."""
    matches = MEASURED_LOOKING.finditer(text)
    return [" ".join(m.group(0).split()) for m in matches]


def glued_names(path: pathlib.Path) -> set[str]:
    names = set()
    for cell in cells(path):
        for output in cell.get("outputs", []):
            scrapbook = output.get("metadata", {}).get("scrapbook", {})
            if "name" in scrapbook:
                names.add(scrapbook["name"])
    return names


def chapter(stem: str) -> pathlib.Path:
    return ROOT / "book" / f"{stem}.ipynb"


@pytest.mark.parametrize("stem", BOUND)
def test_no_measured_number_is_typed_into_the_prose(stem):
    allowed = SETUP_CONSTANTS.get(stem, {})
    typed = [
        (index, typed)
        for index, text in enumerate(chapter_prose(chapter(stem)))
        for typed in found_numbers(text)
        if typed not in allowed
    ]
    assert not typed, (
        f"{stem}: numbers typed into Markdown (Markdown cell, text): {typed}; "
        f"glue them from the cell that measures them (ea.glue and "
        f"{{glue:text}}), or list a setup constant in SETUP_CONSTANTS."
    )


def test_the_making_of_checker_spares_ordinary_words():
    found = MAKING_OF.findall(
        "The issue's targets, as DESIGN.md and the outline's module say; "
        "a design issue, an outline of the proof."
    )
    assert found == ["The issue's", "DESIGN.md", "the outline's"]


def test_the_prose_checker_finds_typed_measurements():
    text = (
        "SDPA takes 12 ms, the kernel is 3.4x faster, uses 42% of the peak "
        "and scores 0.853, runs 1.3 to 2\ntimes as fast, reaches F1 88.1 and "
        "an error of 1.25; $0.5$, `0.25`, {glue:text}`f1:.2f`, 12 heads and "
        "chapter 3 are fine."
    )
    found = found_numbers(prose(text))
    assert found == [
        "12 ms", "3.4x", "42%", "0.853", "1.3 to 2 times", "88.1", "1.25"
    ]


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_every_glue_role_names_a_glued_value(path):
    wanted = {
        name
        for text in markdown_cells(path)
        for name in GLUE_ROLE.findall(text)
    }
    missing = wanted - glued_names(path)
    assert not missing, (
        f"{path.name}: glue roles without a glued value in the committed "
        f"outputs: {sorted(missing)}; call ea.glue(name, value) in a code "
        f"cell and re-execute the chapter."
    )


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_cells_that_glue_ignore_their_output(path):
    loud = [
        index
        for index, cell in enumerate(cells(path))
        if cell["cell_type"] == "code"
        and "glue(" in "".join(cell["source"])
        and "nbval-ignore-output" not in cell["metadata"].get("tags", [])
    ]
    assert not loud, (
        f"{path.name}: cells {loud} glue a value but nbval compares their "
        f"output; tag them nbval-ignore-output."
    )


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_the_prose_speaks_of_the_subject_not_of_the_making(path):
    found = [
        match.group(0)
        for text in markdown_cells(path)
        for match in MAKING_OF.finditer(text)
    ]
    assert not found, f"{path.name} speaks of how the book was made: {found}"


def test_every_chapter_is_bound():
    assert sorted(BOUND) == sorted(path.stem for path in CHAPTERS)


def test_exercises_over_several_cells_are_left_out_up_to_the_next_heading(
    tmp_path,
):
    texts = [
        "Prose at 3.4x.\n\n## Exercises\n\n1. Get 2.5x.",
        "2. Then 12 ms.",
        "3. And 42%.\n\n## Summary\n\nA 0.853 here counts.",
        "## References\n\narXiv 2107.05768, 2021.\n\n## Next\n\nAfter: 7 ms.",
    ]
    path = tmp_path / "chapter.ipynb"
    path.write_text(json.dumps({"cells": [
        {"cell_type": "markdown", "source": text} for text in texts
    ]}))  # fmt: skip
    found = [found_numbers(text) for text in chapter_prose(path)]
    assert found == [["3.4x"], [], ["0.853"], ["7 ms"]]
