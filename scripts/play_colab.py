"""Run chapters as a Colab reader does: the package from its wheel, each
chapter alone in an empty folder, nothing of the repository beside it.

1. Build the package's wheel (``pip wheel --no-deps .``).
2. Make a fresh virtual environment outside the repository and install the
   wheel into it. Its other dependencies (PyTorch, transformers, the encoder's
   files, Jupyter) come from the project's ``.venv`` through a path entry,
   which installs nothing of the repository itself: the only
   ``efficient_attention`` the chapter can import is the wheel's.
3. Copy each chapter alone into an empty folder and execute it there, with
   the environment a reader has offline (``HF_HUB_OFFLINE``, ``GLUE_DIR``
   when set, the checkpoint cache, so a chapter may reuse a trained model).

A chapter that reads a file of the repository (``book/data``, a script, the
package's source folder) fails here. Usage, from the repository's root::

    python scripts/play_colab.py book/leaderboard.ipynb ...
    python scripts/play_colab.py            # every chapter of _toc.yml

``make colab-test`` runs it for the chapters that read shipped data.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
from notebook_tools import NOTEBOOK_ENV, toc_files  # noqa: E402

EXECUTE = """
import sys, nbformat
from nbclient import NotebookClient
path = sys.argv[1]
notebook = nbformat.read(path, as_version=4)
NotebookClient(notebook, timeout=1800, kernel_name="python3").execute(
    cwd=sys.argv[2])
"""


def build_wheel(folder: pathlib.Path) -> pathlib.Path:
    """The package's wheel, built into ``folder`` from a copy of the
    repository's files (those git tracks or would track), so that a stale
    ``build/`` folder cannot slip removed modules into it."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others",
         "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")
    source = folder / "source"
    for name in filter(None, files):
        if (ROOT / name).is_file():  # a file deleted but not yet committed
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
         "--no-build-isolation", "--wheel-dir", str(folder), str(source)],
        check=True,
    )
    (wheel,) = folder.glob("efficient_attention-*.whl")
    return wheel


def fresh_environment(folder: pathlib.Path, wheel: pathlib.Path) -> str:
    """A new virtual environment with the wheel installed; returns its
    Python. The project's site-packages join it as a plain path entry (its
    ``.pth`` files, among them the editable install, are not read)."""
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(folder)],
        check=True,
    )
    python = str(folder / "bin" / "python")
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()"
         "['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    pathlib.Path(site, "project-dependencies.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n"
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
         "--target", site, str(wheel)],
        check=True,
    )
    where = subprocess.run(
        [python, "-c", "import efficient_attention as ea; print(ea.__file__)"],
        check=True, capture_output=True, text=True, cwd=folder,
    ).stdout.strip()
    if not where.startswith(site):
        raise RuntimeError(
            f"the fresh environment imports efficient_attention from {where}, "
            f"not from the wheel in {site}"
        )
    return python


def play(chapter: pathlib.Path, python: str, folder: pathlib.Path) -> float:
    """Execute ``chapter`` alone in the empty ``folder``; seconds taken."""
    folder.mkdir()
    copy = folder / chapter.name
    shutil.copy(chapter, copy)
    env = {**os.environ, **NOTEBOOK_ENV}
    env.pop("PYTHONPATH", None)
    start = time.perf_counter()
    subprocess.run(
        [python, "-c", EXECUTE, str(copy), str(folder)],
        check=True, env=env, cwd=folder,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chapters", nargs="*", type=pathlib.Path)
    chapters = parser.parse_args().chapters or [
        ROOT / f"{entry}.ipynb" for entry in toc_files()
        if (ROOT / f"{entry}.ipynb").exists()
    ]
    with tempfile.TemporaryDirectory(prefix="play-colab-") as scratch:
        scratch = pathlib.Path(scratch)
        wheel = build_wheel(scratch / "wheel")
        python = fresh_environment(scratch / "venv", wheel)
        print(f"{wheel.name} in a fresh environment", flush=True)
        for chapter in chapters:
            seconds = play(chapter.resolve(), python,
                           scratch / chapter.stem)
            print(f"{chapter.name}: ran alone in {seconds:.0f} s",
                  flush=True)


if __name__ == "__main__":
    main()
