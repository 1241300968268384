"""Block-sparse attention: only the (query, key) blocks a pattern keeps.

Fixed patterns come as block layouts (``masks.py`` builds those of Sparse
Transformer, Child et al. 2019, arXiv 1904.10509; Longformer, Beltagy et al.
2020, arXiv 2004.05150; BigBird, Zaheer et al. 2020, arXiv 2007.14062) and
run in ``block_sparse_attention``, which gathers the kept blocks and never
builds an ``L x S`` matrix. ``sparse_attention`` runs any mask function
exactly: a block is kept when any pair in it is, and the blocks a mask
keeps only in part carry an element mask (as FlexAttention's block mask,
arXiv 2412.05496). This module is also the engine the content-based
patterns (``routing.py``) and the hierarchical families (``hierarchical.py``)
run on: ``layout_pattern``, ``run_pattern``, ``check_backend``,
``use_kernel`` and ``block_sparse_kernel_lse``. Chapter "Sparse attention"
teaches it.

Two implementations compute block-sparse attention: ``_block_sparse_torch``,
a readable PyTorch version (autograd, any device and dtype) that gathers
the kept tiles and merges each row's softmax with scatter operations, and a
C++ kernel for CPUs (``csrc/block_sparse.cpp``, built on first use by
``cpu_kernels``) with an online softmax over the kept key blocks, and a
backward pass that recomputes each kept tile from its rows' log-sum-exp (so
training stores no tiles of scores).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import cpu_kernels, masks
from .._validation import (
    check_block_layout,
    check_finite_scores,
    check_layout_fits,
    check_positive_int,
    check_qkv,
    check_scale,
    scores_not_finite,
)
from . import flex
from .online_softmax import merge_parts, part_softmax

BACKENDS = ("auto", "kernel", "torch")
# block_sparse_attention and sparse_attention also run FlexAttention
FLEX_BACKENDS = ("auto", "kernel", "flex", "torch")

__all__ = [
    "BlockPattern",
    "block_pattern",
    "block_sparse_attention",
    "sparse_attention",
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


def layout_pattern(
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
    block_size = cap_block_size(
        check_positive_int("block_size", block_size), L, S
    )
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
    return layout_pattern(
        layout, block_size, L, S, partial, element.contiguous()
    )


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
            applies (CPU, not float64, a compiler here; with or without
            gradients), FlexAttention on CUDA, else PyTorch.

    Returns:
        ``(..., L, Ev)`` in the query's dtype; a query whose block row keeps
        no block gets zeros.

    Raises:
        ValueError: shapes, dtypes or devices that do not fit; a layout
            that is not a bool tensor of the shape above; a block size that
            is not a positive int or does not fit the layout; an unknown
            backend; scores that overflow.
        NotImplementedError: ``backend="kernel"`` where it cannot run (a
            GPU tensor or float64); ``backend="flex"`` where
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
    check_backend(backend, FLEX_BACKENDS)
    L, S = query.shape[-2], key.shape[-2]
    layout = _check_layout(layout, query, key, block_size)
    block_size = cap_block_size(block_size, L, S)
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
    pattern = layout_pattern(
        layout if layout.dim() == 3 else layout[None], block_size, L, S
    )
    return run_pattern(query, key, value, pattern, scale, backend)


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
    check_backend(backend, FLEX_BACKENDS)
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
        block_size = cap_block_size(
            check_positive_int("block_size", block_size), L, S
        )
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
            pattern = layout_pattern(layout, block_size, L, S)
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
    return run_pattern(query, key, value, pattern, scale, backend)


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


def cap_block_size(block_size: int, L: int, S: int) -> int:
    """A block wider than both sequences is one block of ``max(L, S)``: the
    same layout, without padding to the huge size."""
    return min(block_size, max(L, S, 1))


def check_backend(backend: object, allowed: tuple = BACKENDS) -> None:
    if backend not in allowed:
        raise ValueError(f"backend must be one of {allowed}; got {backend!r}.")


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


def run_pattern(
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
            # refuse as it would
            use_kernel(backend, query, key, value, backward=True)
        zeros = query.new_zeros(*lead, L, Ev)
        # still in the autograd graph of the inputs
        return zeros + 0 * (query.sum() + key.sum() + value.sum())
    if use_kernel(backend, query, key, value, backward=True):
        return _BlockSparseKernel.apply(query, key, value, pattern, scale)
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
    ``bs x bs`` tile of scores; a row's softmax spans all its tiles, which
    ``online_softmax.merge_parts`` merges (its maximum by ``scatter_reduce``,
    its sums by ``index_add``).
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

    # Each tile's softmax, unnormalised, then merged over a row's tiles.
    parts = part_softmax(scores, vg)  # (N, nnz, bs, Ev), 2 x (N, nnz, bs)
    out = merge_parts(*parts, rows, Hl * nq)  # (N, Hl * nq, bs, Ev)
    return out.reshape(N, Hl, nq * bs, Ev)[:, :, :L]  # (N, Hl, L, Ev)


def use_kernel(
    backend: str,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    backward: bool = False,
):
    """Whether to run the block-sparse C++ kernel (see ``backend``); the
    hierarchical families share it (forward only: ``backward=False``)."""
    return cpu_kernels.use_kernel(
        "block_sparse", backend, query, key, value,
        elsewhere="there block_sparse_attention and sparse_attention take "
        "FlexAttention; the other families have no fast path yet",
        backward=backward,
    )  # fmt: skip


class _BlockSparseKernel(torch.autograd.Function):
    """The C++ kernel's forward and backward passes as one autograd step.

    The backward pass recomputes each kept tile from the rows' log-sum-exp
    instead of storing the tiles, so training keeps the kernel's memory."""

    @staticmethod
    def forward(ctx, query, key, value, pattern, scale):
        out, lse = block_sparse_kernel_lse(query, key, value, pattern, scale)
        ctx.save_for_backward(query, key, value, out, lse)
        ctx.settings = (pattern, scale)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        query, key, value, out, lse = ctx.saved_tensors
        grads = _block_sparse_kernel_backward(
            grad_out, query, key, value, out, lse, *ctx.settings
        )
        dq, dk, dv = (
            g.to(t.dtype) for g, t in zip(grads, (query, key, value))
        )
        return dq, dk, dv, None, None


def _block_sparse_kernel_backward(
    grad_out: Tensor,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    out: Tensor,
    lse: Tensor,
    pattern: BlockPattern,
    scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Run the kernel's backward pass: the gradients of the query, key and
    value (float32, the inputs' shapes) for ``grad_out`` ``(..., L, Ev)``,
    given the forward pass's ``out`` and ``lse``."""
    library = cpu_kernels.load("block_sparse")
    *lead, L, E = query.shape
    S, Ev = key.shape[-2], value.shape[-1]
    BH = math.prod(lead)
    q, k, v, dout, out = cpu_kernels.batch_heads_float32(
        BH, query, key, value, grad_out, out
    )
    delta = (dout * out).sum(-1).contiguous()  # (BH, L): dO . out per row
    lse = lse.reshape(BH, L).contiguous()
    dq, dk, dv = (torch.zeros(t.shape) for t in (q, k, v))
    library.block_sparse_backward(
        *(t.data_ptr() for t in (q, k, v, dout, lse, delta, dq, dk, dv)),
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
        pattern.kernel_masks().data_ptr(),
        scale,
        cpu_kernels.threads_for(  # five products per kept pair
            5
            * (BH // pattern.heads)
            * int(pattern.row_ptr[-1])
            * pattern.block_size**2
            * (E + Ev)
        ),
    )
    return dq.view(query.shape), dk.view(key.shape), dv.view(value.shape)


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
    q, k, v = cpu_kernels.batch_heads_float32(BH, query, key, value)
    element = pattern.kernel_masks()
    function = library.block_sparse_forward_lse
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
