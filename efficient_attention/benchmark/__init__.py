"""Measuring on the reader's hardware: times, FLOPs, peers and statistics.

``timing`` times calls (``compare`` against a baseline in interleaved
rounds, ``sweep`` over lengths, the hardware line, the CPU's peak);
``results`` turns the records into tables, JSON, CSV and plots and loads
the runs that ship with the package; ``cli`` is the command line ``python
-m efficient_attention.benchmark``; ``cost`` counts FLOPs and bytes;
``peers`` wraps other libraries' kernels for the same patterns;
``significance`` compares two classifiers' accuracies on paired examples.
The names of ``timing`` and ``results`` are importable from here:
``ea.benchmark.compare``, ``ea.benchmark.load_results``.
"""

from __future__ import annotations

from .results import (
    book_data_file,
    format_records,
    leaderboard_files,
    load_document,
    load_results,
    plot_records,
    write_csv,
    write_json,
)
from .timing import (
    T_975,
    TIMED_DEVICES,
    CpuPeak,
    Timing,
    attention_inputs,
    compare,
    cpu_peak,
    describe_hardware,
    format_comparison,
    forward_backward,
    hardware_summary,
    loglog_fit,
    loglog_slope,
    peak_memory_bytes,
    quiet_native_stderr,
    sweep,
    time_callable,
    timing_device,
)

__all__ = [
    "T_975",
    "TIMED_DEVICES",
    "CpuPeak",
    "Timing",
    "attention_inputs",
    "book_data_file",
    "compare",
    "cpu_peak",
    "describe_hardware",
    "format_comparison",
    "format_records",
    "forward_backward",
    "hardware_summary",
    "leaderboard_files",
    "load_document",
    "load_results",
    "loglog_fit",
    "loglog_slope",
    "peak_memory_bytes",
    "plot_records",
    "quiet_native_stderr",
    "sweep",
    "time_callable",
    "timing_device",
    "write_csv",
    "write_json",
]
