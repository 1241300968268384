"""Explorers that work on the rendered site, without a kernel.

ipywidgets need a running kernel: on the book's site their sliders are blank.
``static_explorer`` draws every combination of a few parameter values once,
in Python, and returns a self-contained HTML figure (the frames as base64
PNGs, one slider or menu per parameter, a few lines of JavaScript to swap the
picture). The chapters show it beside the ipywidgets version, which keeps
every control for Jupyter and Colab. ``mask_explorer_page``,
``local_window_explorer_page``, ``sparse_pattern_explorer_page`` and
``hierarchical_explorer_page`` are the page versions of the explorers of
chapters 1, "Local attention", "Sparse attention" and "Hierarchical
attention"; a new chapter needs one call with its own drawing function.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import itertools
import json
from collections.abc import Callable, Sequence

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

MAX_FRAMES = 96
"""The most frames one explorer may hold (each is a PNG in the page)."""


def figure_to_png_base64(fig: Figure, *, dpi: int = 72) -> str:
    """``fig`` as a base64 PNG (closed afterwards), for an ``<img>`` tag.

    The PNG carries no date, so the same figure gives the same text.
    """
    buffer = io.BytesIO()
    fig.savefig(
        buffer,
        format="png",
        dpi=dpi,
        bbox_inches="tight",
        metadata={"Software": None},
    )
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _check_parameters(
    parameters: dict[str, Sequence[object]],
) -> dict[str, list[object]]:
    if not parameters:
        raise ValueError(
            "give at least one parameter with its values, e.g. "
            "static_explorer(draw, window=[1, 2, 4])."
        )
    checked = {}
    for name, values in parameters.items():
        if isinstance(values, (str, bytes)) or not isinstance(
            values, Sequence
        ):
            raise ValueError(
                f"parameter {name!r} must be a list of values; got "
                f"{type(values).__name__}."
            )
        if len(values) == 0:
            raise ValueError(f"parameter {name!r} has no values.")
        checked[name] = list(values)
    n_frames = 1
    for values in checked.values():
        n_frames *= len(values)
    if n_frames > MAX_FRAMES:
        sizes = " x ".join(str(len(v)) for v in checked.values())
        raise ValueError(
            f"{sizes} = {n_frames} frames is more than {MAX_FRAMES}; give "
            f"fewer values."
        )
    return checked


def explorer_html(
    frames: Sequence[str],
    parameters: dict[str, Sequence[object]],
    *,
    initial: dict[str, object] | None = None,
    caption: str = "",
    width: int | None = None,
) -> str:
    """The HTML of an explorer over precomputed frames.

    Args:
        frames: base64 PNGs, one per combination of ``parameters`` in
            ``itertools.product`` order (the last parameter varies fastest).
        parameters: name -> the values shown. Numbers get a slider, other
            values a menu.
        initial: the values shown first (default: each parameter's first).
        caption: a line under the controls (escaped).
        width: the picture's CSS width in pixels (default: its own).

    Returns:
        A ``<div class="ea-explorer">`` with its ``<script>``; its id is a
        hash of the content, so the same frames give the same HTML.

    Raises:
        ValueError: the frame count does not match the parameters, or an
            initial value is not among its parameter's values.
    """
    checked = _check_parameters(parameters)
    n_frames = 1
    for values in checked.values():
        n_frames *= len(values)
    if len(frames) != n_frames:
        raise ValueError(
            f"expected {n_frames} frames for the parameters "
            f"{ {k: len(v) for k, v in checked.items()} }, got {len(frames)}."
        )
    initial = initial or {}
    start = {}
    for name, values in checked.items():
        value = initial.get(name, values[0])
        if value not in values:
            raise ValueError(
                f"initial {name}={value!r} is not among its values {values}."
            )
        start[name] = values.index(value)
    digest = hashlib.sha1(
        json.dumps([list(frames), repr(checked), start, caption]).encode()
    ).hexdigest()[:12]
    uid = f"ea-explorer-{digest}"
    controls = []
    for name, values in checked.items():
        label = html.escape(str(name))
        numeric = all(
            isinstance(v, (int, float)) and not isinstance(v, bool)
            for v in values
        )
        if numeric and len(values) > 1:
            controls.append(
                f'<label class="ea-control">{label} '
                f'<input type="range" data-name="{label}" min="0" '
                f'max="{len(values) - 1}" step="1" value="{start[name]}" '
                f'aria-label="{label}"> '
                f"<output>{html.escape(str(values[start[name]]))}</output>"
                f"</label>"
            )
        else:
            options = "".join(
                f'<option value="{i}"'
                f"{' selected' if i == start[name] else ''}>"
                f"{html.escape(str(v))}</option>"
                for i, v in enumerate(values)
            )
            controls.append(
                f'<label class="ea-control">{label} '
                f'<select data-name="{label}" aria-label="{label}">'
                f"{options}</select></label>"
            )
    index = 0
    for name, values in checked.items():
        index = index * len(values) + start[name]
    labels = {
        name: [str(v) for v in values] for name, values in checked.items()
    }
    style = f"width:{width}px;" if width else ""
    caption_html = (
        f'<div class="ea-caption">{html.escape(caption)}</div>'
        if caption
        else ""
    )
    return f"""<div class="ea-explorer" id="{uid}" style="max-width:100%">
<div class="ea-controls" style="display:flex;flex-wrap:wrap;gap:0.3em 1.2em;\
margin-bottom:0.4em">{"".join(controls)}</div>{caption_html}
<img class="ea-frame" alt="explorer frame" \
style="max-width:100%;height:auto;{style}" \
src="data:image/png;base64,{frames[index]}">
<script>
(function () {{
  var root = document.getElementById("{uid}");
  var frames = {json.dumps(list(frames))};
  var labels = {json.dumps(labels)};
  var names = {json.dumps(list(checked))};
  var img = root.querySelector("img.ea-frame");
  var inputs = root.querySelectorAll("[data-name]");
  function update() {{
    var index = 0;
    names.forEach(function (name) {{
      var input = root.querySelector('[data-name="' + name + '"]');
      var i = input ? parseInt(input.value, 10) : 0;
      index = index * labels[name].length + i;
      if (input && input.nextElementSibling &&
          input.nextElementSibling.tagName === "OUTPUT") {{
        input.nextElementSibling.textContent = labels[name][i];
      }}
    }});
    img.src = "data:image/png;base64," + frames[index];
    root.dataset.frame = index;
  }}
  inputs.forEach(function (input) {{
    input.addEventListener("input", update);
    input.addEventListener("change", update);
  }});
}})();
</script>
</div>"""


def static_explorer(
    draw: Callable[..., Figure],
    *,
    initial: dict[str, object] | None = None,
    caption: str = "",
    dpi: int = 72,
    **parameters: Sequence[object],
):
    """An explorer that needs no kernel: every frame drawn now, in Python.

    Args:
        draw: called as ``draw(**values)`` for every combination of the
            parameters' values; returns a matplotlib ``Figure`` (closed here).
        initial: the values shown first (default: each parameter's first).
        caption: a line shown under the controls.
        dpi: resolution of the frames (the page holds every one of them).
        **parameters: name -> list of values. Numbers get a slider, other
            values (strings, booleans) a menu.

    Returns:
        ``IPython.display.HTML``: display it (or end a cell with it).

    Raises:
        ValueError: no parameter, a parameter without values, more than
            ``MAX_FRAMES`` combinations, or an unknown initial value.

    Example:
        >>> static_explorer(draw_local_windows_for, left=[1, 2, 4],
        ...                 right=[0, 2])  # doctest: +SKIP
    """
    from IPython.display import HTML

    checked = _check_parameters(parameters)
    names = list(checked)
    frames = [
        figure_to_png_base64(draw(**dict(zip(names, combo))), dpi=dpi)
        for combo in itertools.product(*checked.values())
    ]
    return HTML(
        explorer_html(frames, checked, initial=initial, caption=caption)
    )


def mask_explorer_page(length: int = 32):
    """The page version of ``widgets.mask_explorer`` (chapter 1): the
    patterns of ``masks.example_patterns`` and their window."""
    from . import masks
    from .widgets import draw_pattern

    return static_explorer(
        lambda pattern, window: draw_pattern(pattern, length, window=window),
        pattern=list(masks.example_patterns()),
        window=[1, 2, 4],
        initial={"pattern": "sliding window", "window": 2},
        caption=f"{length} tokens; dilation 2, stride 4, block 4, 1 global.",
        dpi=50,
    )


def local_window_explorer_page(length: int = 40):
    """The page version of ``widgets.local_window_explorer`` (chapter
    "Local attention"): left and right sides of the window, and dilation."""
    from .widgets import draw_local_windows

    return static_explorer(
        lambda left, right, dilation: draw_local_windows(
            length, [(left, right)], dilations=[dilation]
        ),
        left=[0, 2, 4, 8],
        right=[0, 2, 4, 8],
        dilation=[1, 2],
        initial={"left": 2, "right": 2},
        caption=f"{length} tokens, one head, border rule 'clip'.",
        dpi=50,
    )


def sparse_pattern_explorer_page(length: int = 64):
    """The page version of ``widgets.sparse_pattern_explorer`` (chapter
    "Sparse attention"): each fixed pattern at several block sizes."""
    from .widgets import SPARSE_PATTERNS, draw_sparse_pattern

    return static_explorer(
        lambda pattern, block_size: draw_sparse_pattern(
            pattern, length, block_size
        ),
        pattern=list(SPARSE_PATTERNS),
        block_size=[2, 4, 8],
        initial={"pattern": "bigbird", "block_size": 4},
        caption=f"{length} tokens; window 1, stride 4, 1 global and 2 "
        f"random blocks.",
        dpi=50,
    )


def hierarchical_explorer_page(length: int = 64):
    """The page version of ``widgets.hierarchical_explorer`` (chapter
    "Hierarchical attention"): block size, levels and top-k -> which pairs
    each scheme computes exactly, pooled or skips. A setting that does not
    fit ``length`` shows the message that says why."""
    from .widgets import draw_hierarchical

    def draw(block_size: int, levels: int, top_k: int) -> Figure:
        try:
            return draw_hierarchical(
                length, block_size=block_size, levels=levels, top_k=top_k
            )
        except ValueError as error:  # e.g. too many levels for the length
            fig, ax = plt.subplots(figsize=(10.5, 1.5))
            ax.axis("off")
            ax.text(0, 0.5, str(error), wrap=True, va="center")
            return fig

    return static_explorer(
        draw,
        block_size=[2, 4, 8],
        levels=[1, 2, 3, 4],
        top_k=[0, 1, 2, 4],
        initial={"block_size": 4, "levels": 3, "top_k": 2},
        caption=f"{length} tokens; coarse-to-fine picks its blocks from "
        f"random queries and keys.",
        dpi=50,
    )
