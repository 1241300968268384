"""Search the MRPC teacher's fine-tuning recipe on a held-out part of train.

Each setting fine-tunes all-MiniLM-L6-v2 on MRPC's training pairs less 408
held out (a seeded split, as many pairs as the dev set), and is scored on the
held-out pairs; the dev set is never looked at, so it stays a fair report of
the recipe chosen. One row per setting is appended to the CSV (default
``efficient_attention/book_data/teacher_search.csv``), which the chapter
"The MRPC worked example" shows. A setting already in the file is skipped,
so the search can be stopped and resumed.

Usage:
    GLUE_DIR=../shared/data/glue python scripts/search_teacher.py \
        [--only NAME ...] [--out FILE]

About 4-8 minutes a setting on 2 CPU cores; all of them, about an hour.
"""

from __future__ import annotations

import argparse
import csv
import pathlib
import re
import sys
import time

import torch
from torch import nn

from efficient_attention import data, models, training

ROOT = pathlib.Path(__file__).resolve().parent.parent
HELD_OUT = 408
SPLIT_SEED = 0

SETTINGS = {
    "2 epochs (the first teacher)": {},
    "2 epochs, mean pooling": {"pooling": "mean"},
    "3 epochs": {"epochs": 3},
    "3 epochs, learning rate 5e-5": {"epochs": 3, "learning_rate": 5e-5},
    "3 epochs, batch 16": {"epochs": 3, "batch_size": 16},
    "3 epochs, layer decay 0.8, lr 1.5e-4": {
        "epochs": 3,
        "layer_decay": 0.8,
        "learning_rate": 1.5e-4,
    },
    "4 epochs": {"epochs": 4},
    "4 epochs, seed 1": {"epochs": 4, "seed": 1},
    "3 epochs, seed 1": {"epochs": 3, "seed": 1},
    "3 epochs, seed 2": {"epochs": 3, "seed": 2},
    "3 epochs, dropout 0.1": {"epochs": 3, "dropout": 0.1},
    "3 epochs, learning rate 2e-4": {"epochs": 3, "learning_rate": 2e-4},
}
"""Each setting's changes to ``training.FineTuneConfig()``, plus two levers
of this script: ``pooling="mean"`` (the mean of the tokens instead of
``[CLS]`` into the pooler: all-MiniLM-L6-v2 was trained for mean-pooled
sentence embeddings) and ``layer_decay`` (layer l of 6 learns at
``learning_rate * layer_decay ** (6 - l)``, the embeddings at the 6th
power)."""

COLUMNS = (
    "setting",
    "epochs",
    "batch_size",
    "learning_rate",
    "dropout",
    "seed",
    "pooling",
    "layer_decay",
    "held_out_accuracy",
    "held_out_f1",
    "train_minutes",
)


class MeanPooler(nn.Module):
    """BERT's pooler (dense + tanh) on the mean of the real tokens."""

    def __init__(self, pooler: nn.Module) -> None:
        super().__init__()
        self.dense, self.activation = pooler.dense, pooler.activation
        self.mask: torch.Tensor | None = None  # set before each forward

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        weights = self.mask.to(hidden.dtype).unsqueeze(-1)  # (B, L, 1)
        mean = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
        return self.activation(self.dense(mean))


def use_mean_pooling(model: nn.Module) -> None:
    pooler = MeanPooler(model.bert.pooler)
    model.bert.pooler = pooler

    def keep_mask(_: nn.Module, args: tuple, kwargs: dict) -> None:
        pooler.mask = kwargs["attention_mask"]

    model.bert.register_forward_pre_hook(keep_mask, with_kwargs=True)


def layer_decay_groups(decay: float):
    """``training._parameter_groups`` with each encoder layer's body
    parameters at its own learning rate."""
    plain = training._parameter_groups

    def groups(model: nn.Module, config: training.FineTuneConfig) -> list:
        names = {id(p): n for n, p in model.named_parameters()}
        out = []
        for group in plain(model, config):
            if group["lr"] == config.head_learning_rate:
                out.append(group)
                continue
            by_depth: dict[int, list] = {}
            for parameter in group["params"]:
                found = re.search(r"layer\.(\d+)\.", names[id(parameter)])
                depth = int(found.group(1)) + 1 if found else 0
                by_depth.setdefault(depth, []).append(parameter)
            for depth, parameters in by_depth.items():
                rate = config.learning_rate * decay ** (6 - depth)
                out.append({**group, "params": parameters, "lr": rate})
        return out

    return groups


def run_setting(name: str, changes: dict, train, held_out) -> dict:
    changes = dict(changes)
    pooling = changes.pop("pooling", "cls")
    decay = changes.pop("layer_decay", 1.0)
    config = training.FineTuneConfig(**changes)
    model, tokenizer = models.load_encoder(
        config.model, seed=config.seed, verbose=False
    )
    training.set_dropout(model, config.dropout)
    if pooling == "mean":
        use_mean_pooling(model)
    plain = training._parameter_groups
    if decay != 1.0:
        training._parameter_groups = layer_decay_groups(decay)
    try:
        start = time.perf_counter()
        training.train_classifier(model, tokenizer, train, config)
        minutes = (time.perf_counter() - start) / 60
    finally:
        training._parameter_groups = plain
    scores = training.evaluate(model, tokenizer, held_out)
    return {
        "setting": name,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "learning_rate": config.learning_rate,
        "dropout": config.dropout,
        "seed": config.seed,
        "pooling": pooling,
        "layer_decay": decay,
        "held_out_accuracy": round(scores["accuracy"], 4),
        "held_out_f1": round(scores["f1"], 4),
        "train_minutes": round(minutes, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(SETTINGS))
    parser.add_argument(
        "--out",
        type=pathlib.Path,
        default=ROOT / "efficient_attention/book_data/teacher_search.csv",
    )
    args = parser.parse_args(argv)
    if data.source_of(data.load_mrpc("train", verbose=False)) != "glue":
        print(
            "GLUE's MRPC files are needed (set GLUE_DIR to the folder that "
            "holds MRPC/); the generated set would tune for other data.",
            file=sys.stderr,
        )
        return 2
    fit, held_out = data.held_out_split(
        data.load_mrpc("train"), size=HELD_OUT, seed=SPLIT_SEED
    )
    done = set()
    if args.out.exists():
        with args.out.open() as file:
            done = {row["setting"] for row in csv.DictReader(file)}
    for name in args.only or SETTINGS:
        if name in done:
            print(f"{name}: in {args.out.name} already")
            continue
        row = run_setting(name, SETTINGS[name], fit, held_out)
        print(row)
        new = not args.out.exists()
        with args.out.open("a", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=COLUMNS)
            if new:
                writer.writeheader()
            writer.writerow(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
