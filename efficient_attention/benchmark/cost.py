"""The arithmetic of attention: FLOPs and bytes, counted on paper.

Chapter 1 ("Why attention is slow") derives these counts and then checks them
against timings and memory measured on the reader's machine. Only matrix
products are counted (one multiply-add = 2 FLOPs); the softmax, norms and
activations add ``O(L * S)`` and ``O(L * d)`` terms that matter little next to
them. Sizes may be any integral numbers (``np.int64`` too); every count is
computed with Python ints, which do not overflow.
"""

from __future__ import annotations

import torch

from .._validation import (
    check_dtype,
    check_heads_divide,
    check_int,
    check_positive_int,
)


def attention_flops(
    L: int,
    S: int,
    E: int,
    Ev: int | None = None,
    *,
    batch: int = 1,
    heads: int = 1,
) -> int:
    """FLOPs of the two products of attention, ``Q K^T`` and ``A V``.

    ``Q K^T`` costs ``2 L S E`` and ``A V`` costs ``2 L S Ev``.

    Args:
        L: queries. S: keys. E: query/key features. Ev: value features
            (default ``E``).
        batch, heads: how many independent attention problems.

    Returns:
        ``2 * L * S * (E + Ev) * batch * heads``, a Python int.

    Raises:
        ValueError: a size that is not a positive int.
    """
    Ev = E if Ev is None else Ev
    L, S, E, Ev, batch, heads = (
        check_positive_int(name, value)
        for name, value in (
            ("L", L),
            ("S", S),
            ("E", E),
            ("Ev", Ev),
            ("batch", batch),
            ("heads", heads),
        )
    )
    return 2 * L * S * (E + Ev) * batch * heads


LOW_RANK_METHODS = ("linformer", "nystrom", "performer")


def low_rank_attention_flops(
    method: str,
    L: int,
    size: int,
    E: int,
    *,
    S: int | None = None,
    batch: int = 1,
    heads: int = 1,
    pinv_iterations: int = 6,
) -> int:
    """FLOPs of the products the package's low-rank attentions run.

    - ``"linformer"`` (rank ``r = size``): ``P_K K`` and ``P_V V``
      (``2 r S E`` each), then attention over ``r`` keys (``4 L r E``);
    - ``"nystrom"`` (``m = size`` landmarks): landmark scores (``2 m^2
      E``), the iterative pseudo-inverse (4 products of ``m x m``
      matrices per iteration), ``softmax(Q~ K^T) V`` (``4 m S E``), its
      product with the inverse (``2 m^2 E``) and ``softmax(Q K~^T)``
      times that (``4 L m E``);
    - ``"performer"`` (``m = size`` features): the features of ``Q`` and
      ``K`` (``2 L m E`` and ``2 S m E``), ``phi(K)^T [V, 1]`` and
      ``phi(Q)`` times it (``2 (S + L) m (E + 1)``).

    Segment means and exponentials are left out, as for
    ``attention_flops``. Values have ``E`` features too.

    Returns:
        a Python int (times ``batch * heads``).

    Raises:
        ValueError: an unknown ``method``, or a size that is not a
            positive int (``pinv_iterations`` may be 0).
    """
    if method not in LOW_RANK_METHODS:
        raise ValueError(
            f"method must be one of {LOW_RANK_METHODS}; got {method!r}."
        )
    S = L if S is None else S
    L, size, E, S, batch, heads = (
        check_positive_int(name, value)
        for name, value in (
            ("L", L),
            ("size", size),
            ("E", E),
            ("S", S),
            ("batch", batch),
            ("heads", heads),
        )
    )
    iterations = check_int("pinv_iterations", pinv_iterations, 0)
    r = m = size
    if method == "linformer":
        per_head = 4 * r * S * E + 4 * L * r * E
    elif method == "nystrom":
        per_head = (
            4 * m * m * E  # landmark scores, inverse @ landmark outputs
            + iterations * 4 * 2 * m**3
            + 4 * m * S * E
            + 4 * L * m * E
        )
    else:
        per_head = 2 * (L + S) * m * E + 2 * (S + L) * m * (E + 1)
    return per_head * batch * heads


def score_matrix_bytes(
    L: int,
    S: int,
    *,
    batch: int = 1,
    heads: int = 1,
    dtype: torch.dtype | str = torch.float32,
) -> int:
    """Bytes of ``batch * heads`` score matrices of ``L x S`` entries.

    This is what dense attention stores.

    Args:
        L: queries. S: keys. batch, heads: how many matrices.
        dtype: the scores' dtype, or its name (``"bfloat16"``).

    Returns:
        ``L * S * batch * heads * bytes per element``, a Python int.

    Raises:
        ValueError: a size that is not a positive int, or a dtype that is
            neither a ``torch.dtype`` nor a dtype's name.
    """
    L, S, batch, heads = (
        check_positive_int(name, value)
        for name, value in (
            ("L", L),
            ("S", S),
            ("batch", batch),
            ("heads", heads),
        )
    )
    dtype = check_dtype("dtype", dtype)
    return L * S * batch * heads * dtype.itemsize


def encoder_layer_flops(
    L: int, d_model: int, heads: int, d_ff: int, *, batch: int = 1
) -> dict[str, int]:
    """FLOPs of one Transformer encoder layer, split into its three parts.

    Args:
        L: tokens. d_model: hidden size ``d``. heads: attention heads (``d``
            must divide by it). d_ff: feed-forward inner size (``4 d`` in
            BERT). batch: sequences.

    Returns:
        ``{"projections": 8 L d^2, "attention": 4 L^2 d,
        "feed_forward": 4 L d d_ff}`` (times ``batch``): the Q, K, V and
        output projections, the ``L x L`` attention core, and the two
        feed-forward products.

    Raises:
        ValueError: a size that is not a positive int, or ``d_model`` not
            divisible by ``heads``.
    """
    L, d_model, heads, d_ff, batch = (
        check_positive_int(name, value)
        for name, value in (
            ("L", L),
            ("d_model", d_model),
            ("heads", heads),
            ("d_ff", d_ff),
            ("batch", batch),
        )
    )
    check_heads_divide(d_model, heads)
    return {
        "projections": 4 * 2 * L * d_model * d_model * batch,
        "attention": attention_flops(
            L, L, d_model // heads, batch=batch, heads=heads
        ),
        "feed_forward": 2 * 2 * L * d_model * d_ff * batch,
    }


def attention_crossover_length(d_model: int, d_ff: int) -> int:
    """The ``L`` where attention costs as many FLOPs as the rest of the layer.

    ``4 L^2 d = 8 L d^2 + 4 L d d_ff`` gives ``L = 2 d + d_ff`` (``6 d`` for
    BERT's ``d_ff = 4 d``).

    Raises:
        ValueError: a size that is not a positive int.
    """
    d_model = check_positive_int("d_model", d_model)
    d_ff = check_positive_int("d_ff", d_ff)
    return 2 * d_model + d_ff
