"""Every attention variant against a float64 reference written apart from
the package (tests/reference.py): the registry's variants by themselves
(``check_registered_variant``) and, more deeply, those of ``VARIANTS``;
the approximations; bad input named in the error."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from hypothesis import assume, given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from reference import reference_attention  # noqa: E402
from strategies import (  # noqa: E402
    Problem,
    additive_masks,
    allowed_pairs,
    bool_masks,
    ints,
    may_overflow,
    not_finite_reals,
    not_non_negative_ints,
    not_numbers,
    not_positive_ints,
    patterns,
    problems,
    raises_naming,
    reach,
    reals,
    tolerance,
)
from torch import Tensor  # noqa: E402

import efficient_attention as ea  # noqa: E402
from efficient_attention import masks, variants  # noqa: E402
from efficient_attention.attention import hierarchical  # noqa: E402
from efficient_attention.benchmark import cli as benchmark_cli  # noqa: E402

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


KERNEL_GRADIENTS = {
    # the two attentions whose C++ kernel has a backward pass
    "sliding_window": (ea.sliding_window_attention, local_kwargs),
    "block_sparse": (ea.block_sparse_attention, block_sparse_kwargs),
}


@pytest.mark.parametrize("kernel", KERNEL_GRADIENTS)
@given(data=st.data())
def test_kernel_gradients_equal_the_float64_torch_version(kernel, data):
    from efficient_attention import cpu_kernels

    if not cpu_kernels.status(kernel).startswith("ready"):
        pytest.skip(cpu_kernels.status(kernel))
    fn, make_kwargs = KERNEL_GRADIENTS[kernel]
    p = data.draw(problems, label="problem")
    # a gradient multiplies two inputs, so float32 overflows long before
    # the forward pass does: draw values of ordinary size
    p = dataclasses.replace(p, dtype=torch.float64,
                            magnitude=min(p.magnitude, 3.0))  # fmt: skip
    kwargs = data.draw(make_kwargs(p), label="kwargs")
    q, k, v = p.qkv()
    assume(not may_overflow(q.float(), k.float(), kwargs.get("scale")))
    generator = torch.Generator().manual_seed(p.seed)
    grad = torch.randn(*p.lead, p.L, p.Ev, generator=generator,
                       dtype=torch.float64)  # fmt: skip

    def gradients(backend, dtype):
        inputs = [t.to(dtype).requires_grad_() for t in (q, k, v)]
        out = fn(*inputs, **{**kwargs, "backend": backend})
        return torch.autograd.grad(out, inputs, grad.to(dtype))

    expected = gradients("torch", torch.float64)
    got = gradients("kernel", torch.float32)
    # Float32 rounds each score by about 1e-7 of its size, and a weight
    # exp(score) inherits that error times the score: tolerances grow with
    # the largest score and with each gradient's natural size (dq sums
    # scale * dS * k with dS up to |dO| |v|, dk likewise with q).
    scale = kwargs.get("scale")
    scale = abs(1 / math.sqrt(p.E) if scale is None else float(scale))
    largest = lambda t: t.abs().max().item() if t.numel() else 0.0  # noqa: E731
    scores = largest((q * scale) @ k.transpose(-2, -1)) if p.L * p.S else 0
    product = scale * largest(grad) * largest(v) * max(p.Ev, 1)
    natural = {
        "query": product * largest(k),
        "key": product * largest(q),
        "value": largest(grad),
    }
    for a, b, name in zip(got, expected, natural):
        assert a.shape == b.shape, name
        atol = 1e-6 * (1 + scores) * max(natural[name], 1.0) * max(p.S, 1)
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=atol,
                                   msg=name)  # fmt: skip


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


@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    scale=reals(1e-3, 1e3),
    seed=st.integers(0, 2**16),
)
def test_relative_error_is_a_share_of_the_references_size(shape, scale, seed):
    g = torch.Generator().manual_seed(seed)
    a, b, c = (torch.randn(*shape, generator=g, dtype=torch.float64)
               for _ in range(3))  # fmt: skip
    assert ea.relative_error(b, b) == 0
    assert ea.relative_error(torch.zeros_like(b), b) == pytest.approx(1)
    # the same share at any scale, in float32 as in float64
    scaled = ea.relative_error(a * float(scale), b * float(scale))
    assert scaled == pytest.approx(ea.relative_error(a, b), rel=1e-9)
    assert ea.relative_error(a.float(), b.float()) == pytest.approx(
        ea.relative_error(a, b), rel=1e-5
    )
    # a triangle inequality, in units of the reference's size
    assert ea.relative_error(a, b) <= (
        ea.relative_error(a, c) * c.norm() / b.norm()
        + ea.relative_error(c, b)
    ) * (1 + 1e-12)
