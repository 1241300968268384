"""Mask builders against plain loops over their definitions, masks from
block layouts, the cost model, and the validation helpers."""

from __future__ import annotations

import functools
import string

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from strategies import (  # noqa: E402
    Problem,
    evaluate,
    ints,
    not_finite_reals,
    not_non_negative_ints,
    not_numbers,
    not_positive_ints,
    patterns,
    raises_naming,
    reals,
)
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import efficient_attention as ea  # noqa: E402
from efficient_attention import (  # noqa: E402
    _validation,
    cost,
    masks,
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
