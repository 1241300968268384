"""Run a function on a group of local processes: ``run_processes``.

``run_processes(fn, W, *args)`` starts ``W`` processes with
``torch.multiprocessing.start_processes`` (the ``spawn`` method), which
also carries each process's traceback back when it raises. Each process
joins one ``torch.distributed`` process group through a ``file://``
rendezvous in a temporary folder (no network ports), calls ``fn(rank, W,
*args)`` and leaves its result, pickled, in that folder; ``run_processes``
returns the results in rank order. It is for the tests and the chapter on
one machine; across machines start the processes with ``torchrun`` (see
``distributed``). It implements no paper.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import time
from collections.abc import Callable
from multiprocessing.reduction import ForkingPickler

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .._validation import check_positive_int, check_positive_real

__all__ = ["ProcessFailed", "run_processes"]

# Seconds the other processes get to finish (and write their own
# traceback) after one fails, before they are ended.
GRACE_PERIOD_S = 5.0


class ProcessFailed(RuntimeError):
    """A process of ``run_processes`` raised or died; the message holds its
    traceback."""


def run_processes(
    fn: Callable[..., object],
    world_size: int,
    *args: object,
    timeout_s: float = 300.0,
    backend: str = "gloo",
) -> list[object]:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` new processes.

    Each process (one torch thread) joins a process group of ``backend``
    through a ``file://`` rendezvous, runs ``fn`` and sends its result
    back pickled.

    Args:
        fn: a picklable function (defined at module level), called as
            ``fn(rank, world_size, *args)``.
        world_size: the number of processes, an int >= 1.
        args: picklable arguments passed to every process.
        timeout_s: seconds to wait for all results before ending the
            processes (a finite number > 0).
        backend: ``"gloo"`` (CPU) or ``"nccl"`` (one GPU per process).

    Returns:
        the results of ranks ``0 .. world_size - 1``, in rank order.

    Raises:
        ValueError: ``fn`` not callable, ``fn`` or ``args`` not picklable
            (a lambda), a bad ``world_size`` or ``timeout_s``.
        ProcessFailed: a process raised or died; the message holds the
            traceback of every rank that raised. The others are ended.
        TimeoutError: not every process finished within ``timeout_s``.

    Complexity:
        starting a process costs seconds (it imports torch): run many cases
        in one call.
    """
    if not callable(fn):
        raise ValueError(f"fn must be callable; got {type(fn).__name__}.")
    for name, value in (("fn", fn), ("args", args)):
        try:
            ForkingPickler.dumps(value)
        except Exception as error:  # pickle raises several types
            raise ValueError(
                f"{name} must be picklable, to reach the new processes: a "
                f"function defined at module level, not a lambda or a "
                f"function defined inside another; {error}"
            ) from None
    world_size = check_positive_int("world_size", world_size)
    timeout_s = check_positive_real("timeout_s", timeout_s)
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo' or 'nccl'; got {backend!r}.")
    with tempfile.TemporaryDirectory(prefix="ea-dist-") as folder:
        context = mp.start_processes(
            _run_rank,
            args=(world_size, folder, backend, fn, args),
            nprocs=world_size,
            join=False,
            start_method="spawn",
        )
        try:
            _join(context, timeout_s)
        finally:
            _end(context)
        return [_result(folder, rank) for rank in range(world_size)]


def _run_rank(
    rank: int,
    world_size: int,
    folder: str,
    backend: str,
    fn: Callable[..., object],
    args: tuple,
) -> None:
    """The body of process ``rank``: join the group, run ``fn``, save its
    result in ``folder``."""
    torch.set_num_threads(1)
    dist.init_process_group(
        backend,
        init_method=f"file://{os.path.join(folder, 'rendezvous')}",
        rank=rank,
        world_size=world_size,
    )
    try:
        result = fn(rank, world_size, *args)
    finally:
        dist.destroy_process_group()
    with open(os.path.join(folder, f"result-{rank}.pickle"), "wb") as file:
        pickle.dump(result, file)


def _join(context: mp.ProcessContext, timeout_s: float) -> None:
    """Wait for every process of ``context``; raise ``ProcessFailed`` when
    one fails and ``TimeoutError`` past ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    try:
        while not context.join(
            timeout=max(deadline - time.monotonic(), 0.0),
            grace_period=GRACE_PERIOD_S,
        ):
            if time.monotonic() >= deadline:
                alive = [
                    rank
                    for rank, process in enumerate(context.processes)
                    if process.is_alive()
                ]
                raise TimeoutError(
                    f"run_processes: ranks {alive} did not finish within "
                    f"timeout_s; a hang (a collective some rank never "
                    f"reached?) or too small a timeout."
                )
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as error:
        raise ProcessFailed(_failure_message(context, error)) from None


def _failure_message(
    context: mp.ProcessContext,
    error: mp.ProcessRaisedException | mp.ProcessExitedException,
) -> str:
    """The tracebacks of every rank that raised, or how a rank died."""
    raised = {}
    for rank, path in enumerate(context.error_files):
        if os.path.exists(path):
            with open(path, "rb") as file:
                raised[rank] = pickle.load(file)
    if not raised:
        return (
            f"run_processes: rank {error.error_index} died without a "
            f"result ({error})."
        )
    return (
        f"run_processes: ranks {sorted(raised)} raised (when one rank "
        f"fails, its peers often fail too, waiting for it):\n"
        + "\n".join(f"rank {r} raised:\n{raised[r]}" for r in sorted(raised))
    )


def _end(context: mp.ProcessContext) -> None:
    """End the processes still running and remove their traceback files."""
    for process in context.processes:
        if process.is_alive():
            process.terminate()
    for process in context.processes:
        process.join(timeout=10)
    for path in context.error_files:
        if os.path.exists(path):
            os.remove(path)


def _result(folder: str, rank: int) -> object:
    """What process ``rank`` returned, read back from ``folder``."""
    path = os.path.join(folder, f"result-{rank}.pickle")
    if not os.path.exists(path):
        raise ProcessFailed(
            f"run_processes: rank {rank} ended without a result (stopped "
            f"by a signal, or fn called sys.exit)."
        )
    with open(path, "rb") as file:
        return pickle.load(file)
