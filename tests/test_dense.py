"""dense_attention against PyTorch's SDPA, and effective_attention."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from inputs import random_qkv as shared_random_qkv
from reference import reference_attention

import efficient_attention as ea
from efficient_attention import masks

random_qkv = functools.partial(
    shared_random_qkv, L=7, S=9, dtype=torch.float32
)


@pytest.mark.parametrize("lead", [(), (3,), (2, 3), (2, 2, 3)])
@pytest.mark.parametrize(
    "L,S,E,Ev", [(1, 1, 4, 4), (7, 9, 8, 5), (16, 16, 32, 32), (9, 4, 3, 6)]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_equals_sdpa_over_shapes(lead, L, S, E, Ev, dtype):
    q, k, v = random_qkv(*lead, L=L, S=S, E=E, Ev=Ev, dtype=dtype)
    out = ea.dense_attention(q, k, v)
    assert out.shape == (*lead, L, Ev) and out.dtype == dtype
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))


@pytest.mark.parametrize("L,S", [(8, 8), (5, 9), (9, 5)])
def test_causal_equals_sdpa(L, S):
    q, k, v = random_qkv(2, 3, L=L, S=S)
    torch.testing.assert_close(
        ea.dense_attention(q, k, v, is_causal=True),
        F.scaled_dot_product_attention(q, k, v, is_causal=True),
    )


@pytest.mark.parametrize("L,S", [(6, 6), (4, 7), (7, 4)])
def test_causal_flag_and_causal_mask_equal_the_float64_reference(L, S):
    q, k, v = random_qkv(2, L=L, S=S, dtype=torch.float64)
    mask = masks.create_mask(masks.causal, L, S)
    expected = reference_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(
        ea.dense_attention(q, k, v, is_causal=True), expected
    )
    torch.testing.assert_close(
        ea.dense_attention(q, k, v, attn_mask=mask), expected
    )


@pytest.mark.parametrize(
    "mask_shape", [(7, 9), (1, 1, 7, 9), (2, 1, 7, 9), (2, 3, 7, 9), (9,)]
)
def test_boolean_mask_equals_sdpa(mask_shape):
    q, k, v = random_qkv(2, 3)
    mask = (
        torch.rand(mask_shape, generator=torch.Generator().manual_seed(1))
        > 0.3
    )
    if mask.dim() >= 2:
        mask[..., 0, :] = False  # a row with nothing to attend: zeros in both
    torch.testing.assert_close(
        ea.dense_attention(q, k, v, attn_mask=mask),
        F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask.expand(2, 3, 7, 9)
        ),
    )


def test_float_mask_is_added_to_the_scores():
    q, k, v = random_qkv(2, 3)
    bias = torch.randn(7, 9)
    torch.testing.assert_close(
        ea.dense_attention(q, k, v, attn_mask=bias),
        F.scaled_dot_product_attention(q, k, v, attn_mask=bias),
    )


def test_pattern_masks_equal_sdpa():
    q, k, v = random_qkv(2, 2, L=12, S=12)
    for name, mask_mod in masks.example_patterns().items():
        mask = masks.create_mask(mask_mod, 12, 12)
        torch.testing.assert_close(
            ea.dense_attention(q, k, v, attn_mask=mask),
            F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
            msg=lambda text: f"{name}: {text}",
        )


def test_scale_argument():
    q, k, v = random_qkv(2)
    torch.testing.assert_close(
        ea.dense_attention(q, k, v, scale=0.3),
        F.scaled_dot_product_attention(q, k, v, scale=0.3),
    )
    # None means 1/sqrt(E): against SDPA given that number explicitly
    torch.testing.assert_close(
        ea.dense_attention(q, k, v),
        F.scaled_dot_product_attention(
            q, k, v, scale=1 / math.sqrt(q.shape[-1])
        ),
    )
    # and a different scale gives a different answer
    assert not torch.allclose(
        ea.dense_attention(q, k, v), ea.dense_attention(q, k, v, scale=1.0)
    )


def test_numpy_scale_is_a_number():
    q, k, v = random_qkv(2)
    for scale in (np.float32(0.25), np.float64(0.25), np.int64(1)):
        torch.testing.assert_close(
            ea.dense_attention(q, k, v, scale=scale),
            F.scaled_dot_product_attention(q, k, v, scale=float(scale)),
        )


def test_sdpa_of_the_pinned_torch_gives_zeros_for_rows_with_no_key():
    # The docstring's claim about SDPA, checked on the installed version.
    q, k, v = random_qkv(2, L=4, S=5)
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[1] = False
    additive = torch.zeros(4, 5).masked_fill(~mask, -math.inf)
    for attn_mask in (mask, additive):
        fused = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        assert torch.equal(fused[:, 1], torch.zeros(2, 5))
        torch.testing.assert_close(
            ea.dense_attention(q, k, v, attn_mask=attn_mask), fused
        )
    docstring = ea.dense_attention.__doc__
    assert "instead of NaN" not in docstring
    assert f"torch {torch.__version__[:4]}" in docstring


def test_rows_with_nothing_to_attend_are_zero_and_gradients_finite():
    q, k, v = random_qkv(2, L=4, S=5, dtype=torch.float64)
    q.requires_grad_(True)
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[1] = False
    out = ea.dense_attention(q, k, v, attn_mask=mask)
    assert torch.equal(out[:, 1], torch.zeros_like(out[:, 1]))
    assert not out.isnan().any()
    out.sum().backward()
    assert torch.isfinite(q.grad).all()
    additive = torch.zeros(4, 5, dtype=torch.float64).masked_fill(
        ~mask, float("-inf")
    )
    assert torch.equal(
        ea.dense_attention(q, k, v, attn_mask=additive)[:, 1], out[:, 1]
    )


def test_gradients_equal_sdpa():
    inputs = [
        t.requires_grad_(True) for t in random_qkv(2, 2, dtype=torch.float64)
    ]
    reference = [t.detach().clone().requires_grad_(True) for t in inputs]
    mask = masks.create_mask(masks.sliding_window((2, 3)), 7, 9)
    grad_out = torch.randn(2, 2, 7, 5, dtype=torch.float64)
    ea.dense_attention(*inputs, attn_mask=mask).backward(grad_out)
    F.scaled_dot_product_attention(*reference, attn_mask=mask).backward(
        grad_out
    )
    for ours, theirs in zip(inputs, reference):
        torch.testing.assert_close(ours.grad, theirs.grad)
    assert torch.autograd.gradcheck(
        lambda q, k, v: ea.dense_attention(q, k, v, attn_mask=mask),
        [t.detach().requires_grad_(True) for t in inputs],
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_is_computed_in_float32_and_cast_back(dtype):
    q, k, v = (t.to(dtype) for t in random_qkv(2, 3))
    out = ea.dense_attention(q, k, v)
    assert out.dtype == dtype
    # float32 inside: about one rounding of the output from the exact answer
    exact = reference_attention(q, k, v)
    torch.testing.assert_close(
        out.double(), exact, atol=1e-3, rtol=torch.finfo(dtype).eps
    )


def test_effective_attention_is_the_softmax_matrix():
    q, k, _ = random_qkv(2, 3, L=6, S=8)
    weights = ea.effective_attention(ea.dense_attention, q, k)
    assert weights.shape == (2, 3, 6, 8)
    expected = torch.softmax(
        q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1
    )
    torch.testing.assert_close(weights, expected)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, 6))


def test_effective_attention_passes_keywords_and_respects_the_mask():
    q, k, _ = random_qkv(L=6, S=6)
    mask = masks.create_mask(masks.sliding_window((1, 0)), 6, 6)
    weights = ea.effective_attention(ea.dense_attention, q, k, attn_mask=mask)
    assert torch.equal(weights[~mask], torch.zeros(int((~mask).sum())))
    torch.testing.assert_close(weights.sum(-1), torch.ones(6))
    v = torch.randn(6, 4)
    torch.testing.assert_close(
        weights @ v, ea.dense_attention(q, k, v, attn_mask=mask)
    )


def test_effective_attention_of_sdpa_equals_ours():
    q, k, _ = random_qkv(3, L=5, S=5)
    torch.testing.assert_close(
        ea.effective_attention(
            F.scaled_dot_product_attention, q, k, is_causal=True
        ),
        ea.effective_attention(ea.dense_attention, q, k, is_causal=True),
    )


@pytest.mark.parametrize(
    "make_inputs,kwargs,message",
    [
        (
            lambda: (torch.randn(5), torch.randn(5, 4), torch.randn(5, 4)),
            {},
            "query must have at least 2",
        ),
        (
            lambda: (
                torch.randn(2, 5, 4),
                torch.randn(3, 5, 4),
                torch.randn(3, 5, 4),
            ),
            {},
            "same leading",
        ),
        (
            lambda: (torch.randn(5, 4), torch.randn(5, 3), torch.randn(5, 4)),
            {},
            "same feature size E",
        ),
        (
            lambda: (torch.randn(5, 4), torch.randn(6, 4), torch.randn(5, 4)),
            {},
            "same number of positions S",
        ),
        (
            lambda: (
                torch.randn(5, 4),
                torch.randn(5, 4).double(),
                torch.randn(5, 4),
            ),
            {},
            "share one dtype",
        ),
        (
            lambda: (torch.ones(5, 4, dtype=torch.long),) * 3,
            {},
            "floating-point",
        ),
        (
            lambda: (
                torch.randn(5, 4),
                torch.randn(5, 4, device="meta"),
                torch.randn(5, 4),
            ),
            {},
            "one device",
        ),
        (
            lambda: ([[1.0]], torch.randn(5, 4), torch.randn(5, 4)),
            {},
            "must be a torch.Tensor",
        ),
        (
            lambda: (torch.randn(5, 4),) * 3,
            {"attn_mask": torch.ones(4, 5, dtype=torch.bool)},
            "does not broadcast",
        ),
        (
            lambda: (torch.randn(5, 4),) * 3,
            {"attn_mask": torch.ones(5, 5, dtype=torch.long)},
            "must be bool",
        ),
        (
            lambda: (torch.randn(5, 4),) * 3,
            {
                "attn_mask": torch.ones(5, 5, dtype=torch.bool),
                "is_causal": True,
            },
            "not both",
        ),
        (
            lambda: (torch.randn(5, 4),) * 3,
            {"scale": "0.5"},
            "scale must be a float",
        ),
        (
            lambda: (torch.randn(5, 4),) * 3,
            {"scale": float("nan")},
            "scale must be finite",
        ),
        (
            lambda: (torch.randn(5, 4),) * 3,
            {"scale": True},
            "scale must be a float",
        ),
        (
            lambda: (torch.randn(5, 0), torch.randn(6, 0), torch.randn(6, 3)),
            {},
            r"at least one feature \(E >= 1",
        ),
        (
            lambda: (torch.randn(5, 4),) * 3,
            {"is_causal": "no"},
            "is_causal must be True or False; got 'no'",
        ),
        (
            lambda: (torch.randn(5, 4),) * 3,
            {"is_causal": None},
            "is_causal must be True or False; got None",
        ),
        (
            lambda: (torch.randn(5, 4),) * 3,
            {"is_causal": 1},
            "is_causal must be True or False",
        ),
        (
            lambda: (torch.randn(5, 4),) * 3,
            {"attn_mask": torch.full((5, 5), math.inf)},
            r"attn_mask holds NaN or \+inf",
        ),
        (
            lambda: (torch.randn(5, 4),) * 3,
            {
                "attn_mask": torch.zeros(5, 5).index_fill(
                    0, torch.tensor(2), math.nan
                )
            },
            r"attn_mask holds NaN or \+inf",
        ),
    ],
)
def test_bad_input_raises_a_clear_error(make_inputs, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ea.dense_attention(*make_inputs(), **kwargs)


@pytest.mark.parametrize(
    "dtype,size,scale",
    [
        (torch.float32, 1e20, None),  # Q K^T ~ 1e40 > float32's 3.4e38
        (torch.bfloat16, 1e20, None),  # computed in float32: the same
        (torch.float32, 1.0, 1e300),  # a finite float scale, inf in float32
        (torch.float64, 1e200, None),
    ],
)
def test_scores_that_overflow_are_an_error_not_nan(dtype, size, scale):
    q, k, v = (t * size for t in random_qkv(2, dtype=torch.float64))
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    assert (
        F.scaled_dot_product_attention(q, k, v, scale=scale).isnan().any()
    )  # what SDPA gives
    with pytest.raises(ValueError, match="too large for torch.float"):
        ea.dense_attention(q, k, v, scale=scale)


def test_nan_or_inf_in_query_or_key_is_an_error():
    q, k, v = random_qkv(2)
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="query or key hold inf or NaN"):
            ea.dense_attention(q, k.index_fill(-2, torch.tensor(3), bad), v)


def test_a_batch_mask_error_suggests_a_call_that_works():
    # 3-D inputs (B, L, E) and a key-padding mask built per batch row
    q, k, v = random_qkv(2, L=3, S=5)
    padding = masks.key_padding([2, 5])
    mask = masks.create_mask(padding, 3, 5, batch=2)  # (2, 1, 3, 5)
    with pytest.raises(ValueError, match="does not broadcast") as error:
        ea.dense_attention(q, k, v, attn_mask=mask)
    suggestion = "masks.create_mask(mask_mod, 3, 5, batch=2)[:, 0]"
    assert suggestion in str(error.value)
    fixed = eval(suggestion, {"masks": masks, "mask_mod": padding})
    out = ea.dense_attention(q, k, v, attn_mask=fixed)
    for row, length in enumerate((2, 5)):
        torch.testing.assert_close(
            out[row],
            F.scaled_dot_product_attention(
                q[row], k[row, :length], v[row, :length]
            ),
        )


def test_a_mask_error_for_4d_inputs_suggests_batch_and_heads():
    q, k, v = random_qkv(2, 3, L=4, S=6)
    with pytest.raises(ValueError) as error:
        ea.dense_attention(q, k, v, attn_mask=torch.ones(6, 4).bool())
    assert "create_mask(mask_mod, 4, 6, batch=2, heads=3)" in str(error.value)


def test_effective_attention_bad_input():
    q = torch.randn(4, 8)
    with pytest.raises(ValueError, match="without value="):
        ea.effective_attention(ea.dense_attention, q, q, value=q)
    with pytest.raises(ValueError, match="fn must be an attention function"):
        ea.effective_attention("dense", q, q)
    with pytest.raises(ValueError, match="key must have at least 2"):
        ea.effective_attention(ea.dense_attention, q, torch.randn(8))
