"""Attention past one device: sequence-parallel ring attention and DDP.

This module holds ring attention (``ring_attention``: each process keeps a
contiguous shard of the sequence, the key/value shards travel around a ring
of processes, and the partial results merge with an online softmax), its
cost model (``ring_attention_cost``), the sharding rule used everywhere
(``shard_sequence``) and data parallelism on a tiny model
(``ddp_gradients``); ``run_processes``, which runs a function on a group of
local processes, lives in ``launch``. It implements "Ring Attention with
Blockwise Transformers for Near-Infinite Context" (Liu, Zaharia and Abbeel
2023, arXiv:2310.01889), the online softmax of "Online normalizer
calculation for softmax" (Milakov and Gimelshein 2018, arXiv:1805.02867),
and shows "PyTorch Distributed: Experiences on Accelerating Data Parallel
Training" (Li et al. 2020, arXiv:2006.15704); the chapter on hardware
acceleration teaches it. Everything is written on ``torch.distributed``, so
the same code runs on CPU processes with the gloo backend (as the tests do)
and on GPUs with NCCL. Across machines, start one process per device with
``torchrun`` (``torchrun --nnodes=2 --nproc-per-node=8 --rdzv-backend=c10d
--rdzv-endpoint=HOST:29500 script.py`` on every machine), call
``torch.distributed.init_process_group("nccl")`` in the script, and give
``ring_attention`` each process's shard of the sequence. What limits it:
every process sends ``2 (W - 1)`` shard-sized key/value blocks per attention
call (``ring_attention_cost``), which hides behind the block's compute only
while a block is large (the compute of a shard grows as ``L_r^2 E``, its
transfer as ``L_r E``); small blocks are latency-bound, each step paying a
message's fixed latency (tens of microseconds on NVLink or InfiniBand, far
more over TCP).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from .._validation import (
    check_bool,
    check_int,
    check_non_negative_int,
    check_positive_int,
    check_qkv,
    check_scale,
    check_tensor,
    scores_not_finite,
)
from ..attention.online_softmax import block_softmax, merge_softmax
from .launch import ProcessFailed, run_processes

__all__ = [
    "ProcessFailed",
    "RingAttentionCost",
    "ddp_gradients",
    "ring_attention",
    "ring_attention_cost",
    "ring_attention_trial",
    "run_processes",
    "shard_sequence",
]


def shard_sequence(
    x: Tensor, world_size: int, rank: int, dim: int = -2
) -> Tensor:
    """The contiguous shard of ``x`` along ``dim`` that process ``rank`` holds.

    The rule of ``torch.tensor_split``: a length ``L`` splits into
    ``world_size`` contiguous pieces, the first ``L % world_size`` of them
    one element longer; when ``L < world_size`` the last ones are empty.

    Args:
        x: any tensor with a dimension ``dim``.
        world_size: the number of processes, an int >= 1.
        rank: this process, an int in ``[0, world_size)``.
        dim: the sequence dimension (default -2, as in ``(..., L, E)``).

    Returns:
        a view of ``x``: ``x.tensor_split(world_size, dim)[rank]``.

    Raises:
        ValueError: ``x`` not a tensor, a ``world_size`` below 1, a ``rank``
            outside ``[0, world_size)``, or a ``dim`` that ``x`` lacks.

    Shape:
        ``x (..., L, E)`` -> ``(..., L_r, E)`` with ``L_r`` equal to
        ``ceil(L / W)`` or ``floor(L / W)``.

    Complexity:
        O(1) time and memory (a view).
    """
    check_tensor("x", x)
    world_size = check_positive_int("world_size", world_size)
    rank = check_non_negative_int("rank", rank)
    if rank >= world_size:
        raise ValueError(
            f"rank must be in [0, world_size) = [0, {world_size}); got {rank}."
        )
    dim = check_int("dim", dim, -max(x.dim(), 1))
    if dim >= x.dim():
        raise ValueError(
            f"dim must be a dimension of x, in [-{x.dim()}, {x.dim()}); got "
            f"{dim} for x of shape {tuple(x.shape)}."
        )
    return x.tensor_split(world_size, dim)[rank]


def _group_rank_and_size(group: object) -> tuple[int, int]:
    """``(rank, world_size)`` in ``group``; ``(0, 1)`` without a process
    group, so ring attention also runs in a plain script."""
    if not dist.is_available() or not dist.is_initialized():
        if group is not None:
            raise ValueError(
                "group was given but torch.distributed is not initialised; "
                "call torch.distributed.init_process_group first."
            )
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def _gather_sizes(
    sizes: list[int], world_size: int, group: object, device: torch.device
) -> list[list[int]]:
    """All processes' ``sizes`` (the same count on each), by one all_gather."""
    if world_size == 1:
        return [sizes]
    mine = torch.tensor(sizes, dtype=torch.int64, device=device)
    everyone = [torch.empty_like(mine) for _ in range(world_size)]
    dist.all_gather(everyone, mine, group=group)
    return [t.tolist() for t in everyone]


def ring_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    causal: bool = False,
    scale: float | None = None,
    group: object | None = None,
) -> Tensor:
    """Softmax attention over a sequence sharded across processes.

    Call it in every process of ``group`` with that process's contiguous
    shard (process ``r`` holds positions ``offset_r .. offset_r + L_r - 1``,
    in rank order, e.g. from ``shard_sequence``). The key/value shards
    travel around the ring: at step ``t`` process ``r`` attends its queries
    to the block of process ``(r - t) mod W`` while it sends the block it
    holds to ``r + 1`` and receives the next from ``r - 1`` (the transfer
    overlaps the block's compute). Blocks merge with the online softmax
    (``attention.online_softmax``): each block's output, normalised over
    its own keys, joins the output so far weighted by the two log-sum-exps'
    shares of the row's total weight. Scores and the running statistics are
    computed in float32 for half-precision
    inputs (float64 for float64) and the output is cast back. Shards may
    differ in length (``L`` not divisible by ``W``): the lengths are
    exchanged once with ``all_gather``, blocks are padded to the longest and
    the padding is masked. Without an initialised process group (or with
    one process) it computes locally, with no communication. Forward only:
    the ring's sends are not differentiable.

    Args:
        query: ``(..., L_r, E)``, this process's queries.
        key: ``(..., S_r, E)``, this process's keys.
        value: ``(..., S_r, Ev)``, this process's values.
        causal: True: global query position ``i`` attends global key
            positions ``j <= i`` (the shards' offsets are counted).
        scale: multiplies ``Q K^T``; None means ``1 / sqrt(E)``.
        group: the ``torch.distributed`` process group (None: the default
            group); its ranks order the shards.

    Returns:
        ``(..., L_r, Ev)``, this process's rows of the output, in the
        query's dtype. A query row with nothing to attend (causal, no key
        before it) returns zeros, never NaN.

    Raises:
        ValueError: shapes, dtypes or devices that do not fit (as
            ``dense_attention``); a ``causal`` that is not a bool or a bad
            ``scale``; shards whose leading dimensions or feature sizes
            differ between processes; scores that are not finite (inf or
            NaN in any process's query or key, or an overflow), as
            ``dense_attention`` refuses them (every process raises, none
            waits); ``group`` without an initialised process group.
        NotImplementedError: inputs that require a gradient (forward only).

    Shape:
        ``W`` processes, ``L = sum L_r`` queries, ``S = sum S_r`` keys,
        ``E`` head dim, ``Ev`` value dim, leading dims ``(B, H)`` or any.

    Complexity:
        Per process ``O(L_r S E)`` time in ``W`` steps, ``O(L_r max S_r)``
        memory for one block's scores (never ``L x S``); communication
        ``2 (W - 1)`` blocks of ``max S_r`` keys sent
        (``ring_attention_cost``).

    Equivalent to:
        ``shard_sequence(dense_attention(Q, K, V, is_causal=causal,
        scale=scale), W, r)`` on the concatenated shards.
    """
    check_qkv(query, key, value)
    check_bool("causal", causal)
    scale = check_scale(scale)
    if torch.is_grad_enabled() and any(
        t.requires_grad for t in (query, key, value)
    ):
        raise NotImplementedError(
            "ring_attention is forward only: its ring sends are not "
            "differentiable. Call it under torch.no_grad(), or detach the "
            "inputs."
        )
    rank, world_size = _group_rank_and_size(group)
    lead = query.shape[:-2]
    L_r, S_r, E, Ev = (
        query.shape[-2],
        key.shape[-2],
        query.shape[-1],
        value.shape[-1],
    )
    # one all_gather: every process learns every shard's lengths and checks
    # that the shards fit together (all raise alike, so none waits forever)
    sizes = _gather_sizes(
        [L_r, S_r, E, Ev, len(lead), math.prod(lead)],
        world_size,
        group,
        query.device,
    )
    if any(s[2:] != sizes[0][2:] for s in sizes):
        raise ValueError(
            f"the shards of query, key and value must share leading "
            f"dimensions and feature sizes E, Ev on every process; got "
            f"(L_r, S_r, E, Ev, leading rank, leading numel) = {sizes}."
        )
    q_offset = sum(s[0] for s in sizes[:rank])
    k_offsets = [sum(s[1] for s in sizes[:r]) for r in range(world_size)]
    k_lengths = [s[1] for s in sizes]
    S_max = max(k_lengths)
    if scale is None:
        scale = 1 / math.sqrt(E)
    compute = (
        query.dtype
        if query.dtype in (torch.float32, torch.float64)
        else torch.float32
    )
    q = query.to(compute) * scale  # (..., L_r, E)
    q_pos = torch.arange(L_r, device=query.device) + q_offset  # (L_r,)
    # the output so far and its log-sum-exp: no key yet
    out = torch.zeros(
        (*lead, L_r, Ev), dtype=compute, device=query.device
    )  # (..., L_r, Ev)
    lse = torch.full(
        (*lead, L_r), -math.inf, dtype=compute, device=query.device
    )  # (..., L_r)
    # the block in hand: key and value, padded to S_max, in one buffer
    block = torch.cat(
        [
            _pad_rows(key.to(compute), S_max),
            _pad_rows(value.to(compute), S_max),
        ],
        dim=-1,
    ).contiguous()  # (..., S_max, E + Ev)
    # NaN or inf in a shard is found before the ring (a block a causal
    # process skips is never scored), an overflow while scoring; every
    # process learns of any after the ring, and all raise alike
    finite = bool(q.isfinite().all()) and bool(key.isfinite().all())
    for step in range(world_size):
        source = (rank - step) % world_size
        pending = None
        if step < world_size - 1:  # pass the block on while computing
            incoming = torch.empty_like(block)
            pending = _ring_exchange(block, incoming, rank, world_size, group)
        seen = _block_attention(
            q,
            block[..., :E],
            block[..., E:],
            q_pos,
            k_offsets[source],
            k_lengths[source],
            causal,
        )
        if seen is not None:
            out_block, lse_block, block_finite = seen
            finite &= block_finite
            out, lse = merge_softmax(out, lse, out_block, lse_block)
        if pending is not None:
            for request in pending:
                request.wait()
            block = incoming
    if _any_process(not finite, world_size, group, query.device):
        raise scores_not_finite(scale, compute)
    # rows with nothing to attend kept zeros
    return out.to(query.dtype)


def _any_process(
    flag: bool, world_size: int, group: object, device: torch.device
) -> bool:
    """Whether ``flag`` is True on any process of ``group`` (one
    all_reduce; no communication for one process)."""
    if world_size == 1:
        return flag
    mine = torch.tensor([int(flag)], dtype=torch.int64, device=device)
    dist.all_reduce(mine, op=dist.ReduceOp.MAX, group=group)
    return bool(mine.item())


def _pad_rows(x: Tensor, rows: int) -> Tensor:
    """``x (..., n, D)`` padded with zero rows to ``(..., rows, D)``."""
    return torch.nn.functional.pad(x, (0, 0, 0, rows - x.shape[-2]))


def _ring_exchange(
    send: Tensor,
    receive: Tensor,
    rank: int,
    world_size: int,
    group: object,
) -> list:
    """Start sending ``send`` to ``rank + 1`` and receiving ``receive`` from
    ``rank - 1`` (ranks in ``group``); returns the requests to wait on."""
    to_rank, from_rank = (rank + 1) % world_size, (rank - 1) % world_size
    if group is not None:
        to_rank = dist.get_global_rank(group, to_rank)
        from_rank = dist.get_global_rank(group, from_rank)
    operations = [
        dist.P2POp(dist.isend, send, to_rank, group),
        dist.P2POp(dist.irecv, receive, from_rank, group),
    ]
    return dist.batch_isend_irecv(operations)


def _block_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_pos: Tensor,
    k_offset: int,
    k_length: int,
    causal: bool,
) -> tuple[Tensor, Tensor, bool] | None:
    """The queries' softmax over one key/value block (``block_softmax``).

    ``q`` is already scaled; the block's keys sit at global positions
    ``k_offset ..``, and only its first ``k_length`` rows are real.
    Returns the block's output ``(..., L_r, Ev)``, its log-sum-exp ``(...,
    L_r)`` and whether the scores of the real keys are all finite (as
    ``dense_attention`` checks them, causal or not); None when no query
    sees a key of the block.
    """
    S_max = k.shape[-2]
    if k_length == 0 or q.shape[-2] == 0:
        return None
    if causal and k_offset > int(q_pos[-1]):
        return None  # every key of the block lies after every query
    k_pos = torch.arange(S_max, device=q.device)  # (S_max,)
    hidden = k_pos >= k_length  # (S_max,): the padding rows of the block
    if causal:  # (L_r, S_max): and the keys after each query
        hidden = hidden | (k_pos[None, :] + k_offset > q_pos[:, None])
    scores = q @ k.transpose(-2, -1)  # (..., L_r, S_max): the one big buffer
    real = scores[..., :k_length]  # NaN and inf reach the row extremes
    finite = bool(real.amax(-1).isfinite().all()) and bool(
        real.amin(-1).isfinite().all()
    )  # isfinite on the whole block would take three blocks of memory
    scores.masked_fill_(hidden, -math.inf)
    out, lse = block_softmax(scores, v, overwrite_scores=True)
    return out, lse, finite


@dataclass(frozen=True)
class RingAttentionCost:
    """What ring attention costs each of ``world_size`` processes.

    ``shard_length`` is the longest shard ``ceil(L / W)``; ``steps`` the
    ring's steps (``W``); ``bytes_sent`` what one process sends in one
    attention call; ``peak_bytes`` its peak memory for the inputs, the key/
    value blocks, the output accumulator, the running statistics and one
    block's scores; ``transfer_bytes_per_step`` one key/value block.
    """

    shard_length: int
    steps: int
    bytes_sent: int
    transfer_bytes_per_step: int
    peak_bytes: int


def ring_attention_cost(
    L: int,
    E: int,
    world_size: int,
    *,
    heads: int = 1,
    batch: int = 1,
    bytes_per_element: int = 4,
) -> RingAttentionCost:
    """Communication and peak memory per process of ``ring_attention``.

    With ``n = batch * heads`` rows of attention, ``W = world_size``,
    ``L_r = ceil(L / W)`` (the longest shard, which every block is padded
    to) and ``b = bytes_per_element``:

    - one block (keys and values) is ``2 n L_r E b`` bytes;
    - each process sends ``W - 1`` blocks:
      ``bytes_sent = 2 (W - 1) n L_r E b`` (0 for one process);
    - peak memory per process counts ``q, k, v`` (``3 n L_r E``), the block
      in hand and the one arriving (``2 * 2 n L_r E``, only when ``W > 1``),
      the output so far and the block's output (``2 n L_r E``), their
      log-sum-exps (``2 n L_r``) and one block's scores, which become its
      weights in place (``n L_r^2``): ``peak_bytes = b n L_r (9E + 2 +
      L_r)`` for ``W > 1`` and ``b n L (5E + 2 + L)`` for one process.
      A causal call also holds a boolean mask of the block (``n L_r^2``
      bytes more).

    Half-precision inputs keep these buffers in float32: pass
    ``bytes_per_element=4`` for them. Values are taken with ``Ev = E``.

    Args:
        L: global sequence length. E: head dimension. world_size: ``W``.
        heads, batch: the other sizes. bytes_per_element: 2, 4 or 8...

    Returns:
        a ``RingAttentionCost``.

    Raises:
        ValueError: a size that is not a positive int.

    Complexity:
        O(1).
    """
    L, E, world_size, heads, batch, b = (
        check_positive_int(name, value)
        for name, value in (
            ("L", L),
            ("E", E),
            ("world_size", world_size),
            ("heads", heads),
            ("batch", batch),
            ("bytes_per_element", bytes_per_element),
        )
    )
    n = batch * heads
    L_r = -(-L // world_size)
    block = 2 * n * L_r * E * b
    if world_size == 1:
        peak = b * n * L_r * (5 * E + 2 + L_r)
    else:
        peak = b * n * L_r * (9 * E + 2 + L_r)
    return RingAttentionCost(
        shard_length=L_r,
        steps=world_size,
        bytes_sent=(world_size - 1) * block,
        transfer_bytes_per_step=block if world_size > 1 else 0,
        peak_bytes=peak,
    )


def _ddp_worker(
    rank: int,
    world_size: int,
    make_model: Callable[[], torch.nn.Module],
    state: dict[str, Tensor],
    inputs: Tensor,
    targets: Tensor,
) -> dict[str, Tensor]:
    """One rank of ``ddp_gradients``: its shard of the batch, one backward."""
    model = make_model()
    model.load_state_dict(state)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    x = shard_sequence(inputs, world_size, rank, dim=0)  # (N_r, ...)
    y = shard_sequence(targets, world_size, rank, dim=0)  # (N_r, ...)
    # DDP averages gradients over ranks; weighting each rank's sum by
    # W / numel makes that average the gradient of the global mean loss,
    # whatever the shard sizes
    loss = torch.nn.functional.mse_loss(ddp(x), y, reduction="sum")
    (loss * world_size / targets.numel()).backward()
    return {
        name: p.grad.detach().clone()
        for name, p in model.named_parameters()
        if p.grad is not None
    }


def ddp_gradients(
    make_model: Callable[[], torch.nn.Module],
    inputs: Tensor,
    targets: Tensor,
    world_size: int,
    *,
    timeout_s: float = 300.0,
) -> dict[str, Tensor]:
    """Gradients of one data-parallel step, on ``world_size`` processes.

    ``make_model()`` builds the model once here; its initial weights are
    sent to every process, which wraps it in ``DistributedDataParallel``,
    takes its contiguous shard of the batch (``shard_sequence`` along
    dimension 0) and back-propagates the mean squared error. DDP all-reduces
    (averages) the gradients in buckets during the backward pass, so every
    process ends with the gradient of the loss on the whole batch.

    Args:
        make_model: a picklable callable (a module-level function or a
            class) returning an ``nn.Module``.
        inputs: ``(N, ...)``, the global batch. targets: the model's output
            shape for it, ``(N, ...)``.
        world_size: processes, an int in ``[1, N]``.
        timeout_s: as ``run_processes``.

    Returns:
        parameter name -> gradient of ``mse_loss(model(inputs), targets)``,
        as the processes computed it (they all agree).

    Raises:
        ValueError: ``make_model`` not callable or not returning a module,
            inputs and targets that are not tensors with one batch size
            ``N``, or a ``world_size`` outside ``[1, N]``.
        ProcessFailed, TimeoutError: as ``run_processes``.

    Equivalent to:
        ``mse_loss(model(inputs), targets).backward()`` in one process.
    """
    if not callable(make_model):
        raise ValueError(
            f"make_model must be callable; got {type(make_model).__name__}."
        )
    check_tensor("inputs", inputs)
    check_tensor("targets", targets)
    if inputs.dim() == 0 or targets.dim() == 0:
        raise ValueError(
            "inputs and targets need a batch dimension (dimension 0)."
        )
    if inputs.shape[0] != targets.shape[0]:
        raise ValueError(
            f"inputs and targets must share the batch size N (dimension "
            f"0); got inputs {tuple(inputs.shape)}, targets "
            f"{tuple(targets.shape)}."
        )
    world_size = check_positive_int("world_size", world_size)
    if world_size > inputs.shape[0]:
        raise ValueError(
            f"world_size must be at most the batch size N = "
            f"{inputs.shape[0]}, so every process gets a sample; got "
            f"{world_size}."
        )
    model = make_model()
    if not isinstance(model, torch.nn.Module):
        raise ValueError(
            f"make_model must return an nn.Module; got {type(model).__name__}."
        )
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    per_rank = run_processes(
        _ddp_worker,
        world_size,
        make_model,
        state,
        inputs.detach(),
        targets.detach(),
        timeout_s=timeout_s,
    )
    first = per_rank[0]
    for other in per_rank[1:]:  # DDP's all-reduce: every rank agrees
        assert all(torch.equal(first[k], other[k]) for k in first)
    return first


def ring_attention_trial(
    rank: int,
    world_size: int,
    L: int,
    E: int,
    heads: int = 1,
    repeats: int = 5,
    seed: int = 0,
) -> dict[str, float | int]:
    """One process's measurements of ``ring_attention``; for ``run_processes``.

    Every process builds the same random ``(1, heads, L, E)`` query, key and
    value (``seed``), takes its shard (``shard_sequence``) and runs
    ``ring_attention`` once while counting the bytes it hands to the ring's
    sends, once under the profiler for its peak memory, and then
    ``repeats`` times, timed (a fixed count: every process must make the
    same collective calls, so an adaptive timer such as ``time_callable``,
    which may stop after a different count in each process, would hang the
    ring). Without a process group it runs as one process.

    Args:
        rank, world_size: as ``run_processes`` passes them.
        L, E, heads: global sequence length, head dimension and heads.
        repeats: timed calls, an int >= 1. seed: of the inputs.

    Returns:
        ``bytes_sent`` (counted), ``peak_bytes`` (measured), ``time_s``
        (median of the timed calls), ``max_error`` (largest absolute difference
        from this shard of ``scaled_dot_product_attention`` on the whole
        sequence) and ``shard_length``.

    Raises:
        ValueError: as ``ring_attention`` and ``time_callable``.
    """
    from ..benchmark import attention_inputs, peak_memory_bytes

    repeats = check_positive_int("repeats", repeats)

    q, k, v = attention_inputs(L, heads=heads, head_dim=E, seed=seed)
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    shards = [shard_sequence(t, world_size, rank) for t in (q, k, v)]
    sent: list[int] = []
    original = globals()["_ring_exchange"]

    def counting(send: Tensor, receive: Tensor, *rest: object) -> list:
        sent.append(send.numel() * send.element_size())
        return original(send, receive, *rest)

    globals()["_ring_exchange"] = counting
    try:
        with torch.no_grad():
            out = ring_attention(*shards)  # (1, heads, L_r, E)
    finally:
        globals()["_ring_exchange"] = original
    expected = shard_sequence(dense, world_size, rank)
    with torch.no_grad():
        peak = peak_memory_bytes(ring_attention, *shards)
        times = []
        for _ in range(repeats):
            if world_size > 1:
                dist.barrier()  # start every call together
            start = time.perf_counter()
            ring_attention(*shards)
            times.append(time.perf_counter() - start)
    return {
        "bytes_sent": sum(sent),
        "peak_bytes": peak,
        "time_s": sorted(times)[len(times) // 2],
        "max_error": float((out - expected).abs().max()),
        "shard_length": shards[0].shape[-2],
    }
