"""Low-rank and kernel attention, and low-rank weights: exact limits, error
that falls with the rank, reproducibility, gradients and clear errors."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from inputs import random_qkv as shared_random_qkv
from torch import nn

import efficient_attention as ea
from efficient_attention import low_rank_weights as lrw
from efficient_attention.attention.low_rank import (
    iterative_pinv,
    segment_means,
)

qkv = functools.partial(shared_random_qkv, L=12, S=12)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# -- exact limits ----------------------------------------------------------


def test_linformer_with_identity_projections_is_exact():
    q, k, v = qkv(2, 3, L=7, S=12)
    eye = torch.eye(12, dtype=q.dtype)
    out = ea.linformer_attention(q, k, v, proj_k=eye, scale=0.3)
    expected = ea.dense_attention(q, k, v, scale=0.3)
    torch.testing.assert_close(out, expected)


def test_linformer_mean_projection_at_full_rank_is_the_identity():
    eye = ea.make_linformer_projections(9, 9, kind="mean")
    torch.testing.assert_close(eye, torch.eye(9))


def test_linformer_equals_dense_attention_on_projected_keys():
    q, k, v = qkv(3, L=10, S=16)
    pk = ea.make_linformer_projections(16, 4, generator=gen(1))
    pv = ea.make_linformer_projections(16, 4, generator=gen(2))
    pk, pv = pk.double(), pv.double()
    out = ea.linformer_attention(q, k, v, proj_k=pk, proj_v=pv)
    expected = ea.dense_attention(q, pk @ k, pv @ v)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("landmarks", ["segment-means", "uniform", "key-norm"])
def test_nystrom_with_one_landmark_per_token_is_exact(landmarks):
    q, k, v = qkv(2, 2, L=10, S=10)
    out = ea.nystrom_attention(
        q, k, v, num_landmarks=10, landmarks=landmarks, generator=gen(),
        pinv_iterations=40,
    )  # fmt: skip
    torch.testing.assert_close(out, ea.dense_attention(q, k, v))


def test_iterative_pinv_converges_in_float32():
    g = gen()
    a = torch.softmax(torch.randn(4, 16, 16, generator=g), dim=-1)
    z = iterative_pinv(a, iterations=30)
    eye = torch.eye(16).expand(4, 16, 16)
    torch.testing.assert_close(a @ z, eye, atol=1e-3, rtol=0)
    assert torch.isfinite(iterative_pinv(a, iterations=6)).all()


def test_segment_means_of_uneven_segments():
    x = torch.arange(7.0)[:, None]  # (7, 1)
    means = segment_means(x, 3)  # segments {0,1,2} {3,4} {5,6}
    torch.testing.assert_close(means[:, 0], torch.tensor([1.0, 3.5, 5.5]))


def test_svd_at_full_rank_is_exact():
    layer = nn.Linear(6, 4).double()
    x = torch.randn(3, 6, dtype=torch.float64)
    factors = lrw.factorize_linear(layer, rank=4)
    torch.testing.assert_close(factors(x), layer(x))
    assert lrw.factorize_linear(layer, energy=1.0).rank == 4


def test_hosvd_at_full_ranks_is_exact_and_truncation_keeps_the_best():
    t = torch.randn(3, 4, 5, 6, dtype=torch.float64, generator=gen())
    core, factors = lrw.hosvd(t, t.shape)
    torch.testing.assert_close(lrw.tucker_to_tensor(core, factors), t)
    small = lrw.hosvd(t, (3, 2, 2, 2))
    assert lrw.tucker_parameters(*small) == 24 + 3 * 3 + 4 * 2 + 5 * 2 + 6 * 2
    error = (lrw.tucker_to_tensor(*small) - t).norm() / t.norm()
    assert 0 < error < 1


# -- error against cost ----------------------------------------------------


def test_performer_error_falls_with_the_number_of_features():
    q, k, v = qkv(2, L=64, S=64, E=16)
    q, k = q * 0.5, k * 0.5
    errors = [
        ea.approximation_error(
            ea.performer_attention, q, k, v,
            features=ea.make_performer_features(m, 16, generator=gen(3)),
        ).output
        for m in (4, 64, 1024)
    ]  # fmt: skip
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.3 * errors[0]


def test_performer_features_estimate_the_softmax_kernel_without_bias():
    # fixed generator: the check is deterministic; the tolerance is five
    # standard errors of the mean over 4000 independent draws
    g = gen(7)
    x = torch.tensor([[0.3, -0.2, 0.5, 0.1]], dtype=torch.float64)
    y = torch.tensor([[-0.1, 0.4, 0.2, 0.3]], dtype=torch.float64)
    draws = []
    for _ in range(4000):
        w = ea.make_performer_features(4, 4, generator=g, dtype=x.dtype)
        phi_x = ea.attention.softmax_kernel_features(x, w)  # (1, 4)
        phi_y = ea.attention.softmax_kernel_features(y, w)
        draws.append((phi_x @ phi_y.T).item())
    draws = torch.tensor(draws, dtype=torch.float64)
    exact = math.exp((x @ y.T).item())
    standard_error = draws.std() / math.sqrt(len(draws))
    assert abs(draws.mean() - exact) < 5 * standard_error
    assert standard_error < 0.01 * exact  # enough samples to mean something


def test_nystrom_error_falls_with_landmarks_on_smooth_inputs():
    q, k, v = qkv(2, L=64, S=64, E=8)
    q, k = q * 0.3, k * 0.3
    errors = [
        ea.approximation_error(
            ea.nystrom_attention, q, k, v, num_landmarks=m
        ).output
        for m in (2, 16, 64)
    ]
    assert errors[0] > errors[1] > errors[2]
    exact = ea.approximation_error(
        ea.nystrom_attention, q, k, v, num_landmarks=64, pinv_iterations=40
    )
    assert exact.output < 1e-6


def test_performer_causal_equals_a_loop_over_prefixes():
    q, k, v = qkv(1, 2, L=150, S=150, E=8)
    w = ea.make_performer_features(32, 8, generator=gen(), dtype=q.dtype)
    out = ea.performer_attention(q, k, v, features=w, is_causal=True)
    rows = [
        ea.performer_attention(
            q[..., i : i + 1, :], k[..., : i + 1, :], v[..., : i + 1, :],
            features=w,
        )
        for i in range(150)
    ]  # fmt: skip
    torch.testing.assert_close(out, torch.cat(rows, dim=-2))


def test_approximation_error_is_zero_for_the_reference_itself():
    q, k, v = qkv(2, L=5, S=6)
    error = ea.approximation_error(ea.dense_attention, q, k, v)
    assert error.output == 0 and error.attention == 0


# -- reproducibility, gradients, dtypes ------------------------------------


def test_same_generator_same_result():
    for make in (
        lambda g: ea.make_linformer_projections(10, 3, generator=g),
        lambda g: ea.make_performer_features(20, 8, generator=g),
    ):
        torch.testing.assert_close(make(gen(5)), make(gen(5)))
    q, k, v = qkv(2, L=10, S=10)
    a, b = (
        ea.nystrom_attention(
            q, k, v, num_landmarks=4, landmarks="key-norm", generator=gen(9)
        )
        for _ in range(2)
    )
    torch.testing.assert_close(a, b)


def test_orthogonal_features_have_orthogonal_blocks():
    w = ea.make_performer_features(8, 4, generator=gen(), dtype=torch.float64)
    block = w[:4] / w[:4].norm(dim=-1, keepdim=True)
    torch.testing.assert_close(block @ block.T, torch.eye(4, dtype=w.dtype))


@pytest.mark.parametrize("variant", ["linformer", "nystrom", "performer"])
def test_gradients_flow(variant):
    q, k, v = (t.requires_grad_() for t in qkv(2, L=16, S=16))
    call = {
        "linformer": lambda: ea.linformer_attention(
            q, k, v, proj_k=torch.eye(16, dtype=q.dtype)[:8]
        ),
        "nystrom": lambda: ea.nystrom_attention(q, k, v, num_landmarks=4),
        "performer": lambda: ea.performer_attention(
            q, k, v, features=ea.make_performer_features(
                16, 8, generator=gen(), dtype=q.dtype
            ),
        ),
    }[variant]  # fmt: skip
    call().square().sum().backward()
    for t in (q, k, v):
        assert t.grad is not None and torch.isfinite(t.grad).all()
        assert t.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_half_and_single_precision_keep_their_dtype(dtype):
    q, k, v = qkv(2, L=16, S=16, dtype=dtype)
    w = ea.make_performer_features(8, 8, generator=gen(), dtype=dtype)
    p = ea.make_linformer_projections(16, 4, generator=gen(), dtype=dtype)
    for out in (
        ea.linformer_attention(q, k, v, proj_k=p),
        ea.nystrom_attention(q, k, v, num_landmarks=4),
        ea.performer_attention(q, k, v, features=w),
        ea.performer_attention(q, k, v, features=w, is_causal=True),
    ):
        assert out.dtype == dtype and torch.isfinite(out).all()


def test_empty_keys_give_zeros():
    q, k, v = qkv(2, L=4, S=0)
    w = ea.make_performer_features(8, 8, generator=gen(), dtype=q.dtype)
    empty = torch.zeros(0, 0, dtype=q.dtype)
    for out in (
        ea.linformer_attention(q, k, v, proj_k=empty),
        ea.performer_attention(q, k, v, features=w),
    ):
        assert out.shape == (2, 4, 5) and (out == 0).all()


# -- bad input -------------------------------------------------------------


def test_bad_input_is_refused_by_name():
    q, k, v = qkv(2, L=8, S=8)
    w = ea.make_performer_features(4, 8, generator=gen(), dtype=q.dtype)
    cases = [
        ("proj_k", lambda: ea.linformer_attention(
            q, k, v, proj_k=torch.eye(7, dtype=q.dtype))),
        ("proj_k", lambda: ea.linformer_attention(
            q, k, v, proj_k=torch.eye(8))),
        ("proj_v", lambda: ea.linformer_attention(
            q, k, v, proj_k=torch.eye(8, dtype=q.dtype),
            proj_v=torch.eye(8, dtype=q.dtype)[:3])),
        ("num_landmarks", lambda: ea.nystrom_attention(
            q, k, v, num_landmarks=9)),
        ("num_landmarks", lambda: ea.nystrom_attention(
            q, k, v, num_landmarks=0)),
        ("landmarks", lambda: ea.nystrom_attention(
            q, k, v, num_landmarks=2, landmarks="random")),
        ("generator", lambda: ea.nystrom_attention(
            q, k, v, num_landmarks=2, landmarks="uniform")),
        ("L == S", lambda: ea.nystrom_attention(
            q[..., :4, :], k, v, num_landmarks=2, landmarks="uniform",
            generator=gen())),
        ("features", lambda: ea.performer_attention(
            q, k, v, features=w[:, :3])),
        ("features", lambda: ea.performer_attention(
            q, k, v, features=w.float())),
        ("is_causal", lambda: ea.performer_attention(
            q, k[..., :5, :], v[..., :5, :], features=w, is_causal=True)),
        ("scale", lambda: ea.performer_attention(
            q, k, v, features=w, scale=float("nan"))),
        ("rank", lambda: ea.make_linformer_projections(4, 0, generator=gen())),
        ("generator", lambda: ea.make_linformer_projections(4, 2)),
        ("kind", lambda: ea.make_linformer_projections(4, 2, kind="svd")),
        ("num_features", lambda: ea.make_performer_features(
            0, 4, generator=gen())),
        ("energy", lambda: lrw.factorize_linear(nn.Linear(3, 3), energy=2)),
        ("rank", lambda: lrw.factorize_linear(nn.Linear(3, 3), rank=4)),
        ("ranks", lambda: lrw.hosvd(torch.ones(2, 2), (1,))),
        ("ranks[1]", lambda: lrw.hosvd(torch.ones(2, 2), (1, 3))),
        ("reference", lambda: ea.approximation_error(
            ea.dense_attention, q, k, v, reference=3)),
    ]  # fmt: skip
    for name, call in cases:
        with pytest.raises(ValueError, match=name.replace("[", r"\[")):
            call()


def test_the_pseudo_inverse_of_zero_is_zero():
    # issue 22: it was NaN (0 / 0 in the starting point)
    zeros = torch.zeros(2, 3, 3)
    assert torch.equal(iterative_pinv(zeros), zeros)
    mixed = torch.stack([torch.zeros(3, 3), torch.eye(3)]).double()
    torch.testing.assert_close(
        iterative_pinv(mixed, iterations=20), torch.linalg.pinv(mixed)
    )


@pytest.mark.parametrize("bad", [7, 0, 2.0])
def test_segment_means_refuses_segments_it_cannot_fill(bad):
    # issue 22: 7 segments of 5 rows gave NaN rows, 0 a ZeroDivisionError
    with pytest.raises(ValueError, match="segments"):
        segment_means(torch.randn(5, 4), bad)


def test_iterative_pinv_refuses_a_matrix_that_is_not_square():
    with pytest.raises(ValueError, match="matrix"):
        iterative_pinv(torch.ones(2, 3))


@pytest.mark.parametrize("shape", [(5, 4, 8), (2, 2, 4, 8), (1, 1, 1, 4, 8)])
def test_linformer_names_projections_of_the_wrong_leading_shape(shape):
    # issue 22: the matmul or broadcast_shapes raised a RuntimeError
    q, k, v = qkv(2, 3, L=8, S=8)
    proj = ea.make_linformer_projections(8, 4, generator=gen(),
                                         dtype=q.dtype)  # fmt: skip
    with pytest.raises(ValueError, match="proj_k's leading"):
        ea.linformer_attention(q, k, v, proj_k=proj.expand(*shape))
    torch.testing.assert_close(  # one per head broadcasts over the batch
        ea.linformer_attention(q, k, v, proj_k=proj.expand(3, 4, 8)),
        ea.linformer_attention(q, k, v, proj_k=proj),
    )


def test_linformer_projections_take_dtype_names():
    # issue 22: dtype="float16" raised an opaque TypeError
    half = ea.make_linformer_projections(8, 4, generator=gen(),
                                         dtype="float16")  # fmt: skip
    assert half.dtype == torch.float16
    with pytest.raises(ValueError, match="dtype"):
        ea.make_linformer_projections(8, 4, generator=gen(), dtype="int8")


def test_approximation_error_names_an_fn_that_is_no_function():
    # issue 22: a TypeError where the docstring promises a ValueError
    q, k, v = qkv(2, L=8, S=8)
    with pytest.raises(ValueError, match="fn"):
        ea.approximation_error(3, q, k, v)


def test_overflowing_scores_are_refused():
    q, k, v = qkv(2, L=8, S=8, dtype=torch.float32)
    big = q * 1e20
    eye = torch.eye(8)
    for call in (
        lambda: ea.linformer_attention(big, big, v, proj_k=eye),
        lambda: ea.nystrom_attention(big, big, v, num_landmarks=2),
    ):
        with pytest.raises(ValueError, match="scale"):
            call()


# -- low-rank weights on a model -------------------------------------------


def test_low_rank_model_replaces_layers_that_shrink():
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
    x = torch.randn(4, 32)
    before = model(x)
    savings = lrw.low_rank_model(model, rank=8)
    assert savings.layers == 1  # the 32 -> 2 layer is already thin
    assert isinstance(model[0], lrw.LowRankLinear)
    assert savings.params_before == 32 * 32 + 32
    assert savings.params_after == 8 * 64 + 32
    assert model(x).shape == before.shape


def test_tucker_head_weights_at_full_rank_keep_the_layer():
    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.query, self.key, self.value = (
                nn.Linear(8, 8).double() for _ in range(3)
            )

    layer = Attention()
    x = torch.randn(3, 8, dtype=torch.float64)
    before = layer.query(x)
    stored = lrw.tucker_head_weights(layer, 2, (3, 2, 4, 8))
    assert stored[0] == 3 * 64
    torch.testing.assert_close(layer.query(x), before)
