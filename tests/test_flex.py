"""backend="flex": compiled FlexAttention with the package's windows.

On a CPU it runs forward only and each new shape compiles for seconds, so
the cases are few and each covers several options. Lengths are 64 or more:
torch 2.13's compiled CPU FlexAttention returned wrong rows at a few shorter
ones (L = S = 40 with head dim 8 or 16; L = 56, S = 24) while its eager
version and the package agreed.
"""

import pytest
import torch

import efficient_attention as ea
from efficient_attention.attention import flex

REASON = flex.unavailable_reason("cpu")
needs_flex = pytest.mark.skipif(REASON is not None, reason=str(REASON))

# (query, key, value shapes, window, dilation, border)
CASES = {
    "dilated, Ev != E": (
        (2, 3, 64, 16), (2, 3, 64, 16), (2, 3, 64, 32), (3, 2), 2, "clip"
    ),
    "per-head windows and dilations, shifted, L > S": (
        (1, 3, 130, 16), (1, 3, 70, 16), (1, 3, 70, 16),
        [(1, 1), (5, 0), (0, 7)], [1, 2, 3], "shift",
    ),
    "no head dimension, queries past the keys (empty rows)": (
        (130, 16), (64, 16), (64, 16), (2, 0), 1, "clip"
    ),
}  # fmt: skip


@needs_flex
@pytest.mark.parametrize("case", CASES)
def test_flex_equals_the_pytorch_version(case):
    q_shape, k_shape, v_shape, window, dilation, border = CASES[case]
    generator = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(shape, generator=generator)
        for shape in (q_shape, k_shape, v_shape)
    )
    options = dict(window=window, dilation=dilation, border=border)
    fast = ea.sliding_window_attention(q, k, v, backend="flex", **options)
    slow = ea.sliding_window_attention(q, k, v, backend="torch", **options)
    # float32, the same sums in another order: rounding only
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    if border == "clip" and q_shape[-2] > k_shape[-2] + window[1]:
        assert fast[..., -1, :].abs().max() == 0  # the last query: no key


@needs_flex
def test_flex_reuses_its_block_mask_and_checks_scores():
    q, k, v, window, dilation, border = CASES["dilated, Ev != E"]
    q, k, v = (torch.randn(shape) for shape in (q, k, v))
    options = dict(window=window, dilation=dilation, border=border)
    ea.sliding_window_attention(q, k, v, backend="flex", **options)
    kept = len(flex._BLOCK_MASKS)
    ea.sliding_window_attention(q, k, v, backend="flex", **options)
    assert len(flex._BLOCK_MASKS) == kept  # the same mask: no new one
    q[0, 1, 5, 0] = float("inf")
    with pytest.raises(ValueError, match="inf or NaN"):
        ea.sliding_window_attention(q, k, v, backend="flex", **options)


def test_flex_says_why_it_cannot_run():
    q = torch.randn(1, 2, 64, 16, requires_grad=True)
    expected = REASON or "no backward pass on a CPU"
    with pytest.raises(NotImplementedError, match=expected):
        ea.sliding_window_attention(q, q, q, window=3, backend="flex")


def test_auto_never_takes_flex_on_a_cpu(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("auto took FlexAttention on a CPU")

    monkeypatch.setattr(flex, "masked_flex_attention", refuse)
    q = torch.randn(1, 2, 64, 16)
    out = ea.sliding_window_attention(q, q, q, window=3)
    assert out.shape == q.shape


@needs_flex
@pytest.mark.parametrize("per_head", [False, True])
def test_flex_block_layouts_equal_the_pytorch_version(per_head):
    generator = torch.Generator().manual_seed(1)
    L, S, block = 160, 128, 32  # the last query block is partial
    blocks = (ea.masks.n_blocks(L, block), ea.masks.n_blocks(S, block))
    layout = torch.rand(3 if per_head else 1, *blocks, generator=generator)
    layout = layout < 0.4
    layout[..., 0] = True  # every query block sees some keys
    layout = layout if per_head else layout[0]
    q, k, v = (
        torch.randn(2, 3, n, 16, generator=generator) for n in (L, S, S)
    )
    options = dict(layout=layout, block_size=block)
    fast = ea.block_sparse_attention(q, k, v, backend="flex", **options)
    slow = ea.block_sparse_attention(q, k, v, backend="torch", **options)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)


@needs_flex
def test_flex_takes_any_mask_function():
    generator = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, 96, 16, generator=generator) for _ in "qkv")
    pattern = ea.masks.or_masks(
        ea.masks.sliding_window((4, 0)), ea.masks.global_tokens([0, 50])
    )
    fast = ea.sparse_attention(q, k, v, pattern=pattern, backend="flex")
    slow = ea.sparse_attention(q, k, v, pattern=pattern, backend="torch")
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    built = ea.block_pattern(pattern, 96, 96)
    with pytest.raises(NotImplementedError, match="mask function itself"):
        ea.sparse_attention(q, k, v, pattern=built, backend="flex")


def test_only_the_exact_patterns_take_backend_flex():
    q = torch.randn(1, 2, 64, 16)
    with pytest.raises(ValueError, match="backend must be one of"):
        ea.pyramid_attention(q, q, q, block_size=16, backend="flex")


def test_a_mask_the_compiler_refuses_is_named_and_auto_falls_back(
    monkeypatch,
):
    def broken(*args, **kwargs):
        raise RuntimeError("cannot lower this mask\nmore detail")

    monkeypatch.setattr(flex, "compiled_flex_attention", lambda: broken)
    monkeypatch.setattr(flex, "unavailable_reason", lambda device: None)
    q = torch.randn(1, 2, 64, 16)
    with pytest.raises(flex.FlexUnavailable, match="cannot lower this mask"):
        ea.sliding_window_attention(q, q, q, window=3, backend="flex")

    def refuse():
        raise flex.FlexUnavailable("no kernel for this")

    with pytest.warns(RuntimeWarning, match="no kernel for this"):
        assert flex.attempt("auto", "a test", refuse) is None
    with pytest.raises(flex.FlexUnavailable):
        flex.attempt("flex", "a test", refuse)


class _OnDevice:
    """Stands for a tensor on another device (no GPU here)."""

    requires_grad = False
    dtype = torch.float32

    def __init__(self, kind):
        self.device = torch.device(kind)

    def numel(self):
        return 1


def test_auto_says_when_a_gpu_call_takes_the_slow_path():
    from efficient_attention.attention import block_sparse

    fake = _OnDevice("cuda")
    with pytest.warns(RuntimeWarning, match="not cuda"):
        assert not block_sparse.use_kernel("auto", fake, fake, fake)
    mps = _OnDevice("mps")
    with pytest.warns(RuntimeWarning, match="CUDA only, not on mps"):
        assert not flex.use_flex("auto", mps, mps, mps, "a test")
