"""Low-rank weights: matrix and tensor factorisations of a model's layers.

A dense layer ``y = W x + b`` with ``W`` of shape ``(out, in)`` costs
``out * in`` parameters and multiply-adds per token; its truncated SVD
``W ~ U_r S_r V_r^T`` costs ``r * (in + out)``, smaller when
``r < in * out / (in + out)`` (Eckart-Young: the best rank-``r``
approximation in Frobenius norm). The stacked per-head query, key and value
weights of an attention layer form a 4-way tensor ``(3, H, d, in)``; a Tucker
decomposition by higher-order SVD ("A Multilinear Singular Value
Decomposition", De Lathauwer et al. 2000) shares factors across heads and
projections. The chapter "Low-rank attention" (section "Low-rank weights")
applies both to the pretrained encoder.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .._validation import check_positive_int, check_real, check_tensor


class LowRankLinear(nn.Module):
    """``nn.Linear`` factored as two thinner layers: ``in -> r -> out``.

    ``forward(x) = second(first(x))`` with ``first.weight`` ``(r, in)``
    (no bias) and ``second.weight`` ``(out, r)`` plus the original bias.
    """

    def __init__(self, first: nn.Linear, second: nn.Linear) -> None:
        super().__init__()
        self.first = first
        self.second = second

    @property
    def rank(self) -> int:
        return self.first.out_features

    def forward(self, x: Tensor) -> Tensor:
        # (..., in) -> (..., r) -> (..., out)
        return self.second(self.first(x))


def rank_for_energy(singular_values: Tensor, energy: float) -> int:
    """The smallest rank whose singular values keep ``energy`` of the total
    ``sum(s^2)``.

    Args:
        singular_values: ``(k,)``, in decreasing order.
        energy: in ``(0, 1]``.

    Returns:
        An int in ``[1, k]``.

    Raises:
        ValueError: ``energy`` outside ``(0, 1]``.
    """
    energy = check_real("energy", energy)
    if not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1]; got {energy}.")
    share = singular_values.double().pow(2).cumsum(0)  # (k,)
    share = share / share[-1].clamp_min(torch.finfo(torch.float64).tiny)
    # a hair of slack so that energy=1 is reached despite rounding
    return int((share < energy - 1e-12).sum()) + 1


def factorize_linear(
    linear: nn.Linear, *, rank: int | None = None, energy: float | None = None
) -> LowRankLinear:
    """Truncated SVD of a linear layer at a rank or an energy.

    Args:
        linear: an ``nn.Linear``.
        rank: ``r`` with ``1 <= r <= min(in, out)``; or
        energy: keep the smallest rank holding this share of
            ``||W||_F^2``. Give exactly one of the two.

    Returns:
        A ``LowRankLinear`` on the layer's device and dtype, whose weight
        product is the best rank-``r`` approximation of ``linear.weight``
        (exact at ``r = min(in, out)``).

    Raises:
        ValueError: not an ``nn.Linear``, both or neither of ``rank`` and
            ``energy``, a rank out of range.

    Complexity:
        one SVD, ``O(in * out * min(in, out))``.
    """
    if not isinstance(linear, nn.Linear):
        raise ValueError(
            f"linear must be an nn.Linear; got {type(linear).__name__}."
        )
    if (rank is None) == (energy is None):
        raise ValueError("give exactly one of rank= and energy=.")
    weight = linear.weight.detach()
    u, s, vh = torch.linalg.svd(weight.double(), full_matrices=False)
    full = len(s)
    if energy is not None:
        rank = rank_for_energy(s, energy)
    rank = check_positive_int("rank", rank)
    if rank > full:
        raise ValueError(
            f"rank must be at most min(in, out) = {full}; got {rank}."
        )
    root = s[:rank].sqrt()  # split the singular values between factors
    first = nn.Linear(linear.in_features, rank, bias=False)
    second = nn.Linear(rank, linear.out_features, bias=linear.bias is not None)
    kind = {"dtype": weight.dtype, "device": weight.device}
    with torch.no_grad():
        first.weight.copy_((root[:, None] * vh[:rank]).to(**kind))  # (r, in)
        second.weight.copy_((u[:, :rank] * root).to(**kind))  # (out, r)
        if linear.bias is not None:
            second.bias.copy_(linear.bias)
    return LowRankLinear(first, second).to(**kind)


@dataclass
class Savings:
    """What ``low_rank_model`` changed."""

    layers: int
    """Linear layers replaced."""
    params_before: int
    """Parameters of the replaced layers before (weights and biases)."""
    params_after: int
    """... and after."""

    @property
    def ratio(self) -> float:
        """``params_after / params_before`` (also the FLOP ratio per token:
        a linear layer does one multiply-add per weight)."""
        return self.params_after / max(self.params_before, 1)


def low_rank_model(
    model: nn.Module,
    *,
    rank: int | None = None,
    energy: float | None = None,
    include: Callable[[str, nn.Linear], bool] | None = None,
) -> Savings:
    """Replace ``model``'s linear layers by truncated-SVD factors, in place.

    A layer is replaced only where the factors are smaller than it
    (``r * (in + out) < in * out``) and ``include(name, layer)`` says yes.

    Args:
        model: any ``nn.Module``.
        rank: one rank for every layer (capped at ``min(in, out)``); or
        energy: per layer, the rank that keeps this share of its energy.
        include: which layers (by qualified name); None means all.

    Returns:
        ``Savings``: layers replaced, and parameters before and after.

    Raises:
        ValueError: both or neither of ``rank`` and ``energy``, bad values.
    """
    if (rank is None) == (energy is None):
        raise ValueError("give exactly one of rank= and energy=.")
    if rank is not None:
        rank = check_positive_int("rank", rank)
    found = [
        (name, layer)
        for name, layer in model.named_modules()
        if isinstance(layer, nn.Linear)
        and (include is None or include(name, layer))
    ]
    savings = Savings(0, 0, 0)
    for name, layer in found:
        n_in, n_out = layer.in_features, layer.out_features
        if rank is not None:
            factors = factorize_linear(layer, rank=min(rank, n_in, n_out))
        else:
            factors = factorize_linear(layer, energy=energy)
        if factors.rank * (n_in + n_out) >= n_in * n_out:
            continue  # no saving: keep the dense layer
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, factors)
        savings.layers += 1
        savings.params_before += _count(layer)
        savings.params_after += _count(factors)
    return savings


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def stacked_head_weights(attention: nn.Module, heads: int) -> Tensor:
    """The query, key and value weights of an attention layer as a tensor.

    Args:
        attention: a module with ``query``, ``key`` and ``value``
            ``nn.Linear`` layers of one shape ``(H * d, in)`` (BERT's
            ``BertSelfAttention``).
        heads: ``H``.

    Returns:
        ``(3, H, d, in)``: ``[projection, head, feature, input]``.
    """
    heads = check_positive_int("heads", heads)
    weights = [
        getattr(attention, name).weight.detach()
        for name in ("query", "key", "value")
    ]
    out, n_in = weights[0].shape
    if out % heads:
        raise ValueError(f"heads ({heads}) must divide {out} output rows.")
    return torch.stack(weights).view(3, heads, out // heads, n_in)


def hosvd(tensor: Tensor, ranks: Sequence[int]) -> tuple[Tensor, list[Tensor]]:
    """Tucker decomposition by truncated higher-order SVD.

    Factor ``n`` holds the leading ``ranks[n]`` left singular vectors of the
    tensor unfolded along mode ``n``; the core is the tensor multiplied by
    every factor's transpose.

    Args:
        tensor: any ``(n_1, ..., n_k)`` tensor.
        ranks: ``k`` ints with ``1 <= ranks[i] <= n_i``.

    Returns:
        ``(core, factors)``: core ``(r_1, ..., r_k)``, factors ``(n_i, r_i)``
        with orthonormal columns. ``tucker_to_tensor`` rebuilds; exact
        when every ``r_i = n_i``.

    Raises:
        ValueError: ranks of the wrong length or out of range.
    """
    check_tensor("tensor", tensor)
    ranks = list(ranks)
    if len(ranks) != tensor.dim():
        raise ValueError(
            f"ranks must give one rank per dimension ({tensor.dim()}); "
            f"got {len(ranks)}."
        )
    factors = []
    for mode, (size, r) in enumerate(zip(tensor.shape, ranks)):
        r = check_positive_int(f"ranks[{mode}]", r)
        if r > size:
            raise ValueError(f"ranks[{mode}] must be at most {size}; got {r}.")
        unfolded = tensor.movedim(mode, 0).reshape(size, -1)  # (n_i, rest)
        u, _, _ = torch.linalg.svd(unfolded, full_matrices=False)
        factors.append(u[:, :r])  # (n_i, r_i)
    core = tensor
    for mode, factor in enumerate(factors):
        core = _mode_product(core, factor.T, mode)  # n_i -> r_i
    return core, factors


def tucker_to_tensor(core: Tensor, factors: Sequence[Tensor]) -> Tensor:
    """``core x_1 U_1 x_2 U_2 ... x_k U_k``: the tensor a Tucker form holds."""
    out = core
    for mode, factor in enumerate(factors):
        out = _mode_product(out, factor, mode)  # r_i -> n_i
    return out


def _mode_product(tensor: Tensor, matrix: Tensor, mode: int) -> Tensor:
    """Multiply ``tensor`` along dimension ``mode`` by ``matrix`` (p, n)."""
    moved = tensor.movedim(mode, -1)  # (..., n)
    return (moved @ matrix.T).movedim(-1, mode)  # (..., p) -> mode


def tucker_head_weights(
    attention: nn.Module, heads: int, ranks: Sequence[int]
) -> tuple[int, int]:
    """Replace an attention layer's query, key and value weights by their
    Tucker approximation (``hosvd`` of ``stacked_head_weights``), in place.

    The layer keeps its dense shape (it computes what the Tucker form
    holds); the return value says what storing the form would cost.

    Args:
        attention: as ``stacked_head_weights``. heads: ``H``.
        ranks: four ranks for ``(3, H, d, in)``.

    Returns:
        ``(before, after)``: numbers in the three weight matrices, and in
        the Tucker core and factors.
    """
    stacked = stacked_head_weights(attention, heads)  # (3, H, d, in)
    core, factors = hosvd(stacked.double(), ranks)
    approx = tucker_to_tensor(core, factors).to(stacked.dtype)
    with torch.no_grad():
        for i, name in enumerate(("query", "key", "value")):
            weight = getattr(attention, name).weight
            weight.copy_(approx[i].reshape(weight.shape))  # (H * d, in)
    return stacked.numel(), tucker_parameters(core, factors)


def tucker_parameters(core: Tensor, factors: Sequence[Tensor]) -> int:
    """Numbers stored by a Tucker form: the core and every factor."""
    return core.numel() + sum(f.numel() for f in factors)


__all__ = [
    "LowRankLinear",
    "Savings",
    "factorize_linear",
    "hosvd",
    "low_rank_model",
    "rank_for_energy",
    "stacked_head_weights",
    "tucker_head_weights",
    "tucker_parameters",
    "tucker_to_tensor",
]
