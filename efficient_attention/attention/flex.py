"""Masked attention through compiled FlexAttention: the fast path on a GPU.

FlexAttention (Dong et al. 2024, arXiv 2412.05496) is PyTorch's fused kernel
for attention under a mask function: ``torch.compile`` turns the package's
``mask_mod`` into a kernel that visits only the blocks of the score matrix
that a ``BlockMask`` marks, and applies the mask inside the partly-filled
ones. On CUDA it trains too (forward and backward); on a CPU it runs the
forward pass only, and needs AVX2.

``masked_flex_attention`` runs it with a mask function; the block masks it
builds are kept (the last few, by the key the caller gives), since building
one evaluates the mask over every block of the matrix.
"""

from __future__ import annotations

import collections
import math
import warnings
from collections.abc import Callable, Hashable

import torch
from torch import Tensor

from .._validation import scores_not_finite

MaskMod = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]

_COMPILED = None
_BLOCK_MASKS: collections.OrderedDict = collections.OrderedDict()
_BLOCK_MASKS_KEPT = 16
_RECOMPILE_LIMIT = 256
_WARNED: set[str] = set()


def unavailable_reason(device: torch.device | str) -> str | None:
    """Why compiled FlexAttention cannot run on ``device``, or None."""
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError as error:
        return f"FlexAttention needs torch >= 2.5 ({error})"
    if torch.device(device).type != "cpu":
        return None
    try:
        from torch._inductor.kernel.flex.flex_cpu import check_cpu_supported
    except ImportError:  # another torch version: let the compiler decide
        return None
    if not check_cpu_supported():
        return (
            "compiled FlexAttention runs on a CPU only with AVX2, not on "
            "macOS and not under ATEN_CPU_CAPABILITY=default"
        )
    return None


def compiled_flex_attention() -> Callable[..., object]:
    """``torch.compile(flex_attention)``, compiled once per process (and
    once more per new shape the first time it is called)."""
    global _COMPILED
    if _COMPILED is None:
        from torch.nn.attention.flex_attention import flex_attention

        # Each mask, shape and grad mode is one more compiled version; past
        # dynamo's limit (8) flex_attention would run eagerly, scoring the
        # whole L x S matrix: a silent slow path. Allow many more.
        config = torch._dynamo.config
        name = (
            "recompile_limit"
            if hasattr(config, "recompile_limit")
            else "cache_size_limit"
        )
        setattr(config, name, max(getattr(config, name), _RECOMPILE_LIMIT))
        _COMPILED = torch.compile(flex_attention, dynamic=False)
    return _COMPILED


def block_mask(
    mask_mod: MaskMod,
    cache_key: Hashable,
    heads: int | None,
    L: int,
    S: int,
    device: torch.device,
    block_size: int = 128,
):
    """The ``BlockMask`` of ``mask_mod`` for ``L`` queries and ``S`` keys
    in blocks of ``block_size`` (``heads=None``: the same for every head),
    reused while ``cache_key``, the sizes and the device are the same."""
    from torch.nn.attention.flex_attention import create_block_mask

    key = (cache_key, heads, L, S, str(device), block_size)
    if key in _BLOCK_MASKS:
        _BLOCK_MASKS.move_to_end(key)
        return _BLOCK_MASKS[key]
    made = create_block_mask(
        mask_mod, None, heads, L, S, device=device, BLOCK_SIZE=block_size
    )
    _BLOCK_MASKS[key] = made
    if len(_BLOCK_MASKS) > _BLOCK_MASKS_KEPT:
        _BLOCK_MASKS.popitem(last=False)
    return made


def masked_flex_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    mask_mod: MaskMod,
    *,
    cache_key: Hashable,
    per_head: bool,
    scale: float | None,
    block_size: int = 128,
) -> Tensor:
    """Softmax attention where ``mask_mod`` allows, by compiled FlexAttention.

    Args:
        query: ``(..., L, E)``. key: ``(..., S, E)``. value: ``(..., S, Ev)``
            (leading dimensions that broadcast; dimension -3 is the heads).
        mask_mod: ``(b, h, q_idx, kv_idx) -> bool``, as in ``masks``;
            ``b`` is always 0 (the mask may not depend on the batch row).
        cache_key: names ``mask_mod`` for the block-mask cache: two calls
            with the same key must mean the same mask.
        per_head: whether the mask depends on the head ``h``.
        scale: multiplies ``Q K^T``; None means ``1 / sqrt(E)``.
        block_size: the side of the blocks FlexAttention skips or visits.

    Returns:
        ``(..., L, Ev)`` in the query's dtype; a query that may attend no
        key gets zeros.

    Raises:
        NotImplementedError: FlexAttention cannot run this call (the
            message says why: a gradient on a CPU, no AVX2, an old torch).
        ValueError: scores that are not finite (inf or NaN in the query or
            key, or an overflow).
    """
    reason = unavailable_reason(query.device)
    needs_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (query, key, value)
    )
    if reason is None and needs_grad and query.device.type == "cpu":
        reason = "FlexAttention has no backward pass on a CPU"
    if reason is not None:
        raise FlexUnavailable(
            f"backend='flex' cannot run this call: {reason}. Use "
            f"backend='torch' (or 'auto')."
        )
    lead = torch.broadcast_shapes(
        query.shape[:-2], key.shape[:-2], value.shape[:-2]
    )
    L, E = query.shape[-2:]
    if scale is None:
        scale = 1.0 / math.sqrt(E) if E else 1.0
    S, Ev = key.shape[-2], value.shape[-1]
    heads = lead[-1] if lead else 1
    q, k, v = (
        t.expand(*lead, *t.shape[-2:]).reshape(-1, heads, *t.shape[-2:])
        for t in (query, key, value)
    )
    options = None
    if query.device.type == "cuda" and block_size % 128:
        # the GPU kernel's tiles (128 by default) must divide the blocks;
        # the mask function keeps the result exact at any block size
        if block_size in (16, 32, 64):
            options = {"BLOCK_M": block_size, "BLOCK_N": block_size}
        else:
            block_size = 128
    mask = block_mask(
        mask_mod,
        cache_key,
        heads if per_head else None,
        L,
        S,
        query.device,
        block_size,
    )
    try:
        out, not_finite = _run_compiled(q, k, v, mask, scale, options)
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as error:  # the compiler's many error types
        first = str(error).strip().splitlines()[0][:300]
        raise FlexUnavailable(
            f"compiled FlexAttention could not run this mask function "
            f"({type(error).__name__}: {first}); use backend='torch'"
        ) from error
    if not_finite:
        raise scores_not_finite(scale, query.dtype)
    return out.reshape(*lead, L, Ev)


def _run_compiled(q, k, v, mask, scale, options):
    """``(out, whether a score was not finite)`` from compiled flex."""
    if q.device.type == "cpu":  # compiled on a CPU: no lse there
        out = compiled_flex_attention()(
            q, k, v, block_mask=mask, scale=scale, kernel_options=options
        )
        # with finite values, a NaN or inf out comes from a score
        not_finite = not bool(torch.isfinite(out).all()) and bool(
            torch.isfinite(v).all()
        )
    else:
        out, lse = compiled_flex_attention()(
            q,
            k,
            v,
            block_mask=mask,
            scale=scale,
            return_lse=True,
            kernel_options=options,
        )
        # a row with no allowed key has lse = -inf (and zeros out)
        not_finite = bool((torch.isnan(lse) | (lse == float("inf"))).any())
    return out, not_finite


class FlexUnavailable(NotImplementedError):
    """Compiled FlexAttention cannot run a call; the message says why."""


def attempt(backend: str, what: str, run: Callable[[], Tensor]):
    """``run()``; where FlexAttention fails to compile and ``backend`` is
    ``"auto"``, None (the caller's PyTorch version runs) and a warning."""
    try:
        return run()
    except FlexUnavailable as error:
        if backend != "auto":
            raise
        warn_fallback_once(what, str(error))
        return None


def use_flex(
    backend: str, query: Tensor, key: Tensor, value: Tensor, what: str
) -> bool:
    """Whether ``what`` runs compiled FlexAttention: always for
    ``backend="flex"`` (``masked_flex_attention`` says if it cannot), for
    ``"auto"`` on CUDA when it can run there (else a warning, once, says
    why not), never for empty inputs (nothing to compute)."""
    if any(t.numel() == 0 for t in (query, key, value)):
        return False
    if backend == "flex":
        return True
    if backend != "auto" or query.device.type in ("cpu", "meta"):
        return False
    if query.device.type != "cuda":
        warn_fallback_once(what, f"it is taken on CUDA only, not on "
                           f"{query.device.type}")
        return False
    reason = unavailable_reason(query.device)
    if reason is not None:
        warn_fallback_once(what, reason)
    return reason is None


def warn_fallback_once(what: str, reason: str) -> None:
    """Say once per reason that ``what`` did not take FlexAttention."""
    if reason not in _WARNED:
        _WARNED.add(reason)
        warnings.warn(
            f"{what}: FlexAttention cannot run here, so the PyTorch version "
            f"runs instead: {reason}",
            RuntimeWarning,
            stacklevel=4,
        )
