"""Attention variants, one file per family.

Each is shaped like ``F.scaled_dot_product_attention``.
"""

from .analysis import (
    ApproximationError,
    approximation_error,
    effective_attention,
    relative_error,
)
from .block_sparse import (
    BlockPattern,
    block_pattern,
    block_sparse_attention,
    sparse_attention,
)
from .dense import dense_attention
from .hierarchical import (
    coarse_to_fine_attention,
    hierarchical_levels,
    pyramid_attention,
    recursive_attention,
)
from .local import AdaptiveSpanAttention, sliding_window_attention
from .low_rank import (
    iterative_pinv,
    linformer_attention,
    make_linformer_projections,
    nystrom_attention,
    segment_means,
)
from .random_features import (
    make_performer_features,
    performer_attention,
    softmax_kernel_features,
)
from .routing import kmeans_clusters, routing_attention, top_k_attention
from .sparse_products import block_sparse_matmul, csr_attention

__all__ = [
    "ApproximationError",
    "approximation_error",
    "iterative_pinv",
    "linformer_attention",
    "make_linformer_projections",
    "make_performer_features",
    "nystrom_attention",
    "performer_attention",
    "segment_means",
    "softmax_kernel_features",
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
    "relative_error",
    "sliding_window_attention",
]
