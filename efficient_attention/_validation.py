"""Input checks shared by every function of the package.

Each check raises a ``ValueError`` that names the argument, says what it got
and what would fix it, so a learner never has to decode a shape error from
deep inside a matmul. Numbers are accepted as torch accepts them: any
integral number (``int``, ``np.int64``...) where a count or position is
expected and any real number (``float``, ``np.float32``...) where a scale or
a time is expected, never a ``bool``; the checks return plain Python
``int``/``float`` so no NumPy scalar (and its fixed-width overflow) travels
further into the package.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor

SEED_LIMIT = 2**32
"""Seeds are ints in ``[0, 2**32)``: the range NumPy, Python and torch all
accept."""


def check_heads_divide(d_model: int, heads: int) -> None:
    """Raise a ValueError unless ``heads`` divides ``d_model``."""
    if d_model % heads:
        raise ValueError(
            f"d_model ({d_model}) must be divisible by heads ({heads})."
        )


def check_sequence(name: str, tensor: object) -> Tensor:
    """Return ``tensor`` if it is shaped ``(..., length, features)``."""
    check_tensor(name, tensor)
    if tensor.dim() < 2:
        raise ValueError(
            f"{name} must have at least 2 dimensions (..., length, features); "
            f"got shape {tuple(tensor.shape)}. Add a leading dimension with "
            f"{name}.unsqueeze(0)."
        )
    return tensor


def check_tensor(name: str, value: object) -> Tensor:
    """Return ``value`` if a tensor, else raise ValueError naming ``name``."""
    if not isinstance(value, Tensor):
        raise ValueError(
            f"{name} must be a torch.Tensor; got {type(value).__name__}."
        )
    return value


def check_qkv(query: Tensor, key: Tensor, value: Tensor) -> None:
    """Check that ``query``, ``key`` and ``value`` fit together.

    The shapes must be ``query (..., L, E)``, ``key (..., S, E)`` and
    ``value (..., S, Ev)`` with ``E >= 1``.

    Raises:
        ValueError: a rank below 2, differing leading dimensions, a head
            dimension or key count that does not match, ``E = 0``, a
            non-floating dtype, or mixed dtypes or devices.
    """
    for name, tensor in (("query", query), ("key", key), ("value", value)):
        check_sequence(name, tensor)
        if not tensor.is_floating_point():
            raise ValueError(
                f"{name} must be a floating-point tensor; "
                f"got dtype {tensor.dtype}. "
                f"Convert it with {name}.float()."
            )
    shapes = (
        f"query {tuple(query.shape)}, key {tuple(key.shape)}, "
        f"value {tuple(value.shape)}"
    )
    if query.dtype != key.dtype or query.dtype != value.dtype:
        raise ValueError(
            f"query, key and value must share one dtype; "
            f"got {query.dtype}, {key.dtype}, "
            f"{value.dtype}. Convert them with .to(query.dtype)."
        )
    if query.device != key.device or query.device != value.device:
        raise ValueError(
            f"query, key and value must be on one device; "
            f"got {query.device}, {key.device}, "
            f"{value.device}. Move them with .to(query.device)."
        )
    if (
        query.shape[:-2] != key.shape[:-2]
        or key.shape[:-2] != value.shape[:-2]
    ):
        raise ValueError(
            f"query, key and value must have the same leading "
            f"(batch, head) dimensions; "
            f"got {shapes}. Expand or reshape them to one leading shape."
        )
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(
            f"query and key must have the same feature size E "
            f"(last dimension); got {shapes}."
        )
    if query.shape[-1] == 0:
        raise ValueError(
            f"query and key need at least one feature (E >= 1 in the last "
            f"dimension); got {shapes}."
        )
    if key.shape[-2] != value.shape[-2]:
        raise ValueError(
            f"key and value must have the same number of positions S "
            f"(dimension -2); got {shapes}."
        )


def check_attn_mask(attn_mask: Tensor, query: Tensor, key: Tensor) -> None:
    """Check that a bool or additive mask broadcasts to ``(..., L, S)``.

    An additive (float) mask may hold any finite number or ``-inf``; NaN and
    ``+inf`` would turn the softmax into NaN, so they are refused.
    """
    check_tensor("attn_mask", attn_mask)
    scores_shape = (*query.shape[:-1], key.shape[-2])
    if attn_mask.dtype != torch.bool and attn_mask.dtype != query.dtype:
        raise ValueError(
            f"attn_mask must be bool (True = may attend) "
            f"or have the query's dtype "
            f"{query.dtype} (added to the scores); got {attn_mask.dtype}."
        )
    if attn_mask.device != query.device:
        raise ValueError(
            f"attn_mask is on {attn_mask.device} "
            f"but query is on {query.device}; "
            f"move it with attn_mask.to(query.device)."
        )
    try:
        broadcast = torch.broadcast_shapes(attn_mask.shape, scores_shape)
    except RuntimeError:
        broadcast = None
    if broadcast != torch.Size(scores_shape):
        raise ValueError(
            f"attn_mask of shape {tuple(attn_mask.shape)} "
            f"does not broadcast to the "
            f"scores' shape (..., L, S) = {scores_shape}. "
            f"{_mask_suggestion(scores_shape)}"
        )
    if (
        attn_mask.dtype != torch.bool
        and attn_mask.device.type != "meta"
        and (attn_mask.isnan().any() or attn_mask.isposinf().any())
    ):
        raise ValueError(
            "attn_mask holds NaN or +inf, which make the softmax NaN; an "
            "additive mask holds 0 (or a finite bias) where a query may "
            "attend and -inf where it may not."
        )


def _mask_suggestion(scores_shape: tuple[int, ...]) -> str:
    """A ``create_mask`` call whose result broadcasts to ``scores_shape``."""
    *lead, L, S = scores_shape
    if not lead:
        return f"Build it with masks.create_mask(mask_mod, L={L}, S={S})."
    if len(lead) == 1:
        return (
            f"Build one mask for every row with "
            f"masks.create_mask(mask_mod, {L}, {S}), or one per batch row "
            f"with masks.create_mask(mask_mod, {L}, {S}, batch={lead[0]})"
            f"[:, 0] (shape ({lead[0]}, {L}, {S}))."
        )
    return (
        f"Build it with masks.create_mask(mask_mod, {L}, {S}, "
        f"batch={lead[-2]}, heads={lead[-1]}) "
        f"(leave out batch= or heads= where the mask does not depend on it)."
    )


def check_bool(name: str, value: object) -> bool:
    """Return ``value`` if it is a bool, else raise ValueError naming it."""
    if not isinstance(value, bool):
        raise ValueError(
            f"{name} must be True or False; got {value!r} "
            f"({type(value).__name__})."
        )
    return value


def check_int(name: str, value: object, minimum: int) -> int:
    """Return ``value`` as a Python int if integral and ``>= minimum``.

    Any ``numbers.Integral`` (``int``, ``np.int64``...) is accepted; ``bool``
    is not.

    Raises:
        ValueError: not an integral number, a bool, or below ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(
            f"{name} must be an int >= {minimum}; got {value!r} "
            f"({type(value).__name__})."
        )
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value}.")
    return value


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` as an int if integral and >= 1 (see ``check_int``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(
            f"{name} must be a positive int; got {value!r} "
            f"({type(value).__name__})."
        )
    if value < 1:
        raise ValueError(f"{name} must be a positive int; got {value!r}.")
    return int(value)


def check_non_negative_int(name: str, value: object) -> int:
    """Return ``value`` as an int if integral and >= 0 (see ``check_int``)."""
    return check_int(name, value, 0)


def check_int_list(name: str, values: object) -> list[int]:
    """Return ``values`` as a list of Python ints: any iterable (list,
    tuple, set, range, 1-D tensor or array) of integral numbers.

    Raises:
        ValueError: not an iterable (a string or a mapping is not one
            here), or an element that is not an integral number (``1.7``
            is refused, never truncated; ``True`` too).
    """
    if isinstance(values, Tensor):
        values = values.tolist()
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(
        values, Iterable
    ):
        raise ValueError(
            f"{name} must be a list of ints; got {values!r} "
            f"({type(values).__name__})."
        )
    values = list(values)
    for value in values:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError(
                f"{name} must be a list of ints; got {value!r} "
                f"({type(value).__name__}) among {values!r}."
            )
    return [int(value) for value in values]


def check_real(name: str, value: object) -> float:
    """Return ``value`` as a Python float if it is a finite real number.

    Any ``numbers.Real`` (``float``, ``int``, ``np.float32``...) is accepted;
    ``bool`` is not.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"{name} must be a real number; got {value!r} "
            f"({type(value).__name__})."
        )
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite; got {value}.")
    return value


def check_positive_real(name: str, value: object) -> float:
    """Return ``value`` as a float if it is a finite real number > 0."""
    value = check_real(name, value)
    if not value > 0:
        raise ValueError(f"{name} must be > 0; got {value}.")
    return value


def check_scale(scale: object) -> float | None:
    """Return ``scale`` as a float, or None (meaning ``1/sqrt(E)``).

    Raises:
        ValueError: not None and not a finite real number.
    """
    if scale is None:
        return None
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise ValueError(
            f"scale must be a float or None (None means 1/sqrt(E)); "
            f"got {type(scale).__name__}."
        )
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite; got {scale}.")
    return float(scale)


def check_window(window: object) -> tuple[int, int]:
    """Return ``window`` as ``(left, right)``; an int ``w`` means ``(w, w)``.

    Raises:
        ValueError: not an integral number or a pair of them, or a side
            below 0.
    """
    if isinstance(window, numbers.Integral) and not isinstance(window, bool):
        left = right = int(window)
    elif (
        isinstance(window, (tuple, list))
        and len(window) == 2
        and all(
            isinstance(w, numbers.Integral) and not isinstance(w, bool)
            for w in window
        )
    ):
        left, right = (int(w) for w in window)
    else:
        raise ValueError(
            f"window must be an int w (meaning (w, w)) "
            f"or a pair of ints (left, right); "
            f"got {window!r}."
        )
    if left < 0 or right < 0:
        raise ValueError(
            f"window sides must be >= 0; "
            f"got (left, right) = ({left}, {right}). "
            f"Use (w, 0) for causal local attention."
        )
    return left, right


def check_seed(name: str, value: object) -> int:
    """Return ``value`` as an int if it is a seed in ``[0, 2**32)``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or not 0 <= value < SEED_LIMIT
    ):
        raise ValueError(
            f"{name} must be an int in [0, 2**32); got {value!r}."
        )
    return int(value)


def check_dtype(
    name: str, value: object, *, floating: bool = False
) -> torch.dtype:
    """Return ``value`` as a ``torch.dtype``; a name like "float32" works too.

    Args:
        name: the argument's name, for the error message.
        value: a ``torch.dtype`` or its name (``"bfloat16"``,
            ``"torch.float64"``).
        floating: also require a floating-point dtype.

    Raises:
        ValueError: neither a dtype nor a dtype's name, or not floating point
            when ``floating`` is set.
    """
    dtype = value
    if isinstance(value, str):
        dtype = getattr(torch, value.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(
            f"{name} must be a torch.dtype such as torch.float32 "
            f"(or its name, 'float32'); got {value!r}."
        )
    if floating and not dtype.is_floating_point:
        raise ValueError(
            f"{name} must be a floating-point dtype (float32, float64, "
            f"float16, bfloat16); got {dtype}."
        )
    return dtype


def check_device(name: str, value: object) -> torch.device:
    """Return ``value`` as a ``torch.device``; a string like "cuda:0" works.

    Only the spelling is checked, not whether this machine has the device.
    """
    if not isinstance(value, (str, torch.device)):
        raise ValueError(
            f"{name} must be a device name such as 'cpu' or 'cuda' "
            f"(or a torch.device); got {type(value).__name__}."
        )
    try:
        return torch.device(value)
    except RuntimeError as error:
        raise ValueError(
            f"{name}={value!r} is not a device name; "
            f"use 'cpu', 'cuda' or 'cuda:<index>'."
        ) from error


def check_device_here(name: str, value: object) -> torch.device:
    """``check_device``, and the device must exist on this machine (CUDA,
    a CUDA index, Apple's MPS); ``cpu`` and ``meta`` always do."""
    device = check_device(name, value)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index or 0) >= count:
            raise ValueError(
                f"{name}={str(value)!r} names a CUDA device, but this "
                f"machine has {count}; use 'cpu'"
                + (f" or cuda:0 to cuda:{count - 1}." if count else ".")
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(
            f"{name}={str(value)!r} names Apple's MPS, which this machine "
            f"does not have; use 'cpu'."
        )
    return device


def check_finite_scores(scores: Tensor, scale: float) -> None:
    """Raise ``scores_not_finite`` if the attention scores hold inf or NaN.

    Reads only their minimum and maximum (NaN propagates to both), so no
    temporary the size of ``scores`` is made.
    """
    if scores.device.type == "meta" or scores.numel() == 0:
        return
    low, high = torch.aminmax(scores)
    if not bool(torch.isfinite(low) & torch.isfinite(high)):
        raise scores_not_finite(scale, scores.dtype)


def scores_not_finite(scale: float, dtype: torch.dtype) -> ValueError:
    """The error for attention scores that hold inf or NaN."""
    return ValueError(
        f"the scores query @ key^T * scale hold inf or NaN, which would "
        f"make the output NaN: query or key hold inf or NaN, or they and the "
        f"scale ({scale:g}) are too large for {dtype} (its largest value is "
        f"{torch.finfo(dtype).max:g})."
    )


def check_generator(name: str, value: object) -> torch.Generator:
    """Return ``value`` if a ``torch.Generator``, else raise ValueError.

    Randomness is an explicit input of the package: a function that draws
    numbers takes a generator and never falls back on the global seed.
    """
    if not isinstance(value, torch.Generator):
        raise ValueError(
            f"{name} must be a torch.Generator; got {type(value).__name__}. "
            f"Make one with torch.Generator().manual_seed(0)."
        )
    return value


def check_block_choice(
    block_size: object, top_k: object, band: object, L: int, S: int
) -> tuple[int, int, int]:
    """``(block_size, top_k, band)`` of coarse-to-fine attention as ints
    that fit ``L`` queries and ``S`` keys; ``coarse_to_fine_attention`` and
    the picture of it (``hierarchical_levels``) share this check.

    A block wider than both sequences is one block of ``max(L, S)``, and a
    band wider than the blocks keeps them all, so both are capped.

    Raises:
        ValueError: a block size that is not a positive int, a band or
            ``top_k`` that is not an int >= 0, or ``top_k`` above the
            number of key blocks ``nk = ceil(S / block_size)``.
    """
    block_size = check_positive_int("block_size", block_size)
    block_size = min(block_size, max(L, S, 1))
    band = min(check_non_negative_int("band", band), max(L, S, 1))
    top_k = check_non_negative_int("top_k", top_k)
    nk = -(-S // block_size)
    if top_k > nk:
        raise ValueError(
            f"top_k must be at most the number of key blocks, nk = ceil(S / "
            f"block_size) = ceil({S} / {block_size}) = {nk}; got top_k="
            f"{top_k}. Use top_k <= {nk} (top_k={nk} is dense attention), "
            f"or a smaller block_size."
        )
    return block_size, top_k, band


def check_block_layout(layout: object) -> Tensor:
    """Return ``layout`` if it is a bool ``(nq, nk)`` or ``(H, nq, nk)``
    tensor (True = the block is computed), else raise a ValueError."""
    check_tensor("layout", layout)
    if layout.dtype != torch.bool:
        raise ValueError(
            f"layout must be a bool tensor (True = compute the block); got "
            f"dtype {layout.dtype}. Convert it with layout.bool()."
        )
    if layout.dim() not in (2, 3):
        raise ValueError(
            f"layout must be (nq, nk) or (H, nq, nk); got shape "
            f"{tuple(layout.shape)}."
        )
    return layout


def check_layout_fits(
    shape: tuple[int, ...],
    block_size: int,
    L: int,
    S: int,
    *,
    exact: bool = True,
) -> None:
    """Check that a block layout of ``shape`` (``(..., nq, nk)``) fits ``L``
    queries and ``S`` keys in blocks of ``block_size``.

    The rule of ``block_sparse_attention`` (``exact``: ``(nq, nk) =
    (ceil(L / block_size), ceil(S / block_size))``) and of the mask
    function of ``masks.from_block_layout`` (not ``exact``: the layout
    covers every position it is asked about; no position is clamped).

    Raises:
        ValueError: naming the layout's shape, the sizes and what fits.
    """
    nq, nk = -(-L // block_size), -(-S // block_size)
    got = tuple(shape[-2:])
    covers = got[0] >= nq and got[1] >= nk
    if got == (nq, nk) or (covers and not exact):
        return
    low, high = 1, max(L, S, 1)  # the block sizes that fit, if any
    for length, n in ((L, got[0]), (S, got[1])):
        fit = _block_sizes(length, n)
        if fit is None:
            low, high = 1, 0
            break
        low, high = max(low, fit[0]), min(high, fit[1])
    fix = (
        f"block_size={low}"
        + (f" to {high}" if high > low else "")
        + " fits this layout"
        if low <= high
        else "no block size fits this layout"
    )
    raise ValueError(
        f"layout of shape {tuple(shape)} does not fit L={L}, S={S} with "
        f"block_size={block_size}: that needs (nq, nk) = (ceil(L / "
        f"block_size), ceil(S / block_size)) = ({nq}, {nk}); {fix}, or "
        f"build the layout for ({nq}, {nk}) blocks."
    )


def _block_sizes(length: int, n: int) -> tuple[int, float] | None:
    """The block sizes ``s`` with ``ceil(length / s) == n``, an interval
    ``[low, high]`` (``high`` may be infinite), or None."""
    if length == 0 or n == 0:
        return (1, math.inf) if length == n == 0 else None
    low = -(-length // n)
    high = math.inf if n == 1 else (length - 1) // (n - 1)
    return (low, high) if low <= high else None


def memory_bytes(device: torch.device) -> int | None:
    """The memory of ``device`` in bytes: the machine's physical memory
    for the CPU, the GPU's for CUDA; None where it cannot be read."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type != "cpu":
        return None
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):  # not a POSIX system
        return None


def check_fits_in_memory(what: str, nbytes: int, device: torch.device) -> None:
    """Raise a ValueError, saying ``what`` needs ``nbytes``, when that is
    more than all the memory of ``device`` (so it could never run)."""
    total = memory_bytes(device)
    if total is not None and nbytes > total:
        raise ValueError(
            f"{what} would need {nbytes / 2**30:.3g} GiB, more than the "
            f"{total / 2**30:.3g} GiB of memory of this machine's "
            f"{device.type}."
        )


def check_records(records: object) -> list[Mapping[str, object]]:
    """``records`` as a non-empty list of mappings with variant and L."""
    if isinstance(records, Mapping) or not isinstance(records, Sequence):
        raise ValueError(
            f"records must be a list of records (from benchmark.sweep); got "
            f"{type(records).__name__}."
        )
    if not records:
        raise ValueError(
            "records must hold at least one record (from benchmark.sweep)."
        )
    for record in records:
        if not isinstance(record, Mapping) or not {"variant", "L"} <= set(
            record
        ):
            raise ValueError(
                f"each record must be a mapping with 'variant' and 'L' (as "
                f"benchmark.sweep returns); got {record!r}."
            )
    return list(records)
