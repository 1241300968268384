"""Looking inside attention: the weights any variant applies, however computed.

Every variant in this package is linear in ``value``: its output is
``A @ value`` for some ``L x S`` matrix ``A`` that depends on the queries and
keys only. Feeding the identity matrix as ``value`` returns ``A`` itself, so
one helper draws the effective attention of dense, sparse, low-rank and kernel
methods alike (chapter 1 introduces it; every later chapter uses it for its
pictures).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from .._validation import check_qkv, check_sequence
from .dense import dense_attention


def effective_attention(
    fn: Callable[..., Tensor], query: Tensor, key: Tensor, **kwargs: object
) -> Tensor:
    """The ``L x S`` weights that attention function ``fn`` applies to values.

    Args:
        fn: an attention function
            ``fn(query, key, value, **kwargs) -> (..., L, Ev)`` that is linear
            in ``value``.
        query: ``(..., L, E)``. key: ``(..., S, E)``.
        **kwargs: keyword arguments for ``fn`` (a mask, a window, a scale...).

    Returns:
        ``(..., L, S)``: row ``i`` holds the weight query ``i`` gives each key.

    Raises:
        ValueError: ``fn`` is not callable, ``query``/``key`` are not
            tensors of rank >= 2, or ``kwargs`` holds ``value`` (the
            identity is the value); ``fn`` itself checks the rest.

    Complexity: one call of ``fn`` with ``Ev = S``; memory ``O(L * S)``.

    Equivalent to:
        ``fn(query, key, torch.eye(S).expand(..., S, S), **kwargs)``.
    """
    if not callable(fn):
        raise ValueError(
            f"fn must be an attention function; got {type(fn).__name__}."
        )
    if "value" in kwargs:
        raise ValueError(
            "effective_attention feeds the identity matrix as value; call "
            "it without value= (multiply its result by your value instead)."
        )
    check_sequence("query", query)
    check_sequence("key", key)
    S = key.shape[-2]
    identity = torch.eye(S, dtype=key.dtype, device=key.device)  # (S, S)
    value = identity.expand(*key.shape[:-2], S, S)  # (..., S, S)
    return fn(query, key, value, **kwargs)


class ApproximationError(NamedTuple):
    """Relative errors of an approximation against its reference."""

    output: float
    """``||out - out_ref|| / ||out_ref||`` (Frobenius, all heads)."""
    attention: float
    """The same for the effective ``L x S`` attention matrices."""


def approximation_error(
    fn: Callable[..., Tensor],
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    reference: Callable[..., Tensor] = dense_attention,
    **kwargs: object,
) -> ApproximationError:
    """How far ``fn`` lands from ``reference``: outputs and attention maps.

    Both are computed in float64 (so the error is the method's, not the
    rounding's), ``kwargs`` go to ``fn`` and a ``scale`` among them to the
    reference too.

    Args:
        fn: an approximate attention function, linear in ``value``.
        query: ``(..., L, E)``. key: ``(..., S, E)``. value: ``(..., S, Ev)``.
        reference: the exact function; ``dense_attention`` by default.
        **kwargs: keyword arguments of ``fn`` (projections, features...),
            float64 tensors among them cast like the inputs.

    Returns:
        ``ApproximationError(output, attention)``: relative Frobenius errors
        (0 = exact); ``attention`` needs ``L * S`` memory per head.

    Raises:
        ValueError: inputs that do not fit (checked by ``fn``), or an
            ``fn`` or ``reference`` that is not callable.
    """
    if not callable(fn):
        raise ValueError(
            f"fn must be an attention function; got {type(fn).__name__}."
        )
    if not callable(reference):
        raise ValueError(
            f"reference must be an attention function; got "
            f"{type(reference).__name__}."
        )
    check_qkv(query, key, value)
    q, k, v = (t.double() for t in (query, key, value))
    options = {
        name: x.double() if isinstance(x, Tensor) and x.is_floating_point()
        else x
        for name, x in kwargs.items()
    }  # fmt: skip
    exact = {"scale": kwargs["scale"]} if "scale" in kwargs else {}
    out = fn(q, k, v, **options)
    out_ref = reference(q, k, v, **exact)
    weights = effective_attention(fn, q, k, **options)
    weights_ref = effective_attention(reference, q, k, **exact)
    return ApproximationError(
        output=relative_error(out, out_ref),
        attention=relative_error(weights, weights_ref),
    )


def relative_error(result: Tensor, reference: Tensor) -> float:
    """``||result - reference|| / ||reference||`` (Frobenius, in float64).

    How far ``result`` lies from ``reference`` as a share of its size: 0
    when equal, 1 for zeros. Where ``reference`` is all zeros (or empty),
    the absolute ``||result - reference||`` instead. Shapes must broadcast.
    """
    difference = result.double() - reference.double()
    size = torch.linalg.vector_norm(reference.double())
    if size == 0:
        return float(torch.linalg.vector_norm(difference))
    return float(torch.linalg.vector_norm(difference) / size)
