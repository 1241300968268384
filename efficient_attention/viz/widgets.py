"""Widgets to play with in a live notebook (Jupyter, Colab).

The site shows static figures. ``mask_explorer`` lets the reader pick a
pattern from ``masks.example_patterns`` and move its window, dilation, stride,
block size and length; chapter 1 introduces it. ``sparse_pattern_explorer``
does the same for the block layouts of chapter "Sparse attention";
``low_rank_explorer`` shows a low-rank approximation beside exact attention
(chapter "Low-rank attention"), ``hierarchical_explorer`` the schemes of
chapter "Hierarchical attention", ``quantization_explorer`` a weight
histogram under a quantization grid (chapter "Quantization"),
``pruning_explorer`` a weight matrix as magnitude pruning zeroes more of it
(chapter "Pruning") and ``soft_label_explorer`` a teacher's soft labels as
the temperature moves (chapter "Distillation"). ``draw_attention_map`` draws
one head of a real model's attention (chapter "The MRPC worked example").
Each explorer's drawing function is public, so ``static_explorer`` can draw
the site's version.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from .. import masks
from .._validation import check_positive_int, check_positive_real
from ..variants import Settings
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


def draw_local_windows(
    length: int,
    windows: list[tuple[int, int]],
    *,
    dilations: list[int] | None = None,
    border: str = "clip",
) -> Figure:
    """One panel per head: the pattern of ``sliding_window_attention``.

    Args:
        length: tokens ``L = S``. windows: ``(left, right)`` per head.
        dilations: one per head (default 1). border: ``"clip"`` or
            ``"shift"``.

    Raises:
        ValueError: an empty window list, or a bad window, dilation or
            border (the mask functions say which).
    """
    check_positive_int("length", length)
    if not windows:
        raise ValueError("windows must hold one (left, right) per head.")
    dilations = dilations or [1] * len(windows)
    if len(dilations) != len(windows):
        raise ValueError(
            f"give one dilation per window; got {len(dilations)} dilations "
            f"for {len(windows)} windows."
        )
    if border not in ("clip", "shift"):
        raise ValueError(f"border must be 'clip' or 'shift'; got {border!r}.")
    fig, axes = plt.subplots(
        1, len(windows), figsize=(3.0 * len(windows), 3.3), squeeze=False
    )
    for h, (ax, window, dilation) in enumerate(
        zip(axes[0], windows, dilations)
    ):
        if border == "shift":
            mask_mod = masks.shifted_window(window, length, dilation)
        else:
            mask_mod = masks.dilated_sliding_window(window, dilation)
        mask = masks.create_mask(mask_mod, length, length)  # (L, L)
        name = f"head {h}: {tuple(window)}"
        name += f", dilation {dilation}" if dilation > 1 else ""
        plot_mask(mask, ax=ax, title=name)
        ax.label_outer()
    fig.tight_layout()
    return fig


def local_window_explorer(length: int = 40):
    """Sliders for a local pattern: window sides, dilation, causal, border,
    and heads whose windows double head by head (multi-scale)."""
    import ipywidgets as widgets
    from IPython.display import display

    check_positive_int("length", length)
    controls = {
        "length": widgets.IntSlider(
            value=length, min=8, max=128, step=8, description="length"
        ),
        "left": widgets.IntSlider(value=2, min=0, max=32, description="left"),
        "right": widgets.IntSlider(
            value=2, min=0, max=32, description="right"
        ),
        "causal": widgets.Checkbox(value=False, description="causal"),
        "dilation": widgets.IntSlider(
            value=1, min=1, max=8, description="dilation"
        ),
        "border": widgets.Dropdown(
            options=["clip", "shift"], description="border"
        ),
        "heads": widgets.IntSlider(
            value=1, min=1, max=4, description="heads (x2)"
        ),
    }

    def show(length, left, right, causal, dilation, border, heads):
        right = 0 if causal else right
        windows = [(left * 2**h, right * 2**h) for h in range(heads)]
        display(
            draw_local_windows(
                length, windows, dilations=[dilation] * heads, border=border
            )
        )
        plt.close("all")

    output = widgets.interactive_output(show, controls)
    return widgets.HBox([widgets.VBox(list(controls.values())), output])


SPARSE_PATTERNS = (
    "strided",
    "fixed",
    "longformer",
    "bigbird",
    "checkerboard",
)
"""The block layouts of ``sparse_layout``, by name."""


def sparse_layout(
    name: str,
    n_blocks: int,
    *,
    window: int = Settings.bigbird_window,
    stride: int = 4,
    global_blocks: int = Settings.global_blocks,
    random_blocks: int = Settings.random_blocks,
    seed: int = Settings.seed,
) -> Tensor:
    """The ``(n_blocks, n_blocks)`` layout of a fixed sparse pattern by name.

    ``"strided"`` and ``"fixed"``: Sparse Transformer's (causal) patterns
    with ``stride``; ``"longformer"``: ``window`` blocks on each side and
    ``global_blocks``; ``"bigbird"``: the same plus ``random_blocks`` per
    row drawn with ``seed``; ``"checkerboard"``: squares of ``stride // 2``
    blocks (at least 1). The defaults are the registry's
    (``variants.Settings``), as the command line's.

    Raises:
        ValueError: an unknown name or a bad parameter (the builders in
            ``masks`` say which).
    """
    if name not in SPARSE_PATTERNS:
        raise ValueError(
            f"unknown pattern {name!r}; choose one of {list(SPARSE_PATTERNS)}."
        )
    if name == "strided":
        return masks.strided_layout(n_blocks, stride=stride)
    if name == "fixed":
        return masks.fixed_layout(n_blocks, stride=stride)
    if name == "longformer":
        return masks.longformer_layout(
            n_blocks, window=window, global_blocks=global_blocks
        )
    if name == "bigbird":
        return masks.bigbird_layout(
            n_blocks,
            window=window,
            global_blocks=global_blocks,
            random_blocks=random_blocks,
            generator=torch.Generator().manual_seed(seed),
        )
    return masks.checkerboard_layout(n_blocks, square=max(1, stride // 2))


def draw_sparse_pattern(
    name: str, length: int, block_size: int, **parameters: int
) -> Figure:
    """Draw a fixed sparse pattern's mask for ``length`` tokens, titled with
    its density and its FLOPs against dense attention.

    ``parameters`` go to ``sparse_layout``.

    Raises:
        ValueError: a bad name, length, block size or parameter.
    """
    length = check_positive_int("length", length)
    block_size = check_positive_int("block_size", block_size)
    layout = sparse_layout(
        name, masks.n_blocks(length, block_size), **parameters
    )
    mask = masks.create_mask(
        masks.from_block_layout(layout, block_size), length, length
    )
    density = mask.float().mean().item()
    fig, ax = plt.subplots(figsize=(4.4, 4.6))
    plot_mask(
        mask,
        ax=ax,
        title=f"{name}: density {density:.2f}\n"
        f"FLOPs {density:.2f}x dense ({1 / density:.1f}x fewer)",
    )
    return fig


def sparse_pattern_explorer(length: int = 64):
    """Sliders for the fixed sparse patterns: pattern, length, block size,
    window, stride, global and random blocks -> the mask, its density and
    its FLOPs against dense."""
    import ipywidgets as widgets
    from IPython.display import display

    check_positive_int("length", length)
    controls = {
        "name": widgets.Dropdown(
            options=list(SPARSE_PATTERNS), value="bigbird",
            description="pattern",
        ),
        "length": widgets.IntSlider(
            value=length, min=16, max=256, step=16, description="length"
        ),
        "block_size": widgets.IntSlider(
            value=4, min=1, max=32, description="block size"
        ),
        "window": widgets.IntSlider(value=Settings.bigbird_window, min=0,
                                    max=8, description="window"),
        "stride": widgets.IntSlider(value=4, min=1, max=16,
                                    description="stride"),
        "global_blocks": widgets.IntSlider(
            value=Settings.global_blocks, min=0, max=4, description="globals"
        ),
        "random_blocks": widgets.IntSlider(
            value=Settings.random_blocks, min=0, max=8, description="random"
        ),
    }  # fmt: skip

    def show(name, length, block_size, **parameters):
        display(draw_sparse_pattern(name, length, block_size, **parameters))
        plt.close("all")

    output = widgets.interactive_output(show, controls)
    return widgets.HBox([widgets.VBox(list(controls.values())), output])


def draw_quantization_grid(weights: Tensor, bits: int, grid: str) -> Figure:
    """A histogram of ``weights`` with the levels of a ``bits``-bit grid on
    top (``"uniform"``, ``"kmeans"`` or ``"log"``), titled with the relative
    error of rounding the weights onto it (chapter "Quantization")."""
    from ..compression import quantization

    values = weights.detach().flatten().float()
    rounded = quantization.quantize_values(values, bits, grid=grid)
    levels = rounded.unique()
    error = quantization.relative_error(values, rounded)
    fig, ax = plt.subplots(figsize=(7, 3))
    # np.histogram + stairs: the picture of ax.hist(bins=200), without its
    # 200 bar patches (a tenth of the time).
    counts, edges = np.histogram(values.numpy(), bins=200)
    ax.stairs(counts, edges, fill=True, color="0.6")
    ax.vlines(levels.numpy(), 0, 1, transform=ax.get_xaxis_transform(),
              color="tab:red", linewidth=0.8, alpha=0.8)  # fmt: skip
    ax.set_xlabel("weight value")
    ax.set_ylabel("count")
    ax.set_title(
        f"{grid} grid, {bits} bits: {len(levels)} levels in use, "
        f"relative error {error:.3f}"
    )
    fig.tight_layout()
    return fig


def quantization_explorer(weights: Tensor):
    """Sliders for the bit width and the grid over a weight histogram."""
    import ipywidgets as widgets
    from IPython.display import display

    controls = {
        "bits": widgets.IntSlider(value=4, min=2, max=8, description="bits"),
        "grid": widgets.Dropdown(
            options=["uniform", "kmeans", "log"], value="uniform",
            description="grid",
        ),
    }  # fmt: skip

    def show(bits, grid):
        display(draw_quantization_grid(weights, bits, grid))
        plt.close("all")

    output = widgets.interactive_output(show, controls)
    return widgets.VBox([widgets.HBox(list(controls.values())), output])


LOW_RANK_METHODS = ("linformer", "nystrom", "performer")
"""The approximations ``draw_low_rank_approximation`` draws, by name."""


def low_rank_approximation(
    method: str, query: Tensor, key: Tensor, size: int, *, seed: int = 0
) -> Tensor:
    """The ``(L, S)`` attention that ``method`` applies at ``size``.

    ``size`` is Linformer's rank (mean-pooling projections, so no seed is
    needed), Nyström's landmarks (segment means) or Performer's features
    (drawn with ``seed``). ``query (L, E)``, ``key (S, E)``, float64 is
    best for pictures.
    """
    from ..attention import (
        effective_attention,
        linformer_attention,
        make_linformer_projections,
        make_performer_features,
        nystrom_attention,
        performer_attention,
    )

    if method not in LOW_RANK_METHODS:
        raise ValueError(
            f"method must be one of {LOW_RANK_METHODS}; got {method!r}."
        )
    size = check_positive_int("size", size)
    S, E = key.shape[-2], key.shape[-1]
    kind = {"dtype": key.dtype, "device": key.device}
    if method == "linformer":
        proj = make_linformer_projections(S, size, kind="mean", **kind)
        return effective_attention(
            linformer_attention, query, key, proj_k=proj
        )
    if method == "nystrom":
        return effective_attention(
            nystrom_attention, query, key, num_landmarks=size
        )
    g = torch.Generator().manual_seed(seed)
    features = make_performer_features(size, E, generator=g, **kind)
    return effective_attention(
        performer_attention, query, key, features=features
    )


def draw_low_rank_approximation(
    method: str, query: Tensor, key: Tensor, size: int, *, seed: int = 0
) -> Figure:
    """Exact attention beside ``method``'s approximation at ``size``, with
    the relative error of the matrix in the title.

    Args:
        method: ``"linformer"``, ``"nystrom"`` or ``"performer"``.
        query: ``(L, E)``. key: ``(S, E)``.
        size: rank, landmarks or features (``low_rank_approximation``).
        seed: Performer's features.
    """
    exact = torch.softmax(
        query @ key.T / query.shape[-1] ** 0.5, dim=-1
    )  # (L, S)
    approx = low_rank_approximation(method, query, key, size, seed=seed)
    error = float((approx - exact).norm() / exact.norm())
    fig, axes = plt.subplots(1, 2, figsize=(7.6, 3.4))
    high = float(exact.max())
    for ax, matrix, title in (
        (axes[0], exact, "exact softmax attention"),
        (axes[1], approx, f"{method}, size {size}: error {error:.2f}"),
    ):
        image = ax.imshow(
            matrix.float().numpy(), cmap="viridis", vmin=0.0, vmax=high
        )
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("key position j")
        ax.grid(False)
    axes[0].set_ylabel("query position i")
    fig.colorbar(image, ax=list(axes), fraction=0.046, pad=0.04)
    return fig


def low_rank_explorer(query: Tensor, key: Tensor):
    """A method menu and a size slider: the approximated attention map
    beside the exact one, and the error. ``query (L, E)``, ``key (S, E)``."""
    import ipywidgets as widgets
    from IPython.display import display

    S = key.shape[-2]
    controls = {
        "method": widgets.Dropdown(
            options=list(LOW_RANK_METHODS), description="method"
        ),
        "size": widgets.IntSlider(
            value=8, min=1, max=S, description="rank / m"
        ),
        "seed": widgets.IntSlider(value=0, min=0, max=9, description="seed"),
    }

    def show(method, size, seed):
        display(
            draw_low_rank_approximation(method, query, key, size, seed=seed)
        )
        plt.close("all")

    output = widgets.interactive_output(show, controls)
    return widgets.HBox([widgets.VBox(list(controls.values())), output])


def draw_hierarchical(
    length: int = 64,
    *,
    block_size: int = 4,
    levels: int = 3,
    top_k: int = 2,
    seed: int = 0,
) -> Figure:
    """The three hierarchical schemes side by side: which (query, key)
    pairs each computes exactly, through which pooled level, or skips.

    Coarse-to-fine picks its blocks from random queries and keys (seeded
    with ``seed``). Each title gives the share of exact pairs and the
    pooled keys a query attends on average (its cost, in keys). Alternating
    shades mark the pairs that share one computed score: a strip of one
    query and ``2**l`` keys at level ``l``, or a square of ``2**l`` queries
    and keys where queries are pooled too (``recursive``).

    Raises:
        ValueError: a length, block size, level count or top-k that does
            not fit (``hierarchical_levels`` says which).
    """
    from matplotlib.colors import ListedColormap

    from ..attention import hierarchical

    length = check_positive_int("length", length)
    generator = torch.Generator().manual_seed(seed)
    query, key = torch.randn(2, length, 8, generator=generator)
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 4.3))
    colours = ["#d9d9d9", "#08306b", "#4292c6", "#9ecae1", "#c6dbef",
               "#deebf7", "#f7fbff", "#ffffff"]  # fmt: skip
    cmap = ListedColormap(colours[: levels + 2])
    for ax, scheme in zip(axes, hierarchical.SCHEMES):
        where = hierarchical.hierarchical_levels(
            scheme, length, block_size=block_size, levels=levels,
            top_k=top_k, query=query, key=key,
        )  # fmt: skip
        ax.imshow(where + 1, cmap=cmap, vmin=0, vmax=levels + 1)
        ax.imshow(_score_tiles(where, scheme == "recursive"))
        keys = _keys_per_query(where, scheme == "recursive")
        exact = (where == 0).float().mean()
        ax.set_title(
            f"{scheme.replace('_', '-')}\nexact {exact:.0%}, "
            f"cost {keys:.0f} keys per query"
        )
        ax.set_xlabel("key")
        ax.set_ylabel("query")
        ax.label_outer()
    names = ["skipped", "exact"] + [
        f"level {level}: {2**level} to 1" for level in range(1, levels)
    ]
    handles = [
        plt.Rectangle((0, 0), 1, 1, color=cmap(i), ec="k", lw=0.3)
        for i in range(levels + 1)
    ]
    fig.legend(handles, names, loc="lower center", ncol=levels + 1,
               frameon=False)  # fmt: skip
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig


def _score_tiles(where: Tensor, pooled_queries: bool) -> np.ndarray:
    """An ``(L, S, 4)`` RGBA overlay that darkens every other tile of pairs
    sharing one computed score: ``1 x 2**l`` at level ``l``, or
    ``2**l x 2**l`` with ``pooled_queries``. Exact and skipped pairs stay
    clear."""
    rows, cols = torch.meshgrid(
        torch.arange(where.shape[0]), torch.arange(where.shape[1]),
        indexing="ij",
    )  # fmt: skip
    size = 2 ** where.clamp(min=0)
    tile = cols // size + (rows // size if pooled_queries else rows)
    shaded = (where >= 1) & (tile % 2 == 1)
    overlay = np.zeros((*where.shape, 4))
    overlay[..., 3] = 0.22 * shaded.numpy()
    return overlay


def _keys_per_query(where: Tensor, pooled_queries: bool) -> float:
    """Keys (exact or pooled) a query attends, on average: a pooled key of
    level ``l`` stands for ``2**l`` of the pairs in ``where``, and a pooled
    query (``recursive``) for ``2**l`` queries."""
    base = 0.25 if pooled_queries else 0.5
    weight = torch.where(where >= 0, base ** where.clamp(min=0).double(), 0)
    return float(weight.sum(-1).mean())


def hierarchical_explorer(length: int = 64):
    """Sliders for the hierarchical schemes: length, block size, levels and
    top-k -> which pairs each scheme computes exactly, pooled or skips."""
    import ipywidgets as widgets
    from IPython.display import display

    check_positive_int("length", length)
    controls = {
        "length": widgets.IntSlider(
            value=length, min=16, max=256, step=16, description="length"
        ),
        "block_size": widgets.IntSlider(
            value=4, min=2, max=32, step=2, description="block size"
        ),
        "levels": widgets.IntSlider(value=3, min=1, max=6,
                                    description="levels"),
        "top_k": widgets.IntSlider(value=2, min=0, max=8,
                                   description="top-k"),
    }  # fmt: skip

    def show(length, block_size, levels, top_k):
        try:
            figure = draw_hierarchical(
                length, block_size=block_size, levels=levels, top_k=top_k
            )
        except ValueError as error:  # e.g. too many levels for the length
            print(error)
            return
        display(figure)
        plt.close("all")

    output = widgets.interactive_output(show, controls)
    return widgets.HBox([widgets.VBox(list(controls.values())), output])


def draw_magnitude_pruning(
    weight: Tensor, amount: float, *, name: str = "", crop: int = 48
) -> Figure:
    """Magnitude pruning of one matrix at ``amount`` (chapter "Pruning").

    Left, the top-left ``crop x crop`` corner of ``weight`` with the pruned
    entries black; right, the histogram of every weight with the survivors
    in colour and the threshold ``±tau`` below which weights are zeroed
    (the axis spans the central 99.9% of ``|w|``).

    Args:
        weight: a 2-D weight matrix.
        amount: the share of weights zeroed, in ``[0, 1]``
            (``pruning.magnitude_mask``).
        name: the matrix's name, for the title.
        crop: the side of the corner drawn.

    Raises:
        ValueError: ``weight`` is not 2-D, ``amount`` is not in ``[0, 1]``
            or ``crop`` is not a positive int.
    """
    from ..compression import pruning

    crop = check_positive_int("crop", crop)
    if weight.dim() != 2:
        raise ValueError(
            f"weight must be a 2-D matrix; got shape {tuple(weight.shape)}."
        )
    values = weight.detach().float()
    keep = pruning.magnitude_mask(values, amount)  # (out, in)
    kept = values[keep]
    tau = float(values.abs()[~keep].max()) if (~keep).any() else 0.0
    corner = values[:crop, :crop].masked_fill(~keep[:crop, :crop], torch.nan)
    high = float(values[:crop, :crop].abs().max())
    fig, axes = plt.subplots(
        1, 2, figsize=(8.4, 3.3), gridspec_kw={"width_ratios": [1, 1.5]}
    )
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="0.15")
    axes[0].imshow(corner.numpy(), cmap=cmap, vmin=-high, vmax=high)
    axes[0].set_title(f"top-left {crop} x {crop}: black = pruned",
                      fontsize=10)  # fmt: skip
    axes[0].set_xlabel("input")
    axes[0].set_ylabel("output")
    axes[0].grid(False)
    # The axis spans the central 99.9% of |w|: a trained matrix's few
    # outliers would otherwise squeeze the bell into a couple of bins.
    flat = values.flatten().numpy()
    edge = float(np.quantile(np.abs(flat), 0.999))
    counts, edges = np.histogram(flat, bins=150, range=(-edge, edge))
    survivors, _ = np.histogram(kept.numpy(), bins=edges)
    axes[1].stairs(counts, edges, fill=True, color="0.85", label="all")
    axes[1].stairs(survivors, edges, fill=True, color="tab:blue",
                   label="kept")  # fmt: skip
    if tau > 0:
        for sign in (-1, 1):
            axes[1].axvline(sign * tau, color="tab:red", linewidth=0.9,
                            linestyle="--")  # fmt: skip
    axes[1].set_xlabel("weight value (the 0.1% largest |w| off the axis)")
    axes[1].set_ylabel("count")
    axes[1].legend(loc="upper right")
    label = f"{name}: " if name else ""
    fig.suptitle(
        f"{label}{1 - keep.float().mean():.0%} of {keep.numel():,} weights "
        f"zeroed, |w| <= {tau:.3g}",
        fontsize=11,
    )
    fig.tight_layout()
    return fig


def pruning_explorer(weight: Tensor, *, name: str = ""):
    """A slider for the share of weights pruned by magnitude: the matrix's
    corner with the pruned entries black and the survivors' histogram."""
    import ipywidgets as widgets
    from IPython.display import display

    controls = {
        "amount": widgets.FloatSlider(
            value=0.5, min=0.0, max=0.99, step=0.01, description="amount"
        ),
    }

    def show(amount):
        display(draw_magnitude_pruning(weight, amount, name=name))
        plt.close("all")

    output = widgets.interactive_output(show, controls)
    return widgets.VBox([widgets.HBox(list(controls.values())), output])


def draw_attention_map(
    attentions: Sequence[Tensor],
    tokens: Sequence[str],
    layer: int,
    head: int,
    *,
    example: int = 0,
) -> Figure:
    """One head of a model's attention over the tokens of one input.

    Args:
        attentions: one ``(B, H, L, L)`` tensor per layer, as transformers
            returns with ``output_attentions=True`` (eager attention).
        tokens: the ``L`` token strings, for the axes.
        layer, head: which map, counted from 0 (titled from 1).
        example: which input of the batch.

    Raises:
        ValueError: a layer or head out of range, or tokens that do not
            match the maps' length.
    """
    if not 0 <= layer < len(attentions):
        raise ValueError(
            f"layer must be in [0, {len(attentions) - 1}]; got {layer}."
        )
    maps = attentions[layer][example]  # (H, L, L)
    if not 0 <= head < maps.shape[0]:
        raise ValueError(
            f"head must be in [0, {maps.shape[0] - 1}]; got {head}."
        )
    if len(tokens) != maps.shape[-1]:
        raise ValueError(
            f"got {len(tokens)} tokens for maps over {maps.shape[-1]} keys."
        )
    fig, ax = plt.subplots(figsize=(6.2, 6.2))
    # colours scaled per map, as bertviz and the chapter's figures do
    ax.imshow(maps[head].detach().float().numpy(), cmap="viridis")
    ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=7)
    ax.set_yticks(range(len(tokens)), tokens, fontsize=7)
    ax.grid(False)
    ax.set_title(f"layer {layer + 1}, head {head + 1}")
    fig.tight_layout()
    return fig


def draw_soft_labels(logits: Tensor, temperature: float) -> Figure:
    """The teacher's probability of class 1 for every pair at one
    temperature, as a histogram, titled with the mean entropy (chapter
    "Distillation"): at ``T = 1`` nearly every pair sits at 0 or 1; as
    ``T`` grows the soft labels spread and carry how sure the teacher is.

    Args:
        logits: ``(N, 2)`` teacher logits.
        temperature: ``T > 0``.
    """
    if logits.dim() != 2 or logits.shape[-1] != 2:
        raise ValueError(f"logits must be (N, 2); got {tuple(logits.shape)}.")
    temperature = check_positive_real("temperature", temperature)
    probs = torch.softmax(logits.float() / temperature, -1)
    entropy = -(probs * probs.clamp_min(1e-12).log2()).sum(-1).mean()
    fig, ax = plt.subplots(figsize=(6, 2.8))
    ax.hist(probs[:, 1].numpy(), bins=40, range=(0, 1), color="tab:blue")
    ax.set_xlim(0, 1)
    ax.set_xlabel("teacher's probability of 'paraphrase'")
    ax.set_ylabel("pairs")
    ax.set_title(
        f"T = {temperature:g}: mean entropy {float(entropy):.2f} bits"
    )
    fig.tight_layout()
    return fig


def soft_label_explorer(logits: Tensor):
    """A temperature slider over the teacher's soft labels."""
    import ipywidgets as widgets
    from IPython.display import display

    slider = widgets.FloatLogSlider(
        value=2.0, base=2, min=-1, max=4, step=0.25, description="T"
    )

    def show(temperature):
        display(draw_soft_labels(logits, temperature))
        plt.close("all")

    output = widgets.interactive_output(show, {"temperature": slider})
    return widgets.VBox([slider, output])
