"""Timing and memory on the reader's hardware, and length sweeps.

This module holds the measurements: ``time_callable`` and ``Timing``,
``compare`` (calls against a baseline in interleaved rounds, with FLOP
rates), ``peak_memory_bytes``, the hardware line (``describe_hardware``,
``hardware_summary``), the CPU's fp32 peak (``cpu_peak``), seeded
``attention_inputs``, ``forward_backward`` (a training step's attention),
``sweep`` over lengths, ``loglog_slope`` and
``loglog_fit``. Times
come from ``torch.utils.benchmark.Timer`` (it synchronizes CUDA, warms up
and reports the median and the interquartile range); in interleaved rounds
only the first round does, and later rounds time blocks of the size it
chose, CUDA synchronized, without warming up again. Peak memory comes from
``torch.cuda.max_memory_allocated`` on a GPU and from the PyTorch
profiler's record of every CPU allocation on a CPU. Every
chapter times its variant against ``F.scaled_dot_product_attention``, the
fused baseline, in the same run; chapter 1 introduces the tools. What
happens to the records next (the table, JSON, CSV, plots, loading) lives
in ``results``; the command line ``python -m
efficient_attention.benchmark`` (``--help``, ``--list``, ``--quick``)
lives in ``cli``, which imports both. It implements no paper.
"""

from __future__ import annotations

import contextlib
import glob
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils import benchmark as torch_benchmark
from tqdm import tqdm

from .._validation import (
    check_bool,
    check_dtype,
    check_positive_int,
    check_positive_real,
    check_real,
    check_seed,
)
from ..notebook import pick_device

TIMED_DEVICES = ("cpu", "cuda")
"""The device types timed here: ``Timer`` synchronizes CUDA only, and peak
memory is read on these two."""


@dataclass(frozen=True)
class Timing:
    """Median and interquartile range of one call, in seconds.

    Measured over ``runs`` calls, timed in blocks of ``calls_per_block``;
    ``block_times_s`` holds the time of one call in each block.
    """

    median_s: float
    iqr_s: float
    runs: int
    block_times_s: tuple[float, ...] = ()
    calls_per_block: int = 1

    @property
    def min_s(self) -> float:
        """The fastest block: noise on a shared machine only adds time."""
        if not self.block_times_s:
            raise ValueError("min_s needs a Timing with block_times_s.")
        return min(self.block_times_s)

    @classmethod
    def pooled(cls, timings: Sequence[Timing]) -> Timing:
        """One Timing from the blocks of several (e.g. repeated rounds)."""
        times = [t for timing in timings for t in timing.block_times_s]
        if not times:
            raise ValueError("pooled needs timings with block_times_s.")
        q1, median, q3 = np.percentile(times, [25, 50, 75])
        runs = sum(timing.runs for timing in timings)
        return cls(
            float(median),
            float(q3 - q1),
            runs,
            tuple(times),
            timings[0].calls_per_block,
        )


def time_callable(
    fn: Callable[..., object],
    *args: object,
    min_run_time: float = 0.2,
    calls_per_block: int | None = None,
) -> Timing:
    """Time ``fn(*args)`` with ``torch.utils.benchmark`` on all torch threads.

    Args:
        fn: the callable to time. args: its arguments.
        min_run_time: keep measuring for at least this many seconds (a
            finite real number > 0).
        calls_per_block: calls in each timed block. None (the default)
            lets ``Timer.blocked_autorange`` choose, after calls that also
            warm ``fn`` up; a later round of the same call passes the first
            round's ``Timing.calls_per_block`` and skips that warm-up, which
            for a call longer than ``min_run_time`` halves the time spent.

    Returns:
        a ``Timing``: median and interquartile range of one call, and how
        many calls.

    Raises:
        ValueError: ``fn`` not callable, ``min_run_time`` not a finite
            positive number of seconds (``inf`` would never stop), or
            ``calls_per_block`` not a positive int.
    """
    if not callable(fn):
        raise ValueError(f"fn must be callable; got {type(fn).__name__}.")
    min_run_time = _check_min_run_time(min_run_time)
    if calls_per_block is not None:
        calls_per_block = check_positive_int(
            "calls_per_block", calls_per_block
        )
        return _time_blocks(fn, args, calls_per_block, min_run_time)
    timer = torch_benchmark.Timer(
        stmt="fn(*args)",
        globals={"fn": fn, "args": args},
        num_threads=torch.get_num_threads(),  # Timer's default is 1 thread
    )
    measurement = timer.blocked_autorange(min_run_time=min_run_time)
    return Timing(
        median_s=measurement.median,
        iqr_s=measurement.iqr,
        runs=len(measurement.times) * measurement.number_per_run,
        block_times_s=tuple(measurement.times),
        calls_per_block=measurement.number_per_run,
    )


def _time_blocks(
    fn: Callable[..., object],
    args: tuple,
    calls_per_block: int,
    min_run_time: float,
) -> Timing:
    """Blocks of ``calls_per_block`` calls, no warm-up, until
    ``min_run_time`` seconds are spent; CUDA is synchronized around each
    block, as ``torch.utils.benchmark.Timer`` does."""
    times: list[float] = []
    while calls_per_block * sum(times) < min_run_time:
        synchronize()
        start = time.perf_counter()
        for _ in range(calls_per_block):
            fn(*args)
        synchronize()
        times.append((time.perf_counter() - start) / calls_per_block)
    q1, median, q3 = np.percentile(times, [25, 50, 75])
    return Timing(
        median_s=float(median),
        iqr_s=float(q3 - q1),
        runs=len(times) * calls_per_block,
        block_times_s=tuple(times),
        calls_per_block=calls_per_block,
    )


def synchronize(device: torch.device | None = None) -> None:
    """Wait for the work CUDA has queued (on ``device``, or on every
    device): CUDA runs asynchronously, and a timer read without this
    measures only the launch. Nothing to wait for on a CPU."""
    if device is not None and device.type != "cuda":
        return
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize(device)


def compare(
    calls: Mapping[str, tuple],
    *,
    baseline: str,
    flops: Mapping[str, float] | None = None,
    rounds: int = 5,
    min_run_time: float = 0.1,
    peak_gflops: float | None = None,
) -> list[dict[str, object]]:
    """Time several calls against a baseline in interleaved rounds: the one
    timing helper behind every speed ratio of the book.

    Each round times every call once, in order; a burst of load on a shared
    machine then spoils one round of every call rather than all of one. A
    ratio is taken within each round (both sides timed seconds apart), and
    its median and range over the rounds are reported.

    Args:
        calls: name -> ``(fn, *args)``; ``baseline`` must be one of them
            (``F.scaled_dot_product_attention`` or the fp32 model).
        baseline: the name every speed-up is against.
        flops: name -> floating-point operations of one call, for the FLOP
            rate (GFLOP/s); names left out get None.
        rounds: interleaved rounds (3 or more for a spread worth reading).
        min_run_time: seconds of timing per call per round.
        peak_gflops: the device's peak (``cpu_peak().gflops``), for each
            rate's share of it.

    Returns:
        one dict per call, in the order given: ``name, median_s, iqr_s``
        (of all rounds' blocks pooled), ``speedup`` (the median over rounds
        of baseline time / this time), ``speedup_low, speedup_high`` (their
        range), ``gflops``, ``peak_share``, ``rounds``, ``threads``.

    Raises:
        ValueError: no calls, a baseline that is not among them, a call
            that is not ``(callable, *args)``, a FLOP count that is not a
            positive number, ``rounds`` below 1 or a bad ``min_run_time``.
    """
    if not isinstance(calls, Mapping) or not calls:
        raise ValueError(
            "calls must map names to (fn, *args), e.g. "
            "{'sdpa': (F.scaled_dot_product_attention, q, k, v)}."
        )
    if baseline not in calls:
        raise ValueError(
            f"baseline must be one of the calls {list(calls)}; "
            f"got {baseline!r}."
        )
    for name, call in calls.items():
        if not isinstance(call, tuple) or not call or not callable(call[0]):
            raise ValueError(
                f"call {name!r} must be a tuple (fn, *args) with a callable "
                f"fn; got {type(call).__name__}."
            )
    flops = dict(flops or {})
    for name, count in flops.items():
        if name not in calls:
            raise ValueError(f"flops names {name!r}, which is not a call.")
        flops[name] = check_positive_real(f"flops[{name!r}]", count)
    rounds = check_positive_int("rounds", rounds)
    min_run_time = _check_min_run_time(min_run_time)
    if peak_gflops is not None:
        peak_gflops = check_positive_real("peak_gflops", peak_gflops)
    timings: dict[str, list[Timing]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, (fn, *args) in calls.items():
            first = timings[name][0] if timings[name] else None
            timings[name].append(
                time_callable(
                    fn,
                    *args,
                    min_run_time=min_run_time,
                    calls_per_block=first and first.calls_per_block,
                )
            )
    base = [t.median_s for t in timings[baseline]]
    records = []
    for name, measured in timings.items():
        pooled = Timing.pooled(measured)
        ratios = [b / t.median_s for b, t in zip(base, measured)]
        rate = flops[name] / pooled.median_s / 1e9 if name in flops else None
        records.append(
            {
                "name": name,
                "median_s": pooled.median_s,
                "iqr_s": pooled.iqr_s,
                "speedup": float(np.median(ratios)),
                "speedup_low": min(ratios),
                "speedup_high": max(ratios),
                "gflops": rate,
                "peak_share": (
                    rate / peak_gflops
                    if rate is not None and peak_gflops is not None
                    else None
                ),
                "rounds": rounds,
                "threads": torch.get_num_threads(),
            }
        )
    return records


_COMPARISON_KEYS = frozenset(
    ("name", "rounds", "threads", "median_s", "iqr_s", "speedup",
     "speedup_low", "speedup_high", "gflops", "peak_share")
)  # fmt: skip
"""The keys of a :func:`compare` record that :func:`format_comparison`
reads."""


def format_comparison(records: Sequence[Mapping[str, object]]) -> str:
    """The records of :func:`compare` as a text table, one row per call:
    median time and its IQR, the speed-up against the baseline with its
    range over the rounds, and the FLOP rate and share of the peak where
    known ("-" where not). The first line says how it was timed.

    Raises:
        ValueError: ``records`` is empty, not a list of mappings, or a
            record lacks a key that :func:`compare` writes.
    """
    if isinstance(records, Mapping) or not isinstance(records, Sequence):
        raise ValueError(
            f"records must be the list compare() returned; got "
            f"{type(records).__name__}."
        )
    if not records:
        raise ValueError("records is empty: pass what compare() returned.")
    for r in records:
        missing = (
            sorted(_COMPARISON_KEYS - set(r))
            if isinstance(r, Mapping)
            else "everything (not a mapping)"
        )
        if missing:
            raise ValueError(
                f"each record must come from compare(); {r!r} lacks "
                f"{missing}."
            )
    width = max(8, *(len(str(r["name"])) for r in records))
    first = records[0]
    lines = [
        f"{first['rounds']} interleaved rounds, {first['threads']} threads; "
        "speed-up: median over the rounds [lowest, highest]",
        f"{'':>{width}} {'ms':>9} {'IQR ms':>8} {'speed-up':>9} "
        f"{'over rounds':>15} {'GFLOP/s':>8} {'of peak':>8}",
    ]
    for r in records:
        rate = "-" if r["gflops"] is None else f"{r['gflops']:.1f}"
        share = "-" if r["peak_share"] is None else f"{r['peak_share']:.0%}"
        spread = f"[{r['speedup_low']:.2f}, {r['speedup_high']:.2f}]"
        lines.append(
            f"{r['name']:>{width}} {1e3 * r['median_s']:>9.3f} "
            f"{1e3 * r['iqr_s']:>8.3f} {r['speedup']:>8.2f}x "
            f"{spread:>15} {rate:>8} {share:>8}"
        )
    return "\n".join(lines)


def _check_min_run_time(min_run_time: object) -> float:
    """``min_run_time`` as a float of seconds, finite and > 0."""
    try:
        return check_positive_real("min_run_time", min_run_time)
    except ValueError:
        raise ValueError(
            f"min_run_time must be a positive, finite number of seconds "
            f"(e.g. 0.2); got {min_run_time!r}."
        ) from None


def peak_memory_bytes(fn: Callable[..., object], *args: object) -> int:
    """Peak bytes ``fn(*args)`` allocates, above what was allocated before.

    The device is that of the first tensor in ``args`` (CPU when there is
    none). On CUDA it reads ``torch.cuda.max_memory_allocated``; on the CPU it
    replays the PyTorch profiler's record of every allocation and free. The
    result ``fn`` returns is counted (it is alive at the end of the call).

    Raises:
        NotImplementedError: a device other than CPU or CUDA.
    """
    device = next(
        (a.device for a in args if isinstance(a, Tensor)), torch.device("cpu")
    )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = fn(*args)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - start
        del result
        return peak
    if device.type != "cpu":
        raise NotImplementedError(
            f"peak_memory_bytes measures CPU and CUDA tensors only; "
            f"got {device.type}."
        )
    return _cpu_peak_memory_bytes(fn, *args)


def _cpu_peak_memory_bytes(fn: Callable[..., object], *args: object) -> int:
    profiler = torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
    )
    with quiet_native_stderr():  # the profiler's native start/stop messages
        profiler.start()
    try:
        # A block allocated before the start and freed inside fn is not in
        # the record: the peak counts it as still held (an upper bound),
        # which is what the profiler's warning says.
        with native_stderr_without(_UNKNOWN_BLOCK_WARNING):
            result = fn(*args)
    finally:
        with quiet_native_stderr():
            profiler.stop()
    del result
    records = [
        event
        for event in profiler.profiler.kineto_results.events()
        if event.name() == "[memory]"
        and event.device_type() == torch.autograd.DeviceType.CPU
    ]
    records.sort(key=lambda event: event.start_ns())
    allocated = peak = 0
    for event in records:
        allocated += event.nbytes()  # negative for a free
        peak = max(peak, allocated)
    return peak


_UNKNOWN_BLOCK_WARNING = "Memory block of unknown size was allocated before"


@contextlib.contextmanager
def native_stderr_without(message: str) -> Iterator[None]:
    """Pass native code's writes to file descriptor 2 on, less lines holding
    ``message``, when the block ends."""
    with tempfile.TemporaryFile() as captured:
        try:
            with _native_stderr_into(captured.fileno()):
                yield
        finally:
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines(True)
            kept = "".join(line for line in lines if message not in line)
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Send native code's writes to file descriptor 2 to /dev/null, briefly."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        with _native_stderr_into(devnull):
            yield
    finally:
        os.close(devnull)


@contextlib.contextmanager
def _native_stderr_into(descriptor: int) -> Iterator[None]:
    """Point file descriptor 2 at ``descriptor`` for the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(descriptor, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def describe_hardware(
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> dict[str, str | int]:
    """What a timing ran on.

    Device, processor or GPU name, threads, dtype and PyTorch version.

    Raises:
        ValueError: a device this machine lacks or that is not timed here
            (only CPU and CUDA are), or a bad dtype.
    """
    device = timing_device(device)
    dtype = check_dtype("dtype", dtype)
    info: dict[str, str | int] = {
        "device": device.type,
        "cpu": _cpu_model(),
        "threads": torch.get_num_threads(),
        "dtype": _dtype_name(dtype),
        "torch": torch.__version__,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def hardware_summary(
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> str:
    """``describe_hardware`` as one line, to print above every timing."""
    info = describe_hardware(device, dtype)
    where = f"GPU {info['gpu']}" if "gpu" in info else f"CPU {info['cpu']}"
    return (
        f"{where} | {info['threads']} CPU threads | dtype {info['dtype']} "
        f"| torch {info['torch']}"
    )


def timing_device(device: torch.device | str | None = None) -> torch.device:
    """``pick_device(device)``, refusing devices that cannot be timed here.

    Raises:
        ValueError: a device this machine lacks, or one other than CPU and
            CUDA (``Timer`` does not synchronize the others, and ``meta``
            computes nothing).
    """
    device = pick_device(device)
    if device.type not in TIMED_DEVICES:
        raise ValueError(
            f"timings are taken on cpu or cuda only; got device "
            f"{str(device)!r}."
        )
    return device


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


@dataclass(frozen=True)
class CpuPeak:
    """A CPU's fp32 peak: cores x clock x FLOPs per cycle of one core."""

    cores: int  # physical cores the timed threads run on
    ghz: float
    clock: str  # where ``ghz`` comes from
    fp32_lanes: int  # of one vector register: 8 (AVX2) or 16 (AVX-512)
    fma_units: int  # per core, assumed: no file lists them
    amx: bool  # Intel's tile units for bf16 and int8
    avx512_bf16: bool

    @property
    def flops_per_cycle(self) -> int:
        """One core's FLOPs per cycle: units x lanes x 2 (mul and add)."""
        return self.fma_units * self.fp32_lanes * 2

    @property
    def gflops(self) -> float:
        return self.cores * self.ghz * self.flops_per_cycle


def cpu_peak(
    threads: int | None = None,
    *,
    fma_units: int = 2,
    cpuinfo: str = "/proc/cpuinfo",
    sysfs: str = "/sys/devices/system/cpu",
) -> CpuPeak | None:
    """The fp32 peak of the cores ``threads`` threads run on, or None.

    None where ``cpuinfo`` is missing (not Linux) or names no FMA unit or
    clock. Cores are distinct ``(physical id, core id)`` pairs, since
    hyperthreads share their core's FMA units, and at most ``threads``
    (default: ``torch.get_num_threads()``). The clock is the highest
    ``cpuinfo_max_freq`` under ``sysfs``; where that is hidden (as in most
    virtual machines) it is the highest ``cpu MHz`` of ``cpuinfo``, often
    the base clock: a turbo clock above it lets a measured rate pass the
    "peak", and ``clock`` says which was used. ``fma_units`` per core is an
    assumption (2 on recent x86 server and desktop cores; some AVX-512
    Xeons have 1, and AMD Zen 4 splits each 512-bit FMA in two halves).

    Raises:
        ValueError: ``threads`` or ``fma_units`` is not a positive int.
    """
    threads = check_positive_int(
        "threads", torch.get_num_threads() if threads is None else threads
    )
    fma_units = check_positive_int("fma_units", fma_units)
    try:
        with open(cpuinfo) as file:
            text = file.read()
    except OSError:
        return None
    flags: set[str] = set()
    cores, mhz = set(), []
    for block in text.split("\n\n"):
        fields = {
            key.strip(): value.strip()
            for key, _, value in (
                line.partition(":") for line in block.splitlines()
            )
        }
        if "processor" not in fields:
            continue
        flags |= set(fields.get("flags", "").split())
        cores.add((fields.get("physical id"), fields.get("core id")))
        if "cpu MHz" in fields:
            mhz.append(float(fields["cpu MHz"]))
    if "fma" not in flags or not mhz:
        return None
    flags = usable_cpu_flags(flags)
    ghz, clock = max(mhz) / 1000, "cpu MHz of /proc/cpuinfo (may be base)"
    most = _max_frequency_khz(sysfs)
    if most:
        ghz, clock = most / 1e6, "cpuinfo_max_freq (sysfs)"
    return CpuPeak(
        cores=min(len(cores), threads),
        ghz=ghz,
        clock=clock,
        fp32_lanes=16 if "avx512f" in flags else 8,
        fma_units=fma_units,
        amx="amx_tile" in flags,
        avx512_bf16="avx512_bf16" in flags,
    )


_BELOW_AVX512 = {"SSE41", "SSE4_2", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2"}


def usable_cpu_flags(flags: Iterable[str]) -> set[str]:
    """``flags`` less AVX-512 and AMX where the environment keeps PyTorch's
    matrix libraries below them.

    ``ONEDNN_MAX_CPU_ISA`` or ``MKL_ENABLE_INSTRUCTIONS`` at AVX2 or lower
    (as ``make notebook-portability`` sets, to run as on an AVX2 CPU) stops
    oneDNN and MKL from using those units, though the CPU lists them.
    """
    caps = {
        os.environ.get(name, "").upper()
        for name in ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
    }
    if caps & _BELOW_AVX512:
        return {f for f in flags if not f.startswith(("avx512", "amx"))}
    return set(flags)


def _max_frequency_khz(sysfs: str) -> int | None:
    """The highest ``cpufreq/cpuinfo_max_freq`` of any CPU, in kHz."""
    found = []
    pattern = os.path.join(sysfs, "cpu*", "cpufreq", "cpuinfo_max_freq")
    for path in glob.glob(pattern):
        try:
            with open(path) as file:
                found.append(int(file.read().strip()))
        except (OSError, ValueError):
            continue
    return max(found) if found else None


def attention_inputs(
    L: int,
    *,
    batch: int = 1,
    heads: int = 1,
    head_dim: int = 64,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    seed: int = 0,
    requires_grad: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Random ``query, key, value`` of shape ``(batch, heads, L, head_dim)``.

    Seeded with ``seed``, so the same arguments give the same tensors.

    Args:
        L: sequence length. batch, heads, head_dim: the other sizes.
        dtype: a floating-point ``torch.dtype`` or its name ("bfloat16").
        device: as ``pick_device`` takes it (None: CUDA if any, else CPU).
        seed: an int in ``[0, 2**32)``.
        requires_grad: make the three leaf tensors that collect gradients
            (for ``forward_backward``).

    Raises:
        ValueError: a size that is not a positive int, a dtype that is not
            floating point, a device this machine lacks, or a bad seed.
    """
    L, batch, heads, head_dim = (
        check_positive_int(name, value)
        for name, value in (
            ("L", L),
            ("batch", batch),
            ("heads", heads),
            ("head_dim", head_dim),
        )
    )
    dtype = check_dtype("dtype", dtype, floating=True)
    seed = check_seed("seed", seed)
    requires_grad = check_bool("requires_grad", requires_grad)
    device = pick_device(device)
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, heads, L, head_dim)
    q, k, v = (torch.randn(shape, generator=generator) for _ in range(3))
    return tuple(
        t.to(device=device, dtype=dtype).requires_grad_(requires_grad)
        for t in (q, k, v)
    )


def forward_backward(
    fn: Callable[..., Tensor],
) -> Callable[[Tensor, Tensor, Tensor], None]:
    """A training step's attention: ``fn(q, k, v)``, then its backward pass.

    The returned callable runs ``fn``, back-propagates an upstream gradient
    of ones and drops the inputs' gradients, so timing it times the forward
    and backward passes together (what training costs; give it
    inputs from ``attention_inputs(..., requires_grad=True)``). A variant
    whose fast path is forward-only takes its PyTorch path under autograd,
    or raises ``NotImplementedError``, which ``sweep`` records as skipped.

    Raises:
        ValueError: ``fn`` not callable.
    """
    if not callable(fn):
        raise ValueError(f"fn must be callable; got {type(fn).__name__}.")

    def step(query: Tensor, key: Tensor, value: Tensor) -> None:
        out = fn(query, key, value)  # (..., L, Ev)
        out.backward(torch.ones_like(out))
        for tensor in (query, key, value):
            tensor.grad = None  # freed within the call, as its memory is

    return step


def sweep(
    variants: Mapping[str, Callable[..., object]],
    lengths: Iterable[int],
    make_inputs: Callable[[int], tuple],
    *,
    min_run_time: float = 0.2,
    measure_memory: bool = True,
    rounds: int = 1,
    progress: bool = False,
) -> list[dict[str, object]]:
    """Time (and measure the memory of) each variant at each length.

    Args:
        variants: name -> callable, each called as ``fn(*make_inputs(L))``.
        lengths: the sequence lengths ``L``, distinct positive ints, in any
            iterable (list, tuple, generator, NumPy array); records follow
            their order.
        make_inputs: ``L -> tuple`` of arguments, shared by all variants at
            that length; called once per length and round, so it should
            return the same inputs each time (seed it). Its tensors must be
            on the CPU or a CUDA device.
        min_run_time: seconds of timing per measurement.
        measure_memory: also record the peak memory of one call.
        rounds: sweep all lengths and variants this many times and pool the
            blocks of each: a burst of load on a shared machine then spoils
            one round of a few measurements rather than all of one. The
            first round also warms each call up; later rounds reuse its
            block size and time without a warm-up.
        progress: show a progress bar (tqdm) on stderr, one step per
            measurement.

    Returns:
        one plain dict per (length, variant): ``variant, L, median_s, iqr_s,
        min_s, runs, peak_bytes, status, device, dtype, threads``. A variant
        that runs out of memory gets ``status="out of memory"`` and None for
        the numbers; one that raises ``NotImplementedError`` (it cannot run
        that length or here) gets ``status="skipped: <its message>"``, and
        one that raises any other error ``status="failed: <error type>:
        <its message>"``: the sweep goes on with the others, and that
        variant is not timed again at that length.

    Raises:
        ValueError: no variants, a variant that is not callable, no lengths,
            a length that is not a positive int or that comes twice, a
            ``make_inputs`` that is not callable or does not return a tuple
            of arguments on CPU or CUDA, a bad ``min_run_time``, or
            ``rounds`` below 1.
    """
    if not isinstance(variants, Mapping) or not variants:
        raise ValueError(
            "variants must name at least one callable, "
            "e.g. {'sdpa': F.scaled_dot_product_attention}."
        )
    for name, fn in variants.items():
        if not callable(fn):
            raise ValueError(
                f"variant {name!r} is not callable; got {type(fn).__name__}."
            )
    lengths = _check_lengths(lengths)
    if not callable(make_inputs):
        raise ValueError(
            f"make_inputs must be a function L -> tuple of arguments; got "
            f"{type(make_inputs).__name__}."
        )
    min_run_time = _check_min_run_time(min_run_time)
    check_bool("measure_memory", measure_memory)
    rounds = check_positive_int("rounds", rounds)
    check_bool("progress", progress)
    records = {
        (L, name): _empty_record(name, L) for L in lengths for name in variants
    }
    timings: dict[tuple[int, str], list[Timing]] = {key: [] for key in records}
    bar = tqdm(
        total=rounds * len(records),
        disable=not progress,
        file=sys.stderr,
        unit="timing",
        leave=False,
    )
    for round_index in range(rounds):
        for L in lengths:
            inputs = make_inputs(L)
            if round_index == 0:
                _check_inputs(inputs, L)
            for name, fn in variants.items():
                bar.set_description(f"L={L} {name}", refresh=False)
                bar.update()
                record = records[L, name]
                if record["status"] != "ok":
                    continue
                if round_index == 0:
                    record.update(_context(inputs))
                memory = measure_memory and round_index == 0
                earlier = timings[L, name]
                block = earlier[0].calls_per_block if earlier else None
                try:
                    timing, peak = _measure(
                        fn, inputs, min_run_time, memory, block
                    )
                except NotImplementedError as error:
                    record["status"] = f"skipped: {error}"
                    continue
                except Exception as error:  # the sweep goes on without it
                    record["status"] = f"failed: {_one_line(error)}"
                    continue
                if timing is None:
                    record["status"] = "out of memory"
                    continue
                timings[L, name].append(timing)
                if peak is not None:
                    record["peak_bytes"] = peak
            del inputs
    bar.close()
    for key, record in records.items():
        if record["status"] == "ok":
            timing = Timing.pooled(timings[key])
            record.update(
                median_s=timing.median_s,
                iqr_s=timing.iqr_s,
                min_s=timing.min_s,
                runs=timing.runs,
            )
        else:
            record["peak_bytes"] = None
    return list(records.values())


def _check_lengths(lengths: object) -> list[int]:
    """``lengths`` as a list of distinct positive Python ints."""
    if isinstance(lengths, (str, bytes)) or not isinstance(lengths, Iterable):
        raise ValueError(
            f"lengths must be an iterable of sequence lengths, e.g. "
            f"[256, 512]; got {lengths!r}."
        )
    try:
        values = list(lengths)
    except TypeError as error:  # a 0-d NumPy array claims to be iterable
        raise ValueError(
            f"lengths must be an iterable of sequence lengths, e.g. "
            f"[256, 512]; got {lengths!r}."
        ) from error
    if not values:
        raise ValueError("lengths must hold at least one sequence length.")
    values = [check_positive_int("each length", L) for L in values]
    repeated = sorted({L for L in values if values.count(L) > 1})
    if repeated:
        raise ValueError(
            f"lengths must be distinct; got {values}, where {repeated} "
            f"come more than once. Each length is timed once per round: "
            f"drop the repeats, e.g. sorted(set(lengths))."
        )
    return values


def _check_inputs(inputs: object, L: int) -> None:
    """``make_inputs(L)`` must be a tuple (or list) of CPU or CUDA values."""
    if not isinstance(inputs, (tuple, list)):
        raise ValueError(
            f"make_inputs({L}) must return a tuple of arguments; got "
            f"{type(inputs).__name__}. Return (x,) for a single argument."
        )
    for value in inputs:
        if isinstance(value, Tensor) and value.device.type not in (
            TIMED_DEVICES
        ):
            raise ValueError(
                f"make_inputs({L}) returned a tensor on {value.device}; "
                f"timings are taken on cpu or cuda only."
            )


def _empty_record(name: str, L: int) -> dict[str, object]:
    return {
        "variant": name,
        "L": L,
        "median_s": None,
        "iqr_s": None,
        "min_s": None,
        "runs": 0,
        "peak_bytes": None,
        "status": "ok",
    }


def _context(inputs: tuple) -> dict[str, object]:
    """Device, dtype and threads of a measurement, from its first tensor."""
    first = next((a for a in inputs if isinstance(a, Tensor)), None)
    return {
        "device": "cpu" if first is None else first.device.type,
        "dtype": "" if first is None else _dtype_name(first.dtype),
        "threads": torch.get_num_threads(),
    }


def _measure(
    fn: Callable[..., object],
    inputs: tuple,
    min_run_time: float,
    memory: bool,
    calls_per_block: int | None,
) -> tuple[Timing | None, int | None]:
    """The timing of ``fn(*inputs)`` (None: out of memory) and, with
    ``memory``, its peak memory; ``calls_per_block`` as in
    ``time_callable`` (None in the first round: warm up)."""
    timing = _time_or_none(fn, inputs, min_run_time, calls_per_block)
    if timing is None or not memory:
        return timing, None
    return timing, peak_memory_bytes(fn, *inputs)


def _time_or_none(
    fn: Callable[..., object],
    inputs: tuple,
    min_run_time: float,
    calls_per_block: int | None = None,
) -> Timing | None:
    """``time_callable(fn, *inputs)``, or None when it runs out of memory."""
    try:
        return time_callable(
            fn,
            *inputs,
            min_run_time=min_run_time,
            calls_per_block=calls_per_block,
        )
    except (torch.cuda.OutOfMemoryError, RuntimeError) as error:
        if not _is_out_of_memory(error):
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return None


def _one_line(error: BaseException) -> str:
    """``Type: message`` of an error, on one line of at most 300
    characters (a record's status)."""
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text if len(text) <= 300 else text[:297] + "..."


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _is_out_of_memory(error: BaseException) -> bool:
    text = str(error).lower()
    return (
        isinstance(error, torch.cuda.OutOfMemoryError)
        or "out of memory" in text
        or "can't allocate memory" in text
    )


def loglog_slope(xs: Iterable[float], ys: Iterable[float]) -> float:
    """The slope of the least-squares line through ``(log x, log y)``.

    It is the exponent ``p`` in ``y ~ x^p``.

    Args:
        xs, ys: finite positive real numbers, in any iterables of one
            length.

    Raises:
        ValueError: fewer than two points, lengths that differ, a value
            that is not a finite real number > 0, or all ``x`` equal (no
            line fits).
    """
    xs, ys = list(xs), list(ys)
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError(
            f"need two or more (x, y) points of equal count; "
            f"got {len(xs)} and {len(ys)}."
        )
    try:
        xs = [check_real("x", v) for v in xs]
        ys = [check_real("y", v) for v in ys]
    except ValueError as error:
        raise ValueError(
            f"log-log slopes need finite positive numbers ({error}); "
            f"drop zeros and failed runs first."
        ) from None
    if any(not (v > 0) for v in (*xs, *ys)):
        raise ValueError(
            "log-log slopes need positive values; "
            "drop zeros and failed runs first."
        )
    if len(set(xs)) < 2:
        raise ValueError(
            f"log-log slopes need two or more distinct x values; got {xs}."
        )
    slope, _ = np.polyfit(np.log(xs), np.log(ys), 1)
    return float(slope)


T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)
"""Student's t quantile 0.975 for 1 to 10 degrees of freedom (beyond, 2.0
is within 2% of it up to 60 and a little wide after)."""


def loglog_fit(
    xs: Iterable[float], ys: Iterable[float]
) -> tuple[float, float, float]:
    """The least-squares slope of ``log y`` against ``log x`` with its 95%
    confidence interval: ``(slope, low, high)``.

    The interval is the slope +- t * its standard error (``n - 2`` degrees
    of freedom); with two points it is ``(slope, -inf, inf)``: a line
    through two points says nothing of how well a power law fits.

    Args:
        xs, ys: as for ``loglog_slope``.
    """
    slope = loglog_slope(xs, ys)
    x, y = np.log(list(xs)), np.log(list(ys))
    dof = len(x) - 2
    if dof == 0:
        return slope, -math.inf, math.inf
    residuals = y - (y.mean() + slope * (x - x.mean()))  # the fitted line
    spread = float(np.sum((x - x.mean()) ** 2))
    error = math.sqrt(float(np.sum(residuals**2)) / dof / spread)
    t = T_975[dof - 1] if dof <= len(T_975) else 2.0
    return slope, slope - t * error, slope + t * error

