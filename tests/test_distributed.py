"""Ring attention, its cost, the process launcher and DDP of
efficient_attention.parallel, on CPU processes with gloo.

Starting a process group costs seconds, so each world size runs all its
cases in one ``run_processes`` call (``ring_cases``) and the tests read the
results from a cache.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F

import efficient_attention as ea
from efficient_attention import distributed
from efficient_attention.attention.online_softmax import merge_softmax

CASES = [
    # (leading shape, L, E, Ev, causal, scale)
    ((2, 3), 13, 8, 8, False, None),
    ((2, 3), 13, 8, 8, True, None),
    ((1, 4), 16, 4, 6, True, 0.3),
    ((3,), 3, 5, 5, True, None),  # L < 4 processes: empty shards
    ((3,), 3, 5, 5, False, None),
    ((2, 2), 1, 4, 4, True, None),
]


def case_inputs(index: int, dtype: torch.dtype = torch.float64):
    lead, L, E, Ev, causal, scale = CASES[index]
    g = torch.Generator().manual_seed(index)
    q = torch.randn(*lead, L, E, generator=g, dtype=dtype)
    k = torch.randn(*lead, L, E, generator=g, dtype=dtype)
    v = torch.randn(*lead, L, Ev, generator=g, dtype=dtype)
    return q, k, v, causal, scale


def ring_cases(rank: int, world_size: int) -> dict[str, object]:
    """Every ring-attention case, run in one process group."""
    results: dict[str, object] = {"outputs": []}
    for index in range(len(CASES)):
        q, k, v, causal, scale = case_inputs(index)
        shards = (
            distributed.shard_sequence(t, world_size, rank) for t in (q, k, v)
        )
        out = distributed.ring_attention(*shards, causal=causal, scale=scale)
        results["outputs"].append(out)
    # half precision: statistics in float32, output back in bfloat16
    q, k, v, causal, _ = case_inputs(1, torch.bfloat16)
    shards = (
        distributed.shard_sequence(t, world_size, rank) for t in (q, k, v)
    )
    results["bfloat16"] = distributed.ring_attention(*shards, causal=True)
    # shards that do not fit together: every rank must raise, none hang
    E = 4 + (rank == world_size - 1)
    try:
        x = torch.ones(1, 2, E)
        distributed.ring_attention(x, x, x)
        results["mismatch"] = None
    except ValueError as error:
        results["mismatch"] = str(error)
    # issue 22: a NaN in rank 0's keys, an overflow that only the last
    # rank meets (causal): every rank raises the package's ValueError
    results["not finite"] = []
    for big in (False, True):
        x = torch.ones(1, 2, 4, dtype=torch.float64)
        k = x.clone()
        if not big and rank == 0:
            k[0, 0, 0] = math.nan
        if big and rank == world_size - 1:
            x, k = x * 1e200, k * 1e200
        try:
            distributed.ring_attention(x, k, x, causal=True)
            results["not finite"].append(None)
        except ValueError as error:
            results["not finite"].append(str(error))
    return results


@functools.cache
def ring_results(world_size: int) -> list[dict[str, object]]:
    return distributed.run_processes(ring_cases, world_size, timeout_s=120)


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_ring_attention_equals_dense_attention(world_size):
    per_rank = ring_results(world_size)
    for index in range(len(CASES)):
        q, k, v, causal, scale = case_inputs(index)
        out = torch.cat([r["outputs"][index] for r in per_rank], dim=-2)
        expected = F.scaled_dot_product_attention(
            q, k, v, is_causal=causal, scale=scale
        )
        assert out.dtype == torch.float64
        torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
    q, k, v, _, _ = case_inputs(1, torch.bfloat16)
    out = torch.cat([r["bfloat16"] for r in per_rank], dim=-2)
    assert out.dtype == torch.bfloat16
    expected = ea.dense_attention(
        *(t.double() for t in (q, k, v)), is_causal=True
    )
    torch.testing.assert_close(out.double(), expected, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("world_size", [2, 4])
def test_ring_attention_refuses_shards_that_do_not_fit(world_size):
    messages = [r["mismatch"] for r in ring_results(world_size)]
    assert all(m is not None and "feature sizes" in m for m in messages)


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_scores_that_are_not_finite_raise_on_every_rank(world_size):
    # issue 22: NaN came out where dense_attention raises
    for result in ring_results(world_size):
        for message in result["not finite"]:
            assert message is not None and "inf or NaN" in message


def test_run_processes_names_a_function_it_cannot_send():
    # issue 22: a lambda failed inside multiprocessing's pickler
    with pytest.raises(ValueError, match="fn must be picklable"):
        distributed.run_processes(lambda rank, world_size: rank, 1)
    with pytest.raises(ValueError, match="args must be picklable"):
        distributed.run_processes(print, 1, lambda: 0)


def test_one_process_without_a_group_needs_no_communication():
    q, k, v, causal, scale = case_inputs(1)
    out = distributed.ring_attention(q, k, v, causal=True)
    torch.testing.assert_close(
        out, ea.dense_attention(q, k, v, is_causal=True)
    )
    # a row with no key before it (causal, queries longer than keys) is 0
    out = distributed.ring_attention(
        q[..., :1, :], k[..., :0, :], v[..., :0, :]
    )
    assert out.shape == (2, 3, 1, 8) and not out.isnan().any()
    assert (out == 0).all()


def test_ring_attention_trial_in_one_process_measures_no_traffic():
    result = distributed.ring_attention_trial(0, 1, 64, 8, 2, 2)
    assert result["bytes_sent"] == 0
    assert result["shard_length"] == 64
    assert result["max_error"] < 1e-5
    assert result["peak_bytes"] > 0 and result["time_s"] > 0


def test_ring_attention_peak_memory_is_the_cost_model_s():
    """One block of scores, turned into weights in place: the model counts
    what the code holds (the profiler adds a few small temporaries)."""
    result = distributed.ring_attention_trial(0, 1, 1024, 64)
    model = distributed.ring_attention_cost(1024, 64, 1).peak_bytes
    assert model <= result["peak_bytes"] < 1.15 * model


def test_shard_sequence_is_tensor_split():
    x = torch.arange(13 * 2).reshape(13, 2)
    shards = [distributed.shard_sequence(x, 4, r, dim=0) for r in range(4)]
    assert [len(s) for s in shards] == [4, 3, 3, 3]
    assert torch.equal(torch.cat(shards), x)
    y = torch.arange(3)[None, :, None]
    sizes = [distributed.shard_sequence(y, 4, r).shape[-2] for r in range(4)]
    assert sizes == [1, 1, 1, 0]


def test_ring_attention_cost_matches_a_hand_count():
    # L = 13 on 4 processes: shards of at most 4; n = 2 heads, E = 8, float64
    cost = distributed.ring_attention_cost(
        13, 8, 4, heads=2, bytes_per_element=8
    )
    block = 2 * (2 * 4 * 8) * 8  # keys and values of one shard, in bytes
    assert cost.shard_length == 4 and cost.steps == 4
    assert cost.transfer_bytes_per_step == block == 1024
    assert cost.bytes_sent == 3 * block == 3072
    # q, k, v, 2 blocks of k and v, the output so far and the block's: 9E;
    # their log-sum-exps: 2; scores: L_r
    assert cost.peak_bytes == 8 * 2 * 4 * (9 * 8 + 2 + 4) == 4992
    one = distributed.ring_attention_cost(
        13, 8, 1, heads=2, bytes_per_element=8
    )
    assert one.bytes_sent == 0 and one.transfer_bytes_per_step == 0
    assert one.peak_bytes == 8 * 2 * 13 * (5 * 8 + 2 + 13)
    # more processes: less memory each, and the total sent grows ~ (W-1)/W
    costs = [
        distributed.ring_attention_cost(4096, 64, w) for w in (1, 2, 4, 8)
    ]
    assert all(a.peak_bytes > b.peak_bytes for a, b in zip(costs, costs[1:]))
    assert all(a.bytes_sent < b.bytes_sent for a, b in zip(costs, costs[1:]))


class TinyModel(torch.nn.Module):
    """Two linear layers; a class, so spawned processes can build it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_ddp_gradients_equal_one_process_on_the_whole_batch():
    g = torch.Generator().manual_seed(1)
    inputs = torch.randn(9, 5, generator=g)  # 9 samples: shards of 5 and 4
    targets = torch.randn(9, 3, generator=g)
    grads = distributed.ddp_gradients(TinyModel, inputs, targets, 2)
    model = TinyModel()
    F.mse_loss(model(inputs), targets).backward()
    expected = {n: p.grad for n, p in model.named_parameters()}
    assert grads.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(grads[name], expected[name])


def fails_on_rank_one(rank: int, world_size: int) -> int:
    if rank == 1:
        raise KeyError("raised on purpose in rank 1")
    torch.distributed.barrier()  # would wait forever for rank 1
    return rank


def test_an_exception_in_a_child_surfaces_with_its_traceback():
    with pytest.raises(distributed.ProcessFailed) as error:
        distributed.run_processes(fails_on_rank_one, 2, timeout_s=60)
    message = str(error.value)
    assert "rank 1 raised" in message and "raised on purpose" in message
    assert "Traceback" in message and "fails_on_rank_one" in message


@pytest.mark.parametrize(
    "call,message",
    [
        (
            lambda: distributed.ring_attention(
                torch.ones(2, 3), torch.ones(2, 4), torch.ones(2, 4)
            ),
            "same feature size E",
        ),
        (
            lambda: distributed.ring_attention(
                torch.ones(3), torch.ones(2, 3), torch.ones(2, 3)
            ),
            "query must have at least 2 dimensions",
        ),
        (
            lambda: distributed.ring_attention(
                *(torch.ones(2, 3),) * 3, causal=1
            ),
            "causal must be True or False",
        ),
        (
            lambda: distributed.ring_attention(
                *(torch.ones(2, 3),) * 3, scale=float("nan")
            ),
            "scale must be finite",
        ),
        (
            lambda: distributed.ring_attention(
                *(torch.ones(2, 3),) * 3, group=object()
            ),
            "group was given",
        ),
        (lambda: distributed.shard_sequence([1, 2], 2, 0), "x must be"),
        (
            lambda: distributed.shard_sequence(torch.ones(4), 0, 0),
            "world_size must be a positive int",
        ),
        (
            lambda: distributed.shard_sequence(torch.ones(4), 2, 2),
            r"rank must be in \[0, world_size\)",
        ),
        (
            lambda: distributed.shard_sequence(torch.ones(4), 2, 0, dim=1),
            "dim must be a dimension of x",
        ),
        (
            lambda: distributed.ring_attention_cost(0, 8, 2),
            "L must be a positive int",
        ),
        (
            lambda: distributed.ring_attention_cost(8, 8, 2, heads=1.5),
            "heads must be a positive int",
        ),
        (
            lambda: distributed.run_processes(print, 0),
            "world_size must be a positive int",
        ),
        (
            lambda: distributed.run_processes(print, 1, timeout_s=0),
            "timeout_s must be > 0",
        ),
        (lambda: distributed.run_processes("f", 1), "fn must be callable"),
        (
            lambda: distributed.ddp_gradients(
                TinyModel, torch.ones(2, 5), torch.ones(3, 3), 1
            ),
            "inputs and targets must share the batch size",
        ),
        (
            lambda: distributed.ddp_gradients(
                TinyModel, torch.ones(2, 5), torch.ones(2, 3), 3
            ),
            "world_size must be at most the batch size",
        ),
        (
            lambda: distributed.ddp_gradients(
                int, torch.ones(2, 5), torch.ones(2, 3), 1
            ),
            "make_model must return an nn.Module",
        ),
    ],
)
def test_bad_input_raises_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_ring_attention_is_forward_only():
    q = torch.ones(2, 3, requires_grad=True)
    with pytest.raises(NotImplementedError, match="forward only"):
        distributed.ring_attention(q, q, q)
    with torch.no_grad():
        distributed.ring_attention(q, q, q)


# Properties (hypothesis), in this process: the online-softmax merge that
# ring attention runs on each process, over random shard splits.

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@st.composite
def ring_problems(draw):
    W = draw(st.integers(1, 5))
    L = draw(st.integers(0, 12))
    E, Ev = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    heads = draw(st.integers(1, 3))
    causal = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    return W, L, E, Ev, heads, causal, seed


@given(ring_problems())
def test_merging_shards_in_ring_order_equals_dense_attention(problem):
    W, L, E, Ev, heads, causal, seed = problem
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(heads, L, E, generator=g, dtype=torch.float64)
    k = torch.randn(heads, L, E, generator=g, dtype=torch.float64)
    v = torch.randn(heads, L, Ev, generator=g, dtype=torch.float64)
    lengths = [s.shape[-2] for s in k.tensor_split(W, -2)]
    offsets = [sum(lengths[:r]) for r in range(W)]
    S_max = max(lengths)
    pad = distributed._pad_rows
    rows = []
    for rank in range(W):  # what each process computes, one after another
        q_r = distributed.shard_sequence(q, W, rank) / math.sqrt(E)
        n = q_r.shape[-2]
        q_pos = torch.arange(n) + offsets[rank]
        out = torch.zeros(heads, n, Ev, dtype=torch.float64)
        lse = torch.full((heads, n), -math.inf, dtype=torch.float64)
        for step in range(W):
            src = (rank - step) % W
            k_s = pad(distributed.shard_sequence(k, W, src), S_max)
            v_s = pad(distributed.shard_sequence(v, W, src), S_max)
            seen = distributed._block_attention(
                q_r, k_s, v_s, q_pos, offsets[src], lengths[src], causal
            )
            if seen is not None:
                out, lse = merge_softmax(out, lse, *seen[:2])
        rows.append(out)
    out = torch.cat(rows, dim=-2)
    expected = ea.dense_attention(q, k, v, is_causal=causal)
    assert not out.isnan().any()
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)


@given(st.integers(0, 20), st.integers(1, 6), st.data())
def test_shard_sequence_pieces_cover_the_sequence_in_order(L, W, data):
    x = torch.arange(L * 2).reshape(2, L, 1)
    pieces = [distributed.shard_sequence(x, W, r) for r in range(W)]
    assert torch.equal(torch.cat(pieces, dim=-2), x)
    sizes = [p.shape[-2] for p in pieces]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(
        sizes, reverse=True
    )
    rank = data.draw(st.integers(W, W + 3))
    with pytest.raises(ValueError, match="rank must be in"):
        distributed.shard_sequence(x, W, rank)


@given(
    st.sampled_from(["L", "E", "world_size", "heads", "batch"]),
    st.one_of(st.integers(-3, 0), st.floats(0.5, 2), st.booleans()),
)
def test_ring_attention_cost_names_a_bad_size(name, bad):
    sizes = {"L": 8, "E": 4, "world_size": 2, "heads": 1, "batch": 1}
    sizes[name] = bad
    L, E, W = sizes.pop("L"), sizes.pop("E"), sizes.pop("world_size")
    with pytest.raises(ValueError, match=f"{name} must be a positive int"):
        distributed.ring_attention_cost(L, E, W, **sizes)
