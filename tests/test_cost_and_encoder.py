"""The FLOP model against PyTorch's FLOP counter, and the encoder layer
against PyTorch's.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import efficient_attention as ea
from efficient_attention import cost


def test_attention_flops_by_hand():
    # Q K^T: 2*L*S*E, A V: 2*L*S*Ev; two heads, batch 3
    assert cost.attention_flops(4, 5, 8, 2, batch=3, heads=2) == 3 * 2 * (
        2 * 4 * 5 * 8 + 2 * 4 * 5 * 2
    )
    assert cost.attention_flops(4, 5, 8) == cost.attention_flops(4, 5, 8, 8)


def test_attention_flops_match_pytorch_flop_counter():
    q, k, v = (torch.randn(3, 2, n, e) for n, e in ((10, 8), (12, 8), (12, 6)))
    with FlopCounterMode(display=False) as counter:
        ea.dense_attention(q, k, v)
    assert counter.get_total_flops() == cost.attention_flops(
        10, 12, 8, 6, batch=3, heads=2
    )


def test_encoder_layer_flops_match_pytorch_flop_counter():
    layer = ea.EncoderLayer(64, 4, 256, attention=ea.dense_attention)
    with FlopCounterMode(display=False) as counter:
        layer(torch.randn(2, 10, 64))
    parts = cost.encoder_layer_flops(10, 64, 4, 256, batch=2)
    assert counter.get_total_flops() == sum(parts.values())
    assert parts["attention"] == 2 * 4 * 10 * 10 * 64  # 4 L^2 d per sequence


def test_score_matrix_bytes():
    assert cost.score_matrix_bytes(1024, 1024) == 4 * 2**20
    assert (
        cost.score_matrix_bytes(8, 4, batch=2, heads=3, dtype=torch.float16)
        == 8 * 4 * 6 * 2
    )


@pytest.mark.parametrize("d_model,d_ff", [(384, 1536), (768, 3072), (64, 100)])
def test_crossover_length_balances_attention_and_the_rest(d_model, d_ff):
    L = cost.attention_crossover_length(d_model, d_ff)
    parts = cost.encoder_layer_flops(L, d_model, 1, d_ff)
    assert parts["attention"] == parts["projections"] + parts["feed_forward"]
    below = cost.encoder_layer_flops(L // 2, d_model, 1, d_ff)
    assert below["attention"] < below["projections"] + below["feed_forward"]


def test_numpy_sizes_give_exact_python_ints():
    # 2 * 2^22 * 2^22 * 2^22 overflows int64: NumPy would wrap around
    L = S = np.int64(2**22)
    flops = cost.attention_flops(L, S, np.int64(2**21))
    assert type(flops) is int and flops == 2 * 2**22 * 2**22 * 2**22
    assert cost.score_matrix_bytes(np.int32(8), np.int64(4)) == 128
    parts = cost.encoder_layer_flops(np.int64(10), np.int64(64), 4, 256)
    assert parts == cost.encoder_layer_flops(10, 64, 4, 256)
    assert all(type(v) is int for v in parts.values())
    assert cost.attention_crossover_length(np.int64(384), 1536) == 2304


def test_score_matrix_bytes_takes_dtype_names():
    assert cost.score_matrix_bytes(8, 4, dtype="bfloat16") == 64
    assert cost.score_matrix_bytes(8, 4, dtype="torch.float64") == 256
    with pytest.raises(ValueError, match="dtype must be a torch.dtype"):
        cost.score_matrix_bytes(8, 4, dtype="float33")
    with pytest.raises(ValueError, match="dtype must be a torch.dtype"):
        cost.score_matrix_bytes(8, 4, dtype=4)


def test_cost_bad_input():
    with pytest.raises(ValueError, match="L must be a positive int"):
        cost.attention_flops(0, 4, 4)
    with pytest.raises(ValueError, match="divisible by heads"):
        cost.encoder_layer_flops(8, 10, 3, 40)


def copy_into_torch_layer(
    layer: ea.EncoderLayer, d_model: int, heads: int, d_ff: int
) -> nn.Module:
    reference = nn.TransformerEncoderLayer(
        d_model,
        heads,
        d_ff,
        dropout=0.0,
        activation="gelu",
        batch_first=True,
        layer_norm_eps=1e-12,
    )
    with torch.no_grad():
        attention = reference.self_attn
        attention.in_proj_weight.copy_(
            torch.cat(
                [layer.query.weight, layer.key.weight, layer.value.weight]
            )
        )
        attention.in_proj_bias.copy_(
            torch.cat([layer.query.bias, layer.key.bias, layer.value.bias])
        )
        attention.out_proj.load_state_dict(layer.output.state_dict())
        reference.linear1.load_state_dict(layer.intermediate.state_dict())
        reference.linear2.load_state_dict(
            layer.feed_forward_output.state_dict()
        )
        reference.norm1.load_state_dict(layer.attention_norm.state_dict())
        reference.norm2.load_state_dict(layer.output_norm.state_dict())
    return reference.eval()


def test_encoder_layer_equals_pytorch_transformer_encoder_layer():
    torch.manual_seed(0)
    layer = ea.EncoderLayer(32, 4, 64)
    reference = copy_into_torch_layer(layer, 32, 4, 64)
    x = torch.randn(2, 9, 32)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), reference(x))


def test_encoder_layer_attention_is_swappable():
    torch.manual_seed(0)
    fused = ea.EncoderLayer(32, 4, 64)
    dense = ea.EncoderLayer(32, 4, 64, attention=ea.dense_attention)
    dense.load_state_dict(fused.state_dict())
    x = torch.randn(2, 9, 32)
    torch.testing.assert_close(fused(x), dense(x))
    calls = []
    fused.attention = lambda q, k, v: (
        calls.append(q.shape) or F.scaled_dot_product_attention(q, k, v)
    )
    fused(x)
    assert calls == [(2, 4, 9, 8)]


def test_encoder_layer_in_float64_equals_pytorch_layer():
    torch.manual_seed(0)
    layer = ea.EncoderLayer(np.int64(16), np.int64(2), 32).to(torch.float64)
    reference = copy_into_torch_layer(layer.float(), 16, 2, 32).double()
    layer = layer.double()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), reference(x))


@pytest.mark.parametrize(
    "hidden,message",
    [
        (
            torch.randn(2, 9, 32, dtype=torch.float64),
            r"dtype torch.float64 but the layer's weights are torch.float32; "
            r"call layer.to\(torch.float64\)",
        ),
        (
            torch.randn(2, 9, 32).bfloat16(),
            r"call layer.to\(torch.bfloat16\)",
        ),
        (
            torch.ones(2, 9, 32, dtype=torch.long),
            r"convert it with hidden.to\(torch.float32\)",
        ),
        (
            torch.ones(2, 9, 32, device="meta"),
            "hidden is on meta but the layer's weights are on cpu",
        ),
    ],
    ids=["float64", "bfloat16", "int64", "meta"],
)
def test_encoder_layer_input_that_does_not_fit_its_weights(hidden, message):
    with pytest.raises(ValueError, match=message):
        ea.EncoderLayer(32, 4, 64)(hidden)


@pytest.mark.parametrize(
    "attention,got",
    [
        (lambda q, k, v: q[..., :1], r"got shape \(2, 4, 9, 1\)"),
        (lambda q, k, v: q.transpose(1, 2), r"got shape \(2, 9, 4, 8\)"),
        (lambda q, k, v: q.double(), "dtype torch.float64"),
        (lambda q, k, v: None, "got NoneType"),
    ],
)
def test_encoder_layer_names_the_shape_attention_must_return(attention, got):
    layer = ea.EncoderLayer(32, 4, 64, attention=attention)
    with pytest.raises(ValueError, match=r"\(B, H, L, E\) = \(2, 4, 9, 8\)"):
        layer(torch.randn(2, 9, 32))
    with pytest.raises(ValueError, match=got):
        layer(torch.randn(2, 9, 32))


@pytest.mark.parametrize("eps", ["x", None, 0, -1e-5, math.nan, math.inf])
def test_encoder_layer_norm_eps_must_be_a_positive_number(eps):
    with pytest.raises(ValueError, match="layer_norm_eps must be"):
        ea.EncoderLayer(32, 4, 64, layer_norm_eps=eps)


def test_encoder_layer_norm_eps_takes_numpy_numbers():
    layer = ea.EncoderLayer(32, 4, 64, layer_norm_eps=np.float32(1e-5))
    assert layer.attention_norm.eps == pytest.approx(1e-5)
    assert type(layer.attention_norm.eps) is float


def test_encoder_layer_bad_input():
    with pytest.raises(ValueError, match="divisible by heads"):
        ea.EncoderLayer(30, 4, 64)
    with pytest.raises(ValueError, match="attention must be a function"):
        ea.EncoderLayer(32, 4, 64, attention="sdpa")
    with pytest.raises(ValueError, match=r"shape \(B, L, 32\)"):
        ea.EncoderLayer(32, 4, 64)(torch.randn(9, 32))


def _naive_sdpa(q, k, v, attn_mask=None, scale=None, **_):
    """SDPA as three products that FlopCounterMode can see on a CPU."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    return torch.softmax(q @ k.transpose(-2, -1) * scale, dim=-1) @ v


@pytest.mark.parametrize("method", cost.LOW_RANK_METHODS)
def test_low_rank_flops_match_pytorch_flop_counter(method, monkeypatch):
    # FlopCounterMode does not count SDPA's CPU kernel: run it as products
    monkeypatch.setattr(F, "scaled_dot_product_attention", _naive_sdpa)
    L, size, E, heads = 64, 8, 16, 2
    q, k, v = torch.randn(3, 1, heads, L, E).unbind(0)
    proj = ea.make_linformer_projections(L, size, kind="mean")
    features = ea.make_performer_features(
        size, E, generator=torch.Generator().manual_seed(0)
    )
    runs = {
        "linformer": lambda: ea.linformer_attention(q, k, v, proj_k=proj),
        "nystrom": lambda: ea.nystrom_attention(q, k, v, num_landmarks=size),
        "performer": lambda: ea.performer_attention(
            q, k, v, features=features
        ),
    }
    with FlopCounterMode(display=False) as counter:
        runs[method]()
    assert counter.get_total_flops() == cost.low_rank_attention_flops(
        method, L, size, E, heads=heads
    )


def test_low_rank_flops_refuse_bad_input():
    with pytest.raises(ValueError, match="method must be one of"):
        cost.low_rank_attention_flops("Linformer", 64, 8, 16)
    with pytest.raises(ValueError, match="size"):
        cost.low_rank_attention_flops("nystrom", 64, 0, 16)
    with pytest.raises(ValueError, match="pinv_iterations"):
        cost.low_rank_attention_flops("nystrom", 64, 8, 16, pinv_iterations=-1)
