"""The online softmax that hierarchical, ring and block-sparse attention
share: parts of a row's keys merge into the softmax over all."""

from __future__ import annotations

import pytest
import torch

from efficient_attention.attention.online_softmax import (
    block_softmax,
    merge_parts,
    merge_softmax,
    part_softmax,
)


def scores_and_values(seed: int = 0, L: int = 5, S: int = 12, Ev: int = 3):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(2, L, S, generator=g, dtype=torch.float64) * 4
    value = torch.randn(2, S, Ev, generator=g, dtype=torch.float64)
    return scores, value


def test_parts_merged_one_at_a_time_are_the_softmax_over_all_keys():
    scores, value = scores_and_values()
    expected = torch.softmax(scores, -1) @ value
    parts = [(0, 4), (4, 5), (5, 12)]  # uneven parts, one of one key
    out, lse = block_softmax(scores[..., :0], value[..., :0, :])
    assert (lse == float("-inf")).all() and (out == 0).all()  # no key yet
    for start, stop in parts:
        keys = slice(start, stop)
        part = block_softmax(scores[..., keys], value[..., keys, :])
        out, lse = merge_softmax(out, lse, *part)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, torch.logsumexp(scores, -1))


def test_a_row_with_no_allowed_key_gets_zeros_not_nan():
    scores, value = scores_and_values()
    scores[:, 1] = float("-inf")  # row 1 sees nothing
    out, lse = block_softmax(scores, value)
    assert not out.isnan().any() and (out[:, 1] == 0).all()
    assert (lse[:, 1] == float("-inf")).all()
    merged, merged_lse = merge_softmax(out, lse, out, lse)
    assert (merged[:, 1] == 0).all()
    assert (merged_lse[:, 1] == float("-inf")).all()
    torch.testing.assert_close(merged[:, 0], out[:, 0])  # a part with itself


def test_overwriting_the_scores_gives_the_same_result():
    scores, value = scores_and_values(seed=1)
    kept = scores.clone()
    out, lse = block_softmax(kept, value)
    out_in_place, lse_in_place = block_softmax(
        kept, value, overwrite_scores=True
    )
    torch.testing.assert_close(out_in_place, out)
    torch.testing.assert_close(lse_in_place, lse)
    assert not torch.allclose(kept, scores)  # the buffer became the weights


def parts_of_rows(scores, value, parts):
    """``part_softmax`` of each ``(row, start, stop)``, stacked as parts."""
    found = [part_softmax(scores[:, row, None, start:stop],
                          value[:, start:stop])
             for row, start, stop in parts]  # fmt: skip
    numerator, top, total = (torch.stack([f[i][:, 0] for f in found], 1)
                             for i in range(3))  # fmt: skip
    rows = torch.tensor([row for row, _, _ in parts])
    return numerator, top, total, rows


def test_many_parts_merged_by_row_are_the_softmax_over_all_keys():
    scores, value = scores_and_values(L=3)
    scores[:, 1] -= 200  # exp(-200) underflows: only the rescale saves it
    scores[:, 2] = float("-inf")  # row 2 sees nothing
    # uneven parts in any order, an empty one, and row 1 split four ways
    parts = [(1, 0, 3), (0, 5, 12), (1, 3, 3), (0, 0, 5), (1, 3, 4),
             (2, 0, 12), (1, 4, 12)]  # fmt: skip
    out = merge_parts(*parts_of_rows(scores, value, parts), n_rows=3)
    expected = torch.softmax(scores[:, :2], -1) @ value
    torch.testing.assert_close(out[:, :2], expected, rtol=1e-12, atol=1e-12)
    assert not out.isnan().any() and (out[:, 2] == 0).all()


def test_merging_by_row_passes_gradients_to_every_part():
    scores, value = scores_and_values(seed=2, L=2, S=6)
    scores.requires_grad_()
    parts = [(0, 0, 2), (0, 2, 6), (1, 0, 6)]
    out = merge_parts(*parts_of_rows(scores, value, parts), n_rows=2)
    got = torch.autograd.grad(out.sum(), scores)[0]
    expected = torch.autograd.grad(
        (torch.softmax(scores, -1) @ value).sum(), scores
    )[0]
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("rows", "n_rows", "message"),
    [
        (torch.tensor([0, 3, 1]), 3, r"rows must lie in \[0, n_rows = 3\)"),
        (torch.tensor([0, -1, 1]), 3, "got values from -1 to 1"),
        (torch.tensor([0, 1]), 3, "rows has 2 entries for 3 parts"),
        (torch.tensor([0.0, 1.0, 2.0]), 3, "1-D int64 tensor"),
        (torch.tensor([0, 1, 2]), -1, "n_rows"),
    ],
)
def test_merging_by_row_rejects_rows_that_do_not_fit(rows, n_rows, message):
    scores, value = scores_and_values(L=3)
    parts = [(0, 0, 6), (1, 0, 6), (2, 6, 12)]
    numerator, top, total, _ = parts_of_rows(scores, value, parts)
    with pytest.raises(ValueError, match=message):
        merge_parts(numerator, top, total, rows, n_rows)


def test_merging_by_row_rejects_parts_of_different_shapes():
    scores, value = scores_and_values(L=2)
    numerator, top, total, rows = parts_of_rows(
        scores, value, [(0, 0, 6), (1, 0, 6)]
    )
    with pytest.raises(ValueError, match="top and total must share"):
        merge_parts(numerator, top, total[:, :1], rows, 2)
    with pytest.raises(ValueError, match="numerator must be shaped"):
        merge_parts(numerator[:, :1], top, total, rows, 2)
