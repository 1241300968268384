"""Helpers every chapter's first cell calls.

Seeding, figure format, device choice and source display: ``setup_notebook``
makes a chapter reproducible (seeds) and its figures PNG in one house style;
``show_source`` prints a package function so the reader sees exactly the code
they just checked against the chapter's naive version.
"""

from __future__ import annotations

import inspect
import pathlib
import random

import numpy as np
import torch


def pick_device(prefer: str | None = None) -> torch.device:
    """The device to run on: ``prefer`` if given, else CUDA if any, else CPU.

    Raises:
        ValueError: ``prefer`` names a device this machine does not have.
    """
    if prefer is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(prefer)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {prefer!r} was asked for "
            f"but CUDA is not available here; use 'cpu' "
            f"or None to pick automatically."
        )
    return device


def setup_notebook(seed: int = 0) -> None:
    """Seed Python, NumPy and PyTorch; make figures PNG in the book's style."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_printoptions(precision=4, sci_mode=False)
    from .plotting import use_book_style

    use_book_style()
    try:
        from matplotlib_inline.backend_inline import set_matplotlib_formats
    except ImportError:  # not in a notebook kernel
        return
    set_matplotlib_formats("png")


def source_markdown(obj: object) -> str:
    """The source of a package function or class as a fenced Markdown block."""
    try:
        source = inspect.getsource(obj)
        path = pathlib.Path(inspect.getsourcefile(obj))
    except (TypeError, OSError) as error:
        raise ValueError(
            f"cannot show the source of {obj!r}: "
            f"pass a function, class or module "
            f"written in Python."
        ) from error
    package_root = pathlib.Path(__file__).resolve().parent.parent
    try:
        where = path.resolve().relative_to(package_root).as_posix()
    except ValueError:
        where = path.name
    name = getattr(obj, "__qualname__", getattr(obj, "__name__", "source"))
    return f"`{name}` in `{where}`:\n\n```python\n{source.rstrip()}\n```"


def show_source(obj: object) -> None:
    """Display the source of ``obj`` in the notebook.

    ``obj`` is a function, class or module.
    """
    from IPython.display import Markdown, display

    display(Markdown(source_markdown(obj)))
