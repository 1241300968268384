"""The command line ``python -m efficient_attention.benchmark``.

This module holds the argument parser (``build_parser``), ``main``, and the
construction of every attention variant it can time (``VARIANTS`` and the
tables of local, sparse, low-rank and hierarchical variants; ``--list``
prints them): it sweeps the chosen variants over lengths, dtypes and
devices against ``F.scaled_dot_product_attention`` (dense SDPA, the
baseline), with a progress bar on stderr, prints the hardware line and the
table of ``benchmark_results.format_records``, and writes JSON, CSV and a
PNG plot when asked (``--json``, ``--csv``, ``--plot``). The measurements
themselves live in ``benchmark``; the variants implement the papers their
modules name. Run it with ``--help``, or ``--quick`` for a sweep of a few
seconds.
"""

from __future__ import annotations

import argparse
import functools
import math
import pathlib
import sys
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import benchmark, benchmark_results
from ._validation import (
    check_non_negative_int,
    check_positive_int,
    check_positive_real,
)
from .attention import dense_attention

VARIANTS: dict[str, Callable[..., Tensor]] = {
    "sdpa": F.scaled_dot_product_attention,
    "dense": dense_attention,
}
"""The attention functions the command line can time, by name.

``sdpa`` is the baseline.
"""

LOCAL_VARIANTS = (
    "sliding-window",
    "sdpa-mask",
    "flex",
    "local-attention",
    "longformer",
    "natten",
)
"""Variants of the command line that time a ``--window``: the package's
``sliding_window_attention`` and the peers of ``efficient_attention.peers``
(with ``--causal`` only ``sliding-window``)."""

LOW_RANK_VARIANTS = ("linformer", "nystrom", "performer")
"""Approximations the command line times: ``--rank`` projected keys
(Linformer, random projections seeded with 0), ``--landmarks`` segment
means (Nyström), ``--features`` orthogonal random features (Performer,
seeded with 0; with ``--causal`` its prefix-sum form)."""

SPARSE_VARIANTS = (
    "block-sparse",
    "bigbird",
    "routing",
    "sdpa-layout",
    "flex-layout",
)
"""Variants of the command line that time sparse attention: the package's
``block_sparse_attention`` on a random layout of ``--density`` per block
row (``block-sparse``) and on BigBird's layout (``bigbird``: 3 window, 2
global and 3 random blocks), its ``routing_attention`` with ``--clusters``
(``routing``), and, on the layout that ``--layout`` names, SDPA with it as
a boolean mask (``sdpa-layout``) and compiled FlexAttention with it as a
block mask (``flex-layout``). Layouts are shared by all heads, in blocks
of ``--block-size``, and seeded."""

HIERARCHICAL_VARIANTS = (
    "pyramid",
    "recursive",
    "coarse-to-fine",
)
"""Variants of the command line that time hierarchical attention: the
package's ``pyramid_attention`` and ``recursive_attention`` with
``--block-size`` and ``--levels`` (default: enough levels that the coarsest
holds at most 4 blocks), and ``coarse_to_fine_attention`` with
``--block-size`` and ``--top-k``."""

LENGTHS = (256, 512, 1024, 2048, 4096)
"""The lengths swept unless ``--lengths`` names others."""

QUICK_LENGTHS = (64, 128)
"""The lengths of ``--quick``."""

MIN_RUN_TIME = 0.2
QUICK_MIN_RUN_TIME = 0.01
"""Seconds of timing per measurement, by default and with ``--quick``."""

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
        default=list(VARIANTS),
        choices=[
            *VARIANTS,
            *LOCAL_VARIANTS,
            *SPARSE_VARIANTS,
            *LOW_RANK_VARIANTS,
            *HIERARCHICAL_VARIANTS,
            "all",
        ],
        metavar="VARIANT",
        help="what to time (all: every one; --list names them); the "
        "local ones need --window",
    )
    parser.add_argument(
        "--density",
        type=_density_argument,
        default=0.1,
        help="share of key blocks each query block keeps in the random "
        "layout of block-sparse (and of --layout random)",
    )
    parser.add_argument(
        "--block-size",
        type=_positive_int_argument,
        default=64,
        help="block side of the sparse layouts",
    )
    parser.add_argument(
        "--levels",
        type=_positive_int_argument,
        default=None,
        help="levels of pyramid and recursive (default: the coarsest "
        "holds at most 4 blocks of pooled keys)",
    )
    parser.add_argument(
        "--top-k",
        type=_non_negative_int_argument,
        default=4,
        help="key blocks each query block picks in coarse-to-fine",
    )
    parser.add_argument(
        "--clusters",
        type=_positive_int_argument,
        default=16,
        help="k-means clusters per head of routing",
    )
    parser.add_argument(
        "--rank",
        type=_positive_int_argument,
        default=256,
        help="projected keys of linformer",
    )
    parser.add_argument(
        "--landmarks",
        type=_positive_int_argument,
        default=64,
        help="landmarks (segment means) of nystrom",
    )
    parser.add_argument(
        "--features",
        type=_positive_int_argument,
        default=256,
        help="random features of performer",
    )
    parser.add_argument(
        "--layout",
        choices=["random", "bigbird"],
        default="random",
        help="the layout sdpa-layout and flex-layout are given",
    )
    parser.add_argument(
        "--window",
        type=_non_negative_int_argument,
        default=None,
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
    for option in ("--batch", "--heads"):
        parser.add_argument(option, type=_positive_int_argument, default=1)
    parser.add_argument("--head-dim", type=_positive_int_argument, default=64)
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
        default=1,
        help="sweep this many times and pool the timings",
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
    return [
        *VARIANTS,
        *LOCAL_VARIANTS,
        *SPARSE_VARIANTS,
        *LOW_RANK_VARIANTS,
        *HIERARCHICAL_VARIANTS,
    ]


CAUSAL_VARIANTS = ("sdpa", "dense", "sliding-window", "performer")
"""The variants that take ``--causal``."""


def list_variants() -> str:
    """One line a variant: its name and its family (``--list``)."""
    families = [
        (VARIANTS, "exact: sdpa is the baseline (fused), dense the reference"),
        (LOCAL_VARIANTS, "local: needs --window (peers skip when missing)"),
        (SPARSE_VARIANTS, "sparse: --block-size, --density, --layout"),
        (LOW_RANK_VARIANTS, "low-rank: --rank, --landmarks, --features"),
        (HIERARCHICAL_VARIANTS, "hierarchical: --block-size, --levels"),
    ]
    width = max(map(len, all_variant_names()))
    lines = []
    for names, family in families:
        for name in names:
            causal = ", takes --causal" if name in CAUSAL_VARIANTS else ""
            lines.append(f"{name:<{width}}  {family}{causal}")
    lines.append(
        f"{'all':<{width}}  every variant above (window {ALL_WINDOW})"
    )
    return "\n".join(lines)


def _check_arguments(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> list[torch.device]:
    """Resolve ``all`` and the ``--quick`` defaults, refuse what cannot run
    (``parser.error``: exit status 2), and return the devices."""
    if args.quick:
        args.lengths = args.lengths or list(QUICK_LENGTHS)
        args.min_run_time = args.min_run_time or QUICK_MIN_RUN_TIME
    args.lengths = args.lengths or list(LENGTHS)
    args.min_run_time = args.min_run_time or MIN_RUN_TIME
    if "all" in args.variants:
        if len(args.variants) > 1:
            parser.error("argument --variants: 'all' comes alone")
        names = all_variant_names()
        if args.causal:
            names = [n for n in names if n in CAUSAL_VARIANTS]
        args.variants = names
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
            devices.append(benchmark.timing_device(name))
        except ValueError as error:
            parser.error(f"argument --device: {error}")
    local = [name for name in args.variants if name in LOCAL_VARIANTS]
    if local and args.window is None:
        parser.error(f"the variants {local} need --window")
    if args.causal and set(local) - {"sliding-window"}:
        parser.error(
            "with --causal only sdpa, dense and sliding-window are timed"
        )
    sparse = [name for name in args.variants if name in SPARSE_VARIANTS]
    if sparse and args.causal:
        parser.error(f"the variants {sparse} do not take --causal")
    low_rank = [name for name in args.variants if name in LOW_RANK_VARIANTS]
    if args.causal and set(low_rank) - {"performer"}:
        parser.error("with --causal only performer of the low-rank ones")
    hierarchical = [n for n in args.variants if n in HIERARCHICAL_VARIANTS]
    if hierarchical and args.causal:
        parser.error(f"the variants {hierarchical} do not take --causal")
    for check in (_check_settings, _check_sizes, _check_output_paths):
        problem = check(args, devices)
        if problem is not None:
            parser.error(problem)
    return devices


SETTINGS = {
    "coarse-to-fine": "--block-size, --top-k",
    "pyramid": "--block-size, --levels",
    "recursive": "--block-size, --levels",
    "nystrom": "--landmarks",
    "routing": "--clusters",
}
"""The variants whose settings must fit each length, and their options."""


def _check_settings(
    args: argparse.Namespace, devices: list[torch.device]
) -> str | None:
    """Why a variant's settings do not fit a length (naming the variant,
    the setting and the length), or None: checked for every variant and
    length before anything is timed."""
    for name in args.variants:
        for L in args.lengths:
            problem = _setting_problem(name, args, L)
            if problem is not None:
                return (
                    f"the variant {name} cannot run at length {L}: "
                    f"{problem} (options {SETTINGS[name]})"
                )
    return None


def _setting_problem(
    name: str, args: argparse.Namespace, L: int
) -> str | None:
    """What the variant's own check says of its settings at length ``L``."""
    from ._validation import check_block_choice
    from .attention import hierarchical

    try:
        if name == "coarse-to-fine":
            check_block_choice(args.block_size, args.top_k, 1, L, L)
        elif name in ("pyramid", "recursive"):
            hierarchical._check_levels(args.levels, args.block_size, L, L)
    except ValueError as error:
        return str(error)
    if name == "nystrom" and args.landmarks > L:
        return (
            f"--landmarks {args.landmarks} is more than the {L} tokens "
            f"(each landmark is the mean of a segment of them)"
        )
    if name == "routing" and args.clusters > L:
        return (
            f"--clusters {args.clusters} is more than the {L} keys (each "
            f"cluster starts at a key of its own)"
        )
    return None


def _check_sizes(
    args: argparse.Namespace, devices: list[torch.device]
) -> str | None:
    """Whether the inputs of every length fit the memory of each device at
    all (query, key, value and the output; drawn in float32 first)."""
    from ._validation import check_fits_in_memory

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
    """The lines under the hardware line: shape and variant parameters."""
    print(
        f"shape (batch, heads, L, head_dim) = "
        f"({args.batch}, {args.heads}, L, {args.head_dim})"
    )
    if args.window is not None:
        side = (args.window, 0) if args.causal else (args.window, args.window)
        print(f"window (left, right) = {side}")
    if any(name in SPARSE_VARIANTS for name in args.variants):
        print(
            f"block size {args.block_size}; block-sparse: random layout, "
            f"{args.density:g} of the blocks per row; routing: "
            f"{args.clusters} clusters; sdpa-layout, flex-layout: the "
            f"{args.layout} layout"
        )
    if any(name in LOW_RANK_VARIANTS for name in args.variants):
        print(
            f"linformer rank {args.rank}, nystrom {args.landmarks} "
            f"landmarks, performer {args.features} features"
        )
    if any(name in HIERARCHICAL_VARIANTS for name in args.variants):
        levels = "auto" if args.levels is None else args.levels
        print(
            f"hierarchical: block size {args.block_size}; pyramid, "
            f"recursive: levels {levels}; coarse-to-fine: top-k "
            f"{args.top_k}"
        )


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
    records: list[dict[str, object]] = []
    hardware: list[dict[str, object]] = []
    for device in devices:
        for dtype_name in args.dtype:
            dtype = DTYPES[dtype_name]
            summary = benchmark.hardware_summary(device, dtype)
            if records:
                print()
            print(summary)
            _print_settings(args)
            hardware.append(benchmark.describe_hardware(device, dtype))
            found = benchmark.sweep(
                {name: _variant(name, args) for name in args.variants},
                args.lengths,
                functools.partial(
                    benchmark.attention_inputs,
                    batch=args.batch,
                    heads=args.heads,
                    head_dim=args.head_dim,
                    dtype=dtype,
                    device=device,
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
                "hardware": summary,
            }
            found = [{**record, **shape} for record in found]
            print(benchmark_results.format_records(found))
            records += found
    _write_outputs(args, records, hardware)


def _write_outputs(
    args: argparse.Namespace,
    records: list[dict[str, object]],
    hardware: list[dict[str, object]],
) -> None:
    """``--json``, ``--csv`` and ``--plot``, each when asked; a line on
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
        "json": lambda path: benchmark_results.write_json(
            records,
            path,
            hardware=hardware,
            settings=settings,
            provenance=benchmark_results.provenance(args.command_line),
        ),
        "csv": lambda path: benchmark_results.write_csv(records, path),
        "plot": lambda path: benchmark_results.plot_records(
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


def _variant(name: str, args: argparse.Namespace) -> Callable[..., Tensor]:
    """The function the command line times for variant ``name``."""
    if name in VARIANTS:
        if args.causal:
            return functools.partial(VARIANTS[name], is_causal=True)
        return VARIANTS[name]
    from . import peers
    from .attention import sliding_window_attention

    if name in SPARSE_VARIANTS:
        return _sparse_variant(name, args)
    if name in LOW_RANK_VARIANTS:
        return _low_rank_variant(name, args)
    if name in HIERARCHICAL_VARIANTS:
        return _hierarchical_variant(name, args)
    w = args.window
    if name == "sliding-window":
        window = (w, 0) if args.causal else (w, w)
        return functools.partial(sliding_window_attention, window=window)
    builders = {
        "sdpa-mask": lambda L, device: peers.sdpa_masked_attention(
            w, L, device
        ),
        "flex": lambda L, device: peers.flex_attention(w, L, device),
        "local-attention": lambda L, device: peers.local_attention_package(
            w, L
        ),
        "longformer": lambda L, device: peers.longformer_attention(
            w, L, args.heads, args.head_dim
        ),
        "natten": lambda L, device: peers.natten_attention(
            w, L, args.batch * args.heads
        ),
    }
    return peers.per_length(builders[name])


def _low_rank_variant(
    name: str, args: argparse.Namespace
) -> Callable[..., Tensor]:
    """The function the command line times for low-rank variant ``name``;
    its projections or features are drawn once per length (seed 0)."""
    from .attention import (
        linformer_attention,
        make_linformer_projections,
        make_performer_features,
        nystrom_attention,
        performer_attention,
    )

    if name == "nystrom":
        return functools.partial(
            nystrom_attention, num_landmarks=args.landmarks
        )
    drawn: dict[int, Tensor] = {}

    def run(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        L, E = key.shape[-2], key.shape[-1]
        size = L if name == "linformer" else E
        if size not in drawn:
            g = torch.Generator().manual_seed(0)
            kind = {"dtype": key.dtype, "device": key.device}
            drawn[size] = (
                make_linformer_projections(
                    L, min(args.rank, L), generator=g, **kind
                )
                if name == "linformer"
                else make_performer_features(
                    args.features, E, generator=g, **kind
                )
            )
        if name == "linformer":
            return linformer_attention(query, key, value, proj_k=drawn[size])
        return performer_attention(
            query, key, value, features=drawn[size], is_causal=args.causal
        )

    return run


def _hierarchical_variant(
    name: str, args: argparse.Namespace
) -> Callable[..., Tensor]:
    """The function the command line times for hierarchical ``name``."""
    from .attention import hierarchical

    if name == "coarse-to-fine":
        return functools.partial(
            hierarchical.coarse_to_fine_attention,
            block_size=args.block_size,
            top_k=args.top_k,
        )
    function = (
        hierarchical.pyramid_attention
        if name == "pyramid"
        else hierarchical.recursive_attention
    )
    return functools.partial(
        function, block_size=args.block_size, levels=args.levels
    )


def sparse_layout(kind: str, L: int, args: argparse.Namespace) -> Tensor:
    """The layout the command line times at length ``L``: ``"random"``
    (``--density`` of the blocks of each row) or ``"bigbird"``; seeded with
    0 and shared by all heads."""
    from . import masks

    n = masks.n_blocks(L, args.block_size)
    generator = torch.Generator().manual_seed(0)
    if kind == "random":
        return masks.random_layout(
            n, density=args.density, generator=generator
        )
    return masks.bigbird_layout(
        n, window=1, global_blocks=2, random_blocks=3, generator=generator
    )


def _sparse_variant(
    name: str, args: argparse.Namespace
) -> Callable[..., Tensor]:
    """The function the command line times for sparse variant ``name``."""
    from . import peers
    from .attention import block_sparse_attention, routing_attention

    bs = args.block_size
    if name == "routing":
        return functools.partial(
            routing_attention, clusters=args.clusters, block_size=bs
        )

    def ours(kind: str) -> Callable[..., Tensor]:
        layouts: dict[int, Tensor] = {}

        def run(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
            L = query.shape[-2]
            if L not in layouts:
                layouts[L] = sparse_layout(kind, L, args).to(query.device)
            return block_sparse_attention(
                query, key, value, layout=layouts[L], block_size=bs
            )

        return run

    if name == "block-sparse":
        return ours("random")
    if name == "bigbird":
        return ours("bigbird")
    build = (
        peers.sdpa_layout_attention
        if name == "sdpa-layout"
        else peers.flex_layout_attention
    )
    return peers.per_length(
        lambda L, device: build(
            sparse_layout(args.layout, L, args).to(device), bs, L, device
        )
    )


if __name__ == "__main__":
    main()
