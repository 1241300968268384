"""Local attention: sliding windows (both backends), adaptive spans."""

from __future__ import annotations

import functools
import platform

import pytest
import torch
from inputs import random_qkv as shared_random_qkv

import efficient_attention as ea
from efficient_attention import cpu_kernels, masks
from efficient_attention.attention import local

BACKENDS = ["torch", "kernel"]


random_qkv = functools.partial(shared_random_qkv, S=9)


def window_mask(window, L, S, *, dilation=1, border="clip", heads=None):
    """The dense mask that sliding_window_attention must equal."""

    def one(w, d):
        if border == "shift":
            return masks.shifted_window(w, S, d)
        return masks.dilated_sliding_window(w, d)

    if heads is None:
        return masks.create_mask(one(window, dilation), L, S)
    windows = window if isinstance(window, list) else [window] * heads
    dilations = dilation if isinstance(dilation, list) else [dilation] * heads
    mods = [one(w, d) for w, d in zip(windows, dilations)]
    return masks.create_mask(masks.per_head(*mods), L, S, heads=heads)


CASES = [
    # (L, S, window, dilation, border)
    (9, 9, (1, 1), 1, "clip"),  # the seed's window_size=3
    (9, 9, 2, 1, "clip"),
    (33, 33, (4, 0), 1, "clip"),  # causal local
    (33, 33, (0, 4), 1, "clip"),
    (33, 33, (0, 0), 1, "clip"),
    (17, 17, (100, 100), 1, "clip"),  # wider than the sequence
    (70, 70, (5, 3), 3, "clip"),
    (70, 70, (5, 3), 1, "shift"),
    (70, 70, (5, 3), 2, "shift"),
    (12, 30, (2, 2), 1, "clip"),  # L < S
    (30, 12, (2, 2), 2, "clip"),  # L > S: some rows have no key
    (30, 12, (2, 2), 1, "shift"),
    (131, 131, (64, 64), 1, "clip"),  # L not a multiple of any block
    # issue 22: L > S with shift, past the first block of 64 queries
    (100, 3, (1, 1), 1, "shift"),
    (200, 150, (1, 1), 1, "shift"),
    (400, 20, (2, 1), 3, "shift"),  # dilated: a class per residue
    (700, 3, (0, 4), 5, "shift"),  # classes with no key at all
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("L,S,window,dilation,border", CASES)
def test_equals_dense_with_the_window_mask(
    backend, L, S, window, dilation, border
):
    dtype = torch.float64 if backend == "torch" else torch.float32
    q, k, v = random_qkv(2, 3, L=L, S=S, dtype=dtype)
    out = ea.sliding_window_attention(
        q,
        k,
        v,
        window=window,
        dilation=dilation,
        border=border,
        backend=backend,
    )
    mask = window_mask(window, L, S, dilation=dilation, border=border)
    expected = ea.dense_attention(q, k, v, attn_mask=mask)
    assert out.shape == (2, 3, L, 5) and out.dtype == dtype
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("border", ["clip", "shift"])
def test_one_window_per_head(backend, border):
    windows = [(1, 1), (6, 0), (0, 2), (3, 5)]
    dilations = [1, 2, 1, 3]
    q, k, v = random_qkv(2, 4, L=40, S=40, dtype=torch.float32)
    out = ea.sliding_window_attention(
        q,
        k,
        v,
        window=windows,
        dilation=dilations,
        border=border,
        backend=backend,
    )
    mask = window_mask(
        windows, 40, 40, dilation=dilations, border=border, heads=4
    )
    torch.testing.assert_close(
        out, ea.dense_attention(q, k, v, attn_mask=mask)
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("lead", [(), (3,), (2, 3), (2, 1, 3)])
def test_any_leading_dimensions(backend, lead):
    q, k, v = random_qkv(*lead, L=20, S=20, E=4, Ev=6, dtype=torch.float32)
    out = ea.sliding_window_attention(q, k, v, window=(3, 1), backend=backend)
    mask = window_mask((3, 1), 20, 20)
    assert out.shape == (*lead, 20, 6)
    torch.testing.assert_close(
        out, ea.dense_attention(q, k, v, attn_mask=mask)
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_is_computed_in_float32(backend, dtype):
    q, k, v = random_qkv(2, L=50, S=50, dtype=dtype)
    out = ea.sliding_window_attention(q, k, v, window=7, backend=backend)
    assert out.dtype == dtype
    mask = window_mask(7, 50, 50)
    expected = ea.dense_attention(
        *(t.float() for t in (q, k, v)), attn_mask=mask
    )
    torch.testing.assert_close(out.float(), expected, atol=1e-2, rtol=1e-2)


def test_window_sentence_on_the_effective_attention():
    """Query i attends key j iff i - left <= j <= i + right."""
    left, right = 2, 1
    q, k, _ = random_qkv(L=12, S=12)
    weights = ea.effective_attention(
        ea.sliding_window_attention, q, k, window=(left, right)
    )
    i = torch.arange(12).view(-1, 1)
    j = torch.arange(12).view(1, -1)
    assert torch.equal(weights > 0, (i - left <= j) & (j <= i + right))


def test_the_seeds_window_size_3_is_one_key_each_side():
    q, k, _ = random_qkv(L=6, S=6)
    weights = ea.effective_attention(
        ea.sliding_window_attention, q, k, window=(1, 1)
    )
    assert (weights > 0).sum(-1).tolist() == [2, 3, 3, 3, 3, 2]


def test_shift_gives_every_query_the_same_number_of_keys():
    q, k, _ = random_qkv(L=10, S=10)
    clipped, shifted = (
        ea.effective_attention(
            ea.sliding_window_attention, q, k, window=(2, 2), border=border
        )
        for border in ("clip", "shift")
    )
    assert (shifted > 0).sum(-1).tolist() == [5] * 10
    assert (clipped > 0).sum(-1).tolist() == [3, 4] + [5] * 6 + [4, 3]
    # Away from the ends both rules admit the same keys; the two are
    # different computations (other block boundaries), so they agree to
    # float64 rounding, not bit for bit (AVX-512 and AVX2 round apart).
    torch.testing.assert_close(
        shifted[4:6], clipped[4:6], rtol=1e-12, atol=1e-15
    )


def test_kernel_matches_torch_on_a_long_sequence():
    q, k, v = random_qkv(
        1, 3, L=1000, S=1000, E=64, Ev=64, dtype=torch.float32
    )
    kw = dict(window=[(128, 128), (128, 0), (17, 40)], dilation=[1, 1, 4])
    torch.testing.assert_close(
        ea.sliding_window_attention(q, k, v, backend="kernel", **kw),
        ea.sliding_window_attention(q, k, v, backend="torch", **kw),
    )


def test_kernel_reads_views_as_their_contiguous_copies():
    # The layouts transformers and users hand over: heads split out of a
    # (B, L, H * E) projection, keys expanded over heads (shared), and a
    # last dimension that is not contiguous (copied first).
    B, L, H, E = 2, 150, 3, 16
    generator = torch.Generator().manual_seed(0)
    qkv = torch.randn(B, L, 3 * H * E, generator=generator)
    q, k, v = (
        t.view(B, L, H, E).transpose(1, 2) for t in qkv.split(H * E, -1)
    )
    shared = torch.randn(B, 1, L, E, generator=generator).expand(B, H, L, E)
    wide = torch.randn(B, H, L, 2 * E, generator=generator)[..., ::2]
    kw = dict(window=[(9, 4), (0, 0), (30, 30)], dilation=[1, 2, 1])
    for views in [(q, k, v), (q, shared, shared), (wide, k, wide)]:
        assert not all(t.is_contiguous() for t in views)
        torch.testing.assert_close(
            ea.sliding_window_attention(*views, backend="kernel", **kw),
            ea.sliding_window_attention(
                *(t.contiguous() for t in views), backend="kernel", **kw
            ),
            rtol=0,
            atol=0,
        )
        torch.testing.assert_close(
            ea.sliding_window_attention(*views, backend="kernel", **kw),
            ea.sliding_window_attention(*views, backend="torch", **kw),
        )


def test_gradients_equal_dense_and_pass_gradcheck():
    q, k, v = (t.requires_grad_(True) for t in random_qkv(2, L=7, S=7))
    mask = window_mask((2, 1), 7, 7, dilation=2)
    grad = torch.randn(2, 7, 5, dtype=torch.float64)
    out = ea.sliding_window_attention(q, k, v, window=(2, 1), dilation=2)
    ours = torch.autograd.grad(out, (q, k, v), grad)
    dense = ea.dense_attention(q, k, v, attn_mask=mask)
    theirs = torch.autograd.grad(dense, (q, k, v), grad)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(
        lambda q, k, v: ea.sliding_window_attention(
            q, k, v, window=(1, 2), border="shift"
        ),
        (q, k, v),
    )


def test_use_kernel_refuses_gradients_unless_the_kernel_has_a_backward():
    if not cpu_kernels.status("sliding_window").startswith("ready"):
        pytest.skip(cpu_kernels.status("sliding_window"))
    q, k, v = random_qkv(L=20, S=20, dtype=torch.float32)
    assert cpu_kernels.use_kernel("sliding_window", "auto", q, k, v)
    trains = q.clone().requires_grad_(True)
    assert not cpu_kernels.use_kernel("sliding_window", "auto", trains, k, v)
    assert cpu_kernels.use_kernel(
        "sliding_window", "auto", trains, k, v, backward=True
    )
    with pytest.raises(NotImplementedError, match="computes no gradients"):
        cpu_kernels.use_kernel("sliding_window", "kernel", trains, k, v)
    with torch.no_grad():
        assert cpu_kernels.use_kernel("sliding_window", "auto", trains, k, v)
    assert not cpu_kernels.use_kernel(
        "sliding_window", "auto", q.double(), k.double(), v.double()
    )


def test_kernel_backend_says_what_it_cannot_do():
    q, k, v = random_qkv(L=8, S=8, dtype=torch.float64)
    with pytest.raises(NotImplementedError, match="float64"):
        ea.sliding_window_attention(q, k, v, window=1, backend="kernel")


KERNEL_GRADIENT_CASES = {
    # name: (L, S, E, Ev, keyword arguments)
    "clip, uneven sides": (100, 100, 16, 16, dict(window=(5, 3))),
    "window of 257 keys": (300, 300, 64, 64, dict(window=128)),
    "more queries than keys": (70, 50, 8, 12, dict(window=(3, 0))),
    "dilation": (50, 70, 8, 12, dict(window=(0, 7), dilation=3)),
    "per-head windows and dilations": (
        90, 90, 20, 9,
        dict(window=[(1, 2), (4, 0)], dilation=[1, 3]),
    ),
    "shift, L > S": (90, 60, 20, 9, dict(window=(4, 2), border="shift")),
    "shift, dilated": (
        60, 90, 20, 9, dict(window=(4, 2), dilation=2, border="shift")
    ),
    "window wider than the keys": (33, 33, 5, 3, dict(window=40)),
}  # fmt: skip


@pytest.mark.parametrize("case", KERNEL_GRADIENT_CASES)
def test_kernel_gradients_equal_the_torch_version(case):
    # The kernel recomputes the band's weights in its backward pass; the
    # PyTorch version (float64, autograd) is the reference.
    if not cpu_kernels.status("sliding_window").startswith("ready"):
        pytest.skip(cpu_kernels.status("sliding_window"))
    L, S, E, Ev, kw = KERNEL_GRADIENT_CASES[case]
    q, k, v = random_qkv(2, 2, L=L, S=S, E=E, Ev=Ev)
    grad = torch.randn(2, 2, L, Ev, dtype=torch.float64)
    inputs = [t.clone().requires_grad_() for t in (q, k, v)]
    reference = ea.sliding_window_attention(*inputs, backend="torch", **kw)
    expected = (reference, *torch.autograd.grad(reference, inputs, grad))
    inputs = [t.float().requires_grad_() for t in (q, k, v)]
    out = ea.sliding_window_attention(*inputs, backend="kernel", **kw)
    got = (out, *torch.autograd.grad(out, inputs, grad.float()))
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, expected):
        # float32 sums over at most 257 keys: ~1e-6 of the largest value
        scale = b.abs().max().item()
        assert (a.double() - b).abs().max().item() <= 1e-5 * scale, name


def test_training_takes_the_kernel_and_keeps_the_input_dtype(monkeypatch):
    if not cpu_kernels.status("sliding_window").startswith("ready"):
        pytest.skip(cpu_kernels.status("sliding_window"))
    calls = []
    real = local._sliding_window_kernel_backward
    monkeypatch.setattr(
        local,
        "_sliding_window_kernel_backward",
        lambda *a: calls.append(1) or real(*a),
    )
    q, k, v = (
        t.to(torch.bfloat16).requires_grad_()
        for t in random_qkv(L=40, S=40, dtype=torch.float32)
    )
    out = ea.sliding_window_attention(q, k, v, window=(4, 4))
    out.float().sum().backward()
    assert calls == [1]
    assert all(t.grad.dtype == torch.bfloat16 for t in (q, k, v))
    assert all(t.grad.abs().sum() > 0 for t in (q, k, v))


@pytest.fixture
def fresh_kernels(monkeypatch):
    """Forget every loaded kernel for one test, and again after it."""
    monkeypatch.setattr(cpu_kernels, "_LOADED", {})
    cpu_kernels._load_once.cache_clear()
    yield
    cpu_kernels._load_once.cache_clear()


def test_without_a_compiler_auto_warns_once_and_runs_torch(
    monkeypatch, fresh_kernels
):
    monkeypatch.setattr(cpu_kernels, "_compiler", lambda: None)
    monkeypatch.setattr(cpu_kernels, "_WARNED", set())
    q, k, v = random_qkv(L=8, S=8, dtype=torch.float32)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        out = ea.sliding_window_attention(q, k, v, window=1)
    torch.testing.assert_close(
        out,
        ea.dense_attention(q, k, v, attn_mask=window_mask(1, 8, 8)),
    )
    with pytest.raises(cpu_kernels.KernelUnavailable, match="compiler"):
        ea.sliding_window_attention(q, k, v, window=1, backend="kernel")
    assert cpu_kernels.status("sliding_window").startswith("unavailable")


def test_kernel_builds_into_the_cache_folder(
    tmp_path, monkeypatch, fresh_kernels
):
    monkeypatch.setenv("EFFICIENT_ATTENTION_CACHE", str(tmp_path))
    if cpu_kernels._compiler() is None:
        pytest.skip("no C++ compiler here")
    cpu_kernels.load("sliding_window")
    built = list((tmp_path / "kernels").glob("sliding_window-*.so"))
    assert len(built) == 1
    with pytest.raises(ValueError, match="no kernel named 'nope'"):
        cpu_kernels.load("nope")


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"window": -1}, "window sides must be >= 0"),
        ({"window": (1, -2)}, "window sides must be >= 0"),
        ({"window": 1.5}, "window must be an int"),
        ({"window": "wide"}, "window must be an int"),
        ({"window": [(1, 1), (2, 2)]}, "window has 2 per-head values"),
        ({"window": [(1, 1)] * 3 + [(1, -1)]}, "window of head 3"),
        ({"window": 1, "dilation": 0}, "dilation must be a positive int"),
        ({"window": 1, "dilation": [1, 2]}, "dilation has 2 per-head"),
        ({"window": 1, "border": "wrap"}, "border must be one of"),
        ({"window": 1, "backend": "cuda"}, "backend must be one of"),
        ({"window": 1, "scale": "big"}, "scale must be a float"),
    ],
)
def test_bad_arguments_raise_a_clear_error(kwargs, message):
    q, k, v = random_qkv(2, 4, L=6, S=6)
    with pytest.raises(ValueError, match=message):
        ea.sliding_window_attention(q, k, v, **kwargs)


def test_bad_tensors_raise_a_clear_error():
    q, k, v = random_qkv(L=6, S=6)
    with pytest.raises(ValueError, match="need a heads dimension"):
        ea.sliding_window_attention(q, k, v, window=[(1, 1)])
    with pytest.raises(ValueError, match="share one dtype"):
        ea.sliding_window_attention(q.float(), k, v, window=1)
    with pytest.raises(ValueError, match="same feature size E"):
        ea.sliding_window_attention(q[:, :3], k, v, window=1)
    with pytest.raises(ValueError, match="one device"):
        ea.sliding_window_attention(q, k.to("meta"), v, window=1)


def test_encoder_layer_with_a_local_window_equals_the_masked_layer():
    torch.manual_seed(0)
    local_layer = ea.EncoderLayer(
        32,
        4,
        64,
        attention=functools.partial(
            ea.sliding_window_attention, window=(1, 1)
        ),
    )
    mask = window_mask((1, 1), 10, 10)
    masked_layer = ea.EncoderLayer(
        32,
        4,
        64,
        attention=functools.partial(ea.dense_attention, attn_mask=mask),
    )
    masked_layer.load_state_dict(local_layer.state_dict())
    hidden = torch.randn(2, 10, 32)
    with torch.no_grad():
        torch.testing.assert_close(local_layer(hidden), masked_layer(hidden))


def test_adaptive_span_mask_windows_and_loss():
    span = local.AdaptiveSpanAttention(3, 16, ramp=4, initial_span=5.0)
    with torch.no_grad():
        span.span_fraction.copy_(torch.tensor([0.0, 5 / 16, 2.0]))
    assert span.spans().tolist() == [0.0, 5.0, 16.0]  # clamped to [0, 1]
    mask = span.soft_mask(50, 50)
    windows = span.windows()
    assert windows == [(3, 3), (8, 8), (19, 19)]
    for h, (reach, _) in enumerate(windows):
        row = mask[h, 25]  # query 25: distance |25 - j|
        assert row[25 - reach] > 0 and row[25 + reach] > 0
        assert row[25 - reach - 1] == 0 and row[25 + reach + 1] == 0
    assert mask[1, 25, 25 - 5] == 1  # full weight inside the span
    span.span_loss().backward()
    assert span.span_fraction.grad[1] > 0  # a larger span costs more


def test_adaptive_span_fast_inference_uses_the_hard_windows():
    span = local.AdaptiveSpanAttention(2, 8, ramp=2, causal=True)
    q, k, v = random_qkv(2, L=12, S=12, dtype=torch.float32)
    fast = span.fast_forward(q, k, v)
    (reach_0, _), (reach_1, _) = span.windows()
    mask = window_mask([(reach_0, 0), (reach_1, 0)], 12, 12, heads=2)
    torch.testing.assert_close(
        fast, ea.dense_attention(q, k, v, attn_mask=mask)
    )
    soft = span(q, k, v)
    assert soft.shape == fast.shape
    with pytest.raises(ValueError, match="span has 2 per-head values"):
        span(*random_qkv(3, L=4, S=4, dtype=torch.float32))
    with pytest.raises(ValueError, match="initial_span"):
        local.AdaptiveSpanAttention(2, 8, initial_span=9)


def test_kernel_flags_from_the_environment_build_another_library(
    tmp_path, monkeypatch, fresh_kernels
):
    # A generic x86-64 build (SSE2 vectors of 4 floats, not AVX's 8 or
    # AVX-512's 16) computes the same attention as the native one.
    if cpu_kernels._compiler() is None:
        pytest.skip("no C++ compiler here")
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("-march=x86-64 is for x86-64 CPUs")
    monkeypatch.setenv("EFFICIENT_ATTENTION_CACHE", str(tmp_path))
    monkeypatch.delenv("EFFICIENT_ATTENTION_KERNEL_FLAGS", raising=False)
    cpu_kernels.load("sliding_window")
    native = {p.name for p in (tmp_path / "kernels").glob("sliding*.so")}
    monkeypatch.setattr(cpu_kernels, "_LOADED", {})
    cpu_kernels._load_once.cache_clear()
    monkeypatch.setenv("EFFICIENT_ATTENTION_KERNEL_FLAGS", "-march=x86-64")
    assert cpu_kernels.target_flags() == ("-march=x86-64",)
    assert "built with -march=x86-64" in cpu_kernels.status("sliding_window")
    generic = {p.name for p in (tmp_path / "kernels").glob("sliding*.so")}
    assert len(native) == 1 and len(generic - native) == 1
    q, k, v = random_qkv(2, L=70, S=70, dtype=torch.float32)
    kw = dict(window=[(5, 3), (0, 9)], dilation=[1, 2])
    torch.testing.assert_close(
        ea.sliding_window_attention(q, k, v, backend="kernel", **kw),
        ea.sliding_window_attention(q, k, v, backend="torch", **kw),
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_adaptive_span_runs_half_precision_in_float32(dtype):
    # issue 22: the float32 soft mask met half-precision weights
    span = local.AdaptiveSpanAttention(2, 8, ramp=2)
    q, k, v = random_qkv(2, L=12, S=12, dtype=torch.float32)
    q, k, v = (t.to(dtype) for t in (q, k, v))
    out = span(q, k, v)
    assert out.dtype == dtype
    torch.testing.assert_close(
        out.float(), span(q.float(), k.float(), v.float()),
        atol=1e-2, rtol=1e-2,
    )


def test_adaptive_span_checks_its_scores_and_its_initial_span():
    # issue 22: NaN or overflowing scores gave NaN; True passed as a span
    span = local.AdaptiveSpanAttention(2, 8)
    q, k, v = random_qkv(2, L=6, S=6, dtype=torch.float32)
    k[0, 3, 0] = float("nan")
    with pytest.raises(ValueError, match="scores"):
        span(q, k, v)
    with pytest.raises(ValueError, match="scores"):
        span(q * 1e30, k.nan_to_num() * 1e30, v)
    with pytest.raises(ValueError, match="initial_span"):
        local.AdaptiveSpanAttention(2, 8, initial_span=True)


def test_without_openmp_the_kernel_runs_on_one_thread_and_says_so(
    tmp_path, monkeypatch, fresh_kernels
):
    if cpu_kernels._compiler() is None:
        pytest.skip("no C++ compiler here")
    monkeypatch.setenv("EFFICIENT_ATTENTION_CACHE", str(tmp_path))
    only_serial = [
        flags for flags in cpu_kernels._flag_sets() if "-fopenmp" not in flags
    ]
    monkeypatch.setattr(cpu_kernels, "_flag_sets", lambda: only_serial)
    assert "one thread" in cpu_kernels.status("sliding_window")
    q, k, v = random_qkv(2, L=30, S=30, dtype=torch.float32)
    torch.testing.assert_close(
        ea.sliding_window_attention(q, k, v, window=4, backend="kernel"),
        ea.dense_attention(q, k, v, attn_mask=window_mask(4, 30, 30)),
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_key_outside_every_window_is_never_read(backend, bad):
    # issue 22: one rule for both backends (the kernel never reads such a
    # key; the PyTorch version scores it in a band but masks it unchecked)
    q, k, v = random_qkv(1, 2, L=90, S=90, dtype=torch.float32)
    k[..., 50:, :] = bad  # outside the windows of queries 0 to 9
    out = ea.sliding_window_attention(
        q[..., :10, :], k, v, window=(2, 3), backend=backend
    )
    expected = ea.sliding_window_attention(
        q[..., :10, :], k[..., :13, :], v[..., :13, :], window=(2, 3),
        backend=backend,
    )
    assert out.isfinite().all()
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError, match="scores"):  # inside a window
        ea.sliding_window_attention(q, k, v, window=(2, 3), backend=backend)


def test_small_kernel_calls_run_on_one_thread():
    # waking a second thread costs more than a tiny call saves
    assert cpu_kernels.threads_for(cpu_kernels.PARALLEL_MIN_FLOPS - 1) == 1
    assert (
        cpu_kernels.threads_for(cpu_kernels.PARALLEL_MIN_FLOPS)
        == torch.get_num_threads()
    )
