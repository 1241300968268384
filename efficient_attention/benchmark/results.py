"""The benchmark's results: the text table, JSON, CSV, a plot, and loading.

This module holds what happens to the records of ``timing.sweep`` once
they are measured: ``format_records`` prints them as a table of medians,
spreads, peak memory and ratios to dense SDPA; ``write_json`` and
``write_csv`` save them (the JSON also keeps the hardware and the settings
of the run); ``plot_records`` draws median time against sequence length
on log-log axes; ``load_results`` reads a JSON file back, as records or a
pandas DataFrame, for the book's leaderboard; ``book_data_file`` and
``leaderboard_files`` find the measurements that ship with the package
(``efficient_attention/book_data/``), so a chapter opened on its own (in
Colab) finds them too. It implements no paper; the
command line of ``python -m efficient_attention.benchmark`` (module
``cli``) writes these files, and chapter 1 introduces the table.
"""

from __future__ import annotations

import csv
import importlib.resources
import json
import os
import pathlib
from collections.abc import Mapping, Sequence

from .._validation import check_records

RESULTS_FORMAT = "efficient_attention.benchmark/1"
"""The ``format`` field of the JSON files: bumped when the layout changes."""

COLUMNS = (
    "variant",
    "L",
    "median_s",
    "iqr_s",
    "min_s",
    "runs",
    "peak_bytes",
    "ratio_to_baseline",
    "status",
    "device",
    "dtype",
    "threads",
    "batch",
    "heads",
    "head_dim",
    "hardware",
)
"""The CSV's columns, in order; a record's other keys follow them."""


def _group(record: Mapping[str, object]) -> tuple:
    """Records compare with the baseline only within one length, device,
    dtype and shape."""
    return tuple(
        record.get(key)
        for key in ("L", "device", "dtype", "batch", "heads", "head_dim")
    )


def add_ratios(
    records: Sequence[Mapping[str, object]], baseline: str = "sdpa"
) -> list[dict[str, object]]:
    """Copies of ``records`` with ``ratio_to_baseline``: the median divided
    by the baseline's median in the same length, device, dtype and shape
    (None when either was not measured).

    Raises:
        ValueError: no records, or records without variant and L.
    """
    records = check_records(records)
    base = {
        _group(r): r.get("median_s")
        for r in records
        if r["variant"] == baseline
    }
    out = []
    for r in records:
        b, m = base.get(_group(r)), r.get("median_s")
        ratio = (
            m / b if b and m is not None and r.get("status") == "ok" else None
        )
        out.append({**r, "ratio_to_baseline": ratio})
    return out


def format_records(
    records: Sequence[Mapping[str, object]], baseline: str = "sdpa"
) -> str:
    """A text table of ``sweep`` records, times as ratios to ``baseline``.

    Columns: length, variant, median and interquartile range in ms, timed
    runs, peak MiB, and the median divided by the baseline's at that length
    (on the same device, dtype and shape).

    Raises:
        ValueError: no records.
    """
    records = add_ratios(records, baseline)
    width = max(len("variant"), *(len(str(r["variant"])) for r in records))
    lines = [
        f"{'L':>6} {'variant':>{width}} {'median ms':>10} {'iqr ms':>8} "
        f"{'runs':>5} {'peak MiB':>9} {'x ' + baseline:>{width + 2}}"
    ]
    for r in records:
        row = f"{r['L']:>6} {r['variant']:>{width}} "
        if r["status"] != "ok":
            lines.append(row + str(r["status"]))
            continue
        ratio = r["ratio_to_baseline"]
        ratio = "-" if ratio is None else f"{ratio:.2f}"
        peak = r["peak_bytes"]
        peak = "-" if peak is None else f"{peak / 2**20:.2f}"
        lines.append(
            row + f"{r['median_s'] * 1e3:>10.3f} {r['iqr_s'] * 1e3:>8.3f} "
            f"{r.get('runs', '-'):>5} {peak:>9} {ratio:>{width + 2}}"
        )
    return "\n".join(lines)


def write_json(
    records: Sequence[Mapping[str, object]],
    path: str | os.PathLike,
    *,
    hardware: Sequence[Mapping[str, object]] = (),
    settings: Mapping[str, object] | None = None,
    provenance: Mapping[str, object] | None = None,
    baseline: str = "sdpa",
) -> None:
    """Save ``records`` (with their ratios) as JSON at ``path``.

    The file holds ``{"format", "baseline", "provenance", "hardware",
    "settings", "records"}``; ``load_results`` reads it back, and
    ``load_document`` reads the whole file. ``provenance`` says where the
    numbers came from (see ``provenance()``: date, versions, command).

    Raises:
        ValueError: no records, or records without variant and L.
    """
    document = {
        "format": RESULTS_FORMAT,
        "baseline": baseline,
        "provenance": dict(provenance or {}),
        "hardware": [dict(h) for h in hardware],
        "settings": dict(settings or {}),
        "records": add_ratios(records, baseline),
    }
    with open(path, "w") as file:
        json.dump(document, file, indent=1)
        file.write("\n")


PEER_PACKAGES = ("transformers", "local-attention", "natten")
"""The peers' distributions whose versions a run records."""

CPU_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_bf16",
    "amx_int8",
)
"""The CPU features that decide which kernels run fast here."""


def provenance(
    argv: Sequence[str] | None = None,
    *,
    program: str = "python -m efficient_attention.benchmark",
) -> dict[str, object]:
    """Where a run's numbers come from: the date and time (UTC, ISO 8601),
    the versions of efficient_attention, PyTorch, Python and the peers, the
    git commit of the package's checkout (``"-dirty"`` when it has
    uncommitted changes), the CPU's model and features, the package's C++
    kernels (ready, or why not) with their compiler flags, and the command
    that was run (``program`` and ``argv``, its arguments; None:
    ``sys.argv[1:]``).
    """
    import datetime
    import platform
    import shlex
    import sys

    import torch

    from .. import __version__, cpu_kernels

    if argv is None:
        argv = sys.argv[1:]
    command = program
    if argv:
        command += " " + shlex.join(str(a) for a in argv)
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
        "efficient_attention": __version__,
        "git": git_revision(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "peers": {name: _version(name) for name in PEER_PACKAGES},
        "cpu": _cpu_description(),
        "kernels": {
            name: cpu_kernels.status(name)
            for name in ("sliding_window", "block_sparse")
        },
        "kernel_flags": " ".join(
            (*cpu_kernels.BASE_FLAGS, *cpu_kernels.target_flags())
        ),
        "command": command,
    }


def git_revision(folder: str | os.PathLike[str] | None = None) -> str:
    """The commit checked out in ``folder`` (default: the package's
    checkout), with ``-dirty`` when tracked files have changed, or
    ``"unknown"`` outside a git checkout (an installed wheel)."""
    import pathlib
    import subprocess

    folder = pathlib.Path(folder or pathlib.Path(__file__).resolve().parent)

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(folder), *args],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if changed else "")


def _version(distribution: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cpu_description() -> dict[str, object]:
    """The CPU's model name and which of ``CPU_FLAGS`` it has."""
    from .. import cpu_kernels
    from .timing import _cpu_model

    flags = set(cpu_kernels._cpu_flags().split())
    return {
        "model": _cpu_model(),
        "flags": [f for f in CPU_FLAGS if f in flags],
    }


def write_csv(
    records: Sequence[Mapping[str, object]],
    path: str | os.PathLike,
    *,
    baseline: str = "sdpa",
) -> None:
    """Save ``records`` as CSV at ``path``, one row a record, ``COLUMNS``
    first (empty cells for numbers that were not measured).

    Raises:
        ValueError: no records, or records without variant and L.
    """
    records = add_ratios(records, baseline)
    extra = sorted({k for r in records for k in r} - set(COLUMNS))
    names = [c for c in COLUMNS if any(c in r for r in records)] + extra
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=names)
        writer.writeheader()
        for r in records:
            writer.writerow(
                {k: "" if r.get(k) is None else r.get(k) for k in names}
            )


def _book_data_folder() -> pathlib.Path:
    return pathlib.Path(
        str(importlib.resources.files("efficient_attention") / "book_data")
    )


def book_data_file(name: str) -> pathlib.Path:
    """The path of one file of the measurements that ship with the package
    (``efficient_attention/book_data/``: the leaderboard runs, the MRPC
    teacher's recipe search, the GPU checks).

    Raises:
        FileNotFoundError: no such file; the message lists the ones there.
    """
    path = _book_data_folder() / name
    if not path.is_file():
        shipped = sorted(p.name for p in _book_data_folder().glob("*.*"))
        raise FileNotFoundError(
            f"the package ships no {name!r} in {_book_data_folder()}; it "
            f"has {', '.join(shipped) or 'nothing'}. Reinstall "
            f"efficient_attention if a file is missing."
        )
    return path


def leaderboard_files(
    own_runs: str | os.PathLike = "data",
) -> dict[str, pathlib.Path]:
    """Every leaderboard run, by name: ``leaderboard-<run>.json`` of the
    package's ``book_data``, then those in the folder ``own_runs`` (a
    reader's own runs; it need not exist), where a file replaces the
    package's run of the same name. Sorted by run name.
    """
    runs = {}
    for folder in (_book_data_folder(), pathlib.Path(own_runs)):
        for path in sorted(folder.glob("leaderboard-*.json")):
            runs[path.stem.removeprefix("leaderboard-")] = path
    return dict(sorted(runs.items()))


def load_results(path: str | os.PathLike, *, as_frame: bool = False):
    """The records of a JSON file that ``write_json`` (or the command line's
    ``--json``) wrote.

    Args:
        path: the JSON file. It may also hold a bare list of records.
        as_frame: True: a ``pandas.DataFrame`` with one row a record.

    Returns:
        a list of dicts (one per variant and length), or a DataFrame.

    Raises:
        ValueError: a file that does not exist, is not JSON, or holds no
            list of records.
    """
    try:
        with open(path) as file:
            document = json.load(file)
    except FileNotFoundError:
        raise ValueError(f"path {str(path)!r} does not exist.") from None
    except json.JSONDecodeError as error:
        raise ValueError(
            f"path {str(path)!r} is not JSON ({error}); pass a file that "
            f"`python -m efficient_attention.benchmark --json` wrote."
        ) from None
    records = (
        document.get("records") if isinstance(document, dict) else document
    )
    if not isinstance(records, list) or not all(
        isinstance(r, dict) and {"variant", "L"} <= set(r) for r in records
    ):
        raise ValueError(
            f"path {str(path)!r} holds no list of benchmark records (dicts "
            f"with 'variant' and 'L')."
        )
    if as_frame:
        import pandas as pd

        return pd.DataFrame.from_records(records)
    return records


def load_document(path: str | os.PathLike) -> dict[str, object]:
    """The whole JSON file that ``write_json`` wrote: its ``provenance``,
    ``hardware`` and ``settings`` besides the ``records`` (a bare list of
    records comes back as ``{"records": [...]}``).

    Raises:
        ValueError: as ``load_results``.
    """
    records = load_results(path)
    with open(path) as file:
        document = json.load(file)
    if not isinstance(document, dict):
        return {"records": records}
    return document


def plot_records(
    records: Sequence[Mapping[str, object]],
    path: str | os.PathLike | None = None,
    *,
    title: str | None = None,
):
    """Median time against sequence length, log-log, one line a variant
    (and device and dtype, when the records hold several).

    Args:
        records: from ``benchmark.sweep`` or ``load_results``.
        path: save the figure there as PNG too (None: do not save).
        title: the figure's title (e.g. the hardware line).

    Returns:
        the matplotlib ``Figure``.

    Raises:
        ValueError: no records, or records without variant and L.
    """
    from matplotlib.figure import Figure  # no pyplot: no window, no state

    records = check_records(records)
    several = len({(r.get("device"), r.get("dtype")) for r in records}) > 1
    lines: dict[str, list[tuple[int, float]]] = {}
    for r in records:
        if r.get("status", "ok") != "ok" or r.get("median_s") is None:
            continue
        label = str(r["variant"])
        if several:
            label += f" ({r.get('device')}, {r.get('dtype')})"
        lines.setdefault(label, []).append((r["L"], r["median_s"] * 1e3))
    figure = Figure(figsize=(7, 4.5))
    axes = figure.subplots()
    for label, points in lines.items():
        points.sort()
        axes.plot(*zip(*points), marker="o", label=label)
    axes.set_xscale("log", base=2)
    axes.set_yscale("log")
    axes.set_xlabel("sequence length L")
    axes.set_ylabel("median time per call (ms)")
    if title:
        axes.set_title(title, fontsize=9)
    if lines:
        axes.legend(fontsize=8)
    axes.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    if path is not None:
        figure.savefig(path, format="png", dpi=100)
    return figure
