"""Synthetic tasks that chapters train small models on, generated offline.

``offset_copy`` asks a model to copy tokens from fixed distances back: a
short offset needs only a short reach, a long one a long reach, so the heads
of an adaptive-span model (Sukhbaatar et al. 2019, arXiv 1905.07799) learn
different spans. Chapter "Local attention" trains on it.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

from ._validation import check_positive_int

IGNORE = -100  # the target where there is nothing to copy (cross_entropy)


def offset_copy(
    batch: int,
    length: int,
    *,
    offsets: Sequence[int] = (1, 20),
    vocab: int = 16,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Random tokens, and for each position the tokens ``offsets`` back.

    Args:
        batch: sequences. length: tokens per sequence ``L``.
        offsets: distances to copy from; target ``c`` of position ``i`` is
            token ``i - offsets[c]`` (``IGNORE`` where ``i < offsets[c]``).
        vocab: tokens are drawn uniformly from ``range(vocab)``.
        generator: the randomness (seed it for a reproducible task).

    Returns:
        ``tokens (batch, L)`` and ``targets (batch, L, len(offsets))``, both
        int64.

    Raises:
        ValueError: a size below 1, no offsets, or an offset that is not an
            int in ``[1, length)``.
    """
    batch, length, vocab = (
        check_positive_int(name, value)
        for name, value in (
            ("batch", batch),
            ("length", length),
            ("vocab", vocab),
        )
    )
    offsets = list(offsets)
    if not offsets:
        raise ValueError("offsets must hold at least one distance.")
    for offset in offsets:
        if isinstance(offset, bool) or not isinstance(
            offset, numbers.Integral
        ):
            raise ValueError(f"offsets must be ints; got {offset!r}.")
        if not 1 <= offset < length:
            raise ValueError(
                f"each offset must be in [1, length={length}); got {offset}."
            )
    offsets = [int(offset) for offset in offsets]
    tokens = torch.randint(vocab, (batch, length), generator=generator)
    targets = torch.full((batch, length, len(offsets)), IGNORE)
    for c, offset in enumerate(offsets):
        targets[:, offset:, c] = tokens[:, :-offset]
    return tokens, targets
