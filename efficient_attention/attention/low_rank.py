"""Low-rank attention: a few key summaries stand in for all ``S`` keys.

Two ways to approximate the ``L x S`` attention matrix by one of rank ``r``
that is never formed: Linformer ("Linformer: Self-Attention with Linear
Complexity", Wang et al. 2020, arXiv 2006.04768) projects keys and values
from length ``S`` to ``r`` with fixed matrices; Nyströmformer
("Nyströmformer: A Nyström-Based Algorithm for Approximating
Self-Attention", Xiong et al. 2021, arXiv 2102.03902) picks ``m`` landmark
queries and keys (segment means, or sampled columns) and rebuilds the
matrix as ``softmax(Q K~^T) pinv(softmax(Q~ K~^T)) softmax(Q~ K^T)``. Both
cost ``O((L + S) r)`` per head instead of ``O(L S)``. The chapter "Low-rank
attention" teaches them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .._validation import (
    check_device_here,
    check_dtype,
    check_finite_scores,
    check_generator,
    check_int,
    check_positive_int,
    check_qkv,
    check_scale,
    check_sequence,
    check_tensor,
)

LANDMARKS = ("segment-means", "uniform", "key-norm")
"""How ``nystrom_attention`` chooses its landmarks."""


def make_linformer_projections(
    seq_len: int,
    rank: int,
    *,
    generator: torch.Generator | None = None,
    kind: str = "gaussian",
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """A ``rank x seq_len`` projection for ``linformer_attention``.

    ``kind="gaussian"``: entries drawn from ``N(0, 1/rank)`` (a
    Johnson-Lindenstrauss projection, as in the Linformer paper's analysis;
    the paper then learns them), on the CPU with ``generator`` and then
    moved, so one seed gives one matrix everywhere. ``kind="mean"``: row
    ``s`` averages the ``s``-th of ``rank`` consecutive segments (the
    pooling the paper lists as an alternative; no randomness, and with
    ``rank = seq_len`` the identity).

    Args:
        seq_len: ``S``, the number of keys it projects (>= 1).
        rank: ``r``, the number of projected keys (>= 1).
        generator: a ``torch.Generator`` on the CPU (for ``"gaussian"``).
        kind: ``"gaussian"`` or ``"mean"``.
        dtype: of the result, a floating-point ``torch.dtype`` or its name
            (``"float16"``). device: of the result.

    Returns:
        ``(r, S)``; pass it as ``proj_k`` (and ``proj_v``).

    Raises:
        ValueError: a size that is not a positive int, ``rank > seq_len``
            for ``"mean"``, an unknown kind, a missing generator, a dtype
            that is not floating point or a device name torch does not
            know.
    """
    seq_len = check_positive_int("seq_len", seq_len)
    rank = check_positive_int("rank", rank)
    dtype = check_dtype("dtype", dtype, floating=True)
    if device is not None:
        device = check_device_here("device", device)
    if kind == "mean":
        if rank > seq_len:
            raise ValueError(
                f"rank must be at most seq_len ({seq_len}) for kind='mean'; "
                f"got {rank}."
            )
        which = torch.arange(seq_len) * rank // seq_len  # (S,) segment
        counts = torch.bincount(which, minlength=rank).double()  # (r,)
        pooled = torch.zeros(rank, seq_len, dtype=torch.float64)
        pooled[which, torch.arange(seq_len)] = 1 / counts[which]  # (r, S)
        return pooled.to(dtype=dtype, device=device)
    if kind != "gaussian":
        raise ValueError(f"kind must be 'gaussian' or 'mean'; got {kind!r}.")
    check_generator("generator", generator)
    draw = torch.randn(rank, seq_len, generator=generator, dtype=torch.float64)
    return (draw / math.sqrt(rank)).to(dtype=dtype, device=device)


def linformer_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    proj_k: Tensor,
    proj_v: Tensor | None = None,
    scale: float | None = None,
) -> Tensor:
    """Softmax attention over ``r`` projected keys and values (Linformer).

    Args:
        query: ``(..., L, E)``. key: ``(..., S, E)``. value: ``(..., S, Ev)``.
        proj_k: ``(r, S)`` or broadcastable ``(..., r, S)``: mixes the
            ``S`` keys into ``r`` (``make_linformer_projections``).
        proj_v: the same for values; None shares ``proj_k``.
        scale: a finite real number; None means ``1 / sqrt(E)``.

    Returns:
        ``(..., L, Ev)`` in the query's dtype (half precision is computed
        in float32). ``r = 0`` or ``S = 0``: zeros (nothing to attend).

    Raises:
        ValueError: shapes, dtypes or devices that do not fit (a projection
            whose last dimension is not ``S``, or of another dtype or
            device than ``key``), a bad scale, scores that overflow.

    Shape:
        ``...`` batch ``B`` and heads ``H``; ``L`` queries, ``S`` keys,
        ``r`` projected keys, ``E``/``Ev`` query/value features.

    Complexity:
        time ``O(r S (E + Ev) + L r (E + Ev))``; memory ``O(L r)``.

    Equivalent to:
        ``dense_attention(query, proj_k @ key, proj_v @ value)``; with
        ``proj_k = proj_v = torch.eye(S)`` it is exact attention.
    """
    check_qkv(query, key, value)
    scale = check_scale(scale)
    proj_k = _check_projection("proj_k", proj_k, key)
    proj_v = proj_k if proj_v is None else proj_v
    proj_v = _check_projection("proj_v", proj_v, key)
    if proj_k.shape[-2] != proj_v.shape[-2]:
        raise ValueError(
            f"proj_k and proj_v must project to one rank r (dimension -2); "
            f"got {tuple(proj_k.shape)} and {tuple(proj_v.shape)}."
        )
    lead = query.shape[:-2]
    q, k, v, pk, pv = _compute_dtype(query, key, value, proj_k, proj_v)
    k_small = pk @ k  # (..., r, S) @ (..., S, E) -> (..., r, E)
    v_small = pv @ v  # (..., r, S) @ (..., S, Ev) -> (..., r, Ev)
    if k_small.shape[-2] == 0 or query.shape[-2] == 0:
        return query.new_zeros(*query.shape[:-1], value.shape[-1])
    k_small = k_small.expand(*lead, *k_small.shape[-2:])
    v_small = v_small.expand(*lead, *v_small.shape[-2:])
    out = F.scaled_dot_product_attention(q, k_small, v_small, scale=scale)
    if not bool(torch.isfinite(out.sum())):  # overflow, or inf/NaN input
        used = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
        check_finite_scores(q @ k_small.transpose(-2, -1) * used, used)
    return out.to(query.dtype)


def _check_projection(name: str, proj: object, key: Tensor) -> Tensor:
    """A projection ``(..., r, S)`` of ``key``'s dtype and device."""
    check_tensor(name, proj)
    S = key.shape[-2]
    if proj.dim() < 2 or proj.shape[-1] != S:
        raise ValueError(
            f"{name} must be shaped (r, S) = (r, {S}) to project the {S} "
            f"keys; got {tuple(proj.shape)}. Make one with "
            f"make_linformer_projections({S}, r, generator=...)."
        )
    lead, own = key.shape[:-2], proj.shape[:-2]
    if len(own) > len(lead) or any(
        p not in (1, n) for p, n in zip(reversed(own), reversed(lead))
    ):
        raise ValueError(
            f"{name}'s leading dimensions {tuple(proj.shape[:-2])} must "
            f"broadcast to the key's {tuple(lead)} (each 1 or equal); give "
            f"one (r, S) projection, or one per leading index."
        )
    if proj.dtype != key.dtype or proj.device != key.device:
        raise ValueError(
            f"{name} must have the key's dtype and device ({key.dtype}, "
            f"{key.device}); got {proj.dtype}, {proj.device}. Convert it "
            f"with {name}.to(key)."
        )
    return proj


def _compute_dtype(*tensors: Tensor) -> tuple[Tensor, ...]:
    """The tensors in float32 if half precision, else as they are."""
    if tensors[0].dtype in (torch.float16, torch.bfloat16):
        return tuple(t.float() for t in tensors)
    return tensors


def segment_means(x: Tensor, segments: int) -> Tensor:
    """Means of ``segments`` consecutive, near-equal runs of positions.

    Args:
        x: ``(..., n, E)``.
        segments: ``m`` with ``1 <= m <= n``; run ``s`` holds positions
            ``i`` with ``floor(i * m / n) == s`` (sizes differ by at most
            one when ``m`` does not divide ``n``).

    Returns:
        ``(..., m, E)``.

    Raises:
        ValueError: ``x`` not a tensor of rank >= 2, or ``segments`` not
            an int in ``[1, n]`` (a segment without positions has no mean).
    """
    check_sequence("x", x)
    n = x.shape[-2]
    segments = check_positive_int("segments", segments)
    if segments > n:
        raise ValueError(
            f"segments must be at most the {n} positions of x (dimension "
            f"-2 of shape {tuple(x.shape)}); got {segments}."
        )
    if n % segments == 0:  # (..., m, n/m, E) -> (..., m, E)
        return x.unflatten(-2, (segments, n // segments)).mean(-2)
    which = torch.arange(n, device=x.device) * segments // n  # (n,)
    sums = x.new_zeros(*x.shape[:-2], segments, x.shape[-1])
    sums.index_add_(-2, which, x)  # (..., m, E)
    counts = torch.bincount(which, minlength=segments).to(x.dtype)
    return sums / counts[:, None]  # (..., m, E)


def iterative_pinv(matrix: Tensor, *, iterations: int = 6) -> Tensor:
    """Moore-Penrose pseudo-inverse by Nyströmformer's Newton-type iteration.

    ``Z <- Z (13 I - A Z (15 I - A Z (7 I - A Z))) / 4`` from
    ``Z0 = A^T / (||A||_1 ||A||_inf)``: matmuls only (fast on any device,
    stable in float32, unlike an explicit inverse of a near-singular
    softmax matrix), converging to ``pinv(A)``.

    Args:
        matrix: ``(..., m, m)``.
        iterations: a non-negative int; 6 is Nyströmformer's choice.

    Returns:
        ``(..., m, m)``; zeros for a zero matrix (its pseudo-inverse).

    Raises:
        ValueError: ``matrix`` not a square floating-point tensor of rank
            >= 2, or a negative ``iterations``.
    """
    iterations = check_int("iterations", iterations, 0)
    check_sequence("matrix", matrix)
    if matrix.shape[-1] != matrix.shape[-2] or not (
        matrix.is_floating_point()
    ):
        raise ValueError(
            f"matrix must be a square (..., m, m) floating-point tensor; "
            f"got shape {tuple(matrix.shape)} of dtype {matrix.dtype}."
        )
    a = matrix
    norm_1 = a.abs().sum(-2).amax(-1)  # (...,) largest column sum
    norm_inf = a.abs().sum(-1).amax(-1)  # (...,) largest row sum
    norms = norm_1 * norm_inf  # (...,); 0 only for a zero matrix
    # a zero matrix starts (and stays) at its pseudo-inverse, zero
    z = a.transpose(-2, -1) / norms.masked_fill(norms == 0, 1)[..., None, None]
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    for _ in range(iterations):
        az = a @ z  # (..., m, m)
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


def nystrom_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    num_landmarks: int,
    landmarks: str = "segment-means",
    generator: torch.Generator | None = None,
    pinv_iterations: int = 6,
    scale: float | None = None,
) -> Tensor:
    """Attention rebuilt from ``m`` landmarks by the Nyström method.

    ``softmax(Q K~^T) pinv(softmax(Q~ K~^T)) softmax(Q~ K^T) V``, where the
    landmark queries ``Q~`` and keys ``K~`` are the means of ``m``
    consecutive segments (Nyströmformer), or ``m`` positions sampled
    without replacement (column sampling): uniformly, or with probability
    proportional to the key's norm.

    Args:
        query: ``(..., L, E)``. key: ``(..., S, E)``. value: ``(..., S, Ev)``.
        num_landmarks: ``m``, ``1 <= m <= min(L, S)``.
        landmarks: ``"segment-means"``, ``"uniform"`` or ``"key-norm"``;
            the sampled ones need self-attention (``L == S``: the landmark
            query and key are at one position) and a ``generator``.
        generator: a ``torch.Generator`` on the CPU that draws the sampled
            positions (one draw per leading index); unused for segment means.
        pinv_iterations: iterations of ``iterative_pinv`` (more: closer to
            the exact pseudo-inverse).
        scale: a finite real number; None means ``1 / sqrt(E)``.

    Returns:
        ``(..., L, Ev)`` in the query's dtype; zeros when ``S = 0``.

    Raises:
        ValueError: shapes that do not fit, ``m`` out of range, an unknown
            ``landmarks``, sampling without a generator or with
            ``L != S``, a bad scale, scores that overflow.

    Shape:
        ``...`` batch ``B`` and heads ``H``; ``m`` landmarks.

    Complexity:
        time ``O((L + S) m (E + Ev) + m^3 * iterations)``; memory
        ``O((L + S) m)``.

    Equivalent to:
        ``dense_attention(query, key, value)`` when ``m = L = S`` (every
        position its own landmark) and the pseudo-inverse has converged.
    """
    check_qkv(query, key, value)
    scale = check_scale(scale)
    m = check_positive_int("num_landmarks", num_landmarks)
    if landmarks not in LANDMARKS:
        raise ValueError(
            f"landmarks must be one of {LANDMARKS}; got {landmarks!r}."
        )
    pinv_iterations = check_int("pinv_iterations", pinv_iterations, 0)
    L, S = query.shape[-2], key.shape[-2]
    sampled = landmarks != "segment-means"
    if sampled:
        check_generator("generator", generator)
        if L != S:
            raise ValueError(
                f"landmarks={landmarks!r} samples positions shared by "
                f"queries and keys, so it needs L == S; got L={L}, S={S}. "
                f"Use landmarks='segment-means'."
            )
    if L == 0 or S == 0:
        return query.new_zeros(*query.shape[:-1], value.shape[-1])
    if m > min(L, S):
        raise ValueError(
            f"num_landmarks must be at most min(L, S) = {min(L, S)}; got "
            f"{m}. Use fewer landmarks."
        )
    q, k, v = _compute_dtype(query, key, value)
    used = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    q = q * used
    if sampled:
        where = _sample_positions(key, m, landmarks, generator)  # (..., m)
        index = where[..., None].expand(*where.shape, q.shape[-1])
        q_land = q.gather(-2, index)  # (..., m, E)
        k_land = k.gather(-2, index)  # (..., m, E)
    else:
        q_land = segment_means(q, m)  # (..., m, E)
        k_land = segment_means(k, m)  # (..., m, E)
    kernel_2 = _softmax_scores(q_land, k_land, used)  # (..., m, m)
    inverse = iterative_pinv(kernel_2, iterations=pinv_iterations)
    # softmax(Q~ K^T) V: fused, no (m, S) matrix kept; (..., m, Ev)
    landmark_out = F.scaled_dot_product_attention(q_land, k, v, scale=1.0)
    summary = inverse @ landmark_out  # (..., m, m) @ (..., m, Ev)
    # softmax(Q K~^T) (pinv W softmax(Q~ K^T) V): fused; (..., L, Ev)
    out = F.scaled_dot_product_attention(q, k_land, summary, scale=1.0)
    if not bool(torch.isfinite(out.sum())):  # only overflow gets here
        _softmax_scores(q, k_land, used)  # raises if the scores overflow
        _softmax_scores(q_land, k, used)
    return out.to(query.dtype)


def _softmax_scores(q: Tensor, k: Tensor, scale: float) -> Tensor:
    """``softmax(q @ k^T)`` for an already scaled ``q``; refuses overflow."""
    scores = q @ k.transpose(-2, -1)  # (..., n, E) @ (..., E, p) -> (n, p)
    check_finite_scores(scores, scale)
    return torch.softmax(scores, dim=-1)


def _sample_positions(
    key: Tensor, m: int, how: str, generator: torch.Generator
) -> Tensor:
    """``m`` distinct positions per leading index, ``(..., m)`` int64."""
    lead, S = key.shape[:-2], key.shape[-2]
    if how == "uniform":
        weights = torch.ones(math.prod(lead), S, dtype=torch.float64)
    else:  # key-norm; a floor keeps zero keys drawable
        norms = key.detach().double().norm(dim=-1).reshape(-1, S).cpu()
        weights = norms.nan_to_num(0.0, 1.0, 0.0).clamp_min(1e-30)
        weights = weights / weights.amax(-1, keepdim=True).clamp_min(1e-30)
        weights = weights.clamp_min(1e-30)
    if weights.shape[0] == 0:
        return torch.zeros(*lead, m, dtype=torch.long, device=key.device)
    draw = torch.multinomial(
        weights, m, replacement=False, generator=generator
    )
    return draw.reshape(*lead, m).to(key.device)  # (..., m)


__all__ = [
    "LANDMARKS",
    "iterative_pinv",
    "linformer_attention",
    "make_linformer_projections",
    "nystrom_attention",
    "segment_means",
]
