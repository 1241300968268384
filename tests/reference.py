"""A float64 attention reference written apart from the package.

Tests compare the package with it (and with PyTorch's SDPA), so no test
checks a function against itself.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def reference_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> Tensor:
    """``softmax(Q K^T * scale + bias) V`` in float64, straight from the maths.

    ``attn_mask`` is bool (True = may attend) or added to the scores; a row
    whose keys are all blocked (bias ``-inf``) gives zeros, as does ``S = 0``.
    """
    q, k, v = (t.double() for t in (query, key, value))
    L, S, E = q.shape[-2], k.shape[-2], q.shape[-1]
    scale = 1 / math.sqrt(E) if scale is None else float(scale)
    scores = (q @ k.transpose(-2, -1)) * scale  # (..., L, S)
    if is_causal:
        attn_mask = torch.ones(L, S, dtype=torch.bool).tril()
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        # A blocked key stays blocked even where its score overflowed to
        # +inf (adding a -inf bias would make that NaN).
        scores = scores.masked_fill(~attn_mask, -math.inf)
    elif attn_mask is not None:
        scores = scores + attn_mask.double()
    if S == 0:
        return torch.zeros(*scores.shape[:-1], v.shape[-1], dtype=v.dtype)
    row_max = scores.amax(-1, keepdim=True)  # -inf in a row with no key
    row_max = row_max.masked_fill(row_max == -math.inf, 0.0)
    weights = torch.exp(scores - row_max)  # exp(-inf) = 0: blocked keys
    total = weights.sum(-1, keepdim=True)
    weights = weights / torch.where(total > 0, total, 1.0)
    return weights @ v  # (..., L, Ev)
