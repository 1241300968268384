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

from .._validation import (
    check_heads_divide,
    check_positive_int,
    check_positive_real,
    check_tensor,
)

AttentionFn = Callable[[Tensor, Tensor, Tensor], Tensor]


class EncoderLayer(nn.Module):
    """One post-norm encoder layer: ``x = LN(x + MHA(x)); x = LN(x + FFN(x))``.

    Args:
        d_model: hidden size ``d``. heads: attention heads (``E = d / heads``).
        d_ff: feed-forward inner size (``4 d`` in BERT).
        attention: ``fn(query, key, value) -> out`` on ``(B, H, L, E)``
            tensors, returning ``(B, H, L, E)`` in their dtype; default
            ``F.scaled_dot_product_attention``.
        layer_norm_eps: LayerNorm epsilon, a finite real number > 0 (BERT
            uses 1e-12).

    Raises:
        ValueError: a size that is not a positive int, ``d_model`` not
            divisible by ``heads``, an ``attention`` that is not callable, or
            a bad ``layer_norm_eps``. Calling the layer raises a ValueError
            for an input of the wrong shape, dtype (it must be the weights'
            dtype: convert with ``layer.to(dtype)``) or device, and for an
            attention function that returns the wrong shape or dtype.

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
        d_model, heads, d_ff = (
            check_positive_int(name, value)
            for name, value in (
                ("d_model", d_model),
                ("heads", heads),
                ("d_ff", d_ff),
            )
        )
        check_heads_divide(d_model, heads)
        layer_norm_eps = check_positive_real("layer_norm_eps", layer_norm_eps)
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
        """``(B, L, d) -> (B, L, d)``.

        Raises:
            ValueError: ``hidden`` of the wrong shape, or of a dtype or
                device other than the weights', or an attention function
                that returns something other than a ``(B, H, L, E)`` tensor
                of the input's dtype.
        """
        self._check_input(hidden)
        B, L, d = hidden.shape
        q, k, v = (
            self.split_heads(proj(hidden))
            for proj in (self.query, self.key, self.value)
        )
        context = self.attention(q, k, v)  # (B, H, L, E)
        self._check_context(context, q)
        context = context.transpose(1, 2).reshape(B, L, d)  # (B, L, d)
        hidden = self.attention_norm(hidden + self.output(context))
        # (B, L, d)
        feed_forward = self.feed_forward_output(
            F.gelu(self.intermediate(hidden))
        )
        return self.output_norm(hidden + feed_forward)

    def _check_input(self, hidden: object) -> None:
        """The input must be ``(B, L, d)`` on the weights' dtype and device."""
        check_tensor("hidden", hidden)
        d = self.query.in_features
        if hidden.dim() != 3 or hidden.shape[-1] != d:
            raise ValueError(
                f"hidden must have shape (B, L, {d}); "
                f"got {tuple(hidden.shape)}."
            )
        weight = self.query.weight
        if hidden.dtype != weight.dtype:
            fix = (
                f"call layer.to({hidden.dtype}) to compute in {hidden.dtype}"
                if hidden.is_floating_point()
                else f"convert it with hidden.to({weight.dtype})"
            )
            raise ValueError(
                f"hidden has dtype {hidden.dtype} but the layer's weights "
                f"are {weight.dtype}; {fix}."
            )
        if hidden.device != weight.device:
            raise ValueError(
                f"hidden is on {hidden.device} but the layer's weights are "
                f"on {weight.device}; move hidden with "
                f"hidden.to('{weight.device}') or the layer with "
                f"layer.to('{hidden.device}')."
            )

    def _check_context(self, context: object, query: Tensor) -> None:
        """The attention function's output must look like its query."""
        if isinstance(context, Tensor):
            if context.shape == query.shape and context.dtype == query.dtype:
                return
            got = f"shape {tuple(context.shape)} and dtype {context.dtype}"
        else:
            got = type(context).__name__
        raise ValueError(
            f"the attention function must return a tensor of shape "
            f"(B, H, L, E) = {tuple(query.shape)} and dtype {query.dtype}, "
            f"like its query; got {got}."
        )
