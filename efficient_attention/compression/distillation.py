"""Knowledge distillation of a BERT-style classifier into a smaller student.

Three signals a teacher can give a student, each a loss written here from
its paper: soft labels, the teacher's class probabilities at a temperature
(Hinton et al. 2015, "Distilling the Knowledge in a Neural Network",
arXiv:1503.02531); intermediate layers, the student's hidden states matched
to the teacher's through a learned projection where their widths differ
(Jiao et al. 2019, "TinyBERT", arXiv:1909.10351); and attention maps, the
student's attention distributions matched to the teacher's by KL divergence
(Wang et al. 2020, "MiniLM", arXiv:2002.10957). The student is the teacher
with fewer layers, each copied from a chosen teacher layer, as DistilBERT
did (Sanh et al. 2019, arXiv:1910.01108). Taught in the chapter
"Distillation".
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence

import datasets
import torch
import torch.nn.functional as F
import transformers
from torch import Tensor, nn

from .._validation import (
    check_int,
    check_int_list,
    check_positive_int,
    check_positive_real,
    check_real,
)
from ..nlp import data as mrpc_data
from ..nlp import training
from .pruning import encoder_layers

MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask")


MAX_TEMPERATURE = 1e4
"""The largest temperature ``soft_label_loss`` takes: its loss, ``T**2``
times a KL divergence of order ``1 / T**2``, loses about ``1e-16 * T**2``
to rounding even in float64, which is 1e-8 at ``T = 1e4``."""


def soft_label_loss(
    student_logits: Tensor, teacher_logits: Tensor, *, temperature: float
) -> Tensor:
    """Hinton's soft-label loss: ``T^2 KL(p_teacher || p_student)``.

    Both distributions are softmaxes of the logits divided by ``T``; once
    ``T`` is large against the spread of the logits, the gradient of the KL
    term shrinks as ``1 / T^2`` and the ``T^2`` keeps its size independent
    of ``T`` (at small ``T`` it still grows with ``T``). Computed in
    float64, on logits ``a``, ``b`` shifted to a row maximum of 0, as
    ``T * (sum p_t (a - b) - T (lse(a / T) - lse(b / T)))``: every term
    stays finite for any ``T`` down to the smallest float (``lse`` of
    shifted logits lies in ``[0, log C]``), and nothing squares ``T``. A
    row's loss is never below 0 (rounding is clamped).

    Args:
        student_logits, teacher_logits: ``(N, C)``; a logit may be
            ``-inf`` (a class ruled out), every row needs a finite one.
        temperature: ``T`` in ``(0, MAX_TEMPERATURE]``; 1 gives the plain
            KL divergence.

    Returns:
        A scalar in the logits' dtype (float32 for half precision): the
        mean over the ``N`` rows, 0 when ``N = 0``; ``inf`` where the
        student rules out a class the teacher gives weight.

    Raises:
        ValueError: shapes that differ or are not ``(N, C)``, a temperature
            that is not a real number in ``(0, 1e4]``, or logits that hold
            NaN or ``+inf``, or a row of ``-inf`` only.
    """
    _check_same_shape("student_logits", student_logits, teacher_logits, 2)
    temperature = check_positive_real("temperature", temperature)
    if temperature > MAX_TEMPERATURE:
        raise ValueError(
            f"temperature must be at most {MAX_TEMPERATURE:g}; got "
            f"{temperature:g}. The loss T**2 * KL is lost to rounding "
            f"beyond it (the softmaxes are uniform to 1 part in T)."
        )
    for name, logits in (
        ("student_logits", student_logits),
        ("teacher_logits", teacher_logits),
    ):
        _check_logits(name, logits)
    dtype = _wide(student_logits).dtype
    if student_logits.shape[0] == 0:  # no row: the mean of nothing is 0
        return (student_logits.sum() + teacher_logits.sum()).to(dtype) * 0
    # logits shifted by their row maximum (<= 0), so that no two large
    # offsets cancel; a softmax and the KL ignore the shift
    a, b = _shifted(teacher_logits.double()), _shifted(student_logits.double())
    p_t = F.softmax(a / temperature, -1)  # (N, C)
    # sum p_t (a - b) over the classes the teacher gives weight
    gap = (a - b).masked_fill(p_t == 0, 0.0)  # (N, C)
    bracket = (p_t * gap).sum(-1) - temperature * (
        _log_sum_exp(a, temperature) - _log_sum_exp(b, temperature)
    )  # (N,): T * KL, never below 0 but by rounding
    return (temperature * bracket.clamp_min(0).mean()).to(dtype)


def _check_logits(name: str, logits: Tensor) -> None:
    """Logits may hold ``-inf`` (a class ruled out), never NaN or ``+inf``,
    and every row needs a finite logit."""
    if logits.isnan().any() or logits.isposinf().any():
        raise ValueError(f"{name} hold NaN or +inf; logits must be finite "
                         f"(or -inf for a class ruled out).")  # fmt: skip
    if logits.shape[0] and not bool(logits.isfinite().any(-1).all()):
        raise ValueError(
            f"{name} has a row of -inf only: a softmax needs one finite "
            f"logit per row."
        )


def _shifted(z: Tensor) -> Tensor:
    """``z`` minus its row maximum (a softmax ignores the shift)."""
    return z - z.amax(-1, keepdim=True).detach()


def _log_sum_exp(shifted: Tensor, temperature: float) -> Tensor:
    """``logsumexp(shifted / T)`` of each row, ``(N,)``, for logits
    shifted to a maximum of 0: it lies in ``[0, log C]`` whatever ``T``
    (a term may underflow to 0, none overflows)."""
    return torch.logsumexp(shifted / temperature, -1)


def hidden_state_loss(
    student_hidden: Tensor,
    teacher_hidden: Tensor,
    *,
    attention_mask: Tensor | None = None,
) -> Tensor:
    """Mean squared error between hidden states, over real tokens only.

    Args:
        student_hidden: ``(B, L, D)``, already projected to the teacher's
            width ``D`` where the widths differ.
        teacher_hidden: ``(B, L, D)``.
        attention_mask: ``(B, L)``, 1 for real tokens, 0 for padding;
            None counts every token.

    Returns:
        A scalar: the mean over real tokens and features; 0 when there is
        no real token (all padding, or ``B * L = 0``).
    """
    _check_same_shape("student_hidden", student_hidden, teacher_hidden, 3)
    weights = _token_weights(attention_mask, student_hidden.shape[:2])
    squared = (_wide(student_hidden) - _wide(teacher_hidden)).pow(2)
    per_token = squared.mean(-1)  # (B, L)
    return _weighted_mean(per_token, weights)


def attention_map_loss(
    student_attention: Tensor,
    teacher_attention: Tensor,
    *,
    attention_mask: Tensor | None = None,
) -> Tensor:
    """MiniLM's attention loss: ``KL(teacher row || student row)``.

    Each query's attention over the keys is a distribution; the loss is its
    KL divergence, averaged over heads and real query tokens (padded keys
    have probability 0 in both maps and add nothing).

    Args:
        student_attention, teacher_attention: ``(B, H, L, L)``
            probabilities (rows sum to 1), as transformers returns them
            with ``output_attentions=True``.
        attention_mask: ``(B, L)``, 1 for real tokens; None counts all.

    Returns:
        A scalar: the mean KL over real query rows and heads; 0 when there
        is no real token.
    """
    _check_same_shape(
        "student_attention", student_attention, teacher_attention, 4
    )
    tiny = torch.finfo(torch.float32).tiny
    p_teacher = _wide(teacher_attention)
    log_ratio = torch.log(p_teacher.clamp_min(tiny)) - torch.log(
        _wide(student_attention).clamp_min(tiny)
    )
    per_row = (p_teacher * log_ratio).sum(-1).mean(1)  # (B, L)
    weights = _token_weights(attention_mask, per_row.shape)
    return _weighted_mean(per_row, weights)


def make_student(teacher: nn.Module, layers: Sequence[int]) -> nn.Module:
    """A copy of ``teacher`` that keeps only the encoder layers ``layers``.

    The embeddings, the pooler and the classifier are copied too, so the
    student starts where the teacher is (DistilBERT's initialisation).

    Args:
        teacher: a BERT-style model (``encoder.layer``), left unchanged.
        layers: indices of the teacher's layers to keep, in order.

    Returns:
        The student, in eval mode, its ``config.num_hidden_layers`` set.

    Raises:
        ValueError: no layer, an index that is not an int (``0.9`` is
            refused, not truncated), out of range, or repeated.
    """
    count = len(encoder_layers(teacher))
    layers = check_int_list("layers", layers)
    if not layers or len(set(layers)) != len(layers):
        raise ValueError(
            f"layers must name at least one teacher layer, each once; got "
            f"{layers}."
        )
    if not all(0 <= i < count for i in layers):
        raise ValueError(
            f"layers must lie in range({count}) (the teacher's layers); got "
            f"{layers}."
        )
    student = copy.deepcopy(teacher)
    kept = nn.ModuleList(encoder_layers(student)[i] for i in layers)
    getattr(student, "base_model", student).encoder.layer = kept
    for new_index, layer in enumerate(kept):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    student.config.num_hidden_layers = len(layers)
    student.eval()
    return student


def uniform_layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """TinyBERT's uniform map: student layer ``i`` learns from teacher layer
    ``(i + 1) * teacher_layers // student_layers - 1``; e.g. 3 of 6 -> 1,
    3, 5 (the last student layer always learns from the last teacher one).
    """
    teacher_layers = check_positive_int("teacher_layers", teacher_layers)
    student_layers = check_positive_int("student_layers", student_layers)
    if not student_layers <= teacher_layers:
        raise ValueError(
            f"student_layers must be in [1, teacher_layers={teacher_layers}];"
            f" got {student_layers}."
        )
    return [
        (i + 1) * teacher_layers // student_layers - 1
        for i in range(student_layers)
    ]


@dataclasses.dataclass(frozen=True)
class Signals:
    """Which teacher signals train the student, and their weights.

    The loss is ``(1 - soft) * CE(labels) + soft * soft_label_loss +
    hidden * sum_i hidden_state_loss_i + attention * sum_i
    attention_map_loss_i``, the sums over the mapped layers. All zero is
    plain fine-tuning on the labels.
    """

    soft: float = 0.0
    temperature: float = 2.0
    hidden: float = 0.0
    attention: float = 0.0

    def __post_init__(self) -> None:
        for name in ("soft", "hidden", "attention"):
            try:
                value = check_real(name, getattr(self, name))
            except ValueError:
                value = math.nan
            soft = name == "soft"
            if not 0 <= value <= (1 if soft else math.inf):
                what = "in [0, 1]" if soft else "a finite weight >= 0"
                raise ValueError(
                    f"{name} must be {what}; got {getattr(self, name)!r}."
                )
            self._plain(name, value)
        self._plain(
            "temperature", check_positive_real("temperature", self.temperature)
        )

    def _plain(self, name: str, value: float) -> None:
        """Keep a Python int or float as given (it is part of cache keys);
        turn any other real number (``np.float32``) into a float."""
        if type(getattr(self, name)) not in (int, float):
            object.__setattr__(self, name, value)


@dataclasses.dataclass
class TeacherTargets:
    """What the teacher says about each training pair, computed once.

    ``logits (N, C)`` float32; ``hidden``: per pair ``(len(hidden_layers),
    L_i, D)`` float16, the outputs of the teacher's ``hidden_layers``;
    ``attention``: per pair ``(H, L_i, L_i)`` float16, the attention maps
    of ``attention_layer``. ``L_i`` is the pair's token count. Float16
    halves the memory (about 0.8 GB for MRPC's 3668 pairs) at a relative
    round-off of 5e-4, far below what a student learns to match.
    """

    logits: Tensor
    hidden: list[Tensor] | None = None
    hidden_layers: tuple[int, ...] = ()
    attention: list[Tensor] | None = None
    attention_layer: int | None = None


@torch.inference_mode()
def teacher_targets(
    teacher: transformers.PreTrainedModel,
    tokenizer: transformers.PreTrainedTokenizerBase,
    dataset: datasets.Dataset,
    *,
    hidden_layers: Sequence[int] = (),
    attention_layer: int | None = None,
    batch_size: int = 64,
    max_length: int = 128,
) -> TeacherTargets:
    """Run the teacher once over ``dataset`` and keep its targets.

    Args:
        teacher: the fine-tuned teacher.
        hidden_layers: teacher layers whose outputs to keep (for
            ``Signals.hidden``), e.g. ``uniform_layer_map(3, 6)``.
        attention_layer: the layer whose attention maps to keep (for
            ``Signals.attention``; MiniLM uses the last); None keeps none.

    Returns:
        ``TeacherTargets``, rows in the dataset's order.
    """
    count = len(encoder_layers(teacher))
    hidden_layers = tuple(check_int_list("hidden_layers", hidden_layers))
    if attention_layer is not None:
        attention_layer = check_int("attention_layer", attention_layer, 0)
    for name, chosen in (
        ("hidden_layers", hidden_layers),
        (
            "attention_layer",
            () if attention_layer is None else (attention_layer,),
        ),
    ):
        if not all(0 <= i < count for i in chosen):
            raise ValueError(
                f"{name} must lie in range({count}) (the teacher's layers);"
                f" got {chosen}."
            )
    examples = training.encode_pairs(tokenizer, dataset, max_length)
    order = sorted(
        range(len(examples)), key=lambda i: len(examples[i]["input_ids"])
    )
    n = len(examples)
    logits: list[Tensor | None] = [None] * n
    hidden: list[Tensor | None] = [None] * n
    attention: list[Tensor | None] = [None] * n
    teacher.eval()
    with _eager_attention([teacher], enabled=attention_layer is not None):
        for first in range(0, n, batch_size):
            rows = order[first : first + batch_size]
            batch = next(
                training.batches(
                    [examples[i] for i in rows],
                    len(rows),
                    pad_token_id=tokenizer.pad_token_id or 0,
                )
            )
            out = teacher(
                **{k: batch[k] for k in MODEL_INPUTS if k in batch},
                output_hidden_states=bool(hidden_layers),
                output_attentions=attention_layer is not None,
            )
            for j, i in enumerate(rows):
                length = len(examples[i]["input_ids"])
                logits[i] = out.logits[j].float()
                if hidden_layers:  # hidden_states[0] is the embeddings'
                    hidden[i] = torch.stack(
                        [
                            out.hidden_states[t + 1][j, :length]
                            for t in hidden_layers
                        ]
                    ).half()  # (layers, L_i, D)
                if attention_layer is not None:
                    maps = out.attentions[attention_layer][j]
                    attention[i] = maps[:, :length, :length].half()
    return TeacherTargets(
        logits=torch.stack(logits),
        hidden=hidden if hidden_layers else None,
        hidden_layers=hidden_layers,
        attention=attention if attention_layer is not None else None,
        attention_layer=attention_layer,
    )


class Distiller(nn.Module):
    """The training loss of a student taught by a teacher's targets.

    Call it as ``distiller(student, batch)`` (the ``objective`` of
    ``training.train_classifier``; batches carry ``index``, each pair's
    row in the targets). Its own parameters are the projections of the
    student's hidden states to the teacher's width (identities where the
    widths agree); they train with the student.

    Args:
        targets: the teacher's ``TeacherTargets`` on the training set.
        signals: the loss's terms and weights.
        student_layers: how many layers the student has; with
            ``signals.hidden`` its layer ``i`` learns from teacher layer
            ``targets.hidden_layers[i]``, with ``signals.attention`` its
            last layer learns the maps of ``targets.attention_layer``.
        student_width, teacher_width: hidden sizes, where they differ.

    Raises:
        ValueError: a signal whose targets were not kept, or hidden
            layers that are not one per student layer.
    """

    def __init__(
        self,
        targets: TeacherTargets,
        signals: Signals,
        *,
        student_layers: int,
        student_width: int | None = None,
        teacher_width: int | None = None,
    ) -> None:
        super().__init__()
        self.targets, self.signals = targets, signals
        if signals.hidden > 0 and (
            targets.hidden is None
            or len(targets.hidden_layers) != student_layers
        ):
            raise ValueError(
                f"signals.hidden needs teacher_targets(..., hidden_layers=) "
                f"with one teacher layer for each of the {student_layers} "
                f"student layers; got hidden_layers="
                f"{targets.hidden_layers}."
            )
        if signals.attention > 0 and targets.attention is None:
            raise ValueError(
                "signals.attention needs teacher_targets(..., "
                "attention_layer=) (e.g. the teacher's last layer)."
            )
        widths_differ = student_width not in (None, teacher_width)
        self.projections = nn.ModuleList(
            nn.Linear(student_width, teacher_width)
            if widths_differ
            else nn.Identity()
            for _ in targets.hidden_layers
        )

    def forward(self, student: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        s, rows = self.signals, batch["index"].tolist()
        inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
        out = student(
            **inputs,
            output_hidden_states=s.hidden > 0,
            output_attentions=s.attention > 0,
        )
        loss = (1 - s.soft) * F.cross_entropy(
            out.logits.float(), batch["labels"]
        )
        if s.soft > 0:
            loss = loss + s.soft * soft_label_loss(
                out.logits,
                self.targets.logits[batch["index"]],
                temperature=s.temperature,
            )
        mask = inputs.get("attention_mask")
        length = inputs["input_ids"].shape[1]
        if s.hidden > 0:
            teacher = _pad_stack(
                [self.targets.hidden[i] for i in rows], length
            )
            for i, projection in enumerate(self.projections):
                loss = loss + s.hidden * hidden_state_loss(
                    projection(out.hidden_states[i + 1]),  # [0]: embeddings
                    teacher[:, i],
                    attention_mask=mask,
                )
        if s.attention > 0:
            teacher = _pad_stack(
                [self.targets.attention[i] for i in rows], length, square=True
            )
            loss = loss + s.attention * attention_map_loss(
                out.attentions[-1], teacher, attention_mask=mask
            )
        return loss


def _pad_stack(
    tensors: list[Tensor], length: int, *, square: bool = False
) -> Tensor:
    """Stack pieces ``(..., L_i, X)`` zero-padded to ``length`` tokens along
    dimension -2 (and -1 too if ``square``): ``(B, ..., length, X)``,
    float32."""
    padded = []
    for t in tensors:
        extra = length - t.shape[-2]
        pad = (0, extra if square else 0, 0, extra)
        padded.append(F.pad(t.float(), pad))
    return torch.stack(padded)


def distill_classifier(
    student: transformers.PreTrainedModel,
    tokenizer: transformers.PreTrainedTokenizerBase,
    train: datasets.Dataset,
    targets: TeacherTargets,
    config: training.FineTuneConfig = training.FineTuneConfig(),
    *,
    signals: Signals,
    progress: bool = True,
    max_steps: int | None = None,
) -> list[float]:
    """Train ``student`` in place on ``train`` with the teacher's
    ``signals``; returns the batch losses.

    The recipe is ``training.train_classifier``'s (``config``: epochs,
    learning rates, dropout), with the ``Distiller``'s loss. Attention
    maps need transformers' eager attention, so the student runs it while
    it trains with ``signals.attention > 0``, then goes back to the
    attention it had.

    Raises:
        ValueError: targets that are not one row per pair of ``train``.
    """
    if len(targets.logits) != len(train):
        raise ValueError(
            f"targets must hold one row per pair of train ({len(train)}); "
            f"got {len(targets.logits)}: compute them with "
            f"teacher_targets(teacher, tokenizer, train)."
        )
    distiller = Distiller(
        targets,
        signals,
        student_layers=len(encoder_layers(student)),
        student_width=student.config.hidden_size,
        teacher_width=(
            targets.hidden[0].shape[-1] if targets.hidden else None
        ),
    )
    training.set_dropout(student, config.dropout)
    with _eager_attention([student], enabled=signals.attention > 0):
        return training.train_classifier(
            student,
            tokenizer,
            train,
            config,
            progress=progress,
            max_steps=max_steps,
            objective=distiller,
        )


def distill_mrpc(
    teacher: transformers.PreTrainedModel,
    tokenizer: transformers.PreTrainedTokenizerBase,
    teacher_info: dict,
    *,
    layers: Sequence[int],
    signals: Signals,
    targets: TeacherTargets | Callable[[], TeacherTargets],
    config: training.FineTuneConfig = training.FineTuneConfig(epochs=1),
    train: datasets.Dataset | None = None,
    use_cache: bool = True,
    progress: bool = True,
) -> tuple[
    transformers.PreTrainedModel, transformers.PreTrainedTokenizerBase, dict
]:
    """A student distilled on MRPC: from the checkpoint cache, or made
    with ``make_student(teacher, layers)`` and ``distill_classifier``.

    Args:
        teacher, tokenizer, teacher_info: as ``training.fine_tune_mrpc``
            returns them (``teacher_info["key"]`` joins the student's key).
        targets: the teacher's ``teacher_targets`` on ``train``, or a
            function that computes them, called only if the student must
            be trained.
        config: the student's recipe (one epoch by default).
        train: defaults to ``data.load_mrpc("train")``.

    Returns:
        ``(student, tokenizer, info)``, as ``training.fine_tune_mrpc``.
    """
    train = (
        mrpc_data.load_mrpc("train", verbose=False) if train is None else train
    )
    key = {
        **training.checkpoint_key(config, train),
        "teacher": teacher_info["key"],
        "student_layers": [int(i) for i in layers],
        "signals": dataclasses.asdict(signals),
    }

    def fit() -> tuple[
        transformers.PreTrainedModel,
        transformers.PreTrainedTokenizerBase,
        list[float],
    ]:
        student = make_student(teacher, layers)
        kept = targets if isinstance(targets, TeacherTargets) else targets()
        losses = distill_classifier(
            student,
            tokenizer,
            train,
            kept,
            config,
            signals=signals,
            progress=progress,
        )
        return student, tokenizer, losses

    return training.cached_checkpoint(key, fit, use_cache=use_cache)


@contextlib.contextmanager
def _eager_attention(
    models: list[transformers.PreTrainedModel], *, enabled: bool
) -> Iterator[None]:
    """Run ``models`` with eager attention (it returns attention maps),
    then restore what each had."""
    before = [m.config._attn_implementation for m in models]
    if enabled:
        for model in models:
            model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if enabled:
            for model, name in zip(models, before):
                model.set_attn_implementation(name)


def _wide(x: Tensor) -> Tensor:
    """``x`` in float32, or float64 if it is float64: losses of half
    precision inputs are computed in float32."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _token_weights(mask: Tensor | None, shape: torch.Size) -> Tensor:
    if mask is None:
        return torch.ones(shape)
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(
            f"attention_mask must be (B, L) = {tuple(shape)}; got "
            f"{tuple(mask.shape)}."
        )
    return mask.float()


def _weighted_mean(values: Tensor, weights: Tensor) -> Tensor:
    """``sum(values * weights) / sum(weights)``; 0 (in the graph of
    ``values``) when the weights sum to 0: a batch of padding only."""
    total = weights.sum()
    weighted = (values * weights.to(values)).sum()
    if total == 0:
        return weighted * 0
    return weighted / total


def _check_same_shape(name: str, a: Tensor, b: Tensor, dims: int) -> None:
    if not (isinstance(a, Tensor) and isinstance(b, Tensor)):
        raise ValueError(f"{name} and its target must be tensors.")
    if a.dim() != dims or a.shape != b.shape:
        raise ValueError(
            f"{name} and its target must have one shape of {dims} "
            f"dimensions; got {tuple(a.shape)} and {tuple(b.shape)}."
        )
