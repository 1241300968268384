"""Figures in one house style: attention patterns, heatmaps, cost vs length.

Every chapter draws with these functions, so a mask, a weight matrix or a
timing sweep looks the same in every chapter. Figures are PNG (see
``setup_notebook``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap, LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter, ScalarFormatter
from torch import Tensor

from .._validation import check_bool, check_positive_int, check_records

BOOK_STYLE = {
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "figure.figsize": (6.4, 4.0),
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "legend.frameon": False,
}
MASK_COLORS = ListedColormap(["#f4f4f4", "#2a6f97"])  # blocked, may attend


def use_book_style() -> None:
    """Apply the book's matplotlib style to every figure that follows."""
    plt.rcParams.update(BOOK_STYLE)


def _as_2d_array(name: str, matrix: Tensor | np.ndarray) -> np.ndarray:
    """``matrix`` as a non-empty 2-D NumPy array of bools, ints or floats.

    Tensors of dtypes NumPy lacks (bfloat16) become float32 first.
    """
    if isinstance(matrix, Tensor):
        if matrix.device.type == "meta":
            raise ValueError(
                f"{name} is on the meta device and holds no values to draw; "
                f"compute it on 'cpu' or 'cuda'."
            )
        matrix = matrix.detach().cpu()
        if matrix.dtype == torch.bfloat16:
            matrix = matrix.float()
        array = matrix.numpy()
    else:
        array = np.asarray(matrix)
    if array.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D (L, S); got shape {array.shape}. "
            f"Select one batch row and head first, e.g. {name}[0, 0]."
        )
    if array.dtype.kind not in "biuf":
        raise ValueError(
            f"{name} must hold real numbers or bools; got dtype {array.dtype}."
        )
    if array.size == 0:
        raise ValueError(
            f"{name} is empty (shape {array.shape}); there is nothing to draw."
        )
    return array


def _allowed(mask: Tensor | np.ndarray) -> np.ndarray:
    """A bool or additive mask as a bool array: True = may attend.

    Raises:
        ValueError: integers other than 0 and 1, or floats other than 0,
            -inf and the dtype's most negative value (an additive mask).
    """
    array = _as_2d_array("mask", mask)
    if array.dtype.kind == "b":
        return array
    if array.dtype.kind in "iu":
        if not np.isin(array, (0, 1)).all():
            raise ValueError(
                "an integer mask must hold only 0 and 1 (1 = may attend); "
                "use plot_heatmap to draw other numbers."
            )
        return array.astype(bool)
    dtype = mask.dtype if isinstance(mask, Tensor) else array.dtype
    lowest = (
        torch.finfo(dtype).min
        if isinstance(dtype, torch.dtype)
        else np.finfo(dtype).min
    )  # bfloat16's is not float32's, so read it before the conversion
    blocked = np.isneginf(array) | (array == lowest)
    if not (blocked | (array == 0)).all():
        raise ValueError(
            "a float mask is drawn as an additive mask: 0 = may attend, "
            "-inf (or the dtype's most negative value) = blocked; this one "
            "holds other values. Draw weights with plot_heatmap, or pass a "
            "bool mask (e.g. weights > 0)."
        )
    return ~blocked


def plot_mask(
    mask: Tensor | np.ndarray,
    *,
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """Draw an ``(L, S)`` mask: dark where query ``i`` may attend ``j``.

    Args:
        mask: a bool mask (True = may attend, as SDPA's), an integer mask of
            0 and 1 (1 = may attend), or an additive float mask as SDPA
            adds it to the scores: 0 = may attend, ``-inf`` (or the dtype's
            most negative value, as Hugging Face masks use) = blocked.
        ax: the axes to draw on (default: a new figure).
        title: the title; the share of allowed pairs is appended to it.

    Returns:
        the axes.

    Raises:
        ValueError: a mask that is not 2-D, is empty, or holds other
            numbers (attention weights: draw those with ``plot_heatmap``).
    """
    array = _allowed(mask)
    ax = ax or plt.figure(figsize=(3.2, 3.2)).gca()
    ax.imshow(array, cmap=MASK_COLORS, vmin=0, vmax=1, interpolation="nearest")
    ax.grid(False)
    L, S = array.shape
    if max(L, S) <= 40:  # draw cell borders while cells are big enough to see
        ax.set_xticks(np.arange(-0.5, S, 1), minor=True)
        ax.set_yticks(np.arange(-0.5, L, 1), minor=True)
        ax.grid(which="minor", color="white", linewidth=0.5)
        ax.tick_params(which="minor", length=0)
    ax.set_xlabel("key position j")
    ax.set_ylabel("query position i")
    if title is not None:
        ax.set_title(f"{title}\n{array.mean():.0%} of pairs")
    return ax


def plot_mask_gallery(
    masks: Mapping[str, Tensor], *, ncols: int = 4
) -> Figure:
    """Draw several ``(L, S)`` masks side by side, titled by their names.

    Raises:
        ValueError: ``masks`` is not a non-empty mapping of names to masks,
            or ``ncols`` is not a positive int.
    """
    if not isinstance(masks, Mapping):
        raise ValueError(
            f"masks must map names to masks, e.g. {{'causal': mask}}; got "
            f"{type(masks).__name__}."
        )
    if not masks:
        raise ValueError("masks must hold at least one named mask.")
    ncols = check_positive_int("ncols", ncols)
    nrows = -(-len(masks) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(3.0 * ncols, 3.6 * nrows), squeeze=False
    )
    for ax, (name, mask) in zip(axes.flat, masks.items()):
        plot_mask(mask, ax=ax, title=name)
        ax.label_outer()
    for ax in axes.flat[len(masks) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def plot_heatmap(
    weights: Tensor | np.ndarray,
    *,
    ax: Axes | None = None,
    title: str | None = None,
    colorbar: bool = True,
    vmax: float | None = None,
    log: bool = False,
) -> Axes:
    """Draw an ``(L, S)`` matrix of attention weights.

    Row ``i`` is query ``i``; column ``j`` is key ``j``. Any real dtype
    works, bfloat16 included (drawn as float32). ``vmax`` fixes the colour
    scale to ``[0, vmax]``, so that heatmaps side by side share one scale;
    None scales each to its own range. ``log=True`` spreads the colours
    over four decades below the top, ``[vmax / 10**4, vmax]``, so that small
    weights show; exact zeros (pairs a pattern drops) are drawn white.

    Raises:
        ValueError: ``weights`` is not 2-D, is empty, or is not real, or
            ``vmax`` is not a positive finite number, or ``colorbar`` or
            ``log`` is not a bool.
    """
    array = _as_2d_array("weights", weights)
    check_bool("colorbar", colorbar)
    check_bool("log", log)
    if vmax is not None and not (
        isinstance(vmax, (int, float))
        and not isinstance(vmax, bool)
        and 0 < vmax < math.inf
    ):
        raise ValueError(
            f"vmax must be a positive finite number (the top of the colour "
            f"scale) or None; got {vmax!r}."
        )
    ax = ax or plt.figure(figsize=(4.0, 3.4)).gca()
    if log:
        top = float(vmax) if vmax is not None else float(array.max())
        if not top > 0:
            raise ValueError(
                "log=True needs a positive weight to scale from; every "
                "weight is zero or negative (pass log=False)."
            )
        cmap = plt.get_cmap("viridis").with_extremes(bad="white")
        image = ax.imshow(
            np.ma.masked_less_equal(array, 0.0),
            cmap=cmap,
            interpolation="nearest",
            norm=LogNorm(vmin=top * 1e-4, vmax=top, clip=True),
        )
    else:
        scale = {} if vmax is None else {"vmin": 0.0, "vmax": float(vmax)}
        image = ax.imshow(
            array, cmap="viridis", interpolation="nearest", **scale
        )
    ax.grid(False)
    ax.set_xlabel("key position j")
    ax.set_ylabel("query position i")
    if title is not None:
        ax.set_title(title)
    if colorbar:
        ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return ax


def plot_scaling(
    records: Sequence[Mapping[str, object]],
    *,
    y: str = "median_s",
    ax: Axes | None = None,
    ylabel: str | None = None,
    scale: float = 1.0,
    guides: Sequence[int] = (1, 2),
) -> Axes:
    """Plot ``y`` against ``L`` on log-log axes, one line per variant.

    With dashed slope guides (see ``guides``).

    Args:
        records: plain dicts as returned by ``benchmark.sweep`` (keys
            ``variant``, ``L``, ``y``).
        y: the record key to plot (``median_s``, ``peak_bytes``...). Missing
            values are skipped.
        ylabel: the y-axis label (default: ``y``). scale: multiplies every
            value (e.g. ``1e3`` for ms).
        guides: draw dashed lines of these slopes (``L^1``, ``L^2``) through
            the first point.

    Raises:
        ValueError: no records, a record that is not a mapping with
            ``variant`` and ``L``, or no record has the key ``y``.
    """
    if not records:
        raise ValueError("records must hold at least one record to plot.")
    records = check_records(records)
    if not any(y in r for r in records):
        raise ValueError(
            f"no record has the key y={y!r}; the records have "
            f"{sorted(set().union(*records))}."
        )
    ax = ax or plt.figure().gca()
    variants = list(dict.fromkeys(r["variant"] for r in records))
    anchor = None
    for variant in variants:
        points = sorted(
            (r["L"], r[y] * scale)
            for r in records
            if r["variant"] == variant and r.get(y) is not None
        )
        if not points:
            continue
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker="o", label=variant)
        anchor = anchor or points[0]
    if anchor is not None:
        lengths = np.array(sorted({r["L"] for r in records}), dtype=float)
        for slope in guides:
            guide = anchor[1] * (lengths / anchor[0]) ** slope
            ax.plot(
                lengths, guide, linestyle="--", color="gray", linewidth=0.8
            )
            label = r"$\propto L$" if slope == 1 else rf"$\propto L^{slope}$"
            ax.annotate(
                label,
                (lengths[-1], guide[-1]),
                fontsize=8,
                color="gray",
                ha="left",
                va="center",
            )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length L")
    ax.set_ylabel(ylabel or y)
    ax.legend()
    return ax


TILE_COLORS = ListedColormap(["#ffffff", "#f2c6a0", "#2a6f97"])


def plot_tiles(
    mask: Tensor | np.ndarray,
    tiles: Sequence[tuple[int, int, int, int]],
    *,
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """Draw which (query, key) pairs a blocked kernel computes.

    Args:
        mask: ``(L, S)`` bool, True where query ``i`` may attend key ``j``.
        tiles: the rectangles the kernel computes, as ``(first query, last
            query + 1, first key, last key + 1)``.

    Dark: computed and needed; orange: computed, then masked (wasted);
    white: never computed. The title (if given) gets the share of computed
    pairs that were wasted appended.

    Raises:
        ValueError: a mask that is not 2-D, or a tile outside it.
    """
    allowed = _as_2d_array("mask", mask).astype(bool)
    L, S = allowed.shape
    computed = np.zeros_like(allowed)
    for tile in tiles:
        q0, q1, k0, k1 = (int(x) for x in tile)
        if not (0 <= q0 <= q1 <= L and 0 <= k0 <= k1 <= S):
            raise ValueError(
                f"tile {tuple(tile)} lies outside the ({L}, {S}) mask; tiles "
                f"are (first query, last query + 1, first key, last key + 1)."
            )
        computed[q0:q1, k0:k1] = True
    codes = np.where(computed, np.where(allowed, 2, 1), 0)
    ax = ax or plt.figure(figsize=(4.0, 4.0)).gca()
    ax.imshow(codes, cmap=TILE_COLORS, vmin=0, vmax=2, interpolation="nearest")
    for q0, q1, k0, k1 in tiles:
        ax.add_patch(
            plt.Rectangle(
                (k0 - 0.5, q0 - 0.5),
                k1 - k0,
                q1 - q0,
                fill=False,
                edgecolor="black",
                linewidth=0.6,
            )
        )
    ax.grid(False)
    ax.set_xlabel("key position j")
    ax.set_ylabel("query position i")
    if title is not None:
        wasted = (computed & ~allowed).sum() / max(computed.sum(), 1)
        ax.set_title(f"{title}\n{wasted:.0%} of computed pairs wasted")
    return ax


def pareto_front(
    cost: Sequence[float], quality: Sequence[float]
) -> list[bool]:
    """Which points no other point beats: for each point, True when no
    other one is at least as cheap and at least as good, and strictly
    better in one of the two.

    Args:
        cost: lower is better (latency, size). quality: higher is better
            (F1, accuracy). Both of the same length, finite numbers.

    Returns:
        One bool per point, True on the Pareto front.

    Raises:
        ValueError: ``cost`` or ``quality`` not a list of numbers, lengths
            that differ, or a value that is not finite.
    """
    cost, quality = _numbers("cost", cost), _numbers("quality", quality)
    if len(cost) != len(quality):
        raise ValueError(
            f"cost and quality must have one value per point; got "
            f"{len(cost)} and {len(quality)}."
        )
    if not np.isfinite(cost + quality).all():
        raise ValueError("cost and quality must be finite numbers.")
    points = list(zip(cost, quality))
    return [
        not any(
            c <= c0 and q >= q0 and (c < c0 or q > q0) for c, q in points
        )
        for c0, q0 in points
    ]


def _numbers(name: str, values: object) -> list[float]:
    """``values`` as a list of floats, or a ValueError naming ``name``."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ValueError(
            f"{name} must be a list of numbers; got {type(values).__name__}."
        )
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"{name} must be a list of numbers; {error}."
        ) from None


def plot_pareto(
    names: Sequence[str],
    cost: Sequence[float],
    quality: Sequence[float],
    *,
    xlabel: str,
    ylabel: str,
    ax: Axes | None = None,
    log_x: bool = True,
) -> Axes:
    """Quality against cost, one numbered point per model (the numbers are
    keyed in a legend beside the axes, so close points stay readable), the
    Pareto front (``pareto_front``) in colour and joined by a step line.

    Args:
        names: one label per point. cost, quality: as ``pareto_front``.
        xlabel, ylabel: the axis labels. log_x: a logarithmic cost axis.

    Raises:
        ValueError: as ``pareto_front``, no point, ``names`` of another
            length, or a cost that is not positive on the logarithmic axis.
    """
    front = pareto_front(cost, quality)
    if not front:
        raise ValueError("plot_pareto needs at least one point to draw.")
    if len(names) != len(front):
        raise ValueError(
            f"names must have one label per point; got {len(names)} names "
            f"for {len(front)} points."
        )
    if log_x and min(cost) <= 0:
        raise ValueError(
            f"cost must be positive on a logarithmic axis; got "
            f"{min(cost)!r}. Pass log_x=False to draw it on a linear one."
        )
    ax = ax or plt.figure(figsize=(9, 4.2)).gca()
    for number, (name, x, y, best) in enumerate(
        zip(names, cost, quality, front), start=1
    ):
        colour = "#c0392b" if best else "#7f8c8d"
        ax.scatter([x], [y], color=colour, zorder=3, label=f"{number}  {name}")
        ax.annotate(
            str(number), (x, y), xytext=(4, 3), textcoords="offset points",
            fontsize=8, color=colour,
        )
    best = sorted((x, y) for x, y, keep in zip(cost, quality, front) if keep)
    xs, ys = zip(*best)
    ax.step(xs, ys, where="post", color="#c0392b", linewidth=1, zorder=2)
    if log_x:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(
        loc="upper left", bbox_to_anchor=(1.01, 1), handletextpad=0.2,
        title="red: on the Pareto front",
    )
    return ax
