"""Kernel attention: softmax attention as a dot product of random features.

Performer ("Rethinking Attention with Performers", Choromanski et al. 2020,
arXiv 2009.14794) writes ``exp(q . k)`` as ``E[phi(q) . phi(k)]`` with
positive random features ``phi(x) = exp(W x - |x|^2 / 2) / sqrt(m)``
(FAVOR+, rows of ``W`` orthogonal). Attention then factors as
``phi(Q) (phi(K)^T V)``: linear in the length, and causal attention becomes
a prefix sum of ``phi(k) v^T``. The chapter "Low-rank attention" teaches it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._validation import (
    check_bool,
    check_generator,
    check_positive_int,
    check_qkv,
    check_scale,
    check_tensor,
    scores_not_finite,
)

CAUSAL_CHUNK = 64
"""Positions per chunk of the causal form: inside a chunk a ``64 x 64``
masked product, across chunks a prefix sum of ``phi(K)^T V``."""

GROUP_ELEMENTS = 2**20
"""Features are computed a block of rows (or of heads, causal) at a time,
with at most about this many entries (4 MiB in float32) per block."""


def make_performer_features(
    num_features: int,
    dim: int,
    *,
    generator: torch.Generator,
    orthogonal: bool = True,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Random projections ``W`` for ``performer_attention`` (FAVOR+).

    Rows are Gaussian ``N(0, I_E)`` vectors; with ``orthogonal=True`` each
    block of ``E`` rows is made orthogonal (QR of a Gaussian matrix) and
    rescaled to the norms of independent Gaussian vectors, which keeps
    every row's distribution and lowers the estimator's variance.
    Drawn on the CPU in float64 with ``generator``, then cast and moved.

    Args:
        num_features: ``m`` (>= 1).
        dim: ``E``, the query/key features (>= 1).
        generator: a ``torch.Generator`` on the CPU.
        orthogonal: True (FAVOR+) or False (i.i.d. rows).
        dtype, device: of the result.

    Returns:
        ``(m, E)``.

    Raises:
        ValueError: a size that is not a positive int, a generator or flag
            of the wrong type.
    """
    m = check_positive_int("num_features", num_features)
    dim = check_positive_int("dim", dim)
    check_generator("generator", generator)
    check_bool("orthogonal", orthogonal)
    g = torch.randn(m, dim, generator=generator, dtype=torch.float64)
    if orthogonal:
        blocks = []
        for start in range(0, m, dim):
            square = torch.randn(dim, dim, generator=generator, dtype=g.dtype)
            basis, r = torch.linalg.qr(square)  # (E, E) orthonormal columns
            # signs of R's diagonal: without them the columns lean towards
            # one half-space and the kernel estimate is biased
            basis = basis * r.diagonal().sign()  # (E, E), uniformly random
            blocks.append(basis.T[: m - start])  # rows orthonormal
        directions = torch.cat(blocks)  # (m, E)
        g = directions * g.norm(dim=-1, keepdim=True)  # chi(E) norms
    return g.to(dtype=dtype, device=device)


def softmax_kernel_features(x: Tensor, features: Tensor) -> Tensor:
    """FAVOR+ positive random features ``phi(x)``, unstabilised.

    ``phi(x) = exp(W x - |x|^2 / 2) / sqrt(m)``, so that
    ``E_W[phi(x) . phi(y)] = exp(x . y)`` exactly (an unbiased estimate of
    the softmax kernel).

    Args:
        x: ``(..., n, E)``. features: ``W``, ``(m, E)``.

    Returns:
        ``(..., n, m)``.
    """
    projected = x @ features.transpose(-2, -1)  # (..., n, E) @ (E, m)
    half_norm = x.pow(2).sum(-1, keepdim=True) / 2  # (..., n, 1)
    return torch.exp(projected - half_norm) / math.sqrt(features.shape[0])


def performer_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    features: Tensor,
    is_causal: bool = False,
    scale: float | None = None,
) -> Tensor:
    """Softmax attention estimated with ``m`` positive random features.

    ``out = phi(Q) (phi(K)^T [V, 1])``, the last column being the softmax's
    normaliser, with ``phi`` of ``softmax_kernel_features`` applied to
    ``sqrt(scale) * Q`` and ``sqrt(scale) * K``. Each query's features are
    divided by their largest entry and all keys' by the largest key entry
    of the head: constants that cancel between numerator and normaliser
    and keep ``exp`` from overflowing. Causal: query ``i`` attends keys
    ``j <= i`` through chunked prefix sums; no ``L x S`` matrix is built.

    Args:
        query: ``(..., L, E)``. key: ``(..., S, E)``. value: ``(..., S, Ev)``.
        features: ``(m, E)`` from ``make_performer_features``, of the
            query's dtype and device.
        is_causal: True or False; True needs ``L == S``.
        scale: a finite real number; None means ``1 / sqrt(E)``.

    Returns:
        ``(..., L, Ev)`` in the query's dtype (half precision computed in
        float32); zeros when ``S = 0``.

    Raises:
        ValueError: shapes, dtypes or devices that do not fit, features of
            the wrong shape, ``is_causal`` with ``L != S``, a bad scale,
            inputs so large that the features overflow.

    Shape:
        ``...`` batch ``B`` and heads ``H``; ``m`` random features.

    Complexity:
        time ``O((L + S) m (E + Ev))``; memory ``O((L + S) m)`` (causal:
        plus ``O(L m Ev / 64)`` for the chunk prefix sums).

    Equivalent to:
        ``dense_attention(query, key, value, is_causal=is_causal)`` in
        expectation over the features' draw of ``exp(q . k)``; the error
        falls like ``1 / sqrt(m)``.
    """
    check_qkv(query, key, value)
    scale = check_scale(scale)
    is_causal = check_bool("is_causal", is_causal)
    check_tensor("features", features)
    E = query.shape[-1]
    if features.dim() != 2 or features.shape[-1] != E or not len(features):
        raise ValueError(
            f"features must be shaped (m, E) = (m, {E}) with m >= 1; got "
            f"{tuple(features.shape)}. Make them with "
            f"make_performer_features(m, {E}, generator=...)."
        )
    if features.dtype != query.dtype or features.device != query.device:
        raise ValueError(
            f"features must have the query's dtype and device "
            f"({query.dtype}, {query.device}); got {features.dtype}, "
            f"{features.device}. Convert them with features.to(query)."
        )
    L, S = query.shape[-2], key.shape[-2]
    if is_causal and L != S:
        raise ValueError(
            f"is_causal=True needs L == S (query i attends keys j <= i); "
            f"got L={L}, S={S}."
        )
    if L == 0 or S == 0 or math.prod(query.shape[:-2]) == 0:
        return query.new_zeros(*query.shape[:-1], value.shape[-1])
    half = query.dtype in (torch.float16, torch.bfloat16)
    compute = torch.float32 if half else query.dtype
    q, k, v, w = (t.to(compute) for t in (query, key, value, features))
    used = 1 / math.sqrt(E) if scale is None else scale
    root = math.sqrt(abs(used))
    q = q * (math.copysign(root, used))  # q' . k' = scale * q . k
    k = k * root
    lead, N, Ev = query.shape[:-2], math.prod(query.shape[:-2]), v.shape[-1]
    q, k, v = q.reshape(N, L, E), k.reshape(N, S, E), v.reshape(N, S, Ev)
    v1 = torch.cat([v, v.new_ones(N, S, 1)], dim=-1)  # (N, S, Ev + 1)
    if is_causal:
        out1 = torch.cat(
            [
                _causal_heads(q[part], k[part], v1[part], w)
                for part in _chunks(N, max(L, S) * len(w))
            ]
        )  # (N, L, Ev + 1)
    else:
        state = _key_state(k, v1, w)  # (N, m, Ev + 1)
        out1 = torch.cat(
            [
                _query_features(q[:, part], w) @ state  # (N, rows, Ev + 1)
                for part in _chunks(L, N * len(w))
            ],
            dim=1,
        )  # (N, L, Ev + 1)
    numerator, normaliser = out1[..., :-1], out1[..., -1:]
    tiny = torch.finfo(compute).tiny
    out = numerator / normaliser.clamp_min(tiny)  # (N, L, Ev)
    return out.reshape(*lead, L, Ev).to(query.dtype)


def _chunks(n: int, per_item: int) -> list[slice]:
    """Slices of ``range(n)`` with about ``GROUP_ELEMENTS / per_item``
    items each: feature blocks small enough for the allocator to reuse
    their memory (no fresh pages, so no page faults, at every call)."""
    size = max(1, GROUP_ELEMENTS // max(per_item, 1))
    return [slice(i, i + size) for i in range(0, n, size)]


def _log_features(x: Tensor, w: Tensor) -> Tensor:
    """``W x - |x|^2 / 2``: the log of ``phi(x)`` up to a constant."""
    features = x @ w.transpose(-2, -1)  # (N, n, E) @ (E, m) -> (N, n, m)
    features -= x.pow(2).sum(-1, keepdim=True) / 2  # (N, n, 1)
    return features


def _largest(features: Tensor, dims: tuple[int, ...]) -> Tensor:
    """The largest log-feature (a constant that cancels), or a ValueError
    when the inputs are so large that the features are not finite."""
    top = features.detach().amax(dims, keepdim=True)
    if not bool(torch.isfinite(top).all()):
        raise scores_not_finite(0.0, features.dtype)
    return top


def _query_features(q: Tensor, w: Tensor) -> Tensor:
    """``phi(q)`` divided by its largest entry, row by row: ``(N, n, m)``."""
    features = _log_features(q, w)
    features -= _largest(features, (-1,))  # (N, n, 1)
    return features.exp_()


def _key_state(k: Tensor, v1: Tensor, w: Tensor) -> Tensor:
    """``phi(K)^T [V, 1]`` over chunks of keys: ``(N, m, Ev + 1)``.

    The features are divided by the largest so far, per head; when a later
    chunk holds a larger one, the sum is rescaled (as online softmax does).
    """
    state = top = None
    for part in _chunks(k.shape[1], k.shape[0] * len(w)):
        features = _log_features(k[:, part], w)  # (N, rows, m)
        largest = _largest(features, (-2, -1))  # (N, 1, 1)
        if state is None:
            top, rescale = largest, None
        else:
            new_top = torch.maximum(top, largest)
            rescale, top = torch.exp(top - new_top), new_top
        features -= top
        # (N, m, rows) @ (N, rows, Ev + 1) -> (N, m, Ev + 1)
        update = features.exp_().transpose(-2, -1) @ v1[:, part]
        state = update if rescale is None else state * rescale + update
    return state


def _causal_heads(q: Tensor, k: Tensor, v1: Tensor, w: Tensor) -> Tensor:
    """The causal numerator and normaliser of a group of heads."""
    phi_q = _query_features(q, w)  # (N, L, m)
    phi_k = _log_features(k, w)
    phi_k = (phi_k - _largest(phi_k, (-2, -1))).exp_()  # (N, S, m)
    return _causal_products(phi_q, phi_k, v1)  # (N, L, Ev + 1)


def _causal_products(phi_q: Tensor, phi_k: Tensor, v1: Tensor) -> Tensor:
    """``sum_{j <= i} (phi(q_i) . phi(k_j)) v1_j`` for every ``i``.

    Positions are cut into chunks of ``CAUSAL_CHUNK``: the keys of earlier
    chunks reach a query through the prefix sum of ``phi(K)^T V`` per chunk,
    those of its own chunk through a small lower-triangular product.
    """
    L, m = phi_q.shape[-2:]
    c = CAUSAL_CHUNK
    n = -(-L // c)  # chunks
    pad = n * c - L
    if pad:  # zero features contribute nothing
        phi_q, phi_k, v1 = (
            torch.nn.functional.pad(t, (0, 0, 0, pad))
            for t in (phi_q, phi_k, v1)
        )
    qc = phi_q.unflatten(-2, (n, c))  # (..., n, c, m)
    kc = phi_k.unflatten(-2, (n, c))  # (..., n, c, m)
    vc = v1.unflatten(-2, (n, c))  # (..., n, c, Ev + 1)
    states = kc.transpose(-2, -1) @ vc  # (..., n, m, Ev + 1) per chunk
    before = torch.zeros_like(states)  # keys of the earlier chunks only
    before[..., 1:, :, :] = states[..., :-1, :, :].cumsum(-3)
    out = qc @ before  # (..., n, c, m) @ (..., n, m, Ev + 1)
    local = qc @ kc.transpose(-2, -1)  # (..., n, c, c)
    local = local.tril()  # key j <= query i inside the chunk
    out += local @ vc  # (..., n, c, c) @ (..., n, c, Ev + 1)
    return out.flatten(-3, -2)[..., :L, :]  # (..., L, Ev + 1)


__all__ = [
    "make_performer_features",
    "performer_attention",
    "softmax_kernel_features",
]
