"""The benchmark, notebook helpers, plotting, the encoder, hierarchical
pictures and the command line, with random good and bad input."""

from __future__ import annotations

import contextlib
import functools
import io
import math
from unittest import mock

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from strategies import (  # noqa: E402
    DTYPES,
    ints,
    not_finite_reals,
    not_numbers,
    raises_naming,
    tolerance,
)

import efficient_attention as ea  # noqa: E402
from efficient_attention import benchmark, plotting  # noqa: E402
from efficient_attention.attention import hierarchical  # noqa: E402
from efficient_attention.benchmark import cli as benchmark_cli  # noqa: E402
from efficient_attention.benchmark import timing  # noqa: E402

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
            mock.patch.object(timing, "sweep", side_effect=Ran)
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
            mock.patch.object(timing, "sweep", side_effect=Ran)
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
