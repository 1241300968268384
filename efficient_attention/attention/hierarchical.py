"""Hierarchical attention: exact near the diagonal, coarser farther away.

Three schemes share one block structure. Level 0 splits the keys into
blocks of ``block_size``; level ``l`` pools them ``2**l`` at a time (the
mean key and mean value, with ``log(count)`` added to the score so that a
pooled key weighs as much as the keys it stands for, as in Combiner, Ren et
al. 2021, arXiv 2107.05768). Each query block attends its neighbour blocks
(itself and one on each side) exactly, the neighbour blocks of the next
level pooled, and so on; the coarsest level covers everything that is left.

- ``pyramid_attention``: every query, at full resolution, attends this
  multi-resolution set of keys: ``O(block_size * levels)`` keys a query,
  ``O(L log L)`` in all (the pyramid of Funnel-Transformer, Dai et al. 2020,
  arXiv 2006.03236, applied to keys and values only).
- ``recursive_attention``: the queries are pooled too, so level ``l`` costs
  ``1 / 2**l`` of level 0 and the whole is ``O(L)``; each coarse result is
  copied back to the queries it stands for. This is the H-matrix attention
  of H-Transformer-1D (Zhu and Soricut 2021, arXiv 2107.11906).
- ``coarse_to_fine_attention``: block summaries (mean queries and keys)
  are scored first, each query block picks its ``top_k`` best key blocks,
  and attends exactly inside them and its band of neighbour blocks (run by
  ``block_sparse_attention``); blocks not picked are skipped.

``hierarchical_levels`` returns which (query, key) pairs each scheme
computes exactly, through which pooled level, or skips, and
``keys_per_query`` what that costs a query on average; chapter
"Hierarchical attention" draws it and teaches all three.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .._validation import (
    check_block_choice,
    check_positive_int,
    check_qkv,
    check_scale,
    scores_not_finite,
)
from . import block_sparse
from .block_sparse import block_sparse_attention
from .online_softmax import block_softmax, merge_softmax

__all__ = [
    "SCHEMES",
    "coarse_to_fine_attention",
    "hierarchical_levels",
    "keys_per_query",
    "pyramid_attention",
    "recursive_attention",
]

SCHEMES = ("pyramid", "recursive", "coarse_to_fine")
SKIPPED = -1  # hierarchical_levels: the pair is not computed


# -- checks --------------------------------------------------------------


def max_levels(n: int, block_size: int) -> int:
    """The most levels that fit ``n`` tokens: the coarsest block (of
    ``block_size * 2**(levels - 1)`` tokens) must not exceed twice ``n``,
    else the level above would hold nothing new."""
    levels = 1
    while block_size * 2 ** (levels - 1) < n:
        levels += 1
    return levels


def default_levels(n: int, block_size: int) -> int:
    """Levels enough that the coarsest level holds at most ``4 *
    block_size`` pooled keys."""
    levels = 1
    while -(-n // 2 ** (levels - 1)) > 4 * block_size:
        levels += 1
    return min(levels, max_levels(n, block_size))


def _check_levels(
    levels: object, block_size: object, L: int, S: int
) -> tuple[int, int]:
    """``(levels, block_size)`` as ints that fit ``L`` queries and ``S``
    keys, or a ValueError naming the argument and the fix."""
    block_size = check_positive_int("block_size", block_size)
    n = max(L, S, 1)
    if levels is None:
        levels = default_levels(n, block_size) if block_size % 2 == 0 else 1
    levels = check_positive_int("levels", levels)
    most = max_levels(n, block_size)
    if levels > most:
        raise ValueError(
            f"levels={levels} does not fit max(L, S)={n} with "
            f"block_size={block_size}: level {levels - 1} would pool blocks "
            f"of {block_size * 2 ** (levels - 1)} tokens, twice the "
            f"sequence or more. Use levels <= {most} (or a smaller "
            f"block_size)."
        )
    if levels > 1 and block_size % 2:
        raise ValueError(
            f"block_size must be even when levels > 1 (a pooled key of "
            f"level l covers 2**l tokens and must not straddle the region "
            f"of level l - 1, whose edges fall on multiples of block_size "
            f"* 2**(l - 1)); got block_size={block_size}. Use "
            f"block_size={block_size + 1} or levels=1."
        )
    # one level is dense whatever the block: keep the integers small
    return levels, min(block_size, n) if levels == 1 else block_size


# -- the pieces ----------------------------------------------------------


def _pool(x: Tensor, factor: int) -> tuple[Tensor, Tensor]:
    """Means of ``factor`` consecutive rows, and how many rows each holds.

    ``x (..., N, F)`` -> ``(..., ceil(N / factor), F)`` and counts
    ``(ceil(N / factor),)`` (the last group may be short).
    """
    N = x.shape[-2]
    n = -(-N // factor)
    padded = F.pad(x, (0, 0, 0, n * factor - N))  # (..., n * factor, F)
    sums = padded.unflatten(-2, (n, factor)).sum(-2)  # (..., n, F)
    first = torch.arange(n, device=x.device) * factor
    counts = (N - first).clamp(max=factor)  # (n,)
    return sums / counts.to(x.dtype)[:, None], counts


def _pair_sums(x: Tensor) -> Tensor:
    """Sums of rows ``2p`` and ``2p + 1``: ``(..., N, F) -> (..., ceil(N /
    2), F)`` (an odd last row stands alone). Applied ``l`` times, it gives
    the sums of ``2**l`` rows: each level is pooled from the one below, at
    half its cost."""
    if x.shape[-2] % 2:
        x = F.pad(x, (0, 0, 0, 1))  # (..., N + 1, F)
    return x.unflatten(-2, (-1, 2)).sum(-2)  # (..., ceil(N / 2), F)


def _windows(x: Tensor, n_groups: int, block: int) -> Tensor:
    """Group ``g``'s window: rows ``(g - 1) * block`` to ``(g + 2) * block
    - 1`` of ``x (..., N, F)`` (zero rows past either end).

    Returns ``(..., n_groups, 3 * block, F)``.
    """
    N = x.shape[-2]
    total = (n_groups + 2) * block  # rows from -block on
    padded = F.pad(x, (0, 0, block, max(0, total - block - N)))
    padded = padded[..., :total, :]  # (..., total, F)
    # (..., n_groups, F, 3 * block) -> (..., n_groups, 3 * block, F)
    return padded.unfold(-2, 3 * block, block).transpose(-2, -1)


def _partial_softmax(
    q: Tensor, k: Tensor, v: Tensor, bias: Tensor, allowed: Tensor
) -> tuple[Tensor, Tensor]:
    """Softmax attention of query groups over their own window of keys.

    ``q (..., n, G, E)`` (already scaled), ``k (..., n, W, E)``, ``v (...,
    n, W, Ev)``, ``bias (n, W)`` added to the scores, ``allowed (n, G, W)``
    bool. Returns the normalised output ``(..., n, G, Ev)`` and the
    log-sum-exp of each row's allowed scores ``(..., n, G)`` (-inf where
    none is allowed), which ``merge_softmax`` needs.
    """
    scores = q @ k.transpose(-2, -1) + bias[:, None, :]  # (..., n, G, W)
    scores = scores.masked_fill(~allowed, float("-inf"))
    return block_softmax(scores, v)


def _level_mask(
    level: int,
    block: int,
    n_queries: int,
    factor_q: int,
    n_groups: int,
    group: int,
    n_keys: int,
    window: bool,
) -> tuple[Tensor, Tensor]:
    """Which keys of its window each query of level ``level`` attends.

    Queries are grouped ``group`` to a window; query ``c`` stands for
    tokens from ``c * factor_q`` on. Keys are pooled ``2**level`` tokens
    each; with ``window`` the keys of group ``g`` start at ``(g - 1) *
    block``, else every group sees all ``n_keys``. A key is allowed when it
    exists and lies outside the region of the level below (the neighbour
    blocks of ``block * 2**(level - 1)`` tokens around the query's block).

    Returns ``allowed (n_groups, group, W)`` and the key index ``(n_groups,
    W)`` of each window slot.
    """
    g = torch.arange(n_groups)[:, None]  # (n_groups, 1)
    if window:
        key = (g - 1) * block + torch.arange(3 * block)  # (n_groups, W)
    else:
        key = torch.arange(n_keys).expand(n_groups, n_keys)
    query = g * group + torch.arange(group)  # (n_groups, group)
    allowed = ((key >= 0) & (key < n_keys))[:, None, :]
    allowed = allowed & (query < n_queries)[:, :, None]
    if level > 0:
        # the region of level - 1, in keys of this level (block / 2 each)
        below = (query * factor_q) // (block * 2 ** (level - 1))
        half = block // 2
        start, stop = (below - 1) * half, (below + 2) * half
        inside = (key[:, None, :] >= start[..., None]) & (
            key[:, None, :] < stop[..., None]
        )
        allowed = allowed & ~inside  # (n_groups, group, W)
    return allowed, key


def _level_torch(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    counts: Tensor,
    level: int,
    last: bool,
    block: int,
    factor_q: int,
) -> tuple[Tensor, Tensor]:
    """One level in PyTorch: ``q (..., n_queries, E)`` (scaled; query
    ``c`` stands for tokens from ``c * factor_q``), pooled ``k``, ``v``
    with ``counts`` tokens each. Returns ``out (..., n_queries, Ev)`` and
    ``lse (..., n_queries)``.

    Queries are taken in groups that share a window of ``3 * block``
    pooled keys (one group of all, seeing every key, at the last level),
    so only ``O(n_queries * block)`` scores exist at once.
    """
    n_queries, n_keys = q.shape[-2], k.shape[-2]
    group = n_queries if last else block * (2**level // factor_q)
    n_groups = -(-n_queries // group)
    allowed, key_index = _level_mask(
        level,
        block,
        n_queries,
        factor_q,
        n_groups,
        group,
        n_keys,
        window=not last,
    )
    bias = counts.to(q.dtype).log()[key_index.clamp(0, n_keys - 1)]
    q_groups = F.pad(q, (0, 0, 0, n_groups * group - n_queries))
    q_groups = q_groups.unflatten(-2, (n_groups, group))  # (..., n, G, E)
    if last:  # one group: every key
        k_win, v_win = k[..., None, :, :], v[..., None, :, :]
    else:
        k_win = _windows(k, n_groups, block)  # (..., n, 3 * block, E)
        v_win = _windows(v, n_groups, block)  # (..., n, 3 * block, Ev)
    out, lse = _partial_softmax(
        q_groups, k_win, v_win, bias.to(q.device), allowed.to(q.device)
    )
    # (..., n, G, Ev) -> (..., n_queries, Ev); (..., n, G) likewise
    out = out.flatten(-3, -2)[..., :n_queries, :]
    return out, lse.flatten(-2, -1)[..., :n_queries]


def _level_layout(
    level: int,
    last: bool,
    block: int,
    kernel_block: int,
    n_queries: int,
    factor_q: int,
    n_keys: int,
) -> Tensor:
    """The block layout ``(nq, nk)`` of one level, in blocks of
    ``kernel_block = block / 2`` queries and pooled keys (``block`` when
    there is one level): the same keys as ``_level_mask``, whose edges all
    fall on multiples of ``block / 2`` pooled keys."""
    nq, nk = -(-n_queries // kernel_block), -(-n_keys // kernel_block)
    row = torch.arange(nq)[:, None]  # (nq, 1)
    col = torch.arange(nk)[None, :]  # (1, nk)
    token = row * kernel_block * factor_q  # first token of query block
    layout = torch.ones(nq, nk, dtype=torch.bool)
    if not last:  # the 3 neighbour blocks: 6 kernel blocks
        own = token // (block * 2**level)
        layout = (col >= 2 * (own - 1)) & (col < 2 * (own + 2))
    if level > 0:  # minus the region of the level below: 3 kernel blocks
        below = token // (block * 2 ** (level - 1))
        layout = layout & ~((col >= below - 1) & (col < below + 2))
    return layout


def _level_kernel(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    counts: Tensor,
    level: int,
    last: bool,
    block: int,
    factor_q: int,
    levels: int,
    scale: float,
) -> tuple[Tensor, Tensor]:
    """One level on the block-sparse C++ kernel (as ``_level_torch``, but
    ``q`` is not scaled yet).

    Above level 0 the ``log(count)`` bias rides along as one more feature:
    ``q`` then comes from ``_with_ones`` (scaled, with a column of ones),
    and ``[scale * q, 1] . [k, log(count)] = scale * q . k + log(count)``.
    """
    kernel_block = block // 2 if levels > 1 else block
    n_queries, n_keys = q.shape[-2], k.shape[-2]
    layout = _level_layout(
        level, last, block, kernel_block, n_queries, factor_q, n_keys
    )
    pattern = block_sparse.layout_pattern(
        layout[None], kernel_block, n_queries, n_keys
    )
    if level == 0:
        return block_sparse.block_sparse_kernel_lse(q, k, v, pattern, scale)
    bias = counts.to(k.dtype).log().expand(*k.shape[:-1])  # (..., n_keys)
    k = torch.cat([k, bias[..., None]], dim=-1)  # (..., n_keys, E + 1)
    return block_sparse.block_sparse_kernel_lse(q, k, v, pattern, 1.0)


def _with_ones(q: Tensor, scale: float) -> Tensor:
    """``(..., n, E) -> (..., n, E + 1)``: ``scale * q`` and a last column
    of ones."""
    return torch.cat([q * scale, torch.ones_like(q[..., :1])], dim=-1)


def use_kernel(backend: str, *tensors: Tensor) -> bool:
    """The block-sparse kernel where ``block_sparse_attention`` would use
    it (CPU, not float64, no gradient, a compiler here)."""
    return block_sparse.use_kernel(backend, *tensors)


def _multilevel(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    levels: int,
    block: int,
    scale: float,
    pool_queries: bool,
    backend: str,
) -> Tensor:
    """Pyramid (``pool_queries=False``) or recursive attention: each level
    is one softmax over its own keys, and ``merge_softmax`` joins them."""
    L = query.shape[-2]
    half = query.dtype in (torch.float16, torch.bfloat16)
    q, k, v = (t.float() if half else t for t in (query, key, value))
    kernel = use_kernel(backend, q, k, v)
    if not kernel:
        q = q * scale  # the kernel scales as it goes
    q_sums, k_sums, v_sums = q, k, v  # sums of 2**level rows
    q_counts = torch.ones(L, dtype=q.dtype, device=q.device)
    k_counts = torch.ones(key.shape[-2], dtype=q.dtype, device=q.device)
    q_ones = _with_ones(q, scale) if kernel and levels > 1 else None
    results = []  # (out, lse) of each level, at its own query resolution
    for level in range(levels):
        if level:  # pool this level from the one below
            k_sums, v_sums = _pair_sums(k_sums), _pair_sums(v_sums)
            k_counts = _pair_sums(k_counts[:, None])[:, 0]
            if pool_queries:
                q_sums = _pair_sums(q_sums)
                q_counts = _pair_sums(q_counts[:, None])[:, 0]
        q_l = q_sums / q_counts[:, None] if pool_queries and level else q
        k_l = k_sums / k_counts[:, None] if level else k  # means
        v_l = v_sums / k_counts[:, None] if level else v
        factor_q = 2**level if pool_queries else 1
        last = level == levels - 1
        if not kernel:
            args = (q_l, k_l, v_l, k_counts, level, last, block, factor_q)
            results.append(_level_torch(*args))
            continue
        if level:  # the bias column's partner
            q_l = _with_ones(q_l, scale) if pool_queries else q_ones
        args = (q_l, k_l, v_l, k_counts, level, last, block, factor_q)
        results.append(_level_kernel(*args, levels, scale))
    worst = torch.stack([lse.max() for _, lse in results])  # NaN stays
    if not bool((worst < float("inf")).all()):  # scores hold inf or NaN
        raise scores_not_finite(scale, q.dtype)
    # Merge from the coarsest level down; a coarse result is first copied
    # to the two queries of the level below that it stands for.
    out, lse = results[-1]
    for out_l, lse_l in reversed(results[:-1]):
        n = out_l.shape[-2]
        if pool_queries:
            out = out.repeat_interleave(2, dim=-2)[..., :n, :]
            lse = lse.repeat_interleave(2, dim=-1)[..., :n]
        out, lse = merge_softmax(out_l, lse_l, out, lse)
    return out.to(query.dtype)


def _empty(query: Tensor, key: Tensor, value: Tensor) -> Tensor | None:
    """Zeros (in the autograd graph) when there is nothing to compute."""
    if query.numel() and key.numel() and value.numel():
        return None
    zeros = value.new_zeros(*query.shape[:-1], value.shape[-1])
    return zeros + 0 * (query.sum() + key.sum() + value.sum())


# -- the three schemes ---------------------------------------------------


def pyramid_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    block_size: int = 64,
    levels: int | None = None,
    scale: float | None = None,
    backend: str = "auto",
) -> Tensor:
    """Each query attends nearby keys exactly and farther ones pooled.

    Query block ``i`` (tokens ``i * block_size`` on) attends key blocks
    ``i - 1, i, i + 1`` exactly. At level ``l >= 1`` the keys and values
    are pooled ``2**l`` at a time (means; the score gets ``+ log(count)``),
    and the query attends the pooled keys of its three neighbour blocks of
    ``block_size * 2**l`` tokens that the level below did not cover. The
    coarsest level (``levels - 1``) covers every key left. Every key is
    counted once, at one level.

    Args:
        query: ``(..., L, E)``. key: ``(..., S, E)``. value: ``(..., S, Ev)``.
        block_size: tokens per block at level 0, an int >= 1 (even when
            ``levels > 1``).
        levels: resolutions, an int from 1 (dense attention) to
            ``max_levels(max(L, S), block_size)``; None: enough levels for
            the coarsest to hold at most ``4 * block_size`` pooled keys.
        scale: multiplies ``Q K^T``; None means ``1 / sqrt(E)``.
        backend: ``"kernel"`` each level on the block-sparse C++ kernel,
            ``"torch"`` the PyTorch version, ``"auto"`` the kernel where it
            applies (CPU, not float64, no gradient needed, a compiler
            here), else PyTorch.

    Returns:
        ``(..., L, Ev)`` in the query's dtype.

    Raises:
        ValueError: shapes, dtypes or devices that do not fit; a block size
            or level count that is not a positive int, an odd block size
            with ``levels > 1``, more levels than fit; an unknown backend;
            scores that overflow.
        NotImplementedError: ``backend="kernel"`` where it cannot run (a
            gradient, a GPU tensor or float64).

    Shape:
        ``...`` any leading dimensions (batch ``B``, heads ``H``), ``L``
        queries, ``S`` keys, ``E`` query/key features, ``Ev`` value
        features.

    Complexity:
        time ``O(L * block_size * levels * (E + Ev))`` plus the coarsest
        level's ``L * S / 2**(levels - 1)``; memory ``O(L * block_size)``
        scores a level (each level scores a window of ``3 * block_size``
        keys, about half of them masked).

    Equivalent to:
        ``dense_attention(query, key, value)`` when ``levels=1``; else
        dense attention over the keys ``hierarchical_levels`` marks, each
        pooled key once, with the ``log(count)`` bias.
    """
    check_qkv(query, key, value)
    scale = check_scale(scale)
    L, S = query.shape[-2], key.shape[-2]
    levels, block_size = _check_levels(levels, block_size, L, S)
    block_sparse.check_backend(backend)
    empty = _empty(query, key, value)
    if empty is not None:
        return empty
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    return _multilevel(
        query, key, value, levels, block_size, scale, False, backend
    )


def recursive_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    block_size: int = 64,
    levels: int | None = None,
    scale: float | None = None,
    backend: str = "auto",
) -> Tensor:
    """H-Transformer-1D-like attention: queries and keys pooled per level.

    The blocks are those of ``pyramid_attention``, but at level ``l >= 1``
    the queries are pooled ``2**l`` at a time as well: one coarse query
    scores the pooled keys for the ``2**l`` queries it stands for, and its
    result is copied back to them (piecewise-constant interpolation, as
    H-Transformer-1D). Level ``l`` then costs ``1 / 2**l`` of level 0, and
    the whole ``O(L * block_size)``.

    Args:
        query: ``(..., L, E)``. key: ``(..., S, E)``. value: ``(..., S, Ev)``.
        block_size, levels, scale, backend: as ``pyramid_attention``.

    Returns:
        ``(..., L, Ev)`` in the query's dtype.

    Raises:
        ValueError: as ``pyramid_attention``.

    Shape:
        as ``pyramid_attention``.

    Complexity:
        time ``O(L * block_size * (E + Ev))`` (level ``l`` costs ``2**-l``
        of level 0) plus the coarsest level's ``L * S / 4**(levels - 1)``;
        memory ``O(L * block_size)``.

    Equivalent to:
        ``dense_attention(query, key, value)`` when ``levels=1``; else, at
        level ``l``, query ``i`` scores with the mean of the queries of its
        group of ``2**l``.
    """
    check_qkv(query, key, value)
    scale = check_scale(scale)
    L, S = query.shape[-2], key.shape[-2]
    levels, block_size = _check_levels(levels, block_size, L, S)
    block_sparse.check_backend(backend)
    empty = _empty(query, key, value)
    if empty is not None:
        return empty
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    return _multilevel(
        query, key, value, levels, block_size, scale, True, backend
    )


def block_choice(
    query: Tensor,
    key: Tensor,
    *,
    block_size: int,
    top_k: int,
    band: int = 1,
) -> Tensor:
    """The key blocks each query block of ``coarse_to_fine_attention``
    computes: its ``band`` neighbours on each side, and the ``top_k`` key
    blocks whose mean key best matches its mean query.

    Returns:
        bool ``(..., nq, nk)`` with ``nq = ceil(L / block_size)`` and ``nk
        = ceil(S / block_size)``.

    Complexity: ``O(nq * nk * E)``: the block summaries, scored densely.
    """
    q_mean, _ = _pool(query.detach(), block_size)  # (..., nq, E)
    k_mean, _ = _pool(key.detach(), block_size)  # (..., nk, E)
    nq, nk = q_mean.shape[-2], k_mean.shape[-2]
    rows = torch.arange(nq, device=query.device)[:, None]
    cols = torch.arange(nk, device=query.device)[None, :]
    in_band = (rows - cols).abs() <= band  # (nq, nk)
    summary = q_mean.float() @ k_mean.float().transpose(
        -2, -1
    )  # (..., nq, nk)
    summary = summary.masked_fill(in_band, float("-inf"))  # band: kept anyway
    picked = summary.topk(top_k, dim=-1).indices  # (..., nq, top_k)
    chosen = torch.zeros_like(summary, dtype=torch.bool)
    chosen = chosen.scatter(-1, picked, True)  # (..., nq, nk)
    return chosen | in_band


def coarse_to_fine_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    block_size: int = 64,
    top_k: int = 4,
    band: int = 1,
    scale: float | None = None,
    backend: str = "auto",
) -> Tensor:
    """Score block summaries, pick the best blocks, attend exactly inside.

    Each query block (``block_size`` queries) and key block is summarised
    by its mean; the summaries are scored against each other (a small
    ``nq x nk`` matrix), each query block keeps its ``top_k`` best key
    blocks besides its ``band`` neighbour blocks on each side, and attends
    exactly every key of the kept blocks. The others are skipped. The
    choice is not differentiable (as routing attention's clusters); the
    attention inside the kept blocks is.

    Args:
        query: ``(..., L, E)``. key: ``(..., S, E)``. value: ``(..., S, Ev)``.
        block_size: queries and keys per block, an int >= 1.
        top_k: key blocks picked beyond the band, an int in ``[0, nk]``
            with ``nk = ceil(S / block_size)`` (``nk``: dense attention).
        band: neighbour blocks kept on each side, an int >= 0.
        scale: multiplies ``Q K^T``; None means ``1 / sqrt(E)``.
        backend: as ``block_sparse_attention`` (``"auto"``: the C++ kernel
            where it applies).

    Returns:
        ``(..., L, Ev)`` in the query's dtype.

    Raises:
        ValueError: shapes, dtypes or devices that do not fit; a block
            size, ``top_k`` or band out of range; scores that overflow.

    Shape:
        ``...`` any leading dimensions (batch ``B``, heads ``H``), ``L``
        queries, ``S`` keys, ``E`` query/key features, ``Ev`` value
        features, ``nq``/``nk`` query/key blocks.

    Complexity:
        time ``O(nq * nk * E)`` for the summaries plus ``O(L * (top_k + 2
        * band + 1) * block_size * (E + Ev))``; memory ``O(nq * nk)`` plus
        that of ``block_sparse_attention``.

    Equivalent to:
        ``dense_attention(query, key, value)`` when ``top_k = nk``; else
        ``block_sparse_attention(query, key, value, layout=block_choice(
        ...), block_size=block_size)`` with one layout per batch-head.
    """
    check_qkv(query, key, value)
    scale = check_scale(scale)
    L, S = query.shape[-2], key.shape[-2]
    block_size, top_k, band = check_block_choice(
        block_size, top_k, band, L, S
    )
    block_sparse.check_backend(backend)
    empty = _empty(query, key, value)
    if empty is not None:
        return empty
    *lead, _, E = query.shape
    N = math.prod(lead)
    chosen = block_choice(
        query, key, block_size=block_size, top_k=top_k, band=band
    )  # (..., nq, nk)
    # one layout per batch-head: (1, N, L, E) with an (N, nq, nk) layout
    q, k, v = (t.reshape(1, N, *t.shape[-2:]) for t in (query, key, value))
    out = block_sparse_attention(
        q,
        k,
        v,
        layout=chosen.reshape(N, *chosen.shape[-2:]),
        block_size=block_size,
        scale=scale,
        backend=backend,
    )  # (1, N, L, Ev)
    return out.reshape(*lead, L, value.shape[-1])


# -- the picture ---------------------------------------------------------


def hierarchical_levels(
    scheme: str,
    L: int,
    S: int | None = None,
    *,
    block_size: int = 64,
    levels: int | None = None,
    top_k: int = 4,
    band: int = 1,
    query: Tensor | None = None,
    key: Tensor | None = None,
) -> Tensor:
    """How each (query, key) pair is computed: exactly, pooled, or skipped.

    Args:
        scheme: ``"pyramid"``, ``"recursive"`` or ``"coarse_to_fine"``.
        L, S: queries and keys (``S=None``: ``L``).
        block_size, levels: as ``pyramid_attention``.
        top_k, band: as ``coarse_to_fine_attention``, which also needs
            ``query (L, E)`` and ``key (S, E)`` of one head to pick blocks.

    Returns:
        int64 ``(L, S)``: 0 where the pair is exact, ``l >= 1`` where key
        ``j`` reaches query ``i`` through level ``l`` (pooled ``2**l``
        to one; in ``"recursive"`` the query is pooled too), -1 where it
        is skipped.

    Raises:
        ValueError: an unknown scheme, sizes or settings that do not fit,
            or ``coarse_to_fine`` without ``query`` and ``key``.

    Complexity: ``O(L * S)`` time and memory (it is a picture; keep ``L``
    small).
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}; got {scheme!r}.")
    L = check_positive_int("L", L)
    S = L if S is None else check_positive_int("S", S)
    if scheme == "coarse_to_fine":
        if query is None or key is None:
            raise ValueError(
                "scheme='coarse_to_fine' picks blocks from the queries and "
                "keys: pass query=(L, E) and key=(S, E) of one head."
            )
        check_qkv(query, key, key)
        if query.shape[-2] != L or key.shape[-2] != S:
            raise ValueError(
                f"query and key must hold L={L} and S={S} rows; got shapes "
                f"{tuple(query.shape)} and {tuple(key.shape)}."
            )
        block_size, top_k, band = check_block_choice(
            block_size, top_k, band, L, S
        )
        chosen = block_choice(
            query, key, block_size=block_size, top_k=top_k, band=band
        )
        i = torch.arange(L) // block_size
        j = torch.arange(S) // block_size
        exact = chosen.reshape(-1, *chosen.shape[-2:])[0][i][:, j]
        return torch.where(exact, 0, SKIPPED)
    levels, block_size = _check_levels(levels, block_size, L, S)
    blocks = _block_levels(-(-L // block_size), -(-S // block_size), levels)
    i = torch.arange(L) // block_size
    j = torch.arange(S) // block_size
    return blocks[i][:, j]


def _block_levels(n_query_blocks: int, n_key_blocks: int, levels: int):
    """int64 ``(n_query_blocks, n_key_blocks)``: the level through which
    each key block reaches each query block in the pyramid."""
    i = torch.arange(n_query_blocks)[:, None]
    j = torch.arange(n_key_blocks)[None, :]
    result = torch.full((n_query_blocks, n_key_blocks), levels - 1)
    # Finer levels overwrite coarser ones where their region reaches.
    for level in reversed(range(levels - 1)):
        near = ((i >> level) - (j >> level)).abs() <= 1
        result = torch.where(near, level, result)
    return result


def keys_per_query(
    scheme: str, L: int, *, block_size: int = 64, levels: int | None = None
) -> float:
    """The keys (exact or pooled) a query attends on average: the cost.

    A pooled key of level ``l`` counts once, for the ``2**l`` keys it stands
    for; in ``"recursive"`` a pooled query also shares its keys with the
    ``2**l`` queries it stands for. ``L / keys_per_query(...)`` is then the
    scheme's FLOP limit against dense attention over ``L`` keys. Computed on
    blocks: ``O((L / block_size) ** 2)``, so long ``L`` is cheap.

    Args:
        scheme: ``"pyramid"`` or ``"recursive"`` (coarse-to-fine's cost
            depends on its inputs: count ``hierarchical_levels`` instead).
        L: queries and keys; ``block_size``, ``levels``: as
            ``pyramid_attention``.

    Raises:
        ValueError: another scheme, or sizes or settings that do not fit.
    """
    if scheme not in ("pyramid", "recursive"):
        raise ValueError(
            f"keys_per_query counts 'pyramid' or 'recursive'; got "
            f"{scheme!r} (coarse-to-fine's blocks depend on the inputs: "
            f"count hierarchical_levels(...) == 0 per query instead)."
        )
    L = check_positive_int("L", L)
    levels, block_size = _check_levels(levels, block_size, L, L)
    n = -(-L // block_size)
    tokens = torch.full((n,), float(block_size), dtype=torch.float64)
    tokens[-1] = L - block_size * (n - 1)  # the last block may be short
    share = 0.25 if scheme == "recursive" else 0.5
    weight = share ** _block_levels(n, n, levels).double()  # (n, n)
    per_query_block = weight @ tokens  # (n,)
    return float(per_query_block @ tokens / L)
