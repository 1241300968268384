"""One table of every attention variant the book times, and their peers.

Each ``Variant`` says what a variant is (its family, whether it is exact,
whether it takes a causal mask, which chapter shows it, which peers
implement the same pattern) and how its function is built from the common
``Settings`` (window, block size, density, rank, landmarks, features,
levels...). The command line ``python -m efficient_attention.benchmark``
(its ``--variants`` choices, ``--list``, argument checks and causal rules),
the Leaderboard and Choosing chapters, the widgets' defaults and the
property suite all read this table: adding a variant is writing its
function and one ``register(Variant(...))``.

    >>> fn = build("sliding-window", Settings(window=16))
    >>> fn(q, k, v)  # (B, H, L, E) -> (B, H, L, Ev)

It implements no paper; each variant's function names its own.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from . import masks
from .attention import (
    block_sparse_attention,
    coarse_to_fine_attention,
    dense_attention,
    linformer_attention,
    make_linformer_projections,
    make_performer_features,
    nystrom_attention,
    performer_attention,
    pyramid_attention,
    recursive_attention,
    routing_attention,
    sliding_window_attention,
)

AttentionFn = Callable[[Tensor, Tensor, Tensor], Tensor]

FAMILIES = ("exact", "local", "sparse", "low-rank", "hierarchical")
"""The families, in the order the book and ``--list`` show them."""


@dataclass(frozen=True)
class Settings:
    """The common settings every variant's arguments are built from.

    One set of defaults for the command line (its options of the same
    names), the widgets, the chapters and the tests. Random layouts,
    projections and features are drawn with ``seed``.
    """

    window: int | None = None
    """Keys on each side of the query: ``(window, window)``, or
    ``(window, 0)`` with ``causal``."""
    causal: bool = False
    block_size: int = 64
    density: float = 0.1
    """Share of key blocks each query block keeps in a random layout."""
    layout: str = "random"
    """The layout ``sdpa-layout`` and ``flex-layout`` are given."""
    bigbird_window: int = 1
    global_blocks: int = 2
    random_blocks: int = 3
    """BigBird's layout: window, global and random blocks."""
    clusters: int = 16
    top_k: int = 4
    levels: int | None = None
    """Levels of pyramid and recursive (None: the coarsest holds at most
    4 blocks)."""
    rank: int = 256
    landmarks: int = 64
    features: int = 256
    batch: int = 1
    heads: int = 1
    head_dim: int = 64
    seed: int = 0

    def with_options(self, **changes: object) -> Settings:
        """A copy with ``changes`` (``None`` values keep the default)."""
        given = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **given)


@dataclass(frozen=True)
class Variant:
    """One attention variant or peer, and what every consumer needs.

    ``build(settings)`` returns ``fn(query, key, value)``; ``function``:
    the package's function it runs (None for a peer). ``options``: the
    ``Settings`` fields it reads (``"window"`` there means it needs one).
    ``check(settings, L)``: why the settings cannot run at length ``L``,
    or None. ``mask(settings, L)``: for an exact pattern, the ``(L, L)``
    boolean mask it equals dense attention with. ``peer``: whose
    implementation it is (None: the package's own); ``peers``: the names
    of peers of the same pattern. ``chapter``: the book's notebook that
    shows it.
    """

    name: str
    family: str
    summary: str
    build: Callable[[Settings], AttentionFn]
    chapter: str
    function: Callable[..., Tensor] | None = None
    exact: bool = True
    causal: bool = False
    options: tuple[str, ...] = ()
    check: Callable[[Settings, int], str | None] | None = None
    mask: Callable[[Settings, int], Tensor | None] | None = None
    peer: str | None = None
    peers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(
                f"Variant {self.name!r}: family must be one of {FAMILIES}; "
                f"got {self.family!r}"
            )
        unknown = set(self.options) - {
            f.name for f in dataclasses.fields(Settings)
        }
        if unknown:
            raise ValueError(
                f"Variant {self.name!r}: options {sorted(unknown)} are not "
                f"fields of Settings"
            )


REGISTRY: dict[str, Variant] = {}
"""Every variant by name, in the order they were registered."""


def register(variant: Variant) -> Variant:
    """Add ``variant`` to the registry; a name taken is a ValueError."""
    if variant.name in REGISTRY or variant.name == "all":
        raise ValueError(
            f"a variant named {variant.name!r} is registered already; "
            f"choose another name"
        )
    REGISTRY[variant.name] = variant
    return variant


@contextmanager
def registered(variant: Variant) -> Iterator[Variant]:
    """Register ``variant`` for the ``with`` block only (tests, trials)."""
    register(variant)
    try:
        yield variant
    finally:
        del REGISTRY[variant.name]


def get(name: str) -> Variant:
    """The variant ``name``, or a KeyError listing the names."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"no variant {name!r}; registered: {', '.join(REGISTRY)}"
        ) from None


def names(
    family: str | None = None,
    *,
    causal: bool | None = None,
    peer: bool | None = None,
) -> list[str]:
    """Registered names, by family order, optionally only one ``family``,
    those that take (or not) ``causal``, peers or the package's own."""
    chosen = [
        v
        for f in FAMILIES
        for v in REGISTRY.values()
        if v.family == f
        and (family is None or v.family == family)
        and (causal is None or v.causal == causal)
        and (peer is None or (v.peer is not None) == peer)
    ]
    return [v.name for v in chosen]


def families() -> dict[str, list[str]]:
    """Family -> the names in it (every family, in the book's order)."""
    return {family: names(family) for family in FAMILIES}


def build(name: str, settings: Settings) -> AttentionFn:
    """``fn(query, key, value)`` of variant ``name`` with ``settings``."""
    variant = get(name)
    if "window" in variant.options and settings.window is None:
        raise ValueError(f"the variant {name} needs a window; none given")
    if settings.causal and not variant.causal:
        raise ValueError(f"the variant {name} does not take causal")
    return variant.build(settings)


def setting_problem(name: str, settings: Settings, L: int) -> str | None:
    """Why variant ``name``'s settings cannot run at length ``L``, or
    None (its own check, naming the setting)."""
    variant = get(name)
    return None if variant.check is None else variant.check(settings, L)


# -- builders of the package's variants -----------------------------------


def _window(settings: Settings) -> tuple[int, int]:
    w = settings.window
    return (w, 0) if settings.causal else (w, w)


def _exact(function: AttentionFn) -> Callable[[Settings], AttentionFn]:
    def make(settings: Settings) -> AttentionFn:
        if settings.causal:
            return functools.partial(function, is_causal=True)
        return function

    return make


def _causal_mask(settings: Settings, L: int) -> Tensor | None:
    return masks.create_mask(masks.causal, L, L) if settings.causal else None


def _sliding_window(settings: Settings) -> AttentionFn:
    return functools.partial(
        sliding_window_attention, window=_window(settings)
    )


def _window_mask(settings: Settings, L: int) -> Tensor:
    return masks.create_mask(masks.sliding_window(_window(settings)), L, L)


def sparse_layout(kind: str, L: int, settings: Settings) -> Tensor:
    """The layout of ``kind`` (``"random"``: ``density`` of the blocks of
    each row; ``"bigbird"``) at length ``L``, seeded, shared by all
    heads."""
    n = masks.n_blocks(L, settings.block_size)
    generator = torch.Generator().manual_seed(settings.seed)
    if kind == "random":
        return masks.random_layout(
            n, density=settings.density, generator=generator
        )
    return masks.bigbird_layout(
        n,
        window=settings.bigbird_window,
        global_blocks=settings.global_blocks,
        random_blocks=settings.random_blocks,
        generator=generator,
    )


def _block_sparse(kind: str) -> Callable[[Settings], AttentionFn]:
    def make(settings: Settings) -> AttentionFn:
        layouts: dict[int, Tensor] = {}

        def run(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
            L = query.shape[-2]
            if L not in layouts:
                layouts[L] = sparse_layout(kind, L, settings)
            return block_sparse_attention(
                query,
                key,
                value,
                layout=layouts[L].to(query.device),
                block_size=settings.block_size,
            )

        return run

    return make


def _layout_mask(kind: str) -> Callable[[Settings, int], Tensor]:
    def mask(settings: Settings, L: int) -> Tensor:
        layout = sparse_layout(kind, L, settings)
        b = settings.block_size
        full = layout.repeat_interleave(b, 0).repeat_interleave(b, 1)
        return full[:L, :L]

    return mask


def _routing(settings: Settings) -> AttentionFn:
    return functools.partial(
        routing_attention,
        clusters=settings.clusters,
        block_size=settings.block_size,
    )


def _count_fits(option: str, what: str) -> Callable[[Settings, int], str]:
    def check(settings: Settings, L: int) -> str | None:
        count = getattr(settings, option)
        if count > L:
            return f"{option} {count} is more than the {L} {what}"
        return None

    return check


def _nystrom(settings: Settings) -> AttentionFn:
    return functools.partial(
        nystrom_attention, num_landmarks=settings.landmarks
    )


def _drawn_per_size(
    draw: Callable[[Settings, Tensor], Tensor],
    size_of: Callable[[Tensor], int],
    attend: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor],
) -> Callable[[Settings], AttentionFn]:
    """A builder whose random matrix is drawn once per size (seeded)."""

    def make(settings: Settings) -> AttentionFn:
        drawn: dict[tuple, Tensor] = {}

        def run(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
            where = (size_of(key), key.dtype, key.device)
            if where not in drawn:
                drawn[where] = draw(settings, key)
            return attend(query, key, value, drawn[where])

        return run

    return make


def _linformer_projection(settings: Settings, key: Tensor) -> Tensor:
    L = key.shape[-2]
    return make_linformer_projections(
        L,
        min(settings.rank, L),
        kind="mean",
        dtype=key.dtype,
        device=key.device,
    )


def _performer_features(settings: Settings, key: Tensor) -> Tensor:
    return make_performer_features(
        settings.features,
        key.shape[-1],
        generator=torch.Generator().manual_seed(settings.seed),
        dtype=key.dtype,
        device=key.device,
    )


def _performer(settings: Settings) -> AttentionFn:
    return _drawn_per_size(
        _performer_features,
        lambda key: key.shape[-1],
        lambda q, k, v, features: performer_attention(
            q, k, v, features=features, is_causal=settings.causal
        ),
    )(settings)


def _multilevel(function: AttentionFn) -> Callable[[Settings], AttentionFn]:
    def make(settings: Settings) -> AttentionFn:
        return functools.partial(
            function, block_size=settings.block_size, levels=settings.levels
        )

    return make


def _check_levels(settings: Settings, L: int) -> str | None:
    from .attention import hierarchical

    try:
        hierarchical._check_levels(settings.levels, settings.block_size, L, L)
    except ValueError as error:
        return str(error)
    return None


def _coarse_to_fine(settings: Settings) -> AttentionFn:
    return functools.partial(
        coarse_to_fine_attention,
        block_size=settings.block_size,
        top_k=settings.top_k,
    )


def _check_top_k(settings: Settings, L: int) -> str | None:
    from ._validation import check_block_choice

    try:
        check_block_choice(settings.block_size, settings.top_k, 1, L, L)
    except ValueError as error:
        return str(error)
    return None


# -- builders of the peers ------------------------------------------------


def _peer(make: Callable[[Settings, int, torch.device], AttentionFn]):
    """A peer built on first use at each length and device."""

    def builder(settings: Settings) -> AttentionFn:
        from .benchmark import peers

        return peers.per_length(lambda L, device: make(settings, L, device))

    return builder


def _sdpa_mask(settings: Settings, L: int, device) -> AttentionFn:
    from .benchmark import peers

    return peers.sdpa_masked_attention(settings.window, L, device)


def _flex(settings: Settings, L: int, device) -> AttentionFn:
    from .benchmark import peers

    return peers.flex_attention(settings.window, L, device)


def _local_attention(settings: Settings, L: int, device) -> AttentionFn:
    from .benchmark import peers

    return peers.local_attention_package(settings.window, L)


def _longformer(settings: Settings, L: int, device) -> AttentionFn:
    from .benchmark import peers

    return peers.longformer_attention(
        settings.window, L, settings.heads, settings.head_dim
    )


def _natten(settings: Settings, L: int, device) -> AttentionFn:
    from .benchmark import peers

    return peers.natten_attention(
        settings.window, L, settings.batch * settings.heads
    )


def _layout_peer(which: str):
    def make(settings: Settings, L: int, device) -> AttentionFn:
        from .benchmark import peers

        build_peer = (
            peers.sdpa_layout_attention
            if which == "sdpa"
            else peers.flex_layout_attention
        )
        layout = sparse_layout(settings.layout, L, settings).to(device)
        return build_peer(layout, settings.block_size, L, device)

    return make


# -- the table ------------------------------------------------------------

_WINDOW_PEERS = (
    "sdpa-mask",
    "flex",
    "local-attention",
    "longformer",
    "natten",
)
_LAYOUT_PEERS = ("sdpa-layout", "flex-layout")
_SPARSE_OPTIONS = ("block_size", "density", "layout")

for _variant in (
    Variant(
        "sdpa",
        "exact",
        "F.scaled_dot_product_attention, fused: the baseline",
        _exact(F.scaled_dot_product_attention),
        "01_why_attention_is_slow",
        function=F.scaled_dot_product_attention,
        causal=True,
        mask=_causal_mask,
        peer="PyTorch",
    ),
    Variant(
        "dense",
        "exact",
        "dense_attention, unfused: the reference",
        _exact(dense_attention),
        "01_why_attention_is_slow",
        function=dense_attention,
        causal=True,
        mask=_causal_mask,
        peers=("sdpa",),
    ),
    Variant(
        "sliding-window",
        "local",
        "sliding_window_attention, (W, W) or (W, 0) with causal",
        _sliding_window,
        "local_attention",
        function=sliding_window_attention,
        causal=True,
        options=("window",),
        mask=_window_mask,
        peers=_WINDOW_PEERS,
    ),
    Variant(
        "sdpa-mask",
        "local",
        "SDPA with the window as a dense boolean mask",
        _peer(_sdpa_mask),
        "local_attention",
        options=("window",),
        mask=_window_mask,
        peer="PyTorch",
    ),
    Variant(
        "flex",
        "local",
        "compiled FlexAttention with the window as a block mask",
        _peer(_flex),
        "local_attention",
        options=("window",),
        mask=_window_mask,
        peer="PyTorch",
    ),
    Variant(
        "local-attention",
        "local",
        "lucidrains' local-attention: buckets of W queries",
        _peer(_local_attention),
        "local_attention",
        options=("window",),
        peer="local-attention",
    ),
    Variant(
        "longformer",
        "local",
        "Longformer's sliding chunks (transformers)",
        _peer(_longformer),
        "local_attention",
        options=("window", "heads", "head_dim"),
        peer="transformers",
    ),
    Variant(
        "natten",
        "local",
        "NATTEN neighbourhood attention (windows shift at the borders)",
        _peer(_natten),
        "local_attention",
        options=("window", "batch", "heads"),
        peer="natten",
    ),
    Variant(
        "block-sparse",
        "sparse",
        "block_sparse_attention on a random layout of density",
        _block_sparse("random"),
        "sparse_attention",
        function=block_sparse_attention,
        options=("block_size", "density"),
        mask=_layout_mask("random"),
        peers=_LAYOUT_PEERS,
    ),
    Variant(
        "bigbird",
        "sparse",
        "block_sparse_attention on BigBird's layout",
        _block_sparse("bigbird"),
        "sparse_attention",
        function=block_sparse_attention,
        options=(
            "block_size",
            "bigbird_window",
            "global_blocks",
            "random_blocks",
        ),
        mask=_layout_mask("bigbird"),
        peers=_LAYOUT_PEERS,
    ),
    Variant(
        "routing",
        "sparse",
        "routing_attention: k-means clusters of queries and keys",
        _routing,
        "sparse_attention",
        function=routing_attention,
        options=("clusters", "block_size"),
        check=_count_fits("clusters", "keys (each cluster starts at one)"),
    ),
    Variant(
        "sdpa-layout",
        "sparse",
        "SDPA with the layout as a dense boolean mask",
        _peer(_layout_peer("sdpa")),
        "sparse_attention",
        options=_SPARSE_OPTIONS,
        peer="PyTorch",
    ),
    Variant(
        "flex-layout",
        "sparse",
        "compiled FlexAttention with the layout as a block mask",
        _peer(_layout_peer("flex")),
        "sparse_attention",
        options=_SPARSE_OPTIONS,
        peer="PyTorch",
    ),
    Variant(
        "linformer",
        "low-rank",
        "linformer_attention: keys projected to rank by segment means",
        _drawn_per_size(
            _linformer_projection,
            lambda key: key.shape[-2],
            lambda q, k, v, proj: linformer_attention(q, k, v, proj_k=proj),
        ),
        "low_rank_attention",
        function=linformer_attention,
        exact=False,
        options=("rank",),
    ),
    Variant(
        "nystrom",
        "low-rank",
        "nystrom_attention: landmarks as segment means",
        _nystrom,
        "low_rank_attention",
        function=nystrom_attention,
        exact=False,
        options=("landmarks",),
        check=_count_fits(
            "landmarks", "tokens (each landmark is a segment's mean)"
        ),
    ),
    Variant(
        "performer",
        "low-rank",
        "performer_attention: orthogonal random features (seeded)",
        _performer,
        "low_rank_attention",
        function=performer_attention,
        exact=False,
        causal=True,
        options=("features",),
    ),
    Variant(
        "pyramid",
        "hierarchical",
        "pyramid_attention: pooled keys, coarser with distance",
        _multilevel(pyramid_attention),
        "hierarchical_attention",
        function=pyramid_attention,
        exact=False,
        options=("block_size", "levels"),
        check=_check_levels,
    ),
    Variant(
        "recursive",
        "hierarchical",
        "recursive_attention: the pyramid computed level by level",
        _multilevel(recursive_attention),
        "hierarchical_attention",
        function=recursive_attention,
        exact=False,
        options=("block_size", "levels"),
        check=_check_levels,
    ),
    Variant(
        "coarse-to-fine",
        "hierarchical",
        "coarse_to_fine_attention: top_k key blocks per query block",
        _coarse_to_fine,
        "hierarchical_attention",
        function=coarse_to_fine_attention,
        exact=False,
        options=("block_size", "top_k"),
        check=_check_top_k,
    ),
):
    register(_variant)
del _variant
