"""Attention variants, one file per family.

Each is shaped like ``F.scaled_dot_product_attention``.
"""

from .analysis import effective_attention
from .dense import dense_attention

__all__ = ["dense_attention", "effective_attention"]
