"""Property-based tests (hypothesis) of the package's public API.

Random valid inputs (shapes, dtypes, windows, masks, scales, leading
dimensions, numbers of any integral or real type) must give what a float64
computation written apart from the package gives (tests/reference.py, itself
checked against PyTorch's SDPA here); random invalid inputs must raise a
ValueError whose message names the argument, and nothing else: no other
exception type, no NaN for valid input, no example slower than the
profile's deadline (tests/conftest.py).

Every variant of the registry (``efficient_attention.variants``) joins the
suite by itself: ``check_registered_variant`` runs it with random settings
and inputs (right shape and dtype, finite, the same answer twice, equal to
dense attention with its mask where the registry gives one). A variant
tested more deeply has an entry in ``VARIANTS`` too: the function, a
strategy of its keyword arguments for a problem, the dense mask those
arguments amount to, and a strategy of bad keyword arguments paired with
the argument name each error must mention (README, "How the tests work").
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import math
import pathlib
import string
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from unittest import mock

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from hypothesis import assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from reference import reference_attention  # noqa: E402
from torch import Tensor  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import efficient_attention as ea  # noqa: E402
from efficient_attention import (  # noqa: E402
    _validation,
    benchmark,
    benchmark_cli,
    cost,
    masks,
    plotting,
    tasks,
    variants,
)
from efficient_attention.attention import hierarchical  # noqa: E402
from efficient_attention.compression import (  # noqa: E402
    distillation,
    pruning,
    quantization,
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


# -- the registry of attention variants -----------------------------------


@dataclass(frozen=True)
class Variant:
    """An attention function and what the property suite needs to know.

    ``kwargs(p)``: a strategy of valid keyword arguments for problem ``p``.
    ``mask(kwargs, p)``: the dense ``attn_mask`` (bool, additive or None)
    those arguments amount to; the variant must equal dense attention with
    it. ``bad_kwargs(p)``: a strategy of ``(kwargs, name)``, keyword
    arguments that must raise a ValueError whose message names ``name``.
    """

    name: str
    fn: Callable[..., Tensor]
    kwargs: Callable[[Problem], st.SearchStrategy[dict]]
    mask: Callable[[dict, Problem], Tensor | None]
    bad_kwargs: Callable[[Problem], st.SearchStrategy[tuple[dict, str]]]


def scales() -> st.SearchStrategy[dict]:
    return st.one_of(
        st.just({}),
        st.just({"scale": None}),
        reals(-3, 3).map(lambda s: {"scale": s}),
        st.floats(-1e300, 1e300).map(lambda s: {"scale": s}),
    )


def dense_kwargs(p: Problem) -> st.SearchStrategy[dict]:
    masking = st.one_of(
        st.just({}),
        st.sampled_from([{"is_causal": True}, {"is_causal": False}]),
        bool_masks(p).map(lambda m: {"attn_mask": m}),
        additive_masks(p).map(lambda m: {"attn_mask": m}),
    )
    return st.builds(lambda m, s: {**m, **s}, masking, scales())


def dense_mask(kwargs: dict, p: Problem) -> Tensor | None:
    if kwargs.get("is_causal"):
        return torch.ones(p.L, p.S, dtype=torch.bool).tril()
    return kwargs.get("attn_mask")


def dense_bad_kwargs(p: Problem) -> st.SearchStrategy[tuple[dict, str]]:
    shape = p.scores_shape
    other_dtype = torch.float16 if p.dtype != torch.float16 else torch.float32
    bad_masks = [
        torch.ones(p.L + 2, p.S, dtype=torch.bool),  # does not broadcast
        torch.zeros(shape, dtype=torch.long),
        torch.zeros(shape, dtype=other_dtype),
        [[True]],
    ]
    if math.prod(shape):  # an empty mask holds no NaN
        bad_masks += [
            torch.full(shape, value, dtype=p.dtype)
            for value in (math.nan, math.inf)
        ]
    both = {
        "attn_mask": torch.ones(p.L, p.S, dtype=torch.bool),
        "is_causal": True,
    }
    return st.one_of(
        st.tuples(
            st.one_of(not_numbers(), st.integers(), st.floats())
            .filter(lambda x: not isinstance(x, bool))
            .map(lambda x: {"is_causal": x}),
            st.just("is_causal"),
        ),
        st.tuples(
            not_finite_reals()
            .filter(lambda x: x is not None)
            .map(lambda x: {"scale": x}),
            st.just("scale"),
        ),
        st.tuples(
            st.sampled_from(bad_masks).map(lambda m: {"attn_mask": m}),
            st.just("attn_mask"),
        ),
        st.tuples(st.just(both), st.just("attn_mask")),
    )


def local_heads(p: Problem) -> int | None:
    """Heads a per-head window list can name: dimension -3 of the query."""
    return p.lead[-1] if p.lead and p.lead[-1] else None


@st.composite
def local_kwargs(draw, p: Problem) -> dict:
    side = reach(0, 12)
    one = side | st.tuples(side, side)
    heads = local_heads(p)
    window = one
    dilation = reach(1, 4)
    if heads is not None:
        window = one | st.lists(
            st.tuples(side, side), min_size=heads, max_size=heads
        )
        dilation = dilation | st.lists(
            reach(1, 4), min_size=heads, max_size=heads
        )
    backends = ["auto", "torch"]
    if p.dtype != torch.float64:  # the kernel computes in float32
        backends.append("kernel")
    kwargs = {
        "window": draw(window),
        "border": draw(st.sampled_from(["clip", "shift"])),
        "backend": draw(st.sampled_from(backends)),
    }
    if draw(st.booleans()):
        kwargs["dilation"] = draw(dilation)
    return {**kwargs, **draw(scales())}


def local_mask(kwargs: dict, p: Problem) -> Tensor:
    if not (p.L and p.S):
        return torch.zeros(p.L, p.S, dtype=torch.bool)
    window, dilation = kwargs["window"], kwargs.get("dilation", 1)
    border = kwargs["border"]

    def one(w, d):
        if border == "shift":
            return masks.shifted_window(w, p.S, d)
        return masks.dilated_sliding_window(w, d)

    if not isinstance(window, list) and not isinstance(dilation, list):
        return masks.create_mask(one(window, dilation), p.L, p.S)
    heads = local_heads(p)
    windows = window if isinstance(window, list) else [window] * heads
    dilations = dilation if isinstance(dilation, list) else [dilation] * heads
    mods = [one(w, d) for w, d in zip(windows, dilations)]
    return masks.create_mask(masks.per_head(*mods), p.L, p.S, heads=heads)


def local_bad_kwargs(p: Problem) -> st.SearchStrategy[tuple[dict, str]]:
    good = {"window": 2}
    wrong_count = [(1, 1)] * ((local_heads(p) or 0) + 1)
    return st.one_of(
        st.tuples(
            st.one_of(
                not_non_negative_ints(),
                st.tuples(st.integers(-5, -1), st.integers(0, 3)),
                st.just((1, 2, 3)),
                st.just(wrong_count),
            ).map(lambda w: {"window": w}),
            st.just("window"),
        ),
        st.tuples(
            st.one_of(
                # a list is a per-head dilation: [1] can be valid
                not_positive_ints().filter(lambda d: not isinstance(d, list)),
                st.just([1] * 9),
            ).map(lambda d: {**good, "dilation": d}),
            st.just("dilation"),
        ),
        st.tuples(
            st.sampled_from(["wrap", None, 1]).map(
                lambda b: {**good, "border": b}
            ),
            st.just("border"),
        ),
        st.tuples(
            st.sampled_from(["gpu", None]).map(
                lambda b: {**good, "backend": b}
            ),
            st.just("backend"),
        ),
        st.tuples(
            not_finite_reals()
            .filter(lambda x: x is not None)
            .map(lambda x: {**good, "scale": x}),
            st.just("scale"),
        ),
    )


def sparse_backends(p: Problem) -> list[str]:
    # the kernel computes in float32
    return ["auto", "torch"] + (["kernel"] if p.dtype != torch.float64 else [])


@st.composite
def block_sparse_kwargs(draw, p: Problem) -> dict:
    block_size = draw(reach(1, 10), label="block_size")
    nq, nk = -(-p.L // int(block_size)), -(-p.S // int(block_size))
    heads = local_heads(p)
    shape = (nq, nk)
    if heads is not None and draw(st.booleans(), label="per head"):
        shape = (heads, nq, nk)
    cells = draw(
        st.lists(st.booleans(), min_size=math.prod(shape),
                 max_size=math.prod(shape)),
        label="layout",
    )  # fmt: skip
    layout = torch.tensor(cells, dtype=torch.bool).reshape(shape)
    kwargs = {
        "layout": layout,
        "block_size": block_size,
        "backend": draw(st.sampled_from(sparse_backends(p))),
    }
    return {**kwargs, **draw(scales())}


def block_sparse_mask(kwargs: dict, p: Problem) -> Tensor:
    layout = kwargs["layout"]
    if not (p.L and p.S):
        return torch.zeros(p.L, p.S, dtype=torch.bool)
    heads = layout.shape[0] if layout.dim() == 3 else None
    mod = masks.from_block_layout(layout, int(kwargs["block_size"]))
    return masks.create_mask(mod, p.L, p.S, heads=heads)


def block_sparse_bad_kwargs(
    p: Problem,
) -> st.SearchStrategy[tuple[dict, str]]:
    nq, nk = -(-p.L // 4), -(-p.S // 4)
    good = torch.ones(nq, nk, dtype=torch.bool)
    bad_layouts = [
        good.float(),
        good.long(),
        [[True]],
        torch.ones(nq + 1, nk, dtype=torch.bool),
        torch.ones(nk, dtype=torch.bool),
        torch.ones(1, 1, nq, nk, dtype=torch.bool),
        torch.ones((local_heads(p) or 1) + 1, nq, nk, dtype=torch.bool),
    ]
    return st.one_of(
        st.tuples(
            st.sampled_from(bad_layouts).map(
                lambda m: {"layout": m, "block_size": 4}
            ),
            st.just("layout"),
        ),
        st.tuples(
            not_positive_ints().map(
                lambda b: {"layout": good, "block_size": b}
            ),
            st.just("block_size"),
        ),
        st.tuples(
            st.sampled_from(["gpu", None]).map(
                lambda b: {"layout": good, "block_size": 4, "backend": b}
            ),
            st.just("backend"),
        ),
        st.tuples(
            not_finite_reals()
            .filter(lambda x: x is not None)
            .map(lambda x: {"layout": good, "block_size": 4, "scale": x}),
            st.just("scale"),
        ),
    )


@st.composite
def sparse_kwargs(draw, p: Problem) -> dict:
    pattern = draw(patterns(), label="pattern")
    kwargs = {
        "pattern": pattern.mask_mod,
        "block_size": draw(reach(1, 10), label="block_size"),
        "backend": draw(st.sampled_from(sparse_backends(p))),
        "_pattern": pattern,
    }
    heads = local_heads(p)
    if heads is not None and draw(st.booleans(), label="per head"):
        kwargs["heads"] = heads
    return {**kwargs, **draw(scales())}


def sparse_mask(kwargs: dict, p: Problem) -> Tensor:
    if not (p.L and p.S):
        return torch.zeros(p.L, p.S, dtype=torch.bool)
    return masks.create_mask(
        kwargs["pattern"], p.L, p.S, heads=kwargs.get("heads")
    )


def sparse_attention(query, key, value, _pattern=None, **kwargs):
    """``ea.sparse_attention``; ``_pattern`` only names the mask in the
    hypothesis report."""
    return ea.sparse_attention(query, key, value, **kwargs)


def sparse_bad_kwargs(p: Problem) -> st.SearchStrategy[tuple[dict, str]]:
    return st.one_of(
        st.tuples(
            st.sampled_from([torch.ones(2, 2), "causal", None]).map(
                lambda m: {"pattern": m}
            ),
            st.just("pattern"),
        ),
        st.tuples(
            not_positive_ints()
            .filter(lambda b: b is not None)  # None: the default block
            .map(lambda b: {"pattern": masks.causal, "block_size": b}),
            st.just("block_size"),
        ),
    )


@st.composite
def routing_kwargs(draw, p: Problem) -> dict:
    kwargs = {
        "clusters": draw(ints(1, max(p.S, 1)), label="clusters"),
        "block_size": draw(reach(1, 10), label="block_size"),
        "backend": draw(st.sampled_from(sparse_backends(p))),
    }
    if draw(st.booleans()):
        kwargs["iterations"] = draw(
            ints(0, 3) | ints(2**61, 2**70), label="iterations"
        )
    return {**kwargs, **draw(scales())}


def routing_mask(kwargs: dict, p: Problem) -> Tensor:
    q, k, _ = p.qkv()
    q_labels, k_labels = ea.kmeans_clusters(
        q, k, clusters=kwargs["clusters"],
        iterations=kwargs.get("iterations", 2),
    )  # fmt: skip
    return q_labels[..., :, None] == k_labels[..., None, :]


def routing_bad_kwargs(p: Problem) -> st.SearchStrategy[tuple[dict, str]]:
    return st.one_of(
        st.tuples(
            st.one_of(
                not_positive_ints(), st.integers(max(p.S, 1) + 1, 100)
            ).map(lambda c: {"clusters": c}),
            st.just("clusters"),
        ),
        st.tuples(
            not_non_negative_ints().map(
                lambda i: {"clusters": 1, "iterations": i}
            ),
            st.just("iterations"),
        ),
        st.tuples(
            st.sampled_from([0, "seed"]).map(
                lambda g: {"clusters": 1, "generator": g}
            ),
            st.just("generator"),
        ),
    )


@st.composite
def linformer_kwargs(draw, p: Problem) -> dict:
    """Projections that permute the keys (the identity among them): the
    limit in which Linformer is exact attention."""
    order = draw(st.permutations(range(p.S)), label="key order")
    perm = torch.eye(p.S, dtype=p.dtype)[list(order)]  # (S, S)
    kwargs = {"proj_k": perm}
    if draw(st.booleans(), label="own proj_v"):
        kwargs["proj_v"] = perm.clone()
    return {**kwargs, **draw(scales())}


def linformer_mask(kwargs: dict, p: Problem) -> None:
    return None


def linformer_bad_kwargs(p: Problem) -> st.SearchStrategy[tuple[dict, str]]:
    eye = torch.eye(p.S, dtype=p.dtype)
    other = torch.float64 if p.dtype != torch.float64 else torch.float32
    return st.one_of(
        st.sampled_from(
            [
                torch.eye(p.S + 1, dtype=p.dtype),
                eye.to(other),
                torch.ones(p.S, dtype=p.dtype),
                "identity",
            ]
        ).map(lambda m: ({"proj_k": m}, "proj_k")),
        st.just(
            (
                {
                    "proj_k": eye,
                    "proj_v": torch.zeros(p.S + 1, p.S, dtype=p.dtype),
                },
                "proj_v",
            )
        ),
    )


@st.composite
def one_level_kwargs(draw, p: Problem) -> dict:
    """Pyramid and recursive attention in their exact setting: one level
    (their other levels are tested in tests/test_hierarchical.py)."""
    kwargs = {
        "block_size": draw(reach(1, 10), label="block_size"),
        "levels": draw(st.sampled_from([1, np.int64(1)]), label="levels"),
        "backend": draw(st.sampled_from(sparse_backends(p))),
    }
    return {**kwargs, **draw(scales())}


def no_mask(kwargs: dict, p: Problem) -> None:
    return None


def multilevel_bad_kwargs(p: Problem) -> st.SearchStrategy[tuple[dict, str]]:
    n = max(p.L, p.S, 1)
    return st.one_of(
        st.tuples(
            not_positive_ints().map(lambda b: {"block_size": b}),
            st.just("block_size"),
        ),
        st.tuples(
            st.one_of(
                # None is a good value here: as many levels as fit
                not_positive_ints().filter(lambda x: x is not None),
                st.integers(n + 1, n + 40),
            ).map(lambda levels: {"block_size": 2, "levels": levels}),
            st.just("levels"),
        ),
        st.tuples(
            st.just({"block_size": 1, "backend": "cuda"}),
            st.just("backend"),
        ),
    )


@st.composite
def coarse_to_fine_kwargs(draw, p: Problem) -> dict:
    block_size = draw(reach(1, 10), label="block_size")
    nk = -(-p.S // min(int(block_size), max(p.L, p.S, 1)))
    kwargs = {
        "block_size": block_size,
        "top_k": draw(ints(0, nk), label="top_k"),
        "band": draw(ints(0, 3), label="band"),
        "backend": draw(st.sampled_from(sparse_backends(p))),
    }
    return {**kwargs, **draw(scales())}


def coarse_to_fine_mask(kwargs: dict, p: Problem) -> Tensor:
    if not (p.L and p.S and p.E):
        return torch.zeros(p.L, p.S, dtype=torch.bool)
    q, k, _ = p.qkv()
    bs = min(int(kwargs["block_size"]), max(p.L, p.S))
    chosen = hierarchical.block_choice(
        q, k, block_size=bs, top_k=int(kwargs["top_k"]),
        band=int(kwargs["band"]),
    )  # fmt: skip
    mask = chosen.repeat_interleave(bs, -2).repeat_interleave(bs, -1)
    return mask[..., : p.L, : p.S]


def coarse_to_fine_bad_kwargs(
    p: Problem,
) -> st.SearchStrategy[tuple[dict, str]]:
    nk = -(-p.S // 1)
    return st.one_of(
        st.tuples(
            st.one_of(
                not_non_negative_ints(), st.integers(nk + 1, nk + 10)
            ).map(lambda t: {"block_size": 1, "top_k": t}),
            st.just("top_k"),
        ),
        st.tuples(
            not_non_negative_ints().map(
                lambda b: {"block_size": 1, "top_k": 0, "band": b}
            ),
            st.just("band"),
        ),
        st.tuples(
            not_positive_ints().map(lambda b: {"block_size": b, "top_k": 0}),
            st.just("block_size"),
        ),
    )


VARIANTS = [
    Variant(
        "dense_attention",
        ea.dense_attention,
        dense_kwargs,
        dense_mask,
        dense_bad_kwargs,
    ),
    Variant(
        "sliding_window_attention",
        ea.sliding_window_attention,
        local_kwargs,
        local_mask,
        local_bad_kwargs,
    ),
    Variant(
        "block_sparse_attention",
        ea.block_sparse_attention,
        block_sparse_kwargs,
        block_sparse_mask,
        block_sparse_bad_kwargs,
    ),
    Variant(
        "sparse_attention",
        sparse_attention,
        sparse_kwargs,
        sparse_mask,
        sparse_bad_kwargs,
    ),
    Variant(
        "routing_attention",
        ea.routing_attention,
        routing_kwargs,
        routing_mask,
        routing_bad_kwargs,
    ),
    Variant(
        "linformer_attention",
        ea.linformer_attention,
        linformer_kwargs,
        linformer_mask,
        linformer_bad_kwargs,
    ),
    Variant(
        "pyramid_attention",
        ea.pyramid_attention,
        one_level_kwargs,
        no_mask,
        multilevel_bad_kwargs,
    ),
    Variant(
        "recursive_attention",
        ea.recursive_attention,
        one_level_kwargs,
        no_mask,
        multilevel_bad_kwargs,
    ),
    Variant(
        "coarse_to_fine_attention",
        ea.coarse_to_fine_attention,
        coarse_to_fine_kwargs,
        coarse_to_fine_mask,
        coarse_to_fine_bad_kwargs,
    ),
]


def by_name(variant: Variant) -> str:
    return variant.name


@pytest.mark.parametrize("variant", VARIANTS, ids=by_name)
@given(data=st.data())
def test_variant_equals_the_float64_reference(variant, data):
    p = data.draw(problems, label="problem")
    kwargs = data.draw(variant.kwargs(p), label="kwargs")
    q, k, v = p.qkv()
    try:
        out = variant.fn(q, k, v, **kwargs)
    except ValueError as error:  # allowed where Q K^T * scale overflows
        assert may_overflow(q, k, kwargs.get("scale")), str(error)
        assert "scale" in str(error)
        return
    assert out.shape == (*p.lead, p.L, p.Ev) and out.dtype == p.dtype
    assert not out.isnan().any()
    expected = reference_attention(
        q, k, v, attn_mask=variant.mask(kwargs, p), scale=kwargs.get("scale")
    )
    torch.testing.assert_close(out.double(), expected, **tolerance(p.dtype, v))


@pytest.mark.parametrize("variant", VARIANTS, ids=by_name)
@given(data=st.data())
def test_effective_attention_is_the_matrix_each_variant_applies(variant, data):
    p = data.draw(problems, label="problem")
    kwargs = data.draw(variant.kwargs(p), label="kwargs")
    q, k, v = p.qkv()
    assume(not may_overflow(q, k, kwargs.get("scale")))
    weights = ea.effective_attention(variant.fn, q, k, **kwargs)
    assert weights.shape == p.scores_shape and weights.dtype == p.dtype
    assert not weights.isnan().any() and (weights >= 0).all()
    allowed = allowed_pairs(variant.mask(kwargs, p), p)
    assert (weights[~allowed] == 0).all()
    # rows sum to 1, or to 0 where no key may be attended
    has_key = allowed.any(-1).double()
    tol = tolerance(p.dtype, torch.ones(1))
    torch.testing.assert_close(weights.double().sum(-1), has_key, **tol)
    torch.testing.assert_close(
        weights.double() @ v.double(),
        variant.fn(q, k, v, **kwargs).double(),
        **tolerance(p.dtype, v),
    )


def approximation_kwargs(name: str, p: Problem) -> st.SearchStrategy:
    """Valid keyword arguments of the approximations that are not exact
    (Nyström below ``m = L = S``, Performer at any number of features)."""
    g = torch.Generator().manual_seed(p.seed)
    if name == "nystrom":
        return st.builds(
            lambda m, how, s: {
                "num_landmarks": m,
                "landmarks": how,
                "generator": g,
                **s,
            },
            ints(1, max(1, min(p.L, p.S))),
            st.sampled_from(
                ["segment-means", "uniform", "key-norm"]
                if p.L == p.S
                else ["segment-means"]
            ),
            scales(),
        )
    return st.builds(
        lambda m, causal, s: {
            "features": ea.make_performer_features(
                m, p.E, generator=g, dtype=p.dtype
            ),
            "is_causal": causal and p.L == p.S,
            **s,
        },
        st.integers(1, 40),
        st.booleans(),
        scales(),
    )


APPROXIMATIONS = {
    "nystrom": ea.nystrom_attention,
    "performer": ea.performer_attention,
}


@pytest.mark.parametrize("name", list(APPROXIMATIONS))
@given(data=st.data())
def test_approximations_give_finite_outputs_or_name_the_scale(name, data):
    p = data.draw(problems, label="problem")
    kwargs = data.draw(approximation_kwargs(name, p), label="kwargs")
    q, k, v = p.qkv()
    try:
        out = APPROXIMATIONS[name](q, k, v, **kwargs)
    except ValueError as error:  # allowed where Q K^T * scale overflows
        assert may_overflow(q, k, kwargs.get("scale")), str(error)
        assert "scale" in str(error)
        return
    assert out.shape == (*p.lead, p.L, p.Ev) and out.dtype == p.dtype
    if v.numel() and not v.isinf().any():
        assert not out.isnan().any()


@pytest.mark.parametrize("name", list(APPROXIMATIONS))
@given(data=st.data())
def test_approximations_refuse_input_that_does_not_fit(name, data):
    p = data.draw(problems, label="problem")
    (q, k, v), arg = data.draw(corruptions(p), label="bad tensors")
    kwargs = data.draw(approximation_kwargs(name, p), label="kwargs")
    raises_naming(arg, lambda: APPROXIMATIONS[name](q, k, v, **kwargs))


def corruptions(p: Problem) -> st.SearchStrategy[tuple[tuple, str]]:
    """``(query, key, value)`` that do not fit, and the name to mention."""
    q, k, v = p.qkv()
    other = torch.float64 if p.dtype != torch.float64 else torch.float32
    cases = [
        ((torch.zeros(p.E, dtype=p.dtype), k, v), "query"),
        ((q, torch.zeros(*p.lead, p.S, p.E + 1, dtype=p.dtype), v), "key"),
        ((q, k, torch.zeros(*p.lead, p.S + 1, p.Ev, dtype=p.dtype)), "value"),
        ((q.to(torch.long), k, v), "query"),
        ((q, k.to(torch.int32), v), "key"),
        ((q, k, v.to(other)), "value"),
        ((q, k.unsqueeze(0).expand(2, *k.shape), v), "key"),
        ((q[..., :0], k[..., :0], v), "query"),
        ((q.tolist(), k, v), "query"),
        ((q, k.to("meta"), v), "key"),
    ]
    return st.sampled_from(cases)


@pytest.mark.parametrize("variant", VARIANTS, ids=by_name)
@given(data=st.data())
def test_variant_input_that_does_not_fit_raises_a_clear_error(variant, data):
    p = data.draw(problems, label="problem")
    if data.draw(st.booleans(), label="bad keyword arguments"):
        q, k, v = p.qkv()
        kwargs, name = data.draw(variant.bad_kwargs(p), label="bad kwargs")
    else:
        (q, k, v), name = data.draw(corruptions(p), label="bad tensors")
        kwargs = data.draw(variant.kwargs(p), label="kwargs")
        kwargs.pop("attn_mask", None)  # the tensors are the bad input
    raises_naming(name, lambda: variant.fn(q, k, v, **kwargs))


@given(p=problems, data=st.data())
def test_sdpa_equals_the_float64_reference(p, data):
    # checks the reference itself, and that SDPA of the pinned torch gives
    # zeros (not NaN) for rows with nothing to attend, as dense_attention
    kwargs = data.draw(dense_kwargs(p), label="kwargs")
    if kwargs.get("scale") is not None:
        kwargs["scale"] = float(kwargs["scale"])
    q, k, v = p.qkv()
    assume(not may_overflow(q, k, kwargs.get("scale")))  # SDPA: NaN
    out = F.scaled_dot_product_attention(q, k, v, **kwargs)
    expected = reference_attention(
        q, k, v, attn_mask=dense_mask(kwargs, p), scale=kwargs.get("scale")
    )
    assert not out.isnan().any()
    torch.testing.assert_close(out.double(), expected, **tolerance(p.dtype, v))


@given(p=problems, data=st.data())
def test_dense_with_the_lowest_value_as_blocked_equals_sdpa(p, data):
    # finfo.min blocks a key without -inf: a row blocked everywhere then
    # averages all its values, in SDPA as in dense_attention
    allowed = data.draw(bool_masks(p), label="allowed")
    low = torch.finfo(p.dtype).min
    mask = torch.zeros(allowed.shape, dtype=p.dtype)
    mask = mask.masked_fill(~allowed, low)
    q, k, v = p.qkv()
    assume(not may_overflow(q, k, None))
    torch.testing.assert_close(
        ea.dense_attention(q, k, v, attn_mask=mask).double(),
        F.scaled_dot_product_attention(q, k, v, attn_mask=mask).double(),
        **tolerance(p.dtype, v),
    )


# -- masks ----------------------------------------------------------------


@given(data=st.data())
def test_create_mask_equals_the_definition_of_its_pattern(data):
    batch = data.draw(st.none() | st.integers(1, 3), label="padding batch")
    pattern = data.draw(patterns(batch), label="pattern")
    L, S = data.draw(ints(1, 7), label="L"), data.draw(ints(1, 7), label="S")
    heads = data.draw(st.none() | ints(1, 3), label="heads")
    if pattern.batch is None:
        batch = data.draw(st.none() | ints(1, 3), label="batch")
    mask = masks.create_mask(pattern.mask_mod, L, S, batch=batch, heads=heads)
    expected = evaluate(
        pattern,
        int(L),
        int(S),
        None if batch is None else int(batch),
        None if heads is None else int(heads),
    )
    assert mask.dtype == torch.bool and mask.shape == expected.shape
    assert torch.equal(mask, expected)


@given(data=st.data())
def test_a_padding_pattern_refuses_any_other_batch(data):
    batch = data.draw(st.integers(1, 3), label="padding batch")
    lengths = data.draw(
        st.lists(st.integers(0, 6), min_size=batch, max_size=batch)
    )
    other = data.draw(patterns(batch), label="other pattern")
    mask_mod = masks.and_masks(masks.key_padding(lengths), other.mask_mod)
    wrong = data.draw(
        st.none() | ints(1, 5).filter(lambda b: b != batch), label="batch"
    )
    raises_naming(
        f"batch={batch}",
        lambda: masks.create_mask(mask_mod, 4, 4, batch=wrong),
    )


BUILDER_ERRORS = [
    # (name the error must mention, strategy of calls that must fail)
    (
        "window",
        st.one_of(
            not_numbers(),
            st.integers(-5, -1),
            st.floats(),
            st.tuples(st.integers(-5, 5), st.integers(-5, -1)),
            st.tuples(st.integers(0, 3)),
            st.just(np.array([1, 2])),
        ).map(lambda w: lambda: masks.sliding_window(w)),
    ),
    (
        "dilation",
        not_positive_ints().map(
            lambda d: lambda: masks.dilated_sliding_window(1, d)
        ),
    ),
    ("stride", not_positive_ints().map(lambda s: lambda: masks.strided(s))),
    (
        "block_size",
        not_positive_ints().map(lambda b: lambda: masks.block_local(b)),
    ),
    (
        "tokens",
        st.integers(-5, -1).map(lambda n: lambda: masks.global_tokens(n)),
    ),
    (
        "positions",
        st.one_of(
            st.lists(st.integers(-5, -1), min_size=1, max_size=3),
            st.lists(st.floats(), min_size=1, max_size=3),
            st.just([[1, 2]]),
            st.just(["a"]),
        ).map(lambda p: lambda: masks.global_tokens(p)),
    ),
    (
        "lengths",
        st.one_of(
            st.just([]),
            st.none(),
            st.lists(st.integers(-5, -1), min_size=1, max_size=3),
            st.lists(st.floats(), min_size=1, max_size=3),
            st.text(min_size=1, max_size=3).map(list),
        ).map(lambda n: lambda: masks.key_padding(n)),
    ),
    *(
        (
            name,
            not_positive_ints().map(
                lambda bad, name=name: (
                    lambda: masks.create_mask(
                        masks.causal, **{"L": 3, "S": 3, name: bad}
                    )
                )
            ),
        )
        for name in ("L", "S")
    ),
    *(
        (
            name,
            not_positive_ints()
            .filter(lambda x: x is not None)  # None: no such dimension
            .map(
                lambda bad, name=name: (
                    lambda: masks.create_mask(
                        masks.causal, 3, 3, **{name: bad}
                    )
                )
            ),
        )
        for name in ("batch", "heads")
    ),
    (
        "device",
        st.one_of(
            st.text(string.ascii_letters, min_size=1, max_size=5).filter(
                lambda s: s not in {"cpu", "cuda", "meta", "mps", "xla"}
            ),
            st.just(3.5),
        ).map(
            lambda d: lambda: masks.create_mask(masks.causal, 3, 3, device=d)
        ),
    ),
]


@pytest.mark.parametrize(
    "name,calls", BUILDER_ERRORS, ids=[name for name, _ in BUILDER_ERRORS]
)
@given(data=st.data())
def test_mask_builders_refuse_bad_parameters_by_name(name, calls, data):
    call = data.draw(calls, label="call")
    raises_naming(name, call)


@given(st.lists(st.integers(0, 3), min_size=1, max_size=3))
def test_combinators_refuse_what_is_not_a_mask_function(picks):
    things = [masks.causal, torch.ones(2, 2), "causal", None]
    chosen = [things[i] for i in picks]
    for combinator in (masks.and_masks, masks.or_masks):
        if all(callable(c) for c in chosen):
            assert callable(combinator(*chosen))
        else:
            raises_naming("mask functions", lambda: combinator(*chosen))


# -- cost ------------------------------------------------------------------


SIZES = ints(1, 2**40)


@given(L=SIZES, S=SIZES, E=SIZES, Ev=SIZES, batch=SIZES, heads=SIZES)
def test_attention_flops_are_exact_python_ints(L, S, E, Ev, batch, heads):
    flops = cost.attention_flops(L, S, E, Ev, batch=batch, heads=heads)
    by_hand = 2 * int(L) * int(S) * (int(E) + int(Ev)) * int(batch)
    assert type(flops) is int and flops == by_hand * int(heads)


@given(
    lead=st.lists(st.integers(1, 3), min_size=2, max_size=2),
    L=st.integers(1, 8),
    S=st.integers(1, 8),
    E=st.integers(1, 8),
    Ev=st.integers(1, 8),
)
def test_attention_flops_match_pytorch_flop_counter(lead, L, S, E, Ev):
    batch, heads = lead
    q, k, v = Problem((batch, heads), L, S, E, Ev, torch.float32, 0, 1.0).qkv()
    with FlopCounterMode(display=False) as counter:
        ea.dense_attention(q, k, v)
    assert counter.get_total_flops() == cost.attention_flops(
        L, S, E, Ev, batch=batch, heads=heads
    )


ALL_DTYPES = [
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int8,
    torch.int64,
    torch.bool,
    torch.complex64,
]


@given(
    L=ints(1, 2**20),
    S=ints(1, 2**20),
    batch=ints(1, 64),
    heads=ints(1, 64),
    dtype=st.sampled_from(ALL_DTYPES),
    named=st.booleans(),
)
def test_score_matrix_bytes(L, S, batch, heads, dtype, named):
    given_dtype = str(dtype).removeprefix("torch.") if named else dtype
    size = torch.empty((), dtype=dtype).element_size()
    expected = int(L) * int(S) * int(batch) * int(heads) * size
    assert (
        cost.score_matrix_bytes(
            L, S, batch=batch, heads=heads, dtype=given_dtype
        )
        == expected
    )


@given(
    L=ints(1, 4096),
    head_dim=ints(1, 128),
    heads=ints(1, 16),
    d_ff=ints(1, 4096),
    batch=ints(1, 8),
)
def test_encoder_layer_flops_split_and_crossover(
    L, head_dim, heads, d_ff, batch
):
    d = int(head_dim) * int(heads)
    parts = cost.encoder_layer_flops(L, d, heads, d_ff, batch=batch)
    L, d_ff, batch = int(L), int(d_ff), int(batch)
    assert parts == {
        "projections": 8 * L * d * d * batch,
        "attention": 4 * L * L * d * batch,
        "feed_forward": 4 * L * d * d_ff * batch,
    }
    star = cost.attention_crossover_length(d, d_ff)
    at_star = cost.encoder_layer_flops(star, d, heads, d_ff)
    assert at_star["attention"] == (
        at_star["projections"] + at_star["feed_forward"]
    )


COST_CALLS = {
    "L": lambda x: cost.attention_flops(x, 4, 4),
    "S": lambda x: cost.score_matrix_bytes(4, x),
    "E": lambda x: cost.attention_flops(4, 4, x),
    "Ev": lambda x: cost.attention_flops(4, 4, 4, x),
    "batch": lambda x: cost.encoder_layer_flops(4, 8, 2, 8, batch=x),
    "heads": lambda x: cost.attention_flops(4, 4, 4, heads=x),
    "d_model": lambda x: cost.attention_crossover_length(x, 8),
    "d_ff": lambda x: cost.encoder_layer_flops(4, 8, 2, x),
}


@given(
    name=st.sampled_from(sorted(COST_CALLS)),
    bad=not_positive_ints().filter(lambda x: x is not None),
)
def test_cost_functions_refuse_bad_sizes_by_name(name, bad):
    raises_naming(name, lambda: COST_CALLS[name](bad))


# -- validation helpers ----------------------------------------------------


NAMES = st.sampled_from(["L", "block_size", "heads", "min_run_time", "seed"])


@given(name=NAMES, value=ints(0, 2**16 - 1), minimum=st.integers(0, 3))
def test_check_int_returns_a_python_int(name, value, minimum):
    if value >= minimum:
        result = _validation.check_int(name, value, minimum)
        assert type(result) is int and result == int(value)
    else:
        raises_naming(
            name, lambda: _validation.check_int(name, value, minimum)
        )


@given(name=NAMES, value=ints(1, 2**16 - 1))
def test_check_positive_int(name, value):
    result = _validation.check_positive_int(name, value)
    assert type(result) is int and result == int(value)
    assert _validation.check_non_negative_int(name, value) == result


@given(name=NAMES, bad=not_positive_ints())
def test_check_positive_int_refuses_by_name(name, bad):
    raises_naming(name, lambda: _validation.check_positive_int(name, bad))


@given(name=NAMES, bad=not_non_negative_ints())
def test_check_non_negative_int_refuses_by_name(name, bad):
    raises_naming(name, lambda: _validation.check_non_negative_int(name, bad))


@given(name=NAMES, value=reals(-1e30, 1e30))
def test_check_real_and_scale_return_a_python_float(name, value):
    for result in (
        _validation.check_real(name, value),
        _validation.check_scale(value),
    ):
        assert type(result) is float and result == float(value)
    if value > 0:
        assert _validation.check_positive_real(name, value) == float(value)
    else:
        raises_naming(
            name, lambda: _validation.check_positive_real(name, value)
        )


@given(name=NAMES, bad=not_finite_reals())
def test_real_checks_refuse_by_name(name, bad):
    raises_naming(name, lambda: _validation.check_real(name, bad))
    raises_naming(name, lambda: _validation.check_positive_real(name, bad))
    if bad is not None:
        raises_naming("scale", lambda: _validation.check_scale(bad))


@given(left=ints(0, 100), right=ints(0, 100), as_list=st.booleans())
def test_check_window(left, right, as_list):
    pair = [left, right] if as_list else (left, right)
    assert _validation.check_window(pair) == (int(left), int(right))
    assert _validation.check_window(left) == (int(left), int(left))
    assert all(type(w) is int for w in _validation.check_window(pair))


@given(seed=ints(0, 2**16 - 1) | st.integers(0, 2**32 - 1))
def test_check_seed(seed):
    assert _validation.check_seed("seed", seed) == int(seed)


@given(
    bad=st.one_of(
        not_numbers(),
        st.integers(max_value=-1),
        st.integers(min_value=2**32),
        st.floats(),
    )
)
def test_check_seed_refuses_by_name(bad):
    raises_naming("seed", lambda: _validation.check_seed("seed", bad))


@given(dtype=st.sampled_from(ALL_DTYPES), how=st.sampled_from(["", "torch."]))
def test_check_dtype_takes_dtypes_and_their_names(dtype, how):
    name = how + str(dtype).removeprefix("torch.")
    assert _validation.check_dtype("dtype", dtype) is dtype
    assert _validation.check_dtype("dtype", name) is dtype
    if dtype.is_floating_point:
        assert _validation.check_dtype("dtype", name, floating=True) is dtype
    else:
        raises_naming(
            "dtype",
            lambda: _validation.check_dtype("dtype", name, floating=True),
        )


def is_dtype_name(text: str) -> bool:
    found = getattr(torch, text.removeprefix("torch."), None)
    return isinstance(found, torch.dtype)


@given(
    bad=st.one_of(
        st.text(max_size=8).filter(lambda t: not is_dtype_name(t)),
        not_numbers().filter(lambda x: not isinstance(x, str)),
    )
)
def test_check_dtype_refuses_by_name(bad):
    raises_naming("dtype", lambda: _validation.check_dtype("dtype", bad))


@given(text=st.text(max_size=12) | st.integers() | st.none())
def test_device_names_are_a_device_or_a_value_error(text):
    try:
        device = _validation.check_device("device", text)
    except ValueError as error:
        assert "device" in str(error)
    else:
        assert isinstance(device, torch.device)
    try:
        device = ea.pick_device(text)
    except ValueError as error:
        assert "prefer" in str(error)
    else:
        assert device.type in ("cpu", "cuda", "mps")


# -- benchmark, notebook helpers, plotting, encoder ------------------------


def quick_sweep(lengths) -> list[dict]:
    return benchmark.sweep(
        {"noop": lambda L: None},
        lengths,
        lambda L: (L,),
        min_run_time=0.001,
        measure_memory=False,
    )


ITERABLES = {
    "list": list,
    "tuple": tuple,
    "generator": lambda values: (v for v in values),
    "numpy": np.array,
    "dict keys": lambda values: dict.fromkeys(values).keys(),
}


@given(
    lengths=st.lists(ints(1, 4096), min_size=1, max_size=4),
    kind=st.sampled_from(sorted(ITERABLES)),
)
def test_sweep_takes_distinct_lengths_in_any_iterable(lengths, kind):
    plain = [int(L) for L in lengths]
    if kind == "numpy":
        lengths = plain  # one dtype for the array
    if len(set(plain)) < len(plain):
        if kind != "dict keys":  # a dict has no repeats to refuse
            raises_naming(
                "lengths", lambda: quick_sweep(ITERABLES[kind](lengths))
            )
        return
    records = quick_sweep(ITERABLES[kind](lengths))
    assert [r["L"] for r in records] == plain
    assert all(type(r["L"]) is int for r in records)


@given(bad=not_finite_reals() | st.floats(max_value=0))
def test_time_callable_refuses_endless_run_times(bad):
    raises_naming(
        "min_run_time",
        lambda: benchmark.time_callable(lambda: None, min_run_time=bad),
    )


class Ran(Exception):
    """The command line got past its argument checks."""


def argument_texts() -> st.SearchStrategy[str]:
    return st.one_of(
        st.integers(-3, 5).map(str),
        st.sampled_from(["inf", "nan", "-inf", "0.5", "1e-3", "x", ""]),
    )


def is_positive_int(text: str) -> bool:
    try:
        return int(text) > 0
    except ValueError:
        return False


def is_positive_seconds(text: str) -> bool:
    try:
        return math.isfinite(float(text)) and float(text) > 0
    except ValueError:
        return False


@given(
    lengths=st.lists(argument_texts(), min_size=1, max_size=3),
    batch=argument_texts(),
    rounds=argument_texts(),
    min_run_time=argument_texts(),
    device=st.sampled_from(["cpu", "meta", "cuda:7", "mps", "gpu"]),
)
def test_command_line_runs_only_with_good_arguments(
    lengths, batch, rounds, min_run_time, device
):
    argv = [
        "--lengths",
        *lengths,
        "--batch",
        batch,
        "--rounds",
        rounds,
        "--min-run-time",
        min_run_time,
        "--device",
        device,
    ]
    good = (
        all(map(is_positive_int, lengths))
        and len({int(L) for L in lengths}) == len(lengths)
        and is_positive_int(batch)
        and is_positive_int(rounds)
        and is_positive_seconds(min_run_time)
        and (device == "cpu" or (device == "cuda:7" and _has_8_gpus()))
    )
    errors = io.StringIO()
    with contextlib.ExitStack() as stack:
        stack.enter_context(
            mock.patch.object(benchmark, "sweep", side_effect=Ran)
        )
        stack.enter_context(contextlib.redirect_stderr(errors))
        stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
        if good:
            with pytest.raises(Ran):
                benchmark_cli.main(argv)
        else:
            with pytest.raises(SystemExit) as exit_info:
                benchmark_cli.main(argv)
            assert exit_info.value.code == 2
            assert "usage:" in errors.getvalue()


def _has_8_gpus() -> bool:
    return torch.cuda.is_available() and torch.cuda.device_count() >= 8


@given(seed=ints(0, 2**16 - 1) | st.integers(0, 2**32 - 1))
def test_setup_notebook_reproduces_with_any_integral_seed(seed):
    ea.setup_notebook(seed=seed)
    first = torch.rand(3), np.random.rand(3)
    ea.setup_notebook(seed=int(seed))
    assert torch.equal(first[0], torch.rand(3))
    assert np.array_equal(first[1], np.random.rand(3))


@given(
    bad=st.one_of(
        not_numbers(), st.integers(max_value=-1), st.integers(min_value=2**32)
    )
)
def test_setup_notebook_refuses_bad_seeds(bad):
    raises_naming("seed", lambda: ea.setup_notebook(seed=bad))


@given(
    L=st.integers(1, 12),
    S=st.integers(1, 12),
    seed=st.integers(0, 2**32 - 1),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    lowest=st.booleans(),
)
def test_plot_mask_draws_additive_masks_as_their_bool_masks(
    L, S, seed, dtype, lowest
):
    allowed = torch.rand(L, S, generator=torch.Generator().manual_seed(seed))
    allowed = allowed > 0.5
    blocked = torch.finfo(dtype).min if lowest else -math.inf
    additive = torch.zeros(L, S, dtype=dtype).masked_fill(~allowed, blocked)
    try:
        as_bool = plotting.plot_mask(allowed, title="m")
        as_float = plotting.plot_mask(additive, title="m")
        assert np.array_equal(as_float.images[0].get_array(), allowed.numpy())
        assert as_float.get_title() == as_bool.get_title()
    finally:
        plt.close("all")


@given(
    L=st.integers(1, 6),
    S=st.integers(1, 6),
    value=st.floats().filter(
        # 0 may attend; -inf and the dtype's lowest value are blocked
        lambda x: x not in (0, -math.inf, torch.finfo(torch.float64).min)
    ),
)
def test_plot_mask_refuses_floats_that_are_no_additive_mask(L, S, value):
    weights = torch.zeros(L, S, dtype=torch.float64)
    weights[0, 0] = value
    try:
        raises_naming("mask", lambda: plotting.plot_mask(weights))
    finally:
        plt.close("all")


@given(
    L=st.integers(1, 8),
    S=st.integers(1, 8),
    dtype=st.sampled_from(DTYPES + [torch.float16]),
)
def test_plot_heatmap_draws_every_float_dtype(L, S, dtype):
    weights = torch.softmax(torch.randn(L, S), -1).to(dtype)
    try:
        ax = plotting.plot_heatmap(weights)
        drawn = np.asarray(ax.images[0].get_array())
        assert np.array_equal(drawn, weights.float().numpy())
    finally:
        plt.close("all")


@given(
    heads=st.integers(1, 3),
    head_dim=st.integers(1, 4),
    d_ff=st.integers(1, 8),
    B=st.integers(1, 2),
    L=st.integers(0, 5),
    dtype=st.sampled_from(DTYPES),
    other=st.sampled_from(DTYPES + [torch.float16, torch.long]),
)
def test_encoder_layer_runs_in_its_weights_dtype_and_only_there(
    heads, head_dim, d_ff, B, L, dtype, other
):
    torch.manual_seed(0)
    d = heads * head_dim
    fused = ea.EncoderLayer(d, heads, d_ff).to(dtype)
    dense = ea.EncoderLayer(d, heads, d_ff, attention=ea.dense_attention)
    dense = dense.to(dtype)
    dense.load_state_dict(fused.state_dict())
    hidden = torch.randn(B, L, d).to(dtype)
    with torch.no_grad():
        out = dense(hidden)
        assert out.dtype == dtype and not out.isnan().any()
        if dtype != torch.bfloat16:  # LayerNorm over a few features can
            # blow one bfloat16 rounding of the attention up to 100%
            torch.testing.assert_close(
                out.double(), fused(hidden).double(), **tolerance(dtype, out)
            )
        if other != dtype:
            raises_naming("hidden", lambda: dense(hidden.to(other)))


# -- local attention's patterns and task ----------------------------------


def shifted_allowed(i: int, j: int, left: int, right: int, S: int, d: int):
    """NATTEN's rule, by its definition: of the windows of ``left + right +
    1`` consecutive keys of ``i``'s residue class that fit in the sequence,
    the one whose start is nearest to ``t - left``."""
    if j % d != i % d:
        return False
    n = len(range(i % d, S, d))  # keys of the class
    span = left + right + 1
    starts = range(max(n - span, 0) + 1)
    start = min(starts, key=lambda a: (abs(a - (i // d - left)), a))
    return start <= j // d < start + span


@given(
    window=windows(),
    L=st.integers(1, 9),
    S=st.integers(1, 9),
    dilation=ints(1, 4) | ints(2**61, 2**70),
)
def test_shifted_window_equals_its_definition(window, L, S, dilation):
    left, right = (window, window) if np.ndim(window) == 0 else window
    left, right, d = (min(int(x), 50) for x in (left, right, dilation))
    mask = masks.create_mask(masks.shifted_window(window, S, dilation), L, S)
    expected = torch.tensor(
        [
            [shifted_allowed(i, j, left, right, S, d) for j in range(S)]
            for i in range(L)
        ]
    )
    assert torch.equal(mask, expected)


@given(
    bad=st.one_of(
        st.tuples(
            not_non_negative_ints().map(lambda w: (w, 4, 1)), st.just("window")
        ),
        st.tuples(
            not_positive_ints().map(lambda n: (1, n, 1)), st.just("length")
        ),
        st.tuples(
            not_positive_ints().map(lambda d: (1, 4, d)), st.just("dilation")
        ),
    )
)
def test_shifted_window_bad_arguments_name_themselves(bad):
    (window, length, dilation), name = bad
    raises_naming(name, lambda: masks.shifted_window(window, length, dilation))


@given(data=st.data(), heads=st.integers(1, 4))
def test_per_head_gives_each_head_its_own_pattern(data, heads):
    chosen = [
        data.draw(st.sampled_from([sliding(1), strided(2), block_local(3)]))
        for _ in range(heads)
    ]
    L, S = data.draw(st.integers(1, 7)), data.draw(st.integers(1, 7))
    mask = masks.create_mask(
        masks.per_head(*(c.mask_mod for c in chosen)), L, S, heads=heads
    )
    for h, pattern in enumerate(chosen):
        assert torch.equal(mask[h], masks.create_mask(pattern.mask_mod, L, S))
    raises_naming(
        "heads",
        lambda: masks.create_mask(
            masks.per_head(*(c.mask_mod for c in chosen)),
            L,
            S,
            heads=heads + 1,
        ),
    )


@given(
    batch=ints(1, 3),
    length=ints(2, 12),
    vocab=ints(1, 5),
    data=st.data(),
)
def test_offset_copy_targets_are_the_tokens_offsets_back(
    batch, length, vocab, data
):
    offsets = data.draw(
        st.lists(st.integers(1, int(length) - 1), min_size=1, max_size=3)
    )
    tokens, targets = tasks.offset_copy(
        batch,
        length,
        offsets=offsets,
        vocab=vocab,
        generator=torch.Generator().manual_seed(0),
    )
    assert tokens.shape == (batch, length)
    assert 0 <= int(tokens.min()) and int(tokens.max()) < vocab
    for c, offset in enumerate(offsets):
        assert torch.equal(targets[:, offset:, c], tokens[:, :-offset])
        assert (targets[:, :offset, c] == tasks.IGNORE).all()


@given(
    bad=st.one_of(
        st.tuples(
            not_positive_ints().map(lambda b: {"batch": b}), st.just("batch")
        ),
        st.tuples(
            not_positive_ints().map(lambda n: {"length": n}), st.just("length")
        ),
        st.tuples(
            not_positive_ints().map(lambda v: {"vocab": v}), st.just("vocab")
        ),
        st.tuples(
            st.sampled_from([[], [0], [8], [1.5], [True]]).map(
                lambda o: {"offsets": o}
            ),
            st.just("offset"),
        ),
    )
)
def test_offset_copy_bad_arguments_name_themselves(bad):
    changes, name = bad
    kwargs = {"batch": 2, "length": 8, **changes}
    batch, length = kwargs.pop("batch"), kwargs.pop("length")
    raises_naming(name, lambda: tasks.offset_copy(batch, length, **kwargs))


@given(
    st.lists(
        st.tuples(st.integers(0, 9), st.integers(0, 9)), min_size=1,
        max_size=12,
    )
)
def test_pareto_front_is_exactly_the_unbeaten_points(points):
    from efficient_attention import plotting

    cost = [c for c, _ in points]
    quality = [q for _, q in points]
    front = plotting.pareto_front(cost, quality)
    for (c0, q0), on_front in zip(points, front):
        beaten = any(
            c <= c0 and q >= q0 and (c, q) != (c0, q0) for c, q in points
        )
        assert on_front == (not beaten)
    assert any(front)  # the cheapest of the best is never beaten


@given(st.integers(-3, 2) | st.floats(allow_nan=True) | st.booleans())
def test_long_text_inputs_refuse_bad_lengths(length):
    from efficient_attention import models

    assume(not (isinstance(length, int) and not isinstance(length, bool)
                and length >= 3))
    with pytest.raises(ValueError, match="length"):
        models.long_text_inputs(None, length)


POINTS = st.lists(
    st.tuples(
        st.floats(0.01, 1e4), st.floats(0, 1), st.text(min_size=1, max_size=8)
    ),
    min_size=1,
    max_size=10,
)


@given(POINTS, st.booleans())
def test_plot_pareto_colours_and_joins_exactly_the_front(points, log_x):
    cost, quality, names = (list(column) for column in zip(*points))
    front = plotting.pareto_front(cost, quality)
    ax = plotting.plot_pareto(
        names, cost, quality, xlabel="ms", ylabel="F1", log_x=log_x
    )
    red = [
        tuple(c.get_facecolors()[0][:3])
        == matplotlib.colors.to_rgb("#c0392b")
        for c in ax.collections
    ]
    assert red == front
    assert [t.get_text() for t in ax.texts] == [
        str(i) for i in range(1, len(points) + 1)
    ]
    best = sorted((c, q) for c, q, keep in zip(cost, quality, front) if keep)
    assert list(ax.lines[0].get_xdata()) == [c for c, _ in best]
    assert list(ax.lines[0].get_ydata()) == [q for _, q in best]
    assert ax.get_xscale() == ("log" if log_x else "linear")
    plt.close("all")


@given(POINTS, st.floats(-10, 0))
def test_plot_pareto_refuses_what_it_cannot_draw(points, bad_cost):
    cost, quality, names = (list(column) for column in zip(*points))
    with pytest.raises(ValueError, match="names"):
        plotting.plot_pareto(
            names[:-1], cost + [1.0], quality + [0.5], xlabel="x",
            ylabel="y",
        )
    with pytest.raises(ValueError, match="cost"):
        plotting.plot_pareto(
            names + ["bad"], cost + [bad_cost], quality + [0.5],
            xlabel="x", ylabel="y",
        )
    plt.close("all")


@pytest.fixture(scope="module")
def tiny_encoder():
    from tiny_models import tiny_bert

    model = tiny_bert(positions=64)
    model.set_attn_implementation("sdpa")
    return model


@given(
    rounds=st.integers(1, 3),
    length=st.integers(2, 40),
    seed=st.integers(0, 2**16),
)
def test_compare_attention_puts_the_reference_first_and_restores_it(
    tiny_encoder, rounds, length, seed
):
    from efficient_attention import models

    generator = torch.Generator().manual_seed(seed)
    inputs = {
        "input_ids": torch.randint(1, 50, (1, length), generator=generator),
        "attention_mask": torch.ones(1, length, dtype=torch.int64),
    }
    rows = models.compare_attention(
        tiny_encoder,
        inputs,
        {"sdpa": None, "dense": (ea.dense_attention, {})},
        rounds=rounds,
    )
    assert list(rows) == ["sdpa", "dense"]
    assert rows["sdpa"]["speed-up"] == 1.0
    assert rows["sdpa"]["token cosine"] == pytest.approx(1.0, abs=1e-5)
    assert rows["dense"]["token cosine"] == pytest.approx(1.0, abs=1e-5)
    assert rows["dense"]["speed-up"] == pytest.approx(
        rows["sdpa"]["seconds"] / rows["dense"]["seconds"]
    )
    assert tiny_encoder.config._attn_implementation == "sdpa"


@given(
    st.integers(-3, 0)
    | st.booleans()
    | st.floats(allow_nan=True)
    | st.text(max_size=3)
)
def test_compare_attention_refuses_bad_rounds_by_name(tiny_encoder, rounds):
    from efficient_attention import models

    inputs = {"input_ids": torch.ones(1, 4, dtype=torch.int64)}
    with pytest.raises(ValueError, match="rounds"):
        models.compare_attention(
            tiny_encoder, inputs, {"sdpa": None}, rounds=rounds
        )


def test_compare_attention_restores_the_attention_after_a_failure(
    tiny_encoder,
):
    from efficient_attention import models

    def broken(query, key, value, *, scale=None):
        raise RuntimeError("this attention fails")

    inputs = {"input_ids": torch.ones(1, 4, dtype=torch.int64)}
    with pytest.raises(RuntimeError, match="fails"):
        models.compare_attention(
            tiny_encoder, inputs, {"sdpa": None, "broken": (broken, {})}
        )
    assert tiny_encoder.config._attn_implementation == "sdpa"


# -- compression: quantization -------------------------------------------

FEW = max(1, settings().max_examples // 4)
"""Examples for the slower properties (a model, files on disk)."""

QUANT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@st.composite
def float_tensors(draw, max_dims: int = 3) -> Tensor:
    """Small tensors of finite values of any float dtype: zeros, ties,
    magnitudes from 1e-30 to 1e30 (as the dtype holds them)."""
    dtype = draw(st.sampled_from(QUANT_DTYPES))
    shape = draw(st.lists(st.integers(1, 4), min_size=1, max_size=max_dims))
    top = min(1e30, float(torch.finfo(dtype).max) / 4)
    values = draw(
        st.lists(
            st.one_of(
                st.floats(-top, top, allow_subnormal=False),
                st.sampled_from([0.0, 1.0, -1.0, 0.5]),
            ),
            min_size=math.prod(shape),
            max_size=math.prod(shape),
        )
    )
    return torch.tensor(values, dtype=torch.float64).view(shape).to(dtype)


@given(
    x=float_tensors(),
    bits=ints(2, 8),
    symmetric=st.booleans(),
    data=st.data(),
)
def test_fake_quantize_rounds_each_value_onto_its_grid(
    x, bits, symmetric, data
):
    axis = data.draw(st.none() | ints(-x.dim(), x.dim() - 1), label="axis")
    q = quantization.quantize_uniform(x, bits, symmetric=symmetric, axis=axis)
    out = quantization.fake_quantize(x, bits, symmetric=symmetric, axis=axis)
    assert out.dtype == x.dtype and out.shape == x.shape
    assert out.isfinite().all() and not q.scale.isnan().any()
    qmin, qmax = quantization.integer_range(bits, symmetric=symmetric)
    assert qmin <= int(q.q.min()) and int(q.q.max()) <= qmax
    # within half a step of every value (the range covers every value)
    wide = x.double()
    error = (q.dequantize().double() - wide).abs()
    step = q.scale.double().expand_as(wide)
    assert (error <= step / 2 * (1 + 1e-5) + 1e-300).all()
    if symmetric:  # zero is on every symmetric grid
        assert (out[x == 0] == 0).all()


@given(
    x=float_tensors(max_dims=2),
    bad=st.one_of(
        st.tuples(
            st.one_of(not_numbers(), st.integers(-3, 1), st.integers(17, 40),
                      st.just(8.0)).map(lambda b: {"bits": b}),
            st.just("bits"),
        ),
        st.tuples(
            st.one_of(st.just(1.0), st.just(True), st.integers(3, 9),
                      st.integers(-9, -4), st.just("0")).map(
                lambda a: {"axis": a}
            ),
            st.just("axis"),
        ),
        st.tuples(
            st.sampled_from([math.nan, math.inf, -math.inf]).map(
                lambda v: {"poison": v}
            ),
            st.just("x"),
        ),
    ),
)  # fmt: skip
def test_quantizers_refuse_bad_arguments_by_name(x, bad):
    changes, name = bad
    kwargs = {"bits": 8, **changes}
    if "poison" in kwargs:
        x = x.clone()
        x.view(-1)[0] = kwargs.pop("poison")
    raises_naming(name, lambda: quantization.fake_quantize(x, **kwargs))


@given(
    x=float_tensors(max_dims=2),
    levels=st.lists(
        st.floats(-1e6, 1e6, allow_subnormal=False), min_size=1, max_size=9
    ),
)
def test_quantize_to_grid_picks_a_nearest_level(x, levels):
    grid = torch.tensor(levels, dtype=torch.float64)
    out = quantization.quantize_to_grid(x, grid)
    assert out.dtype == x.dtype and out.shape == x.shape
    grid32 = grid.float()  # the precision quantize_to_grid compares in
    distance = (x.float().view(-1, 1) - grid32.view(1, -1)).abs()
    nearest = distance <= distance.amin(-1, keepdim=True) * (1 + 1e-6)
    # each output is a nearest level (ties: any of them), in x's dtype
    same = out.view(-1, 1) == grid32.to(x.dtype).view(1, -1)
    assert (same & nearest).any(-1).all()


@given(
    x=float_tensors(max_dims=2),
    bits=ints(1, 3),
    iterations=ints(0, 3),
)
def test_kmeans_codebook_assigns_every_value_its_nearest_level(
    x, bits, iterations
):
    codebook, codes = quantization.kmeans_codebook(
        x, bits, iterations=iterations
    ) if int(bits) >= 2 else (None, None)  # fmt: skip
    if codebook is None:
        raises_naming("bits", lambda: quantization.kmeans_codebook(x, bits))
        return
    assert codebook.shape == (2 ** int(bits),) and codes.shape == x.shape
    assert (codebook[1:] >= codebook[:-1]).all()  # sorted
    values = x.detach().float().view(-1, 1)
    distance = (values - codebook.view(1, -1)).abs()
    picked = distance.gather(1, codes.view(-1, 1))[:, 0]
    assert (picked <= distance.amin(-1) * (1 + 1e-6) + 1e-30).all()
    raises_naming(
        "iterations",
        lambda: quantization.kmeans_codebook(x, 2, iterations=-1),
    )


# -- compression: pruning --------------------------------------------------


@given(
    shape=st.tuples(st.integers(1, 6), st.integers(1, 6)),
    amount=reals(0, 0.99),
    seed=st.integers(0, 2**16),
)
def test_magnitude_mask_zeroes_the_smallest_weights(shape, amount, seed):
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    keep = pruning.magnitude_mask(weight, amount)
    assert int((~keep).sum()) == round(float(amount) * weight.numel())
    if keep.any() and (~keep).any():
        assert weight[keep].abs().min() >= weight[~keep].abs().max()


@given(
    rows=st.lists(
        st.lists(st.floats(0, 10), min_size=1, max_size=5),
        min_size=1,
        max_size=4,
    ),
    fraction=reals(0, 0.99),
    per_layer=st.booleans(),
    poison=st.booleans(),
)
def test_least_important_keeps_a_unit_per_layer_and_refuses_nan(
    rows, fraction, per_layer, poison
):
    scores = [torch.tensor(r, dtype=torch.float64) for r in rows]
    if poison:
        scores[-1][0] = math.nan
        raises_naming(
            "scores", lambda: pruning.least_important(scores, fraction)
        )
        return
    chosen = pruning.least_important(scores, fraction, per_layer=per_layer)
    assert sorted(chosen) == list(range(len(rows)))
    for layer, units in chosen.items():
        assert units == sorted(set(units))
        assert len(units) <= len(rows[layer]) - 1
        assert all(0 <= u < len(rows[layer]) for u in units)


@pytest.fixture(scope="module")
def tiny_classifier():
    from tiny_models import tiny_bert

    return tiny_bert(layers=2, heads=4)


def unit_specs(counts: list[int]) -> st.SearchStrategy[dict]:
    """``{layer: [unit indices]}`` that leave every layer a unit."""
    return st.fixed_dictionaries(
        {},
        optional={
            layer: st.lists(st.integers(0, n - 1), max_size=n - 1, unique=True)
            for layer, n in enumerate(counts)
        },
    )


def bad_unit_specs(counts: list[int]) -> st.SearchStrategy[tuple]:
    """Bad specs, and what the error must name."""
    n = counts[0]
    return st.one_of(
        st.tuples(st.just({0: [0.0 + 1.7]}), st.just("[0]")),
        st.tuples(st.just({0: [True]}), st.just("[0]")),
        st.tuples(st.just({"0": [1]}), st.just("layer")),
        st.tuples(st.just({len(counts): [0]}), st.just("layer")),
        st.tuples(st.just({-1: [0]}), st.just("layer")),
        st.tuples(st.just({0: [n]}), st.just(f"0 to {n - 1}")),
        st.tuples(st.just({0: list(range(n))}), st.just("at least one")),
        st.tuples(st.just([[0]]), st.just("dict")),
        st.tuples(st.just({0: 1}), st.just("[0]")),
        st.tuples(
            st.just({0: [0], 1: [n + 3]}), st.just(f"0 to {n - 1}")
        ),  # a later entry: nothing changes before the error
    )


@settings(max_examples=FEW)
@given(data=st.data(), kind=st.sampled_from(["heads", "neurons"]))
def test_pruning_units_equals_zeroing_them_or_changes_nothing(
    tiny_classifier, data, kind
):
    import copy

    model = copy.deepcopy(tiny_classifier)
    layers = pruning.encoder_layers(model)
    if kind == "heads":
        counts = [lay.attention.self.num_attention_heads for lay in layers]
        prune = pruning.prune_heads
    else:
        counts = [lay.intermediate.dense.out_features for lay in layers]
        prune = pruning.prune_neurons
    ids = torch.arange(1, 31).view(2, 15) % 40
    if data.draw(st.booleans(), label="bad"):
        spec, name = data.draw(bad_unit_specs(counts), label="spec")
        state = {k: v.clone() for k, v in model.state_dict().items()}
        raises_naming(name, lambda: prune(model, spec))
        after = model.state_dict()
        assert list(after) == list(state)
        assert all(torch.equal(after[k], v) for k, v in state.items())
        return
    spec = data.draw(unit_specs(counts), label="spec")
    reference = copy.deepcopy(model)
    for layer, units in spec.items():  # zero what the units output
        block = pruning.encoder_layers(reference)[layer]
        with torch.no_grad():
            if kind == "heads":
                size = block.attention.self.attention_head_size
                weight = block.attention.output.dense.weight
                for u in units:
                    weight[:, u * size : (u + 1) * size] = 0
            else:
                block.output.dense.weight[:, units] = 0
    removed = prune(model, spec)
    assert removed == sum(len(u) for u in spec.values())
    with torch.no_grad():
        torch.testing.assert_close(
            model(input_ids=ids).logits, reference(input_ids=ids).logits
        )


# -- distillation losses ---------------------------------------------------


@st.composite
def logit_pairs(draw) -> tuple[Tensor, Tensor]:
    n = draw(st.integers(0, 4))
    c = draw(st.integers(1, 4))
    scale = draw(st.sampled_from([1e-3, 1.0, 30.0, 1e4]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    student = scale * torch.randn(n, c, generator=g, dtype=torch.float64)
    teacher = scale * torch.randn(n, c, generator=g, dtype=torch.float64)
    if c > 1 and draw(st.booleans()):  # a class ruled out by both
        student[:, 0] = teacher[:, 0] = -math.inf
    return student, teacher


def soft_label_reference(student, teacher, T) -> float:
    """T^2 KL(p_t || p_s) in exact rational-free float64 arithmetic, by
    the definition (only where the logits over T do not overflow)."""
    keep = teacher[0].isfinite() if len(teacher) else None
    s, t = student[:, keep] / T, teacher[:, keep] / T
    log_s, log_t = s.log_softmax(-1), t.log_softmax(-1)
    return float(T**2 * (log_t.exp() * (log_t - log_s)).sum(-1).mean())


@given(
    pair=logit_pairs(),
    temperature=st.floats(1e-300, 1e4) | st.sampled_from([1e-300, 1e4]),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
)
def test_soft_label_loss_is_finite_and_is_its_definition(
    pair, temperature, dtype
):
    student, teacher = (t.to(dtype) for t in pair)
    loss = distillation.soft_label_loss(
        student, teacher, temperature=temperature
    )
    assert loss.dtype == (torch.float64 if dtype == torch.float64
                          else torch.float32)  # fmt: skip
    assert loss.isfinite() and loss >= -1e-9
    if len(student) == 0:
        assert loss == 0
        return
    s, t = student.double(), teacher.double()
    if temperature >= 1e-2:
        expected = soft_label_reference(s, t, temperature)
        assert loss.item() == pytest.approx(expected, rel=1e-4, abs=1e-6)
    same = distillation.soft_label_loss(t, t, temperature=temperature)
    assert same == 0


@given(
    bad=st.one_of(
        not_finite_reals(),
        st.floats(max_value=0),
        st.floats(1e4, 1e300, exclude_min=True),
    )
)
def test_soft_label_loss_refuses_bad_temperatures_by_name(bad):
    raises_naming(
        "temperature",
        lambda: distillation.soft_label_loss(
            torch.zeros(2, 2), torch.ones(2, 2), temperature=bad
        ),
    )


@given(
    B=st.integers(1, 3),
    L=st.integers(1, 4),
    D=st.integers(1, 3),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_token_losses_average_over_real_tokens_only(B, L, D, seed, data):
    g = torch.Generator().manual_seed(seed)
    mask = data.draw(
        st.lists(st.integers(0, 1), min_size=B * L, max_size=B * L)
    )
    mask = torch.tensor(mask).view(B, L)
    student, teacher = torch.randn(2, B, L, D, generator=g).double()
    loss = distillation.hidden_state_loss(
        student, teacher, attention_mask=mask
    )
    squared = (student - teacher).pow(2).mean(-1)  # (B, L)
    real = mask.bool()
    expected = squared[real].mean() if real.any() else torch.tensor(0.0)
    torch.testing.assert_close(loss, expected.double())
    maps = torch.softmax(torch.randn(2, B, 2, L, L, generator=g), -1)
    kl = distillation.attention_map_loss(maps[0], maps[1],
                                         attention_mask=mask)  # fmt: skip
    assert kl.isfinite() and kl >= -1e-6
    if not real.any():
        assert kl == 0


# -- the checkpoint cache --------------------------------------------------


class FakeWeights:
    """Stands in for a model: ``save_pretrained`` writes its bytes."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def save_pretrained(self, folder) -> None:
        (folder / "model.safetensors").write_bytes(self.payload)
        (folder / "config.json").write_text('{"fake": true}')


class FakeTokenizer:
    def save_pretrained(self, folder) -> None:
        (folder / "tokenizer.json").write_text("{}")


def fake_load_encoder(folder, verbose=True):
    return FakeWeights((folder / "model.safetensors").read_bytes()), None


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-10, 10)
    | st.floats(allow_nan=False)
    | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6,
)


def damage(folder, how: str) -> None:
    weights = folder / "model.safetensors"
    if how == "flip":
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0x01
        weights.write_bytes(bytes(data))
    elif how == "truncate":
        weights.write_bytes(weights.read_bytes()[:-1])
    elif how == "no info":
        (folder / "info.json").unlink()
    elif how == "corrupt info":
        (folder / "info.json").write_text("{")
    elif how == "no weights":
        weights.unlink()


@settings(max_examples=FEW * 2)
@given(
    key=st.dictionaries(st.text(max_size=4), JSON_VALUES, max_size=3),
    payload=st.binary(min_size=2, max_size=64),
    how=st.sampled_from(
        ["none", "flip", "truncate", "no info", "corrupt info", "no weights"]
    ),
)
def test_the_cache_loads_exactly_what_verifies(tmp_path_factory, key,
                                               payload, how):  # fmt: skip
    from efficient_attention import training

    root = tmp_path_factory.mktemp("cache")
    calls = []

    def fit():
        calls.append(1)
        return FakeWeights(payload), FakeTokenizer(), [1.0]

    with contextlib.ExitStack() as stack:
        stack.enter_context(
            mock.patch.dict("os.environ", {"EFFICIENT_ATTENTION_CACHE":
                                           str(root)})  # fmt: skip
        )
        stack.enter_context(
            mock.patch.object(
                training.models, "load_encoder", fake_load_encoder
            )
        )
        stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
        _, _, info = training.cached_checkpoint(key, fit)
        damage(pathlib.Path(info["path"]), how)
        if how == "none":
            model, _, again = training.cached_checkpoint(key, fit)
        else:
            with pytest.warns(RuntimeWarning, match=info["path"]):
                model, _, again = training.cached_checkpoint(key, fit)
        assert again["from_cache"] == (how == "none")
        assert len(calls) == (1 if how == "none" else 2)
        assert model.payload == payload and again["key"] == key
        _, _, third = training.cached_checkpoint(key, fit)  # repaired
        assert third["from_cache"] and len(calls) <= 2


@given(
    bad=st.one_of(
        st.just({"s": {1, 2}}),
        st.just({"f": len}),
        st.just({1: "a", "b": 2}),
        st.just({"t": torch.ones(1)}),
        st.lists(st.integers(), max_size=2),
        st.none(),
    )
)
def test_cache_keys_that_json_cannot_hold_are_refused_by_name(bad):
    from efficient_attention import training

    def fit():
        raise AssertionError("nothing is trained for a bad key")

    raises_naming("key", lambda: training.cached_checkpoint(bad, fit))


# -- hierarchical pictures -------------------------------------------------


@given(
    L=st.integers(1, 12),
    S=st.integers(1, 12),
    scheme=st.sampled_from(hierarchical.SCHEMES),
    block_size=st.one_of(ints(-1, 9), st.just(2.0), st.just(True)),
    levels=st.one_of(st.none(), ints(-1, 5)),
    top_k=st.one_of(ints(-1, 6), st.just(1.5)),
    band=st.one_of(ints(-2, 3), st.just("1")),
    seed=st.integers(0, 2**16),
)
def test_a_picture_refuses_exactly_what_its_attention_refuses(
    L, S, scheme, block_size, levels, top_k, band, seed
):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(n, 3, generator=g, dtype=torch.float64)
               for n in (L, S, S))  # fmt: skip
    if scheme == "coarse_to_fine":
        settings_ = {"block_size": block_size, "top_k": top_k, "band": band}
        run = functools.partial(ea.coarse_to_fine_attention, **settings_)
        extra = {"query": q, "key": k}
    else:
        settings_ = {"block_size": block_size, "levels": levels}
        fn = (ea.pyramid_attention if scheme == "pyramid"
              else ea.recursive_attention)  # fmt: skip
        run = functools.partial(fn, **settings_)
        extra = {}
    try:
        out = run(q, k, v)
    except ValueError as error:
        with pytest.raises(ValueError) as picture_error:
            ea.hierarchical_levels(scheme, L, S, **settings_, **extra)
        assert str(picture_error.value) == str(error)
        return
    where = ea.hierarchical_levels(scheme, L, S, **settings_, **extra)
    assert where.shape == (L, S) and out.isfinite().all()
    weights = ea.effective_attention(run, q, k)
    if scheme == "coarse_to_fine":  # computed exactly where drawn
        assert torch.equal(weights != 0, where == 0)
    else:  # every key reaches every query, through one level
        assert (where >= 0).all() and (weights > 0).all()


# -- masks from block layouts ----------------------------------------------


@given(
    heads=st.none() | st.integers(1, 2),
    nq=st.integers(0, 4),
    nk=st.integers(0, 4),
    block_size=ints(1, 4),
    L=st.integers(1, 12),
    S=st.integers(1, 12),
    seed=st.integers(0, 2**16),
)
def test_from_block_layout_is_the_layout_or_refuses_it_by_name(
    heads, nq, nk, block_size, L, S, seed
):
    g = torch.Generator().manual_seed(seed)
    shape = (nq, nk) if heads is None else (heads, nq, nk)
    layout = torch.rand(shape, generator=g) < 0.5
    bs = int(block_size)
    mod = masks.from_block_layout(layout, block_size)
    covers = nq * bs >= L and nk * bs >= S
    exact = (nq, nk) == (-(-L // bs), -(-S // bs))
    if not covers:
        raises_naming(
            "layout", lambda: masks.create_mask(mod, L, S, heads=heads)
        )
    else:
        mask = masks.create_mask(mod, L, S, heads=heads)
        tiles = layout.repeat_interleave(bs, -2).repeat_interleave(bs, -1)
        assert torch.equal(mask, tiles[..., :L, :S])
    q, k, v = (torch.randn(heads or 1, n, 2, generator=g) for n in (L, S, S))
    attend = functools.partial(
        ea.block_sparse_attention, q, k, v, layout=layout, block_size=bs,
        backend="torch",
    )  # fmt: skip
    if not exact:
        raises_naming("layout", attend)
    else:
        attend()


# -- the command line ------------------------------------------------------


def fits(name: str, L: int, options: dict) -> bool:
    """Whether a variant's settings fit length ``L``, by their definitions
    (written apart from the package's checks)."""
    bs = options["block_size"]
    if name == "coarse-to-fine":
        block = min(bs, L)
        return options["top_k"] <= -(-L // block)
    if name in ("pyramid", "recursive"):
        levels = options["levels"]
        if levels is None or levels == 1:
            return True
        return bs % 2 == 0 and bs * 2 ** (levels - 2) < L
    if name == "nystrom":
        return options["landmarks"] <= L
    if name == "routing":
        return options["clusters"] <= L
    return True


@given(
    variants=st.lists(
        st.sampled_from(["sdpa", "coarse-to-fine", "pyramid", "recursive",
                         "nystrom", "routing"]),
        min_size=1, max_size=3, unique=True,
    ),
    lengths=st.lists(st.integers(1, 300), min_size=1, max_size=3,
                     unique=True),
    block_size=st.integers(1, 64),
    top_k=st.integers(0, 6),
    levels=st.none() | st.integers(1, 6),
    landmarks=st.integers(1, 300),
    clusters=st.integers(1, 300),
    output=st.sampled_from(["none", "good", "missing folder", "a folder"]),
)  # fmt: skip
def test_command_line_settings_are_checked_against_every_length(
    tmp_path_factory, variants, lengths, block_size, top_k, levels,
    landmarks, clusters, output,
):  # fmt: skip
    folder = tmp_path_factory.mktemp("out")
    options = {"block_size": block_size, "top_k": top_k, "levels": levels,
               "landmarks": landmarks, "clusters": clusters}  # fmt: skip
    argv = ["--variants", *variants, "--lengths", *map(str, lengths)]
    for option, value in options.items():
        if value is not None:
            argv += [f"--{option.replace('_', '-')}", str(value)]
    path = {"none": None, "good": folder / "r.json",
            "missing folder": folder / "no" / "r.json",
            "a folder": folder}[output]  # fmt: skip
    if path is not None:
        argv += ["--json", str(path)]
    good = output in ("none", "good") and all(
        fits(name, L, options) for name in variants for L in lengths
    )
    errors = io.StringIO()
    with contextlib.ExitStack() as stack:
        stack.enter_context(
            mock.patch.object(benchmark, "sweep", side_effect=Ran)
        )
        stack.enter_context(contextlib.redirect_stderr(errors))
        stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
        if good:
            with pytest.raises(Ran):
                benchmark_cli.main(argv)
        else:
            with pytest.raises(SystemExit) as exit_info:
                benchmark_cli.main(argv)
            assert exit_info.value.code == 2
            assert "usage:" in errors.getvalue()
    assert sorted(p.name for p in folder.iterdir()) == []  # none left


@given(
    lengths=st.lists(st.integers(1, 64), min_size=1, max_size=3, unique=True),
    failing=st.sets(st.integers(1, 64)),
    error=st.sampled_from([ValueError, RuntimeError, TypeError]),
)
def test_sweep_records_a_failing_variant_and_goes_on(lengths, failing, error):
    def flaky(x):
        if x.shape[0] in failing:
            raise error("broken at this length")
        return x + 1

    records = benchmark.sweep(
        {"flaky": flaky, "steady": lambda x: x * 2},
        lengths,
        lambda L: (torch.ones(L),),
        min_run_time=0.001,
        measure_memory=False,
    )
    assert [(r["variant"], r["L"]) for r in records] == [
        (name, L) for L in lengths for name in ("flaky", "steady")
    ]
    for r in records:
        broken = r["variant"] == "flaky" and r["L"] in failing
        expected = (f"failed: {error.__name__}: broken at this length"
                    if broken else "ok")  # fmt: skip
        assert r["status"] == expected
        assert (r["median_s"] is None) == broken


# -- sliding windows slid inside the keys, past the first block -------------


@given(
    L=st.integers(1, 200),
    S=st.integers(1, 20),
    window=st.tuples(st.integers(0, 4), st.integers(0, 4)),
    dilation=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_shifted_windows_with_more_queries_than_keys_equal_their_mask(
    L, S, window, dilation, seed
):
    # issue 22: the PyTorch path gave zeros from query 64 on when L > S
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, n, 3, generator=g, dtype=torch.float64)
               for n in (L, S, S))  # fmt: skip
    out = ea.sliding_window_attention(
        q, k, v, window=window, dilation=dilation, border="shift",
        backend="torch",
    )  # fmt: skip
    mask = masks.create_mask(masks.shifted_window(window, S, dilation), L, S)
    expected = reference_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(out, expected)


# -- every variant of the registry ------------------------------------------

COMPILED = {"flex", "flex-layout"}  # compiled per length: tests/test_flex.py


def registry_settings(L: int) -> st.SearchStrategy[variants.Settings]:
    """Settings of every kind that mostly fit length ``L``."""
    return st.builds(
        variants.Settings,
        window=st.integers(0, 6),
        causal=st.booleans(),
        block_size=st.sampled_from([2, 4, 8]),
        density=st.floats(0.05, 1.0),
        bigbird_window=st.integers(0, 2),
        global_blocks=st.integers(0, 2),
        random_blocks=st.integers(0, 2),
        clusters=st.integers(1, L),
        top_k=st.integers(0, 3),
        rank=st.integers(1, L + 2),
        landmarks=st.integers(1, L),
        features=st.integers(1, 16),
        seed=st.integers(0, 99),
    )


def check_registered_variant(name: str, data: st.DataObject) -> None:
    """What every variant of the registry must do with settings that fit:
    right shape and dtype, finite, the same answer when called again (its
    layouts and features are drawn once, seeded), and, where the registry
    gives its mask, equal to dense attention with that mask."""
    variant = variants.get(name)
    L = data.draw(st.integers(1, 24), label="L")
    settings = data.draw(registry_settings(L), label="settings")
    if not variant.causal:
        settings = dataclasses.replace(settings, causal=False)
    assume(variants.setting_problem(name, settings, L) is None)
    heads, E = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 8))
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]))
    settings = dataclasses.replace(settings, heads=heads, head_dim=E)
    g = torch.Generator().manual_seed(settings.seed)
    q, k, v = (
        torch.randn(1, heads, L, E, generator=g, dtype=torch.float64).to(dtype)
        for _ in range(3)
    )
    run = variants.build(name, settings)
    out = run(q, k, v)
    assert out.shape == v.shape and out.dtype == dtype
    assert out.isfinite().all()
    torch.testing.assert_close(run(q, k, v), out, rtol=0, atol=0)
    if variant.mask is not None:
        mask = variant.mask(settings, L)
        expected = reference_attention(q, k, v, attn_mask=mask)
        torch.testing.assert_close(
            out.double(), expected, **tolerance(dtype, v)
        )


@pytest.mark.parametrize(
    "name",
    [
        n
        for n in variants.names()
        if variants.get(n).peer in (None, "PyTorch") and n not in COMPILED
    ],
)
@given(data=st.data())
def test_every_registered_variant_keeps_its_promises(name, data):
    check_registered_variant(name, data)


def test_a_new_variant_joins_the_suite_with_one_registry_entry():
    def toy_window(settings):
        def run(query, key, value):
            L = query.shape[-2]
            return ea.dense_attention(
                query, key, value, attn_mask=toy_mask(settings, L)
            )

        return run

    def toy_mask(settings, L):
        window = masks.sliding_window(settings.window)
        return masks.create_mask(window, L, L)

    toy = variants.Variant(
        "toy-window",
        "local",
        "a window through dense attention with a mask",
        toy_window,
        "local_attention",
        options=("window",),
        mask=toy_mask,
    )
    with variants.registered(toy):
        given(data=st.data())(
            lambda data: check_registered_variant("toy-window", data)
        )()
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            benchmark_cli.main(["--list"])
        lines = out.getvalue().splitlines()
        listed = {line.split()[0]: line for line in lines}
        assert "local: a window through dense" in listed["toy-window"]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            benchmark_cli.main(
                "--variants sdpa toy-window --quick --window 2 --head-dim 8 "
                "--no-memory --no-progress".split()
            )
        rows = [line.split() for line in out.getvalue().splitlines()]
        timed = [row for row in rows if row[1:2] == ["toy-window"]]
        assert [row[0] for row in timed] == ["64", "128"]
        assert all(len(row) == 7 for row in timed)  # timed, not failed
    assert "toy-window" not in variants.REGISTRY


def test_the_registry_says_which_variants_lack_a_peer_or_a_deep_entry():
    deep = {v.fn.__name__ for v in VARIANTS} | {
        f.__name__ for f in APPROXIMATIONS.values()
    }
    own = [variants.get(name) for name in variants.names(peer=False)]
    no_deep_entry = [v.name for v in own if v.function.__name__ not in deep]
    no_peer = [v.name for v in own if not v.peers]
    assert no_deep_entry == []  # every one: VARIANTS or APPROXIMATIONS
    # compared with dense SDPA only: no library implements these patterns
    assert no_peer == [
        "routing", "linformer", "nystrom", "performer",
        "pyramid", "recursive", "coarse-to-fine",
    ]  # fmt: skip
