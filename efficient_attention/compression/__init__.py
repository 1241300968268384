"""Model compression: pruning and quantization (distillation joins later).

Each module holds one family and names the papers it implements; the
chapters "Pruning" and "Quantization" teach them on the MRPC teacher.
Imported on first use: ``ea.compression.pruning``.
"""

from __future__ import annotations

from . import pruning, quantization

__all__ = ["pruning", "quantization"]
