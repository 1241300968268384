"""Attention variants, one file per family.

Each is shaped like ``F.scaled_dot_product_attention``.
"""

from .analysis import effective_attention
from .dense import dense_attention
from .hierarchical import (
    coarse_to_fine_attention,
    hierarchical_levels,
    pyramid_attention,
    recursive_attention,
)
from .local import AdaptiveSpanAttention, sliding_window_attention
from .sparse import (
    BlockPattern,
    block_pattern,
    block_sparse_attention,
    block_sparse_matmul,
    csr_attention,
    kmeans_clusters,
    routing_attention,
    sparse_attention,
    top_k_attention,
)

__all__ = [
    "AdaptiveSpanAttention",
    "BlockPattern",
    "block_pattern",
    "block_sparse_attention",
    "block_sparse_matmul",
    "coarse_to_fine_attention",
    "hierarchical_levels",
    "pyramid_attention",
    "recursive_attention",
    "csr_attention",
    "kmeans_clusters",
    "routing_attention",
    "sparse_attention",
    "top_k_attention",
    "dense_attention",
    "effective_attention",
    "sliding_window_attention",
]
