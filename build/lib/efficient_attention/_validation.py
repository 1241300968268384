"""Input checks shared by every function of the package.

Each check raises a ``ValueError`` that names the argument, says what it got
and what would fix it, so a learner never has to decode a shape error from
deep inside a matmul.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


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
    ``value (..., S, Ev)``.

    Raises:
        ValueError: a rank below 2, differing leading dimensions, a head
            dimension or key count that does not match, a non-floating dtype,
            or mixed dtypes or devices.
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
    if key.shape[-2] != value.shape[-2]:
        raise ValueError(
            f"key and value must have the same number of positions S "
            f"(dimension -2); got {shapes}."
        )


def check_attn_mask(attn_mask: Tensor, query: Tensor, key: Tensor) -> None:
    """Check that a bool or additive mask broadcasts to ``(..., L, S)``."""
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
            f"scores' shape (..., L, S) = {scores_shape}. Build it with "
            f"masks.create_mask(mask_mod, "
            f"L={scores_shape[-2]}, S={scores_shape[-1]})."
        )


def check_scale(scale: float | None) -> None:
    """Check that ``scale`` is None (``1/sqrt(E)``) or a finite real number."""
    if scale is None:
        return
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise ValueError(
            f"scale must be a float or None (None means 1/sqrt(E)); "
            f"got {type(scale).__name__}."
        )
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite; got {scale}.")


def check_window(window: int | tuple[int, int]) -> tuple[int, int]:
    """Return ``window`` as ``(left, right)``; an int ``w`` means ``(w, w)``.

    Raises:
        ValueError: not an int or a pair of ints, or a side below 0.
    """
    if isinstance(window, int) and not isinstance(window, bool):
        left = right = window
    elif (
        isinstance(window, (tuple, list))
        and len(window) == 2
        and all(isinstance(w, int) and not isinstance(w, bool) for w in window)
    ):
        left, right = window
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


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` if an int >= 1, or raise ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int; got {value!r}.")
    return value


def check_non_negative_int(name: str, value: object) -> int:
    """Return ``value`` if an int >= 0, or raise ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an int >= 0; got {value!r}.")
    return value
