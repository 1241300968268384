"""Timing, memory, sweeps and command line of efficient_attention.benchmark."""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import efficient_attention as ea
from efficient_attention import benchmark, masks, variants
from efficient_attention.benchmark import cli as benchmark_cli
from efficient_attention.benchmark import timing


def test_time_callable_measures_a_known_duration():
    timing = benchmark.time_callable(time.sleep, 0.01, min_run_time=0.1)
    assert 0.009 < timing.median_s < 0.05
    assert timing.runs >= 3 and timing.iqr_s >= 0



def test_time_callable_with_a_block_size_times_without_a_warm_up():
    calls = []

    def slow():  # longer than min_run_time: one block is enough
        calls.append(1)
        time.sleep(0.02)

    first = benchmark.time_callable(slow, min_run_time=0.01)
    assert first.calls_per_block == 1 and first.runs == 1
    assert len(calls) == 2  # blocked_autorange's estimate warmed it up
    calls.clear()
    later = benchmark.time_callable(
        slow, min_run_time=0.01, calls_per_block=first.calls_per_block
    )
    assert len(calls) == 1 and later.runs == 1
    assert 0.019 < later.median_s < 0.1


def test_time_callable_blocks_hold_the_calls_asked_for():
    calls = []
    timing = benchmark.time_callable(
        lambda: calls.append(time.sleep(0.001)),
        min_run_time=0.02,
        calls_per_block=4,
    )
    assert len(calls) == timing.runs == 4 * len(timing.block_times_s)
    assert timing.calls_per_block == 4
    assert 4 * sum(timing.block_times_s) >= 0.02
    assert 0.0009 < timing.min_s <= timing.median_s < 0.02
    with pytest.raises(ValueError, match="calls_per_block must be a positive"):
        benchmark.time_callable(print, calls_per_block=0)

def test_time_callable_uses_all_threads():
    # Timer runs on 1 thread unless told otherwise: with 3 torch threads set
    # here (more than 1 on any machine), the timed call must see 3.
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        seen = []
        benchmark.time_callable(
            lambda: seen.append(torch.get_num_threads()), min_run_time=0.01
        )
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {3}


@pytest.mark.parametrize(
    "min_run_time", [math.inf, -math.inf, math.nan, 0, -1.0, True, "0.1"]
)
def test_time_callable_refuses_endless_or_meaningless_run_times(
    min_run_time,
):
    with pytest.raises(ValueError, match="min_run_time must be a positive"):
        benchmark.time_callable(lambda: None, min_run_time=min_run_time)


def test_time_callable_takes_numpy_seconds():
    timing = benchmark.time_callable(
        lambda: None, min_run_time=np.float32(0.01)
    )
    assert timing.runs > 0


def test_cpu_peak_memory_counts_what_is_alive_at_once():
    n = 2**20  # 4 MiB of float32

    def one_at_a_time():
        for _ in range(3):
            torch.ones(n)

    def three_at_once():
        return [torch.ones(n) for _ in range(3)]

    single = benchmark.peak_memory_bytes(one_at_a_time)
    triple = benchmark.peak_memory_bytes(three_at_once)
    assert 4 * n <= single < 4.5 * n
    assert 12 * n <= triple < 12.5 * n


def test_native_stderr_without_drops_only_the_named_lines(capfd):
    with timing.native_stderr_without("known caveat"):
        os.write(2, b"a known caveat, twice\nsomething else\n")
    assert capfd.readouterr().err == "something else\n"


def test_peak_memory_keeps_the_profilers_unknown_block_warning_quiet():
    # The warning comes once per process: a fresh one sees the first.
    script = (
        "import torch\n"
        "from efficient_attention import benchmark\n"
        "held = [torch.ones(1 << 20)]\n"
        "benchmark.peak_memory_bytes(held.clear)\n"
        "print('measured')\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True,
        timeout=120, check=True,
    )
    assert run.stdout == "measured\n"
    assert "unknown size" not in run.stderr


def test_cpu_peak_memory_sees_the_score_matrix():
    q, k, v = benchmark.attention_inputs(512, head_dim=16)
    peak = benchmark.peak_memory_bytes(ea.dense_attention, q, k, v)
    # scores and weights
    assert peak >= 2 * ea.cost.score_matrix_bytes(512, 512)
    assert (
        benchmark.peak_memory_bytes(F.scaled_dot_product_attention, q, k, v)
        < peak / 4
    )


def test_attention_inputs_are_seeded_and_shaped():
    first = benchmark.attention_inputs(6, batch=2, heads=3, head_dim=4, seed=7)
    again = benchmark.attention_inputs(6, batch=2, heads=3, head_dim=4, seed=7)
    other = benchmark.attention_inputs(6, batch=2, heads=3, head_dim=4, seed=8)
    assert all(t.shape == (2, 3, 6, 4) for t in first)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])


def test_sweep_returns_plain_records():
    records = benchmark.sweep(
        {"sdpa": F.scaled_dot_product_attention, "dense": ea.dense_attention},
        [16, 32],
        lambda L: benchmark.attention_inputs(L, head_dim=8),
        min_run_time=0.01,
    )
    assert [(r["L"], r["variant"]) for r in records] == [
        (16, "sdpa"),
        (16, "dense"),
        (32, "sdpa"),
        (32, "dense"),
    ]
    for record in records:
        assert (
            record["status"] == "ok"
            and record["median_s"] > 0
            and record["peak_bytes"] > 0
        )
        assert record["device"] == "cpu" and record["dtype"] == "float32"
        assert record["threads"] == torch.get_num_threads()


def quick_sweep(lengths, **kwargs):
    return benchmark.sweep(
        {"noop": lambda *args: None},
        lengths,
        lambda L: (L,),
        min_run_time=0.001,
        measure_memory=False,
        **kwargs,
    )


@pytest.mark.parametrize(
    "make_lengths",
    [
        lambda: [16, 8, 32],
        lambda: (16, 8, 32),
        lambda: (L for L in (16, 8, 32)),
        lambda: np.array([16, 8, 32]),
        lambda: range(16, 33, 8),
    ],
    ids=["list", "tuple", "generator", "numpy", "range"],
)
def test_sweep_takes_lengths_in_any_iterable(make_lengths):
    expected = list(make_lengths())
    records = quick_sweep(make_lengths())
    assert [r["L"] for r in records] == expected
    assert all(type(r["L"]) is int for r in records)
    assert all(r["status"] == "ok" and r["runs"] > 0 for r in records)


@pytest.mark.parametrize(
    "lengths", [[8, 16, 8], np.array([8, 8]), (L for L in (4, 4))]
)
def test_sweep_refuses_repeated_lengths(lengths):
    with pytest.raises(ValueError, match="lengths must be distinct"):
        quick_sweep(lengths)


def test_sweep_refuses_inputs_that_cannot_be_timed():
    with pytest.raises(ValueError, match="must return a tuple"):
        benchmark.sweep(
            {"x": print}, [4], lambda L: torch.ones(L), min_run_time=0.01
        )
    with pytest.raises(ValueError, match="tensor on meta"):
        benchmark.sweep(
            {"x": print},
            [4],
            lambda L: (torch.ones(L, device="meta"),),
            min_run_time=0.01,
        )


def test_pooled_timing_takes_the_median_of_all_blocks():
    steady = benchmark.Timing(1.0, 0.0, 20, (1.0, 1.0))
    disturbed = benchmark.Timing(9.0, 0.0, 1, (9.0,))
    pooled = benchmark.Timing.pooled([steady, disturbed])
    assert pooled.median_s == 1.0 and pooled.runs == 21
    assert pooled.block_times_s == (1.0, 1.0, 9.0)
    with pytest.raises(ValueError, match="block_times_s"):
        benchmark.Timing.pooled([benchmark.Timing(1.0, 0.0, 1)])


def test_min_s_is_the_fastest_block():
    assert benchmark.Timing(2.0, 1.0, 3, (2.0, 1.5, 3.0)).min_s == 1.5
    with pytest.raises(ValueError, match="block_times_s"):
        benchmark.Timing(1.0, 0.0, 1).min_s


def test_sweep_rounds_go_over_every_length_and_variant_in_turn():
    calls = []

    def variant(name):
        return lambda L: calls.append((L, name)) or time.sleep(0.001)

    records = benchmark.sweep(
        {"a": variant("a"), "b": variant("b")},
        [4, 8],
        lambda L: (L,),
        min_run_time=0.01,
        measure_memory=False,
        rounds=3,
    )
    turns = [c for i, c in enumerate(calls) if i == 0 or calls[i - 1] != c]
    assert turns == [(4, "a"), (4, "b"), (8, "a"), (8, "b")] * 3
    assert 0 < records[0]["runs"] < calls.count((4, "a"))  # warm-up not timed
    for record in records:
        assert 0 < record["min_s"] <= record["median_s"]



def test_sweep_warms_up_in_the_first_round_only():
    calls = []

    def slow(L):  # longer than min_run_time: one call per block
        calls.append(L)
        time.sleep(0.02)

    (record,) = benchmark.sweep(
        {"slow": slow}, [4], lambda L: (L,), min_run_time=0.01,
        measure_memory=False, rounds=3,
    )  # fmt: skip
    assert len(calls) == 2 + 2 and record["runs"] == 3


def test_sweep_stops_timing_a_variant_once_it_runs_out_of_memory():
    calls = []

    def fails_above_8(L):
        calls.append(L)
        if L > 8:
            raise RuntimeError("CUDA out of memory. Tried to allocate 1 TiB")

    records = benchmark.sweep(
        {"big": fails_above_8},
        [8, 16],
        lambda L: (L,),
        min_run_time=0.01,
        rounds=2,
    )
    assert calls.count(16) == 1  # not retried in the second round
    assert [r["status"] for r in records] == ["ok", "out of memory"]
    assert records[1]["peak_bytes"] is None and records[1]["min_s"] is None


def test_sweep_records_out_of_memory_and_other_errors():
    def out_of_memory(*args):
        raise RuntimeError(
            "DefaultCPUAllocator: can't allocate memory: you tried 1 TB"
        )

    records = benchmark.sweep(
        {"oom": out_of_memory},
        [8],
        lambda L: (torch.ones(L),),
        min_run_time=0.01,
    )
    assert (
        records[0]["status"] == "out of memory"
        and records[0]["median_s"] is None
    )

    def broken(*args):
        raise RuntimeError("shape mismatch")

    # issue 22: an error other than out-of-memory is recorded, and the
    # sweep goes on (it ended the sweep and lost every record before)
    records = benchmark.sweep(
        {"broken": broken, "fine": lambda x: x + 1},
        [8, 16],
        lambda L: (torch.ones(L),),
        min_run_time=0.01,
    )
    assert [r["status"] for r in records] == [
        "failed: RuntimeError: shape mismatch", "ok",
    ] * 2  # fmt: skip


def test_attention_inputs_take_numpy_numbers_and_dtype_names():
    first = benchmark.attention_inputs(
        np.int64(6), heads=np.int32(2), head_dim=np.int64(4), seed=np.int64(7)
    )
    again = benchmark.attention_inputs(6, heads=2, head_dim=4, seed=7)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    bf16 = benchmark.attention_inputs(6, dtype="bfloat16")
    assert all(t.dtype == torch.bfloat16 for t in bf16)


def test_loglog_slope_takes_iterables_and_refuses_what_has_no_slope():
    xs = np.array([256, 512, 1024])
    assert benchmark.loglog_slope(
        (x for x in xs), (float(x) ** 2 for x in xs)
    ) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="distinct x"):
        benchmark.loglog_slope([512, 512], [1.0, 2.0])
    with pytest.raises(ValueError, match="finite positive numbers"):
        benchmark.loglog_slope([1, 2], [1.0, math.inf])


def test_loglog_slope():
    xs = [256, 512, 1024, 2048]
    assert benchmark.loglog_slope(xs, [x**2 for x in xs]) == pytest.approx(2.0)
    assert benchmark.loglog_slope(xs, [3 * x for x in xs]) == pytest.approx(
        1.0
    )
    with pytest.raises(ValueError, match="positive values"):
        benchmark.loglog_slope([1, 2], [0, 1])
    with pytest.raises(ValueError, match="two or more"):
        benchmark.loglog_slope([1], [1])


def test_describe_hardware_names_device_threads_and_dtype():
    info = benchmark.describe_hardware("cpu", torch.bfloat16)
    assert (
        info["device"] == "cpu" and info["threads"] == torch.get_num_threads()
    )
    assert info["dtype"] == "bfloat16" and info["cpu"]
    summary = benchmark.hardware_summary("cpu")
    assert (
        f"{torch.get_num_threads()} CPU threads" in summary
        and "float32" in summary
    )


def test_format_records_gives_ratios_to_the_baseline():
    records = [
        {
            "variant": "sdpa",
            "L": 8,
            "median_s": 0.001,
            "iqr_s": 0.0,
            "peak_bytes": 2**20,
            "status": "ok",
        },
        {
            "variant": "dense",
            "L": 8,
            "median_s": 0.003,
            "iqr_s": 0.0,
            "peak_bytes": None,
            "status": "ok",
        },
        {
            "variant": "dense",
            "L": 16,
            "median_s": None,
            "iqr_s": None,
            "peak_bytes": None,
            "status": "out of memory",
        },
    ]
    table = benchmark.format_records(records).splitlines()
    assert table[1].split()[-1] == "1.00" and table[2].split()[-1] == "3.00"
    assert "out of memory" in table[3]
    with pytest.raises(ValueError, match="at least one record"):
        benchmark.format_records([])


def test_command_line(capsys):
    benchmark_cli.main(
        "--lengths 16 32 --head-dim 8 --min-run-time 0.01 --rounds 2".split()
    )
    out = capsys.readouterr().out
    assert "CPU threads" in out and "dtype float32" in out
    assert out.splitlines()[2] == (
        "2 interleaved round(s) of 0.01 s per measurement, pooled"
    )
    rows = [line.split() for line in out.splitlines()[4:]]
    assert [(row[0], row[1]) for row in rows] == [
        ("16", "sdpa"),
        ("16", "dense"),
        ("32", "sdpa"),
        ("32", "dense"),
    ]


def test_forward_backward_back_propagates_a_gradient_of_ones():
    q, k, v = benchmark.attention_inputs(
        12, head_dim=4, dtype=torch.float64, requires_grad=True
    )
    assert all(t.requires_grad and t.is_leaf for t in (q, k, v))
    caught = {}
    for name, t in (("q", q), ("k", k), ("v", v)):
        t.register_hook(lambda grad, name=name: caught.setdefault(name, grad))
    benchmark.forward_backward(ea.dense_attention)(q, k, v)
    assert q.grad is None  # dropped within the call
    expected = torch.autograd.grad(
        F.scaled_dot_product_attention(q, k, v).sum(), (q, k, v)
    )
    for name, grad in zip("qkv", expected):
        torch.testing.assert_close(caught[name], grad)
    with pytest.raises(ValueError, match="fn must be callable"):
        benchmark.forward_backward("dense")


def test_the_command_times_the_backward_pass_when_asked(tmp_path, capsys):
    path = tmp_path / "backward.json"
    benchmark_cli.main(
        "--variants sdpa sliding-window block-sparse --window 4 "
        "--block-size 8 --lengths 32 --head-dim 8 --min-run-time 0.01 "
        f"--rounds 1 --backward --no-progress --json {path}".split()
    )
    out = capsys.readouterr().out
    assert "timed: forward and backward passes (--backward)" in out
    records = benchmark.load_results(path)
    assert [r["status"] for r in records] == ["ok"] * 3
    assert all(r["backward"] is True for r in records)
    assert benchmark.load_document(path)["settings"]["backward"] is True


def test_command_line_times_the_sparse_variants(capsys):
    benchmark_cli.main(
        "--variants sdpa block-sparse bigbird routing sdpa-layout "
        "--lengths 40 --heads 2 --head-dim 8 --block-size 8 --density 0.5 "
        "--clusters 3 --layout bigbird --min-run-time 0.01 --no-memory".split()
    )
    out = capsys.readouterr().out
    assert "--block-size 8: block-sparse, bigbird, routing, sdpa-" in out
    assert "--density 0.5: block-sparse, sdpa-layout" in out
    assert "--clusters 3: routing" in out and "--layout bigbird: sdpa" in out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if "variant" in line)
    rows = [line.split() for line in lines[header + 1 :]]
    assert [row[1] for row in rows] == [
        "sdpa", "block-sparse", "bigbird", "routing", "sdpa-layout",
    ]  # fmt: skip
    assert all(len(row) == 7 for row in rows)  # each one timed


def test_sparse_variants_compute_their_layout(monkeypatch):
    args = benchmark_cli.build_parser().parse_args(
        "--block-size 8 --density 0.25 --clusters 3".split()
    )
    settings = benchmark_cli.settings_of(args)
    q, k, v = benchmark.attention_inputs(40, heads=2, head_dim=8)
    random = variants.sparse_layout("random", 40, settings)
    assert random.shape == (5, 5) and (random.sum(-1) == 2).all()
    bigbird = variants.sparse_layout("bigbird", 40, settings)
    assert bigbird.equal(
        masks.bigbird_layout(5, generator=torch.Generator().manual_seed(0))
    )
    for name, layout in [("block-sparse", random), ("bigbird", bigbird)]:
        out = variants.build(name, settings)(q, k, v)
        mask = masks.create_mask(masks.from_block_layout(layout, 8), 40, 40)
        expected = ea.dense_attention(q, k, v, attn_mask=mask)
        torch.testing.assert_close(out, expected)
    out = variants.build("sdpa-layout", settings)(q, k, v)
    mask = masks.create_mask(masks.from_block_layout(random, 8), 40, 40)
    torch.testing.assert_close(
        out, ea.dense_attention(q, k, v, attn_mask=mask)
    )
    out = variants.build("routing", settings)(q, k, v)
    torch.testing.assert_close(
        out, ea.routing_attention(q, k, v, clusters=3, block_size=8)
    )


@pytest.mark.parametrize(
    "argv,message",
    [
        ("--density 0", "--density: must be a number in (0, 1]"),
        ("--density 1.5", "--density: must be a number in (0, 1]"),
        ("--density nan", "--density: must be a number in (0, 1]"),
        ("--density x", "--density: must be a number in (0, 1]"),
        ("--block-size 0", "--block-size: must be a positive int"),
        ("--clusters -2", "--clusters: must be a positive int"),
        ("--layout strided", "--layout: invalid choice"),
        ("--variants routing --causal", "do not take --causal"),
        ("--lengths -5", "--lengths: must be a positive int; got '-5'"),
        ("--lengths 0", "--lengths: must be a positive int; got '0'"),
        ("--lengths 64 32 64", "--lengths: each value must come once"),
        ("--batch 0", "--batch: must be a positive int"),
        ("--heads -1", "--heads: must be a positive int"),
        ("--head-dim 0", "--head-dim: must be a positive int"),
        ("--rounds 0", "--rounds: must be a positive int"),
        ("--min-run-time 0", "--min-run-time: must be a finite number"),
        ("--min-run-time inf", "--min-run-time: must be a finite number"),
        ("--min-run-time nan", "--min-run-time: must be a finite number"),
        ("--variants dense dense", "--variants: each value must come once"),
        ("--device meta", "--device: prefer='meta' is not a device"),
        ("--device tpu", "--device: prefer='tpu' is not a device name"),
        ("--device cuda:99", "--device"),
        ("--device mps", "--device"),
    ],
)
def test_command_line_bad_arguments_are_usage_errors(
    argv, message, capsys, monkeypatch
):
    def must_not_run(*args, **kwargs):
        raise AssertionError("nothing may run after a bad argument")

    monkeypatch.setattr(timing, "sweep", must_not_run)
    monkeypatch.setattr(timing, "hardware_summary", must_not_run)
    with pytest.raises(SystemExit) as exit_info:
        benchmark_cli.main(argv.split())
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert "usage:" in captured.err and message in captured.err
    assert "Traceback" not in captured.err and captured.out == ""


def test_command_line_refuses_cuda_without_a_gpu(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        benchmark_cli.main(["--device", "cuda"])
    assert exit_info.value.code == 2
    assert "CUDA is not available" in capsys.readouterr().err


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: benchmark.time_callable("f"), "fn must be callable"),
        (
            lambda: benchmark.time_callable(print, min_run_time=0),
            "min_run_time must be a positive",
        ),
        (
            lambda: benchmark.sweep({}, [8], lambda L: ()),
            "at least one callable",
        ),
        (
            lambda: benchmark.sweep({"x": 1}, [8], lambda L: ()),
            "'x' is not callable",
        ),
        (
            lambda: benchmark.sweep({"x": print}, [], lambda L: ()),
            "at least one sequence length",
        ),
        (
            lambda: benchmark.sweep({"x": print}, [0], lambda L: ()),
            "each length must be a positive",
        ),
        (
            lambda: benchmark.sweep({"x": print}, [8], lambda L: (), rounds=0),
            "rounds must be a positive int",
        ),
        (
            lambda: benchmark.attention_inputs(8, heads=0),
            "heads must be a positive int",
        ),
        (
            lambda: benchmark.attention_inputs(8, dtype=torch.long),
            "dtype must be a floating-point dtype",
        ),
        (
            lambda: benchmark.attention_inputs(8, dtype="float33"),
            "dtype must be a torch.dtype",
        ),
        (
            lambda: benchmark.attention_inputs(8, seed=1.5),
            r"seed must be an int in \[0, 2\*\*32\)",
        ),
        (
            lambda: benchmark.attention_inputs(8, seed=-1),
            r"seed must be an int in \[0, 2\*\*32\)",
        ),
        (
            lambda: benchmark.attention_inputs(8, device="meta"),
            "prefer='meta' is not a device",
        ),
        (
            lambda: benchmark.describe_hardware("meta"),
            "prefer='meta' is not a device",
        ),
        (
            lambda: benchmark.sweep({"x": print}, 8, lambda L: ()),
            "lengths must be an iterable",
        ),
        (
            lambda: benchmark.sweep({"x": print}, [8], None),
            "make_inputs must be a function",
        ),
        (
            lambda: benchmark.sweep(
                {"x": print}, [8], lambda L: (), min_run_time=math.inf
            ),
            "min_run_time must be a positive, finite",
        ),
        (
            lambda: benchmark.sweep([print], [8], lambda L: ()),
            "variants must name at least one callable",
        ),
    ],
)
def test_bad_input_raises_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# The command line's newer options (benchmark.cli) and its result files
# (benchmark.results).

from efficient_attention.benchmark import results as benchmark_results  # noqa: E402


def test_the_benchmark_package_has_no_import_cycle():
    import subprocess
    import sys

    code = (
        "import sys, efficient_attention.benchmark; "
        "print('efficient_attention.benchmark.cli' in sys.modules)"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True
    )
    assert run.stdout.strip() == "False", run.stderr
    assert not hasattr(benchmark, "main")
    assert benchmark.format_records is benchmark_results.format_records
    assert benchmark.compare is timing.compare
    for module in ("timing", "results", "cli", "cost", "peers"):
        source = pathlib.Path(benchmark.__file__).with_name(f"{module}.py")
        assert "__getattr__" not in source.read_text(), module
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        benchmark.nothing


def test_the_provenance_is_taken_before_the_timings(tmp_path, monkeypatch):
    # a file edited while a long run times must not change its commit line
    events = []
    real_provenance = benchmark_results.provenance
    real_sweep = timing.sweep

    def provenance(argv=None):
        events.append("provenance")
        return {**real_provenance(argv), "git": "at-start"}

    def sweep(*args, **kwargs):
        events.append("sweep")
        return real_sweep(*args, **kwargs)

    monkeypatch.setattr(benchmark_results, "provenance", provenance)
    monkeypatch.setattr(timing, "sweep", sweep)
    path = tmp_path / "run.json"
    benchmark_cli.main(
        f"--quick --head-dim 8 --no-progress --json {path}".split())
    assert events == ["provenance", "sweep"]
    assert benchmark_results.load_document(path)["provenance"]["git"] == (
        "at-start")


def test_quick_writes_json_csv_and_a_plot_that_load_back(tmp_path, capsys):
    paths = {k: tmp_path / f"run.{k}" for k in ("json", "csv", "png")}
    benchmark_cli.main(
        f"--quick --head-dim 8 --json {paths['json']} --csv {paths['csv']} "
        f"--plot {paths['png']}".split()
    )
    captured = capsys.readouterr()
    assert "CPU threads" in captured.out and "x sdpa" in captured.out
    assert "1 interleaved round(s) of 0.01 s" in captured.out
    assert "timing" in captured.err  # the progress bar, on stderr
    records = benchmark.load_results(paths["json"])
    assert [(r["L"], r["variant"]) for r in records] == [
        (64, "sdpa"), (64, "dense"), (128, "sdpa"), (128, "dense"),
    ]  # fmt: skip
    for r in records:
        assert r["status"] == "ok" and r["median_s"] > 0
        assert r["heads"] == 1 and r["head_dim"] == 8
        assert r["hardware"].startswith("CPU") and r["dtype"] == "float32"
    assert records[0]["ratio_to_baseline"] == 1.0
    # the file says where its numbers came from
    document = benchmark_results.load_document(paths["json"])
    origin = document["provenance"]
    assert origin["command"] == (
        "python -m efficient_attention.benchmark --quick --head-dim 8 "
        f"--json {paths['json']} --csv {paths['csv']} --plot {paths['png']}"
    )
    assert origin["efficient_attention"] == ea.__version__
    assert origin["torch"] == torch.__version__
    assert origin["date"][:4].isdigit() and origin["date"].endswith("+00:00")
    assert origin["git"] == benchmark_results.git_revision()
    assert set(origin["peers"]) == set(benchmark_results.PEER_PACKAGES)
    assert set(origin["cpu"]["flags"]) <= set(benchmark_results.CPU_FLAGS)
    assert set(origin["kernels"]) == {"sliding_window", "block_sparse"}
    assert "-O3" in origin["kernel_flags"]
    assert document["hardware"][0]["device"] == "cpu"
    assert document["records"] == records
    frame = benchmark.load_results(paths["json"], as_frame=True)
    assert list(frame["variant"]) == [r["variant"] for r in records]
    assert frame["median_s"].tolist() == [r["median_s"] for r in records]
    csv_lines = paths["csv"].read_text().splitlines()
    assert csv_lines[0].startswith("variant,L,median_s,iqr_s")
    assert len(csv_lines) == 5
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_json_round_trips_through_load_results(tmp_path):
    records = [
        {"variant": "sdpa", "L": 8, "median_s": 0.5, "status": "ok"},
        {"variant": "dense", "L": 8, "median_s": 1.5, "status": "ok"},
        {
            "variant": "dense",
            "L": 16,
            "median_s": None,
            "status": "out of memory",
        },
    ]
    path = tmp_path / "r.json"
    benchmark_results.write_json(records, path, settings={"rounds": 1})
    loaded = benchmark.load_results(path)
    assert [{k: r[k] for k in records[0]} for r in loaded] == records
    assert [r["ratio_to_baseline"] for r in loaded] == [1.0, 3.0, None]
    # a bare list of records loads too
    path.write_text('[{"variant": "x", "L": 4}]')
    assert benchmark.load_results(path) == [{"variant": "x", "L": 4}]


@pytest.mark.parametrize(
    "text,message",
    [
        (None, "does not exist"),
        ("{not json", "is not JSON"),
        ('{"records": 3}', "no list of benchmark records"),
        ('[{"L": 4}]', "no list of benchmark records"),
    ],
)
def test_load_results_refuses_what_is_not_a_result_file(
    tmp_path, text, message
):
    path = tmp_path / "r.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ValueError, match=message):
        benchmark.load_results(path)


def test_the_package_ships_the_book_data():
    runs = benchmark_results.leaderboard_files(own_runs="no-such-folder")
    assert "cpu" in runs
    assert benchmark.load_results(runs["cpu"])  # records, not a stub
    search = benchmark_results.book_data_file("teacher_search.csv")
    assert search.read_text().startswith("setting")
    with pytest.raises(FileNotFoundError, match="leaderboard-cpu.json"):
        benchmark_results.book_data_file("leaderboard-gpu.json")


def test_a_readers_own_runs_join_and_replace_the_shipped_ones(tmp_path):
    record = [{"variant": "sdpa", "L": 8, "median_s": 0.5, "status": "ok"}]
    benchmark_results.write_json(record, tmp_path / "leaderboard-cuda.json")
    benchmark_results.write_json(record, tmp_path / "leaderboard-cpu.json")
    runs = benchmark_results.leaderboard_files(own_runs=tmp_path)
    assert list(runs) == sorted(runs) and {"cpu", "cuda"} <= set(runs)
    assert runs["cpu"] == tmp_path / "leaderboard-cpu.json"


def test_list_names_every_variant_and_times_nothing(capsys, monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("--list times nothing")

    monkeypatch.setattr(timing, "sweep", must_not_run)
    benchmark_cli.main(["--list"])
    out = capsys.readouterr().out
    names = [line.split()[0] for line in out.splitlines()]
    assert names == [*benchmark_cli.all_variant_names(), "all"]


def test_all_means_every_variant_that_can_run():
    parser = benchmark_cli.build_parser()
    # --top-k 1: one key block of 64 at L = 64 (4 is a usage error)
    args = parser.parse_args(["--variants", "all", "--quick", "--top-k", "1"])
    devices = benchmark_cli._check_arguments(parser, args)
    assert args.variants == benchmark_cli.all_variant_names()
    assert args.window == benchmark_cli.ALL_WINDOW
    assert args.lengths == [64, 128] and args.min_run_time == 0.01
    assert [d.type for d in devices] == [ea.pick_device().type]
    args = parser.parse_args("--variants all --causal --window 3".split())
    benchmark_cli._check_arguments(parser, args)
    assert args.variants == variants.names(causal=True)
    assert args.variants == ["sdpa", "dense", "sliding-window", "performer"]
    assert args.window == 3 and args.lengths == [256, 512, 1024, 2048, 4096]


def test_every_variant_runs_at_a_tiny_size(capsys):
    benchmark_cli.main(
        "--variants all --lengths 32 --heads 2 --head-dim 8 --block-size 8 "
        "--rank 8 --landmarks 4 --features 8 --clusters 2 --window 2 "
        "--min-run-time 0.001 --no-memory --no-progress".split()
    )
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line[:6] == "    32"]
    assert [row[1] for row in rows] == benchmark_cli.all_variant_names()
    # every one timed, or skipped with its reason (a missing peer package)
    assert all(len(row) == 7 or "skipped:" in " ".join(row) for row in rows)


def test_several_dtypes_give_a_table_each(capsys, tmp_path):
    path = tmp_path / "r.csv"
    benchmark_cli.main(
        f"--dtype float32 float64 --lengths 16 --head-dim 8 --no-memory "
        f"--min-run-time 0.001 --csv {path}".split()
    )
    out = capsys.readouterr().out
    assert out.count("CPU threads") == 2 and "dtype float64" in out
    rows = [line.split(",") for line in path.read_text().splitlines()[1:]]
    assert [(row[0], row[10]) for row in rows] == [
        ("sdpa", "float32"), ("dense", "float32"),
        ("sdpa", "float64"), ("dense", "float64"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    "argv,message",
    [
        ("--variants all dense", "'all' comes alone"),
        ("--dtype float32 float32", "--dtype: each value must come once"),
        ("--dtype float8", "--dtype: invalid choice"),
        ("--device cpu cpu", "--device: each value must come once"),
        ("--variants sdpa-mask", "need --window"),
        ("--variants nope", "--variants: invalid choice"),
    ],
)
def test_new_bad_arguments_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        benchmark_cli.main(argv.split())
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_python_dash_m_runs_the_command_line():
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-m", "efficient_attention.benchmark", "--list"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0 and "coarse-to-fine" in run.stdout
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "efficient_attention.benchmark",
            "--batch",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        run.returncode == 2 and "--batch: must be a positive int" in run.stderr
    )


def test_plot_records_draws_one_line_a_variant(tmp_path):
    records = [
        {"variant": v, "L": L, "median_s": t * L, "status": "ok"}
        for v, t in (("sdpa", 1e-6), ("dense", 3e-6))
        for L in (16, 32)
    ]
    figure = benchmark_results.plot_records(records, tmp_path / "p.png")
    assert len(figure.axes[0].lines) == 2
    assert (tmp_path / "p.png").stat().st_size > 0
    with pytest.raises(ValueError, match="at least one record"):
        benchmark_results.plot_records([])


# -- issue 22: the command line checks before it times, and loses nothing --


def must_not_time(*args, **kwargs):
    raise AssertionError("nothing is timed after a usage error")


@pytest.mark.parametrize(
    "argv, words",
    [
        # crashed after timing every variant before coarse-to-fine
        ("--variants all --quick", ["coarse-to-fine", "length 64", "top_k"]),
        ("--variants nystrom --lengths 64 32", ["nystrom", "length 32",
                                                "--landmarks"]),
        ("--variants routing --clusters 40 --lengths 32",
         ["routing", "length 32", "--clusters"]),
        ("--variants pyramid --levels 4 --lengths 256",
         ["pyramid", "length 256", "levels=4"]),
        ("--variants recursive --levels 2 --block-size 3 --lengths 64",
         ["recursive", "length 64", "block_size must be even"]),
        # a traceback from the allocator before
        ("--lengths 17179869184", ["--lengths 17179869184", "GiB"]),
    ],
)  # fmt: skip
def test_settings_that_do_not_fit_a_length_are_usage_errors(
    argv, words, capsys, monkeypatch
):
    monkeypatch.setattr(timing, "sweep", must_not_time)
    with pytest.raises(SystemExit) as exit_info:
        benchmark_cli.main(argv.split())
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "usage:" in error
    for word in words:
        assert word in error


def test_output_paths_are_checked_before_timing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(timing, "sweep", must_not_time)
    existing = tmp_path / "keep.csv"
    existing.write_text("kept")
    for argv, message in [
        (f"--json {tmp_path}/no/such/folder/r.json", "argument --json"),
        (f"--csv {tmp_path}", "argument --csv: cannot write"),
        (f"--json {existing} --csv {existing}", "output paths must differ"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            benchmark_cli.main(argv.split())
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    assert existing.read_text() == "kept"  # checked, not truncated
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.csv"]


def test_a_variant_that_fails_mid_sweep_is_recorded_and_the_sweep_goes_on(
    tmp_path, capsys, monkeypatch
):
    def fails_at_32(query, key, value):
        if query.shape[-2] == 32:
            raise ValueError("no 32 here")
        return ea.dense_attention(query, key, value)

    dense = dataclasses.replace(
        variants.get("dense"), build=lambda settings: fails_at_32
    )
    monkeypatch.setitem(variants.REGISTRY, "dense", dense)
    path = tmp_path / "r.json"
    benchmark_cli.main(
        f"--lengths 16 32 48 --head-dim 8 --min-run-time 0.001 --no-memory "
        f"--no-progress --json {path}".split()
    )
    status = {
        (r["variant"], r["L"]): r["status"]
        for r in benchmark.load_results(path)
    }
    assert status.pop(("dense", 32)) == "failed: ValueError: no 32 here"
    assert set(status.values()) == {"ok"} and len(status) == 5
    assert "failed: ValueError: no 32 here" in capsys.readouterr().out


def test_an_output_that_cannot_be_written_does_not_stop_the_others(
    tmp_path, capsys, monkeypatch
):

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(benchmark_results, "write_json", full_disk)
    paths = {kind: tmp_path / f"r.{kind}" for kind in ("json", "csv")}
    with pytest.raises(SystemExit) as exit_info:
        argv = (
            f"--lengths 16 --head-dim 8 --min-run-time 0.001 --no-memory "
            f"--no-progress --json {paths['json']} --csv {paths['csv']}"
        )
        benchmark_cli.main(argv.split())
    assert exit_info.value.code == 1
    assert "No space left" in capsys.readouterr().err
    assert len(paths["csv"].read_text().splitlines()) == 3  # header, 2 rows


def _cpuinfo(tmp_path, cores, threads_per_core, mhz, flags):
    blocks = [
        f"processor\t: {c * threads_per_core + t}\nphysical id\t: 0\n"
        f"core id\t\t: {c}\ncpu MHz\t\t: {mhz + c}\nflags\t\t: {flags}\n"
        for c in range(cores)
        for t in range(threads_per_core)
    ]
    path = tmp_path / "cpuinfo"
    path.write_text("\n".join(blocks))
    return str(path)


def test_cpu_peak_counts_cores_not_hyperthreads(tmp_path):
    info = _cpuinfo(tmp_path, 2, 2, 2400.0, "fpu avx2 fma")
    peak = benchmark.cpu_peak(8, cpuinfo=info, sysfs=str(tmp_path / "none"))
    assert peak.cores == 2  # 4 logical CPUs, 2 cores
    assert peak.fp32_lanes == 8 and peak.flops_per_cycle == 32
    assert peak.ghz == pytest.approx(2.401)  # the highest clock listed
    assert "may be base" in peak.clock
    assert peak.gflops == pytest.approx(2 * 2.401 * 32)
    one = benchmark.cpu_peak(1, cpuinfo=info, sysfs=str(tmp_path / "none"))
    assert one.cores == 1  # one thread uses one core's units


def test_cpu_peak_takes_the_maximum_clock_where_sysfs_lists_it(
    tmp_path, monkeypatch
):
    for name in ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS"):
        monkeypatch.delenv(name, raising=False)  # make portability sets them
    info = _cpuinfo(tmp_path, 1, 1, 2000.0, "avx512f fma amx_tile")
    for cpu, khz in (("cpu0", "3500000"), ("cpu1", "3700000")):
        folder = tmp_path / "sys" / cpu / "cpufreq"
        folder.mkdir(parents=True)
        (folder / "cpuinfo_max_freq").write_text(khz + "\n")
    peak = benchmark.cpu_peak(1, cpuinfo=info, sysfs=str(tmp_path / "sys"))
    assert peak.ghz == pytest.approx(3.7) and "sysfs" in peak.clock
    assert peak.fp32_lanes == 16 and peak.amx and not peak.avx512_bf16


@pytest.mark.parametrize(
    ("name", "value", "capped"),
    [("ONEDNN_MAX_CPU_ISA", "AVX2", True),
     ("MKL_ENABLE_INSTRUCTIONS", "avx2", True),
     ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX", False)],
)  # fmt: skip
def test_cpu_peak_counts_only_the_units_the_libraries_may_use(
    tmp_path, monkeypatch, name, value, capped
):
    for other in ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS"):
        monkeypatch.delenv(other, raising=False)
    monkeypatch.setenv(name, value)
    info = _cpuinfo(tmp_path, 1, 1, 2000.0, "avx2 avx512f fma amx_tile")
    peak = benchmark.cpu_peak(1, cpuinfo=info, sysfs=str(tmp_path / "none"))
    assert peak.fp32_lanes == (8 if capped else 16)
    assert peak.amx is not capped


def test_cpu_peak_is_none_where_the_cpu_is_not_described(tmp_path):
    assert benchmark.cpu_peak(cpuinfo=str(tmp_path / "missing")) is None
    no_fma = _cpuinfo(tmp_path, 1, 1, 2000.0, "sse2 avx")
    assert benchmark.cpu_peak(cpuinfo=no_fma) is None
    with pytest.raises(ValueError, match="threads"):
        benchmark.cpu_peak(0, cpuinfo=no_fma)


def test_compare_reports_ratios_rates_and_peak_shares():
    calls = {"slow": (time.sleep, 0.02), "fast": (time.sleep, 0.01)}
    records = benchmark.compare(
        calls,
        baseline="slow",
        flops={"fast": 1e9},
        rounds=3,
        min_run_time=0.05,
        peak_gflops=200.0,
    )
    slow, fast = records
    assert [r["name"] for r in records] == ["slow", "fast"]
    assert slow["speedup"] == 1.0 and slow["gflops"] is None
    # sleeping only ever overshoots: the ratio sits near 2, never far above
    assert 1.3 < fast["speedup_low"] <= fast["speedup"] <= fast["speedup_high"]
    assert fast["speedup_high"] < 2.3
    assert 35 < fast["gflops"] <= 100.5  # 1e9 FLOPs in about 10 ms
    assert fast["peak_share"] == pytest.approx(fast["gflops"] / 200.0)
    assert fast["rounds"] == 3 and fast["threads"] == torch.get_num_threads()



def test_format_comparison_shows_every_call_with_its_spread_and_rate():
    records = [
        {"name": "sdpa", "median_s": 0.004, "iqr_s": 0.0001, "speedup": 1.0,
         "speedup_low": 1.0, "speedup_high": 1.0, "gflops": 50.0,
         "peak_share": 0.25, "rounds": 5, "threads": 2},
        {"name": "window", "median_s": 0.001, "iqr_s": 0.00002,
         "speedup": 4.0, "speedup_low": 3.5, "speedup_high": 4.25,
         "gflops": None, "peak_share": None, "rounds": 5, "threads": 2},
    ]
    lines = benchmark.format_comparison(records).splitlines()
    assert lines[0].startswith("5 interleaved rounds, 2 threads")
    assert len(lines) == 4
    sdpa, window = lines[2].split(), lines[3].split()
    assert sdpa == ["sdpa", "4.000", "0.100", "1.00x", "[1.00,", "1.00]",
                    "50.0", "25%"]
    assert window == ["window", "1.000", "0.020", "4.00x", "[3.50,",
                      "4.25]", "-", "-"]
    with pytest.raises(ValueError, match="compare"):
        benchmark.format_comparison([])
    with pytest.raises(ValueError, match="list compare"):
        benchmark.format_comparison(records[0])
    sweep_record = {"variant": "sdpa", "L": 1024, "median_s": 0.004}
    with pytest.raises(ValueError, match="lacks.*'gflops'"):
        benchmark.format_comparison([records[0], sweep_record])
    with pytest.raises(ValueError, match="not a mapping"):
        benchmark.format_comparison([records[0], 0.004])

def test_compare_interleaves_the_rounds():
    order = []

    def noting(name):
        def call():
            if not order or order[-1] != name:
                order.append(name)

        return call

    benchmark.compare(
        {"a": (noting("a"),), "b": (noting("b"),)},
        baseline="a",
        rounds=3,
        min_run_time=0.01,
    )
    assert order == ["a", "b"] * 3


def test_compare_warms_up_in_the_first_round_only():
    calls = []

    def slow():  # longer than min_run_time: one call per block
        calls.append(1)
        time.sleep(0.02)

    (record,) = benchmark.compare(
        {"slow": (slow,)}, baseline="slow", rounds=4, min_run_time=0.01
    )
    assert len(calls) == 2 + 3  # warm-up and one call, then one a round
    assert 0.019 < record["median_s"] < 0.1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"baseline": "sdpa"}, "baseline must be one of the calls"),
        ({"flops": {"other": 1.0}}, "flops names 'other'"),
        ({"flops": {"a": -1.0}}, "flops"),
        ({"rounds": 0}, "rounds must be a positive int"),
        ({"min_run_time": 0}, "min_run_time must be a positive"),
    ],
)
def test_compare_refuses_bad_arguments(kwargs, message):
    calls = {"a": (time.sleep, 0.0)}
    kwargs = {"baseline": "a", **kwargs}
    with pytest.raises(ValueError, match=message):
        benchmark.compare(calls, **kwargs)


def test_compare_refuses_a_call_that_is_not_fn_and_args():
    with pytest.raises(ValueError, match=r"tuple \(fn, \*args\)"):
        benchmark.compare({"a": time.sleep}, baseline="a")
    with pytest.raises(ValueError, match="calls must map names"):
        benchmark.compare({}, baseline="a")


def test_git_revision_names_the_commit_and_flags_changes(tmp_path):
    import shutil
    import subprocess

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    assert benchmark_results.git_revision(tmp_path) == "unknown"

    def git(*args):
        subprocess.run(
            ["git", "-C", str(tmp_path), "-c", "user.name=t",
             "-c", "user.email=t@t", *args],
            check=True, capture_output=True,
        )  # fmt: skip

    git("init", "-q")
    (tmp_path / "a.txt").write_text("one")
    git("add", "a.txt")
    git("commit", "-q", "-m", "one")
    clean = benchmark_results.git_revision(tmp_path)
    assert len(clean) == 40 and int(clean, 16) >= 0
    (tmp_path / "a.txt").write_text("two")
    assert benchmark_results.git_revision(tmp_path) == clean + "-dirty"


def test_loglog_fit_recovers_an_exponent_and_its_uncertainty():
    xs = [1024, 2048, 4096, 8192]
    exact = benchmark.loglog_fit(xs, [x**2 for x in xs])
    assert exact[0] == pytest.approx(2.0)
    assert exact[1] == pytest.approx(2.0) and exact[2] == pytest.approx(2.0)
    noisy = benchmark.loglog_fit(xs, [1.0, 3.0, 20.0, 50.0])
    low, high = noisy[1], noisy[2]
    assert low < noisy[0] < high
    # the points bend (slopes between neighbours 1.58, 2.74, 1.32): with two
    # degrees of freedom the interval is wide
    assert high - low > 1.0
    two = benchmark.loglog_fit([1, 2], [1, 4])
    assert two == (pytest.approx(2.0), -math.inf, math.inf)


@given(
    st.floats(-3, 3),
    st.floats(1e-3, 1e3),
    st.lists(st.integers(1, 2**16), min_size=3, max_size=8, unique=True),
)
@settings(max_examples=50, deadline=None)
def test_loglog_fit_recovers_any_power_law(exponent, scale, xs):
    p, low, high = benchmark.loglog_fit(xs, [scale * x**exponent for x in xs])
    assert p == pytest.approx(exponent, abs=1e-6)
    assert low == pytest.approx(p, abs=1e-5) and high == pytest.approx(
        p, abs=1e-5
    )


def test_the_command_times_five_rounds_unless_quick_or_told(monkeypatch):
    seen = []

    class Timed(Exception):
        pass

    def fake_sweep(variants, lengths, make_inputs, **options):
        seen.append(options["rounds"])
        raise Timed  # nothing needs timing: the rounds asked are all we want

    monkeypatch.setattr(timing, "sweep", fake_sweep)
    for line in ("--lengths 64 --no-progress", "--quick --no-progress",
                 "--quick --rounds 3 --no-progress"):
        with pytest.raises(Timed):
            benchmark_cli.main(line.split())
    assert seen == [benchmark_cli.ROUNDS, 1, 3] and benchmark_cli.ROUNDS == 5
