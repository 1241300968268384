"""The command line ``python -m efficient_attention.benchmark``.

This module holds the argument parser (``build_parser``) and ``main``: it
sweeps the chosen variants of the registry (``efficient_attention.
variants``; ``--list`` prints them) over lengths, dtypes and devices
against ``F.scaled_dot_product_attention`` (dense SDPA, the baseline), with
a progress bar on stderr, prints the hardware line and the table of
``results.format_records``, and writes JSON, CSV and a PNG plot
when asked (``--json``, ``--csv``, ``--plot``). The measurements live in
``timing``, the variants and their settings in ``variants``. Run it
with ``--help``, or ``--quick`` for a sweep of a few seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import pathlib
import sys
from collections.abc import Sequence

import torch

from .. import variants
from .._validation import (
    check_non_negative_int,
    check_positive_int,
    check_positive_real,
)
from . import results, timing

DEFAULTS = variants.Settings()
"""The settings of an option not given (one set for every consumer)."""

LENGTHS = (256, 512, 1024, 2048, 4096)
"""The lengths swept unless ``--lengths`` names others."""

QUICK_LENGTHS = (64, 128)
"""The lengths of ``--quick``."""

MIN_RUN_TIME = 0.2
QUICK_MIN_RUN_TIME = 0.01
"""Seconds of timing per measurement, by default and with ``--quick``."""

ROUNDS = 5
QUICK_ROUNDS = 1
"""Interleaved rounds, by default (a spread worth reading) and with
``--quick``."""

ALL_WINDOW = 16
"""The window of the local variants with ``--variants all`` and no
``--window``."""

DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def _positive_int_argument(text: str) -> int:
    """argparse type: a positive int, or a usage error."""
    try:
        return check_positive_int("the value", int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a positive int; got {text!r}"
        ) from None


def _non_negative_int_argument(text: str) -> int:
    """argparse type: an int >= 0, or a usage error."""
    try:
        return check_non_negative_int("the value", int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be an int >= 0; got {text!r}"
        ) from None


def _positive_seconds_argument(text: str) -> float:
    """argparse type: a finite number of seconds > 0, or a usage error."""
    try:
        return check_positive_real("the value", float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a finite number of seconds > 0; got {text!r}"
        ) from None


def _density_argument(text: str) -> float:
    """argparse type: a number in (0, 1], or a usage error."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(
            f"must be a number in (0, 1]; got {text!r}"
        )
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser: every number is checked as it is read."""
    parser = argparse.ArgumentParser(
        prog="python -m efficient_attention.benchmark",
        description=(
            "Time attention variants against "
            "F.scaled_dot_product_attention "
            "on this machine, over sequence lengths."
        ),
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        default=variants.names("exact"),
        choices=[*variants.names(), "all"],
        metavar="VARIANT",
        help="what to time (all: every one; --list names them); the "
        "local ones need --window",
    )
    parser.add_argument(
        "--density",
        type=_density_argument,
        default=DEFAULTS.density,
        help="share of key blocks each query block keeps in the random "
        "layout of block-sparse (and of --layout random)",
    )
    parser.add_argument(
        "--block-size",
        type=_positive_int_argument,
        default=DEFAULTS.block_size,
        help="block side of the sparse layouts",
    )
    parser.add_argument(
        "--levels",
        type=_positive_int_argument,
        default=DEFAULTS.levels,
        help="levels of pyramid and recursive (default: the coarsest "
        "holds at most 4 blocks of pooled keys)",
    )
    parser.add_argument(
        "--top-k",
        type=_non_negative_int_argument,
        default=DEFAULTS.top_k,
        help="key blocks each query block picks in coarse-to-fine",
    )
    parser.add_argument(
        "--clusters",
        type=_positive_int_argument,
        default=DEFAULTS.clusters,
        help="k-means clusters per head of routing",
    )
    parser.add_argument(
        "--rank",
        type=_positive_int_argument,
        default=DEFAULTS.rank,
        help="projected keys of linformer",
    )
    parser.add_argument(
        "--landmarks",
        type=_positive_int_argument,
        default=DEFAULTS.landmarks,
        help="landmarks (segment means) of nystrom",
    )
    parser.add_argument(
        "--features",
        type=_positive_int_argument,
        default=DEFAULTS.features,
        help="random features of performer",
    )
    for option, what in (
        ("bigbird_window", "window blocks on each side"),
        ("global_blocks", "global blocks"),
        ("random_blocks", "random blocks per block row"),
    ):
        parser.add_argument(
            "--" + option.replace("_", "-"),
            type=_non_negative_int_argument,
            default=getattr(DEFAULTS, option),
            help=f"BigBird's layout: {what}",
        )
    parser.add_argument(
        "--layout",
        choices=["random", "bigbird"],
        default=DEFAULTS.layout,
        help="the layout sdpa-layout and flex-layout are given",
    )
    parser.add_argument(
        "--window",
        type=_non_negative_int_argument,
        default=DEFAULTS.window,
        help="keys on each side of the query, W: window (W, W), or (W, 0) "
        "with --causal",
    )
    parser.add_argument(
        "--causal",
        action="store_true",
        help="causal attention: sdpa with is_causal=True, windows (W, 0)",
    )
    parser.add_argument(
        "--lengths",
        nargs="+",
        type=_positive_int_argument,
        default=None,
        help=f"sequence lengths (default: {' '.join(map(str, LENGTHS))}; "
        f"with --quick {' '.join(map(str, QUICK_LENGTHS))})",
    )
    for option in ("batch", "heads", "head_dim"):
        parser.add_argument(
            "--" + option.replace("_", "-"),
            type=_positive_int_argument,
            default=getattr(DEFAULTS, option),
        )
    parser.add_argument(
        "--dtype",
        nargs="+",
        choices=list(DTYPES),
        default=["float32"],
        help="one or more dtypes, each swept in turn",
    )
    parser.add_argument(
        "--device",
        nargs="+",
        default=None,
        help="cpu, cuda or cuda:<index>, one or more (default: cuda if "
        "available, else cpu)",
    )
    parser.add_argument(
        "--min-run-time",
        type=_positive_seconds_argument,
        default=None,
        help=f"seconds of timing per measurement (default "
        f"{MIN_RUN_TIME}; with --quick {QUICK_MIN_RUN_TIME})",
    )
    parser.add_argument(
        "--rounds",
        type=_positive_int_argument,
        default=None,
        help=f"sweep this many times and pool the timings (default "
        f"{ROUNDS}; with --quick {QUICK_ROUNDS})",
    )
    parser.add_argument(
        "--backward",
        action="store_true",
        help="time the forward and backward passes together (a training "
        "step's attention; kernels that are forward-only run their "
        "PyTorch path)",
    )
    parser.add_argument(
        "--no-memory",
        action="store_true",
        help="skip the peak-memory measurement",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a tiny sweep that takes seconds: lengths "
        f"{' '.join(map(str, QUICK_LENGTHS))}, {QUICK_MIN_RUN_TIME} s a "
        "timing (unless given)",
    )
    parser.add_argument(
        "--list",
        action="store_true",
        help="name every variant and what it needs, then exit",
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar on stderr",
    )
    parser.add_argument(
        "--json", metavar="PATH", help="write the records and hardware as JSON"
    )
    parser.add_argument(
        "--csv", metavar="PATH", help="write the records as CSV"
    )
    parser.add_argument(
        "--plot", metavar="PATH", help="draw time against length as a PNG"
    )
    return parser


def all_variant_names() -> list[str]:
    """Every variant the command line can time, the baseline first."""
    return variants.names()


def _flag(setting: str) -> str:
    """The command line option of a ``Settings`` field."""
    return "--" + setting.replace("_", "-")


def list_variants() -> str:
    """One line a variant: its name, family, what it is and its options
    (``--list``)."""
    names = all_variant_names()
    width = max(map(len, names))
    lines = []
    for name in names:
        variant = variants.get(name)
        extras = [_flag(option) for option in variant.options]
        if variant.causal:
            extras.append("takes --causal")
        if variant.peer is not None:
            extras.append(f"peer: {variant.peer}")
        extra = f" ({', '.join(extras)})" if extras else ""
        lines.append(
            f"{name:<{width}}  {variant.family}: {variant.summary}{extra}"
        )
    lines.append(
        f"{'all':<{width}}  every variant above (window {ALL_WINDOW})"
    )
    return "\n".join(lines)


def settings_of(args: argparse.Namespace) -> variants.Settings:
    """The registry's settings from the parsed options."""
    fields = {f.name for f in dataclasses.fields(variants.Settings)}
    return variants.Settings(
        **{name: getattr(args, name) for name in fields if hasattr(args, name)}
    )


def _check_arguments(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> list[torch.device]:
    """Resolve ``all`` and the ``--quick`` defaults, refuse what cannot run
    (``parser.error``: exit status 2), and return the devices."""
    if args.quick:
        args.lengths = args.lengths or list(QUICK_LENGTHS)
        args.min_run_time = args.min_run_time or QUICK_MIN_RUN_TIME
        args.rounds = args.rounds or QUICK_ROUNDS
    args.lengths = args.lengths or list(LENGTHS)
    args.min_run_time = args.min_run_time or MIN_RUN_TIME
    args.rounds = args.rounds or ROUNDS
    if "all" in args.variants:
        if len(args.variants) > 1:
            parser.error("argument --variants: 'all' comes alone")
        args.variants = variants.names(causal=True if args.causal else None)
        if args.window is None:
            args.window = ALL_WINDOW
    for option, values in (
        ("--lengths", args.lengths),
        ("--variants", args.variants),
        ("--dtype", args.dtype),
        ("--device", args.device or []),
    ):
        if len(set(values)) != len(values):
            parser.error(f"argument {option}: each value must come once")
    devices = []
    for name in args.device or [None]:
        try:
            devices.append(timing.timing_device(name))
        except ValueError as error:
            parser.error(f"argument --device: {error}")
    chosen = [variants.get(name) for name in args.variants]
    windowed = [v.name for v in chosen if "window" in v.options]
    if windowed and args.window is None:
        parser.error(f"the variants {windowed} need --window")
    not_causal = [v.name for v in chosen if not v.causal]
    if args.causal and not_causal:
        parser.error(
            f"the variants {not_causal} do not take --causal (those that "
            f"do: {', '.join(variants.names(causal=True))})"
        )
    for check in (_check_settings, _check_sizes, _check_output_paths):
        problem = check(args, devices)
        if problem is not None:
            parser.error(problem)
    return devices


def _check_settings(
    args: argparse.Namespace, devices: list[torch.device]
) -> str | None:
    """Why a variant's settings do not fit a length (naming the variant,
    the setting and the length), or None: checked for every variant and
    length before anything is timed."""
    settings = settings_of(args)
    for name in args.variants:
        for L in args.lengths:
            problem = variants.setting_problem(name, settings, L)
            if problem is not None:
                options = ", ".join(map(_flag, variants.get(name).options))
                return (
                    f"the variant {name} cannot run at length {L}: "
                    f"{problem} (options {options})"
                )
    return None


def _check_sizes(
    args: argparse.Namespace, devices: list[torch.device]
) -> str | None:
    """Whether the inputs of every length fit the memory of each device at
    all (query, key, value and the output; drawn in float32 first)."""
    from .._validation import check_fits_in_memory

    for device in devices:
        for dtype_name in args.dtype:
            size = max(DTYPES[dtype_name].itemsize, 4)
            for L in args.lengths:
                elements = args.batch * args.heads * L * args.head_dim
                what = (
                    f"--lengths {L} (with --batch {args.batch}, --heads "
                    f"{args.heads}, --head-dim {args.head_dim}, {dtype_name}"
                    f"): query, key, value and the output alone"
                )
                try:
                    check_fits_in_memory(what, 4 * elements * size, device)
                except ValueError as error:
                    return f"{error} Choose shorter lengths."
    return None


def _check_output_paths(
    args: argparse.Namespace, devices: list[torch.device]
) -> str | None:
    """Whether ``--json``, ``--csv`` and ``--plot`` can be written (before
    the sweep, so that no sweep is lost to a bad path), and are distinct."""
    chosen = {
        option: path
        for option in ("json", "csv", "plot")
        if (path := getattr(args, option)) is not None
    }
    if len(set(chosen.values())) < len(chosen):
        return f"the output paths must differ; got {chosen}"
    for option, path in chosen.items():
        problem = _unwritable(path)
        if problem is not None:
            return f"argument --{option}: cannot write {path!r}: {problem}"
    return None


def _unwritable(path: str) -> str | None:
    """Why ``path`` cannot be written, or None; an existing file is left
    as it is (opened to append), a new one removed again."""
    target = pathlib.Path(path)
    if target.is_dir():
        return "it is a folder"
    existed = target.exists()
    try:
        with open(target, "a"):
            pass
    except OSError as error:
        return error.strerror or str(error)
    if not existed:
        target.unlink()
    return None


def _print_settings(args: argparse.Namespace) -> None:
    """The lines under the hardware line: the shape, and each setting the
    chosen variants read, with the variants that read it."""
    print(
        f"shape (batch, heads, L, head_dim) = "
        f"({args.batch}, {args.heads}, L, {args.head_dim})"
    )
    print(
        f"{args.rounds} interleaved round(s) of {args.min_run_time} s per "
        "measurement, pooled"
    )
    if args.backward:
        print("timed: forward and backward passes (--backward)")
    settings = settings_of(args)
    readers: dict[str, list[str]] = {}
    for name in args.variants:
        for option in variants.get(name).options:
            if option not in ("batch", "heads", "head_dim"):
                readers.setdefault(option, []).append(name)
    for option, names in readers.items():
        value = getattr(settings, option)
        if option == "window":
            side = (value, 0) if args.causal else (value, value)
            value = f"{value}, (left, right) = {side}"
        elif value is None:
            value = "auto"
        print(f"{_flag(option)} {value}: {', '.join(names)}")


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: time attention variants against SDPA over lengths.

    For each device and dtype asked for, it prints the hardware line, the
    settings and the table (median, interquartile range, runs, peak
    memory, ratio to SDPA), with a progress bar on stderr; ``--json``,
    ``--csv`` and ``--plot`` save every record. Bad arguments (a number
    that is not positive, a repeated length or variant, a device this
    machine lacks or that is not timed here, a variant without what it
    needs, settings that do not fit a length such as ``--top-k`` beyond
    the key blocks or ``--landmarks`` beyond the tokens, lengths whose
    inputs alone exceed the device's memory, an output path that cannot
    be written) are usage errors: the program exits with status 2 before
    timing anything. A variant that fails during the sweep is recorded as
    failed and the sweep goes on; an output that cannot be written after
    all is reported, the others are written, and the exit status is 1.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = list(sys.argv[1:] if argv is None else argv)
    if args.list:
        print(list_variants())
        return
    devices = _check_arguments(parser, args)
    # taken before timing: the code that runs is the code checked out now
    origin = results.provenance(args.command_line)
    records: list[dict[str, object]] = []
    hardware: list[dict[str, object]] = []
    for device in devices:
        for dtype_name in args.dtype:
            dtype = DTYPES[dtype_name]
            summary = timing.hardware_summary(device, dtype)
            if records:
                print()
            print(summary)
            _print_settings(args)
            hardware.append(timing.describe_hardware(device, dtype))
            timed = {
                name: variants.build(name, settings_of(args))
                for name in args.variants
            }
            if args.backward:
                timed = {
                    name: timing.forward_backward(fn)
                    for name, fn in timed.items()
                }
            found = timing.sweep(
                timed,
                args.lengths,
                functools.partial(
                    timing.attention_inputs,
                    batch=args.batch,
                    heads=args.heads,
                    head_dim=args.head_dim,
                    dtype=dtype,
                    device=device,
                    requires_grad=args.backward,
                ),
                min_run_time=args.min_run_time,
                measure_memory=not args.no_memory,
                rounds=args.rounds,
                progress=not args.no_progress,
            )
            shape = {
                "batch": args.batch,
                "heads": args.heads,
                "head_dim": args.head_dim,
                "causal": args.causal,
                "backward": args.backward,
                "hardware": summary,
            }
            found = [{**record, **shape} for record in found]
            print(results.format_records(found))
            records += found
    _write_outputs(args, records, hardware, origin)


def _write_outputs(
    args: argparse.Namespace,
    records: list[dict[str, object]],
    hardware: list[dict[str, object]],
    origin: dict[str, object],
) -> None:
    """``--json`` (with ``origin``, the run's provenance), ``--csv`` and
    ``--plot``, each when asked; a line on
    stderr names each file written, or why one could not be (the others
    are written all the same, and the exit status is then 1)."""
    settings = {
        key: value
        for key, value in vars(args).items()
        if key
        not in ("json", "csv", "plot", "list", "no_progress", "command_line")
    }
    title = " / ".join(sorted({str(r["hardware"]) for r in records}))
    writers = {
        "json": lambda path: results.write_json(
            records,
            path,
            hardware=hardware,
            settings=settings,
            provenance=origin,
        ),
        "csv": lambda path: results.write_csv(records, path),
        "plot": lambda path: results.plot_records(
            records, path, title=title
        ),
    }
    failed = []
    for option, write in writers.items():
        path = getattr(args, option)
        if not path:
            continue
        try:
            write(path)
        except (OSError, ValueError) as error:  # write the others anyway
            print(f"could not write {path}: {error}", file=sys.stderr)
            failed.append(path)
        else:
            print(f"wrote {path}", file=sys.stderr)
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
