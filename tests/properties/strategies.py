"""What the property suite draws from (hypothesis strategies) and what
it compares with: numbers of every type, good and bad; attention
problems; mask functions and the masks they mean; masks for a problem;
tolerances. The tests in this folder import from here."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch import Tensor  # noqa: E402

from efficient_attention import (  # noqa: E402
    masks,
)

DTYPES = [torch.float32, torch.float64, torch.bfloat16]
INT_TYPES = [int, np.int64, np.int32, np.uint16, np.uint64]  # Integral
REAL_TYPES = [float, np.float64, np.float32]  # any numbers.Real


# -- numbers of every type, good and bad ---------------------------------


def ints(low: int, high: int) -> st.SearchStrategy:
    """Integral numbers in ``[low, high]`` of any integral type that fits."""

    def fits(value: int, kind: type) -> bool:
        if kind is int:
            return True
        limits = np.iinfo(kind)
        return limits.min <= value <= limits.max

    return st.integers(low, high).flatmap(
        lambda value: st.sampled_from(
            [kind for kind in INT_TYPES if fits(value, kind)]
        ).map(lambda kind: kind(value))
    )


def reach(low: int, high: int) -> st.SearchStrategy:
    """Small windows, strides, blocks or counts, and ones past 2**63."""
    return ints(low, high) | ints(2**61, 2**70)


def reals(low: float, high: float) -> st.SearchStrategy:
    """Finite real numbers in ``[low, high]`` of any real type (or int)."""
    return st.one_of(
        st.builds(
            lambda value, kind: kind(value),
            st.floats(low, high),
            st.sampled_from(REAL_TYPES),
        ),
        st.integers(math.ceil(low), math.floor(high)),
        st.just(Fraction(1, 3)).filter(lambda x: low <= x <= high),
    )


def not_numbers() -> st.SearchStrategy:
    """What is no number: bools, strings, None, containers, complex."""
    return st.one_of(
        st.booleans(),
        st.just(np.bool_(True)),
        st.text(max_size=3),
        st.none(),
        st.just([1]),
        st.just(1 + 2j),
    )


def not_positive_ints() -> st.SearchStrategy:
    """Bad values where a positive int is expected."""
    return st.one_of(
        not_numbers(),
        st.integers(-10, 0),
        st.integers(-10, 0).map(np.int64),
        st.floats(),  # 2.0 too: sizes are integral, as torch's
        st.just(np.float32(2.0)),
    )


def not_non_negative_ints() -> st.SearchStrategy:
    return st.one_of(
        not_numbers(),
        st.integers(-10, -1),
        st.integers(-10, -1).map(np.int32),
        st.floats(),
    )


def not_finite_reals() -> st.SearchStrategy:
    return st.one_of(
        not_numbers(),
        st.sampled_from([math.inf, -math.inf, math.nan]),
        st.just(np.float32("nan")),
    )


def raises_naming(name: str, call: Callable[[], object]) -> None:
    """``call()`` must raise a ValueError whose message names ``name``."""
    with pytest.raises(ValueError) as error:
        call()
    assert name in str(error.value), (name, str(error.value))


# -- attention problems ---------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """Shapes, dtype and values of one ``query, key, value`` triple."""

    lead: tuple[int, ...]
    L: int
    S: int
    E: int
    Ev: int
    dtype: torch.dtype
    seed: int
    magnitude: float

    def qkv(self) -> tuple[Tensor, Tensor, Tensor]:
        generator = torch.Generator().manual_seed(self.seed)
        shapes = ((self.L, self.E), (self.S, self.E), (self.S, self.Ev))
        return tuple(
            (
                torch.randn(
                    *self.lead, n, e, generator=generator, dtype=torch.float64
                )
                * self.magnitude
            ).to(self.dtype)
            for n, e in shapes
        )

    @property
    def scores_shape(self) -> tuple[int, ...]:
        return (*self.lead, self.L, self.S)


problems = st.builds(
    Problem,
    lead=st.lists(st.integers(0, 3), max_size=3).map(tuple),
    L=st.integers(0, 9),
    S=st.integers(0, 9),
    E=st.integers(1, 16),
    Ev=st.integers(0, 6),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**32 - 1),
    magnitude=st.sampled_from([0.1, 1.0, 3.0, 1e3, 1e20]),
)


def may_overflow(q: Tensor, k: Tensor, scale: object) -> bool:
    """Whether ``Q K^T * scale`` comes near the largest float of its
    compute dtype (float32 for half inputs), in an exact float64 product.
    """
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    scaled = q.double() * scale
    scores = scaled @ k.double().transpose(-2, -1)
    largest = max(
        (t.abs().max().item() for t in (scaled, scores) if t.numel()),
        default=0.0,
    )
    return not largest < torch.finfo(compute).max / 1e3


def tolerance(dtype: torch.dtype, value: Tensor) -> dict[str, float]:
    """assert_close tolerances against a float64 result, scaled to values."""
    size = max(1.0, value.abs().max().item()) if value.numel() else 1.0
    if dtype == torch.float64:
        return {"atol": 1e-10 * size, "rtol": 1e-7}
    if dtype == torch.float32:
        return {"atol": 1e-5 * size, "rtol": 1e-4}
    return {"atol": 2e-2 * size, "rtol": 2e-2}  # one bfloat16 rounding


# -- mask functions and what they mean ------------------------------------


@dataclass(frozen=True)
class Pattern:
    """A mask function and the plain predicate it must equal."""

    mask_mod: masks.MaskMod
    allowed: Callable[[int, int, int, int], bool]  # (b, h, i, j)
    batch: int | None  # the batch a key_padding inside needs
    text: str

    def __repr__(self) -> str:
        return self.text


def windows() -> st.SearchStrategy:
    """Windows as users write them: ``w`` or ``(left, right)``, any ints."""
    return reach(0, 4) | st.tuples(reach(0, 4), reach(0, 4))


def pattern_mask(mask_mod: masks.MaskMod, p: Problem) -> Tensor:
    """``create_mask(mask_mod, L, S)``, also for ``L = 0`` or ``S = 0``."""
    if not (p.L and p.S):
        return torch.ones(p.L, p.S, dtype=torch.bool)
    return masks.create_mask(mask_mod, p.L, p.S)


def sliding(window) -> Pattern:
    lo, hi = (window, window) if np.ndim(window) == 0 else window
    lo, hi = int(lo), int(hi)
    return Pattern(
        masks.sliding_window(window),
        lambda b, h, i, j: i - lo <= j <= i + hi,
        None,
        f"sliding_window({window!r})",
    )


def dilated(left, right, dilation) -> Pattern:
    lo, hi, d = int(left), int(right), int(dilation)
    return Pattern(
        masks.dilated_sliding_window((left, right), dilation),
        lambda b, h, i, j: i - lo * d <= j <= i + hi * d and (i - j) % d == 0,
        None,
        f"dilated_sliding_window(({left!r}, {right!r}), {dilation!r})",
    )


def strided(stride) -> Pattern:
    s = int(stride)
    return Pattern(
        masks.strided(stride),
        lambda b, h, i, j: (i - j) % s == 0,
        None,
        f"strided({stride!r})",
    )


def block_local(size) -> Pattern:
    n = int(size)
    return Pattern(
        masks.block_local(size),
        lambda b, h, i, j: i // n == j // n,
        None,
        f"block_local({size!r})",
    )


def global_count(count) -> Pattern:
    n = int(count)
    return Pattern(
        masks.global_tokens(count),
        lambda b, h, i, j: i < n or j < n,
        None,
        f"global_tokens({count!r})",
    )


def global_list(positions: list[int]) -> Pattern:
    where = set(positions)
    return Pattern(
        masks.global_tokens(positions),
        lambda b, h, i, j: i in where or j in where,
        None,
        f"global_tokens({positions!r})",
    )


def padding(lengths: list[int]) -> Pattern:
    return Pattern(
        masks.key_padding(lengths),
        lambda b, h, i, j: j < lengths[b],
        len(lengths),
        f"key_padding({lengths!r})",
    )


def head_and_row_parity(b, h, q_idx, kv_idx):
    """A mask function of every index: exercises b and h reaching it."""
    return (b + h + q_idx + kv_idx) % 3 != 0


def combine(kind: str, children: list[Pattern]) -> Pattern:
    batches = {c.batch for c in children} - {None}
    assert len(batches) <= 1
    batch = batches.pop() if batches else None
    parts = ", ".join(map(repr, children))
    if kind == "and":
        return Pattern(
            masks.and_masks(*(c.mask_mod for c in children)),
            lambda *idx: all(c.allowed(*idx) for c in children),
            batch,
            f"and_masks({parts})",
        )
    if kind == "or":
        return Pattern(
            masks.or_masks(*(c.mask_mod for c in children)),
            lambda *idx: any(c.allowed(*idx) for c in children),
            batch,
            f"or_masks({parts})",
        )
    (child,) = children[:1]
    return Pattern(
        masks.invert(child.mask_mod),
        lambda *idx: not child.allowed(*idx),
        batch,
        f"invert({child!r})",
    )


def leaf_patterns(batch: int | None) -> st.SearchStrategy[Pattern]:
    options = [
        st.just(Pattern(masks.full, lambda *idx: True, None, "full")),
        st.just(
            Pattern(masks.causal, lambda b, h, i, j: j <= i, None, "causal")
        ),
        st.builds(sliding, windows()),
        st.builds(dilated, reach(0, 3), reach(0, 3), reach(1, 3)),
        st.builds(strided, reach(1, 4)),
        st.builds(block_local, reach(1, 5)),
        st.builds(global_count, reach(0, 3)),
        st.builds(global_list, st.lists(st.integers(0, 10), max_size=3)),
        st.just(
            Pattern(
                head_and_row_parity,
                lambda b, h, i, j: (b + h + i + j) % 3 != 0,
                None,
                "head_and_row_parity",
            )
        ),
    ]
    if batch is not None:
        lengths = st.lists(st.integers(0, 10), min_size=batch, max_size=batch)
        options.append(st.builds(padding, lengths))
    return st.one_of(options)


def combinations(children: st.SearchStrategy) -> st.SearchStrategy:
    return st.builds(
        combine,
        st.sampled_from(["and", "or", "invert"]),
        st.lists(children, min_size=1, max_size=3),
    )


def patterns(batch: int | None = None) -> st.SearchStrategy[Pattern]:
    """Mask functions from the builders, nested in the combinators."""
    return st.recursive(leaf_patterns(batch), combinations, max_leaves=4)


def evaluate(
    pattern: Pattern, L: int, S: int, batch: int | None, heads: int | None
) -> Tensor:
    """The mask ``create_mask`` documents, by asking every (b, h, i, j)."""
    rows = range(batch) if batch is not None else [0]
    heads_ = range(heads) if heads is not None else [0]
    mask = torch.tensor(
        [
            [
                [
                    [pattern.allowed(b, h, i, j) for j in range(S)]
                    for i in range(L)
                ]
                for h in heads_
            ]
            for b in rows
        ],
        dtype=torch.bool,
    ).reshape(len(rows), len(heads_), L, S)
    if batch is None:
        mask = mask[0]
        if heads is None:
            mask = mask[0]
    return mask


# -- masks for a problem --------------------------------------------------


@st.composite
def bool_masks(draw, p: Problem) -> Tensor:
    """A bool mask that broadcasts to ``p``'s scores: a pattern or random."""
    lead = p.lead
    if p.L and p.S and draw(st.booleans()):
        batch = heads = None
        if len(lead) >= 2 and lead[-2] and lead[-1]:
            batch = draw(st.none() | st.just(lead[-2]))
            heads = draw(st.none() | st.just(lead[-1]))
        elif lead and lead[-1] and draw(st.booleans()):
            heads = lead[-1]
        pattern = draw(patterns(batch))
        if batch is None and heads is None:
            return pattern_mask(pattern.mask_mod, p)
        return masks.create_mask(
            pattern.mask_mod, p.L, p.S, batch=batch, heads=heads
        )
    # random bits of a broadcastable shape: some dims 1, some left out
    shape = [size if draw(st.booleans()) else 1 for size in p.scores_shape]
    shape = shape[draw(st.integers(0, len(p.lead))) :]
    seed = draw(st.integers(0, 2**32 - 1))
    share = draw(st.sampled_from([0.0, 0.3, 0.7, 1.0]))
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=generator) >= share


@st.composite
def additive_masks(draw, p: Problem) -> Tensor:
    """A float mask in ``p``'s dtype: finite biases, -inf where blocked."""
    allowed = draw(bool_masks(p))
    seed = draw(st.integers(0, 2**32 - 1))
    size = draw(st.sampled_from([0.0, 1.0, 5.0]))
    bias = torch.randn(
        allowed.shape, generator=torch.Generator().manual_seed(seed)
    )
    bias = (bias * size).masked_fill(~allowed, -math.inf)
    return bias.to(p.dtype)


def allowed_pairs(mask: Tensor | None, p: Problem) -> Tensor:
    """Which (query, key) pairs ``mask`` lets through, at scores' shape."""
    if mask is None:
        return torch.ones(p.scores_shape, dtype=torch.bool)
    if mask.dtype != torch.bool:
        mask = mask > -math.inf
    return mask.expand(p.scores_shape)
