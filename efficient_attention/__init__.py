"""efficient_attention: the code of "Efficient Transformers, hands-on".

One function per attention variant, shaped like
``F.scaled_dot_product_attention``, and the layers built on them, one
folder each: ``attention`` (the variants), ``compression`` (pruning,
quantization, distillation, low-rank weights), ``nlp`` (MRPC, the
pretrained encoder, training), ``benchmark`` (timing, FLOP counts, peers,
statistics; also the command line), ``viz`` (plots and widgets) and
``parallel`` (attention across processes). At the root: mask functions
(``masks``), the table of variants (``variants``), the C++ kernels
(``cpu_kernels``) and the notebook helpers. Import it as ``import
efficient_attention as ea``; every module has a short name there
(``ea.training``, ``ea.cost``, ``ea.widgets``), imported on first use.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from . import masks
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
from .nlp.encoder import EncoderLayer
from .notebook import glue, pick_device, setup_notebook, show_source

__version__ = "0.1.0"

# The short names of the modules, imported on first use (data, models and
# training import transformers), and where each lives.
_LAZY_MODULES = {
    "benchmark": "benchmark",
    "compression": "compression",
    "cost": "benchmark.cost",
    "data": "nlp.data",
    "distributed": "parallel.distributed",
    "encoder": "nlp.encoder",
    "long_range": "nlp.long_range",
    "low_rank_weights": "compression.low_rank_weights",
    "models": "nlp.models",
    "peers": "benchmark.peers",
    "plotting": "viz.plotting",
    "significance": "benchmark.significance",
    "static_explorer": "viz.static_explorer",
    "tasks": "nlp.tasks",
    "training": "nlp.training",
    "variants": "variants",
    "widgets": "viz.widgets",
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
    "encoder",
    "long_range",
    "peers",
    "static_explorer",
    "tasks",
    "variants",
    "__version__",
]


def __getattr__(name: str) -> ModuleType:
    if name in _LAZY_MODULES:
        return importlib.import_module(f".{_LAZY_MODULES[name]}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
