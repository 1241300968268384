"""The Triton sliding-window kernel, run in Triton's interpreter on the CPU.

The interpreter executes the kernel's programs one after another with
numpy, so these shapes are small; every case is compared with the dense
reference under the window's mask.
"""

from __future__ import annotations

import pytest
import torch
from inputs import random_qkv

import efficient_attention as ea
from efficient_attention import masks

pytest.importorskip("triton")
from efficient_attention.attention.triton_window import (  # noqa: E402
    triton_sliding_window_attention,
)

# float32 sums in a different order than the float32 reference (tile by
# tile, with the online softmax's rescaling): a few ulps of the outputs,
# which are averages of values of about 1.
FLOAT32_TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}


def reference(q, k, v, window, scale=None):
    L, S = q.shape[-2], k.shape[-2]
    mask = masks.create_mask(masks.sliding_window(window), L, S)
    empty = ~mask.any(-1)  # queries with no key: zeros, as the kernel
    out = ea.dense_attention(
        q, k, v, attn_mask=mask | empty[:, None], scale=scale
    )
    return out.masked_fill(empty[:, None], 0.0)


@pytest.mark.parametrize(
    "L,S,E,Ev,window",
    [
        (40, 40, 8, 8, (3, 3)),  # a narrow band, tiles at both ends
        (70, 70, 16, 24, (20, 0)),  # causal local, Ev != E, ragged tile
        (33, 33, 32, 16, (0, 40)),  # looking ahead past the end
        (64, 64, 8, 8, (100, 100)),  # wider than the sequence: dense
        (48, 20, 8, 8, (2, 2)),  # L > S: the last queries have no key
        (20, 48, 8, 8, (5, 30)),  # L < S
    ],
)
def test_equals_the_dense_reference(L, S, E, Ev, window):
    q, k, v = random_qkv(2, L=L, S=S, E=E, Ev=Ev, dtype=torch.float32)
    out = triton_sliding_window_attention(q, k, v, window=window, block=16)
    torch.testing.assert_close(
        out, reference(q, k, v, window), **FLOAT32_TOLERANCE
    )


def test_the_tile_size_changes_nothing_but_rounding():
    q, k, v = random_qkv(1, 2, L=96, E=16, Ev=16, dtype=torch.float32)
    small = triton_sliding_window_attention(q, k, v, window=(9, 4), block=16)
    large = triton_sliding_window_attention(q, k, v, window=(9, 4), block=64)
    torch.testing.assert_close(small, large, **FLOAT32_TOLERANCE)
    torch.testing.assert_close(
        small,
        ea.sliding_window_attention(q, k, v, window=(9, 4), backend="torch"),
        **FLOAT32_TOLERANCE,
    )


def test_scale_and_float16():
    q, k, v = random_qkv(1, L=32, E=16, Ev=16, dtype=torch.float32)
    out = triton_sliding_window_attention(
        q.half(), k.half(), v.half(), window=(4, 4), scale=0.5, block=16
    )
    assert out.dtype == torch.float16
    # float16 inputs and products, float32 softmax: about 1e-3 relative
    torch.testing.assert_close(
        out.float(), reference(q, k, v, (4, 4), scale=0.5),
        atol=3e-3, rtol=3e-3,
    )  # fmt: skip


@pytest.mark.parametrize(
    "change,error,message",
    [
        ({"block": 24}, ValueError, "power of two"),
        ({"window": (-1, 2)}, ValueError, "window"),
        ({"dtype": torch.bfloat16}, ValueError, "no bfloat16"),
        ({"grad": True}, NotImplementedError, "forward pass only"),
    ],
)
def test_refuses_what_it_cannot_do(change, error, message):
    dtype = change.get("dtype", torch.float32)
    q, k, v = random_qkv(1, L=16, E=16, Ev=16, dtype=dtype)
    q.requires_grad_(change.get("grad", False))
    with pytest.raises(error, match=message):
        triton_sliding_window_attention(
            q, k, v, window=change.get("window", 2),
            block=change.get("block", 16),
        )  # fmt: skip
