"""The Long Range Arena's generators and the online-softmax merge, with
random good and bad input."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import (
    not_non_negative_ints,
    not_positive_ints,
    raises_naming,
)

from efficient_attention import benchmark
from efficient_attention.attention.online_softmax import (
    block_softmax,
    merge_softmax,
)
from efficient_attention.nlp import long_range as lr


@given(
    L=st.integers(1, 6),
    S=st.integers(1, 12),
    cut=st.integers(0, 12),
    seed=st.integers(0, 2**16),
    hidden=st.floats(0.0, 0.9),
)
def test_two_merged_parts_are_the_softmax_over_all_keys(
    L, S, cut, seed, hidden
):
    cut = min(cut, S)
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(L, S, generator=g, dtype=torch.float64) * 5
    scores[torch.rand(L, S, generator=g) < hidden] = float("-inf")
    value = torch.randn(S, 3, generator=g, dtype=torch.float64)
    out, lse = merge_softmax(
        *block_softmax(scores[:, :cut], value[:cut]),
        *block_softmax(scores[:, cut:], value[cut:]),
    )
    seen = scores.isfinite().any(-1)  # rows with a key: softmax; else 0
    expected = torch.softmax(scores[seen], -1) @ value
    torch.testing.assert_close(out[seen], expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(lse, torch.logsumexp(scores, -1))
    assert (out[~seen] == 0).all() and not out.isnan().any()


@settings(max_examples=30, deadline=None)
@given(
    batch=st.integers(1, 4),
    lengths=st.tuples(st.integers(5, 80), st.integers(0, 80)),
    depth=st.integers(1, 5),
    args=st.integers(2, 6),
    seed=st.integers(0, 2**16),
)
def test_listops_keeps_its_lengths_and_alphabet(
    batch, lengths, depth, args, seed
):
    low, extra = lengths
    tokens, labels = lr.listops(
        batch, min_length=low, max_length=low + extra, max_depth=depth,
        max_args=args, generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    assert tokens.shape == (batch, low + extra)
    used = (tokens != 0).sum(1)
    assert (used <= low + extra).all() and (used >= min(low, 4)).all()
    assert ((tokens >= 0) & (tokens < len(lr.LISTOPS_VOCAB))).all()
    assert ((labels >= 0) & (labels <= 9)).all()


@settings(max_examples=30, deadline=None)
@given(
    batch=st.integers(1, 5),
    key_length=st.integers(1, 4),
    extra=st.integers(0, 30),
    seed=st.integers(0, 2**16),
)
def test_matching_halves_hides_two_keys_of_the_asked_length(
    batch, key_length, extra, seed
):
    length = 2 * key_length + 1 + extra
    tokens, labels = lr.matching_halves(
        batch, length, key_length=key_length,
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    first_key = 2 + 16
    assert tokens.shape == (batch, length)
    assert ((tokens >= first_key).sum(1) == 2 * key_length).all()
    assert set(labels.tolist()) <= {0, 1}


@given(bad=not_positive_ints())
def test_the_generators_name_a_bad_batch(bad):
    raises_naming("batch", lambda: lr.listops(bad))
    raises_naming("batch", lambda: lr.matching_halves(bad, 20))
    raises_naming("batch", lambda: lr.pathfinder(bad))


@given(bad=not_positive_ints())
def test_the_generators_name_a_bad_size(bad):
    raises_naming("max_depth", lambda: lr.listops(2, max_depth=bad))
    raises_naming(
        "key_length", lambda: lr.matching_halves(2, 20, key_length=bad)
    )
    raises_naming("path_steps", lambda: lr.pathfinder(2, path_steps=bad))


@given(bad=st.one_of(st.none(), st.integers(), st.text(max_size=3)))
def test_forward_backward_names_a_function_it_cannot_call(bad):
    raises_naming("fn", lambda: benchmark.forward_backward(bad))


@given(
    points=st.lists(
        st.tuples(st.floats(0, 100), st.floats(0, 1)), max_size=12
    )
)
def test_the_pareto_front_is_exactly_the_points_nothing_beats(points):
    from efficient_attention.benchmark import arena

    front = set(arena.pareto_front(points))

    def beaten(i):
        x, y = points[i]
        return any(u >= x and v >= y and (u > x or v > y) for u, v in points)

    assert front == {i for i in range(len(points)) if not beaten(i)}
    if points:  # the fastest point and the most accurate one are on it
        assert any(points[i][0] == max(p[0] for p in points) for i in front)
        assert any(points[i][1] == max(p[1] for p in points) for i in front)


@given(bad=st.sampled_from([(1.0,), (1.0, float("nan")), ("a", 0.5)]))
def test_the_pareto_front_names_a_bad_point(bad):
    from efficient_attention.benchmark import arena

    raises_naming("points", lambda: arena.pareto_front([(1.0, 0.5), bad]))


@given(length=not_positive_ints())
def test_arena_settings_name_a_bad_length(length):
    from efficient_attention.benchmark import arena

    raises_naming("length", lambda: arena.arena_settings(length))


@given(length=not_positive_ints(), seed=not_non_negative_ints())
def test_the_held_out_set_names_a_bad_length_or_seed(length, seed):
    from efficient_attention.benchmark import arena

    raises_naming("length", lambda: arena.held_out("far-marker", length, 0))
    raises_naming("seed", lambda: arena.held_out("far-marker", 16, seed))


@given(length=st.integers(8, 64), seed=st.integers(0, 2**16))
def test_the_held_out_set_is_one_draw_of_its_seed(length, seed):
    from efficient_attention.benchmark import arena

    tokens, labels = arena.held_out("far-marker", length, seed)
    again, labels_again = arena.held_out("far-marker", length, seed)
    assert tokens.shape == (arena.TEST_SIZE, length)
    assert torch.equal(tokens, again) and torch.equal(labels, labels_again)
