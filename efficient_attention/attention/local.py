"""Local attention: each query attends only a window of nearby keys.

Fixed windows as in Longformer (Beltagy et al. 2020, arXiv 2004.05150): a
``(left, right)`` window, dilated windows for a wider reach at the same cost,
and one window per head for several scales in one layer. NATTEN's border
rule (Hassani et al. 2022, arXiv 2204.07143), where a window slides inside
the sequence instead of being cut at its ends, is an option. Dynamic windows
are learned per head in the manner of Adaptive Attention Span (Sukhbaatar
et al. 2019, arXiv 1905.07799). Chapter "Local attention" teaches all of
them.

Window semantics (as flash-attn's ``window_size``): ``window=(left, right)``
lets query ``i`` attend key ``j`` iff ``i - left <= j <= i + right``; an int
``w`` means ``(w, w)``; causal local attention is ``(w, 0)``.

Three implementations compute the same numbers: ``_sliding_window_torch``,
a readable blocked version in PyTorch (autograd, any device and dtype); a
C++ kernel for CPUs (``csrc/sliding_window.cpp``, built on first use by
``cpu_kernels``) that skips everything outside the band, with a backward
pass that recomputes the band's weights (FlashAttention's way, so training
stores no scores); and compiled
FlexAttention with the window as its mask function (``flex.py``), PyTorch's
fused kernel on a GPU.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .. import cpu_kernels, masks
from .._validation import (
    check_finite_scores,
    check_positive_int,
    check_qkv,
    check_scale,
    check_window,
    scores_not_finite,
)
from . import flex

BORDERS = ("clip", "shift")
BACKENDS = ("auto", "kernel", "flex", "torch")
_TORCH_BLOCK = 64  # queries per block in the PyTorch version

__all__ = [
    "AdaptiveSpanAttention",
    "sliding_window_attention",
]


def sliding_window_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    window: int | tuple[int, int] | Sequence[tuple[int, int]],
    dilation: int | Sequence[int] = 1,
    border: str = "clip",
    scale: float | None = None,
    backend: str = "auto",
) -> Tensor:
    """Softmax attention over a window of keys around each query.

    Query ``i`` attends key ``j`` iff ``i - left * dilation <= j <= i +
    right * dilation`` and ``i - j`` is a multiple of ``dilation``. Query
    ``i`` and key ``j`` are positions counted from the start of each
    sequence, also when ``L != S`` (as in ``masks.sliding_window``).

    Args:
        query: ``(..., L, E)``. key: ``(..., S, E)``. value: ``(..., S, Ev)``.
        window: ``(left, right)`` keys on each side, or an int ``w`` meaning
            ``(w, w)``; ``(w, 0)`` is causal local attention, ``(1, 1)`` a
            centred window of 3 keys. A sequence of ``H`` pairs gives head
            ``h`` (dimension -3 of ``query``) its own window.
        dilation: the gap between attended keys (Longformer), an int >= 1 or
            one per head.
        border: ``"clip"`` cuts a window at the sequence's ends (tokens near
            an end see fewer keys); ``"shift"`` slides it inside the keys so
            that every query sees ``left + right + 1`` of them (NATTEN's
            rule; with ``dilation``, of its own residue class).
        scale: multiplies ``Q K^T``; None means ``1 / sqrt(E)``.
        backend: ``"kernel"`` the C++ CPU kernel, ``"flex"`` compiled
            FlexAttention (any device; on a CPU forward only, and the first
            call at each shape compiles for tens of seconds), ``"torch"``
            the PyTorch version, ``"auto"`` the kernel where it applies
            (CPU, float32, bfloat16 or float16, a compiler here; with or
            without gradients), FlexAttention on CUDA, else PyTorch (with a
            warning, once, saying why the fast path was not taken).

    Returns:
        ``(..., L, Ev)`` in the query's dtype. A query with no key in its
        window (only possible when ``L > S``) gets zeros. Only the scores
        inside the windows count, on both backends: a key (or query) that
        no window reaches may hold inf or NaN and changes nothing (the
        kernel never reads it; ``dense_attention`` with the window's mask
        would raise).

    Raises:
        ValueError: shapes, dtypes or devices that do not fit; a window side
            or dilation that is not an int (>= 0, >= 1); per-head values
            whose count is not the number of heads; an unknown border or
            backend; scores inside a window that are not finite (inf or
            NaN in the query or key, or an overflow).
        NotImplementedError: ``backend="kernel"`` for a tensor that is not
            on the CPU or is float64; ``backend="flex"``
            where FlexAttention cannot run (a gradient on a CPU, no AVX2).
        cpu_kernels.KernelUnavailable: ``backend="kernel"`` where the kernel
            cannot be built (the message says why).

    Shape:
        ``...`` any leading dimensions (batch ``B``, heads ``H``), ``L``
        queries, ``S`` keys, ``E`` query/key features, ``Ev`` value features.

    Complexity:
        time ``O(L * w * (E + Ev))`` for ``w = left + right + 1`` keys per
        query (about 2.5 times that for the backward pass), memory ``O(L *
        Ev)`` for the kernel, also when training; the PyTorch version
        stores ``O(L * (w + 64))`` scores.

    Equivalent to:
        ``dense_attention(query, key, value, attn_mask=masks.create_mask(
        masks.dilated_sliding_window(window, dilation), L, S))`` (with
        ``masks.shifted_window`` for ``border="shift"`` and
        ``masks.per_head`` for per-head windows).
    """
    check_qkv(query, key, value)
    scale = check_scale(scale)
    # Sides wider than the sequences change nothing, nor does a dilation
    # past their length; capping keeps the band and the integers small.
    L, S = query.shape[-2], key.shape[-2]
    left, right = _per_head_windows(window, query, cap=L + S)
    dilation = _per_head_dilation(dilation, query, cap=max(L, S, 1))
    if border not in BORDERS:
        raise ValueError(
            f"border must be one of {BORDERS}; got {border!r}. 'clip' cuts "
            f"windows at the ends, 'shift' slides them inside."
        )
    if backend not in BACKENDS:
        raise ValueError(
            f"backend must be one of {BACKENDS}; got {backend!r}."
        )
    shift = border == "shift"
    if scale is None:
        scale = 1.0 / math.sqrt(query.shape[-1]) if query.shape[-1] else 1.0
    if cpu_kernels.use_kernel(
        "sliding_window", backend, query, key, value, backward=True
    ):
        return _SlidingWindowKernel.apply(
            query, key, value, left, right, dilation, shift, scale
        )
    if flex.use_flex(backend, query, key, value, "sliding_window_attention"):
        sides = [tuple(s.flatten().tolist()) for s in (left, right, dilation)]
        out = flex.attempt(
            backend,
            "sliding_window_attention",
            lambda: flex.masked_flex_attention(
                query,
                key,
                value,
                _window_mask_mod(left, right, dilation, shift, S),
                cache_key=("window", *sides, shift),
                per_head=left.dim() + dilation.dim() > 0,
                scale=scale,
            ),
        )
        if out is not None:
            return out
    return _sliding_window_torch(
        query, key, value, left, right, dilation, shift, scale
    )


def _per_head_windows(
    window: object, query: Tensor, cap: int
) -> tuple[Tensor, Tensor]:
    """``window`` as two int64 tensors (left, right) that broadcast against
    the leading dimensions of ``query``: shape ``()`` or ``(H,)``; sides
    are capped at ``cap``."""
    if isinstance(window, Tensor):
        window = window.tolist()
    is_pair_list = (
        isinstance(window, Sequence)
        and not isinstance(window, str)
        and len(window) > 0
        and all(
            isinstance(w, Sequence) and not isinstance(w, str) for w in window
        )
    )
    if not is_pair_list:
        left, right = check_window(window)
        return torch.tensor(min(left, cap)), torch.tensor(min(right, cap))
    heads = _heads(query, "window", len(window))
    pairs = []
    for h, pair in enumerate(window):
        try:
            pairs.append([min(side, cap) for side in check_window(pair)])
        except ValueError as error:
            raise ValueError(f"window of head {h}: {error}") from None
    sides = torch.tensor(pairs, dtype=torch.int64).view(heads, 2)
    return sides[:, 0], sides[:, 1]


def _per_head_dilation(dilation: object, query: Tensor, cap: int) -> Tensor:
    """``dilation`` as an int64 tensor of shape ``()`` or ``(H,)``, capped
    at ``cap``."""
    if isinstance(dilation, Tensor):
        dilation = dilation.tolist()
    if isinstance(dilation, Sequence) and not isinstance(dilation, str):
        _heads(query, "dilation", len(dilation))
        values = [
            min(check_positive_int("dilation", d), cap) for d in dilation
        ]
        return torch.tensor(values, dtype=torch.int64)
    return torch.tensor(min(check_positive_int("dilation", dilation), cap))


def _heads(query: Tensor, name: str, count: int) -> int:
    """Check that ``count`` per-head values match the heads of ``query``."""
    if query.dim() < 3:
        raise ValueError(
            f"per-head {name} values need a heads dimension: query must be "
            f"(..., H, L, E); got shape {tuple(query.shape)}."
        )
    heads = query.shape[-3]
    if count != heads:
        raise ValueError(
            f"{name} has {count} per-head values but query has {heads} heads "
            f"(dimension -3 of shape {tuple(query.shape)}); give one per head."
        )
    return heads


def _window_mask_mod(
    left: Tensor, right: Tensor, dilation: Tensor, shift: bool, S: int
):
    """The window as a mask function (``masks``'), for ``S`` keys; with
    per-head sides or dilations, head ``h`` gets its own. Not
    ``masks.per_head``: its check of ``h`` cannot run inside FlexAttention's
    tracing, and plain ints per head (no captured tensor) are what torch
    2.13's CPU FlexAttention can compile."""
    per_head = zip(*(
        s.flatten().tolist()
        for s in torch.broadcast_tensors(left, right, dilation)
    ))  # fmt: skip
    windows = [
        masks.shifted_window((left, right), S, d)
        if shift
        else masks.dilated_sliding_window((left, right), d)
        for left, right, d in per_head
    ]
    if len(windows) == 1:
        return windows[0]

    def per_head_window_mask(
        b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor
    ) -> Tensor:
        result = windows[0](b, h, q_idx, kv_idx)
        for head, window in enumerate(windows[1:], start=1):
            here = window(b, h, q_idx, kv_idx)
            result = torch.where(h == head, here, result)
        return result

    return per_head_window_mask




def _key_range(
    t: Tensor, left: Tensor, right: Tensor, n_keys: Tensor, shift: bool
) -> tuple[Tensor, Tensor]:
    """Keys ``[lo, hi)`` that query ``t`` attends among ``n_keys`` keys.

    ``clip``: ``[t - left, t + right]`` cut at the ends; ``shift``: the same
    span slid inside ``[0, n_keys)``. All arguments broadcast.
    """
    lo, hi = t - left, t + right + 1
    if shift:
        span = left + right + 1
        slid = torch.minimum(lo.clamp(min=0), n_keys - span)
        lo = torch.where(span >= n_keys, torch.zeros_like(slid), slid)
        hi = lo + span
    return lo.clamp(min=0), torch.minimum(hi, n_keys)


def _sliding_window_torch(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    left: Tensor,
    right: Tensor,
    dilation: Tensor,
    shift: bool,
    scale: float,
) -> Tensor:
    """The readable PyTorch version: dilation undone, then blocked bands.

    ``left``, ``right`` and ``dilation`` are int64 tensors of shape ``()``
    or ``(H,)``. Heads that share a dilation are computed together.
    """
    half = query.dtype in (torch.float16, torch.bfloat16)
    q, k, v = (t.float() if half else t for t in (query, key, value))
    if q.numel() == 0 or k.numel() == 0 or v.numel() == 0:
        # Nothing to attend (or to compute): zeros, still in the autograd
        # graph of the inputs.
        zeros = v.new_zeros(*q.shape[:-1], v.shape[-1])
        return (zeros + 0 * (q.sum() + k.sum() + v.sum())).to(query.dtype)
    if dilation.dim() == 0:
        out = _dilated_band(q, k, v, left, right, int(dilation), shift, scale)
        return out.to(query.dtype)
    out = q.new_empty(*q.shape[:-1], v.shape[-1])  # (..., H, L, Ev)
    for d in dilation.unique().tolist():
        heads = (dilation == d).nonzero().flatten()  # heads of dilation d
        on_device = heads.to(q.device)
        pick = lambda t: t.index_select(-3, on_device)  # noqa: E731
        side = lambda s: s if s.dim() == 0 else s[heads]  # noqa: E731
        out[..., on_device, :, :] = _dilated_band(
            pick(q), pick(k), pick(v), side(left), side(right), d, shift, scale
        )
    return out.to(query.dtype)


def _dilated_band(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    left: Tensor,
    right: Tensor,
    d: int,
    shift: bool,
    scale: float,
) -> Tensor:
    """Dilation ``d``: the positions ``i = r + d * t`` of one residue ``r``
    form an undilated sliding-window problem; solve the ``d`` of them at
    once as an extra leading dimension."""
    L, S = q.shape[-2], k.shape[-2]
    if d == 1:
        n_keys = torch.tensor(S)
        return _band(q, k, v, left, right, n_keys, shift, scale)
    to_residues = lambda t: _split_residues(t, d)  # noqa: E731
    residue = torch.arange(d)
    n_keys = ((S - residue + d - 1) // d).clamp(min=0)  # (d,) keys per class
    sides = [s[..., None] if s.dim() else s for s in (left, right)]
    out = _band(
        to_residues(q),
        to_residues(k),
        to_residues(v),
        *sides,
        n_keys,
        shift,
        scale,
    )  # (..., d, ceil(L / d), Ev)
    out = out.transpose(-3, -2).flatten(-3, -2)  # (..., d * ceil(L/d), Ev)
    return out[..., :L, :]


def _split_residues(t: Tensor, d: int) -> Tensor:
    """``(..., N, F) -> (..., d, ceil(N / d), F)``: row ``[r, u]`` is
    position ``r + d * u`` (zero padding past the end)."""
    N = t.shape[-2]
    padded = torch.nn.functional.pad(t, (0, 0, 0, -N % d))  # (..., d*n, F)
    # (..., n, d, F) -> (..., d, n, F)
    return padded.unflatten(-2, (-1, d)).transpose(-3, -2)


def _band(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    left: Tensor,
    right: Tensor,
    n_keys: Tensor,
    shift: bool,
    scale: float,
    block: int = _TORCH_BLOCK,
) -> Tensor:
    """Undilated sliding window, block by block of queries.

    Each block of ``block`` queries scores one band of ``block + left_max
    + right_max`` keys (a strided view, no copy), so nothing of size
    ``L x S`` is built. ``left``, ``right`` and ``n_keys`` (keys past it
    are padding) broadcast against the leading dimensions of ``q``.
    """
    L, S = q.shape[-2], k.shape[-2]
    left, right, n_keys = (t.to(q.device) for t in (left, right, n_keys))
    if shift and L > S:
        # From row S - 1 on, every query's slid window is the last one of
        # its class, far behind the band of its block: attend it directly.
        first = max(S - 1, 0)
        last = _last_window(
            q[..., first:, :], k, v, left, right, n_keys, first, scale
        )
        if first == 0:
            return last
        rows = _band(
            q[..., :first, :], k, v, left, right, n_keys, shift, scale, block
        )
        return torch.cat([rows, last], dim=-2)  # (..., L, Ev)
    lmax, rmax = int(left.max()), int(right.max())
    if shift:  # a slid window lies within [i - l - r, i + l + r]
        lmax = rmax = lmax + rmax
    nb = -(-L // block)  # query blocks
    width = block + lmax + rmax  # keys a block can see
    q = torch.nn.functional.pad(q, (0, 0, 0, nb * block - L))
    # Keys padded so that block b sees positions b*block - lmax onwards.
    total = (nb - 1) * block + width
    k, v = (
        torch.nn.functional.pad(t, (0, 0, lmax, total - lmax - S))
        for t in (k, v)
    )
    k_band = k.unfold(-2, width, block)  # (..., nb, E, width)
    v_band = v.unfold(-2, width, block).transpose(
        -2, -1
    )  # (..., nb, width, Ev)
    q_blocks = q.unflatten(-2, (nb, block))  # (..., nb, block, E)
    scores = (q_blocks * scale) @ k_band  # (..., nb, block, width)

    arange = lambda n: torch.arange(n, device=q.device)  # noqa: E731
    starts = arange(nb).view(nb, 1, 1) * block
    # positions of block b's queries (nb, block, 1) and keys (nb, 1, width)
    query_pos = starts + arange(block).view(1, block, 1)
    key_pos = starts - lmax + arange(width).view(1, 1, width)
    extra = (1, 1, 1)  # align (H,)-shaped sides with (..., nb, block, 1)
    lo, hi = _key_range(
        query_pos,
        left.view(*left.shape, *extra),
        right.view(*right.shape, *extra),
        n_keys.view(*n_keys.shape, *extra),
        shift,
    )
    allowed = (key_pos >= lo) & (key_pos < hi)  # (..., nb, block, width)
    allowed = allowed & (query_pos < L)  # padding rows attend nothing
    out = _window_softmax(scores, allowed, v_band, scale)
    return out.flatten(-3, -2)[..., :L, :]  # (..., L, Ev)


def _last_window(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    left: Tensor,
    right: Tensor,
    n_keys: Tensor,
    first: int,
    scale: float,
) -> Tensor:
    """Rows ``first, first + 1, ...`` (``first >= S - 1``) with windows
    slid inside the keys: each attends the last ``left + right + 1`` keys
    of its class. A class holds ``S - 1`` keys or more (``n_keys``, after
    ``_split_residues``), so they lie among the last ``span + 1``."""
    S = k.shape[-2]
    span = int((left + right).max()) + 1  # the widest window
    start = max(S - 1 - span, 0)  # the first key any of these rows attends
    arange = lambda n: torch.arange(n, device=q.device)  # noqa: E731
    query_pos = first + arange(q.shape[-2]).view(-1, 1)  # (rows, 1)
    key_pos = start + arange(S - start)  # (W,)
    extra = (1, 1)  # align (H,)-shaped sides with (..., rows, 1)
    lo, hi = _key_range(
        query_pos,
        left.view(*left.shape, *extra),
        right.view(*right.shape, *extra),
        n_keys.view(*n_keys.shape, *extra),
        True,
    )
    allowed = (key_pos >= lo) & (key_pos < hi)  # (..., rows, W)
    k, v = k[..., start:, :], v[..., start:, :]  # (..., W, E|Ev)
    scores = (q * scale) @ k.transpose(-2, -1)  # (..., rows, W)
    return _window_softmax(scores, allowed, v, scale)


def _window_softmax(
    scores: Tensor, allowed: Tensor, v: Tensor, scale: float
) -> Tensor:
    """``softmax(scores) @ v`` over the ``allowed`` keys; a row with none
    gets zeros. Only allowed scores are checked (and count): a key outside
    every window may hold anything, as in the C++ kernel, which never
    reads it."""
    check_finite_scores(scores.masked_fill(~allowed, 0.0), scale)
    scores = scores.masked_fill(~allowed, float("-inf"))
    no_key = ~allowed.any(-1, keepdim=True)
    weights = torch.softmax(scores.masked_fill(no_key, 0.0), dim=-1)
    return (weights @ v).masked_fill(no_key, 0.0)  # (..., rows, Ev)


def _per_batch_head(lead: list[int], *sides: Tensor) -> list[Tensor]:
    """Each of ``left``, ``right``, ``dilation`` (shape ``()`` or
    ``(H,)``) as one value per batch-head, ``(BH,)``, as the kernels read
    them."""
    return [
        torch.broadcast_to(s, lead).reshape(math.prod(lead)).contiguous()
        for s in sides
    ]


def _sliding_window_kernel(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    left: Tensor,
    right: Tensor,
    dilation: Tensor,
    shift: bool,
    scale: float,
) -> Tensor:
    """Run ``csrc/sliding_window.cpp`` on contiguous float32 copies."""
    library = cpu_kernels.load("sliding_window")
    *lead, L, E = query.shape
    S, Ev = key.shape[-2], value.shape[-1]
    BH = math.prod(lead)
    if BH * L * Ev == 0 or S == 0:
        return query.new_zeros(*lead, L, Ev)
    out = torch.empty(BH, L, Ev)  # the kernel writes every row
    q, k, v = cpu_kernels.batch_heads_float32(BH, query, key, value)
    per_head = _per_batch_head(lead, left, right, dilation)
    function = library.sliding_window_forward
    not_finite = function(
        q.data_ptr(),
        k.data_ptr(),
        v.data_ptr(),
        out.data_ptr(),
        BH,
        L,
        S,
        E,
        Ev,
        *(s.data_ptr() for s in per_head),
        int(shift),
        scale,
        64,
        cpu_kernels.threads_for(  # 2 FLOPs per multiply-add, QK and PV
            2 * BH * L * min(S, int((left + right).max()) + 1) * (E + Ev)
        ),
    )
    if not_finite:  # the kernel counts rows whose scores were not finite
        raise scores_not_finite(scale, torch.float32)
    return out.view(*lead, L, Ev).to(query.dtype)


def _sliding_window_kernel_backward(
    grad_out: Tensor,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    left: Tensor,
    right: Tensor,
    dilation: Tensor,
    shift: bool,
    scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Run the kernel's backward pass: the gradients of the query, key and
    value (float32, the inputs' shapes) for ``grad_out`` ``(..., L, Ev)``."""
    library = cpu_kernels.load("sliding_window")
    *lead, L, E = query.shape
    S, Ev = key.shape[-2], value.shape[-1]
    BH = math.prod(lead)
    q, k, v, dout = cpu_kernels.batch_heads_float32(
        BH, query, key, value, grad_out
    )
    dq, dk, dv = (torch.zeros(t.shape) for t in (q, k, v))
    if BH * L * S * (E + Ev) == 0:
        return dq.view(query.shape), dk.view(key.shape), dv.view(value.shape)
    per_head = _per_batch_head(lead, left, right, dilation)
    not_finite = library.sliding_window_backward(
        *(t.data_ptr() for t in (q, k, v, dout, dq, dk, dv)),
        BH,
        L,
        S,
        E,
        Ev,
        *(s.data_ptr() for s in per_head),
        int(shift),
        scale,
        cpu_kernels.threads_for(  # five products per pair in the band
            5 * BH * L * min(S, int((left + right).max()) + 1) * (E + Ev)
        ),
    )
    if not_finite:
        raise scores_not_finite(scale, torch.float32)
    return dq.view(query.shape), dk.view(key.shape), dv.view(value.shape)


class _SlidingWindowKernel(torch.autograd.Function):
    """The C++ kernel's forward and backward passes as one autograd step.

    The backward pass recomputes the band's weights instead of storing
    them, so training keeps the kernel's ``O(L * Ev)`` memory."""

    @staticmethod
    def forward(ctx, query, key, value, left, right, dilation, shift, scale):
        ctx.save_for_backward(query, key, value)
        ctx.settings = (left, right, dilation, shift, scale)
        return _sliding_window_kernel(
            query, key, value, left, right, dilation, shift, scale
        )

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        query, key, value = ctx.saved_tensors
        grads = _sliding_window_kernel_backward(
            grad_out, query, key, value, *ctx.settings
        )
        dq, dk, dv = (
            g.to(t.dtype) for g, t in zip(grads, (query, key, value))
        )
        return dq, dk, dv, None, None, None, None, None


class AdaptiveSpanAttention(nn.Module):
    """Attention whose reach is learned, one span per head.

    Adaptive Attention Span (Sukhbaatar et al. 2019): head ``h`` multiplies
    its weights by a soft mask ``m(x) = clamp((ramp + z_h - x) / ramp, 0,
    1)`` of the distance ``x`` from query to key, renormalises, and pays
    ``span_loss()`` (the mean span) so that a head keeps only the reach it
    needs. At inference each span is rounded up to a hard window, the keys
    where ``m > 0``, and run by ``sliding_window_attention``.

    Args:
        heads: attention heads ``H``. max_span: the largest span ``z_h``.
        ramp: width of the soft edge, in tokens.
        initial_span: every head's span at the start, in tokens.
        causal: keys ahead of the query are masked (distance ``i - j``);
            else the distance is ``|i - j|``.

    Shape: ``query (..., H, L, E)``, ``key (..., H, S, E)``, ``value (...,
    H, S, Ev)`` -> ``(..., H, L, Ev)``.
    """

    def __init__(
        self,
        heads: int,
        max_span: int,
        *,
        ramp: int = 8,
        initial_span: float | None = None,
        causal: bool = False,
    ) -> None:
        super().__init__()
        self.heads = check_positive_int("heads", heads)
        self.max_span = check_positive_int("max_span", max_span)
        self.ramp = check_positive_int("ramp", ramp)
        if not isinstance(causal, bool):
            raise ValueError(f"causal must be True or False; got {causal!r}.")
        self.causal = causal
        start = max_span / 2 if initial_span is None else initial_span
        if (
            isinstance(start, bool)
            or not isinstance(start, numbers.Real)
            or not 0 <= start <= max_span
        ):
            raise ValueError(
                f"initial_span must be a number in [0, max_span={max_span}]; "
                f"got {initial_span!r}."
            )
        # The span as a fraction of max_span, as in the paper.
        self.span_fraction = nn.Parameter(
            torch.full((heads,), float(start) / max_span)
        )

    def spans(self) -> Tensor:
        """``(H,)``: each head's span in tokens, in ``[0, max_span]``."""
        return self.span_fraction.clamp(0, 1) * self.max_span

    def span_loss(self) -> Tensor:
        """The mean span over heads in tokens (add ``c * span_loss()``)."""
        return self.spans().mean()

    def soft_mask(self, L: int, S: int) -> Tensor:
        """``(H, L, S)``: the soft mask ``m`` of every (query, key) pair."""
        distance = torch.arange(L).view(L, 1) - torch.arange(S).view(1, S)
        distance = distance.to(self.span_fraction.device)
        if not self.causal:
            distance = distance.abs()
        spans = self.spans().view(-1, 1, 1)  # (H, 1, 1)
        mask = ((self.ramp + spans - distance) / self.ramp).clamp(0, 1)
        if self.causal:
            mask = mask * (distance >= 0)
        return mask  # (H, L, S)

    def windows(self) -> list[tuple[int, int]]:
        """Each head's hard window: every key where the soft mask is > 0."""
        reach = torch.ceil(self.spans().detach() + self.ramp).long() - 1
        reach = reach.clamp(min=0).tolist()
        return [(r, 0) if self.causal else (r, r) for r in reach]

    def forward(self, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        """Soft-masked attention (differentiable in the spans).

        Half-precision inputs are computed in float32 and cast back.

        Raises:
            ValueError: shapes, dtypes or devices that do not fit, a head
                count other than ``heads``, or scores that are not finite
                (as ``dense_attention``).
        """
        check_qkv(query, key, value)
        _heads(query, "span", self.heads)
        L, S = query.shape[-2], key.shape[-2]
        half = query.dtype in (torch.float16, torch.bfloat16)
        q, k, v = (t.float() if half else t for t in (query, key, value))
        scale = 1 / math.sqrt(q.shape[-1])
        scores = (q * scale) @ k.transpose(-2, -1)  # (..., H, L, S)
        check_finite_scores(scores, scale)
        mask = self.soft_mask(L, S).to(scores)  # (H, L, S)
        weights = torch.softmax(scores, dim=-1) * mask
        weights = weights / (weights.sum(-1, keepdim=True) + 1e-8)
        return (weights @ v).to(query.dtype)  # (..., H, L, Ev)

    def fast_forward(
        self, query: Tensor, key: Tensor, value: Tensor
    ) -> Tensor:
        """Inference: hard per-head windows on the fast kernel."""
        return sliding_window_attention(
            query, key, value, window=self.windows()
        )
