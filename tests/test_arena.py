"""The small Long Range Arena: one record per run, resumed from its file,
and bad input refused before any training."""

from __future__ import annotations

import json

import pytest
import torch

from efficient_attention import variants
from efficient_attention.benchmark import arena

TINY = (
    "--tasks listops --variants sdpa sliding-window --length 32 --steps 3 "
    "--batch 4 --window 4 --no-progress"
).split()


def test_a_run_records_accuracy_throughput_and_memory():
    record = arena.train_and_score(
        "pathfinder", "sdpa", 64, 0,
        settings=variants.Settings(heads=2, head_dim=32),
        steps=3, batch=4,
    )  # fmt: skip
    assert record["status"] == "ok" and record["L"] == 64
    assert 0 <= record["accuracy"] <= 1 and 0.5 <= record["majority"] <= 1
    assert record["sequences_per_s"] > 0 and record["peak_bytes"] > 0


def test_the_command_writes_each_run_and_resumes(tmp_path, capsys):
    path = tmp_path / "arena.json"
    arena.main([*TINY, "--seeds", "0", "--json", str(path)])
    first = json.loads(path.read_text())
    assert [(r["variant"], r["seed"]) for r in first["records"]] == [
        ("sdpa", 0), ("sliding-window", 0),
    ]  # fmt: skip
    assert "git" in first["provenance"]
    assert first["provenance"]["command"].startswith(
        "python -m efficient_attention.benchmark.arena --tasks listops"
    )
    arena.main([*TINY, "--seeds", "0", "1", "--json", str(path)])
    second = json.loads(path.read_text())["records"]
    assert second[:2] == first["records"]  # the finished runs are kept
    assert [(r["variant"], r["seed"]) for r in second[2:]] == [
        ("sdpa", 1), ("sliding-window", 1),
    ]  # fmt: skip
    (resumed,) = json.loads(path.read_text())["provenance"]["resumed"]
    assert resumed["command"].endswith(f"--seeds 0 1 --json {path}")
    table = capsys.readouterr().out
    assert "listops" in table and "sliding-window" in table


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda d: d["provenance"].update(git="0" * 40), "started with git"),
        (lambda d: d["provenance"]["cpu"].update(model="Other"), "with cpu"),
        (lambda d: d["records"][0].update(steps=1000), "--steps 1000"),
    ],
)
def test_a_run_resumes_only_what_it_can_compare_with(
    tmp_path, capsys, change, message
):
    path = tmp_path / "arena.json"
    tiny = [*TINY, "--variants", "sdpa", "--seeds", "0", "--json", str(path)]
    arena.main(tiny)
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))
    with pytest.raises(SystemExit) as exit_info:
        arena.main([*tiny[:-2], "--seeds", "0", "1", "--json", str(path)])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert json.loads(path.read_text()) == document  # nothing lost


@pytest.mark.parametrize(
    "text",
    ["not json", '{"records": []}', '{"provenance": {"git": "x"}}',
     '{"provenance": {"git": 1, "torch": 2, "cpu": 3}, "records": [1]}'],
)  # fmt: skip
def test_a_file_the_arena_did_not_write_is_refused_and_kept(
    tmp_path, capsys, text
):
    path = tmp_path / "notes.json"
    path.write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        arena.main([*TINY, "--seeds", "0", "--json", str(path)])
    assert exit_info.value.code == 2
    assert "is not a file the arena wrote" in capsys.readouterr().err
    assert path.read_text() == text


def test_an_output_that_cannot_be_written_is_refused(
    tmp_path, capsys, monkeypatch
):
    with pytest.raises(SystemExit):
        arena.main([*TINY, "--json", str(tmp_path)])
    assert "is a folder" in capsys.readouterr().err
    monkeypatch.setattr(arena.os, "access", lambda path, mode: False)
    with pytest.raises(SystemExit):
        arena.main([*TINY, "--json", str(tmp_path / "a.json")])
    assert "cannot be written" in capsys.readouterr().err
    assert not (tmp_path / "a.json").exists()


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--tasks", "pathfinder"], "square length"),
        (["--variants", "no-such"], "invalid choice"),
        (["--steps", "0"], "--steps must be at least 1"),
        (["--seeds", "-1"], "--seeds must be distinct ints >= 0"),
        (["--seeds", "1", "1"], "--seeds must be distinct ints >= 0"),
        (["--window", "-1"], "--window must be at least 0"),
        (["--json", "/no/such/folder/a.json"], "no folder"),
        (["--length", "x"], "invalid int value"),
    ],
)
def test_bad_input_is_a_usage_error_before_training(extra, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        arena.main([*TINY, *extra])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("variant", variants.names())
def test_every_variant_trains_two_steps_or_says_why_not(variant):
    settings = variants.Settings(
        window=4, block_size=16, landmarks=16, rank=32, features=32,
        heads=2, head_dim=32,
    )  # fmt: skip
    try:
        record = arena.train_and_score(
            "far-marker", variant, 64, 0, settings=settings, steps=2, batch=2
        )
    except NotImplementedError as error:  # the command records a skip
        # compiled FlexAttention: no CPU backward, or no CPU support at all
        # (generic kernels, macOS)
        assert "FlexAttention" in str(error)
        return
    assert record["status"] == "ok" and 0 <= record["accuracy"] <= 1


def test_a_per_token_task_scores_only_the_positions_with_an_answer():
    record = arena.train_and_score(
        "far-marker", "sdpa", 64, 0,
        settings=variants.Settings(heads=2, head_dim=32),
        steps=2, batch=4,
    )  # fmt: skip
    # far_marker answers in the last quarter only, with 4 classes
    assert 0.25 <= record["majority"] < 0.5


def test_summarise_gives_the_mean_and_range_over_seeds_and_drops_skips():
    def run(seed, accuracy, speed, status="ok"):
        return {"task": "listops", "variant": "sdpa", "L": 64, "seed": seed,
                "accuracy": accuracy, "majority": 0.1 * seed, "status": status,
                "sequences_per_s": speed, "peak_bytes": 2**20 * seed}

    rows = arena.summarise([
        run(1, 0.3, 10.0), run(2, 0.5, 30.0), run(3, 0.9, 1.0, "skipped: x"),
    ])  # fmt: skip
    assert len(rows) == 1
    row = rows[0]
    assert row["seeds"] == 2 and row["peak_MiB"] == 2
    assert row["accuracy"] == pytest.approx(0.4)
    assert (row["low"], row["high"]) == (0.3, 0.5)
    assert row["sequences_per_s"] == pytest.approx(20.0)
    # each seed's held-out set has its own majority: the mean, not the first
    assert row["majority"] == pytest.approx(0.15)


def test_the_held_out_set_is_the_seeds_own_and_never_a_training_batch():
    tokens, labels = arena.held_out("listops", 64, 0)
    again, _ = arena.held_out("listops", 64, 0)
    other, _ = arena.held_out("listops", 64, 1)
    assert tokens.shape == (arena.TEST_SIZE, 64) and len(labels) == len(tokens)
    assert torch.equal(tokens, again)  # the same draw, twice
    assert not torch.equal(tokens, other)
    make = arena.TASKS["listops"].make(64)
    first = torch.Generator().manual_seed(0)  # the training stream's seed
    batch, _ = make(arena.TEST_SIZE, generator=first)
    assert not torch.equal(tokens, batch)
    with pytest.raises(ValueError, match="no task 'list'"):
        arena.held_out("list", 64, 0)


def test_the_pareto_front_keeps_what_nothing_beats_on_both_axes():
    points = [(1.0, 0.9), (2.0, 0.5), (1.5, 0.4), (3.0, 0.5), (0.5, 0.9)]
    # (2.0, 0.5) loses to (3.0, 0.5); (1.5, 0.4) to both; (0.5, 0.9) to
    # (1.0, 0.9)
    assert arena.pareto_front(points) == [0, 3]
    assert arena.pareto_front([(1.0, 1.0), (1.0, 1.0)]) == [0, 1]
    assert arena.pareto_front([]) == []


def test_training_speeds_time_each_model_against_dense():
    settings = arena.arena_settings(64, window=4, block_size=16)
    records = arena.training_speeds(
        "far-marker", 64, ["sdpa", "sliding-window"], settings=settings,
        batch=2, rounds=2, min_run_time=0.01,
    )  # fmt: skip
    assert [r["name"] for r in records] == ["sdpa", "sliding-window"]
    assert records[0]["speedup"] == 1.0  # the baseline against itself
    for r in records:
        assert r["rounds"] == 2 and r["sequences_per_s"] > 0
        assert r["sequences_per_s"] == pytest.approx(2 / r["median_s"])


@pytest.mark.parametrize(
    "names,extra,message",
    [
        (["sliding-window"], {}, "must include 'sdpa'"),
        (["sdpa"], {"batch": 0}, "batch"),
        (["sdpa", "no-such"], {}, "no-such"),
    ],
)
def test_training_speeds_refuse_bad_input(names, extra, message):
    with pytest.raises(ValueError, match=message):
        arena.training_speeds(
            "far-marker", 64, names, settings=arena.arena_settings(64),
            **extra,
        )  # fmt: skip
