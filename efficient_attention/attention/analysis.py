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

import torch
from torch import Tensor

from .._validation import check_sequence


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
