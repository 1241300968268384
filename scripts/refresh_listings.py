"""Rewrite the committed ``ea.show_source`` listings of the notebooks.

A listing is the source of a package function, so it changes when the
function does (a fix, a reformat) though nothing else in the chapter does.
This rewrites only those outputs, leaving every other committed output (and
the timings the text describes) as it is; ``make execute`` re-runs
everything instead. tests/test_notebooks.py says when a listing is stale.

Usage: python scripts/refresh_listings.py [NOTEBOOK.ipynb ...]
(no argument: every notebook under book/)
"""

from __future__ import annotations

import argparse
import pathlib

import nbformat

ROOT = pathlib.Path(__file__).resolve().parent.parent
from notebook_tools import LISTING_HEADER, listed_object  # noqa: E402

from efficient_attention.notebook import source_markdown  # noqa: E402


def refresh(path: pathlib.Path) -> int:
    """Rewrite the stale listings of ``path``; return how many there were."""
    notebook = nbformat.read(path, as_version=4)
    stale = 0
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            listing = output.get("data", {}).get("text/markdown", "")
            header = LISTING_HEADER.match(listing)
            if header is None:
                continue
            current = source_markdown(listed_object(header))
            if listing != current:
                output["data"]["text/markdown"] = current
                stale += 1
    if stale:
        nbformat.write(notebook, path)
    return stale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=pathlib.Path)
    args = parser.parse_args()
    for path in args.notebooks or sorted((ROOT / "book").glob("*.ipynb")):
        print(f"{path.name}: {refresh(path)} listing(s) rewritten")


if __name__ == "__main__":
    main()
