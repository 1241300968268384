"""Attention patterns as mask functions, and tools to combine and draw them.

A *mask function* (``mask_mod``) answers one question: may query ``q_idx`` of
head ``h`` in batch row ``b`` attend key ``kv_idx``? It takes four integer
tensors that broadcast against each other and returns a bool tensor (True =
may attend). This is the ``mask_mod`` signature of PyTorch's FlexAttention
(arXiv 2412.05496), so every pattern here can also be handed to
``torch.nn.attention.flex_attention``.

The patterns come from Sparse Transformer (strided, block; arXiv 1904.10509),
Longformer (sliding, dilated, global; arXiv 2004.05150) and BigBird (window +
global; arXiv 2007.14062). Chapter 1 draws them all; later chapters make them
fast.

Window semantics, used everywhere in this package (as flash-attn's
``window_size``): ``window=(left, right)`` lets query ``i`` attend key ``j``
iff ``i - left <= j <= i + right``. An int ``w`` means ``(w, w)``; causal
local attention is ``(w, 0)``; a centred window of 3 keys is ``(1, 1)``.

A mask function built for one batch (``key_padding``: one length per batch
row) carries that batch size as its ``batch`` attribute; the combinators keep
it and ``create_mask`` refuses any other ``batch``, so a padding mask can never
be evaluated for the wrong rows.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ._validation import (
    check_block_layout,
    check_bool,
    check_device_here,
    check_layout_fits,
    check_non_negative_int,
    check_positive_int,
    check_window,
)

MaskMod = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]

_FAR = 2**62
"""Farther than any two positions of a tensor are apart. Window sides,
dilations, strides, block sizes and token counts are capped at it before
they meet int64 index tensors, where a larger Python int would overflow
(an error from 2**63 on, a silently wrong mask just below it)."""

__all__ = [
    "MaskMod",
    "full",
    "causal",
    "sliding_window",
    "dilated_sliding_window",
    "shifted_window",
    "per_head",
    "strided",
    "block_local",
    "global_tokens",
    "key_padding",
    "and_masks",
    "or_masks",
    "invert",
    "create_mask",
    "example_patterns",
    "n_blocks",
    "strided_layout",
    "fixed_layout",
    "longformer_layout",
    "bigbird_layout",
    "checkerboard_layout",
    "random_layout",
    "from_block_layout",
    "block_summary",
]


def full(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
    """Every query attends every key (plain, bidirectional attention)."""
    return torch.ones_like(q_idx - kv_idx, dtype=torch.bool)


def causal(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
    """Query ``i`` attends key ``j`` iff ``j <= i``.

    Top-left aligned, as SDPA's ``is_causal``.
    """
    return kv_idx <= q_idx


def sliding_window(window: int | tuple[int, int]) -> MaskMod:
    """Local attention: query ``i`` attends the keys in a window around it.

    Key ``j`` is in the window iff ``i - left <= j <= i + right``.

    Args:
        window: ``(left, right)`` keys on each side, or an int ``w`` meaning
            ``(w, w)``. ``(w, 0)`` is causal local attention; ``(1, 1)`` is a
            centred window of 3 keys.

    Raises:
        ValueError: ``window`` is not an int or a pair of ints >= 0.

    Example:
        ``window=(1, 1)``, 4 tokens: query 0 sees keys {0, 1}, query 2 sees
        {1, 2, 3}.
    """
    left, right = (min(side, _FAR) for side in check_window(window))

    def sliding_window_mask(
        b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor
    ) -> Tensor:
        offset = q_idx - kv_idx  # i - j: keys behind the query are > 0
        return (offset <= left) & (-offset <= right)

    return sliding_window_mask


def dilated_sliding_window(
    window: int | tuple[int, int], dilation: int
) -> MaskMod:
    """Longformer's dilated window: keys ``dilation`` apart around the query.

    ``left`` keys behind and ``right`` ahead, ``dilation`` apart: query ``i``
    attends key ``j`` iff ``i - left*dilation <= j <= i + right*dilation`` and
    ``(i - j)`` is a multiple of ``dilation``. ``dilation=1`` is
    ``sliding_window``.

    Args:
        window: keys on each side, ``(left, right)`` or an int ``w`` meaning
            ``(w, w)``.
        dilation: the gap between attended keys, >= 1.

    Raises:
        ValueError: a window side below 0 or a dilation below 1.
    """
    left, right = check_window(window)
    dilation = check_positive_int("dilation", dilation)
    behind, ahead = min(left * dilation, _FAR), min(right * dilation, _FAR)
    dilation = min(dilation, _FAR)

    def dilated_window_mask(
        b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor
    ) -> Tensor:
        offset = q_idx - kv_idx
        in_reach = (offset <= behind) & (-offset <= ahead)
        return in_reach & (offset % dilation == 0)

    return dilated_window_mask


def shifted_window(
    window: int | tuple[int, int], length: int, dilation: int = 1
) -> MaskMod:
    """NATTEN's border rule: the window slides inside the sequence.

    Every query sees ``left + right + 1`` keys (fewer only when the sequence
    is shorter): near an end, the window is shifted inwards instead of being
    cut. With ``dilation``, positions ``i = r + dilation * t`` of one residue
    ``r`` form their own sequence, as in ``dilated_sliding_window``.

    Args:
        window: ``(left, right)`` or an int ``w`` meaning ``(w, w)``.
        length: the number of keys ``S`` (the rule needs to know the end).
        dilation: the gap between attended keys, >= 1.

    Raises:
        ValueError: a window side below 0, a length below 1 or a dilation
            below 1.

    Example:
        ``window=(1, 1)``, 5 keys: query 0 sees keys {0, 1, 2} (clipped:
        {0, 1}), query 4 sees {2, 3, 4}.
    """
    # Past the length, wider windows change nothing.
    length = min(check_positive_int("length", length), _FAR // 4)
    left, right = (min(side, length) for side in check_window(window))
    dilation = min(check_positive_int("dilation", dilation), _FAR)
    span = left + right + 1

    def shifted_window_mask(
        b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor
    ) -> Tensor:
        residue = q_idx % dilation
        n_keys = (length - residue + dilation - 1) // dilation
        t, u = q_idx // dilation, kv_idx // dilation
        start = torch.minimum((t - left).clamp(min=0), n_keys - span)
        start = torch.where(span >= n_keys, torch.zeros_like(start), start)
        same_class = kv_idx % dilation == residue
        return same_class & (u >= start) & (u < start + span)

    return shifted_window_mask


def per_head(*mask_mods: MaskMod) -> MaskMod:
    """Head ``h`` uses ``mask_mods[h]``: several patterns in one layer.

    Build the mask with ``create_mask(..., heads=len(mask_mods))``.

    Raises:
        ValueError: no mask function, or (when evaluated) a head index
            without a mask function.
    """
    _check_mask_mods(mask_mods, "per_head")

    def per_head_mask(
        b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor
    ) -> Tensor:
        if bool((h >= len(mask_mods)).any()):
            raise ValueError(
                f"per_head has {len(mask_mods)} mask functions but was "
                f"evaluated for head {int(h.max())}; pass "
                f"heads={len(mask_mods)} to create_mask."
            )
        result = mask_mods[0](b, h, q_idx, kv_idx)
        for index, mask_mod in enumerate(mask_mods[1:], start=1):
            result = torch.where(
                h == index, mask_mod(b, h, q_idx, kv_idx), result
            )
        return result

    return per_head_mask


def strided(stride: int) -> MaskMod:
    """Sparse Transformer's strided pattern: keys ``stride`` apart.

    Query ``i`` attends key ``j`` iff ``(i - j) % stride == 0``. Combine it
    with ``causal`` (``and_masks``) for the autoregressive version, and with a
    window of ``stride`` keys for the paper's two-head factorisation.

    Raises:
        ValueError: ``stride`` is not an int >= 1.
    """
    stride = min(check_positive_int("stride", stride), _FAR)

    def strided_mask(
        b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor
    ) -> Tensor:
        return (q_idx - kv_idx) % stride == 0

    return strided_mask


def block_local(block_size: int) -> MaskMod:
    """Block-diagonal attention: ``i`` attends ``j`` iff both share a block.

    Raises:
        ValueError: ``block_size`` is not an int >= 1.
    """
    block_size = min(check_positive_int("block_size", block_size), _FAR)

    def block_local_mask(
        b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor
    ) -> Tensor:
        return q_idx // block_size == kv_idx // block_size

    return block_local_mask


def global_tokens(tokens: int | Sequence[int] | Tensor) -> MaskMod:
    """Global tokens attend everything and are attended by everything.

    As in Longformer and BigBird.

    Args:
        tokens: an int ``n`` makes the first ``n`` positions global (a [CLS]
            token is ``1``); a sequence or 1-D tensor of positions makes those
            positions global (an empty one: none, as ``0``).

    Raises:
        ValueError: a negative count or position, or positions that are not
            a 1-D sequence of ints.

    Alone it is the "star" pattern; ``or_masks`` it with a window for
    Longformer.
    """
    if isinstance(tokens, numbers.Integral) and not isinstance(tokens, bool):
        count = min(check_non_negative_int("tokens", tokens), _FAR)

        def first_tokens_global(
            b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor
        ) -> Tensor:
            return (q_idx < count) | (kv_idx < count)

        return first_tokens_global

    # plain ints, compared one by one: element-wise code that compiled
    # FlexAttention can fuse on any device
    positions = _non_negative_ints("global token positions", tokens).tolist()

    def listed_tokens_global(
        b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor
    ) -> Tensor:
        q_global, kv_global = q_idx < 0, kv_idx < 0  # all False
        for position in positions:  # each on its own index: no L x S work
            q_global = q_global | (q_idx == position)
            kv_global = kv_global | (kv_idx == position)
        return q_global | kv_global

    return listed_tokens_global


def key_padding(lengths: Sequence[int] | Tensor) -> MaskMod:
    """Batch row ``b`` has ``lengths[b]`` real tokens; later keys are padding.

    Query ``i`` of row ``b`` attends key ``j`` iff ``j < lengths[b]``. The
    mask function only makes sense for a batch of ``len(lengths)`` rows: it
    carries that number as its ``batch`` attribute, and ``create_mask``
    needs ``batch=len(lengths)`` (it raises a ValueError otherwise).

    Raises:
        ValueError: ``lengths`` is empty or not a 1-D sequence of ints >= 0.

    Example:
        ``create_mask(key_padding([2, 5]), 3, 5, batch=2)`` has shape
        ``(2, 1, 3, 5)``; row 0 attends keys 0 and 1, row 1 all five.
    """
    lengths = _non_negative_ints("lengths", lengths)
    if not len(lengths):
        raise ValueError(
            "lengths must hold one length per batch row; got an empty "
            "sequence."
        )

    def key_padding_mask(
        b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor
    ) -> Tensor:
        return kv_idx < lengths.to(kv_idx.device)[b]

    key_padding_mask.batch = len(lengths)
    return key_padding_mask


def and_masks(*mask_mods: MaskMod) -> MaskMod:
    """A key is allowed iff all of ``mask_mods`` allow it (intersection)."""
    batch = _check_mask_mods(mask_mods, "and_masks")

    def all_of(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        result = mask_mods[0](b, h, q_idx, kv_idx)
        for mask_mod in mask_mods[1:]:
            result = result & mask_mod(b, h, q_idx, kv_idx)
        return result

    return _with_batch(all_of, batch)


def or_masks(*mask_mods: MaskMod) -> MaskMod:
    """A key is allowed iff at least one of ``mask_mods`` allows it (union)."""
    batch = _check_mask_mods(mask_mods, "or_masks")

    def any_of(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        result = mask_mods[0](b, h, q_idx, kv_idx)
        for mask_mod in mask_mods[1:]:
            result = result | mask_mod(b, h, q_idx, kv_idx)
        return result

    return _with_batch(any_of, batch)


def invert(mask_mod: MaskMod) -> MaskMod:
    """A key is allowed iff ``mask_mod`` forbids it (complement)."""
    batch = _check_mask_mods((mask_mod,), "invert")

    def inverted(
        b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor
    ) -> Tensor:
        return ~mask_mod(b, h, q_idx, kv_idx)

    return _with_batch(inverted, batch)


def create_mask(
    mask_mod: MaskMod,
    L: int,
    S: int,
    *,
    batch: int | None = None,
    heads: int | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Evaluate ``mask_mod`` on every (query, key) pair: True = may attend.

    Args:
        mask_mod: a mask function ``(b, h, q_idx, kv_idx) -> bool tensor``.
        L: number of queries. S: number of keys.
        batch, heads: when given, the mask gets that leading dimension; when
            None, the dimension is left out and ``mask_mod`` is evaluated with
            ``b = 0`` / ``h = 0``. A mask function built for a batch
            (``key_padding``) needs ``batch`` equal to its ``batch``
            attribute.
        device: where to build the mask (default: CPU).

    Returns:
        a bool tensor of shape ``(L, S)``, ``(batch, 1, L, S)``,
        ``(heads, L, S)`` or ``(batch, heads, L, S)``; it broadcasts against
        scores of shape ``(batch, heads, L, S)``.

    Raises:
        ValueError: ``L``, ``S``, ``batch`` or ``heads`` not positive ints, a
            ``batch`` other than the one ``mask_mod`` was built for, a device
            name torch does not know or this machine lacks (CUDA without a
            GPU), or a ``mask_mod`` that does not return
            a bool tensor of a broadcastable shape.

    Complexity: ``O(L * S)`` time and memory; it is for drawing and for the
    dense reference, not for the fast path of a sparse variant.
    """
    needed_batch = _check_mask_mods((mask_mod,), "create_mask")
    L = check_positive_int("L", L)
    S = check_positive_int("S", S)
    if heads is not None:
        heads = check_positive_int("heads", heads)
    if batch is not None:
        batch = check_positive_int("batch", batch)
    if needed_batch is not None and batch != needed_batch:
        raise ValueError(
            f"mask_mod was built for a batch of {needed_batch} rows (by "
            f"key_padding, one length per row) but create_mask got "
            f"batch={batch}; pass batch={needed_batch} (= len(lengths)) so "
            f"that each batch row gets its own mask."
        )
    if device is not None:
        device = check_device_here("device", device)
    b = torch.zeros((), dtype=torch.long, device=device)
    h = torch.zeros((), dtype=torch.long, device=device)
    shape = [L, S]
    if heads is not None:
        h = torch.arange(heads, device=device).view(-1, 1, 1)
        shape.insert(0, heads)
    if batch is not None:
        b = torch.arange(batch, device=device).view(-1, 1, 1, 1)
        shape = [batch, heads or 1, L, S]
    q_idx = torch.arange(L, device=device).view(L, 1)  # (L, 1)
    kv_idx = torch.arange(S, device=device).view(1, S)  # (1, S)
    mask = mask_mod(b, h, q_idx, kv_idx)
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(
            f"mask_mod must return a bool tensor (True = may attend); "
            f"got {got}. "
            f"Compare indices, e.g. `return kv_idx <= q_idx`."
        )
    try:
        return torch.broadcast_to(mask, shape).contiguous()
    except RuntimeError as error:
        raise ValueError(
            f"mask_mod returned shape {tuple(mask.shape)}, which does not "
            f"broadcast to {tuple(shape)}; use elementwise operations on its "
            f"four index arguments."
        ) from error


def _non_negative_ints(name: str, values: Sequence[int] | Tensor) -> Tensor:
    """``values`` as a 1-D integer tensor, or a ValueError naming ``name``.

    An empty sequence gives an empty integer tensor.
    """
    try:
        tensor = torch.as_tensor(values)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(
            f"{name} must be a 1-D sequence of ints (each below 2**63); "
            f"got {values!r}."
        ) from error
    if tensor.dim() == 1 and tensor.numel() == 0:
        return tensor.long()  # torch.as_tensor([]) is float32
    if (
        tensor.dim() != 1
        or tensor.is_floating_point()
        or tensor.is_complex()
        or tensor.dtype == torch.bool
    ):
        raise ValueError(
            f"{name} must be a 1-D sequence of ints; got {values!r}."
        )
    if (tensor < 0).any():
        raise ValueError(f"{name} must be >= 0; got {tensor.tolist()}.")
    return tensor


def _check_mask_mods(mask_mods: tuple, caller: str) -> int | None:
    """Check ``mask_mods`` and return the batch they were built for, if any.

    Raises:
        ValueError: no mask function, one that is not callable, or two built
            for different batches.
    """
    if not mask_mods:
        raise ValueError(f"{caller} needs at least one mask function.")
    for mask_mod in mask_mods:
        if not callable(mask_mod):
            raise ValueError(
                f"{caller} takes mask functions "
                f"(b, h, q_idx, kv_idx) -> bool tensor; "
                f"got {type(mask_mod).__name__}. "
                f"Did you pass a mask tensor instead?"
            )
    batches = {getattr(m, "batch", None) for m in mask_mods} - {None}
    if len(batches) > 1:
        raise ValueError(
            f"{caller} got mask functions built for different batches "
            f"{sorted(batches)} (key_padding lengths of different counts); "
            f"give every key_padding one length per row of the same batch."
        )
    return batches.pop() if batches else None


def _with_batch(mask_mod: MaskMod, batch: int | None) -> MaskMod:
    """``mask_mod``, marked as built for ``batch`` rows when not None."""
    if batch is not None:
        mask_mod.batch = batch
    return mask_mod


def example_patterns(
    *,
    window: int = 2,
    dilation: int = 2,
    stride: int = 4,
    block_size: int = 4,
    n_global: int = 1,
) -> dict[str, MaskMod]:
    """The patterns this book makes fast, by name, from the functions above.

    Args:
        window: keys on each side for the windowed patterns (``(window, 0)``
            when causal).
        dilation: gap of the dilated window. stride: period of the strided
            pattern.
        block_size: block of the block-local pattern. n_global: leading
            global tokens.

    Returns:
        ``{name: mask_mod}``: full, causal, sliding window, causal window,
        dilated window, strided (causal), block local, and window + global
        (Longformer).
    """
    return {
        "full": full,
        "causal": causal,
        "sliding window": sliding_window(window),
        "causal window": sliding_window((window, 0)),
        "dilated window": dilated_sliding_window(window, dilation),
        "strided, causal": and_masks(causal, strided(stride)),
        "block local": block_local(block_size),
        "window + global": or_masks(
            sliding_window(window), global_tokens(n_global)
        ),
    }


# -- block layouts ---------------------------------------------------------
#
# A block layout is a bool tensor ``(nq, nk)`` (or one per head, ``(H, nq,
# nk)``): True where query block ``a`` attends key block ``c``, for blocks of
# ``block_size`` positions (``nq = ceil(L / block_size)``). The builders
# below make the fixed patterns of Sparse Transformer, Longformer and BigBird
# at block granularity; ``from_block_layout`` turns a layout into a mask
# function (for ``create_mask`` and FlexAttention), and ``block_summary``
# goes the other way.


def n_blocks(length: int, block_size: int) -> int:
    """``ceil(length / block_size)``: blocks that cover ``length`` positions.

    Raises:
        ValueError: ``length`` below 0 or ``block_size`` below 1.
    """
    length = check_non_negative_int("length", length)
    block_size = check_positive_int("block_size", block_size)
    return -(-length // block_size)


def _block_grid(n_q: int, n_k: int | None) -> tuple[Tensor, Tensor]:
    """Block indices ``i (nq, 1)`` and ``j (1, nk)``."""
    n_q = check_positive_int("n_q", n_q)
    n_k = n_q if n_k is None else check_positive_int("n_k", n_k)
    return torch.arange(n_q).view(-1, 1), torch.arange(n_k).view(1, -1)


def strided_layout(
    n_q: int, n_k: int | None = None, *, stride: int, causal: bool = True
) -> Tensor:
    """Sparse Transformer's strided pattern, in blocks (arXiv 1904.10509).

    Block ``i`` attends the ``stride`` blocks before it (a local window)
    and every ``stride``-th block behind it: ``0 <= i - j < stride`` or
    ``(i - j) % stride == 0``, with ``j <= i`` when ``causal`` (else
    ``|i - j| < stride`` or ``(i - j) % stride == 0``). About ``2 /
    stride`` of the blocks for ``stride ~ sqrt(n)``: ``O(n sqrt n)``.

    Args:
        n_q, n_k: query and key blocks (``n_k`` defaults to ``n_q``).
        stride: the period, an int >= 1. causal: keep only ``j <= i``.

    Returns:
        bool ``(n_q, n_k)``.

    Raises:
        ValueError: a count or stride that is not a positive int, or a
            ``causal`` that is not a bool.
    """
    i, j = _block_grid(n_q, n_k)
    stride = check_positive_int("stride", stride)
    causal = check_bool("causal", causal)
    offset = i - j
    near = offset.abs() < stride
    layout = near | (offset % stride == 0)
    return layout & (offset >= 0) if causal else layout


def fixed_layout(
    n_q: int,
    n_k: int | None = None,
    *,
    stride: int,
    summary: int = 1,
    causal: bool = True,
) -> Tensor:
    """Sparse Transformer's fixed pattern, in blocks (arXiv 1904.10509).

    Block ``i`` attends the blocks of its own chunk of ``stride`` blocks
    (``i // stride == j // stride``) and the last ``summary`` blocks of
    every chunk (``j % stride >= stride - summary``), which carry what
    their chunk saw; ``j <= i`` when ``causal``.

    Raises:
        ValueError: a count or stride that is not a positive int,
            ``summary`` not in ``[0, stride]``, or a ``causal`` that is not
            a bool.
    """
    i, j = _block_grid(n_q, n_k)
    stride = check_positive_int("stride", stride)
    summary = check_non_negative_int("summary", summary)
    causal = check_bool("causal", causal)
    if summary > stride:
        raise ValueError(
            f"summary must be at most stride ({stride}); got {summary}."
        )
    layout = (i // stride == j // stride) | (j % stride >= stride - summary)
    return layout & (j <= i) if causal else layout


def longformer_layout(
    n_q: int, n_k: int | None = None, *, window: int, global_blocks: int
) -> Tensor:
    """Longformer's window and global tokens, in blocks (arXiv 2004.05150).

    Block ``i`` attends ``j`` when ``|i - j| <= window``, and the first
    ``global_blocks`` blocks attend, and are attended by, every block.

    Raises:
        ValueError: a count that is not a positive int, a window or
            global count below 0.
    """
    i, j = _block_grid(n_q, n_k)
    window = min(check_non_negative_int("window", window), _FAR)
    g = min(check_non_negative_int("global_blocks", global_blocks), _FAR)
    return ((i - j).abs() <= window) | (i < g) | (j < g)


def bigbird_layout(
    n_q: int,
    n_k: int | None = None,
    *,
    window: int = 1,
    global_blocks: int = 2,
    random_blocks: int = 3,
    generator: torch.Generator | None = None,
    heads: int | None = None,
) -> Tensor:
    """BigBird's window, global and random blocks (arXiv 2007.14062).

    ``longformer_layout(window, global_blocks)`` plus, in every row that is
    not global, ``random_blocks`` more key blocks drawn with ``generator``
    among those not yet kept (fewer when fewer are left). The paper's
    ITC setting is ``window=1`` (3 window blocks), 2 global blocks and 3
    random blocks.

    Args:
        n_q, n_k: query and key blocks. window: blocks on each side.
        global_blocks: leading global blocks. random_blocks: per row.
        generator: draws the random blocks; None means seed 0.
        heads: None for one layout, an int for one per head (each with its
            own random blocks).

    Returns:
        bool ``(n_q, n_k)``, or ``(heads, n_q, n_k)``.

    Raises:
        ValueError: counts that are not ints of the right sign, or a
            generator that is not a ``torch.Generator``.
    """
    layout = longformer_layout(
        n_q, n_k, window=window, global_blocks=global_blocks
    )
    random_blocks = check_non_negative_int("random_blocks", random_blocks)
    generator = _generator(generator)
    count = 1 if heads is None else check_positive_int("heads", heads)
    draws = torch.rand(count, *layout.shape, generator=generator)
    draws = draws.masked_fill(layout, -1.0)  # kept blocks are not drawn
    take = min(random_blocks, layout.shape[1])
    picked = torch.zeros_like(draws, dtype=torch.bool)
    if take:
        best, where = draws.topk(take, dim=-1)
        picked.scatter_(-1, where, best >= 0)
    result = layout | picked
    return result[0] if heads is None else result


def checkerboard_layout(
    n_q: int, n_k: int | None = None, *, square: int = 1
) -> Tensor:
    """Alternate squares of ``square x square`` blocks: half the blocks.

    Block ``(i, j)`` is kept when ``i // square + j // square`` is even.
    A pattern with no locality, to see what skipping costs when the kept
    blocks are scattered.

    Raises:
        ValueError: a count or square side that is not a positive int.
    """
    i, j = _block_grid(n_q, n_k)
    square = check_positive_int("square", square)
    return (i // square + j // square) % 2 == 0


def random_layout(
    n_q: int,
    n_k: int | None = None,
    *,
    density: float,
    generator: torch.Generator | None = None,
    heads: int | None = None,
) -> Tensor:
    """Every block row keeps ``ceil(density * n_k)`` random blocks (>= 1).

    Used to time block-sparse attention at a given density.

    Raises:
        ValueError: counts that are not positive ints, a density outside
            ``(0, 1]`` or a generator that is not one.
    """
    i, j = _block_grid(n_q, n_k)
    if (
        isinstance(density, bool)
        or not isinstance(density, numbers.Real)
        or not 0 < density <= 1
    ):
        raise ValueError(
            f"density must be a number in (0, 1]; got {density!r}."
        )
    generator = _generator(generator)
    count = 1 if heads is None else check_positive_int("heads", heads)
    nq, nk = i.shape[0], j.shape[1]
    keep = max(1, math.ceil(float(density) * nk))
    draws = torch.rand(count, nq, nk, generator=generator)
    where = draws.topk(keep, dim=-1).indices
    layout = torch.zeros(count, nq, nk, dtype=torch.bool).scatter(
        -1, where, True
    )
    return layout[0] if heads is None else layout


def _generator(generator: object) -> torch.Generator:
    if generator is None:
        return torch.Generator().manual_seed(0)
    if not isinstance(generator, torch.Generator):
        raise ValueError(
            f"generator must be a torch.Generator (or None for seed 0); got "
            f"{type(generator).__name__}."
        )
    return generator


def from_block_layout(layout: Tensor, block_size: int) -> MaskMod:
    """The mask function of a block layout: ``i`` attends ``j`` iff
    ``layout[..., i // block_size, j // block_size]``.

    Args:
        layout: bool ``(nq, nk)``, or ``(H, nq, nk)`` indexed by head.
        block_size: positions per block.

    Raises:
        ValueError: a layout that is not a 2-D or 3-D bool tensor, or a
            block size that is not a positive int; when evaluated, a
            position past the layout's blocks (the rule of
            ``block_sparse_attention``: a layout has ``ceil(L /
            block_size)`` block rows and ``ceil(S / block_size)`` block
            columns; nothing is clamped).

    Build the dense mask with ``create_mask(from_block_layout(layout, bs),
    L, S, heads=H)``, or hand it to FlexAttention's ``create_block_mask``
    (which evaluates it inside ``vmap``, where positions cannot be read:
    there a position past the layout takes its last block).
    """
    layout = check_block_layout(layout)
    block_size = min(check_positive_int("block_size", block_size), _FAR)
    nq, nk = layout.shape[-2:]

    def block_layout_mask(
        b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor
    ) -> Tensor:
        last_q, last_kv = _largest(q_idx), _largest(kv_idx)
        if last_q is not None and last_kv is not None:
            check_layout_fits(
                layout.shape, block_size, last_q + 1, last_kv + 1, exact=False
            )
        grid = layout.to(q_idx.device)
        rows = (q_idx // block_size).clamp(max=nq - 1)
        cols = (kv_idx // block_size).clamp(max=nk - 1)
        if grid.dim() == 2:
            return grid[rows, cols]
        return grid[h, rows, cols]

    return block_layout_mask


def _largest(index: Tensor) -> int | None:
    """The largest of ``index``, or None where it cannot be read (no
    element, inside ``vmap``, as FlexAttention evaluates masks, or while
    ``torch.compile`` traces, where reading it would break the graph)."""
    if torch.compiler.is_compiling():
        return None
    if not isinstance(index, Tensor):
        index = torch.as_tensor(index)
    if index.numel() == 0:
        return None
    try:
        return int(index.max())
    except RuntimeError:  # vmap: data-dependent Python values are refused
        return None


def block_summary(
    mask_mod: MaskMod,
    L: int,
    S: int,
    *,
    block_size: int,
    heads: int | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Which blocks ``mask_mod`` keeps at all, and which it keeps whole.

    Evaluated a chunk of query blocks at a time, so memory stays near
    ``2**24`` booleans whatever ``L`` and ``S``.

    Returns:
        ``(any_kept, all_kept)``, bool ``(nq, nk)`` or ``(heads, nq, nk)``.
        A block at the end that holds fewer than ``block_size`` queries or
        keys is "all kept" when every pair inside the sequences is.

    Raises:
        ValueError: as ``create_mask``, or a bad block size.
    """
    block_size = check_positive_int("block_size", block_size)
    L = check_positive_int("L", L)
    S = check_positive_int("S", S)
    nq, nk = -(-L // block_size), -(-S // block_size)
    H = 1 if heads is None else check_positive_int("heads", heads)
    chunk = max(1, 2**24 // (H * block_size * nk * block_size))
    any_rows, all_rows = [], []
    for first in range(0, nq, chunk):
        last = min(nq, first + chunk)
        lo, hi = first * block_size, min(L, last * block_size)
        mask = create_mask(
            _shifted_rows(mask_mod, lo), hi - lo, S, heads=heads, device=device
        )
        mask = mask if heads is not None else mask[None]  # (H, rows, S)
        pad = (
            0,
            nk * block_size - S,
            0,
            (last - first) * block_size - (hi - lo),
        )
        tiles = (H, last - first, block_size, nk, block_size)
        kept = torch.nn.functional.pad(mask, pad, value=False).view(tiles)
        whole = torch.nn.functional.pad(mask, pad, value=True).view(tiles)
        any_rows.append(kept.any(4).any(2))
        all_rows.append(whole.all(4).all(2))
    any_kept, all_kept = torch.cat(any_rows, 1), torch.cat(all_rows, 1)
    if heads is None:
        return any_kept[0], all_kept[0]
    return any_kept, all_kept


def _shifted_rows(mask_mod: MaskMod, offset: int) -> MaskMod:
    """``mask_mod`` with query indices counted from ``offset``."""

    def shifted(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return mask_mod(b, h, q_idx + offset, kv_idx)

    return shifted
