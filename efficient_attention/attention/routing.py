"""Learned (content-based) sparse patterns: which keys a query attends
depends on the query and the keys.

Routing attention (Roy et al. 2020, arXiv 2003.05997): spherical k-means
clusters of queries and keys (``kmeans_clusters``), each query attending
the keys of its own cluster, run as a block layout after sorting by
cluster on the block-sparse engine (``block_sparse.py``).
``top_k_attention`` keeps the largest scores of every row: exact but as
slow as dense (it computes every score). Chapter "Sparse attention"
teaches both.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._validation import (
    check_finite_scores,
    check_non_negative_int,
    check_positive_int,
    check_qkv,
    check_scale,
    check_tensor,
)
from .block_sparse import (
    BlockPattern,
    cap_block_size,
    check_backend,
    layout_pattern,
    run_pattern,
)

__all__ = [
    "kmeans_clusters",
    "routing_attention",
    "top_k_attention",
]


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
    check_backend(backend)
    block_size = cap_block_size(block_size, query.shape[-2], key.shape[-2])
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
        return run_pattern(
            query,
            key,
            value,
            layout_pattern(
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
    out = run_pattern(q[None], k[None], v[None], pattern, scale, backend)[0]
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
    return layout_pattern(layout, bs, L, S, partial, element)


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
