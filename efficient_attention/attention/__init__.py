"""Attention variants, one file per family.

Each is shaped like ``F.scaled_dot_product_attention``.
"""

from .analysis import effective_attention
from .dense import dense_attention
from .local import AdaptiveSpanAttention, sliding_window_attention

__all__ = [
    "AdaptiveSpanAttention",
    "dense_attention",
    "effective_attention",
    "sliding_window_attention",
]
