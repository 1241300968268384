"""Sliding-window attention as a Triton kernel: a fused kernel you can read.

One program computes one tile of ``BLOCK_M`` queries of one head. It keeps
the tile's queries in registers, walks over the key tiles of ``BLOCK_N``
keys that the band ``i - left <= j <= i + right`` touches (and only those),
and folds each tile into an online softmax (Milakov and Gimelshein 2018,
arXiv 1805.02867): a running row maximum ``m``, a running sum of weights
``l`` and an unnormalised output ``acc``, rescaled whenever the maximum
grows. Nothing of size ``L x S`` is ever written to memory. This is the
tiling of FlashAttention (Dao et al. 2022, arXiv 2205.14135) restricted to
the band, the same idea as the package's C++ kernel
(``csrc/sliding_window.cpp``), which keeps queries in vector lanes instead
of tiles.

On CUDA the kernel is compiled by Triton. On a CPU it runs in Triton's
interpreter (numpy, one program after another; set ``TRITON_INTERPRET=1``
before Triton is first imported): correct and slow, for reading and
testing, not for timing. The interpreter has no bfloat16, so
CPU inputs must be float32 or float16 (the chapter "Hardware acceleration"
walks through the kernel). Triton is an optional dependency (``pip install
triton``; the book pins the version it tests).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

try:  # optional: the module imports without it, and says so when called
    import triton
    import triton.language as tl
except ImportError:
    triton = tl = None

from .._validation import check_qkv, check_scale, check_window

__all__ = ["triton_sliding_window_attention", "triton_unavailable_reason"]


def triton_unavailable_reason(device: torch.device) -> str | None:
    """Why the Triton kernel cannot run on ``device`` here, or None."""
    if triton is None:
        return "Triton is not installed (pip install triton)"
    if device.type not in ("cpu", "cuda"):
        return f"Triton runs on CUDA (or interpreted on the CPU), not {device}"
    version = tuple(int(part) for part in triton.__version__.split(".")[:2])
    if device.type == "cpu" and version < (3, 8):
        return (
            f"Triton {triton.__version__}'s interpreter cannot run the "
            f"kernel's loop over a length known only at run time (with "
            f"numpy 2); it needs Triton 3.8 or newer"
        )
    return None


def window_forward(  # one program: BLOCK_M queries of one sequence
    Q, K, V, Out,  # (N, L, E), (N, S, E), (N, S, Ev) and (N, L, Ev)
    L, S, left, right, scale,
    E: tl.constexpr, Ev: tl.constexpr,  # the real head sizes
    E_PAD: tl.constexpr, EV_PAD: tl.constexpr,  # powers of two >= 16
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    tile = tl.program_id(0)  # which tile of queries
    seq = tl.program_id(1)  # which (batch, head)
    rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)  # query positions
    feats = tl.arange(0, E_PAD)
    vfeats = tl.arange(0, EV_PAD)
    q = tl.load(
        Q + seq * L * E + rows[:, None] * E + feats[None, :],
        mask=(rows[:, None] < L) & (feats[None, :] < E),
        other=0.0,
    )  # (BLOCK_M, E_PAD), zero padded
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)  # row maxima
    total = tl.zeros([BLOCK_M], tl.float32)  # sums of weights
    acc = tl.zeros([BLOCK_M, EV_PAD], tl.float32)  # weighted values
    # The band of this tile: keys from its first query's left end to
    # its last query's right end, starting on a tile boundary.
    first = tl.maximum(tile * BLOCK_M - left, 0)
    first = (first // BLOCK_N) * BLOCK_N
    last = tl.minimum(tile * BLOCK_M + BLOCK_M + right, S)
    for start in range(first, last, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)  # key positions
        k = tl.load(
            K + seq * S * E + cols[:, None] * E + feats[None, :],
            mask=(cols[:, None] < S) & (feats[None, :] < E),
            other=0.0,
        )  # (BLOCK_N, E_PAD)
        scores = tl.dot(q, tl.trans(k)) * scale  # (BLOCK_M, BLOCK_N)
        inside = (
            (cols[None, :] >= rows[:, None] - left)
            & (cols[None, :] <= rows[:, None] + right)
            & (cols[None, :] < S)
        )
        scores = tl.where(inside, scores, float("-inf"))
        m_new = tl.maximum(m, tl.max(scores, 1))
        # A row with no key yet keeps the maximum -inf: shift it by 0.
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        weights = tl.exp(scores - shift[:, None])  # outside: exp(-inf)=0
        rescale = tl.exp(m - shift)  # how much the old maximum shrinks
        total = total * rescale + tl.sum(weights, 1)
        v = tl.load(
            V + seq * S * Ev + cols[:, None] * Ev + vfeats[None, :],
            mask=(cols[:, None] < S) & (vfeats[None, :] < Ev),
            other=0.0,
        )  # (BLOCK_N, EV_PAD)
        acc = acc * rescale[:, None] + tl.dot(weights.to(v.dtype), v)
        m = m_new
    out = acc / tl.where(total == 0.0, 1.0, total)[:, None]  # empty: 0
    tl.store(
        Out + seq * L * Ev + rows[:, None] * Ev + vfeats[None, :],
        out.to(Out.dtype.element_ty),
        mask=(rows[:, None] < L) & (vfeats[None, :] < Ev),
    )


@functools.cache
def _kernel():
    """``window_forward`` as a Triton kernel: compiled for the GPU, or the
    interpreter's version when Triton was imported with
    ``TRITON_INTERPRET=1``."""
    return triton.jit(window_forward)


def _interpreting() -> bool:
    """Whether Triton runs kernels in its interpreter in this process: it
    decides when it is first imported (``TRITON_INTERPRET=1``), for its own
    library functions (``tl.sum``...) too."""
    return type(tl.sum).__name__ == "InterpretedFunction"


def _padded(size: int) -> int:
    """The next power of two, at least 16 (what ``tl.dot`` accepts)."""
    return max(16, 1 << (size - 1).bit_length())


def triton_sliding_window_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    window: int | tuple[int, int],
    scale: float | None = None,
    block: int = 32,
) -> Tensor:
    """Sliding-window attention (forward) with the Triton kernel above.

    The same numbers as ``sliding_window_attention(..., border="clip")``:
    query ``i`` attends key ``j`` iff ``i - left <= j <= i + right``; a
    query with no key in its window gets zeros.

    Args:
        query: ``(..., L, E)``. key: ``(..., S, E)``. value: ``(..., S, Ev)``.
            On CUDA any float dtype; on a CPU (interpreted) float32 or
            float16.
        window: ``(left, right)``, or an int ``w`` meaning ``(w, w)``.
        scale: multiplies ``Q K^T``; None means ``1 / sqrt(E)``.
        block: queries and keys per tile, a power of two >= 16.

    Returns:
        ``(..., L, Ev)`` in the query's dtype.

    Raises:
        ValueError: shapes, dtypes or devices that do not fit, a bad window
            or block, bfloat16 on a CPU (the interpreter has none).
        NotImplementedError: Triton missing, a device other than CPU and
            CUDA, or a tensor that needs a gradient (forward only).
    """
    check_qkv(query, key, value)
    scale = check_scale(scale)
    left, right = check_window(window)
    if isinstance(block, bool) or not isinstance(block, int) or (
        block < 16 or block & (block - 1)
    ):
        raise ValueError(
            f"block must be a power of two >= 16 (tl.dot's smallest tile); "
            f"got {block!r}."
        )
    reason = triton_unavailable_reason(query.device)
    if reason is not None:
        raise NotImplementedError(
            f"the Triton kernel cannot run here: {reason}. Use "
            f"sliding_window_attention instead."
        )
    if torch.is_grad_enabled() and any(
        t.requires_grad for t in (query, key, value)
    ):
        raise NotImplementedError(
            "the Triton kernel computes the forward pass only; call it "
            "under torch.no_grad(), or use sliding_window_attention."
        )
    interpreted = query.device.type == "cpu"
    if interpreted and not _interpreting():
        raise NotImplementedError(
            "on a CPU the Triton kernel runs in Triton's interpreter, which "
            "is chosen when Triton is first imported: set the environment "
            "variable TRITON_INTERPRET=1 before anything imports triton (in "
            "a notebook: os.environ['TRITON_INTERPRET'] = '1' in the first "
            "cell, then restart the kernel), or run on CUDA."
        )
    if interpreted and query.dtype == torch.bfloat16:
        raise ValueError(
            "Triton's interpreter (the CPU path) has no bfloat16; pass "
            "float32 or float16 on the CPU, or run on CUDA."
        )
    *lead, L, E = query.shape
    S, Ev = key.shape[-2], value.shape[-1]
    if scale is None:
        scale = 1.0 / math.sqrt(E)
    q, k, v = (
        t.reshape(-1, *t.shape[-2:]).contiguous() for t in (query, key, value)
    )  # (N, L, E), (N, S, E), (N, S, Ev)
    out = query.new_empty(q.shape[0], L, Ev)
    if out.numel() == 0:
        return out.reshape(*lead, L, Ev)
    left, right = min(left, L + S), min(right, L + S)  # keep ints small
    grid = (-(-L // block), q.shape[0])  # tiles of queries, sequences
    _kernel()[grid](
        q, k, v, out, L, S, left, right, float(scale),
        E=E, Ev=Ev, E_PAD=_padded(E), EV_PAD=_padded(Ev),
        BLOCK_M=block, BLOCK_N=block,
    )  # fmt: skip
    return out.reshape(*lead, L, Ev)
