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
Where a row's keys come in many small parts at once (the kept tiles of the
block-sparse PyTorch path, ``block_sparse._block_sparse_torch``),
``merge_parts`` merges them all by row in one scatter. Its parts come from
``part_softmax``, the unnormalised core that ``block_softmax`` also uses:
each part's weighted values are held once, unnormalised, and rescaled in
place, rather than normalised and then reweighted (twice the memory,
gigabytes for the identity values that draw attention maps).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._validation import check_non_negative_int, check_tensor

__all__ = ["block_softmax", "merge_parts", "merge_softmax", "part_softmax"]


def part_softmax(
    scores: Tensor, value: Tensor, *, overwrite_scores: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """Unnormalised softmax attention over one part of the keys.

    ``scores (..., L, S)`` hold ``-inf`` where a key is hidden; ``value
    (..., S, Ev)``. Returns ``(numerator, top, total)``: the weighted
    values ``exp(scores - top) @ value (..., L, Ev)``, each row's largest
    score ``top (..., L)`` (``-inf`` for a row with no allowed key,
    detached) and its weights' sum ``total (..., L)``. The softmax is
    ``numerator / total``. With ``overwrite_scores`` the weights are
    computed in the scores' buffer (a block of memory saved; not for
    autograd).
    """
    if scores.shape[-1] == 0:  # no key at all
        numerator = value.new_zeros(*scores.shape[:-1], value.shape[-1])
        top = scores.new_full(scores.shape[:-1], float("-inf"))
        return numerator, top, scores.new_zeros(scores.shape[:-1])
    top = scores.amax(-1).detach()  # (..., L)
    shift = top.masked_fill(top == float("-inf"), 0.0)[..., None]
    if overwrite_scores:
        weights = scores.sub_(shift).exp_()  # hidden -> 0
    else:
        weights = torch.exp(scores - shift)  # (..., L, S)
    return weights @ value, top, weights.sum(-1)


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
    numerator, top, total = part_softmax(
        scores, value, overwrite_scores=overwrite_scores
    )
    norm = total.masked_fill(total == 0, 1.0)[..., None]  # (..., L, 1)
    top = top.masked_fill(top == float("-inf"), 0.0)
    return numerator.div_(norm), top + total.log()


def merge_parts(
    numerator: Tensor, top: Tensor, total: Tensor, rows: Tensor, n_rows: int
) -> Tensor:
    """One softmax per row from many parts, each part one row's keys.

    ``numerator (N, P, ..., Ev)``, ``top`` and ``total (N, P, ...)`` are
    ``part_softmax``'s outputs for ``P`` parts; part ``p`` holds keys of
    row ``rows[p]`` (``rows (P,)`` int64, values below ``n_rows``). Each
    part is rescaled to its row's largest score, in place (the numerators
    are overwritten), and the parts of a row are summed. Returns the
    softmax ``(N, n_rows, ..., Ev)``, zeros for a row with no key.
    """
    _check_parts(numerator, top, total, rows, n_rows)
    index = rows.view(1, -1, *([1] * (top.dim() - 2))).expand_as(top)
    row_top = top.new_full(
        (top.shape[0], n_rows, *top.shape[2:]), float("-inf")
    )
    row_top = row_top.scatter_reduce(1, index, top, "amax")
    row_top = row_top.masked_fill(row_top == float("-inf"), 0.0)
    rescale = torch.exp(top - row_top[:, rows])  # (N, P, ...), 0 if empty
    numerator = numerator.mul_(rescale[..., None])
    row_total = total.new_zeros(row_top.shape).index_add(
        1, rows, total * rescale
    )
    out = numerator.new_zeros(*row_top.shape, numerator.shape[-1])
    out = out.index_add(1, rows, numerator)
    return out / row_total.masked_fill(row_total == 0, 1.0)[..., None]


def _check_parts(
    numerator: object, top: object, total: object, rows: object, n_rows: int
) -> None:
    """Raise a ValueError unless ``merge_parts``'s arguments fit together."""
    for name, tensor in (
        ("numerator", numerator),
        ("top", top),
        ("total", total),
        ("rows", rows),
    ):
        check_tensor(name, tensor)
    n_rows = check_non_negative_int("n_rows", n_rows)
    if top.dim() < 2 or total.shape != top.shape:
        raise ValueError(
            "top and total must share one shape (N, P, ...), as "
            f"part_softmax returns them; got {tuple(top.shape)} and "
            f"{tuple(total.shape)}."
        )
    if numerator.shape[:-1] != top.shape:
        raise ValueError(
            f"numerator must be shaped {(*top.shape, 'Ev')} (top's shape "
            f"and the values' features); got {tuple(numerator.shape)}."
        )
    if rows.dim() != 1 or rows.dtype != torch.int64:
        raise ValueError(
            "rows must be a 1-D int64 tensor, one row index per part; got "
            f"shape {tuple(rows.shape)} and dtype {rows.dtype}."
        )
    if rows.numel() != top.shape[1]:
        raise ValueError(
            f"rows has {rows.numel()} entries for {top.shape[1]} parts "
            "(top.shape[1]): give one row index per part."
        )
    if rows.numel() and not 0 <= int(rows.min()) <= int(rows.max()) < n_rows:
        raise ValueError(
            f"rows must lie in [0, n_rows = {n_rows}); got values from "
            f"{int(rows.min())} to {int(rows.max())}. Raise n_rows to the "
            "number of output rows."
        )


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
