"""The tasks of a small Long Range Arena, generated offline from a seed.

The Long Range Arena ("Long Range Arena: A Benchmark for Efficient
Transformers", Tay et al. 2020, arXiv:2011.04006) scores efficient
attentions on tasks that need long reach. These generators give its shape on
a laptop, each a sequence classification with a known chance level:

- ``listops``: nested ``[MAX``, ``[MIN``, ``[MED`` and ``[SM`` (sum modulo
  10) over digits, the grammar of ListOps ("ListOps: A Diagnostic Dataset
  for Latent Tree Learning", Nangia and Bowman 2018, arXiv:1804.06028) at
  the lengths LRA uses; the answer is the value of the whole expression, so
  the first token can matter as much as the last. Ten classes.
- ``matching_halves``: two halves of noise, each hiding a key of a few
  tokens; are the keys equal? A negative differs from the positive in one
  token of the key, so the model must compare the two keys across half the
  sequence (LRA's Retrieval task compares two documents). Two classes.
- ``pathfinder``: a ``size x size`` image, one token per pixel, with two
  dots and dashed paths; are the dots on the same path? The reach is in 2-D:
  neighbours in the image are ``size`` tokens apart in the sequence (LRA's
  Pathfinder, after "Learning long-range spatial dependencies with
  horizontal gated recurrent units", Linsley et al. 2018). Two classes.

Token 0 is padding in every task. Each generator takes a ``torch.Generator``
for its randomness and returns ``tokens (batch, L)`` and ``labels (batch,)``,
both int64. It implements no model; the far-reaching token tasks
``offset_copy`` and ``far_marker`` live in ``tasks``.
"""

from __future__ import annotations

import math
import random

import torch
from torch import Tensor

from .._validation import check_int, check_positive_int

__all__ = [
    "LISTOPS_VOCAB",
    "PATHFINDER_VOCAB",
    "listops",
    "listops_text",
    "listops_value",
    "matching_halves",
    "pathfinder",
]

PAD = 0
LISTOPS_OPERATORS = ("[MAX", "[MIN", "[MED", "[SM")
LISTOPS_VOCAB = ("<pad>", *"0123456789", *LISTOPS_OPERATORS, "]")
"""ListOps' tokens by id: padding, the digits (id = digit + 1), the four
operators and the closing bracket."""
_DIGIT, _OPERATOR, _CLOSE = 1, 11, 15
PATHFINDER_VOCAB = ("<pad>", "background", "path", "dot")
"""Pathfinder's tokens by id: one per pixel kind."""


def _python_random(generator: torch.Generator | None) -> random.Random:
    """A ``random.Random`` seeded from ``generator`` (one draw), for the
    generators that build trees and paths in Python."""
    seed = torch.randint(2**62, (1,), generator=generator).item()
    return random.Random(seed)


# -- ListOps ---------------------------------------------------------------


def listops_value(operator: int, values: list[int]) -> int:
    """What an operator (an index of ``LISTOPS_OPERATORS``) gives for its
    arguments: the maximum, the minimum, the lower median (the middle of the
    sorted values, the lower one of the two middles for an even count) or
    the sum modulo 10."""
    if operator == 0:
        return max(values)
    if operator == 1:
        return min(values)
    if operator == 2:
        return sorted(values)[(len(values) - 1) // 2]
    return sum(values) % 10


def _listops_tree(
    rng: random.Random,
    target: int,
    max_length: int,
    max_depth: int,
    max_args: int,
) -> list:
    """A random expression of ``target`` to ``max_length`` tokens.

    A node is ``[operator, children]`` and a leaf a digit. It starts from one
    operator over digits and replaces random digits by operators over digits
    (each adds its arguments plus its two brackets, less the digit) until
    the expression holds ``target`` tokens, keeping every leaf within
    ``max_depth`` operators of the root.
    """
    args = rng.randint(2, max_args)
    root = [rng.randrange(4), [rng.randrange(10) for _ in range(args)]]
    length = args + 2
    leaves = [(root, i, 1) for i in range(args)]  # (parent, index, depth)
    while length < target and leaves:
        j = rng.randrange(len(leaves))
        parent, index, depth = leaves[j]
        leaves[j] = leaves[-1]
        leaves.pop()
        if depth >= max_depth:
            continue
        args = min(rng.randint(2, max_args), max_length - length - 1)
        if args < 2:
            break
        node = [rng.randrange(4), [rng.randrange(10) for _ in range(args)]]
        parent[1][index] = node
        leaves.extend((node, i, depth + 1) for i in range(args))
        length += args + 1
    return root


def _evaluate(node: list | int) -> int:
    if isinstance(node, int):
        return node
    operator, children = node
    return listops_value(operator, [_evaluate(c) for c in children])


def _serialise(node: list | int, out: list[int]) -> None:
    if isinstance(node, int):
        out.append(_DIGIT + node)
        return
    operator, children = node
    out.append(_OPERATOR + operator)
    for child in children:
        _serialise(child, out)
    out.append(_CLOSE)


def listops(
    batch: int,
    *,
    min_length: int = 500,
    max_length: int = 2000,
    max_depth: int = 10,
    max_args: int = 10,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Random ListOps expressions and their values.

    Each expression's length is drawn uniformly from ``[min_length,
    max_length]`` (LRA: 500 to 2000), its operators take 2 to ``max_args``
    arguments and nest at most ``max_depth`` deep (LRA: 10 and 10); a
    shallow, narrow tree (``max_depth`` 1 or 2) may hold fewer tokens than
    drawn.

    Args:
        batch: expressions.
        min_length, max_length: tokens per expression, ``5 <= min_length
            <= max_length``; every row is padded to ``max_length``.
        max_depth: operators from the root to any digit, >= 1.
        max_args: arguments per operator, >= 2.
        generator: the randomness (seed it for a reproducible task).

    Returns:
        ``tokens (batch, max_length)`` (ids of ``LISTOPS_VOCAB``, 0 after the
        expression) and ``labels (batch,)``, the values 0 to 9.

    Raises:
        ValueError: a size below its minimum, or ``min_length >
            max_length``.

    Complexity:
        ``O(batch * max_length)`` Python steps (about a second for 500
        expressions of 2000 tokens).
    """
    batch = check_positive_int("batch", batch)
    min_length = check_int("min_length", min_length, 5)
    max_length = check_int("max_length", max_length, 5)
    max_depth = check_positive_int("max_depth", max_depth)
    max_args = check_int("max_args", max_args, 2)
    if min_length > max_length:
        raise ValueError(
            f"min_length must be at most max_length; got min_length="
            f"{min_length}, max_length={max_length}."
        )
    rng = _python_random(generator)
    tokens = torch.zeros(batch, max_length, dtype=torch.int64)
    labels = torch.empty(batch, dtype=torch.int64)
    for row in range(batch):
        target = rng.randint(min_length, max_length)
        tree = _listops_tree(rng, target, max_length, max_depth, max_args)
        ids: list[int] = []
        _serialise(tree, ids)
        tokens[row, : len(ids)] = torch.tensor(ids)
        labels[row] = _evaluate(tree)
    return tokens, labels


def listops_text(tokens: Tensor) -> str:
    """One expression ``(L,)`` of token ids as text, padding dropped."""
    return " ".join(LISTOPS_VOCAB[i] for i in tokens.tolist() if i != PAD)


# -- Matching halves ------------------------------------------------------


def matching_halves(
    batch: int,
    length: int,
    *,
    key_length: int = 4,
    key_symbols: int = 8,
    noise_symbols: int = 16,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Two halves of noise, each hiding a key: are the two keys equal?

    The sequence is half A, a separator, half B (and one padding token when
    ``length`` is even). Each half is noise with its key at a random place;
    key symbols never occur in the noise, so a key is easy to find and hard
    only to compare. Half the rows (label 1) carry the same key twice; in
    the others (label 0) B's key differs from A's in exactly one position,
    so no shortcut such as the set of symbols present gives the answer.

    Args:
        batch: sequences. length: tokens per sequence ``L``, at least
            ``2 * key_length + 1``.
        key_length: tokens per key, >= 1. key_symbols: the keys' alphabet,
            >= 2. noise_symbols: the noise's alphabet, >= 1.
        generator: the randomness (seed it for a reproducible task).

    Returns:
        ``tokens (batch, L)``: 1 is the separator, ``2 ..
        noise_symbols + 1`` the noise, the next ``key_symbols`` ids the
        keys; ``labels (batch,)``, 1 when the keys are equal.

    Raises:
        ValueError: a size below its minimum.
    """
    batch = check_positive_int("batch", batch)
    key_length = check_positive_int("key_length", key_length)
    key_symbols = check_int("key_symbols", key_symbols, 2)
    noise_symbols = check_positive_int("noise_symbols", noise_symbols)
    length = check_int("length", length, 2 * key_length + 1)
    half = (length - 1) // 2
    first_key = 2 + noise_symbols
    tokens = torch.zeros(batch, length, dtype=torch.int64)
    tokens[:, : 2 * half + 1] = torch.randint(
        2, first_key, (batch, 2 * half + 1), generator=generator
    )
    tokens[:, half] = 1  # the separator
    key_a = first_key + torch.randint(
        key_symbols, (batch, key_length), generator=generator
    )
    labels = torch.randint(2, (batch,), generator=generator)
    # a negative changes one symbol of the key to another one
    where = torch.randint(key_length, (batch,), generator=generator)
    shift = torch.randint(1, key_symbols, (batch,), generator=generator)
    symbol = key_a[torch.arange(batch), where] - first_key
    changed = first_key + (symbol + shift) % key_symbols  # (batch,)
    key_b = key_a.clone()
    negative = labels == 0
    key_b[negative, where[negative]] = changed[negative]
    rows = torch.arange(batch)[:, None]
    span = torch.arange(key_length)
    places = half - key_length + 1  # where a key may start in its half
    start_a = torch.randint(places, (batch, 1), generator=generator)
    start_b = half + 1 + torch.randint(places, (batch, 1), generator=generator)
    tokens[rows, start_a + span] = key_a
    tokens[rows, start_b + span] = key_b
    return tokens, labels


# -- Pathfinder -------------------------------------------------------------

_BACKGROUND, _PATH, _DOT = 1, 2, 3
_MAX_ATTEMPTS = 2000  # walks tried before an image is given up


def _random_walk(
    rng: random.Random, size: int, steps: int
) -> list[tuple[int, int]]:
    """A smooth random walk of ``steps`` 8-neighbour moves inside the image,
    its heading turning a little at each step and turning back at a
    border."""
    row, col = rng.randrange(2, size - 2), rng.randrange(2, size - 2)
    heading = rng.uniform(0, 2 * math.pi)
    pixels = [(row, col)]
    for _ in range(steps):
        heading += rng.gauss(0.0, 0.35)
        for _ in range(8):  # turn until the step stays inside
            r = row + round(math.sin(heading))
            c = col + round(math.cos(heading))
            if 0 <= r < size and 0 <= c < size:
                break
            heading += rng.uniform(math.pi / 2, 3 * math.pi / 2)
        else:
            break
        row, col = r, c
        pixels.append((row, col))
    return pixels


def _far_from(
    pixels: list[tuple[int, int]], ink: set[tuple[int, int]], gap: int
) -> bool:
    """Whether every pixel lies more than ``gap`` pixels (Chebyshev) from
    every inked one."""
    return not any(
        (r + dr, c + dc) in ink
        for r, c in pixels
        for dr in range(-gap, gap + 1)
        for dc in range(-gap, gap + 1)
    )


def _pathfinder_image(
    rng: random.Random, size: int, steps: int, paths: int, connected: bool
) -> list[list[int]]:
    """One image: ``paths`` dashed paths 3 or more pixels apart; the dots
    on both ends of one path (``connected``) or on one end of each of two
    paths."""
    drawn: list[list[tuple[int, int]]] = []
    ink: set[tuple[int, int]] = set()
    for attempt in range(1, _MAX_ATTEMPTS + 1):
        walk = _random_walk(rng, size, steps)
        if len(walk) > steps // 2 and _far_from(walk, ink, 2):
            drawn.append(walk)
            ink.update(walk)
            if len(drawn) == paths:
                break
        if attempt % 100 == 0:  # a crowded start: begin again
            drawn, ink = [], set()
    else:
        raise ValueError(
            f"cannot place {paths} paths of {steps} steps 3 pixels apart "
            f"in a {size} x {size} image; use fewer or shorter paths "
            f"(paths, path_steps) or a larger size."
        )
    image = [[_BACKGROUND] * size for _ in range(size)]
    for walk in drawn:
        for step, (r, c) in enumerate(walk):
            if step % 3 != 2:  # dashes: two pixels on, one off
                image[r][c] = _PATH
    if connected:
        dots = [drawn[0][0], drawn[0][-1]]
    else:
        dots = [drawn[0][0], drawn[1][-1]]
    for r, c in dots:
        image[r][c] = _DOT
    return image


def pathfinder(
    batch: int,
    *,
    size: int = 32,
    path_steps: int = 24,
    paths: int = 3,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Images of dashed paths and two dots: are the dots on one path?

    Each image holds ``paths`` smooth random paths of ``path_steps`` steps,
    drawn as dashes (two pixels on, one off) and kept at least 3 pixels
    apart, so two paths never touch. In half the images (label 1) the dots
    mark both ends of one path; in the others one end of each of two paths.
    Every image has the same number of paths and dots, so only following a
    path tells the classes apart.

    Args:
        batch: images. size: pixels per side, >= 8 (LRA: 32, so
            ``L = 1024``; its hard version 128).
        path_steps: steps per path, >= 4. paths: paths per image, >= 2.
        generator: the randomness (seed it for a reproducible task).

    Returns:
        ``tokens (batch, size * size)``, the image row by row as ids of
        ``PATHFINDER_VOCAB``, and ``labels (batch,)``, 1 when connected.

    Raises:
        ValueError: a size below its minimum.
    """
    batch = check_positive_int("batch", batch)
    size = check_int("size", size, 8)
    path_steps = check_int("path_steps", path_steps, 4)
    paths = check_int("paths", paths, 2)
    rng = _python_random(generator)
    labels = torch.tensor([rng.randrange(2) for _ in range(batch)])
    images = [
        _pathfinder_image(rng, size, path_steps, paths, bool(label))
        for label in labels.tolist()
    ]
    tokens = torch.tensor(images, dtype=torch.int64).reshape(batch, -1)
    return tokens, labels
