"""Model compression: pruning, quantization and distillation.

Each module holds one family and names the papers it implements; the
chapters "Pruning", "Quantization" and "Distillation" teach them on the
MRPC teacher.
Imported on first use: ``ea.compression.pruning``.
"""

from __future__ import annotations

from . import distillation, pruning, quantization

__all__ = ["distillation", "pruning", "quantization"]
