"""Sparse attention: block layouts (both backends), mask functions run
sparse, routing and top-k attention, sparse products, bad input."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from inputs import random_qkv as shared_random_qkv

import efficient_attention as ea
from efficient_attention import cpu_kernels, masks
from efficient_attention.attention import block_sparse, sparse_products

BACKENDS = ["torch", "kernel"]


random_qkv = functools.partial(shared_random_qkv, S=9)


def dtype_of(backend):
    return torch.float64 if backend == "torch" else torch.float32


def layout_mask(layout, block_size, L, S):
    heads = layout.shape[0] if layout.dim() == 3 else None
    mod = masks.from_block_layout(layout, block_size)
    return masks.create_mask(mod, L, S, heads=heads)


def random_layout(*shape, density=0.4, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=generator) < density


# -- block_sparse_attention ----------------------------------------------

LAYOUT_CASES = [
    # (L, S, block_size, per_head)
    (37, 45, 8, False),  # neither length a multiple of the block
    (37, 45, 8, True),  # one layout per head
    (64, 64, 16, False),
    (5, 70, 16, True),  # L < block_size
    (70, 5, 16, False),
    (100, 100, 32, True),  # blocks wider than a lane group
    (33, 33, 3, False),  # blocks narrower than a lane group
    (130, 130, 64, True),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("L,S,block_size,per_head", LAYOUT_CASES)
def test_block_sparse_equals_dense_with_the_layout_mask(
    backend, L, S, block_size, per_head
):
    q, k, v = random_qkv(2, 3, L=L, S=S, dtype=dtype_of(backend))
    nq, nk = -(-L // block_size), -(-S // block_size)
    layout = random_layout(*((3,) if per_head else ()), nq, nk)
    out = ea.block_sparse_attention(
        q, k, v, layout=layout, block_size=block_size, backend=backend
    )
    expected = ea.dense_attention(
        q, k, v, attn_mask=layout_mask(layout, block_size, L, S)
    )
    assert out.shape == (2, 3, L, 5) and out.dtype == q.dtype
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_with_no_block_get_zeros(backend):
    q, k, v = random_qkv(1, 2, L=40, S=40, dtype=dtype_of(backend))
    layout = torch.ones(2, 5, 5, dtype=torch.bool)
    layout[0, 1] = False  # head 0, queries 8..15: nothing to attend
    layout[1, :, :] = False  # head 1: nothing at all
    out = ea.block_sparse_attention(
        q, k, v, layout=layout, block_size=8, backend=backend
    )
    assert (out[0, 0, 8:16] == 0).all() and (out[0, 1] == 0).all()
    assert not out.isnan().any()
    torch.testing.assert_close(
        out[0, 0, :8], ea.dense_attention(q, k, v)[0, 0, :8]
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_any_leading_dimensions(backend):
    dtype = dtype_of(backend)
    layout = random_layout(3, 4)
    for lead in [(), (2,), (2, 1, 3)]:
        q, k, v = random_qkv(*lead, L=20, S=30, dtype=dtype)
        out = ea.block_sparse_attention(
            q, k, v, layout=layout, block_size=8, backend=backend
        )
        mask = layout_mask(layout, 8, 20, 30)
        expected = ea.dense_attention(q, k, v, attn_mask=mask)
        torch.testing.assert_close(out, expected)


def test_full_layout_is_dense_attention_in_float32_and_half():
    q, k, v = random_qkv(2, 2, L=50, S=50, dtype=torch.float32)
    layout = torch.ones(4, 4, dtype=torch.bool)
    for backend in BACKENDS:
        out = ea.block_sparse_attention(
            q, k, v, layout=layout, block_size=16, backend=backend
        )
        torch.testing.assert_close(out, ea.dense_attention(q, k, v))
    out = ea.block_sparse_attention(
        *(t.bfloat16() for t in (q, k, v)), layout=layout, block_size=16
    )
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(
        out.float(), ea.dense_attention(q, k, v), atol=3e-2, rtol=3e-2
    )


def test_the_kernel_and_the_torch_version_agree_on_long_rows():
    # rows of 40 kept blocks (2560 keys): several online-softmax chunks
    q, k, v = random_qkv(1, 2, L=300, S=2600, E=16, Ev=16, dtype=torch.float32)
    q = q * 3  # large scores: the running maximum moves between chunks
    layout = random_layout(2, 5, 41, density=0.9)
    run = lambda b: ea.block_sparse_attention(  # noqa: E731
        q, k, v, layout=layout, block_size=64, backend=b
    )
    torch.testing.assert_close(run("kernel"), run("torch"))


def test_auto_runs_the_kernel_only_where_it_applies(monkeypatch):
    if not cpu_kernels.status("block_sparse").startswith("ready"):
        pytest.skip(cpu_kernels.status("block_sparse"))
    calls = []
    real = block_sparse.block_sparse_kernel_lse
    monkeypatch.setattr(
        block_sparse,
        "block_sparse_kernel_lse",
        lambda *a: calls.append(1) or real(*a),
    )
    q, k, v = random_qkv(1, L=16, S=16, dtype=torch.float32)
    layout = torch.ones(2, 2, dtype=torch.bool)
    ea.block_sparse_attention(q, k, v, layout=layout, block_size=8)
    assert calls == [1]
    ea.block_sparse_attention(q.double(), k.double(), v.double(),
                              layout=layout, block_size=8)  # fmt: skip
    assert calls == [1]  # float64 takes the PyTorch version
    q.requires_grad_()
    ea.block_sparse_attention(q, k, v, layout=layout, block_size=8)
    assert calls == [1, 1]  # the kernel has a backward pass
    with pytest.raises(NotImplementedError, match="float64"):
        ea.block_sparse_attention(
            q.double(), k.double(), v.double(), layout=layout,
            block_size=8, backend="kernel",
        )  # fmt: skip


KERNEL_GRADIENT_CASES = {
    # name: (B, H, L, S, E, Ev, block size, layout density, layout seed)
    "one chunk, uneven ends": (1, 2, 70, 90, 16, 8, 16, 0.4, 1),
    "blocks narrower than a lane group": (1, 2, 80, 80, 16, 16, 8, 0.5, 2),
    "batch, rectangular heads": (2, 3, 150, 160, 32, 24, 64, 0.6, 3),
    "rows of several chunks": (1, 2, 300, 2600, 16, 16, 64, 0.9, 4),
}


def _float32_gradients(fn, q, k, v, grad):
    """Output and gradients of ``fn`` run in float32 on copies of q, k, v."""
    inputs = [t.detach().float().requires_grad_() for t in (q, k, v)]
    out = fn(*inputs)
    return (out, *torch.autograd.grad(out, inputs, grad.float()))


@pytest.mark.parametrize("case", KERNEL_GRADIENT_CASES)
def test_kernel_gradients_equal_the_torch_version(case):
    # The kernel recomputes each kept tile from the rows' log-sum-exp; the
    # PyTorch version (float64, autograd) is the reference.
    if not cpu_kernels.status("block_sparse").startswith("ready"):
        pytest.skip(cpu_kernels.status("block_sparse"))
    B, H, L, S, E, Ev, bs, density, seed = KERNEL_GRADIENT_CASES[case]
    q, k, v = random_qkv(B, H, L=L, S=S, E=E, Ev=Ev)
    nq, nk = -(-L // bs), -(-S // bs)
    layout = random_layout(H, nq, nk, density=density, seed=seed)
    layout[0, nq // 2] = False  # a query block with no key block
    grad = torch.randn(B, H, L, Ev, dtype=torch.float64)

    def run(backend):
        return lambda q, k, v: ea.block_sparse_attention(
            q, k, v, layout=layout, block_size=bs, backend=backend
        )

    inputs = [t.clone().requires_grad_() for t in (q, k, v)]
    reference = run("torch")(*inputs)
    expected = (reference, *torch.autograd.grad(reference, inputs, grad))
    got = _float32_gradients(run("kernel"), q, k, v, grad)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, expected):
        # float32 sums over up to 2600 keys: relative error ~1e-6 of the
        # largest gradient, far below any mistake in the formulas
        scale = b.abs().max().item()
        assert (a.double() - b).abs().max().item() <= 1e-5 * scale, name


def test_kernel_gradients_of_partly_kept_blocks():
    # a mask function keeps some blocks only in part: their element masks
    # must hold in the backward pass as in the forward one
    if not cpu_kernels.status("block_sparse").startswith("ready"):
        pytest.skip(cpu_kernels.status("block_sparse"))
    q, k, v = random_qkv(1, 2, L=61, S=61, E=16, Ev=16)
    window = masks.sliding_window((5, 2))
    grad = torch.randn(1, 2, 61, 16, dtype=torch.float64)
    dense = [t.clone().requires_grad_() for t in (q, k, v)]
    mask = masks.create_mask(window, 61, 61)
    reference = ea.dense_attention(*dense, attn_mask=mask)
    expected = torch.autograd.grad(reference, dense, grad)
    for bs in (8, 64):
        got = _float32_gradients(
            lambda q, k, v: ea.sparse_attention(
                q, k, v, pattern=window, block_size=bs, backend="kernel"
            ),
            q, k, v, grad,
        )  # fmt: skip
        for a, b in zip(got[1:], expected):
            torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5)


def test_kernel_gradients_keep_the_input_dtype():
    if not cpu_kernels.status("block_sparse").startswith("ready"):
        pytest.skip(cpu_kernels.status("block_sparse"))
    q, k, v = (
        t.to(torch.bfloat16).requires_grad_()
        for t in random_qkv(1, L=32, S=32, dtype=torch.float32)
    )
    layout = torch.tensor([[True, False], [True, True]])
    out = ea.block_sparse_attention(
        q, k, v, layout=layout, block_size=16, backend="kernel"
    )
    out.float().sum().backward()
    assert all(t.grad.dtype == torch.bfloat16 for t in (q, k, v))
    assert all(t.grad.abs().sum() > 0 for t in (q, k, v))


def test_gradcheck_on_tiny_float64_inputs():
    q, k, v = random_qkv(1, 2, L=10, S=11, E=3, Ev=2)
    layout = random_layout(2, 3, 3, density=0.6, seed=3)
    inputs = tuple(t.requires_grad_() for t in (q, k, v))

    def fn(q, k, v):
        return ea.block_sparse_attention(q, k, v, layout=layout, block_size=4)

    assert torch.autograd.gradcheck(fn, inputs)


def test_gradients_equal_dense_gradients():
    q, k, v = random_qkv(2, L=30, S=30, E=4, Ev=3)
    layout = random_layout(4, 4, seed=5)
    mask = layout_mask(layout, 8, 30, 30)
    grads = []
    for fn in (
        lambda q, k, v: ea.block_sparse_attention(
            q, k, v, layout=layout, block_size=8
        ),
        lambda q, k, v: ea.dense_attention(q, k, v, attn_mask=mask),
    ):
        inputs = [t.clone().requires_grad_() for t in (q, k, v)]
        fn(*inputs).square().sum().backward()
        grads.append([t.grad for t in inputs])
    for got, expected in zip(*grads):
        torch.testing.assert_close(got, expected)


def test_overflowing_scores_are_a_value_error():
    q, k, v = random_qkv(1, L=16, S=16, dtype=torch.float32)
    layout = torch.ones(2, 2, dtype=torch.bool)
    for backend in BACKENDS:
        with pytest.raises(ValueError, match="scale"):
            ea.block_sparse_attention(
                q * 1e20,
                k * 1e20,
                v,
                layout=layout,
                block_size=8,
                backend=backend,
            )


def test_empty_inputs_give_zeros():
    q, k, v = random_qkv(2, L=0, S=5)
    out = ea.block_sparse_attention(
        q, k, v, layout=torch.ones(0, 1, dtype=torch.bool), block_size=8
    )
    assert out.shape == (2, 0, 5)
    q, k, v = random_qkv(2, L=4, S=0)
    out = ea.block_sparse_attention(
        q, k, v, layout=torch.ones(1, 0, dtype=torch.bool), block_size=8
    )
    assert out.shape == (2, 4, 5) and (out == 0).all()


BAD_LAYOUTS = [
    # (layout, block_size, name the error must mention)
    (torch.ones(3, 3), 8, "layout"),  # float
    (torch.ones(3, 3, dtype=torch.int64), 8, "layout"),
    ([[True]], 8, "layout"),  # not a tensor
    (torch.ones(2, 3, dtype=torch.bool), 8, "layout"),  # wrong shape
    (torch.ones(3, dtype=torch.bool), 8, "layout"),  # 1-D
    (torch.ones(1, 1, 3, 3, dtype=torch.bool), 8, "layout"),  # 4-D
    (torch.ones(5, 3, 3, dtype=torch.bool), 8, "layout"),  # 5 heads, not 2
    (torch.ones(3, 3, dtype=torch.bool), 0, "block_size"),
    (torch.ones(3, 3, dtype=torch.bool), -8, "block_size"),
    (torch.ones(3, 3, dtype=torch.bool), 2.0, "block_size"),
    (torch.ones(3, 3, dtype=torch.bool), 16, "block_size"),  # does not fit
]


@pytest.mark.parametrize("layout,block_size,name", BAD_LAYOUTS)
def test_bad_layouts_and_block_sizes_name_themselves(layout, block_size, name):
    q, k, v = random_qkv(1, 2, L=20, S=20)
    with pytest.raises(ValueError, match=name):
        ea.block_sparse_attention(
            q, k, v, layout=layout, block_size=block_size
        )


def test_a_layout_that_does_not_fit_says_which_block_sizes_would():
    q, k, v = random_qkv(1, L=100, S=100)
    with pytest.raises(ValueError, match="block_size=25 to 33 fits"):
        ea.block_sparse_attention(
            q, k, v, layout=torch.ones(4, 4, dtype=torch.bool), block_size=8
        )


def test_bad_backend_and_scale_name_themselves():
    q, k, v = random_qkv(L=8, S=8)
    layout = torch.ones(1, 1, dtype=torch.bool)
    with pytest.raises(ValueError, match="backend"):
        ea.block_sparse_attention(
            q, k, v, layout=layout, block_size=8, backend="gpu"
        )
    with pytest.raises(ValueError, match="scale"):
        ea.block_sparse_attention(
            q, k, v, layout=layout, block_size=8, scale=math.inf
        )


def test_kernel_unavailable_falls_back_with_a_warning(monkeypatch):
    def no_kernel(name):
        raise cpu_kernels.KernelUnavailable("no compiler (test)")

    monkeypatch.setattr(cpu_kernels, "load", no_kernel)
    monkeypatch.setattr(cpu_kernels, "_WARNED", set())
    q, k, v = random_qkv(L=8, S=8, dtype=torch.float32)
    layout = torch.ones(1, 1, dtype=torch.bool)
    with pytest.warns(RuntimeWarning, match="no compiler"):
        out = ea.block_sparse_attention(q, k, v, layout=layout, block_size=8)
    torch.testing.assert_close(out, ea.dense_attention(q, k, v))
    with pytest.raises(cpu_kernels.KernelUnavailable):
        ea.block_sparse_attention(
            q, k, v, layout=layout, block_size=8, backend="kernel"
        )


def test_the_kernel_builds_here():
    assert cpu_kernels.status("block_sparse").startswith("ready")


# -- exact attention for any mask function -------------------------------

MASK_MODS = {
    "sliding window": masks.sliding_window((5, 2)),
    "causal": masks.causal,
    "window + global": masks.or_masks(
        masks.sliding_window(3), masks.global_tokens([0, 17])
    ),
    "strided, causal": masks.and_masks(masks.causal, masks.strided(4)),
    "dilated": masks.dilated_sliding_window(3, 3),
    "nothing": masks.invert(masks.full),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", MASK_MODS)
def test_sparse_attention_equals_dense_for_mask_functions(backend, name):
    mod = MASK_MODS[name]
    q, k, v = random_qkv(2, 3, L=37, S=41, dtype=dtype_of(backend))
    out = ea.sparse_attention(
        q, k, v, pattern=mod, block_size=8, backend=backend
    )
    mask = masks.create_mask(mod, 37, 41)
    torch.testing.assert_close(
        out, ea.dense_attention(q, k, v, attn_mask=mask)
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_sparse_attention_with_per_head_masks_and_a_reused_pattern(backend):
    mod = masks.per_head(
        masks.sliding_window(2), masks.causal, masks.global_tokens(3)
    )
    q, k, v = random_qkv(2, 3, L=29, S=29, dtype=dtype_of(backend))
    pattern = ea.block_pattern(mod, 29, 29, block_size=8, heads=3)
    assert 0 < pattern.density < 1 and pattern.element_masks.shape[0] > 0
    out = ea.sparse_attention(q, k, v, pattern=pattern, backend=backend)
    mask = masks.create_mask(mod, 29, 29, heads=3)
    torch.testing.assert_close(
        out, ea.dense_attention(q, k, v, attn_mask=mask)
    )


def test_block_pattern_keeps_whole_blocks_without_element_masks():
    pattern = ea.block_pattern(masks.block_local(8), 32, 32, block_size=8)
    assert pattern.layout[0].equal(torch.eye(4, dtype=torch.bool))
    assert (pattern.mask_index == -1).all()
    pattern = ea.block_pattern(masks.causal, 32, 32, block_size=8)
    assert pattern.layout[0].equal(torch.ones(4, 4, dtype=torch.bool).tril())
    assert (pattern.mask_index >= 0).sum() == 4  # the diagonal blocks


def test_sparse_attention_refuses_what_it_cannot_run():
    q, k, v = random_qkv(2, L=8, S=8)
    with pytest.raises(NotImplementedError, match="batch"):
        ea.sparse_attention(q, k, v, pattern=masks.key_padding([3, 8]))
    with pytest.raises(ValueError, match="pattern"):
        ea.sparse_attention(q, k, v, pattern=torch.ones(8, 8))
    other = ea.block_pattern(masks.causal, 9, 8, block_size=4)
    with pytest.raises(ValueError, match="pattern was built for"):
        ea.sparse_attention(q, k, v, pattern=other)
    with pytest.raises(ValueError, match="block_size"):
        ea.sparse_attention(q, k, v, pattern=masks.causal, block_size=0)


def test_a_prebuilt_pattern_refuses_other_block_sizes_and_heads():
    q, k, v = random_qkv(2, L=8, S=8)
    pattern = ea.block_pattern(masks.causal, 8, 8, block_size=4)
    expected = ea.sparse_attention(q, k, v, pattern=pattern)
    same = ea.sparse_attention(q, k, v, pattern=pattern, block_size=4, heads=1)
    torch.testing.assert_close(same, expected)
    with pytest.raises(ValueError, match="block_size=2 disagrees"):
        ea.sparse_attention(q, k, v, pattern=pattern, block_size=2)
    with pytest.raises(ValueError, match="heads=2 disagrees"):
        ea.sparse_attention(q, k, v, pattern=pattern, heads=2)


# -- layout builders ------------------------------------------------------


def test_layout_builders_follow_their_definitions():
    i, j = torch.arange(8).view(-1, 1), torch.arange(8).view(1, -1)
    strided = masks.strided_layout(8, stride=3)
    assert strided.equal((j <= i) & (((i - j) < 3) | ((i - j) % 3 == 0)))
    fixed = masks.fixed_layout(8, stride=4, summary=1)
    assert fixed.equal((j <= i) & ((i // 4 == j // 4) | (j % 4 == 3)))
    longformer = masks.longformer_layout(8, window=1, global_blocks=2)
    assert longformer.equal(((i - j).abs() <= 1) | (i < 2) | (j < 2))
    checker = masks.checkerboard_layout(8, square=2)
    assert checker.equal((i // 2 + j // 2) % 2 == 0)
    assert checker.float().mean() == 0.5


def test_bigbird_adds_random_blocks_reproducibly():
    def make(seed):
        return masks.bigbird_layout(
            16, window=1, global_blocks=2, random_blocks=3, heads=4,
            generator=torch.Generator().manual_seed(seed),
        )  # fmt: skip

    layout = make(0)
    base = masks.longformer_layout(16, window=1, global_blocks=2)
    assert layout.shape == (4, 16, 16) and (layout >= base).all()
    extra = (layout & ~base).sum(-1)  # random blocks per row
    assert (extra[:, 2:] == 3).all() and (extra[:, :2] == 0).all()
    assert layout.equal(make(0)) and not layout.equal(make(1))
    assert not layout[0].equal(layout[1])  # each head its own


def test_random_layout_keeps_the_density_per_row():
    layout = masks.random_layout(64, density=0.1, heads=2)
    assert (layout.sum(-1) == 7).all()  # ceil(6.4)


def test_layout_builders_refuse_bad_parameters_by_name():
    for name, call in [
        ("stride", lambda: masks.strided_layout(4, stride=0)),
        ("n_q", lambda: masks.strided_layout(0, stride=2)),
        ("summary", lambda: masks.fixed_layout(4, stride=2, summary=3)),
        ("window", lambda: masks.longformer_layout(4, window=-1,
                                                   global_blocks=0)),
        ("random_blocks", lambda: masks.bigbird_layout(4, random_blocks=-1)),
        ("generator", lambda: masks.bigbird_layout(4, generator=0)),
        ("density", lambda: masks.random_layout(4, density=0)),
        ("density", lambda: masks.random_layout(4, density=1.5)),
        ("square", lambda: masks.checkerboard_layout(4, square=0)),
        # issue 22: any truthy value passed for causal
        ("causal", lambda: masks.strided_layout(4, stride=2, causal="no")),
        ("causal", lambda: masks.fixed_layout(4, stride=2, causal=0)),
        ("block_size", lambda: masks.from_block_layout(
            torch.ones(2, 2, dtype=torch.bool), 0)),
        ("layout", lambda: masks.from_block_layout(torch.ones(2, 2), 4)),
    ]:  # fmt: skip
        with pytest.raises(ValueError, match=name):
            call()


def test_from_block_layout_follows_the_rule_of_block_sparse_attention():
    # issue 22: a 2x2 layout with blocks of 2 was clamped over 8x8, which
    # block_sparse_attention refuses; a (0, 0) layout raised an IndexError
    small = torch.ones(2, 2, dtype=torch.bool)
    q, k, v = random_qkv(L=8, S=8)
    with pytest.raises(ValueError, match=r"layout of shape \(2, 2\)"):
        ea.block_sparse_attention(q, k, v, layout=small, block_size=2)
    with pytest.raises(ValueError, match=r"layout of shape \(2, 2\)"):
        masks.create_mask(masks.from_block_layout(small, 2), 8, 8)
    with pytest.raises(ValueError, match=r"layout of shape \(0, 0\)"):
        masks.create_mask(
            masks.from_block_layout(torch.ones(0, 0, dtype=torch.bool), 2),
            1, 1,
        )
    layout = random_layout(2, 4, 4, seed=3)
    mask = masks.create_mask(masks.from_block_layout(layout, 2), 7, 8,
                             heads=2)  # fmt: skip
    by_hand = layout.repeat_interleave(2, -2).repeat_interleave(2, -1)
    assert mask.equal(by_hand[:, :7, :8])


def test_from_block_layout_matches_flex_attention_block_mask():
    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    layout = random_layout(2, 4, 4, seed=7)
    mod = masks.from_block_layout(layout, 128)
    block_mask = flex.create_block_mask(mod, 1, 2, 512, 512, device="cpu")
    dense = block_mask.to_dense()[0].bool()  # (H, nq, nk) in 128-blocks
    assert dense.equal(layout)


# -- learned patterns ----------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_routing_equals_dense_with_the_same_cluster_mask(backend):
    q, k, v = random_qkv(2, 3, L=50, S=70, dtype=dtype_of(backend))
    gen = lambda: torch.Generator().manual_seed(4)  # noqa: E731
    out = ea.routing_attention(
        q, k, v, clusters=4, generator=gen(), block_size=16, backend=backend
    )
    q_labels, k_labels = ea.kmeans_clusters(q, k, clusters=4, generator=gen())
    assert q_labels.shape == (2, 3, 50) and k_labels.shape == (2, 3, 70)
    assert len(q_labels.unique()) > 1
    mask = q_labels[..., :, None] == k_labels[..., None, :]
    torch.testing.assert_close(
        out, ea.dense_attention(q, k, v, attn_mask=mask)
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_routing_with_one_cluster_is_dense_attention(backend):
    q, k, v = random_qkv(2, L=45, S=45, dtype=dtype_of(backend))
    out = ea.routing_attention(q, k, v, clusters=1, block_size=16,
                               backend=backend)  # fmt: skip
    torch.testing.assert_close(out, ea.dense_attention(q, k, v))


def test_routing_is_reproducible_with_the_same_generator():
    q, k, v = random_qkv(1, 2, L=64, S=64, dtype=torch.float32)

    def run(seed):
        return ea.routing_attention(
            q, k, v, clusters=5, block_size=8,
            generator=torch.Generator().manual_seed(seed),
        )  # fmt: skip

    assert run(1).equal(run(1))
    labels = [
        ea.kmeans_clusters(q, k, clusters=5, iterations=0,
                           generator=torch.Generator().manual_seed(s))[0]
        for s in (1, 2)
    ]  # fmt: skip
    assert not labels[0].equal(labels[1])


def test_kmeans_finds_planted_clusters():
    # keys and queries around 4 directions: each cluster is one direction
    generator = torch.Generator().manual_seed(0)
    directions = torch.eye(8)[:4] * 10
    which = torch.randint(4, (200,), generator=generator)
    points = directions[which] + torch.randn(200, 8, generator=generator)
    q_labels, k_labels = ea.kmeans_clusters(
        points[:100], points[100:], clusters=4, iterations=5
    )
    labels = torch.cat([q_labels, k_labels])
    for cluster in range(4):  # one label per planted direction
        assert len(labels[which == cluster].unique()) == 1
    assert len(labels.unique()) == 4


def test_routing_gradcheck_on_tiny_float64_inputs():
    q, k, v = random_qkv(1, L=9, S=9, E=3, Ev=2)
    inputs = tuple(t.requires_grad_() for t in (q, k, v))

    def fn(q, k, v):
        return ea.routing_attention(q, k, v, clusters=2, block_size=4)

    assert torch.autograd.gradcheck(fn, inputs)


def test_routing_refuses_bad_parameters_by_name():
    q, k, v = random_qkv(L=8, S=8)
    for kwargs, name in [
        ({"clusters": 0}, "clusters"),
        ({"clusters": 9}, "clusters"),
        ({"clusters": 2, "iterations": -1}, "iterations"),
        ({"clusters": 2, "generator": 3}, "generator"),
        ({"clusters": 2, "block_size": 0}, "block_size"),
    ]:
        with pytest.raises(ValueError, match=name):
            ea.routing_attention(q, k, v, **kwargs)


def test_top_k_keeps_the_largest_scores():
    q, k, v = random_qkv(2, L=12, S=15)
    scores = q @ k.transpose(-2, -1) / math.sqrt(8)
    threshold = scores.topk(4, dim=-1).values[..., -1:]
    out = ea.top_k_attention(q, k, v, top_k=4)
    mask = scores >= threshold
    assert (mask.sum(-1) == 4).all()
    torch.testing.assert_close(
        out, ea.dense_attention(q, k, v, attn_mask=mask)
    )
    torch.testing.assert_close(
        ea.top_k_attention(q, k, v, top_k=15), ea.dense_attention(q, k, v)
    )


def test_top_k_above_s_names_top_k():
    q, k, v = random_qkv(L=4, S=6)
    for bad in (7, 0, 2.5, True):
        with pytest.raises(ValueError, match="top_k"):
            ea.top_k_attention(q, k, v, top_k=bad)


# -- sparse products -----------------------------------------------------


def test_csr_attention_equals_dense():
    q, k, v = random_qkv(2, 2, L=30, S=40)
    mask = masks.create_mask(masks.sliding_window(3), 30, 40)
    mask[5] = False  # a row with no key
    out = sparse_products.csr_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(
        out, ea.dense_attention(q, k, v, attn_mask=mask)
    )
    with pytest.raises(ValueError, match="attn_mask"):
        sparse_products.csr_attention(q, k, v, attn_mask=mask.float())
    with pytest.raises(ValueError, match="dtype"):
        sparse_products.csr_attention(*(t.bfloat16() for t in (q, k, v)),
                             attn_mask=mask)  # fmt: skip
    with pytest.raises(ValueError, match="attn_mask is on meta"):
        sparse_products.csr_attention(q, k, v, attn_mask=mask.to("meta"))


def test_block_sparse_matmul_equals_the_masked_product():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(37, 45, generator=generator, dtype=torch.float64)
    b = torch.randn(45, 7, generator=generator, dtype=torch.float64)
    layout = random_layout(5, 6)
    mask = layout_mask(layout, 8, 37, 45)
    torch.testing.assert_close(
        sparse_products.block_sparse_matmul(a, b, layout=layout, block_size=8),
        (a * mask) @ b,
    )
    with pytest.raises(ValueError, match="layout"):
        sparse_products.block_sparse_matmul(
            a, b, layout=layout[:4], block_size=8
        )


def test_block_sparse_matmul_names_a_and_b_and_takes_empty_matrices():
    # issue 22: M = 0 raised from a reshape, mixed dtypes from the matmul,
    # and the messages spoke of a query
    a, b = torch.randn(0, 8), torch.randn(8, 3)
    empty = torch.zeros(0, 1, dtype=torch.bool)
    out = sparse_products.block_sparse_matmul(a, b, layout=empty, block_size=8)
    assert out.shape == (0, 3)
    one = torch.ones(1, 1, dtype=torch.bool)
    for bad_b, match in [(b.double(), "dtype"), (b[:4], "matrices")]:
        with pytest.raises(ValueError, match=match) as error:
            sparse_products.block_sparse_matmul(
                torch.randn(8, 8), bad_b, layout=one, block_size=8
            )
        assert "query" not in str(error.value)
    with pytest.raises(ValueError, match="layout") as error:
        sparse_products.block_sparse_matmul(
            torch.randn(8, 8), b, layout=one, block_size=2
        )
    assert "query" not in str(error.value)


def test_csr_attention_and_prune_2_4_take_empty_sizes():
    # issue 22: S = 0 and a (0, 4) weight raised from a reshape
    q, k, v = torch.randn(2, 4, 8), torch.randn(2, 0, 8), torch.randn(2, 0, 3)
    out = sparse_products.csr_attention(
        q, k, v, attn_mask=torch.ones(4, 0, dtype=torch.bool)
    )
    assert out.shape == (2, 4, 3) and not out.any()
    assert sparse_products.prune_2_4(torch.ones(0, 4)).shape == (0, 4)


def test_prune_2_4_keeps_two_of_every_four():
    generator = torch.Generator().manual_seed(0)
    w = torch.randn(6, 16, generator=generator)
    pruned = sparse_products.prune_2_4(w)
    groups = pruned.view(6, 4, 4)
    assert ((groups != 0).sum(-1) == 2).all()
    kept = w.view(6, 4, 4).abs().topk(2, dim=-1).values.sum(-1)
    torch.testing.assert_close(groups.abs().sum(-1), kept)
    with pytest.raises(ValueError, match="multiple of 4"):
        sparse_products.prune_2_4(torch.ones(2, 6))


def test_semi_structured_sparsity_says_why_it_cannot_run_on_a_cpu():
    a, b = torch.randn(64, 64), torch.randn(64, 8)
    with pytest.raises(NotImplementedError, match="GPU"):
        sparse_products.semi_structured_matmul(a, b)


# -- widgets ---------------------------------------------------------------


def test_sparse_layout_names_and_drawing():
    import matplotlib

    matplotlib.use("Agg")
    from efficient_attention import widgets

    assert widgets.sparse_layout("fixed", 8, stride=4).equal(
        masks.fixed_layout(8, stride=4)
    )
    bigbird = widgets.sparse_layout(
        "bigbird", 8, global_blocks=1, random_blocks=2, seed=3
    )
    assert bigbird.equal(
        masks.bigbird_layout(8, global_blocks=1, random_blocks=2,
                             generator=torch.Generator().manual_seed(3))
    )  # fmt: skip
    fig = widgets.draw_sparse_pattern("checkerboard", 32, 4, stride=2)
    assert "density 0.50" in fig.axes[0].get_title()
    with pytest.raises(ValueError, match="unknown pattern"):
        widgets.sparse_layout("diagonal", 8)
    with pytest.raises(ValueError, match="stride"):
        widgets.draw_sparse_pattern("strided", 32, 4, stride=0)
    assert widgets.sparse_pattern_explorer(32) is not None


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_masked_inside_a_kept_block_get_zeros(backend):
    # window (0, 0) with L > S: queries 20.. have no key, some of them in a
    # kept (partial) block whose other rows do attend
    q, k, v = random_qkv(1, 2, L=40, S=20, dtype=dtype_of(backend))
    mod = masks.sliding_window((0, 0))
    out = ea.sparse_attention(q, k, v, pattern=mod, block_size=8,
                              backend=backend)  # fmt: skip
    assert not out.isnan().any() and (out[..., 20:, :] == 0).all()
    mask = masks.create_mask(mod, 40, 20)
    torch.testing.assert_close(
        out, ea.dense_attention(q, k, v, attn_mask=mask)
    )


def test_from_block_layout_compiles_without_a_graph_break():
    # Its size check read a tensor's value, which broke torch.compile's
    # graph: compiled FlexAttention then ran the layout ~20x slower.
    layout = random_layout(2, 4, 4, seed=5)
    mod = masks.from_block_layout(layout, 2)
    q_idx, kv_idx = torch.arange(8)[:, None], torch.arange(8)[None, :]
    h = torch.arange(2)[:, None, None]
    traced = torch.compile(mod, fullgraph=True, backend="eager")
    assert traced(0, h, q_idx, kv_idx).equal(mod(0, h, q_idx, kv_idx))
