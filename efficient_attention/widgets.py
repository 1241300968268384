"""Widgets to play with in a live notebook (Jupyter, Colab).

The site shows static figures. ``mask_explorer`` lets the reader pick a
pattern from ``masks.example_patterns`` and move its window, dilation, stride,
block size and length; chapter 1 introduces it.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from . import masks
from ._validation import check_positive_int
from .plotting import plot_mask


def draw_pattern(
    name: str,
    length: int,
    *,
    window: int = 2,
    dilation: int = 2,
    stride: int = 4,
    block_size: int = 4,
    n_global: int = 1,
) -> Figure:
    """Draw ``masks.example_patterns()[name]`` for ``length`` tokens.

    Raises:
        ValueError: an unknown pattern name or a bad parameter (the mask
            functions say which).
    """
    length = check_positive_int("length", length)
    patterns = masks.example_patterns(
        window=window,
        dilation=dilation,
        stride=stride,
        block_size=block_size,
        n_global=n_global,
    )
    if name not in patterns:
        raise ValueError(
            f"unknown pattern {name!r}; choose one of {list(patterns)}."
        )
    mask = masks.create_mask(patterns[name], length, length)  # (L, L)
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    plot_mask(mask, ax=ax, title=name)
    return fig


def mask_explorer(length: int = 32):
    """An interactive pattern viewer.

    A dropdown of patterns and sliders for their parameters. The length
    slider runs from 8 to 128 tokens, widened to include ``length``.

    Raises:
        ValueError: ``length`` is not a positive int.
    """
    import ipywidgets as widgets
    from IPython.display import display

    length = check_positive_int("length", length)
    controls = {
        "name": widgets.Dropdown(
            options=list(masks.example_patterns()), description="pattern"
        ),
        "length": widgets.IntSlider(
            value=length,
            min=min(8, length),
            max=max(128, length),
            step=8,
            description="length",
        ),
        "window": widgets.IntSlider(
            value=2, min=0, max=16, description="window"
        ),
        "dilation": widgets.IntSlider(
            value=2, min=1, max=8, description="dilation"
        ),
        "stride": widgets.IntSlider(
            value=4, min=1, max=16, description="stride"
        ),
        "block_size": widgets.IntSlider(
            value=4, min=1, max=32, description="block"
        ),
        "n_global": widgets.IntSlider(
            value=1, min=0, max=8, description="global"
        ),
    }

    def show(**values: object) -> None:
        display(draw_pattern(**values))
        plt.close("all")

    output = widgets.interactive_output(show, controls)
    return widgets.HBox([widgets.VBox(list(controls.values())), output])
