"""Peer implementations agree with the package; synthetic tasks; figures."""

from __future__ import annotations

import functools

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import efficient_attention as ea  # noqa: E402
from efficient_attention import (  # noqa: E402
    benchmark,
    masks,
    peers,
    plotting,
    tasks,
    variants,
    widgets,
)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.mark.parametrize(
    "name", ["sdpa-mask", "local-attention", "longformer", "natten"]
)
def test_peer_computes_the_same_window(name):
    L, w = 256, 16
    built = peers.local_peers(w, L, heads=2, head_dim=32)[name]
    if isinstance(built, str):
        pytest.skip(built)
    q, k, v = benchmark.attention_inputs(L, heads=2, head_dim=32)
    border = "shift" if name == "natten" else "clip"
    expected = ea.sliding_window_attention(q, k, v, window=w, border=border)
    torch.testing.assert_close(built(q, k, v), expected, atol=1e-5, rtol=0)


def test_peers_say_why_they_cannot_run():
    found = peers.local_peers(16, 100, heads=2, head_dim=32)
    assert "divisible" in found["local-attention"]  # 100 % 16 != 0
    assert "divisible by 2w" in found["longformer"]
    assert list(found) == list(variants.get("sliding-window").peers)
    with pytest.raises(peers.PeerUnavailable, match="pip install nope"):
        peers._import("nope_not_a_module", "nope")


def test_offset_copy_targets_are_the_tokens_offsets_back():
    tokens, targets = tasks.offset_copy(
        3,
        10,
        offsets=(1, 4),
        vocab=5,
        generator=torch.Generator().manual_seed(0),
    )
    assert tokens.shape == (3, 10) and targets.shape == (3, 10, 2)
    assert int(tokens.max()) < 5
    assert torch.equal(targets[:, 1:, 0], tokens[:, :-1])
    assert torch.equal(targets[:, 4:, 1], tokens[:, :-4])
    assert (targets[:, :4, 1] == tasks.IGNORE).all()
    again, _ = tasks.offset_copy(
        3,
        10,
        offsets=(1, 4),
        vocab=5,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.equal(tokens, again)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"offsets": ()}, "at least one"),
        ({"offsets": (0,)}, r"in \[1, length=8\)"),
        ({"offsets": (8,)}, r"in \[1, length=8\)"),
        ({"offsets": (1.5,)}, "must be ints"),
        ({"vocab": 0}, "vocab must be a positive int"),
    ],
)
def test_offset_copy_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tasks.offset_copy(2, 8, **kwargs)


def test_plot_tiles_colours_computed_needed_and_wasted_pairs():
    mask = masks.create_mask(masks.sliding_window(1), 6, 6)
    ax = plotting.plot_tiles(mask, [(0, 3, 0, 4), (3, 6, 2, 6)], title="t")
    codes = np.asarray(ax.images[0].get_array())
    assert codes[0, 0] == 2  # computed and allowed
    assert codes[0, 3] == 1  # computed, outside the window
    assert codes[0, 5] == 0  # never computed
    assert codes[5, 0] == 0
    # 24 computed pairs, 16 of them needed (the 16 band pairs)
    assert "33% of computed pairs wasted" in ax.get_title()
    with pytest.raises(ValueError, match="lies outside"):
        plotting.plot_tiles(mask, [(0, 7, 0, 2)])


def test_draw_local_windows_one_panel_per_head():
    fig = widgets.draw_local_windows(
        12, [(1, 1), (2, 0)], dilations=[1, 3], border="shift"
    )
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 2
    expected = masks.create_mask(masks.shifted_window((2, 0), 12, 3), 12, 12)
    assert np.array_equal(panels[1].images[0].get_array(), expected.numpy())
    with pytest.raises(ValueError, match="one dilation per window"):
        widgets.draw_local_windows(12, [(1, 1)], dilations=[1, 2])
    with pytest.raises(ValueError, match="border must be"):
        widgets.draw_local_windows(12, [(1, 1)], border="wrap")


def test_task_model_shapes_positions_and_bad_tokens():
    torch.manual_seed(0)
    model = tasks.TaskModel(10, 3, d_model=8, heads=2, layers=2)
    assert len(model.layers) == 2 and model.positions is None
    assert model(torch.zeros(4, 7, dtype=torch.long)).shape == (4, 7, 3)
    placed = tasks.TaskModel(10, 3, d_model=8, max_length=6)
    assert placed(torch.zeros(2, 6, dtype=torch.long)).shape == (2, 6, 3)
    with pytest.raises(ValueError, match="max_length=6"):
        placed(torch.zeros(2, 7, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(B, L\) tensor of token ids"):
        model(torch.zeros(2, 7))
    with pytest.raises(ValueError, match="classes must be a positive int"):
        tasks.TaskModel(10, 0)
    with pytest.raises(ValueError, match="divisible by heads"):
        tasks.TaskModel(10, 3, d_model=8, heads=3)



def test_task_model_positions_start_small_beside_the_tokens():
    torch.manual_seed(0)
    model = tasks.TaskModel(16, 4, d_model=64, max_length=1024)
    positions = model.positions.weight.std().item()
    assert positions == pytest.approx(tasks.POSITION_STD, rel=0.05)
    assert positions < model.embedding.weight.std().item() / 10

def test_train_on_task_learns_a_short_far_marker_reproducibly():
    task = functools.partial(tasks.far_marker, length=16, classes=2)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = tasks.TaskModel(16, 2, d_model=16)
        runs.append(
            (model, tasks.train_on_task(model, task, steps=120, seed=1))
        )
    (model, run), (_, again) = runs
    assert run.losses == again.losses  # same seeds, same steps
    assert len(run.losses) == 120 and run.seconds > 0
    assert not model.training
    tokens, targets = task(64, generator=torch.Generator().manual_seed(9))
    assert tasks.task_accuracy(model, tokens, targets) > 0.9
    assert sum(run.losses[-10:]) < sum(run.losses[:10]) / 4


def test_trained_accuracies_on_two_cores_are_the_loops_in_job_order():
    task = functools.partial(tasks.far_marker, length=16, classes=2)
    held_out = task(64, generator=torch.Generator().manual_seed(9))
    common = {"task": task, "held_out": held_out, "vocab": 16,
              "classes": 2, "d_model": 16}
    jobs = [{**common, "steps": 120}, {**common, "steps": 1},
            {**common, "steps": 120, "init_seed": 1, "data_seed": 2}]
    spread = tasks.trained_accuracies(jobs, processes=2)
    loop = [tasks.trained_accuracy(**job) for job in jobs]
    # one position of 64 apart at most: the loop scores on more threads
    assert spread == pytest.approx(loop, abs=1.5 / 64)
    assert spread[0] > 0.9 and spread[2] > 0.9 and spread[1] < 0.8


def test_a_process_trains_only_the_jobs_no_other_has_claimed(tmp_path):
    task = functools.partial(tasks.far_marker, length=8, classes=2)
    held_out = task(8, generator=torch.Generator().manual_seed(9))
    jobs = [{"task": task, "held_out": held_out, "vocab": 16,
             "classes": 2, "d_model": 8, "steps": 1}] * 4
    (tmp_path / "1").touch()  # job 1 is another process's
    done = tasks._train_unclaimed(0, 2, jobs, str(tmp_path))
    assert sorted(done) == [0, 2, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0", "1", "2", "3"]
    assert tasks._train_unclaimed(1, 2, jobs, str(tmp_path)) == {}


@pytest.mark.parametrize(
    "jobs, processes, message",
    [
        ([], None, "jobs is empty"),
        ("abc", None, "each job must be a dict"),
        ([{"steps": 1}], 0, "processes must be a positive int"),
        ([{"task": lambda n, generator: None}] * 2, 2, "picklable"),
    ],
)
def test_trained_accuracies_bad_input(jobs, processes, message):
    with pytest.raises(ValueError, match=message):
        tasks.trained_accuracies(jobs, processes=processes)


def test_train_on_task_restores_the_thread_count():
    before = torch.get_num_threads()
    model = tasks.TaskModel(16, 2, d_model=8)
    task = functools.partial(tasks.far_marker, length=8, classes=2)
    tasks.train_on_task(model, task, steps=1, threads=1)
    assert torch.get_num_threads() == before


def test_task_accuracy_counts_only_the_positions_with_a_target():
    class Fixed(torch.nn.Module):
        def forward(self, tokens):  # always class 1, of 2
            return torch.tensor([0.0, 1.0]).expand(*tokens.shape, 2)

    tokens = torch.zeros(1, 4, dtype=torch.long)
    targets = torch.tensor([[tasks.IGNORE, 1, 1, 0]])
    assert tasks.task_accuracy(Fixed(), tokens, targets) == pytest.approx(
        2 / 3
    )
    with pytest.raises(ValueError, match="no position to score"):
        tasks.task_accuracy(Fixed(), tokens, torch.full((1, 4), -100))
    with pytest.raises(ValueError, match="do not match the targets"):
        tasks.task_accuracy(Fixed(), tokens, targets[:, :3])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"steps": 0}, "steps must be a positive int"),
        ({"steps": 1, "batch": 0}, "batch must be a positive int"),
        ({"steps": 1, "learning_rate": 0.0}, "learning_rate must be > 0"),
        ({"steps": 1, "threads": 0}, "threads must be a positive int"),
    ],
)
def test_train_on_task_bad_input(kwargs, message):
    model = tasks.TaskModel(16, 2, d_model=8)
    with pytest.raises(ValueError, match=message):
        tasks.train_on_task(model, tasks.far_marker, **kwargs)
