"""Helpers every chapter's first cell calls.

Seeding, figure format, device choice, source display and glued numbers:
``setup_notebook`` makes a chapter reproducible (seeds) and its figures PNG in
one house style; ``show_source`` prints a package function so the reader sees
exactly the code they just checked against the chapter's naive version;
``glue`` hands a measured number to the chapter's prose (myst-nb's
``{glue:text}`` role), so the text shows the value of the very run whose
outputs are on the page.
"""

from __future__ import annotations

import inspect
import pathlib
import random

import numpy as np
import torch

from ._validation import check_device, check_seed

RUNNABLE_DEVICES = ("cpu", "cuda", "mps")
"""The device types ``pick_device`` hands out: those that compute."""


def pick_device(prefer: str | torch.device | None = None) -> torch.device:
    """The device to run on: ``prefer`` if given, else CUDA if any, else CPU.

    Args:
        prefer: ``"cpu"``, ``"cuda"``, ``"cuda:<index>"``, ``"mps"`` or a
            ``torch.device``; None picks CUDA when available, else the CPU.

    Returns:
        a ``torch.device`` this machine has.

    Raises:
        ValueError: ``prefer`` is not a device name, names a device this
            machine does not have (CUDA or a CUDA index, Apple's MPS), or one
            that does not compute (``meta``) or that this package does not
            support.
    """
    if prefer is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = check_device("prefer", prefer)
    if device.type not in RUNNABLE_DEVICES:
        raise ValueError(
            f"prefer={str(prefer)!r} is not a device to compute on here: use "
            f"one of {', '.join(RUNNABLE_DEVICES)}, or None to pick "
            f"automatically."
        )
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"prefer={str(prefer)!r} was asked for "
                f"but CUDA is not available here; use 'cpu' "
                f"or None to pick automatically."
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(
                f"prefer={str(prefer)!r} was asked for but this machine has "
                f"{count} CUDA device(s), cuda:0 to cuda:{count - 1}."
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(
            f"prefer={str(prefer)!r} was asked for but Apple's MPS is not "
            f"available here; use 'cpu' or None to pick automatically."
        )
    return device


def setup_notebook(seed: int = 0) -> None:
    """Seed Python, NumPy and PyTorch; make figures PNG in the book's style.

    Raises:
        ValueError: ``seed`` is not an int in ``[0, 2**32)`` (NumPy's range).
    """
    seed = check_seed("seed", seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_printoptions(precision=4, sci_mode=False)
    from .viz.plotting import use_book_style

    use_book_style()
    try:
        from matplotlib_inline.backend_inline import set_matplotlib_formats
    except ImportError:  # not in a notebook kernel
        return
    set_matplotlib_formats("png")


def glue(name: str, value: object) -> None:
    """Record ``value`` for the prose's ``{glue:text}`name``` role.

    Under Jupyter Book (myst-nb installed, code run by an IPython kernel) the
    value is stored, without being shown, in the cell's outputs, where the
    book's Markdown finds it (NumPy and one-element tensor values as Python
    numbers, so that a format such as ``{glue:text}`name:.2f``` applies).
    Elsewhere (Colab or Jupyter without myst-nb, a plain script) nothing is
    recorded or printed. A cell that glues a
    measured value should carry the ``nbval-ignore-output`` tag: the stored
    value changes from run to run.

    Raises:
        ValueError: ``name`` is not a non-empty identifier-like string
            (letters, digits, ``_`` and ``-``).
    """
    if (
        not isinstance(name, str)
        or not name
        or not name.replace("_", "").replace("-", "").isalnum()
    ):
        raise ValueError(
            f"glue name must be a non-empty string of letters, digits, "
            f"'_' and '-' (the Markdown refers to it); got {name!r}."
        )
    try:
        from IPython import get_ipython
        from myst_nb import glue as myst_glue
    except ImportError:
        return
    if get_ipython() is None:
        return
    is_scalar = isinstance(value, np.generic) or (
        isinstance(value, torch.Tensor) and value.numel() == 1
    )
    # a Python number, so that a format such as {glue:text}`name:.2f` reads it
    myst_glue(name, value.item() if is_scalar else value, display=False)


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
