"""Paired comparisons of two classifiers on the same examples."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from efficient_attention import significance


def test_mcnemar_by_hand():
    labels = torch.ones(10, dtype=torch.long)
    a = torch.tensor([1] * 10)
    b = torch.tensor([1] * 7 + [0] * 3)
    # 3 discordant pairs, all for a: p = 2 * (1/2)^3
    assert significance.mcnemar_p_value(a, b, labels) == pytest.approx(0.25)
    assert significance.mcnemar_p_value(a, a, labels) == 1.0
    # 20 discordant pairs split 10:10: as even as can be
    a = torch.tensor([1] * 10 + [0] * 10)
    assert significance.mcnemar_p_value(a, 1 - a, torch.ones(20)) == 1.0


def test_mcnemar_small_p_for_a_lopsided_split():
    labels = torch.ones(40, dtype=torch.long)
    a = torch.ones(40, dtype=torch.long)
    b = torch.tensor([1] * 20 + [0] * 20)
    expected = 2 * 0.5**20
    p = significance.mcnemar_p_value(a, b, labels)
    assert math.isclose(p, expected, rel_tol=1e-12)


def test_bootstrap_of_identical_models_is_zero_and_not_real():
    labels = torch.randint(
        2, (200,), generator=torch.Generator().manual_seed(0)
    )
    same = significance.paired_bootstrap(labels, labels, labels)
    assert same.difference == 0 and same.low == 0 and same.high == 0
    assert not same.real


def test_bootstrap_separates_a_clear_gap_from_noise():
    generator = torch.Generator().manual_seed(1)
    labels = torch.randint(2, (400,), generator=generator)
    good = labels.clone()
    good[:40] = 1 - good[:40]  # 90% right
    bad = labels.clone()
    bad[-120:] = 1 - bad[-120:]  # 70% right
    gap = significance.paired_bootstrap(good, bad, labels)
    assert gap.difference == pytest.approx(0.2)
    assert gap.low < 0.2 < gap.high and gap.real
    assert "real" in str(gap)
    assert significance.paired_bootstrap(good, bad, labels, metric="f1").real
    close = bad.clone()
    close[-120:-109] = labels[-120:-109]  # 11 pairs right that bad misses
    close[:9] = 1 - close[:9]  # and 9 wrong that bad gets right
    small = significance.paired_bootstrap(close, bad, labels)
    assert small.difference == pytest.approx(2 / 400) and not small.real
    assert "within noise" in str(small)


def test_bootstrap_interval_narrows_with_confidence():
    generator = torch.Generator().manual_seed(2)
    labels = torch.randint(2, (300,), generator=generator)
    a = torch.where(
        torch.rand(300, generator=generator) < 0.8, labels, 1 - labels
    )
    b = torch.where(
        torch.rand(300, generator=generator) < 0.8, labels, 1 - labels
    )
    wide = significance.paired_bootstrap(a, b, labels, confidence=0.99)
    narrow = significance.paired_bootstrap(a, b, labels, confidence=0.5)
    assert wide.low < narrow.low <= narrow.high < wide.high


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"metric": "auc"}, "metric must be one of"),
        ({"confidence": 1.0}, r"confidence must be in \(0, 1\)"),
        ({"rounds": 0}, "rounds must be a positive int"),
    ],
)
def test_bad_options_are_refused(kwargs, message):
    labels = torch.tensor([1, 0, 1])
    with pytest.raises(ValueError, match=message):
        significance.paired_bootstrap(labels, labels, labels, **kwargs)


def test_mismatched_predictions_are_refused():
    with pytest.raises(ValueError, match="the same examples"):
        significance.mcnemar_p_value(
            torch.tensor([1, 0]), torch.tensor([1]), torch.tensor([1, 0])
        )
    with pytest.raises(ValueError, match="N is 0"):
        empty = torch.tensor([], dtype=torch.long)
        significance.paired_bootstrap(empty, empty, empty)


BIT = st.integers(0, 1)


@given(
    st.lists(st.tuples(BIT, BIT, BIT), min_size=1, max_size=60),
    st.sampled_from(significance.METRICS),
)  # fmt: skip
@settings(max_examples=50, deadline=None)
def test_swapping_the_models_negates_the_difference(rows, metric):
    a, b, labels = (torch.tensor(column) for column in zip(*rows))
    ab = significance.paired_bootstrap(a, b, labels, metric=metric, rounds=50)
    ba = significance.paired_bootstrap(b, a, labels, metric=metric, rounds=50)
    assert ab.difference == pytest.approx(-ba.difference, abs=1e-6)
    assert ab.low == pytest.approx(-ba.high, abs=1e-6)
    assert significance.mcnemar_p_value(a, b, labels) == pytest.approx(
        significance.mcnemar_p_value(b, a, labels)
    )
    assert 0 <= significance.mcnemar_p_value(a, b, labels) <= 1
