"""A plain Transformer encoder layer whose attention function can be swapped.

The layer is BERT's (Devlin et al. 2018, arXiv 1810.04805): post-norm, GELU
feed-forward, no dropout (this book times inference). Chapter 1 times it to
show which share of a layer's time goes to attention; later chapters plug
their own attention variants into it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from ._validation import check_heads_divide, check_positive_int, check_tensor

AttentionFn = Callable[[Tensor, Tensor, Tensor], Tensor]


class EncoderLayer(nn.Module):
    """One post-norm encoder layer: ``x = LN(x + MHA(x)); x = LN(x + FFN(x))``.

    Args:
        d_model: hidden size ``d``. heads: attention heads (``E = d / heads``).
        d_ff: feed-forward inner size (``4 d`` in BERT).
        attention: ``fn(query, key, value) -> out`` on ``(B, H, L, E)``
            tensors; default ``F.scaled_dot_product_attention``.
        layer_norm_eps: LayerNorm epsilon (BERT uses 1e-12).

    Shape: input and output ``(B, L, d)``.

    Equivalent to: ``nn.TransformerEncoderLayer(d, heads, d_ff, dropout=0.0,
    activation="gelu", batch_first=True)`` with the same weights (tested).
    """

    def __init__(
        self,
        d_model: int,
        heads: int,
        d_ff: int,
        *,
        attention: AttentionFn = F.scaled_dot_product_attention,
        layer_norm_eps: float = 1e-12,
    ) -> None:
        super().__init__()
        for name, value in (
            ("d_model", d_model),
            ("heads", heads),
            ("d_ff", d_ff),
        ):
            check_positive_int(name, value)
        check_heads_divide(d_model, heads)
        if not callable(attention):
            raise ValueError(
                f"attention must be a function; "
                f"got {type(attention).__name__}."
            )
        self.heads = heads
        self.attention = attention
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model)
        self.value = nn.Linear(d_model, d_model)
        self.output = nn.Linear(d_model, d_model)
        self.attention_norm = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.intermediate = nn.Linear(d_model, d_ff)
        self.feed_forward_output = nn.Linear(d_ff, d_model)
        self.output_norm = nn.LayerNorm(d_model, eps=layer_norm_eps)

    def split_heads(self, x: Tensor) -> Tensor:
        """``(B, L, d) -> (B, H, L, E)``."""
        B, L, d = x.shape
        # (B, H, L, E)
        return x.view(B, L, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, hidden: Tensor) -> Tensor:
        """``(B, L, d) -> (B, L, d)``."""
        check_tensor("hidden", hidden)
        if hidden.dim() != 3 or hidden.shape[-1] != self.query.in_features:
            raise ValueError(
                f"hidden must have shape (B, L, {self.query.in_features}); "
                f"got {tuple(hidden.shape)}."
            )
        B, L, d = hidden.shape
        q, k, v = (
            self.split_heads(proj(hidden))
            for proj in (self.query, self.key, self.value)
        )
        context = self.attention(q, k, v)  # (B, H, L, E)
        context = context.transpose(1, 2).reshape(B, L, d)  # (B, L, d)
        hidden = self.attention_norm(hidden + self.output(context))
        # (B, L, d)
        feed_forward = self.feed_forward_output(
            F.gelu(self.intermediate(hidden))
        )
        return self.output_norm(hidden + feed_forward)
