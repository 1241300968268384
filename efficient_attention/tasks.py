"""Synthetic tasks that chapters train small models on, generated offline.

``offset_copy`` asks a model to copy tokens from fixed distances back: a
short offset needs only a short reach, a long one a long reach, so the heads
of an adaptive-span model (Sukhbaatar et al. 2019, arXiv 1905.07799) learn
different spans. Chapter "Local attention" trains on it. ``far_marker``
hides one marker early in a sequence and asks for it at the end: a
long-reach retrieval task that chapter "Hierarchical attention" trains
on.
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


def far_marker(
    batch: int,
    length: int,
    *,
    classes: int = 4,
    vocab: int = 16,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """One marker early in the sequence, to be reported at its end.

    A long-reach retrieval task: every sequence holds noise tokens (drawn
    from ``range(classes, vocab)``) and one marker token (from
    ``range(classes)``) at a random position of its first quarter; every
    position of the last quarter must name the marker. So a query is at
    least ``length / 2`` tokens from what it needs: a local window
    narrower than that guesses (accuracy ``1 / classes``), while dense
    and hierarchical attention can reach it. Chapter "Hierarchical
    attention" trains on it.

    Args:
        batch: sequences. length: tokens per sequence ``L`` (>= 4).
        classes: marker kinds (the answer's classes), >= 2.
        vocab: tokens in all, > ``classes``.
        generator: the randomness (seed it for a reproducible task).

    Returns:
        ``tokens (batch, L)`` and ``targets (batch, L)``, both int64:
        the marker's class in the last quarter, ``IGNORE`` elsewhere.

    Raises:
        ValueError: a size below its minimum, or ``vocab <= classes``.
    """
    batch, length, classes, vocab = (
        check_positive_int(name, value)
        for name, value in (
            ("batch", batch),
            ("length", length),
            ("classes", classes),
            ("vocab", vocab),
        )
    )
    if length < 4:
        raise ValueError(f"length must be at least 4; got {length}.")
    if classes < 2 or vocab <= classes:
        raise ValueError(
            f"need 2 <= classes < vocab (noise tokens are the others); got "
            f"classes={classes}, vocab={vocab}."
        )
    tokens = torch.randint(
        classes, vocab, (batch, length), generator=generator
    )
    marker = torch.randint(classes, (batch,), generator=generator)
    where = torch.randint(length // 4, (batch,), generator=generator)
    tokens[torch.arange(batch), where] = marker
    targets = torch.full((batch, length), IGNORE)
    last = length - length // 4  # the last quarter
    targets[:, last:] = marker[:, None]
    return tokens, targets
