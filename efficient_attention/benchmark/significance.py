"""Is one classifier better than another on the same examples?

Two models scored on the same 408 MRPC dev pairs differ by a few pairs more
often than by real skill. Both tests here are paired: they look only at the
pairs where the two models disagree, which is what makes them sharp.

- ``paired_bootstrap``: resample the pairs with replacement; the spread of the
  difference in a metric gives its confidence interval (Koehn 2004).
- ``mcnemar_p_value``: the exact McNemar test of the accuracy difference, a
  binomial test on the pairs only one of the two models gets right.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from .._validation import check_positive_int, check_real, check_seed

METRICS = ("accuracy", "f1")


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """``difference`` = metric(a) - metric(b), with its bootstrap interval
    ``(low, high)`` at ``confidence``; ``real`` when 0 is outside it."""

    metric: str
    difference: float
    low: float
    high: float
    confidence: float

    @property
    def real(self) -> bool:
        return self.low > 0 or self.high < 0

    def __str__(self) -> str:
        verdict = "real" if self.real else "within noise"
        return (
            f"{self.metric} {self.difference:+.3f} "
            f"[{self.low:+.3f}, {self.high:+.3f}] ({verdict})"
        )


def _metric(predictions: Tensor, labels: Tensor, metric: str) -> Tensor:
    """Accuracy or F1 of class 1 along the last dimension: ``(..., N)`` ->
    ``(...)``."""
    right = (predictions == labels).float()
    if metric == "accuracy":
        return right.mean(-1)
    true_positive = ((predictions == 1) & (labels == 1)).float().sum(-1)
    either = (predictions == 1).float().sum(-1) + (labels == 1).float().sum(-1)
    return torch.where(either > 0, 2 * true_positive / either, 0.0)


def _check_pairs(a: Tensor, b: Tensor, labels: Tensor) -> tuple[Tensor, ...]:
    a, b, labels = (torch.as_tensor(t).long() for t in (a, b, labels))
    if not (a.shape == b.shape == labels.shape and a.dim() == 1):
        raise ValueError(
            f"predictions_a, predictions_b and labels must be three (N,) "
            f"tensors of the same N (the same examples, in the same order); "
            f"got {tuple(a.shape)}, {tuple(b.shape)} and "
            f"{tuple(labels.shape)}."
        )
    if len(labels) == 0:
        raise ValueError("no examples to compare: N is 0.")
    return a, b, labels


def paired_bootstrap(
    predictions_a: Tensor,
    predictions_b: Tensor,
    labels: Tensor,
    *,
    metric: str = "accuracy",
    rounds: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedDifference:
    """The difference in ``metric`` between two classifiers on the same
    examples, with a paired bootstrap interval.

    Args:
        predictions_a, predictions_b: ``(N,)`` class ids of the two models.
        labels: ``(N,)`` the true classes.
        metric: ``"accuracy"`` or ``"f1"`` (of class 1).
        rounds: bootstrap resamples of the N examples.
        confidence: the interval's coverage, in (0, 1).
        seed: seeds the resampling.
    """
    a, b, labels = _check_pairs(predictions_a, predictions_b, labels)
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}; got {metric!r}.")
    rounds = check_positive_int("rounds", rounds)
    confidence = check_real("confidence", confidence)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1); got {confidence}.")
    generator = torch.Generator().manual_seed(check_seed("seed", seed))
    rows = torch.randint(
        len(labels), (rounds, len(labels)), generator=generator
    )
    differences = _metric(a[rows], labels[rows], metric) - _metric(
        b[rows], labels[rows], metric
    )
    tail = (1 - confidence) / 2
    low, high = torch.quantile(
        differences, torch.tensor([tail, 1 - tail])
    ).tolist()
    difference = float(_metric(a, labels, metric) - _metric(b, labels, metric))
    return PairedDifference(metric, difference, low, high, confidence)


def mcnemar_p_value(
    predictions_a: Tensor, predictions_b: Tensor, labels: Tensor
) -> float:
    """Exact two-sided McNemar test: the probability, if both models were
    equally accurate, of a split of the discordant pairs at least this
    uneven.

    Args:
        predictions_a, predictions_b, labels: ``(N,)`` class ids.
    """
    a, b, labels = _check_pairs(predictions_a, predictions_b, labels)
    only_a = int(((a == labels) & (b != labels)).sum())
    only_b = int(((b == labels) & (a != labels)).sum())
    discordant = only_a + only_b
    if discordant == 0:
        return 1.0
    smaller = min(only_a, only_b)
    tail = sum(math.comb(discordant, k) for k in range(smaller + 1))
    return min(1.0, 2 * tail / 2**discordant)
