"""Random inputs the tests share."""

from __future__ import annotations

import torch
from torch import Tensor


def random_qkv(
    *lead: int,
    L: int = 9,
    S: int | None = None,
    E: int = 8,
    Ev: int = 5,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Seeded query ``(*lead, L, E)``, key ``(*lead, S, E)`` and value
    ``(*lead, S, Ev)`` from a standard normal; ``S`` defaults to ``L``."""
    S = L if S is None else S
    generator = torch.Generator().manual_seed(seed)
    return tuple(
        torch.randn(*lead, n, e, generator=generator, dtype=dtype)
        for n, e in ((L, E), (S, E), (S, Ev))
    )
