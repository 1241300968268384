"""Dense (full) softmax attention: the readable reference for every variant.

``dense_attention`` computes the whole ``L x S`` score matrix, exactly as
"Attention Is All You Need" (Vaswani et al. 2017, arXiv 1706.03762) writes it:
``softmax(Q K^T / sqrt(E)) V``. It is the slow, memory-hungry baseline whose
cost chapter 1 ("Why attention is slow") derives and measures; PyTorch's fused
``F.scaled_dot_product_attention`` computes the same numbers without storing
the matrix.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._validation import (
    check_attn_mask,
    check_bool,
    check_finite_scores,
    check_qkv,
    check_scale,
)


def dense_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> Tensor:
    """Softmax attention with the full score matrix, written to be read.

    Args:
        query: ``(..., L, E)``. key: ``(..., S, E)``. value: ``(..., S, Ev)``.
        attn_mask: broadcastable to ``(..., L, S)``; bool (True = may attend)
            or a float tensor of the query's dtype added to the scores.
            An additive mask holds finite numbers or ``-inf``, never NaN or
            ``+inf``.
        is_causal: True or False; True: query ``i`` attends keys ``j <= i``
            (cannot be combined with ``attn_mask``: combine the masks with
            ``masks.and_masks`` instead).
        scale: a finite real number that multiplies ``Q K^T``; None means
            ``1 / sqrt(E)``.

    Returns:
        ``(..., L, Ev)``, in the query's dtype. A query with no key to attend
        returns zeros (all its keys masked by False or ``-inf``, or
        ``S = 0``).

    Raises:
        ValueError: shapes, dtypes or devices that do not fit, ``E = 0``, a
            mask that does not broadcast or holds NaN or ``+inf``, an
            ``is_causal`` that is not a bool, a scale that is not a finite
            real number, both ``attn_mask`` and ``is_causal``, or scores
            that are not finite (``query`` or ``key`` holding inf or NaN,
            or so large, with the scale, that ``Q K^T * scale`` overflows:
            SDPA would return NaN). Inf or NaN in ``value`` reach the
            output, as in any weighted sum.

    Shape:
        ``...`` any leading dimensions (batch ``B``, heads ``H``), ``L``
        queries, ``S`` keys, ``E`` query/key features, ``Ev`` value features.

    Complexity:
        time ``O(L * S * (E + Ev))``; memory ``O(L * S)`` per head: two
        ``L x S`` float matrices (scores and weights) are alive at once, plus
        a bool one for a mask. Half-precision inputs are computed in float32
        and cast back.

    Equivalent to:
        ``F.scaled_dot_product_attention(query, key, value,
        attn_mask=attn_mask, is_causal=is_causal, scale=scale)``. Rows with
        nothing to attend give zeros here on every PyTorch version; SDPA of
        the pinned torch 2.13 also gives zeros there (bool and ``-inf``
        masks, tested), where some earlier versions gave NaN.
    """
    check_qkv(query, key, value)
    scale = check_scale(scale)
    check_bool("is_causal", is_causal)
    if attn_mask is not None and is_causal:
        raise ValueError(
            "pass either attn_mask or is_causal=True, not both (as in SDPA); "
            "to combine them, build one mask: "
            "masks.create_mask(masks.and_masks(masks.causal, your_mod), L, S)."
        )
    if attn_mask is not None:
        check_attn_mask(attn_mask, query, key)
    L, S = query.shape[-2], key.shape[-2]
    if is_causal:
        attn_mask = torch.ones(L, S, dtype=torch.bool, device=query.device)
        attn_mask = attn_mask.tril()  # (L, S): True where key j <= query i

    half = query.dtype in (torch.float16, torch.bfloat16)
    compute_dtype = torch.float32 if half else query.dtype
    q, k, v = (t.to(compute_dtype) for t in (query, key, value))
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale

    # (..., L, E) @ (..., E, S) -> (..., L, S)
    scores = (q * scale) @ k.transpose(-2, -1)
    check_finite_scores(scores, scale)
    no_key = None
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            # in place: no second L x S matrix
            scores.masked_fill_(~attn_mask, float("-inf"))
        else:
            scores += attn_mask.to(compute_dtype)
        # (..., L, 1)
        no_key = torch.isneginf(scores).all(dim=-1, keepdim=True)
        # keeps the softmax of an empty row finite
        scores.masked_fill_(no_key, 0.0)
    weights = torch.softmax(scores, dim=-1)  # (..., L, S)
    out = weights @ v  # (..., L, S) @ (..., S, Ev) -> (..., L, Ev)
    if no_key is not None:
        out = out.masked_fill(no_key, 0.0)  # a query with no key gets zeros
    return out.to(query.dtype)
