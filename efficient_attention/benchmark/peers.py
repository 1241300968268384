"""Other people's local and block-sparse attention, to time the package
against.

Each ``*_attention`` builder returns a function ``fn(query, key, value)`` on
``(B, H, L, E)`` tensors that computes local attention with a ``(w, w)``
window the way that library does, or raises ``PeerUnavailable`` saying why
it cannot run here (not installed, a length it does not support). The
chapter "Local attention" checks each against the package and times them;
``python -m efficient_attention.benchmark --variants sliding-window sdpa-mask
flex local-attention longformer natten --window W`` does the same over longer
sweeps.

- PyTorch's SDPA with the window as a dense boolean mask (no work skipped).
- FlexAttention (arXiv 2412.05496), compiled, with the window as a block
  mask: whole blocks outside the band are skipped.
- ``local-attention`` (lucidrains): buckets of ``w`` queries, each looking
  at its own and the neighbouring buckets.
- Longformer's "sliding chunks" from transformers (Beltagy et al. 2020):
  overlapping chunks of ``2w`` and a diagonal re-layout.
- NATTEN (Hassani et al. 2022): neighbourhood attention, whose windows
  shift at the borders (``border="shift"`` here).

For block-sparse layouts (chapter "Sparse attention"):
``sdpa_layout_attention`` (the layout as a dense boolean mask) and
``flex_layout_attention`` (compiled FlexAttention with the layout as its
block mask).
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import masks
from ..attention import flex

AttentionFn = Callable[[Tensor, Tensor, Tensor], Tensor]


class PeerUnavailable(NotImplementedError):
    """A peer cannot run here; the message says why.

    A ``NotImplementedError``, so ``benchmark.sweep`` records it as skipped.
    """


def _import(module: str, package: str):
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise PeerUnavailable(
            f"{package} is not installed (pip install {package}): {error}"
        ) from None


def sdpa_masked_attention(w: int, L: int, device: torch.device | str = "cpu"):
    """SDPA with the ``(w, w)`` window as an ``(L, L)`` boolean mask."""
    mask = masks.create_mask(masks.sliding_window(w), L, L, device=device)

    def sdpa_masked(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        return F.scaled_dot_product_attention(
            query, key, value, attn_mask=mask
        )

    return sdpa_masked


def _compiled_flex(device: torch.device | str):
    """Compiled FlexAttention, or ``PeerUnavailable`` saying why not."""
    reason = flex.unavailable_reason(device)
    if reason is not None:
        raise PeerUnavailable(reason)
    return flex.compiled_flex_attention()


def flex_attention(w: int, L: int, device: torch.device | str = "cpu"):
    """Compiled FlexAttention with the window as a block mask.

    The first call at each length compiles (tens of seconds on a CPU).
    """
    compiled = _compiled_flex(device)
    from torch.nn.attention.flex_attention import create_block_mask

    def window(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return (kv_idx >= q_idx - w) & (kv_idx <= q_idx + w)

    block_mask = create_block_mask(
        window, None, None, L, L, device=device
    )

    def flex_window(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        return compiled(query, key, value, block_mask=block_mask)

    return flex_window


def sdpa_layout_attention(
    layout: Tensor, block_size: int, L: int, device: torch.device | str = "cpu"
):
    """SDPA with a block layout as an ``(L, L)`` (or ``(H, L, L)``) boolean
    mask: every score is still computed, then masked."""
    heads = layout.shape[0] if layout.dim() == 3 else None
    mask = masks.create_mask(
        masks.from_block_layout(layout, block_size), L, L, heads=heads,
        device=device,
    )  # fmt: skip

    def sdpa_layout(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        return F.scaled_dot_product_attention(
            query, key, value, attn_mask=mask
        )

    return sdpa_layout


def flex_layout_attention(
    layout: Tensor, block_size: int, L: int, device: torch.device | str = "cpu"
):
    """Compiled FlexAttention with a block layout as its block mask, in
    blocks of ``block_size`` (the blocks it skips are those of the layout).

    The first call at each length compiles (tens of seconds on a CPU).
    """
    compiled = _compiled_flex(device)
    from torch.nn.attention.flex_attention import create_block_mask
    heads = layout.shape[0] if layout.dim() == 3 else None
    block_mask = create_block_mask(
        masks.from_block_layout(layout, block_size), None, heads, L, L,
        device=device, BLOCK_SIZE=block_size,
    )  # fmt: skip

    def flex_layout(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        return compiled(query, key, value, block_mask=block_mask)

    return flex_layout


def local_attention_package(w: int, L: int):
    """lucidrains' ``local-attention``, buckets of ``w`` with exact windows."""
    module = _import("local_attention", "local-attention")
    if L % w:
        raise PeerUnavailable(
            f"local-attention needs L divisible by the window ({w}); "
            f"got L={L}."
        )
    layer = module.LocalAttention(
        window_size=w,
        causal=False,
        look_backward=1,
        look_forward=1,
        exact_windowsize=True,
        use_rotary_pos_emb=False,
    ).eval()

    def local_attention(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        return layer(query, key, value)

    return local_attention


def longformer_attention(w: int, L: int, heads: int, head_dim: int):
    """Longformer's sliding chunks (transformers), without global tokens."""
    module = _import(
        "transformers.models.longformer.modeling_longformer", "transformers"
    )
    if L % (2 * w):
        raise PeerUnavailable(
            f"Longformer's sliding chunks need L divisible by 2w ({2 * w}); "
            f"got L={L}."
        )
    config = module.LongformerConfig(
        attention_window=[2 * w],
        num_attention_heads=heads,
        hidden_size=heads * head_dim,
    )
    layer = module.LongformerSelfAttention(config, layer_id=0).eval()

    def longformer(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        # (B, H, L, E) -> (B, L, H, E), the layout Longformer works in
        q, k, v = (t.transpose(1, 2) for t in (query, key, value))
        q = q * q.shape[-1] ** -0.5
        scores = layer._sliding_chunks_query_key_matmul(q, k, w)
        weights = torch.softmax(scores, dim=-1, dtype=torch.float32)
        out = layer._sliding_chunks_matmul_attn_probs_value(
            weights.to(v.dtype), v, w
        )  # (B, L, H, E)
        return out.transpose(1, 2)

    return longformer


NATTEN_CPU_LIMIT_BYTES = 2**31
"""On a CPU NATTEN builds the whole score matrix; above this size (2 GiB)
``natten_attention`` declines rather than risk the machine's memory."""


def natten_attention(w: int, L: int | None = None, heads: int = 1):
    """NATTEN's 1-D neighbourhood attention, kernel ``2w + 1``.

    Its windows shift at the borders: compare with ``border="shift"``. On a
    CPU NATTEN runs FlexAttention without compiling it, which builds the
    whole ``L x L`` score matrix.
    """
    natten = _import("natten", "natten")
    if L is not None and 2 * w + 1 > L:
        raise PeerUnavailable(
            f"NATTEN needs the window's {2 * w + 1} keys to fit in the "
            f"sequence; got L={L}."
        )
    if L is not None and 4 * L * L * heads > NATTEN_CPU_LIMIT_BYTES:
        raise PeerUnavailable(
            f"NATTEN's CPU path would build a "
            f"{4 * L * L * heads / 2**30:.0f} GiB score matrix at L={L} "
            f"with {heads} heads (the limit here is 2 GiB)."
        )

    def neighbourhood(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        q, k, v = (t.transpose(1, 2).contiguous() for t in (query, key, value))
        with warnings.catch_warnings():
            # On a CPU NATTEN runs FlexAttention uncompiled, and says so at
            # every call; the docstring says it once.
            warnings.simplefilter("ignore")
            out = natten.na1d(q, k, v, kernel_size=2 * w + 1)
        return out.transpose(1, 2)

    return neighbourhood


def per_length(
    build: Callable[[int, torch.device], AttentionFn],
) -> AttentionFn:
    """``fn(query, key, value)`` that builds its peer on first use at each
    length ``L`` and device (``build(L, device)``), then reuses it.

    Raises ``PeerUnavailable`` (when called) where the peer cannot run.
    """
    built: dict[tuple[int, torch.device], AttentionFn | str] = {}

    def run(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        where = (query.shape[-2], query.device)
        if where not in built:
            try:
                built[where] = build(*where)
            except PeerUnavailable as error:
                built[where] = str(error)
        peer = built[where]
        if isinstance(peer, str):
            raise PeerUnavailable(peer)
        return peer(query, key, value)

    return run


def local_peers(
    w: int,
    L: int,
    *,
    heads: int,
    head_dim: int,
    device: torch.device | str = "cpu",
) -> dict[str, AttentionFn | str]:
    """Every peer for a ``(w, w)`` window at length ``L``: name -> function,
    or name -> the reason it cannot run here. The names are the command
    line's (``variants.get("sliding-window").peers``)."""
    builders = {
        "sdpa-mask": lambda: sdpa_masked_attention(w, L, device),
        "flex": lambda: flex_attention(w, L, device),
        "local-attention": lambda: local_attention_package(w, L),
        "longformer": lambda: longformer_attention(w, L, heads, head_dim),
        "natten": lambda: natten_attention(w, L, heads),
    }
    peers: dict[str, AttentionFn | str] = {}
    for name, build in builders.items():
        try:
            peers[name] = build()
        except PeerUnavailable as error:
            peers[name] = str(error)
    return peers
