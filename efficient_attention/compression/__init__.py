"""Model compression: pruning, quantization, distillation, low-rank weights.

Each module holds one family and names the papers it implements; the
chapters "Pruning", "Quantization" and "Distillation" teach the first
three on the MRPC teacher, "Low-rank attention" the factorised weights.
Imported on first use: ``ea.compression.pruning``.
"""

from __future__ import annotations

from . import distillation, low_rank_weights, pruning, quantization

__all__ = ["distillation", "low_rank_weights", "pruning", "quantization"]
