"""Mask functions against hand-written loops and FlexAttention's create_mask.

Also what they do with bad input.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn.attention.flex_attention import create_mask as flex_create_mask

from efficient_attention import masks


def loop_mask(allowed, L: int, S: int) -> torch.Tensor:
    """The reference: ask a plain Python predicate about every (i, j) pair."""
    return torch.tensor(
        [[bool(allowed(i, j)) for j in range(S)] for i in range(L)]
    )


SIZES = [(1, 1), (7, 7), (6, 11), (11, 6)]


@pytest.mark.parametrize("L,S", SIZES)
@pytest.mark.parametrize(
    "mask_mod,allowed",
    [
        (masks.full, lambda i, j: True),
        (masks.causal, lambda i, j: j <= i),
        (masks.sliding_window((2, 1)), lambda i, j: i - 2 <= j <= i + 1),
        (masks.sliding_window(0), lambda i, j: i == j),
        (masks.sliding_window((3, 0)), lambda i, j: i - 3 <= j <= i),
        (
            masks.dilated_sliding_window((2, 1), 3),
            lambda i, j: i - 6 <= j <= i + 3 and (i - j) % 3 == 0,
        ),
        (masks.strided(3), lambda i, j: (i - j) % 3 == 0),
        (masks.block_local(4), lambda i, j: i // 4 == j // 4),
        (masks.global_tokens(2), lambda i, j: i < 2 or j < 2),
        (masks.global_tokens([1, 4]), lambda i, j: i in (1, 4) or j in (1, 4)),
        (masks.global_tokens(0), lambda i, j: False),
    ],
)
def test_mask_matches_its_definition(mask_mod, allowed, L, S):
    torch.testing.assert_close(
        masks.create_mask(mask_mod, L, S), loop_mask(allowed, L, S)
    )


def test_window_docstring_example_centred_window_of_three():
    # The seed's window_size=3 (centred, 3 keys) is window=(1, 1).
    mask = masks.create_mask(masks.sliding_window((1, 1)), 4, 4)
    assert mask[0].nonzero().flatten().tolist() == [0, 1]
    assert mask[2].nonzero().flatten().tolist() == [1, 2, 3]
    assert mask.sum(-1).tolist() == [2, 3, 3, 2]


def test_window_semantics_i_minus_left_to_i_plus_right():
    # query i attends key j iff i - left <= j <= i + right
    mask = masks.create_mask(masks.sliding_window((2, 1)), 10, 10)
    assert mask[5].nonzero().flatten().tolist() == [3, 4, 5, 6]


def test_int_window_means_both_sides():
    torch.testing.assert_close(
        masks.create_mask(masks.sliding_window(2), 9, 9),
        masks.create_mask(masks.sliding_window((2, 2)), 9, 9),
    )


def test_causal_local_is_window_w_0():
    window = masks.create_mask(masks.sliding_window((3, 0)), 9, 9)
    both = masks.create_mask(
        masks.and_masks(masks.causal, masks.sliding_window(3)), 9, 9
    )
    torch.testing.assert_close(window, both)


def test_dilation_one_is_the_plain_window():
    torch.testing.assert_close(
        masks.create_mask(masks.dilated_sliding_window((2, 3), 1), 12, 12),
        masks.create_mask(masks.sliding_window((2, 3)), 12, 12),
    )


def test_combinators():
    window = masks.create_mask(masks.sliding_window(1), 8, 8)
    causal = masks.create_mask(masks.causal, 8, 8)
    both = masks.create_mask(
        masks.and_masks(masks.sliding_window(1), masks.causal), 8, 8
    )
    either = masks.create_mask(
        masks.or_masks(masks.sliding_window(1), masks.causal), 8, 8
    )
    inverted = masks.create_mask(masks.invert(masks.causal), 8, 8)
    torch.testing.assert_close(both, window & causal)
    torch.testing.assert_close(either, window | causal)
    torch.testing.assert_close(inverted, ~causal)


def test_key_padding_per_batch_row():
    mask = masks.create_mask(masks.key_padding([2, 4]), 3, 5, batch=2)
    assert mask.shape == (2, 1, 3, 5)
    assert mask[0, 0].sum(-1).tolist() == [2, 2, 2]
    assert mask[1, 0].sum(-1).tolist() == [4, 4, 4]


@pytest.mark.parametrize("batch", [None, 1, 3])
def test_key_padding_refuses_any_batch_but_its_own(batch):
    padding = masks.key_padding([2, 5])
    assert padding.batch == 2
    with pytest.raises(ValueError, match=r"pass batch=2 \(= len\(lengths\)\)"):
        masks.create_mask(padding, 3, 5, batch=batch)


def test_key_padding_keeps_its_batch_through_the_combinators():
    padding = masks.key_padding([2, 5])
    combined = [
        masks.and_masks(masks.causal, padding),
        masks.or_masks(masks.sliding_window(0), padding),
        masks.invert(padding),
        masks.and_masks(masks.full, masks.or_masks(padding, masks.causal)),
    ]
    for mask_mod in combined:
        with pytest.raises(ValueError, match="pass batch=2"):
            masks.create_mask(mask_mod, 3, 5)
        assert masks.create_mask(mask_mod, 3, 5, batch=2).shape == (
            2,
            1,
            3,
            5,
        )
    torch.testing.assert_close(
        masks.create_mask(masks.invert(padding), 3, 5, batch=2),
        ~masks.create_mask(padding, 3, 5, batch=2),
    )
    with pytest.raises(ValueError, match="different batches"):
        masks.and_masks(padding, masks.key_padding([1, 2, 3]))


def test_numpy_scalars_work_wherever_ints_do():
    i64, i32 = np.int64, np.int32
    pairs = [
        (masks.sliding_window(i64(2)), masks.sliding_window(2)),
        (masks.sliding_window((i64(2), i32(1))), masks.sliding_window((2, 1))),
        (
            masks.dilated_sliding_window(i32(1), i64(2)),
            masks.dilated_sliding_window(1, 2),
        ),
        (masks.strided(i64(3)), masks.strided(3)),
        (masks.block_local(i64(4)), masks.block_local(4)),
        (masks.global_tokens(i64(2)), masks.global_tokens(2)),
        (masks.global_tokens(np.array([1, 4])), masks.global_tokens([1, 4])),
    ]
    for ours, plain in pairs:
        torch.testing.assert_close(
            masks.create_mask(
                ours, i64(7), i32(9), batch=i64(2), heads=i64(3)
            ),
            masks.create_mask(plain, 7, 9, batch=2, heads=3),
        )
    patterns = masks.example_patterns(window=i64(1), n_global=i64(1))
    assert set(patterns) == set(masks.example_patterns())


@pytest.mark.parametrize("far", [2**62, 2**63 - 2, 2**63, 2**64, 2**70])
def test_reach_beyond_int64_is_unbounded_not_wrapped(far):
    # Python ints meet int64 index tensors: no overflow, no wrap-around
    L = S = 5
    everything = torch.ones(L, S, dtype=torch.bool)
    diagonal = torch.eye(L, dtype=torch.bool)
    cases = [
        (masks.sliding_window(far), everything),
        (masks.sliding_window((0, far)), ~everything.tril(-1)),
        (masks.sliding_window((far, 0)), everything.tril()),
        (masks.dilated_sliding_window((far, far), 1), everything),
        (masks.dilated_sliding_window((1, 1), far), diagonal),
        (masks.strided(far), diagonal),
        (masks.block_local(far), everything),
        (masks.global_tokens(far), everything),
    ]
    for mask_mod, expected in cases:
        assert torch.equal(masks.create_mask(mask_mod, L, S), expected)


def test_empty_global_token_list_means_no_global_tokens():
    torch.testing.assert_close(
        masks.create_mask(masks.global_tokens([]), 4, 5),
        masks.create_mask(masks.global_tokens(0), 4, 5),
    )
    assert not masks.create_mask(masks.global_tokens([]), 4, 5).any()


@pytest.mark.parametrize(
    "batch,heads,shape",
    [
        (None, None, (5, 6)),
        (2, None, (2, 1, 5, 6)),
        (None, 3, (3, 5, 6)),
        (2, 3, (2, 3, 5, 6)),
    ],
)
def test_create_mask_shapes(batch, heads, shape):
    mask = masks.create_mask(masks.causal, 5, 6, batch=batch, heads=heads)
    assert mask.shape == shape and mask.dtype == torch.bool


def test_head_dependent_mask():
    def even_heads_only(b, h, q_idx, kv_idx):
        return (h % 2 == 0) & (kv_idx <= q_idx)

    mask = masks.create_mask(even_heads_only, 4, 4, heads=3)
    assert mask[0].any() and not mask[1].any() and mask[2].any()


@pytest.mark.parametrize("name", list(masks.example_patterns()))
def test_every_example_pattern_matches_flex_attention(name):
    mask_mod = masks.example_patterns()[name]
    ours = masks.create_mask(mask_mod, 13, 17, batch=2, heads=3)
    theirs = flex_create_mask(mask_mod, 2, 3, 13, 17, device="cpu")
    torch.testing.assert_close(ours, theirs)


def test_key_padding_and_listed_globals_match_flex_attention():
    for mask_mod in (masks.key_padding([3, 6]), masks.global_tokens([0, 5])):
        ours = masks.create_mask(mask_mod, 8, 9, batch=2, heads=2)
        torch.testing.assert_close(
            ours, flex_create_mask(mask_mod, 2, 2, 8, 9, device="cpu")
        )


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: masks.sliding_window(-1), "window sides must be >= 0"),
        (lambda: masks.sliding_window((2, -1)), "window sides must be >= 0"),
        (lambda: masks.sliding_window(1.5), "window must be an int"),
        (lambda: masks.sliding_window((1, 2, 3)), "window must be an int"),
        (lambda: masks.sliding_window(True), "window must be an int"),
        (
            lambda: masks.dilated_sliding_window(2, 0),
            "dilation must be a positive int",
        ),
        (lambda: masks.strided(0), "stride must be a positive int"),
        (lambda: masks.block_local(0), "block_size must be a positive int"),
        (lambda: masks.block_local(2.0), "block_size must be a positive int"),
        (lambda: masks.global_tokens(-1), "tokens must be an int >= 0"),
        (
            lambda: masks.global_tokens([1.5]),
            "global token positions must be a 1-D sequence of ints",
        ),
        (lambda: masks.global_tokens([-2]), "positions must be >= 0"),
        (
            lambda: masks.key_padding([[1, 2]]),
            "lengths must be a 1-D sequence",
        ),
        (lambda: masks.key_padding([-1]), "lengths must be >= 0"),
        (lambda: masks.key_padding([]), "lengths must hold one length"),
        (lambda: masks.key_padding(["a"]), "lengths must be a 1-D sequence"),
        (lambda: masks.key_padding(None), "lengths must be a 1-D sequence"),
        (
            lambda: masks.global_tokens([None]),
            "global token positions must be a 1-D sequence",
        ),
        (lambda: masks.sliding_window(np.float32(1)), "window must be an int"),
        (lambda: masks.strided(np.float64(2)), "stride must be a positive"),
        (lambda: masks.block_local(True), "block_size must be a positive"),
        (
            lambda: masks.create_mask(masks.causal, 4, 4, device="gpu"),
            "device='gpu' is not a device name",
        ),
        (lambda: masks.and_masks(), "needs at least one mask function"),
        (
            lambda: masks.or_masks(torch.ones(2, 2)),
            "Did you pass a mask tensor",
        ),
        (
            lambda: masks.create_mask(masks.causal, 0, 4),
            "L must be a positive int",
        ),
        (
            lambda: masks.create_mask(masks.causal, 4, 4, batch=0),
            "batch must be a positive int",
        ),
        (
            lambda: masks.create_mask(
                lambda b, h, q, kv: (q - kv).float(), 4, 4
            ),
            "must return a bool tensor",
        ),
        (
            lambda: masks.create_mask(
                lambda b, h, q, kv: torch.ones(3, 3, dtype=torch.bool), 4, 4
            ),
            "does not broadcast",
        ),
    ],
)
def test_bad_input_raises_a_clear_error(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here")
def test_create_mask_names_a_device_this_machine_lacks():
    # issue 22: device="cuda" on a CPU machine raised an AssertionError
    for device in ("cuda", "cuda:3"):
        with pytest.raises(ValueError, match="device='cuda"):
            masks.create_mask(masks.causal, 4, 4, device=device)
    assert masks.create_mask(masks.causal, 2, 2, device="meta").is_meta
