"""The online softmax: attention over disjoint sets of keys, merged.

A row's softmax over all its keys can be computed a part at a time: each
part gives its output, normalised over its own keys, and the log-sum-exp of
its scores; two parts merge by weighing each output with its share of the
total weight, so the result is the softmax over both parts, exactly ("Online
normalizer calculation for softmax", Milakov and Gimelshein 2018,
arXiv:1805.02867). ``block_softmax`` computes one part and ``merge_softmax``
merges two. The hierarchical families merge their levels with it and ring
attention (``parallel/distributed.py``) the blocks that travel round the
ring; chapter "Hierarchical attention" shows the merge on a worked example.
The block-sparse PyTorch path (``block_sparse._block_sparse_torch``) does
the same sum in one pass instead: it gathers the row maximum over all of a
row's tiles first (``scatter_reduce``), so each tile's weighted values are
held once, unnormalised, rather than normalised and then reweighted (twice
the memory, gigabytes for the identity values that draw attention maps).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["block_softmax", "merge_softmax"]


def block_softmax(
    scores: Tensor, value: Tensor, *, overwrite_scores: bool = False
) -> tuple[Tensor, Tensor]:
    """Softmax attention over one part of the keys, and its log-sum-exp.

    ``scores (..., L, S)`` hold ``-inf`` where a key is hidden; ``value
    (..., S, Ev)``. Returns the output normalised over the part's allowed
    keys ``(..., L, Ev)`` (zeros for a row with none) and the log-sum-exp
    of each row's allowed scores ``(..., L)`` (``-inf`` for a row with
    none). With ``overwrite_scores`` the weights are computed in the
    scores' buffer (a block of memory saved; not for autograd).
    """
    if scores.shape[-1] == 0:  # no key at all
        out = value.new_zeros(*scores.shape[:-1], value.shape[-1])
        return out, scores.new_full(scores.shape[:-1], float("-inf"))
    top = scores.amax(-1).detach()  # (..., L)
    top = top.masked_fill(top == float("-inf"), 0.0)
    if overwrite_scores:
        weights = scores.sub_(top[..., None]).exp_()  # hidden -> 0
    else:
        weights = torch.exp(scores - top[..., None])  # (..., L, S)
    total = weights.sum(-1)  # (..., L)
    norm = total.masked_fill(total == 0, 1.0)[..., None]  # (..., L, 1)
    out = (weights @ value).div_(norm)  # (..., L, Ev)
    return out, top + total.log()


def merge_softmax(
    out_a: Tensor, lse_a: Tensor, out_b: Tensor, lse_b: Tensor
) -> tuple[Tensor, Tensor]:
    """One softmax from two over disjoint sets of keys.

    ``out_a (..., L, Ev)`` is normalised over its keys and ``lse_a (...,
    L)`` is the log of their total weight (likewise ``b``): the joint
    output weighs each by its share of the total. A query with no key in
    either gets zeros and ``-inf``.
    """
    top = torch.maximum(lse_a, lse_b).detach()  # (..., L)
    top = top.masked_fill(top == float("-inf"), 0.0)
    weight_a, weight_b = torch.exp(lse_a - top), torch.exp(lse_b - top)
    total = weight_a + weight_b  # (..., L)
    share_b = weight_b / total.masked_fill(total == 0, 1.0)
    # out_a + share_b * (out_b - out_a), in one pass: (..., L, Ev)
    out = torch.lerp(out_a, out_b, share_b[..., None])
    return out, top + total.log()

