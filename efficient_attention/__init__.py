"""efficient_attention: every implementation of the book "Efficient Transformers, hands-on".

One function per attention variant, shaped like ``F.scaled_dot_product_attention``;
mask functions for the patterns; cost models; benchmarking, plotting and notebook
helpers. Import it as ``import efficient_attention as ea``.
"""
from . import benchmark, cost, masks, plotting
from .attention import dense_attention, effective_attention
from .encoder import EncoderLayer
from .notebook import pick_device, setup_notebook, show_source

__version__ = "0.1.0"

__all__ = [
    "EncoderLayer",
    "benchmark",
    "cost",
    "dense_attention",
    "effective_attention",
    "masks",
    "pick_device",
    "plotting",
    "setup_notebook",
    "show_source",
    "__version__",
]
