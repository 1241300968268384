"""Synthetic tasks that chapters train small models on, generated offline.

``offset_copy`` asks a model to copy tokens from fixed distances back: a
short offset needs only a short reach, a long one a long reach, so the heads
of an adaptive-span model (Sukhbaatar et al. 2019, arXiv 1905.07799) learn
different spans. Chapter "Local attention" trains on it. ``far_marker``
hides one marker early in a sequence and asks for it at the end: a
long-reach retrieval task that chapter "Hierarchical attention" trains
on. ``TaskModel``, ``train_on_task`` and ``task_accuracy`` are the small
model, the training loop and the score those chapters share: token
embeddings, ``EncoderLayer``s that run any attention function, and a
linear readout at every position, trained with Adam on fresh batches.
``SequenceClassifier`` reads one answer per sequence instead, for the
classification tasks of ``long_range``. ``trained_accuracies`` trains
several such models at once, one per CPU core.
"""

from __future__ import annotations

import numbers
import os
import pathlib
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_positive_int, check_positive_real
from ..parallel.launch import run_processes
from .encoder import AttentionFn, EncoderLayer

IGNORE = -100  # the target where there is nothing to copy (cross_entropy)


def offset_copy(
    batch: int,
    length: int,
    *,
    offsets: Sequence[int] = (1, 20),
    vocab: int = 16,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Random tokens, and for each position the tokens ``offsets`` back.

    Args:
        batch: sequences. length: tokens per sequence ``L``.
        offsets: distances to copy from; target ``c`` of position ``i`` is
            token ``i - offsets[c]`` (``IGNORE`` where ``i < offsets[c]``).
        vocab: tokens are drawn uniformly from ``range(vocab)``.
        generator: the randomness (seed it for a reproducible task).

    Returns:
        ``tokens (batch, L)`` and ``targets (batch, L, len(offsets))``, both
        int64.

    Raises:
        ValueError: a size below 1, no offsets, or an offset that is not an
            int in ``[1, length)``.
    """
    batch, length, vocab = (
        check_positive_int(name, value)
        for name, value in (
            ("batch", batch),
            ("length", length),
            ("vocab", vocab),
        )
    )
    offsets = list(offsets)
    if not offsets:
        raise ValueError("offsets must hold at least one distance.")
    for offset in offsets:
        if isinstance(offset, bool) or not isinstance(
            offset, numbers.Integral
        ):
            raise ValueError(f"offsets must be ints; got {offset!r}.")
        if not 1 <= offset < length:
            raise ValueError(
                f"each offset must be in [1, length={length}); got {offset}."
            )
    offsets = [int(offset) for offset in offsets]
    tokens = torch.randint(vocab, (batch, length), generator=generator)
    targets = torch.full((batch, length, len(offsets)), IGNORE)
    for c, offset in enumerate(offsets):
        targets[:, offset:, c] = tokens[:, :-offset]
    return tokens, targets


def far_marker(
    batch: int,
    length: int,
    *,
    classes: int = 4,
    vocab: int = 16,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """One marker early in the sequence, to be reported at its end.

    A long-reach retrieval task: every sequence holds noise tokens (drawn
    from ``range(classes, vocab)``) and one marker token (from
    ``range(classes)``) at a random position of its first quarter; every
    position of the last quarter must name the marker. So a query is at
    least ``length / 2`` tokens from what it needs: a local window
    narrower than that guesses (accuracy ``1 / classes``), while dense
    and hierarchical attention can reach it. Chapter "Hierarchical
    attention" trains on it.

    Args:
        batch: sequences. length: tokens per sequence ``L`` (>= 4).
        classes: marker kinds (the answer's classes), >= 2.
        vocab: tokens in all, > ``classes``.
        generator: the randomness (seed it for a reproducible task).

    Returns:
        ``tokens (batch, L)`` and ``targets (batch, L)``, both int64:
        the marker's class in the last quarter, ``IGNORE`` elsewhere.

    Raises:
        ValueError: a size below its minimum, or ``vocab <= classes``.
    """
    batch, length, classes, vocab = (
        check_positive_int(name, value)
        for name, value in (
            ("batch", batch),
            ("length", length),
            ("classes", classes),
            ("vocab", vocab),
        )
    )
    if length < 4:
        raise ValueError(f"length must be at least 4; got {length}.")
    if classes < 2 or vocab <= classes:
        raise ValueError(
            f"need 2 <= classes < vocab (noise tokens are the others); got "
            f"classes={classes}, vocab={vocab}."
        )
    tokens = torch.randint(
        classes, vocab, (batch, length), generator=generator
    )
    marker = torch.randint(classes, (batch,), generator=generator)
    where = torch.randint(length // 4, (batch,), generator=generator)
    tokens[torch.arange(batch), where] = marker
    targets = torch.full((batch, length), IGNORE)
    last = length - length // 4  # the last quarter
    targets[:, last:] = marker[:, None]
    return tokens, targets


POSITION_STD = 0.02
"""The standard deviation of ``TaskModel``'s learned positions at
initialisation, BERT's: small beside the tokens' embeddings (standard
deviation 1), so that at first they do not hide which token stands where.
Drawn as large as the tokens', they kept dense attention from finding
``far_marker``'s marker at L = 1024 in 1000 steps (0.78, arena, seed 0);
drawn small, it does in 700 on one thread (on two, the same seed stops at
0.76, two marker classes not yet told apart: small positions are needed,
not sufficient)."""


class TaskModel(nn.Module):
    """A small model for the synthetic tasks: embeddings, encoder layers
    that run ``attention``, and a linear readout at every position.

    Args:
        vocab: tokens the input may hold. classes: logits per position.
        d_model, heads, d_ff: the sizes of each ``EncoderLayer`` (``d_ff``
            None means ``2 * d_model``). layers: how many, stacked.
        attention: ``fn(query, key, value) -> out`` on ``(B, H, L, E)``
            tensors; default ``F.scaled_dot_product_attention``.
        max_length: learned position embeddings for up to this many
            tokens, initialised small (``POSITION_STD``); None: no
            positions (a task that only retrieves, such as
            ``far_marker``, needs none).

    Raises:
        ValueError: a size that is not a positive int, ``d_model`` not
            divisible by ``heads`` (``EncoderLayer`` says which); calling
            it, tokens that are not ``(B, L)`` ints, or longer than
            ``max_length``.

    Shape: ``tokens (B, L)`` int64 -> logits ``(B, L, classes)``.
    """

    def __init__(
        self,
        vocab: int,
        classes: int,
        *,
        d_model: int = 32,
        heads: int = 2,
        d_ff: int | None = None,
        layers: int = 1,
        attention: AttentionFn = F.scaled_dot_product_attention,
        max_length: int | None = None,
    ) -> None:
        super().__init__()
        vocab, classes, d_model, layers = (
            check_positive_int(name, value)
            for name, value in (
                ("vocab", vocab),
                ("classes", classes),
                ("d_model", d_model),
                ("layers", layers),
            )
        )
        d_ff = 2 * d_model if d_ff is None else d_ff
        self.embedding = nn.Embedding(vocab, d_model)
        self.positions = (
            None
            if max_length is None
            else nn.Embedding(check_positive_int("max_length", max_length),
                              d_model)
        )  # fmt: skip
        if self.positions is not None:
            nn.init.normal_(self.positions.weight, std=POSITION_STD)
        self.layers = nn.ModuleList(
            EncoderLayer(d_model, heads, d_ff, attention=attention)
            for _ in range(layers)
        )
        self.readout = nn.Linear(d_model, classes)

    def forward(self, tokens: Tensor) -> Tensor:
        """``(B, L)`` token ids -> ``(B, L, classes)`` logits."""
        return self.readout(self.encode(tokens))  # (B, L, classes)

    def encode(self, tokens: Tensor) -> Tensor:
        """``(B, L)`` token ids -> ``(B, L, d_model)`` hidden states."""
        if (
            not isinstance(tokens, Tensor)
            or tokens.dim() != 2
            or tokens.is_floating_point()
        ):
            got = (
                f"shape {tuple(tokens.shape)}, dtype {tokens.dtype}"
                if isinstance(tokens, Tensor)
                else type(tokens).__name__
            )
            raise ValueError(
                f"tokens must be a (B, L) tensor of token ids; got {got}."
            )
        hidden = self.embedding(tokens)  # (B, L, d)
        if self.positions is not None:
            L = tokens.shape[1]
            if L > self.positions.num_embeddings:
                raise ValueError(
                    f"tokens hold {L} positions but the model has position "
                    f"embeddings for max_length="
                    f"{self.positions.num_embeddings}; build it with a "
                    f"larger max_length."
                )
            hidden = hidden + self.positions.weight[:L]  # (B, L, d)
        for layer in self.layers:
            hidden = layer(hidden)  # (B, L, d)
        return hidden


class SequenceClassifier(TaskModel):
    """``TaskModel`` with one answer per sequence: the mean of the hidden
    states over the tokens that are not padding (id ``pad``), then the
    linear readout. The tasks of ``long_range`` train it, as the Long Range
    Arena's classifiers pool.

    Args:
        as ``TaskModel``; pad: the padding token's id (0 in every task of
            ``long_range``), left out of the mean.

    Shape: ``tokens (B, L)`` int64 -> logits ``(B, classes)``.
    """

    def __init__(self, vocab: int, classes: int, *, pad: int = 0, **sizes):
        super().__init__(vocab, classes, **sizes)
        self.pad = pad

    def forward(self, tokens: Tensor) -> Tensor:
        """``(B, L)`` token ids -> ``(B, classes)`` logits."""
        hidden = self.encode(tokens)  # (B, L, d)
        kept = (tokens != self.pad).unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * kept).sum(1) / kept.sum(1).clamp_min(1.0)
        return self.readout(pooled)  # (B, classes)


class TaskRun(NamedTuple):
    """What ``train_on_task`` returns: the loss of every step, and the
    seconds the steps took."""

    losses: list[float]
    seconds: float


def task_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """The mean cross-entropy of ``logits (..., C)`` against ``targets
    (...)`` over the positions with a target (``IGNORE`` is skipped): one
    per sequence (``(B, C)``, ``(B,)``) or one per token (``(B, L, C)``,
    ``(B, L)``)."""
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),  # (positions, C)
        targets.reshape(-1),
        ignore_index=IGNORE,
    )


def train_on_task(
    model: nn.Module,
    task: Callable[..., tuple[Tensor, Tensor]],
    *,
    steps: int,
    batch: int = 32,
    learning_rate: float = 3e-3,
    seed: int = 0,
    threads: int | None = 1,
) -> TaskRun:
    """Train ``model`` in place on fresh batches of a generated task.

    Each step draws ``task(batch, generator=g)`` (``g`` seeded with
    ``seed``, so two runs see the same data), takes the cross-entropy of
    ``model(tokens)`` against the targets (``IGNORE`` is skipped) and one
    Adam step.

    Args:
        model: maps ``tokens (B, L)`` to logits ``(B, L, C)``, or ``(B,
            C)`` for one answer per sequence (``SequenceClassifier``).
        task: e.g. ``functools.partial(far_marker, length=128)``; returns
            ``tokens (B, L)`` and ``targets (B, L)``, or ``(B,)``.
        steps, batch: how many steps, of how many sequences.
        learning_rate: Adam's.
        seed: the data's generator (seed the model's initialisation with
            ``torch.manual_seed`` before building it).
        threads: torch's CPU threads while training (restored afterwards);
            1 suits a small model, whose operations are too small to share
            between cores. None leaves the setting alone.

    Returns:
        ``TaskRun(losses, seconds)``: the loss of every step and the
        wall-clock seconds of the whole loop.

    Raises:
        ValueError: a count or rate that is not positive.
    """
    steps = check_positive_int("steps", steps)
    batch = check_positive_int("batch", batch)
    learning_rate = check_positive_real("learning_rate", learning_rate)
    if threads is not None:
        threads = check_positive_int("threads", threads)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    before = torch.get_num_threads()
    losses: list[float] = []
    model.train()
    start = time.perf_counter()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        for _ in range(steps):
            tokens, targets = task(batch, generator=generator)
            loss = task_loss(model(tokens), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    finally:
        torch.set_num_threads(before)
    seconds = time.perf_counter() - start
    model.eval()
    return TaskRun(losses, seconds)


@torch.inference_mode()
def task_accuracy(model: nn.Module, tokens: Tensor, targets: Tensor) -> float:
    """The share of positions with a target (not ``IGNORE``) where the
    model's most likely class is the target (one position per sequence for
    ``(B, C)`` logits and ``(B,)`` targets).

    Raises:
        ValueError: logits and targets that do not line up, or no target.
    """
    model.eval()
    logits = model(tokens)  # (B, L, C)
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"the model's logits {tuple(logits.shape)} do not match the "
            f"targets {tuple(targets.shape)}: expected (B, L, C) logits for "
            f"(B, L) targets."
        )
    known = targets != IGNORE
    if not bool(known.any()):
        raise ValueError("targets hold no position to score (all IGNORE).")
    hits = (logits.argmax(-1) == targets) & known
    return float(hits.sum() / known.sum())


def trained_accuracy(
    task: Callable[..., tuple[Tensor, Tensor]],
    held_out: tuple[Tensor, Tensor],
    *,
    vocab: int,
    classes: int,
    steps: int,
    init_seed: int = 0,
    data_seed: int = 1000,
    **model_options: object,
) -> float:
    """Held-out accuracy of a ``TaskModel`` trained on ``task``.

    The model is ``TaskModel(vocab, classes, **model_options)`` built after
    ``torch.manual_seed(init_seed)``, trained ``steps`` steps by
    ``train_on_task(..., seed=data_seed)`` (on one thread) and scored by
    ``task_accuracy(model, *held_out)``.
    """
    torch.manual_seed(init_seed)
    model = TaskModel(vocab, classes, **model_options)
    train_on_task(model, task, steps=steps, seed=data_seed)
    return task_accuracy(model, *held_out)


def trained_accuracies(
    jobs: Sequence[dict[str, object]], *, processes: int | None = None
) -> list[float]:
    """``[trained_accuracy(**job) for job in jobs]``, one process per core.

    Each model trains on one thread, so ``n`` cores train ``n`` models at
    once: the same computations as the loop, in about ``1/n`` of its time
    (plus seconds to start each process). A process that finishes takes
    the next job nobody has taken, in the list's order, so slow and fast
    jobs spread over the cores by themselves (list the slowest first). The
    jobs' values must be picklable: the package's functions,
    ``functools.partial`` of them, tensors.

    Args:
        jobs: keyword arguments of ``trained_accuracy``, one dict per model.
        processes: how many at once; None: one per CPU core, at most one
            per job.

    Raises:
        ValueError: no job, a job that is not a dict or cannot be
            pickled, a bad ``processes``. ``parallel.ProcessFailed``: a
            job raised (its traceback in the message).
    """
    jobs = list(jobs)
    if not jobs:
        raise ValueError("jobs is empty: give one dict per model to train.")
    for job in jobs:
        if not isinstance(job, Mapping):
            raise ValueError(
                f"each job must be a dict of trained_accuracy's keyword "
                f"arguments; got {type(job).__name__} {job!r:.60}."
            )
    if processes is None:
        processes = min(len(jobs), os.cpu_count() or 1)
    processes = min(check_positive_int("processes", processes), len(jobs))
    if processes == 1:
        return [trained_accuracy(**job) for job in jobs]
    with tempfile.TemporaryDirectory(prefix="ea-jobs-") as claims:
        shares = run_processes(
            _train_unclaimed, processes, jobs, claims, timeout_s=3600
        )
    done = {i: accuracy for share in shares for i, accuracy in share.items()}
    return [done[i] for i in range(len(jobs))]


def _train_unclaimed(
    rank: int, processes: int, jobs: list[dict], claims: str
) -> dict[int, float]:
    """Train every job this process claims first: ``{job index: accuracy}``.

    A job is claimed by creating the file ``claims/<index>``; creating a
    file that exists fails, so each job is claimed by one process only.
    """
    done = {}
    for i, job in enumerate(jobs):
        try:
            pathlib.Path(claims, str(i)).touch(exist_ok=False)  # O_EXCL
        except FileExistsError:
            continue  # another process has it
        done[i] = trained_accuracy(**job)
    return done
