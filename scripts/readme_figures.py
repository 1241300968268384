"""Copy the figures the README shows out of the executed chapters.

A code cell whose metadata holds ``"readme_figure": "NAME.png"`` has its
first PNG output written to ``docs/NAME.png``, so the README's pictures are
the ones the committed chapters drew (tests/test_notebooks.py checks that
they still are).

Usage: python scripts/readme_figures.py [--out docs]
"""

from __future__ import annotations

import argparse
import base64
import pathlib
import sys

import nbformat

ROOT = pathlib.Path(__file__).resolve().parent.parent


def readme_figures(book: pathlib.Path) -> dict[str, bytes]:
    """``{file name: PNG bytes}`` of every cell marked ``readme_figure``.

    Raises:
        ValueError: a marked cell has no PNG output (execute the chapter).
    """
    figures = {}
    for path in sorted(book.glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        for cell in notebook.cells:
            name = cell.get("metadata", {}).get("readme_figure")
            if name is None:
                continue
            pngs = [
                output["data"]["image/png"]
                for output in cell.get("outputs", [])
                if "image/png" in output.get("data", {})
            ]
            if not pngs:
                raise ValueError(
                    f"{path.name}: the cell marked readme_figure={name!r} "
                    "has no PNG output; execute the chapter first."
                )
            figures[name] = base64.b64decode(pngs[0])
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs"))
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, png in readme_figures(ROOT / "book").items():
        (out / name).write_bytes(png)
        print(f"wrote {out / name} ({len(png):,} bytes)")


if __name__ == "__main__":
    sys.exit(main())
