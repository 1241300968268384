"""Sparse attention: compute only the (query, key) pairs a pattern keeps.

Fixed patterns come as block layouts (``masks.py`` builds those of Sparse
Transformer, Child et al. 2019, arXiv 1904.10509; Longformer, Beltagy et al.
2020, arXiv 2004.05150; BigBird, Zaheer et al. 2020, arXiv 2007.14062) and
run in ``block_sparse_attention``, which gathers the kept blocks and never
builds an ``L x S`` matrix. ``sparse_attention`` runs any mask function
exactly: a block is kept when any pair in it is, and the blocks a mask
keeps only in part carry an element mask (as FlexAttention's block mask,
arXiv 2412.05496). The learned, content-based pattern is routing attention
(Roy et al. 2020, arXiv 2003.05997): spherical k-means clusters of queries
and keys, each query attending the keys of its own cluster, run as a block
layout after sorting by cluster. ``top_k_attention`` keeps the largest
scores of every row: exact but as slow as dense (it computes every score).
Sparse matrix products for attention come three ways: block-based (ours),
index-based (``torch.sparse`` CSR products and SDDMM with
``torch.sparse.sampled_addmm``) and 2:4 semi-structured
(``to_sparse_semi_structured``, NVIDIA GPUs only). Chapter "Sparse
attention" teaches all of them.

Two implementations compute block-sparse attention: ``_block_sparse_torch``,
a readable PyTorch version (autograd, any device and dtype) that gathers
the kept tiles and merges each row's softmax with scatter operations, and a
C++ kernel for CPUs (``csrc/block_sparse.cpp``, built on first use by
``cpu_kernels``) with an online softmax over the kept key blocks.
"""

from __future__ import annotations

import ctypes
import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import cpu_kernels, masks
from .._validation import (
    check_block_layout,
    check_finite_scores,
    check_layout_fits,
    check_non_negative_int,
    check_positive_int,
    check_qkv,
    check_scale,
    check_tensor,
    scores_not_finite,
)
from . import flex

BACKENDS = ("auto", "kernel", "torch")
# block_sparse_attention and sparse_attention also run FlexAttention
FLEX_BACKENDS = ("auto", "kernel", "flex", "torch")

__all__ = [
    "BlockPattern",
    "block_pattern",
    "block_sparse_attention",
    "block_sparse_matmul",
    "csr_attention",
    "kmeans_clusters",
    "prune_2_4",
    "routing_attention",
    "semi_structured_matmul",
    "sparse_attention",
    "top_k_attention",
]


# -- block patterns ------------------------------------------------------


@dataclass(frozen=True)
class BlockPattern:
    """A block layout in CSR form, with element masks for partial blocks.

    Built by ``block_pattern`` (from a mask function) or inside
    ``block_sparse_attention`` (from a layout); hand it to
    ``sparse_attention`` to reuse it across calls.

    Attributes:
        layout: ``(Hl, nq, nk)`` bool, True = the block is computed.
        block_size: queries and keys per block.
        L, S: the numbers of queries and keys it was built for.
        row_ptr: ``(Hl * nq + 1,)`` int64: kept blocks of layout row ``r``
            (head-major) are ``cols[row_ptr[r]:row_ptr[r + 1]]``.
        cols: ``(nnz,)`` int64 key block of each kept block.
        rows: ``(nnz,)`` int64 layout row (``h * nq + query block``).
        mask_index: ``(nnz,)`` int64: -1 for a fully kept block, else the
            index of its element mask in ``element_masks``.
        element_masks: ``(P, block_size, block_size)`` bool ``[query,
            key]`` for the ``P`` partly kept blocks.
    """

    layout: Tensor
    block_size: int
    L: int
    S: int
    row_ptr: Tensor
    cols: Tensor
    rows: Tensor
    mask_index: Tensor
    element_masks: Tensor

    @property
    def heads(self) -> int:
        return self.layout.shape[0]

    @property
    def density(self) -> float:
        """The share of blocks computed (1.0: dense)."""
        return float(self.layout.float().mean()) if self.layout.numel() else 0

    def kernel_masks(self) -> Tensor:
        """Element masks as the C++ kernel reads them: ``(P, key, query)``
        uint8, cached."""
        cached = self.__dict__.get("_kernel_masks")
        if cached is None:
            cached = self.element_masks.transpose(1, 2).to(torch.uint8)
            cached = cached.contiguous()
            object.__setattr__(self, "_kernel_masks", cached)
        return cached


def _pattern(
    layout: Tensor,
    block_size: int,
    L: int,
    S: int,
    partial: Tensor | None = None,
    element_masks: Tensor | None = None,
) -> BlockPattern:
    """The CSR form of ``layout`` ``(Hl, nq, nk)``; ``partial`` (same
    shape) marks the kept blocks whose element masks ``element_masks``
    holds, in the row-major order of ``partial.nonzero()``."""
    layout = layout.contiguous()
    Hl, nq, nk = layout.shape
    kept = layout.flatten(0, 1).nonzero()  # (nnz, 2): row, key block
    rows, cols = kept[:, 0].contiguous(), kept[:, 1].contiguous()
    counts = layout.sum(-1).flatten()  # (Hl * nq,)
    row_ptr = torch.zeros(Hl * nq + 1, dtype=torch.int64, device=layout.device)
    row_ptr[1:] = counts.cumsum(0)
    mask_index = torch.full_like(rows, -1)
    if partial is None or element_masks is None:
        element_masks = torch.zeros(
            0, block_size, block_size, dtype=torch.bool, device=layout.device
        )
    else:
        is_partial = partial.flatten(0, 1)[rows, cols]  # (nnz,)
        mask_index[is_partial] = torch.arange(
            int(is_partial.sum()), device=layout.device
        )
    return BlockPattern(
        layout,
        block_size,
        L,
        S,
        row_ptr,
        cols,
        rows,
        mask_index,
        element_masks,
    )


def block_pattern(
    mask_mod: masks.MaskMod,
    L: int,
    S: int,
    *,
    block_size: int = 64,
    heads: int | None = None,
    device: torch.device | str | None = None,
) -> BlockPattern:
    """The block pattern that computes ``mask_mod`` exactly.

    A block is kept when ``mask_mod`` keeps any pair in it; the blocks it
    keeps only in part get an element mask. Built once, it serves every
    call of ``sparse_attention`` at these sizes.

    Args:
        mask_mod: a mask function (``masks``); one built for a batch
            (``key_padding``) is not supported.
        L, S: numbers of queries and keys. block_size: block side.
        heads: None: ``mask_mod`` is evaluated for head 0 and shared by
            every head; an int: one layout per head (``per_head`` masks).
        device: where to build it (default: CPU).

    Raises:
        ValueError: sizes or block size that are not positive ints, or a
            bad ``mask_mod`` (see ``masks.create_mask``).
        NotImplementedError: a mask function that depends on the batch.

    Complexity: ``O(L * S)`` evaluations of ``mask_mod`` (in chunks of
    query blocks, memory ``O(block_size * S)`` a chunk), as FlexAttention's
    ``create_block_mask``.
    """
    _check_not_batched(mask_mod)
    L, S = check_positive_int("L", L), check_positive_int("S", S)
    block_size = _cap(check_positive_int("block_size", block_size), L, S)
    any_kept, all_kept = masks.block_summary(
        mask_mod, L, S, block_size=block_size, heads=heads, device=device
    )
    layout = any_kept if any_kept.dim() == 3 else any_kept[None]
    full = all_kept if all_kept.dim() == 3 else all_kept[None]
    partial = layout & ~full
    pairs = partial.nonzero()  # (P, 3): head, query block, key block
    h, r, c = (pairs[:, i].view(-1, 1, 1) for i in range(3))
    span = torch.arange(block_size, device=layout.device)
    q_idx = r * block_size + span.view(1, -1, 1)  # (P, bs, 1)
    kv_idx = c * block_size + span.view(1, 1, -1)  # (P, 1, bs)
    b = torch.zeros((), dtype=torch.long, device=layout.device)
    inside = (q_idx < L) & (kv_idx < S)
    element = mask_mod(b, h, q_idx.clamp(max=L - 1), kv_idx.clamp(max=S - 1))
    element = torch.broadcast_to(element, inside.shape) & inside
    return _pattern(layout, block_size, L, S, partial, element.contiguous())


# -- block-sparse attention ----------------------------------------------


def block_sparse_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    layout: Tensor,
    block_size: int,
    scale: float | None = None,
    backend: str = "auto",
) -> Tensor:
    """Softmax attention over the kept blocks of a block layout.

    Query block ``a`` (queries ``a * block_size`` to ``(a + 1) *
    block_size - 1``) attends key block ``c`` iff ``layout[..., a, c]``.
    Only those tiles are gathered and computed; no ``L x S`` matrix is
    built.

    Args:
        query: ``(..., L, E)``. key: ``(..., S, E)``. value: ``(..., S, Ev)``.
        layout: bool, ``(nq, nk)`` shared by every head or ``(H, nq, nk)``
            one per head (dimension -3 of ``query``), with ``nq =
            ceil(L / block_size)`` and ``nk = ceil(S / block_size)``
            (``masks`` builds the patterns of Sparse Transformer,
            Longformer and BigBird).
        block_size: queries and keys per block, an int >= 1.
        scale: multiplies ``Q K^T``; None means ``1 / sqrt(E)``.
        backend: ``"kernel"`` the C++ CPU kernel, ``"flex"`` compiled
            FlexAttention with the layout as its block mask (any device; on
            a CPU forward only, compiling for seconds at each new shape),
            ``"torch"`` the PyTorch version, ``"auto"`` the kernel where it
            applies (CPU, not float64, no gradient needed, a compiler here),
            FlexAttention on CUDA, else PyTorch.

    Returns:
        ``(..., L, Ev)`` in the query's dtype; a query whose block row keeps
        no block gets zeros.

    Raises:
        ValueError: shapes, dtypes or devices that do not fit; a layout
            that is not a bool tensor of the shape above; a block size that
            is not a positive int or does not fit the layout; an unknown
            backend; scores that overflow.
        NotImplementedError: ``backend="kernel"`` where it cannot run (a
            gradient, a GPU tensor or float64); ``backend="flex"`` where
            FlexAttention cannot (a gradient on a CPU, no AVX2).

    Shape:
        ``...`` any leading dimensions (batch ``B``, heads ``H``), ``L``
        queries, ``S`` keys, ``E`` query/key features, ``Ev`` value
        features, ``nq``/``nk`` query/key blocks.

    Complexity:
        time ``O(nnz * block_size^2 * (E + Ev))`` for ``nnz`` kept blocks,
        memory ``O(L * Ev)`` for the kernel; the PyTorch version stores the
        ``nnz`` tiles of scores (and gathers their queries, keys, values).

    Equivalent to:
        ``dense_attention(query, key, value, attn_mask=masks.create_mask(
        masks.from_block_layout(layout, block_size), L, S, heads=H))``.
    """
    check_qkv(query, key, value)
    scale = check_scale(scale)
    block_size = check_positive_int("block_size", block_size)
    _check_backend(backend, FLEX_BACKENDS)
    L, S = query.shape[-2], key.shape[-2]
    layout = _check_layout(layout, query, key, block_size)
    block_size = _cap(block_size, L, S)
    if flex.use_flex(backend, query, key, value, "block_sparse_attention"):
        out = flex.attempt(
            backend,
            "block_sparse_attention",
            lambda: flex.masked_flex_attention(
                query,
                key,
                value,
                masks.from_block_layout(layout, block_size),
                cache_key=("block layout", layout.shape, _bytes_of(layout)),
                per_head=layout.dim() == 3,
                scale=scale,
                block_size=block_size,
            ),
        )
        if out is not None:
            return out
    pattern = _pattern(
        layout if layout.dim() == 3 else layout[None], block_size, L, S
    )
    return _run(query, key, value, pattern, scale, backend)


def sparse_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    pattern: masks.MaskMod | BlockPattern,
    block_size: int | None = None,
    heads: int | None = None,
    scale: float | None = None,
    backend: str = "auto",
) -> Tensor:
    """Exact attention for any mask function, computed block-sparse.

    Args:
        query: ``(..., L, E)``. key: ``(..., S, E)``. value: ``(..., S, Ev)``.
        pattern: a mask function (``masks``), turned into a block pattern
            at every call (``O(L * S)`` mask evaluations), or a
            ``BlockPattern`` from ``block_pattern`` built once for these
            sizes (then ``block_size`` and ``heads`` are its own: leave them
            None, or give the same values).
        block_size: block side, an int >= 1 (None: 64).
        heads: None: one pattern for every head (evaluated with ``h = 0``);
            an int: one per head, equal to ``query.shape[-3]``.
        scale, backend: as ``block_sparse_attention``; ``"flex"`` (and
            ``"auto"`` on CUDA) hands a mask function to FlexAttention as
            it is, in blocks of ``block_size``; a ``BlockPattern`` runs on
            the other backends.

    Returns:
        ``(..., L, Ev)``; a query the mask lets attend no key gets zeros.

    Raises:
        ValueError: as ``block_sparse_attention``; a pattern that is neither
            a mask function nor a ``BlockPattern``, or one built for other
            sizes, head counts or a ``block_size``/``heads`` other than the
            ones given.
        NotImplementedError: a mask function that depends on the batch.

    Complexity: that of the kept blocks, as ``block_sparse_attention``.

    Equivalent to:
        ``dense_attention(query, key, value, attn_mask=masks.create_mask(
        mask_mod, L, S, heads=heads))``.
    """
    check_qkv(query, key, value)
    scale = check_scale(scale)
    _check_backend(backend, FLEX_BACKENDS)
    L, S = query.shape[-2], key.shape[-2]
    if isinstance(pattern, BlockPattern):
        if backend == "flex":
            raise NotImplementedError(
                "backend='flex' takes the mask function itself, not a "
                "BlockPattern: pass pattern=mask_mod (FlexAttention builds "
                "and keeps its own block mask)."
            )
        _check_pattern_agrees(pattern, block_size, heads)
    else:
        if not callable(pattern):
            raise ValueError(
                f"pattern must be a mask function (b, h, q_idx, kv_idx) -> "
                f"bool or a BlockPattern from block_pattern(); got "
                f"{type(pattern).__name__}."
            )
        block_size = 64 if block_size is None else block_size
        block_size = _cap(check_positive_int("block_size", block_size), L, S)
        if heads is not None:
            heads = check_positive_int("heads", heads)
        _check_not_batched(pattern)
        if flex.use_flex(backend, query, key, value, "sparse_attention"):
            if heads is not None:
                _check_heads(query, heads, "pattern")
            out = flex.attempt(
                backend,
                "sparse_attention",
                lambda: flex.masked_flex_attention(
                    query,
                    key,
                    value,
                    pattern,
                    cache_key=("mask function", pattern),
                    per_head=heads is not None,
                    scale=scale,
                    block_size=block_size,
                ),
            )
            if out is not None:
                return out
        if L == 0 or S == 0:
            layout = torch.zeros(
                1, -(-L // block_size), -(-S // block_size), dtype=torch.bool
            )
            pattern = _pattern(layout, block_size, L, S)
        else:
            pattern = block_pattern(
                pattern,
                L,
                S,
                block_size=block_size,
                heads=heads,
                device=query.device,
            )
    if (pattern.L, pattern.S) != (L, S):
        raise ValueError(
            f"pattern was built for L={pattern.L}, S={pattern.S} but query "
            f"and key have L={L}, S={S}; build it with block_pattern(mask_mod"
            f", {L}, {S}, ...)."
        )
    if pattern.heads > 1:
        _check_heads(query, pattern.heads, "pattern")
    return _run(query, key, value, pattern, scale, backend)


def _check_pattern_agrees(
    pattern: BlockPattern, block_size: object, heads: object
) -> None:
    """A prebuilt pattern fixes the block size and the heads: refuse other
    values rather than ignore them."""
    for name, given, own in (
        ("block_size", block_size, pattern.block_size),
        ("heads", heads, pattern.heads),
    ):
        if given is not None and given != own:
            raise ValueError(
                f"{name}={given!r} disagrees with the BlockPattern, built "
                f"with {name}={own}; leave {name} out (None) or rebuild the "
                "pattern with block_pattern()."
            )


def _cap(block_size: int, L: int, S: int) -> int:
    """A block wider than both sequences is one block of ``max(L, S)``: the
    same layout, without padding to the huge size."""
    return min(block_size, max(L, S, 1))


def _check_backend(backend: object, allowed: tuple = BACKENDS) -> None:
    if backend not in allowed:
        raise ValueError(
            f"backend must be one of {allowed}; got {backend!r}."
        )


def _check_not_batched(mask_mod: masks.MaskMod) -> None:
    if getattr(mask_mod, "batch", None) is not None:
        raise NotImplementedError(
            "sparse attention shares one pattern across the batch; a mask "
            "function built for a batch (key_padding) is not supported. "
            "Run each batch row on its own, or use dense_attention."
        )


def _bytes_of(layout: Tensor) -> bytes:
    """A layout's contents, as a key for FlexAttention's block masks."""
    return layout.to("cpu", torch.uint8).numpy().tobytes()


def _check_heads(query: Tensor, heads: int, name: str) -> None:
    if query.dim() < 3 or query.shape[-3] != heads:
        raise ValueError(
            f"{name} has {heads} heads but query has shape "
            f"{tuple(query.shape)}: a per-head {name} needs query (..., H, L,"
            f" E) with H = {heads}; give one layout per head, or a 2-D one "
            f"shared by all."
        )


def _check_layout(
    layout: object, query: Tensor, key: Tensor, block_size: int
) -> Tensor:
    """``layout`` as a bool tensor of the right shape, or a ValueError."""
    check_block_layout(layout)
    if layout.device != query.device:
        raise ValueError(
            f"layout is on {layout.device} but query is on {query.device}; "
            f"move it with layout.to(query.device)."
        )
    check_layout_fits(layout.shape, block_size, query.shape[-2], key.shape[-2])
    if layout.dim() == 3:
        _check_heads(query, layout.shape[0], "layout")
    return layout


def _run(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    pattern: BlockPattern,
    scale: float | None,
    backend: str,
) -> Tensor:
    """Flatten the leading dimensions to ``(N, Hl)`` and run a backend."""
    *lead, L, E = query.shape
    S, Ev = key.shape[-2], value.shape[-1]
    if scale is None:
        scale = 1.0 / math.sqrt(E)
    Hl = pattern.heads
    if math.prod(lead) * L * S * Ev == 0 or pattern.cols.numel() == 0:
        if backend == "kernel":
            _use_kernel(backend, query, key, value)  # refuse as it would
        zeros = query.new_zeros(*lead, L, Ev)
        # still in the autograd graph of the inputs
        return zeros + 0 * (query.sum() + key.sum() + value.sum())
    if _use_kernel(backend, query, key, value):
        return _block_sparse_kernel(query, key, value, pattern, scale)
    # (..., L, E) -> (N, Hl, L, E)
    q, k, v = (t.reshape(-1, Hl, *t.shape[-2:]) for t in (query, key, value))
    half = query.dtype in (torch.float16, torch.bfloat16)
    if half:
        q, k, v = q.float(), k.float(), v.float()
    out = _block_sparse_torch(q, k, v, pattern, scale)
    return out.reshape(*lead, L, Ev).to(query.dtype)


def _block_sparse_torch(
    q: Tensor, k: Tensor, v: Tensor, pattern: BlockPattern, scale: float
) -> Tensor:
    """The readable PyTorch version: gather the kept tiles, softmax each row.

    ``q (N, Hl, L, E)``, ``k (N, Hl, S, E)``, ``v (N, Hl, S, Ev)``. Every
    kept block ``p`` (layout row ``rows[p]``, key block ``cols[p]``) is one
    ``bs x bs`` tile of scores; a row's softmax spans all its tiles, so its
    maximum and sum are gathered with ``scatter_reduce`` and ``index_add``
    over the tiles of the same row.
    """
    N, Hl, L, E = q.shape
    S, Ev, bs = k.shape[-2], v.shape[-1], pattern.block_size
    nq, nk = -(-L // bs), -(-S // bs)
    pad = lambda t, n: torch.nn.functional.pad(t, (0, 0, 0, n - t.shape[-2]))  # noqa: E731
    # (N, Hl * nq, bs, E) and (N, Hl * nk, bs, E|Ev): blocks, head-major
    q_blocks = pad(q, nq * bs).reshape(N, Hl * nq, bs, E)
    k_blocks = pad(k, nk * bs).reshape(N, Hl * nk, bs, E)
    v_blocks = pad(v, nk * bs).reshape(N, Hl * nk, bs, Ev)
    rows = pattern.rows.to(q.device)  # (nnz,) head * nq + query block
    heads = torch.div(rows, nq, rounding_mode="floor")
    key_blocks = heads * nk + pattern.cols.to(q.device)  # (nnz,)
    qg = q_blocks[:, rows]  # (N, nnz, bs, E)
    kg = k_blocks[:, key_blocks]  # (N, nnz, bs, E)
    vg = v_blocks[:, key_blocks]  # (N, nnz, bs, Ev)
    scores = (qg * scale) @ kg.transpose(-2, -1)  # (N, nnz, bs, bs)

    # Which keys of each tile may be attended: inside S, and the element
    # mask of a partial block.
    span = torch.arange(bs, device=q.device)
    allowed = (pattern.cols.to(q.device)[:, None] * bs + span) < S
    allowed = allowed[:, None, :].expand(-1, bs, -1)  # (nnz, bs, bs)
    index = pattern.mask_index.to(q.device)
    if pattern.element_masks.numel():
        partial = index >= 0
        allowed = allowed.clone()
        allowed[partial] &= pattern.element_masks.to(q.device)[index[partial]]
    # only the kept scores count (a padded query row is dropped later)
    check_finite_scores(scores.masked_fill(~allowed, 0.0), scale)
    scores = scores.masked_fill(~allowed, float("-inf"))

    # Row maxima over all tiles of a row: (N, Hl * nq, bs).
    tile_max = scores.amax(-1).detach()  # (N, nnz, bs)
    row_max = tile_max.new_full((N, Hl * nq, bs), float("-inf"))
    row_max = row_max.scatter_reduce(
        1, rows.view(1, -1, 1).expand_as(tile_max), tile_max, "amax"
    )
    row_max = row_max.masked_fill(row_max == float("-inf"), 0.0)
    weights = torch.exp(scores - row_max[:, rows, :, None])  # (N, nnz, bs, bs)
    total = scores.new_zeros(N, Hl * nq, bs).index_add(
        1, rows, weights.sum(-1)
    )
    out = scores.new_zeros(N, Hl * nq, bs, Ev).index_add(1, rows, weights @ vg)
    out = out / total.unsqueeze(-1).masked_fill(total.unsqueeze(-1) == 0, 1.0)
    return out.reshape(N, Hl, nq * bs, Ev)[:, :, :L]  # (N, Hl, L, Ev)


def _use_kernel(backend: str, query: Tensor, key: Tensor, value: Tensor):
    """Whether to run the block-sparse C++ kernel (see ``backend``); the
    hierarchical families share it."""
    return cpu_kernels.use_kernel(
        "block_sparse", backend, query, key, value,
        elsewhere="there block_sparse_attention and sparse_attention take "
        "FlexAttention; the other families have no fast path yet",
    )  # fmt: skip


def _block_sparse_kernel(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    pattern: BlockPattern,
    scale: float,
) -> Tensor:
    """Run ``csrc/block_sparse.cpp`` on contiguous float32 copies."""
    return block_sparse_kernel_lse(query, key, value, pattern, scale)[0]


def block_sparse_kernel_lse(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    pattern: BlockPattern,
    scale: float,
) -> tuple[Tensor, Tensor]:
    """The C++ kernel's output ``(..., L, Ev)`` and each row's log-sum-exp
    of its kept scores ``(..., L)`` (-inf for a row with none), which lets
    a caller merge this softmax with others (``hierarchical.py`` does).

    Needs the kernel (see ``cpu_kernels.load``), CPU tensors and no
    gradient; computes in float32.
    """
    library = cpu_kernels.load("block_sparse")
    *lead, L, E = query.shape
    S, Ev = key.shape[-2], value.shape[-1]
    BH = math.prod(lead)
    out = torch.empty(BH, L, Ev)  # the kernel writes every row
    lse = torch.empty(BH, L)
    q, k, v = (
        t.reshape(BH, t.shape[-2], t.shape[-1]).to(torch.float32).contiguous()
        for t in (query, key, value)
    )
    element = pattern.kernel_masks()
    function = library.block_sparse_forward_lse
    if function.argtypes is None:
        pointer, size = ctypes.c_void_p, ctypes.c_int64
        function.argtypes = (
            [pointer] * 5
            + [size] * 7
            + [pointer] * 4
            + [ctypes.c_float, ctypes.c_int]
        )
        function.restype = ctypes.c_int64
    not_finite = function(
        q.data_ptr(),
        k.data_ptr(),
        v.data_ptr(),
        out.data_ptr(),
        lse.data_ptr(),
        BH,
        L,
        S,
        E,
        Ev,
        pattern.block_size,
        pattern.heads,
        pattern.row_ptr.data_ptr(),
        pattern.cols.data_ptr(),
        pattern.mask_index.data_ptr(),
        element.data_ptr(),
        scale,
        cpu_kernels.threads_for(  # kept tiles of every head, QK and PV
            2
            * (BH // pattern.heads)
            * int(pattern.row_ptr[-1])
            * pattern.block_size**2
            * (E + Ev)
        ),
    )
    if not_finite:  # the kernel counts rows whose kept scores overflowed
        raise scores_not_finite(scale, torch.float32)
    out = out.view(*lead, L, Ev).to(query.dtype)
    return out, lse.view(*lead, L)


# -- learned (content-based) patterns ------------------------------------


def kmeans_clusters(
    query: Tensor,
    key: Tensor,
    *,
    clusters: int,
    generator: torch.Generator | None = None,
    iterations: int = 2,
) -> tuple[Tensor, Tensor]:
    """Spherical k-means over the queries and keys of each head.

    As the Routing Transformer (Roy et al. 2020): queries and keys are
    normalised to unit length and share one set of ``clusters`` centroids
    per head, started at keys drawn with ``generator`` and moved
    ``iterations`` times to the normalised mean of their members (a
    centroid that loses every member stays put).

    Args:
        query: ``(..., L, E)``. key: ``(..., S, E)``.
        clusters: centroids per head, an int in ``[1, S]``.
        generator: draws the starting keys; None means a generator seeded
            with 0 (so the result is reproducible either way).
        iterations: k-means updates, an int >= 0 (fewer when the centroids
            stop moving).

    Returns:
        ``(query_labels (..., L), key_labels (..., S))``: int64 cluster of
        each query and key.

    Raises:
        ValueError: shapes that do not fit, ``clusters`` not in ``[1, S]``,
            a negative ``iterations`` or a generator that is not one.

    Complexity: ``O((L + S) * clusters * E * (iterations + 1))`` time.
    """
    if not isinstance(query, Tensor) or not isinstance(key, Tensor):
        check_tensor("query", query)
        check_tensor("key", key)
    check_qkv(query, key, key)
    *lead, L, E = query.shape
    S = key.shape[-2]
    clusters = check_positive_int("clusters", clusters)
    if clusters > max(S, 1):
        raise ValueError(
            f"clusters must be at most S (the centroids start at distinct "
            f"keys); got clusters={clusters} with S={S}."
        )
    iterations = check_non_negative_int("iterations", iterations)
    generator = _check_generator(generator, query.device)
    N = math.prod(lead)
    with torch.no_grad():
        q = torch.nn.functional.normalize(
            query.reshape(N, L, E).float(), dim=-1
        )
        k = torch.nn.functional.normalize(key.reshape(N, S, E).float(), dim=-1)
        if N == 0 or S == 0:
            return (
                torch.zeros(*lead, L, dtype=torch.long, device=query.device),
                torch.zeros(*lead, S, dtype=torch.long, device=query.device),
            )
        draw = torch.rand(N, S, generator=generator, device=generator.device)
        start = draw.to(query.device).argsort(-1)[:, :clusters]  # (N, C)
        # (N, C, E)
        centroids = k.gather(1, start[..., None].expand(-1, -1, E))
        for _ in range(iterations):
            sums = torch.zeros_like(centroids)  # (N, C, E)
            for points in (q, k):
                # nearest centroid (largest cosine) of each point: (N, n)
                labels = (points @ centroids.transpose(1, 2)).argmax(-1)
                members = torch.nn.functional.one_hot(labels, clusters)
                # (N, C, n) @ (N, n, E) -> (N, C, E)
                sums += members.transpose(1, 2).to(points.dtype) @ points
            moved = torch.nn.functional.normalize(sums, dim=-1)
            empty = sums.norm(dim=-1, keepdim=True) == 0
            moved = torch.where(empty, centroids, moved)
            if torch.equal(moved, centroids):
                break  # converged: more iterations change nothing
            centroids = moved
        q_labels = (q @ centroids.transpose(1, 2)).argmax(-1)  # (N, L)
        k_labels = (k @ centroids.transpose(1, 2)).argmax(-1)  # (N, S)
    return q_labels.reshape(*lead, L), k_labels.reshape(*lead, S)


def _check_generator(
    generator: object, device: torch.device
) -> torch.Generator:
    if generator is None:
        return torch.Generator().manual_seed(0)
    if not isinstance(generator, torch.Generator):
        raise ValueError(
            f"generator must be a torch.Generator (or None for a fixed "
            f"seed); got {type(generator).__name__}. Make one with "
            f"torch.Generator().manual_seed(0)."
        )
    return generator


def routing_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    clusters: int,
    generator: torch.Generator | None = None,
    iterations: int = 2,
    block_size: int = 64,
    scale: float | None = None,
    backend: str = "auto",
) -> Tensor:
    """Routing attention: each query attends the keys of its own cluster.

    The clusters come from ``kmeans_clusters`` (spherical k-means over the
    queries and keys of each head; Roy et al. 2020). Sorting queries and
    keys by cluster turns "same cluster" into a block-diagonal pattern,
    which runs as a block layout (blocks that hold two clusters get an
    element mask), so the cost is that of the kept blocks: about ``1 /
    clusters`` of dense when the clusters are even.

    Args:
        query: ``(..., L, E)``. key: ``(..., S, E)``. value: ``(..., S, Ev)``.
        clusters, generator, iterations: as ``kmeans_clusters``; with
            ``clusters=1`` this is dense attention.
        block_size, scale, backend: as ``block_sparse_attention``.

    Returns:
        ``(..., L, Ev)``; a query whose cluster holds no key gets zeros.

    Raises:
        ValueError: as ``kmeans_clusters`` and ``block_sparse_attention``.

    Complexity: k-means ``O((L + S) * clusters * E * iterations)``, then
    the kept blocks, ``O(L * S / clusters * (E + Ev))`` for even clusters.

    Equivalent to:
        ``dense_attention(query, key, value, attn_mask=q_labels[..., :,
        None] == k_labels[..., None, :])`` with ``q_labels, k_labels =
        kmeans_clusters(query, key, clusters=..., generator=...)``.
    """
    check_qkv(query, key, value)
    scale = check_scale(scale)
    block_size = check_positive_int("block_size", block_size)
    _check_backend(backend)
    block_size = _cap(block_size, query.shape[-2], key.shape[-2])
    q_labels, k_labels = kmeans_clusters(
        query,
        key,
        clusters=clusters,
        generator=generator,
        iterations=iterations,
    )
    *lead, L, E = query.shape
    S, Ev = key.shape[-2], value.shape[-1]
    N = math.prod(lead)
    if N * L * S * Ev == 0:
        return _run(
            query,
            key,
            value,
            _pattern(
                torch.zeros(
                    1,
                    -(-L // block_size),
                    -(-S // block_size),
                    dtype=torch.bool,
                ),
                block_size,
                L,
                S,
            ),
            scale,
            backend,
        )
    # Sort queries and keys of each head by cluster: (N, L) and (N, S).
    q_sorted, q_order = q_labels.reshape(N, L).sort(dim=-1, stable=True)
    k_sorted, k_order = k_labels.reshape(N, S).sort(dim=-1, stable=True)
    pattern = _cluster_pattern(q_sorted, k_sorted, block_size, clusters)
    pick = lambda t, order: t.reshape(N, -1, t.shape[-1]).gather(  # noqa: E731
        1, order[..., None].expand(-1, -1, t.shape[-1])
    )
    q, k, v = pick(query, q_order), pick(key, k_order), pick(value, k_order)
    # (1, N, L, E): the pattern has one layout per batch-head
    out = _run(q[None], k[None], v[None], pattern, scale, backend)[0]
    inverse = q_order.argsort(-1)  # (N, L)
    out = out.gather(1, inverse[..., None].expand(-1, -1, Ev))
    return out.reshape(*lead, L, Ev)


def _cluster_pattern(
    q_sorted: Tensor, k_sorted: Tensor, bs: int, clusters: int
) -> BlockPattern:
    """The block pattern of "same cluster" for sorted labels ``(N, L)`` and
    ``(N, S)``: a block pair is kept when the cluster ranges of its
    queries and keys overlap, and is full when both hold one cluster."""
    N, L = q_sorted.shape
    S = k_sorted.shape[1]
    nq, nk = -(-L // bs), -(-S // bs)

    def ranges(labels: Tensor, n: int) -> tuple[Tensor, Tensor]:
        pad = n * bs - labels.shape[1]
        low = torch.nn.functional.pad(labels, (0, pad), value=clusters)
        high = torch.nn.functional.pad(labels, (0, pad), value=-1)
        return low.view(N, n, bs).amin(-1), high.view(N, n, bs).amax(-1)

    q_low, q_high = ranges(q_sorted, nq)  # (N, nq)
    k_low, k_high = ranges(k_sorted, nk)  # (N, nk)
    layout = (q_low[:, :, None] <= k_high[:, None, :]) & (
        k_low[:, None, :] <= q_high[:, :, None]
    )  # (N, nq, nk)
    one = (q_low == q_high)[:, :, None] & (k_low == k_high)[:, None, :]
    full = layout & one & (q_low[:, :, None] == k_low[:, None, :])
    partial = layout & ~full
    n, r, c = partial.nonzero().unbind(-1)  # (P,) each
    span = torch.arange(bs, device=q_sorted.device)
    qpad = torch.nn.functional.pad(q_sorted, (0, nq * bs - L), value=-1)
    kpad = torch.nn.functional.pad(k_sorted, (0, nk * bs - S), value=-2)
    q_lab = qpad[n[:, None], r[:, None] * bs + span]  # (P, bs)
    k_lab = kpad[n[:, None], c[:, None] * bs + span]  # (P, bs)
    element = q_lab[:, :, None] == k_lab[:, None, :]  # (P, bs, bs)
    return _pattern(layout, bs, L, S, partial, element)


def top_k_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    top_k: int,
    scale: float | None = None,
) -> Tensor:
    """Each query attends only its ``top_k`` highest-scoring keys.

    The illustration of "keep only the largest scores": exact for the
    pattern it picks, but it computes every score first, so it costs what
    dense attention costs (the learned patterns guess the large scores
    without computing them). Ties at the ``top_k``-th score are broken by
    ``torch.topk``.

    Args:
        query: ``(..., L, E)``. key: ``(..., S, E)``. value: ``(..., S, Ev)``.
        top_k: keys per query, an int in ``[1, S]`` (``S``: dense).
        scale: multiplies ``Q K^T``; None means ``1 / sqrt(E)``.

    Returns:
        ``(..., L, Ev)`` in the query's dtype.

    Raises:
        ValueError: shapes that do not fit, ``top_k`` not in ``[1, S]``,
            scores that overflow.

    Complexity: time ``O(L * S * (E + log top_k) + L * S * Ev)``, memory
    ``O(L * S)``.

    Equivalent to:
        ``dense_attention(query, key, value, attn_mask=scores >=
        scores.topk(top_k).values[..., -1:])`` without ties.
    """
    check_qkv(query, key, value)
    scale = check_scale(scale)
    S = key.shape[-2]
    top_k = check_positive_int("top_k", top_k)
    if top_k > S:
        raise ValueError(
            f"top_k must be at most S, the number of keys; got top_k={top_k}"
            f" with S={S}. Use top_k={S} for dense attention."
        )
    half = query.dtype in (torch.float16, torch.bfloat16)
    q, k, v = (t.float() if half else t for t in (query, key, value))
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q * scale) @ k.transpose(-2, -1)  # (..., L, S)
    check_finite_scores(scores, scale)
    best, where = scores.topk(top_k, dim=-1)  # (..., L, top_k)
    weights = torch.zeros_like(scores).scatter(
        -1, where, torch.softmax(best, dim=-1)
    )  # (..., L, S): zero outside the top k
    return (weights @ v).to(query.dtype)  # (..., L, Ev)


# -- sparse matrix products ----------------------------------------------


def csr_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    attn_mask: Tensor,
    scale: float | None = None,
) -> Tensor:
    """Attention with index-based sparse products (``torch.sparse`` CSR).

    The kept scores are one SDDMM (``torch.sparse.sampled_addmm``: ``Q
    K^T`` sampled at the mask's nonzeros), the softmax runs over the CSR
    values of each row, and the output is one SpMM (CSR @ dense). Every
    kept pair costs an index, and the products read keys and values one
    row at a time, so this pays only at low densities (the chapter
    measures where).

    Args:
        query: ``(..., L, E)``. key: ``(..., S, E)``. value: ``(..., S, Ev)``.
        attn_mask: bool ``(L, S)``, True = may attend; shared by every head.
        scale: multiplies ``Q K^T``; None means ``1 / sqrt(E)``.

    Returns:
        ``(..., L, Ev)``; rows with no kept key get zeros.

    Raises:
        ValueError: shapes that do not fit, a mask that is not a bool
            ``(L, S)`` tensor, a dtype that torch.sparse does not multiply
            (only float32 and float64), scores that overflow.

    Complexity: time ``O(nnz * (E + Ev))``, memory ``O(nnz)`` for ``nnz``
    kept pairs.

    Equivalent to: ``dense_attention(query, key, value,
    attn_mask=attn_mask)``.
    """
    check_qkv(query, key, value)
    scale = check_scale(scale)
    check_tensor("attn_mask", attn_mask)
    *lead, L, E = query.shape
    S, Ev = key.shape[-2], value.shape[-1]
    if attn_mask.dtype != torch.bool or tuple(attn_mask.shape) != (L, S):
        raise ValueError(
            f"attn_mask must be a bool (L, S) = ({L}, {S}) tensor; got "
            f"{attn_mask.dtype} of shape {tuple(attn_mask.shape)}."
        )
    if attn_mask.device != query.device:
        raise ValueError(
            f"attn_mask is on {attn_mask.device} but query is on "
            f"{query.device}; move it with attn_mask.to(query.device)."
        )
    if query.dtype not in (torch.float32, torch.float64):
        raise ValueError(
            f"csr_attention multiplies float32 or float64 (torch.sparse "
            f"CSR products); got query of dtype {query.dtype}. Convert with "
            f".float()."
        )
    scale = 1.0 / math.sqrt(E) if scale is None else scale
    N = math.prod(lead)
    # (..., n, F) -> (N, n, F), also when n = 0
    q, k, v = (t.reshape(N, *t.shape[-2:]) for t in (query, key, value))
    out = query.new_zeros(N, L, Ev)
    if attn_mask.sum() == 0 or out.numel() == 0:
        return out.reshape(*lead, L, Ev)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CSR support is in beta state"
        pattern = attn_mask.to(query.dtype).to_sparse_csr()  # (L, S) CSR
        crow, col = pattern.crow_indices(), pattern.col_indices()
        rows = torch.arange(L, device=crow.device)
        row = torch.repeat_interleave(rows, crow.diff())  # (nnz,)
        for n in range(q.shape[0]):  # one SDDMM and one SpMM per head
            scores = torch.sparse.sampled_addmm(
                pattern, q[n] * scale, k[n].transpose(0, 1), beta=0.0
            ).values()  # (nnz,)
            check_finite_scores(scores, scale)
            top = scores.new_full((L,), float("-inf")).scatter_reduce(
                0, row, scores, "amax"
            )
            weights = torch.exp(scores - top[row])
            total = scores.new_zeros(L).index_add(0, row, weights)
            weights = weights / total[row]
            csr = torch.sparse_csr_tensor(crow, col, weights, (L, S))
            out[n] = csr @ v[n]  # SpMM: (L, S) CSR @ (S, Ev)
    return out.reshape(*lead, L, Ev)


def block_sparse_matmul(
    a: Tensor, b: Tensor, *, layout: Tensor, block_size: int
) -> Tensor:
    """``(a * mask) @ b`` for the block mask of ``layout``, block by block.

    The block-based sparse product: only the kept ``block_size``-square
    tiles of ``a`` are read and multiplied (one batched matmul over the
    tiles), and the products of a block row are summed with ``index_add``.

    Args:
        a: ``(M, K)``. b: ``(K, N)``. layout: bool ``(ceil(M / bs),
        ceil(K / bs))``. block_size: the tile side ``bs``.

    Returns:
        ``(M, N)``.

    Raises:
        ValueError: shapes that do not fit, a bad layout or block size.

    Complexity: ``O(nnz * bs^2 * N)`` for ``nnz`` kept tiles.

    Equivalent to: ``(a * masks.create_mask(masks.from_block_layout(
    layout, bs), M, K)) @ b``.
    """
    _check_matrices(a, b)
    bs = check_positive_int("block_size", block_size)
    M, K = a.shape
    check_block_layout(layout)
    if layout.dim() != 2:
        raise ValueError(
            f"layout must be 2-D for a matrix product; got shape "
            f"{tuple(layout.shape)}."
        )
    if layout.device != a.device:
        raise ValueError(
            f"layout is on {layout.device} but a is on {a.device}; move it "
            f"with layout.to(a.device)."
        )
    check_layout_fits(layout.shape, bs, M, K)
    bs = _cap(bs, M, K)
    nm, nk = layout.shape
    if (M, K) != (nm * bs, nk * bs):  # pad (a copy) only when needed
        a = torch.nn.functional.pad(a, (0, nk * bs - K, 0, nm * bs - M))
        b = torch.nn.functional.pad(b, (0, 0, 0, nk * bs - K))
    # a strided view, no copy: tile (r, c) is a_tiles[r, c]
    a_tiles = a.reshape(nm, bs, nk, bs).transpose(1, 2)  # (nm, nk, bs, bs)
    b_rows = b.reshape(nk, bs, b.shape[1])  # (nk, bs, N)
    r, c = layout.nonzero().unbind(-1)  # (nnz,) each
    products = a_tiles[r, c] @ b_rows[c]  # (nnz, bs, N)
    out = a.new_zeros(nm, bs, b.shape[1]).index_add(0, r, products)
    return out.reshape(nm * bs, b.shape[1])[:M]  # (M, N)


def _check_matrices(a: object, b: object) -> None:
    """``a (M, K)`` and ``b (K, N)``: floating-point matrices of one dtype
    and device whose inner sizes agree."""
    check_tensor("a", a)
    check_tensor("b", b)
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(
            f"a and b must be matrices (M, K) and (K, N); got "
            f"{tuple(a.shape)} and {tuple(b.shape)}."
        )
    if not a.is_floating_point() or a.dtype != b.dtype:
        raise ValueError(
            f"a and b must share one floating-point dtype; got {a.dtype} "
            f"and {b.dtype}. Convert them with .to(a.dtype)."
        )
    if a.device != b.device:
        raise ValueError(
            f"a and b must be on one device; got {a.device} and "
            f"{b.device}. Move b with b.to(a.device)."
        )


def prune_2_4(weight: Tensor) -> Tensor:
    """Keep the 2 largest-magnitude entries of every 4 along the rows.

    The pattern NVIDIA's sparse tensor cores (Ampere and later) multiply
    at up to twice the dense rate; ``semi_structured_matmul`` runs it.

    Raises:
        ValueError: not a matrix, or a column count not a multiple of 4.
    """
    check_tensor("weight", weight)
    if weight.dim() != 2 or weight.shape[1] % 4:
        raise ValueError(
            f"weight must be a matrix whose column count is a multiple of "
            f"4; got shape {tuple(weight.shape)}."
        )
    M, K = weight.shape
    groups = weight.reshape(M, K // 4, 4)  # (M, K / 4, 4)
    keep = groups.abs().topk(2, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter(-1, keep, True)
    return (groups * mask).reshape(weight.shape)


def semi_structured_matmul(a: Tensor, b: Tensor) -> Tensor:
    """``prune_2_4(a) @ b`` on the GPU's 2:4 sparse tensor cores.

    ``to_sparse_semi_structured`` compresses ``a`` to its kept half and a
    2-bit index per entry; the product then skips the zeros in hardware.

    Raises:
        ValueError: shapes that do not fit.
        NotImplementedError: not a CUDA tensor (no CPU runs 2:4 sparsity)
            or a GPU older than Ampere; the message says which.
    """
    check_tensor("a", a)
    check_tensor("b", b)
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(
            f"a and b must be matrices (M, K) and (K, N); got "
            f"{tuple(a.shape)} and {tuple(b.shape)}."
        )
    if a.device.type != "cuda":
        raise NotImplementedError(
            f"2:4 semi-structured sparsity runs on NVIDIA GPUs (Ampere or "
            f"newer) only; got a tensor on {a.device.type}."
        )
    if torch.cuda.get_device_capability(a.device) < (8, 0):
        raise NotImplementedError(
            "2:4 semi-structured sparsity needs an Ampere or newer GPU "
            "(compute capability 8.0)."
        )
    from torch.sparse import to_sparse_semi_structured

    return to_sparse_semi_structured(prune_2_4(a)) @ b
