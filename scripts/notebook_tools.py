"""What the book's notebooks must satisfy, shared by tests and execute script.

- ``NOTEBOOK_ENV``: the environment every notebook runs under (nbval and
  re-execution).
- ``toc_files``: the pages ``_toc.yml`` lists.
- ``notebook_problems``: the hygiene rules (README, "How the tests work").
- ``LISTING_HEADER``, ``listed_object``: the package object a committed
  ``ea.show_source`` listing shows.
"""

from __future__ import annotations

import importlib
import json
import pathlib
import re

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent

NOTEBOOK_ENV = {
    # No machine of ours reaches a model hub; without these a failed
    # look-up stalls.
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # PyTorch's OpenMP threads spin for a while before they sleep. When
    # another process holds a core, a spinning thread takes the time slice
    # its partner needs: small operations ran 5.7 times slower with one of
    # two cores busy (an encoder layer, 4 x 128 tokens, Intel Xeon), 1.9
    # times with a short spin; on an idle machine the two are the same.
    "GOMP_SPINCOUNT": "1000",
}

ABSOLUTE_PATH = re.compile(
    r"(?<![\w.:/])/(?:home|root|work|tmp|Users|usr|opt|var|private|content)/"
    r"|\b[A-Za-z]:\\\\?(?:Users|Windows)"
)


def toc_files(toc_path: pathlib.Path = ROOT / "_toc.yml") -> list[str]:
    """Every ``file:`` entry (and the root) of a Jupyter Book ``_toc.yml``."""
    toc = yaml.safe_load(toc_path.read_text())
    found = [toc["root"]]

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "file" in node:
                found.append(node["file"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk({key: value for key, value in toc.items() if key != "root"})
    return found


def notebook_problems(
    notebook: dict, name: str, listed: list[str]
) -> list[str]:
    """The hygiene rules a notebook breaks; an empty list means it is fine.

    Args:
        notebook: the notebook as JSON (``json.load`` of the .ipynb).
        name: its path without suffix relative to the book root, e.g.
            ``book/01_x``.
        listed: the entries of ``_toc.yml`` (``toc_files()``).
    """
    problems = []
    if name not in listed:
        problems.append(f"{name}: not listed in _toc.yml")
    for index, cell in enumerate(notebook.get("cells", [])):
        tags = cell.get("metadata", {}).get("tags", [])
        source = "".join(cell.get("source", ""))
        where = f"{name}, cell {index}"
        if ABSOLUTE_PATH.search(source):
            problems.append(f"{where}: an absolute path in the source")
        if cell.get("cell_type") != "code":
            continue
        if not source.strip():
            problems.append(f"{where}: an empty code cell")
        elif cell.get("execution_count") is None:
            problems.append(
                f"{where}: never executed "
                f"(re-execute the notebook and commit it)"
            )
        for output in cell.get("outputs", []):
            if (
                output.get("output_type") == "error"
                and "raises-exception" not in tags
            ):
                problems.append(
                    f"{where}: an error output, "
                    f"and the cell is not tagged raises-exception"
                )
            if "image/svg+xml" in output.get("data", {}):
                problems.append(
                    f"{where}: an SVG figure (nbval compares SVG text); "
                    f"use PNG"
                )
            if ABSOLUTE_PATH.search(json.dumps(output)):
                problems.append(f"{where}: an absolute path in the output")
    return problems


LISTING_HEADER = re.compile(
    r"^`([\w.]+)` in `(efficient_attention/[\w/]+)\.py`"
)
"""The first line of an ``ea.show_source`` listing: the name and the file."""


def listed_object(header: re.Match) -> object:
    """The package object a show_source listing's header names."""
    name, path = header.groups()
    module = importlib.import_module(path.replace("/", "."))
    if name == module.__name__:  # a listing of the whole module
        return module
    found = module
    for part in name.split("."):  # a qualified name: Class.method
        found = getattr(found, part)
    return found
