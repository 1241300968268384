"""The Long Range Arena tasks: labels checked by independent solvers,
lengths and alphabets as documented, reproducible from a seed."""

from __future__ import annotations

import functools
import statistics
from collections import deque

import pytest
import torch

from efficient_attention.nlp import long_range as lr
from efficient_attention.nlp import tasks


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def solve_listops(text: str, max_args: int) -> tuple[int, int]:
    """The value of a ListOps expression and its depth, by a stack machine
    that knows nothing of the generator."""
    stack: list[list] = []
    value, depth = None, 0
    for word in text.split():
        if word.startswith("["):
            stack.append([word, []])
            depth = max(depth, len(stack))
        elif word == "]":
            operator, args = stack.pop()
            assert 2 <= len(args) <= max_args
            result = {
                "[MAX": max,
                "[MIN": min,
                "[MED": lambda a: int(statistics.median_low(a)),
                "[SM": lambda a: sum(a) % 10,
            }[operator](args)
            if stack:
                stack[-1][1].append(result)
            else:
                value = result
        else:
            stack[-1][1].append(int(word))
    assert not stack and value is not None
    return value, depth


def test_listops_labels_are_the_values_of_the_expressions():
    tokens, labels = lr.listops(
        40, min_length=30, max_length=300, max_depth=4, max_args=5,
        generator=seeded(0),
    )  # fmt: skip
    assert tokens.shape == (40, 300) and labels.shape == (40,)
    for row, label in zip(tokens, labels.tolist()):
        value, depth = solve_listops(lr.listops_text(row), max_args=5)
        assert value == label and 1 <= depth <= 4
        used = int((row != 0).sum())
        assert 30 <= used <= 300 and (row[used:] == 0).all()
    assert len(set(labels.tolist())) >= 5  # not one answer for all


def test_listops_at_lra_lengths_is_quick_and_spreads_its_lengths():
    tokens, labels = lr.listops(32, generator=seeded(1))
    lengths = (tokens != 0).sum(1)
    assert tokens.shape == (32, 2000)
    assert lengths.min() >= 500 and lengths.max() <= 2000
    assert lengths.max() - lengths.min() > 500  # drawn, not fixed
    assert ((labels >= 0) & (labels <= 9)).all()


def key_of(half: torch.Tensor, first_key: int) -> list[int]:
    return half[half >= first_key].tolist()


def test_matching_halves_label_says_whether_the_keys_are_equal():
    noise, key_length = 16, 4
    tokens, labels = lr.matching_halves(
        600, 41, key_length=key_length, noise_symbols=noise,
        generator=seeded(2),
    )  # fmt: skip
    half = 20
    assert (tokens[:, half] == 1).all() and (tokens[:, :half] != 1).all()
    first_key = 2 + noise
    for row, label in zip(tokens, labels.tolist()):
        a = key_of(row[:half], first_key)
        b = key_of(row[half + 1 :], first_key)
        assert len(a) == len(b) == key_length
        differing = sum(x != y for x, y in zip(a, b))
        assert differing == (0 if label == 1 else 1)
    assert 0.4 < labels.float().mean() < 0.6


def test_matching_halves_pads_an_even_length():
    tokens, _ = lr.matching_halves(3, 10, key_length=2, generator=seeded(3))
    assert tokens.shape == (3, 10) and (tokens[:, -1] == 0).all()
    assert (tokens[:, :-1] != 0).all()


def connected(image: torch.Tensor, start, end) -> bool:
    """Whether ink (path or dot pixels) joins start to end, stepping over
    a dash's one-pixel gap (paths are 3 or more pixels apart)."""
    size = image.shape[0]
    seen, queue = {start}, deque([start])
    while queue:
        r, c = queue.popleft()
        if (r, c) == end:
            return True
        for dr in range(-2, 3):
            for dc in range(-2, 3):
                p = (r + dr, c + dc)
                if (
                    0 <= p[0] < size and 0 <= p[1] < size
                    and p not in seen and image[p] >= 2
                ):  # fmt: skip
                    seen.add(p)
                    queue.append(p)
    return False


def test_pathfinder_label_says_whether_the_dots_are_connected():
    tokens, labels = lr.pathfinder(200, size=24, generator=seeded(4))
    assert tokens.shape == (200, 576)
    assert set(tokens.unique().tolist()) <= {1, 2, 3}
    for row, label in zip(tokens, labels.tolist()):
        image = row.reshape(24, 24)
        dots = [tuple(p) for p in (image == 3).nonzero().tolist()]
        assert len(dots) == 2
        assert connected(image, dots[0], dots[1]) == bool(label)
    assert 0.4 < labels.float().mean() < 0.6


@pytest.mark.parametrize(
    "make",
    [
        lambda g: lr.listops(4, min_length=20, max_length=60, generator=g),
        lambda g: lr.matching_halves(4, 33, generator=g),
        lambda g: lr.pathfinder(4, size=16, path_steps=10, generator=g),
    ],
)
def test_a_seed_gives_the_same_task_and_another_seed_another(make):
    tokens, labels = make(seeded(5))
    again, again_labels = make(seeded(5))
    other, _ = make(seeded(6))
    assert torch.equal(tokens, again) and torch.equal(labels, again_labels)
    assert not torch.equal(tokens, other)


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: lr.listops(2, min_length=50, max_length=40), "min_length"),
        (lambda: lr.listops(2, max_args=1), "max_args"),
        (lambda: lr.listops(0), "batch"),
        (lambda: lr.matching_halves(2, 8, key_length=4), "length"),
        (lambda: lr.matching_halves(2, 20, key_symbols=1), "key_symbols"),
        (lambda: lr.pathfinder(2, size=4), "size"),
        (lambda: lr.pathfinder(2, size=8, paths=12), "cannot place 12"),
    ],
)
def test_bad_input_is_refused_with_its_name(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_a_small_classifier_learns_short_listops_above_the_majority():
    task = functools.partial(
        lr.listops, min_length=5, max_length=16, max_depth=2, max_args=3
    )
    torch.manual_seed(0)
    model = tasks.SequenceClassifier(
        len(lr.LISTOPS_VOCAB), 10, d_model=32, heads=2, layers=2,
        max_length=16,
    )  # fmt: skip
    tasks.train_on_task(model, task, steps=300, batch=64, seed=0)
    tokens, labels = task(1000, generator=seeded(99))
    majority = labels.bincount().max().item() / len(labels)
    accuracy = tasks.task_accuracy(model, tokens, labels)
    assert accuracy > majority + 0.15, (accuracy, majority)
    logits = model(torch.zeros(2, 16, dtype=torch.int64))  # all padding
    assert logits.shape == (2, 10) and logits.isfinite().all()
