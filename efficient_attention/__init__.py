"""efficient_attention: the code of "Efficient Transformers, hands-on".

One function per attention variant, shaped like
``F.scaled_dot_product_attention``; mask functions for the patterns; cost
models; benchmarking, attention across processes (``distributed``),
plotting and notebook helpers. Import it as
``import efficient_attention as ea``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from . import cost, masks
from .attention import (
    AdaptiveSpanAttention,
    ApproximationError,
    BlockPattern,
    approximation_error,
    block_pattern,
    block_sparse_attention,
    coarse_to_fine_attention,
    dense_attention,
    effective_attention,
    hierarchical_levels,
    kmeans_clusters,
    linformer_attention,
    make_linformer_projections,
    make_performer_features,
    nystrom_attention,
    performer_attention,
    pyramid_attention,
    recursive_attention,
    relative_error,
    routing_attention,
    sliding_window_attention,
    sparse_attention,
    top_k_attention,
)
from .encoder import EncoderLayer
from .notebook import glue, pick_device, setup_notebook, show_source

__version__ = "0.1.0"

# Imported on first use (data, models and training import transformers).
_LAZY_MODULES = {
    "benchmark",
    "compression",
    "data",
    "distributed",
    "low_rank_weights",
    "models",
    "plotting",
    "significance",
    "training",
    "widgets",
}

__all__ = [
    "ApproximationError",
    "approximation_error",
    "linformer_attention",
    "low_rank_weights",
    "make_linformer_projections",
    "make_performer_features",
    "nystrom_attention",
    "performer_attention",
    "AdaptiveSpanAttention",
    "BlockPattern",
    "EncoderLayer",
    "block_pattern",
    "block_sparse_attention",
    "coarse_to_fine_attention",
    "hierarchical_levels",
    "pyramid_attention",
    "recursive_attention",
    "relative_error",
    "kmeans_clusters",
    "routing_attention",
    "sparse_attention",
    "top_k_attention",
    "benchmark",
    "compression",
    "cost",
    "data",
    "dense_attention",
    "distributed",
    "effective_attention",
    "glue",
    "masks",
    "models",
    "pick_device",
    "plotting",
    "setup_notebook",
    "show_source",
    "significance",
    "sliding_window_attention",
    "training",
    "widgets",
    "__version__",
]


def __getattr__(name: str) -> ModuleType:
    if name in _LAZY_MODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
