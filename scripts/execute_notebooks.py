"""Re-execute the book notebooks in place, as `pytest --nbval book` runs them.

Same kernel (nbval's "current environment" kernel), same working directory
(the notebook's folder), same environment variables
(scripts/notebook_tools.py), so the committed outputs are exactly what the
test run reproduces.

Usage: python scripts/execute_notebooks.py [NOTEBOOK.ipynb ...]
(no argument: every notebook listed in _toc.yml, one after the other), e.g.

    python scripts/execute_notebooks.py book/01_why_attention_is_slow.ipynb
"""

from __future__ import annotations

import argparse
import os
import pathlib
import time

import nbformat
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from nbval.kernel import CURRENT_ENV_KERNEL_NAME, NbvalKernelspecManager

ROOT = pathlib.Path(__file__).resolve().parent.parent
from notebook_tools import NOTEBOOK_ENV, toc_files  # noqa: E402


def execute_in_place(path: pathlib.Path, timeout: int = 1800) -> float:
    """Run every cell of ``path`` top to bottom and write the outputs back.

    Returns the seconds it took.
    """
    notebook = nbformat.read(path, as_version=4)
    kernel = KernelManager(
        kernel_name=CURRENT_ENV_KERNEL_NAME,
        kernel_spec_manager=NbvalKernelspecManager(),
    )
    client = NotebookClient(
        notebook,
        km=kernel,
        timeout=timeout,
        record_timing=False,
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.perf_counter()
    client.execute(cwd=str(path.parent))
    notebook.metadata["kernelspec"] = {
        "display_name": "Python 3",
        "language": "python",
        "name": "python3",
    }
    nbformat.write(notebook, path)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=pathlib.Path)
    args = parser.parse_args()
    notebooks = args.notebooks or [
        ROOT / f"{entry}.ipynb"
        for entry in toc_files()
        if (ROOT / f"{entry}.ipynb").exists()
    ]
    for name, value in NOTEBOOK_ENV.items():
        os.environ[name] = value
    for path in notebooks:
        print(
            f"executing "
            f"{path.relative_to(ROOT) if path.is_absolute() else path} ...",
            flush=True,
        )
        seconds = execute_in_place(path.resolve())
        print(f"  done in {seconds:.0f} s", flush=True)


if __name__ == "__main__":
    main()
