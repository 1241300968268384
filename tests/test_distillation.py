"""Distillation: the three losses by hand, the student's initialisation, the
teacher's targets and a short distillation run, on tiny BERT models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tiny_models
import torch
from hypothesis import given
from hypothesis import strategies as st

from efficient_attention import data, models, training
from efficient_attention.compression import distillation as D


@pytest.fixture(scope="module")
def tokenizer():
    return models.load_encoder(verbose=False)[1]


@pytest.fixture(scope="module")
def pairs():
    return data.generate_paraphrase_pairs("train", size=48)


def tiny_bert(seed: int = 0, *, width: int = 16, layers: int = 4, vocab=50):
    return tiny_models.tiny_bert(
        seed, width=width, layers=layers, heads=2, vocab=vocab,
        positions=128,
    )


def test_soft_label_loss_by_hand():
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0]])  # p = (3/4, 1/4)
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    loss = D.soft_label_loss(student, teacher, temperature=1.0)
    assert loss.item() == pytest.approx(kl, rel=1e-6)
    # at T = 2 the teacher's logits halve: p = (sqrt 3, 1) / (sqrt 3 + 1)
    p = math.sqrt(3) / (math.sqrt(3) + 1)
    kl2 = p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5)
    loss2 = D.soft_label_loss(student, teacher, temperature=2.0)
    assert loss2.item() == pytest.approx(4 * kl2, rel=1e-6)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 8.0])
def test_soft_label_gradient_is_temperature_times_the_probability_gap(
    temperature,
):
    """The T^2 factor: d loss / d z_s = T (p_s - p_t) / N, so the gradient
    does not fade as 1 / T at high temperatures."""
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(5, 3, generator=generator, requires_grad=True)
    teacher = torch.randn(5, 3, generator=generator)
    D.soft_label_loss(student, teacher, temperature=temperature).backward()
    gap = torch.softmax(student.detach() / temperature, -1) - torch.softmax(
        teacher / temperature, -1
    )
    expected = gap / temperature * temperature**2 / 5
    torch.testing.assert_close(student.grad, expected)


def test_losses_are_zero_when_the_student_equals_the_teacher():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 2, generator=generator)
    hidden = torch.randn(2, 5, 8, generator=generator)
    maps = torch.softmax(torch.randn(2, 3, 5, 5, generator=generator), -1)
    assert D.soft_label_loss(logits, logits, temperature=3.0) == 0
    assert D.hidden_state_loss(hidden, hidden) == 0
    assert D.attention_map_loss(maps, maps).abs() < 1e-7
    assert D.attention_map_loss(maps, maps.roll(1, -1)) > 0.01


def test_padding_counts_for_nothing():
    generator = torch.Generator().manual_seed(2)
    hidden = torch.randn(2, 4, 3, generator=generator)
    target = hidden.clone()
    target[0, 3] += 100.0  # only on a padded token
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    assert D.hidden_state_loss(hidden, target, attention_mask=mask) == 0
    assert D.hidden_state_loss(hidden, target) > 100
    by_hand = ((hidden - target + 1.0) ** 2).mean()  # every entry off by 1
    assert D.hidden_state_loss(hidden, target - 1.0).item() == pytest.approx(
        by_hand.item()
    )
    maps = torch.softmax(torch.randn(2, 1, 4, 4, generator=generator), -1)
    other = maps.clone()
    other[0, :, 3] = maps[0, :, 3].flip(-1)  # a padded query row differs
    assert D.attention_map_loss(maps, other, attention_mask=mask) < 1e-6
    assert D.attention_map_loss(maps, other) > 1e-4


def test_attention_map_loss_by_hand():
    teacher = torch.tensor([[[[0.5, 0.5], [1.0, 0.0]]]])
    student = torch.tensor([[[[0.25, 0.75], [0.5, 0.5]]]])
    rows = [
        0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75),
        1.0 * math.log(1.0 / 0.5),  # the teacher's 0 adds nothing
    ]
    loss = D.attention_map_loss(student, teacher)
    assert loss.item() == pytest.approx(sum(rows) / 2, rel=1e-6)


def test_bad_loss_inputs_are_refused():
    with pytest.raises(ValueError, match="temperature"):
        D.soft_label_loss(torch.zeros(2, 2), torch.zeros(2, 2), temperature=0)
    with pytest.raises(ValueError, match="student_logits"):
        D.soft_label_loss(torch.zeros(2, 2), torch.zeros(2, 3), temperature=1)
    with pytest.raises(ValueError, match="attention_mask"):
        D.hidden_state_loss(
            torch.zeros(2, 3, 4),
            torch.zeros(2, 3, 4),
            attention_mask=torch.ones(2, 4),
        )
    for bad in (
        {"soft": 1.5},
        {"temperature": -1.0},
        {"hidden": -0.1},
        {"attention": float("nan")},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            D.Signals(**bad)


def test_student_copies_the_chosen_layers_exactly():
    teacher = tiny_bert()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = D.make_student(teacher, [0, 2])
    assert student.config.num_hidden_layers == 2
    assert teacher.config.num_hidden_layers == 4
    student_state = student.state_dict()
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, before[name])  # the teacher is unchanged
        if ".layer." in name:
            index = int(name.split(".layer.")[1].split(".")[0])
            if index in (0, 2):
                new = name.replace(
                    f".layer.{index}.", f".layer.{[0, 2].index(index)}."
                )
                assert torch.equal(student_state[new], value)
        else:  # embeddings, pooler, classifier
            assert torch.equal(student_state[name], value)
    assert len(student_state) < len(before)
    # the student is the teacher run with only those layers
    ids = torch.randint(1, 50, (2, 9), generator=torch.Generator())
    with torch.no_grad():
        hidden = teacher.bert.embeddings(input_ids=ids)
        for i in (0, 2):
            hidden = teacher.bert.encoder.layer[i](hidden)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        got = student.bert(input_ids=ids).last_hidden_state
    torch.testing.assert_close(got, hidden)


def test_bad_student_layers_are_refused():
    teacher = tiny_bert()
    for layers in ([], [0, 0], [4], [-1]):
        with pytest.raises(ValueError, match="layers"):
            D.make_student(teacher, layers)


def test_uniform_layer_map():
    assert D.uniform_layer_map(3, 6) == [1, 3, 5]
    assert D.uniform_layer_map(2, 12) == [5, 11]
    assert D.uniform_layer_map(4, 4) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="student_layers"):
        D.uniform_layer_map(7, 6)


def test_teacher_targets_are_the_teachers_outputs(tokenizer, pairs):
    teacher = tiny_bert(vocab=tokenizer.vocab_size)
    chosen = pairs.select(range(10))
    targets = D.teacher_targets(
        teacher, tokenizer, chosen, hidden_layers=[1, 3], attention_layer=3
    )
    torch.testing.assert_close(
        targets.logits, training.predict(teacher, tokenizer, chosen)
    )
    assert teacher.config._attn_implementation == "sdpa"  # restored
    example = training.encode_pairs(tokenizer, chosen)[7]
    ids = torch.tensor([example["input_ids"]])
    with torch.no_grad():
        teacher.set_attn_implementation("eager")
        alone = teacher(
            input_ids=ids,
            token_type_ids=torch.tensor([example["token_type_ids"]]),
            output_hidden_states=True,
            output_attentions=True,
        )
    assert targets.hidden[7].shape == (2, ids.shape[1], 16)
    torch.testing.assert_close(
        targets.hidden[7].float(),
        torch.stack([alone.hidden_states[2][0], alone.hidden_states[4][0]]),
        atol=2e-3,
        rtol=2e-3,
    )
    torch.testing.assert_close(
        targets.attention[7].float(), alone.attentions[3][0], atol=1e-3, rtol=0
    )
    with pytest.raises(ValueError, match="hidden_layers"):
        D.teacher_targets(teacher, tokenizer, chosen, hidden_layers=[4])


def test_distillation_moves_the_student_towards_the_teacher(tokenizer, pairs):
    teacher = tiny_bert(vocab=tokenizer.vocab_size)
    with torch.no_grad():  # confident, varied logits for the student to learn
        teacher.classifier.weight *= 30
    student = tiny_bert(seed=5, width=8, layers=2, vocab=tokenizer.vocab_size)
    targets = D.teacher_targets(
        teacher, tokenizer, pairs, hidden_layers=[1, 3], attention_layer=3
    )

    def gap():
        got = training.predict(student, tokenizer, pairs)
        return D.soft_label_loss(got, targets.logits, temperature=1.0)

    before = gap()
    config = training.FineTuneConfig(
        epochs=3, batch_size=8, learning_rate=0.003, head_learning_rate=0.01
    )
    signals = D.Signals(soft=1.0, hidden=1.0, attention=1.0)
    losses = D.distill_classifier(
        student,
        tokenizer,
        pairs,
        targets,
        config,
        signals=signals,
        progress=False,
    )
    assert len(losses) == 18 and all(math.isfinite(x) for x in losses)
    assert gap() < 0.5 * before
    assert student.config._attn_implementation == "sdpa"  # restored


def test_distiller_refuses_targets_it_lacks(tokenizer, pairs):
    teacher = tiny_bert(vocab=tokenizer.vocab_size)
    targets = D.teacher_targets(teacher, tokenizer, pairs)
    with pytest.raises(ValueError, match="hidden_layers"):
        D.Distiller(targets, D.Signals(hidden=1.0), student_layers=2)
    with pytest.raises(ValueError, match="attention_layer"):
        D.Distiller(targets, D.Signals(attention=1.0), student_layers=2)
    student = tiny_bert(layers=2, vocab=tokenizer.vocab_size)
    with pytest.raises(ValueError, match="one row per pair"):
        D.distill_classifier(
            student,
            tokenizer,
            pairs.select(range(5)),
            targets,
            signals=D.Signals(soft=0.5),
        )


def test_the_projection_trains_with_the_student(tokenizer, pairs):
    """Widths differ (8 against 16): the hidden states go through a learned
    projection, which train_classifier's optimizer must update."""
    teacher = tiny_bert(vocab=tokenizer.vocab_size)
    targets = D.teacher_targets(
        teacher, tokenizer, pairs, hidden_layers=[1, 3]
    )
    student = tiny_bert(seed=3, width=8, layers=2, vocab=tokenizer.vocab_size)
    distiller = D.Distiller(
        targets,
        D.Signals(hidden=1.0),
        student_layers=2,
        student_width=8,
        teacher_width=16,
    )
    first = distiller.projections[0].weight.detach().clone()
    training.train_classifier(
        student,
        tokenizer,
        pairs,
        training.FineTuneConfig(epochs=1, batch_size=16),
        progress=False,
        objective=distiller,
    )
    assert distiller.projections[0].weight.shape == (16, 8)
    assert not torch.equal(distiller.projections[0].weight, first)


def test_distilled_students_are_cached(
    tokenizer, pairs, tmp_path, monkeypatch
):
    monkeypatch.setenv("EFFICIENT_ATTENTION_CACHE", str(tmp_path))
    teacher = tiny_bert(vocab=tokenizer.vocab_size)
    calls = []

    def targets():
        calls.append(1)
        return D.teacher_targets(teacher, tokenizer, pairs)

    def student(signals):
        return D.distill_mrpc(
            teacher,
            tokenizer,
            {"key": {"teacher": "tiny"}},
            layers=[1, 3],
            signals=signals,
            targets=targets,
            config=training.FineTuneConfig(epochs=1, batch_size=16),
            train=pairs,
            progress=False,
        )

    first, _, info = student(D.Signals(soft=0.5))
    again, _, info_again = student(D.Signals(soft=0.5))
    assert (info["from_cache"], info_again["from_cache"]) == (False, True)
    assert calls == [1]  # the targets are computed only to train
    assert again.config.num_hidden_layers == 2
    for name, value in first.state_dict().items():
        torch.testing.assert_close(again.state_dict()[name], value)
    other = student(D.Signals(soft=0.9))[2]
    assert not other["from_cache"] and other["path"] != info["path"]


def test_soft_label_picture_spreads_with_the_temperature():
    import matplotlib.pyplot as plt

    from efficient_attention import widgets

    logits = torch.tensor([[4.0, -4.0], [-3.0, 3.0], [1.0, 0.0]])
    titles = []
    for temperature in (1.0, 8.0):
        figure = widgets.draw_soft_labels(logits, temperature)
        titles.append(figure.axes[0].get_title())
        plt.close(figure)
    entropies = [float(t.split("entropy ")[1].split()[0]) for t in titles]
    assert entropies[0] < 0.5 < entropies[1] <= 1.0
    with pytest.raises(ValueError, match="logits"):
        widgets.draw_soft_labels(torch.zeros(3, 3), 1.0)
    with pytest.raises(ValueError, match="temperature"):
        widgets.draw_soft_labels(logits, 0.0)


@given(
    n=st.integers(1, 6),
    classes=st.integers(2, 5),
    temperature=st.floats(0.05, 50.0),
    scale=st.floats(0.0, 30.0),
    seed=st.integers(0, 2**16),
)
def test_soft_label_loss_properties(n, classes, temperature, scale, seed):
    """Non-negative, zero on equal logits (also shifted by a constant, which
    a softmax ignores), and its gradient is T (p_s - p_t) / N."""
    generator = torch.Generator().manual_seed(seed)
    student = scale * torch.randn(n, classes, generator=generator)
    teacher = scale * torch.randn(n, classes, generator=generator)
    student = student.double().requires_grad_()
    teacher = teacher.double()
    loss = D.soft_label_loss(student, teacher, temperature=temperature)
    assert loss.item() >= -1e-9
    (grad,) = torch.autograd.grad(loss, student)
    gap = torch.softmax(student.detach() / temperature, -1) - torch.softmax(
        teacher / temperature, -1
    )
    torch.testing.assert_close(grad, temperature * gap / n)
    same = D.soft_label_loss(teacher + 3.0, teacher, temperature=temperature)
    assert abs(same.item()) < 1e-9


@given(bad=st.sampled_from([0, -1.0, float("inf"), float("nan"), True, "2"]))
def test_bad_temperatures_name_the_argument(bad):
    with pytest.raises(ValueError, match="temperature"):
        D.soft_label_loss(
            torch.zeros(2, 2), torch.zeros(2, 2), temperature=bad
        )


# -- issue 22: NaN for valid input, floats taken for indices ---------------


@pytest.mark.parametrize("temperature", [1e-300, 1e-3, 1.0, 1e4])
def test_soft_label_loss_is_finite_at_any_temperature_it_takes(temperature):
    # NaN at 1e-300 (logits / T overflowed)
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(4, 3, generator=generator)  # float32
    teacher = torch.randn(4, 3, generator=generator)
    loss = D.soft_label_loss(student, teacher, temperature=temperature)
    assert loss.dtype == torch.float32 and loss.isfinite() and loss >= 0
    loss, student, teacher = loss.double(), student.double(), teacher.double()
    # the definition, in float64 where it does not overflow
    if temperature >= 1e-3:
        log_s = torch.log_softmax(student / temperature, -1)
        log_t = torch.log_softmax(teacher / temperature, -1)
        kl = (log_t.exp() * (log_t - log_s)).sum(-1).mean()
        torch.testing.assert_close(
            loss, temperature**2 * kl, atol=1e-6, rtol=1e-6
        )
    else:  # T -> 0: T * (gap of the student at the teacher's argmax)
        pick = teacher.argmax(-1, keepdim=True)
        gap = student.amax(-1) - student.gather(-1, pick)[:, 0]
        torch.testing.assert_close(loss, temperature * gap.mean())


@pytest.mark.parametrize("bad", [1e30, 1e200])
def test_soft_label_loss_refuses_temperatures_lost_to_rounding(bad):
    # NaN at 1e30, an OverflowError at 1e200
    with pytest.raises(ValueError, match="temperature must be at most"):
        D.soft_label_loss(torch.zeros(2, 2), torch.ones(2, 2), temperature=bad)


def test_soft_label_loss_with_no_rows_and_ruled_out_classes():
    empty = torch.zeros(0, 3, requires_grad=True)
    loss = D.soft_label_loss(empty, torch.zeros(0, 3), temperature=2.0)
    assert loss == 0 and loss.requires_grad  # NaN before (0 / 0)
    student = torch.tensor([[0.5, -math.inf, 1.0]], requires_grad=True)
    teacher = torch.tensor([[1.0, -math.inf, 0.0]])
    loss = D.soft_label_loss(student, teacher, temperature=2.0)
    expected = D.soft_label_loss(
        student[:, [0, 2]], teacher[:, [0, 2]], temperature=2.0
    )
    torch.testing.assert_close(loss, expected)  # NaN before
    (grad,) = torch.autograd.grad(loss, student)
    assert grad.isfinite().all() and grad[0, 1] == 0
    for bad in (float("nan"), math.inf):
        with pytest.raises(ValueError, match="student_logits"):
            D.soft_label_loss(
                torch.tensor([[bad, 0.0]]), torch.zeros(1, 2), temperature=1.0
            )
    with pytest.raises(ValueError, match="teacher_logits has a row"):
        D.soft_label_loss(torch.zeros(1, 2), torch.full((1, 2), -math.inf),
                          temperature=1.0)  # fmt: skip


def test_losses_over_padding_only_are_zero():
    # 0 / 0 = NaN before
    hidden = torch.randn(2, 3, 4, requires_grad=True)
    none = torch.zeros(2, 3)
    loss = D.hidden_state_loss(hidden, hidden + 1, attention_mask=none)
    assert loss == 0 and loss.requires_grad
    maps = torch.softmax(torch.randn(2, 1, 3, 3), -1)
    loss = D.attention_map_loss(maps, maps.flip(-1), attention_mask=none)
    assert loss == 0


@pytest.mark.parametrize("layers", [[0.9], [0, 1.0], "01", [True]])
def test_make_student_refuses_layers_that_are_not_ints(layers):
    # [0.9] made a student of layer 0 (truncated)
    with pytest.raises(ValueError, match="layers"):
        D.make_student(tiny_bert(), layers)


def test_layer_maps_and_signals_refuse_what_is_no_number():
    with pytest.raises(ValueError, match="student_layers"):
        D.uniform_layer_map(2.5, 6)  # a TypeError before
    with pytest.raises(ValueError, match="teacher_layers"):
        D.uniform_layer_map(2, "6")
    for bad in ({"soft": "0.5"}, {"hidden": None}, {"attention": True}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            D.Signals(**bad)
    signals = D.Signals(soft=np.float32(0.5), temperature=np.float64(2))
    assert type(signals.soft) is float and signals.temperature == 2.0
    assert D.make_student(tiny_bert(), np.arange(2)) is not None
