"""Explorers that work on the rendered site, without a kernel.

ipywidgets need a running kernel: on the book's site their sliders are blank.
``static_explorer`` draws every combination of a few parameter values once,
in Python, and returns a self-contained HTML figure (the frames as base64
PNGs, one slider or menu per parameter, a few lines of JavaScript to swap the
picture). The chapters show it beside the ipywidgets version, which keeps
every control for Jupyter and Colab. The ``*_page`` functions are the page
versions of the chapters' explorers (chapter 1, "Local attention", "Sparse
attention", "Low-rank attention", "Hierarchical attention", "Quantization",
"Pruning", and the MRPC worked example's attention maps); a new chapter needs
one call with its own drawing function.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import itertools
import json
import numbers
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

if TYPE_CHECKING:
    from torch import Tensor

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
        ValueError: the frame count does not match the parameters, an
            initial value is not among its parameter's values, or
            ``initial`` names a parameter there is not.
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
    initial = _check_initial(initial, checked)
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
    for position, (name, values) in enumerate(checked.items()):
        label = html.escape(str(name))
        numeric = all(
            isinstance(v, numbers.Real) and not isinstance(v, bool)
            for v in values
        )
        if numeric and len(values) > 1:
            controls.append(
                f'<label class="ea-control">{label} '
                f'<input type="range" data-name="{label}" min="0" '
                f'max="{len(values) - 1}" step="1" value="{start[name]}" '
                f'aria-label="{label}" data-index="{position}"> '
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
                f'<select data-name="{label}" data-index="{position}" '
                f'aria-label="{label}">'
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
  var frames = {_script_json(list(frames))};
  var labels = {_script_json(list(labels.values()))};
  var img = root.querySelector("img.ea-frame");
  var inputs = root.querySelectorAll("[data-index]");
  function update() {{
    var index = 0;
    labels.forEach(function (values, position) {{
      var input = root.querySelector('[data-index="' + position + '"]');
      var i = input ? parseInt(input.value, 10) : 0;
      index = index * values.length + i;
      if (input && input.nextElementSibling &&
          input.nextElementSibling.tagName === "OUTPUT") {{
        input.nextElementSibling.textContent = values[i];
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


def _check_initial(
    initial: object, parameters: dict[str, list[object]]
) -> dict[str, object]:
    """``initial`` as a dict over names of ``parameters`` (an unknown name
    is an error, not ignored)."""
    if initial is None:
        return {}
    if not isinstance(initial, dict):
        raise ValueError(
            f"initial must be a dict {{parameter: value}}; got "
            f"{type(initial).__name__}."
        )
    unknown = [name for name in initial if name not in parameters]
    if unknown:
        raise ValueError(
            f"initial names {unknown}, which are not parameters; the "
            f"parameters are {list(parameters)}."
        )
    return initial


def _script_json(value: object) -> str:
    """``value`` as JSON to write inside a ``<script>``: ``<``, ``>`` and
    ``&`` escaped (``\\u003c``...), so that no text, such as a label
    holding ``</script>``, can end the script early."""
    text = json.dumps(value)  # ASCII: U+2028 and U+2029 escaped too
    for char in "<>&":
        text = text.replace(char, f"\\u{ord(char):04x}")
    return text


def static_explorer(
    draw: Callable[..., Figure],
    *,
    initial: dict[str, object] | None = None,
    caption: str = "",
    dpi: int = 72,
    frame_width: int | None = None,
    **parameters: Sequence[object],
):
    """An explorer that needs no kernel: every frame drawn now, in Python.

    Args:
        draw: called as ``draw(**values)`` for every combination of the
            parameters' values; returns a matplotlib ``Figure`` (closed here).
        initial: the values shown first (default: each parameter's first).
        caption: a line shown under the controls.
        dpi: resolution of the frames (the page holds every one of them).
        frame_width: the picture's width on the page in CSS pixels
            (default: the site's, 340; wide figures want more).
        **parameters: name -> list of values. Numbers get a slider, other
            values (strings, booleans) a menu.

    Returns:
        ``IPython.display.HTML``: display it (or end a cell with it).

    Raises:
        ValueError: no parameter, a parameter without values, more than
            ``MAX_FRAMES`` combinations, an initial value that is not
            among its parameter's values or names no parameter, or a
            ``draw`` that returns no ``Figure``.

    Example:
        >>> static_explorer(draw_local_windows_for, left=[1, 2, 4],
        ...                 right=[0, 2])  # doctest: +SKIP
    """
    from IPython.display import HTML

    checked = _check_parameters(parameters)
    if not callable(draw):
        raise ValueError(
            f"draw must be a function that returns a matplotlib Figure; "
            f"got {type(draw).__name__}."
        )
    _check_initial(initial, checked)  # before drawing every frame
    names = list(checked)
    frames = []
    for combo in itertools.product(*checked.values()):
        values = dict(zip(names, combo))
        fig = draw(**values)
        if not isinstance(fig, Figure):
            raise ValueError(
                f"draw must return a matplotlib Figure; draw(**{values!r}) "
                f"returned {type(fig).__name__}. End it with `return fig` "
                f"(or `return plt.gcf()`)."
            )
        frames.append(figure_to_png_base64(fig, dpi=dpi))
    return HTML(
        explorer_html(
            frames,
            checked,
            initial=initial,
            caption=caption,
            width=frame_width,
        )
    )


def image_frames(
    image: AxesImage, arrays: Iterable[object], *, dpi: int = 72
) -> list[str]:
    """Frames of ``image``'s figure, ``image`` showing each of ``arrays``.

    The figure is drawn once; each frame only repaints the image's pixels
    (nearest neighbour, colours scaled to each array's range as ``imshow``
    does), so a frame costs a colour map and a PNG, not a matplotlib draw
    with all its text. For an explorer over many maps that share their axes
    (a model's attention by layer and head). The figure is closed.

    Args:
        image: an ``AxesImage`` drawn by ``imshow`` with its default extent,
            the only thing that changes between frames.
        arrays: 2-D arrays (or tensors) shaped like the image's data.
        dpi: resolution of the frames.

    Returns:
        base64 PNGs (8-bit palette), one per array, for ``explorer_html``.

    Raises:
        ValueError: an array that is not shaped like the image's data.
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import Normalize
    from PIL import Image

    fig = image.figure
    fig.set_dpi(dpi)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    base = np.asarray(canvas.buffer_rgba())[..., :3].copy()  # (Hp, Wp, 3)
    box = image.get_window_extent()  # pixels, origin at the bottom left
    top, bottom = base.shape[0] - round(box.y1), base.shape[0] - round(box.y0)
    left, right = round(box.x0), round(box.x1)
    shape = np.shape(image.get_array())
    frames = []
    for array in arrays:
        values = np.asarray(array, dtype=float)
        if values.shape != shape:
            raise ValueError(
                f"every array must be shaped like the image's {shape}; got "
                f"{values.shape}."
            )
        colours = image.cmap(Normalize(values.min(), values.max())(values))
        rows = np.arange(bottom - top) * shape[0] // (bottom - top)
        cols = np.arange(right - left) * shape[1] // (right - left)
        frame = base.copy()
        frame[top:bottom, left:right] = (
            colours[rows][:, cols, :3] * 255
        ).round()  # (rows, cols, 3)
        buffer = io.BytesIO()
        Image.fromarray(frame).quantize(
            256, method=Image.Quantize.FASTOCTREE
        ).save(buffer, format="png")
        frames.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    plt.close(fig)
    return frames


def mask_explorer_page(length: int = 32):
    """The page version of ``widgets.mask_explorer`` (chapter 1): the
    patterns of ``masks.example_patterns`` and their window."""
    from .. import masks
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


def low_rank_explorer_page(
    query: Tensor, key: Tensor, *, sizes: Sequence[int] | None = None
):
    """The page version of ``widgets.low_rank_explorer`` (chapter
    "Low-rank attention"): each method at sizes doubling up to ``S``, with
    Performer's features drawn with seed 0.

    Args:
        query: ``(L, E)``. key: ``(S, E)``.
        sizes: rank, landmarks or features (default 4, 8, 16, ... up to
            S).
    """
    from .widgets import LOW_RANK_METHODS, draw_low_rank_approximation

    S = key.shape[-2]
    if sizes is None:
        sizes = [2**i for i in range(2, S.bit_length()) if 2**i <= S]
    return static_explorer(
        lambda method, size: draw_low_rank_approximation(
            method, query, key, size
        ),
        method=list(LOW_RANK_METHODS),
        size=list(sizes),
        initial={"size": 8} if 8 in sizes else None,
        caption=f"{query.shape[-2]} queries, {S} keys; size = Linformer's "
        "rank, Nystrom's landmarks or Performer's features (seed 0).",
        dpi=60,
        frame_width=600,
    )


def quantization_explorer_page(
    weights: Tensor, *, bits: Sequence[int] = (2, 3, 4, 6, 8)
):
    """The page version of ``widgets.quantization_explorer`` (chapter
    "Quantization"): each grid at a few bit widths."""
    from ..compression.quantization import GRIDS
    from .widgets import draw_quantization_grid

    return static_explorer(
        lambda bits, grid: draw_quantization_grid(weights, bits, grid),
        bits=list(bits),
        grid=list(GRIDS),
        initial={"bits": 4} if 4 in bits else None,
        caption=f"{weights.numel():,} weights of a "
        f"{' x '.join(map(str, weights.shape))} matrix.",
        dpi=60,
        frame_width=600,
    )


def pruning_explorer_page(
    weight: Tensor,
    *,
    name: str = "",
    amounts: Sequence[float] = (0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99),
):
    """The page version of ``widgets.pruning_explorer`` (chapter
    "Pruning"): the matrix and its survivors at a few amounts."""
    from .widgets import draw_magnitude_pruning

    return static_explorer(
        lambda amount: draw_magnitude_pruning(weight, amount, name=name),
        amount=list(amounts),
        initial={"amount": 0.5} if 0.5 in amounts else None,
        caption="amount = the share of weights zeroed, the smallest |w| "
        "first.",
        dpi=60,
        frame_width=620,
    )


def attention_map_explorer_page(
    attentions: Sequence[Tensor],
    tokens: Sequence[str],
    *,
    dpi: int = 72,
    width: int = 440,
):
    """A model's real attention maps by layer and head (chapter "The MRPC
    worked example"): ``attentions`` holds one ``(1, H, L, L)`` tensor per
    layer, as transformers returns them (layers x heads frames, at most
    ``MAX_FRAMES``). The frames share their axes, so ``image_frames`` draws
    them from one figure."""
    from IPython.display import HTML

    from .widgets import draw_attention_map

    layers = list(range(1, len(attentions) + 1))
    heads = list(range(1, attentions[0].shape[1] + 1))
    _check_parameters({"layer": layers, "head": heads})
    fig = draw_attention_map(attentions, tokens, 0, 0)
    fig.axes[0].set_title("row: query, column: key")
    maps = [attentions[layer - 1][0, head - 1] for layer in layers
            for head in heads]  # fmt: skip
    frames = image_frames(
        fig.axes[0].images[0], [m.detach().float() for m in maps], dpi=dpi
    )
    return HTML(
        explorer_html(
            frames,
            {"layer": layers, "head": heads},
            initial={"layer": layers[-1]},
            caption=f"{len(tokens)} tokens; colours scaled per map.",
            width=width,
        )
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
