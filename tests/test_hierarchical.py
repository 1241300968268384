"""Hierarchical attention: pyramid, recursive and coarse-to-fine schemes
against dense attention in their exact settings, against a dense reference
of their own pattern otherwise, gradients, and bad input."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from inputs import random_qkv as shared_random_qkv

import efficient_attention as ea
from efficient_attention.attention import hierarchical
from tests.reference import reference_attention

POOLED = [ea.pyramid_attention, ea.recursive_attention]


random_qkv = functools.partial(shared_random_qkv, L=37)


def pooled(x, factor):
    """Means of ``factor`` consecutive rows and their counts, plainly."""
    groups = list(torch.split(x, factor, dim=-2))
    means = torch.stack([g.mean(-2) for g in groups], dim=-2)
    counts = torch.tensor([g.shape[-2] for g in groups], dtype=x.dtype)
    return means, counts


def multilevel_reference(q, k, v, block_size, levels, pool_queries):
    """Dense attention over every level's pooled keys at once: level
    ``l``'s pooled key ``p`` is allowed for query ``i`` where
    ``hierarchical_levels`` says token ``p * 2**l`` reaches ``i`` through
    level ``l``; its score gets ``log(count)``."""
    L, S = q.shape[-2], k.shape[-2]
    scheme = "recursive" if pool_queries else "pyramid"
    where = ea.hierarchical_levels(
        scheme, L, S, block_size=block_size, levels=levels
    )
    scale = 1 / math.sqrt(q.shape[-1])
    scores, values = [], []
    for level in range(levels):
        f = 2**level
        k_l, counts = pooled(k, f)
        v_l, _ = pooled(v, f)
        q_l = q
        if pool_queries:
            q_l = pooled(q, f)[0].repeat_interleave(f, dim=-2)[..., :L, :]
        first = torch.arange(k_l.shape[-2]) * f
        # every token of a pooled key reaches the query at the same level
        for offset in range(f):
            same = where[:, (first + offset).clamp(max=S - 1)]
            assert torch.equal(same == level, where[:, first] == level)
        s = (q_l @ k_l.transpose(-2, -1)) * scale + counts.log()
        scores.append(s.masked_fill(where[:, first] != level, -math.inf))
        values.append(v_l)
    scores = torch.cat(scores, dim=-1)  # (..., L, sum of pooled keys)
    weights = torch.softmax(scores, dim=-1)
    return weights @ torch.cat(values, dim=-2)


# -- exact settings ------------------------------------------------------


@pytest.mark.parametrize("fn", POOLED)
@pytest.mark.parametrize(
    "dtype,backend",
    [
        (torch.float32, "kernel"),
        (torch.float32, "torch"),
        (torch.float64, "auto"),
    ],
)
@pytest.mark.parametrize(
    "L,S,block_size", [(37, 37, 8), (5, 70, 3), (70, 9, 64)]
)
def test_one_level_is_dense(fn, dtype, backend, L, S, block_size):
    q, k, v = random_qkv(2, 3, L=L, S=S, dtype=dtype)
    out = fn(q, k, v, block_size=block_size, levels=1, backend=backend)
    expected = ea.dense_attention(q, k, v)
    assert out.shape == (2, 3, L, 5) and out.dtype == dtype
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("backend", ["torch", "kernel"])
@pytest.mark.parametrize(
    "L,S,block_size", [(37, 37, 8), (50, 29, 6), (9, 9, 4)]
)
def test_every_block_picked_is_dense(backend, L, S, block_size):
    dtype = torch.float64 if backend == "torch" else torch.float32
    q, k, v = random_qkv(2, 3, L=L, S=S, dtype=dtype)
    nk = -(-S // min(block_size, max(L, S)))
    out = ea.coarse_to_fine_attention(
        q, k, v, block_size=block_size, top_k=nk, backend=backend
    )
    torch.testing.assert_close(out, ea.dense_attention(q, k, v))


# -- the approximations, against a dense reference of their pattern -------


@pytest.mark.parametrize("backend", ["torch", "kernel"])
@pytest.mark.parametrize("pool_queries", [False, True])
@pytest.mark.parametrize(
    "L,S,block_size,levels",
    [
        (37, 37, 4, 3),
        (64, 64, 4, 4),
        (100, 61, 6, 3),
        (23, 80, 2, 5),
        (300, 300, 64, 3),
    ],
)
def test_multilevel_equals_its_dense_reference(
    backend, pool_queries, L, S, block_size, levels
):
    dtype = torch.float64 if backend == "torch" else torch.float32
    q, k, v = random_qkv(2, 3, L=L, S=S, dtype=dtype)
    fn = ea.recursive_attention if pool_queries else ea.pyramid_attention
    out = fn(q, k, v, block_size=block_size, levels=levels, backend=backend)
    expected = multilevel_reference(
        q.double(), k.double(), v.double(), block_size, levels, pool_queries
    )
    torch.testing.assert_close(out, expected.to(dtype))


def test_levels_map_is_exact_near_and_coarser_far():
    where = ea.hierarchical_levels("pyramid", 64, block_size=4, levels=4)
    assert where.shape == (64, 64)
    assert (where.diagonal() == 0).all()  # a query sees itself exactly
    assert where[0, 63] == 3 and where[63, 0] == 3  # the far corner: coarsest
    distance = (torch.arange(64)[:, None] - torch.arange(64)).abs()
    for level in range(1, 4):  # farther levels sit farther away
        assert distance[where == level].min() > distance[where == 0].min()
    assert (where >= 0).all()  # nothing skipped


def test_levels_map_matches_a_pair_by_pair_rule():
    """Each pair's level, from the definition: the finest level whose
    region (the neighbour blocks of b * 2**l tokens) holds the key."""
    L, b, levels = 45, 4, 3
    where = ea.hierarchical_levels("pyramid", L, block_size=b, levels=levels)
    for i in range(L):
        for j in range(L):
            near = [
                abs(i // (b * 2**lv) - j // (b * 2**lv)) <= 1
                for lv in range(levels - 1)
            ]
            expected = near.index(True) if any(near) else levels - 1
            assert where[i, j] == expected, (i, j)


@pytest.mark.parametrize(
    "L, block_size, levels",
    [(64, 4, 3), (45, 4, 3), (100, 8, None), (37, 2, 4)],
)
@pytest.mark.parametrize("scheme", ["pyramid", "recursive"])
def test_keys_per_query_counts_the_levels_map(scheme, L, block_size, levels):
    where = ea.hierarchical_levels(
        scheme, L, block_size=block_size, levels=levels
    )
    share = 0.25 if scheme == "recursive" else 0.5
    expected = (share ** where.double()).sum() / L  # a pair of level l
    cost = hierarchical.keys_per_query(
        scheme, L, block_size=block_size, levels=levels
    )
    assert math.isclose(cost, float(expected), rel_tol=1e-12)
    assert cost < L  # cheaper than dense attention over L keys


def test_keys_per_query_one_level_is_dense_and_coarse_to_fine_is_refused():
    assert hierarchical.keys_per_query("pyramid", 30, levels=1) == 30
    with pytest.raises(ValueError, match="count hierarchical_levels"):
        hierarchical.keys_per_query("coarse_to_fine", 64)


def test_coarse_to_fine_equals_block_sparse_with_its_choice():
    q, k, v = random_qkv(2, 3, L=50, S=50, dtype=torch.float64)
    chosen = hierarchical.block_choice(q, k, block_size=8, top_k=2)
    assert chosen.shape == (2, 3, 7, 7)
    assert (chosen.sum(-1) <= 2 + 3).all() and (chosen.sum(-1) >= 2 + 2).all()
    out = ea.coarse_to_fine_attention(q, k, v, block_size=8, top_k=2)
    mask = chosen.repeat_interleave(8, -2).repeat_interleave(8, -1)
    expected = reference_attention(q, k, v, attn_mask=mask[..., :50, :50])
    torch.testing.assert_close(out, expected)
    where = ea.hierarchical_levels(
        "coarse_to_fine", 50, block_size=8, top_k=2, query=q[0, 0], key=k[0, 0]
    )
    torch.testing.assert_close(where == 0, mask[0, 0, :50, :50])


def test_picks_the_block_that_matters():
    """A key block far away that every query wants is picked; the
    the pyramid is exact with one level only."""
    q, k, v = random_qkv(1, L=128, E=8, dtype=torch.float64, seed=3)
    q[..., 0] += 3.0  # every query leans towards feature 0...
    k[..., 96:104, 0] += 3.0  # ...and so do the keys of block 12 only
    chosen = hierarchical.block_choice(q, k, block_size=8, top_k=1)
    assert chosen[0, :5, 12].all()
    dense = ea.dense_attention(q, k, v)
    errors = [
        (ea.pyramid_attention(q, k, v, block_size=4, levels=n) - dense).norm()
        for n in (1, 3, 5)
    ]
    assert errors[0] < 1e-10 < errors[1]


@pytest.mark.parametrize("fn", [*POOLED, ea.coarse_to_fine_attention])
def test_gradients_flow(fn):
    q, k, v = (
        t.requires_grad_() for t in random_qkv(2, L=40, dtype=torch.float64)
    )
    kwargs = {"top_k": 1} if fn is ea.coarse_to_fine_attention else {}
    fn(q, k, v, block_size=4, **kwargs).square().sum().backward()
    for t in (q, k, v):
        assert t.grad is not None and torch.isfinite(t.grad).all()
        assert t.grad.abs().sum() > 0


@pytest.mark.parametrize("fn", POOLED)
def test_gradcheck_multilevel(fn):
    q, k, v = (t.requires_grad_() for t in random_qkv(L=19, E=3, Ev=2, seed=5))
    assert torch.autograd.gradcheck(
        lambda q, k, v: fn(q, k, v, block_size=2, levels=3), (q, k, v)
    )


def test_half_precision_and_leading_dims():
    q, k, v = random_qkv(2, 2, 3, L=33, dtype=torch.float32)
    for fn in POOLED:
        out = fn(q.bfloat16(), k.bfloat16(), v.bfloat16(), block_size=4)
        assert out.dtype == torch.bfloat16 and out.shape == (2, 2, 3, 33, 5)
        reference = fn(q, k, v, block_size=4)
        torch.testing.assert_close(out.float(), reference, atol=5e-2, rtol=0)


def test_default_levels_keep_the_coarsest_level_small():
    assert hierarchical.default_levels(4096, 64) == 5  # 4096 / 16 = 256 keys
    assert hierarchical.max_levels(4096, 64) == 7
    q, k, v = random_qkv(L=300)
    out = ea.pyramid_attention(q, k, v, block_size=4)  # levels=None
    assert out.shape == (300, 5)


def test_empty_inputs_give_zeros():
    q, k, v = random_qkv(2, L=0, S=5)
    for fn in POOLED:
        assert fn(q, k, v, block_size=4).shape == (2, 0, 5)
    q, k, v = random_qkv(2, L=4, S=0)
    out = ea.coarse_to_fine_attention(q, k, v, block_size=4, top_k=0)
    assert torch.equal(out, torch.zeros(2, 4, 5, dtype=q.dtype))


# -- bad input -----------------------------------------------------------


@pytest.mark.parametrize("fn", POOLED)
@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"block_size": 0}, "block_size"),
        ({"block_size": 4, "levels": 0}, "levels"),
        ({"block_size": 4, "levels": 9}, r"levels <= \d"),
        ({"block_size": 5, "levels": 2}, "block_size must be even"),
        ({"block_size": 4.0}, "block_size"),
        ({"block_size": 4, "levels": True}, "levels"),
    ],
)
def test_bad_levels_and_blocks(fn, kwargs, match):
    q, k, v = random_qkv(L=40)
    with pytest.raises(ValueError, match=match):
        fn(q, k, v, **kwargs)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"top_k": 9}, r"top_k must be at most .* = 5"),
        ({"top_k": -1}, "top_k"),
        ({"band": -1}, "band"),
        ({"block_size": 0, "top_k": 1}, "block_size"),
        ({"top_k": 1, "backend": "gpu"}, "backend"),
    ],
)
def test_bad_top_k(kwargs, match):
    q, k, v = random_qkv(L=40)
    kwargs.setdefault("block_size", 8)
    with pytest.raises(ValueError, match=match):
        ea.coarse_to_fine_attention(q, k, v, **kwargs)


@pytest.mark.parametrize("L,S", [(4, 20), (20, 4), (3, 3)])
def test_the_coarse_to_fine_picture_is_what_the_attention_computes(L, S):
    # issue 22: with L < block_size < S the picture capped the block at L
    q, k, v = random_qkv(L=L, S=S, dtype=torch.float64)
    where = ea.hierarchical_levels(
        "coarse_to_fine", L, S, block_size=8, top_k=1, query=q, key=k
    )
    weights = ea.effective_attention(
        ea.coarse_to_fine_attention, q, k, block_size=8, top_k=1
    )
    assert torch.equal(weights != 0, where == 0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"band": -1}, "band"),
        ({"top_k": 9}, r"top_k must be at most .* = 5"),
        ({"top_k": -1}, "top_k"),
        ({"block_size": 0}, "block_size"),
        ({"top_k": 1.0}, "top_k"),
    ],
)
def test_the_coarse_to_fine_picture_refuses_what_the_attention_refuses(
    kwargs, match
):
    # issue 22: band=-1 was drawn (every pair skipped), a top_k beyond the
    # blocks raised from inside torch.topk
    q, k, v = random_qkv(L=40)
    kwargs = {"block_size": 8, **kwargs}
    with pytest.raises(ValueError, match=match):
        ea.coarse_to_fine_attention(q, k, v, **kwargs)
    with pytest.raises(ValueError, match=match):
        ea.hierarchical_levels("coarse_to_fine", 40, query=q, key=k, **kwargs)


def test_bad_scheme_and_missing_inputs():
    with pytest.raises(ValueError, match="scheme"):
        ea.hierarchical_levels("funnel", 8)
    with pytest.raises(ValueError, match="query"):
        ea.hierarchical_levels("coarse_to_fine", 8, block_size=4)


def test_never_builds_an_l_by_l_matrix():
    """At L = 4096 no intermediate holds L * L elements (16.7M floats)."""
    q, k, v = random_qkv(L=4096, E=8, dtype=torch.float32)
    largest = []

    def watch(*args):  # saved tensors of the autograd graph
        return args

    with torch.autograd.graph.saved_tensors_hooks(
        lambda t: largest.append(t.numel()) or t, lambda t: t
    ):
        for fn in POOLED:
            fn(
                q.requires_grad_(), k, v, block_size=16, levels=7
            ).sum().backward()
    assert max(largest) < 4096 * 4096 / 8


def test_benchmark_command_line_times_the_three_schemes(capsys):
    from efficient_attention.benchmark import cli as benchmark_cli

    benchmark_cli.main(
        [
            "--variants", "sdpa", "pyramid", "recursive", "coarse-to-fine",
            "--lengths", "256", "--heads", "2", "--block-size", "16",
            "--top-k", "2", "--levels", "3", "--min-run-time", "0.01",
            "--no-memory",
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "levels 3" in out and "top-k 2" in out
    for name in ("pyramid", "recursive", "coarse-to-fine"):
        assert name in out


def test_far_marker_task():
    from efficient_attention import tasks

    generator = torch.Generator().manual_seed(0)
    tokens, targets = tasks.far_marker(
        8, 64, classes=3, vocab=10, generator=generator
    )
    assert tokens.shape == targets.shape == (8, 64)
    markers = tokens < 3
    assert (markers.sum(-1) == 1).all()  # one marker a sequence...
    assert not markers[:, 16:].any()  # ...in the first quarter
    assert (targets[:, :48] == tasks.IGNORE).all()
    marker = tokens[markers]  # (8,) in sequence order
    assert torch.equal(targets[:, 48:], marker[:, None].expand(8, 16))
    for kwargs, name in [
        ({"length": 3}, "length"),
        ({"classes": 16}, "classes"),
        ({"batch": 0}, "batch"),
    ]:
        with pytest.raises(ValueError, match=name):
            tasks.far_marker(**{"batch": 2, "length": 16, **kwargs})


def test_draw_hierarchical_static_figure():
    import matplotlib

    matplotlib.use("Agg")
    from efficient_attention import widgets

    figure = widgets.draw_hierarchical(32, block_size=4, levels=3, top_k=1)
    titles = [ax.get_title() for ax in figure.axes]
    assert any("pyramid" in t for t in titles)
    assert any("coarse-to-fine" in t for t in titles)
    with pytest.raises(ValueError, match="levels"):
        widgets.draw_hierarchical(16, block_size=4, levels=6)


def test_the_shades_show_what_one_score_covers_in_each_scheme():
    import matplotlib

    matplotlib.use("Agg")
    from efficient_attention import widgets

    figure = widgets.draw_hierarchical(64, block_size=4, levels=3, top_k=2)
    pyramid, recursive = (ax.images[1].get_array() for ax in figure.axes[:2])
    levels = [ax.images[0].get_array() for ax in figure.axes[:2]]
    # the same pairs at the same levels, but different tiles of scores
    assert np.array_equal(levels[0], levels[1])
    assert not np.array_equal(pyramid, recursive)
    where = np.asarray(levels[0]) - 1  # -1 skipped, 0 exact, l pooled
    shaded_p, shaded_r = pyramid[..., 3] > 0, recursive[..., 3] > 0
    assert not (shaded_p | shaded_r)[where < 1].any()  # exact stay clear
    i, j = np.argwhere(where == 2)[0]  # a pair pooled 4 to 1
    i0, j0 = i // 4 * 4, j // 4 * 4
    # the recursive scheme computes one score for a 4 x 4 square of pairs
    square = shaded_r[i0 : i0 + 4, j0 : j0 + 4]
    assert square.all() or not square.any()
    # the pyramid one for each query's strip of 4 keys: rows alternate
    strip = shaded_p[i0 : i0 + 4, j0]
    assert list(strip) == [strip[0], not strip[0]] * 2
