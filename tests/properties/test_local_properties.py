"""Local attention's patterns and its task, with random input."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import assume, given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from strategies import (  # noqa: E402
    block_local,
    ints,
    not_non_negative_ints,
    not_positive_ints,
    raises_naming,
    sliding,
    strided,
    windows,
)

import efficient_attention as ea  # noqa: E402
from efficient_attention import (  # noqa: E402
    masks,
    plotting,
    tasks,
)

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
