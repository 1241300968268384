"""Sparse matrix products for attention, three ways.

Block-based (``block_sparse_matmul``: only the kept tiles are read and
multiplied), index-based (``csr_attention``: ``torch.sparse`` CSR products
and SDDMM with ``torch.sparse.sampled_addmm``) and 2:4 semi-structured
(``prune_2_4``, ``semi_structured_matmul``: ``to_sparse_semi_structured``,
NVIDIA GPUs only). Chapter "Sparse attention" compares them.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from .._validation import (
    check_block_layout,
    check_finite_scores,
    check_layout_fits,
    check_positive_int,
    check_qkv,
    check_scale,
    check_tensor,
)
from .block_sparse import cap_block_size

__all__ = [
    "block_sparse_matmul",
    "csr_attention",
    "prune_2_4",
    "semi_structured_matmul",
]


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
    bs = cap_block_size(bs, M, K)
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
