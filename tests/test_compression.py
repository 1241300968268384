"""Pruning and quantization, on tiny BERT models built from a config."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from tiny_models import tiny_bert
from torch import nn

from efficient_attention import training
from efficient_attention.compression import pruning, quantization


def tiny_batch(seed: int = 1, batch: int = 3, length: int = 7):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 50, (batch, length), generator=generator)
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0  # some padding
    labels = torch.randint(0, 2, (batch,), generator=generator)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def logits(model, batch):
    with torch.no_grad():
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return model(**inputs).logits


def zero_head_outputs(model, heads):
    """The reference for prune_heads: the heads' columns of the attention
    output set to zero (their contribution removed, shapes kept)."""
    reference = copy.deepcopy(model)
    layers = pruning.encoder_layers(reference)
    for index, chosen in heads.items():
        size = layers[index].attention.self.attention_head_size
        weight = layers[index].attention.output.dense.weight
        with torch.no_grad():
            for h in chosen:
                weight[:, h * size : (h + 1) * size] = 0
    return reference


@pytest.mark.parametrize(
    "heads", [{0: [1]}, {0: [0, 3], 1: [2]}, {1: [1, 2, 3]}]
)
def test_prune_heads_equals_zeroing_their_outputs(heads):
    model, batch = tiny_bert(), tiny_batch()
    expected = logits(zero_head_outputs(model, heads), batch)
    removed = pruning.prune_heads(model, heads)
    assert removed == sum(len(h) for h in heads.values())
    torch.testing.assert_close(logits(model, batch), expected)
    layers = pruning.encoder_layers(model)
    for index, chosen in heads.items():
        attention = layers[index].attention.self
        assert attention.num_attention_heads == 4 - len(chosen)
        assert attention.query.out_features == attention.all_head_size


def test_pruning_nothing_is_the_identity():
    model, batch = tiny_bert(), tiny_batch()
    before = logits(model, batch)
    assert pruning.prune_heads(model, {0: [], 1: []}) == 0
    assert pruning.prune_neurons(model, {}) == 0
    torch.testing.assert_close(logits(model, batch), before, rtol=0, atol=0)


def test_prune_neurons_equals_zeroing_them():
    model, batch = tiny_bert(), tiny_batch()
    reference = copy.deepcopy(model)
    chosen = {0: [0, 5, 23], 1: list(range(12))}
    for index, neurons in chosen.items():
        with torch.no_grad():
            layer = pruning.encoder_layers(reference)[index]
            layer.output.dense.weight[:, neurons] = 0
    assert pruning.prune_neurons(model, chosen) == 15
    torch.testing.assert_close(logits(model, batch), logits(reference, batch))
    assert (
        pruning.encoder_layers(model)[1].intermediate.dense.out_features == 12
    )


def test_prune_heads_and_neurons_refuse_what_does_not_exist():
    model = tiny_bert()
    with pytest.raises(ValueError, match="layers 0 to 1"):
        pruning.prune_heads(model, {2: [0]})
    with pytest.raises(ValueError, match="heads 0 to 3"):
        pruning.prune_heads(model, {0: [4]})
    with pytest.raises(ValueError, match="keep at least one"):
        pruning.prune_heads(model, {0: [0, 1, 2, 3]})
    with pytest.raises(ValueError, match="neurons 0 to 23"):
        pruning.prune_neurons(model, {0: [24]})
    with pytest.raises(ValueError, match="keep at least one"):
        pruning.prune_neurons(model, {1: range(24)})
    with pytest.raises(ValueError, match="encoder.layer"):
        pruning.prunable_linears(nn.Linear(2, 2))


@pytest.mark.parametrize("amount", [0.0, 0.3, 0.75])
def test_magnitude_mask_matches_torch_prune(amount):
    weight = torch.randn(12, 9, generator=torch.Generator().manual_seed(3))
    linear = nn.Linear(9, 12)
    with torch.no_grad():
        linear.weight.copy_(weight)
    torch.nn.utils.prune.l1_unstructured(linear, "weight", amount=amount)
    ours = pruning.magnitude_mask(weight, amount)
    assert torch.equal(ours, linear.weight_mask.bool())
    assert int((~ours).sum()) == round(amount * weight.numel())


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_magnitude_prune_reaches_the_amount(scope):
    model = tiny_bert()
    achieved = pruning.magnitude_prune(model, 0.6, scope=scope)
    assert achieved == pytest.approx(0.6, abs=0.01)
    assert not any(
        hasattr(m, "weight_orig")
        for m in pruning.prunable_linears(model).values()
    )
    if scope == "layer":
        for linear in pruning.prunable_linears(model).values():
            share = float((linear.weight == 0).float().mean())
            assert share == pytest.approx(0.6, abs=0.02)


@pytest.mark.parametrize("amount", [1.0, -0.1, "half", True])
def test_bad_prune_amounts_are_refused(amount):
    with pytest.raises(ValueError, match="amount"):
        pruning.magnitude_prune(tiny_bert(), amount)


def test_bad_scope_is_refused():
    with pytest.raises(ValueError, match="scope must be"):
        pruning.magnitude_prune(tiny_bert(), 0.5, scope="row")


def test_sensitivity_scan_restores_the_weights():
    model = tiny_bert()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []

    def score(m):
        calls.append(pruning.sparsity(m))
        return calls[-1]

    scores = pruning.sensitivity_scan(model, score, [0.0, 0.5])
    assert list(scores) == [
        "layer 0 attention",
        "layer 0 FFN",
        "layer 1 attention",
        "layer 1 FFN",
    ]
    assert scores["layer 0 attention"][0] == 0.0
    assert scores["layer 0 attention"][1] > 0.1  # 4 of 12 matrices half zero
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_head_importance_is_the_gradient_of_the_loss_on_a_gate():
    model, batch = tiny_bert(), tiny_batch()
    scores = pruning.head_importance(model, [batch])
    assert scores.shape == (2, 4)
    # Finite difference on one head: scale its output columns by (1 + eps).
    eps, layer, head = 1e-3, 1, 2
    perturbed = copy.deepcopy(model).double()
    size = 4
    with torch.no_grad():
        dense = pruning.encoder_layers(perturbed)[layer].attention.output.dense
        dense.weight[:, head * size : (head + 1) * size] *= 1 + eps
        plus = perturbed(**batch).loss
        dense.weight[:, head * size : (head + 1) * size] /= 1 + eps
        base = perturbed(**batch).loss
    estimate = abs(float(plus - base) / eps)
    assert scores[layer, head].item() == pytest.approx(estimate, rel=1e-2)
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_neuron_importance_and_least_important():
    model, batch = tiny_bert(), tiny_batch()
    scores = pruning.neuron_importance(model, [batch])
    assert [s.shape for s in scores] == [(24,), (24,)]
    chosen = pruning.least_important(scores, 0.5)
    assert sum(len(v) for v in chosen.values()) == 24
    per_layer = pruning.least_important(scores, 0.25, per_layer=True)
    assert [len(v) for v in per_layer.values()] == [6, 6]
    heads = pruning.least_important(torch.rand(2, 4), 0.99)
    assert [len(v) for v in heads.values()] == [3, 3]  # one head kept each


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_uniform_quantization_matches_torch_fake_quantize(bits, symmetric):
    x = torch.randn(6, 40, generator=torch.Generator().manual_seed(bits)) + 0.3
    ours = quantization.quantize_uniform(x, bits, symmetric=symmetric)
    qmin, qmax = quantization.integer_range(bits, symmetric=symmetric)
    theirs = torch.fake_quantize_per_tensor_affine(
        x, float(ours.scale), int(ours.zero_point), qmin, qmax
    )
    torch.testing.assert_close(ours.dequantize(), theirs)
    assert int(ours.q.min()) >= qmin and int(ours.q.max()) <= qmax


def test_per_channel_quantization_matches_torch_and_beats_per_tensor():
    # Rows of very different ranges: one scale for all wastes the small rows.
    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
    x = x * torch.logspace(-3, 0, 8)[:, None]
    ours = quantization.quantize_uniform(x, 4, axis=0)
    theirs = torch.fake_quantize_per_channel_affine(
        x, ours.scale.flatten(), ours.zero_point.flatten().int(), 0, -7, 7
    )
    torch.testing.assert_close(ours.dequantize(), theirs)
    per_tensor = quantization.fake_quantize(x, 4)

    def row_errors(approx):  # each row's relative error
        return ((x - approx).norm(dim=1) / x.norm(dim=1)).mean()

    assert row_errors(ours.dequantize()) < 0.3 * row_errors(per_tensor)


@pytest.mark.parametrize("bits", [3, 8])
def test_round_off_stays_within_half_a_step(bits):
    x = torch.randn(1000, generator=torch.Generator().manual_seed(1))
    for symmetric in (True, False):
        quantized = quantization.quantize_uniform(x, bits, symmetric=symmetric)
        error = (quantized.dequantize() - x).abs().max()
        assert error <= quantized.scale.max() / 2 + 1e-6


def test_zero_stays_exact_and_constant_tensors_survive():
    x = torch.tensor([0.0, 0.5, 1.0, 3.0])
    assert quantization.fake_quantize(x, 4, symmetric=False)[0] == 0
    zeros = torch.zeros(5)
    assert torch.equal(quantization.fake_quantize(zeros, 8), zeros)


def test_kmeans_and_log_grids():
    x = torch.randn(4000, generator=torch.Generator().manual_seed(2))
    codebook, codes = quantization.kmeans_codebook(x, 3)
    assert codebook.shape == (8,) and codes.shape == x.shape
    kmeans = quantization.relative_error(x, codebook[codes])
    uniform = quantization.relative_error(x, quantization.fake_quantize(x, 3))
    assert kmeans < uniform  # levels where the values are
    levels = quantization.log_grid(x, 4)
    assert levels.shape == (15,) and torch.equal(levels, levels.sort().values)
    assert float(levels[-1]) == pytest.approx(float(x.abs().max()))
    assert float(levels[-1] / levels[-2]) == pytest.approx(2.0)
    rounded = quantization.quantize_to_grid(x, levels)
    assert set(rounded.unique().tolist()) <= set(levels.tolist())


@pytest.mark.parametrize("bits", [1, 17, 4.0, None])
def test_bad_bit_widths_are_refused(bits):
    with pytest.raises(ValueError, match="bits"):
        quantization.quantize_uniform(torch.randn(4), bits)


def test_bad_grid_axis_and_dtype_are_refused():
    with pytest.raises(ValueError, match="grid must be"):
        quantization.quantize_values(torch.randn(4), 4, grid="fp4")
    with pytest.raises(ValueError, match="axis"):
        quantization.quantize_uniform(torch.randn(4, 4), 8, axis=2)
    with pytest.raises(ValueError, match="float tensor"):
        quantization.quantize_uniform(torch.arange(4), 8)
    with pytest.raises(ValueError, match="prunable_linears"):
        quantization.quantize_weights(tiny_bert(), {"layer.9.x": 4})


def test_quantize_weights_mixed_and_int8_model():
    model, batch = tiny_bert(), tiny_batch()
    before = logits(model, batch)
    names = list(pruning.prunable_linears(model))
    mixed = copy.deepcopy(model)
    assert quantization.quantize_weights(mixed, {names[0]: 4}) == 1
    first = pruning.prunable_linears(mixed)[names[0]].weight
    assert all(len(row.unique()) <= 15 for row in first)
    eight = copy.deepcopy(model)
    quantization.quantize_weights(eight, 8)
    torch.testing.assert_close(logits(eight, batch), before, atol=0.02, rtol=0)
    int8, description = quantization.quantize_dynamic_int8(model)
    assert "engine" in description
    torch.testing.assert_close(logits(int8, batch), before, atol=0.05, rtol=0)
    for layer in pruning.encoder_layers(int8):  # one scale per output row
        weight = layer.intermediate.dense.weight()
        assert weight.qscheme() == torch.per_channel_affine
        assert weight.q_per_channel_scales().shape == (weight.shape[0],)
    # 16 bytes of scale and zero point per row: a saving at real widths.
    wide = torch.nn.Sequential(torch.nn.Linear(256, 256))
    small, _ = quantization.quantize_dynamic_int8(wide)
    assert training.serialized_megabytes(small) < (
        training.serialized_megabytes(wide) / 3
    )


def test_autocast_options_are_checked():
    with pytest.raises(ValueError, match="autocast must be"):
        training._check_autocast(torch.float64)


def test_draw_magnitude_pruning_blanks_what_the_mask_zeroes():
    import matplotlib.pyplot as plt

    from efficient_attention import widgets

    weight = torch.randn(20, 30, generator=torch.Generator().manual_seed(0))
    fig = widgets.draw_magnitude_pruning(weight, 0.7, name="w", crop=16)
    shown = fig.axes[0].images[0].get_array()  # (16, 16), masked = pruned
    keep = pruning.magnitude_mask(weight, 0.7)[:16, :16]
    assert torch.equal(torch.from_numpy(~shown.mask), keep)
    assert "70% of 600 weights zeroed" in fig._suptitle.get_text()
    kept = fig.axes[1].patches[1].get_data().values.sum()
    assert round(0.3 * 600) - 1 <= kept <= round(0.3 * 600)  # 0.1% off axis
    plt.close(fig)
    with pytest.raises(ValueError, match="2-D"):
        widgets.draw_magnitude_pruning(weight[0], 0.5)
    with pytest.raises(ValueError, match="amount"):
        widgets.draw_magnitude_pruning(weight, 1.5)


def test_pruning_explorer_redraws_with_the_slider(monkeypatch):
    import matplotlib.pyplot as plt

    from efficient_attention import widgets

    drawn = []

    def record(weight, amount, *, name):
        drawn.append((amount, name))
        return plt.figure()

    monkeypatch.setattr(widgets, "draw_magnitude_pruning", record)
    explorer = widgets.pruning_explorer(torch.ones(4, 4), name="ffn")
    (amount,) = explorer.children[0].children
    assert drawn[-1] == (0.5, "ffn")
    amount.value = 0.9
    assert drawn[-1] == (0.9, "ffn")
    plt.close("all")


# -- issue 22: silent wrong answers, NaN, lost work, opaque errors ---------


def weights_of(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before):
    after = model.state_dict()
    assert list(after) == list(before)
    for key, value in after.items():
        assert value.shape == before[key].shape, key
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m: pruning.prune_heads(m, {0: [1.7]}), r"heads\[0\]"),
        (lambda m: pruning.prune_neurons(m, {0: [2.9]}), r"neurons\[0\]"),
        (lambda m: pruning.prune_heads(m, {"0": [1]}), "layer '0'"),
        (lambda m: pruning.prune_heads(m, [1, 2]), "must be a dict"),
        (lambda m: pruning.prune_heads(m, {0: 1}), r"heads\[0\]"),
    ],
)
def test_pruning_refuses_indices_that_are_not_ints(call, match):
    # 1.7 removed head 1 and 2.9 neuron 2 (truncated); a layer given as a
    # string and heads given as a list raised opaque errors
    model = tiny_bert()
    before = weights_of(model)
    with pytest.raises(ValueError, match=match):
        call(model)
    assert_unchanged(model, before)


def test_pruning_is_all_or_nothing():
    # a bad later entry raised after the earlier ones had changed the model
    model = tiny_bert()
    before = weights_of(model)
    with pytest.raises(ValueError, match="heads 0 to 3"):
        pruning.prune_heads(model, {0: [1], 1: [7]})
    assert_unchanged(model, before)
    with pytest.raises(ValueError, match="neurons 0 to 23"):
        pruning.prune_neurons(model, {0: [1], 1: [24]})
    assert_unchanged(model, before)
    assert pruning.prune_heads(model, {0: [np.int64(1)], 1: range(2)}) == 3


def test_quantize_weights_is_all_or_nothing():
    model = tiny_bert()
    before = weights_of(model)
    names = list(pruning.prunable_linears(model))
    with pytest.raises(ValueError, match=f"{names[-1]}: bits"):
        quantization.quantize_weights(
            model, {names[0]: 4, names[-1]: 1}, per_channel=False
        )
    assert_unchanged(model, before)
    with pytest.raises(ValueError, match="grid"):
        quantization.quantize_weights(model, 4, grid="fp4")
    assert_unchanged(model, before)


def test_sensitivity_scan_restores_the_weights_when_the_score_raises():
    model = tiny_bert()
    before = weights_of(model)

    def score(m):
        raise RuntimeError("the evaluation broke")

    with pytest.raises(RuntimeError, match="broke"):
        pruning.sensitivity_scan(model, score, [0.5])
    assert_unchanged(model, before)


def test_least_important_refuses_nan_scores():
    scores = torch.rand(2, 4)
    scores[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        pruning.least_important(scores, 0.5)


def test_pruning_amounts_and_bit_widths_take_numpy_scalars():
    assert pruning.check_amount(np.float32(0.5)) == 0.5
    model = tiny_bert()
    assert pruning.magnitude_prune(model, np.float32(0.5)) == pytest.approx(
        0.5, abs=0.01
    )
    x = torch.randn(16)
    torch.testing.assert_close(
        quantization.fake_quantize(x, np.int64(8)),
        quantization.fake_quantize(x, 8),
    )


def test_quantize_to_grid_picks_the_nearest_of_unsorted_levels():
    x = torch.tensor([0.1, 0.9, -0.6, 2.0])
    levels = torch.tensor([1.0, -1.0, 0.0])  # not sorted
    expected = torch.tensor([0.0, 1.0, -1.0, 1.0])
    assert torch.equal(quantization.quantize_to_grid(x, levels), expected)
    for bad in (torch.tensor([]), torch.ones(2, 2), torch.tensor([0, 1])):
        with pytest.raises(ValueError, match="levels"):
            quantization.quantize_to_grid(x, bad)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_quantizes_without_nan(dtype):
    # the float32 scale floor underflowed to 0 in float16: 0 / 0 = NaN
    zeros = torch.zeros(3, dtype=dtype)
    out = quantization.fake_quantize(zeros, 8)
    assert out.dtype == dtype and torch.equal(out, zeros)
    x = torch.randn(4, 6).to(dtype)
    torch.testing.assert_close(
        quantization.fake_quantize(x, 8, axis=0),
        quantization.fake_quantize(x.float(), 8, axis=0).to(dtype),
    )
    assert not quantization.quantize_uniform(zeros, 4).scale.isnan().any()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_quantizers_refuse_values_that_are_not_finite(bad):
    x = torch.randn(8)
    x[3] = bad
    for call in (
        lambda: quantization.fake_quantize(x, 8),
        lambda: quantization.kmeans_codebook(x, 2),
        lambda: quantization.log_grid(x, 3),
        lambda: quantization.quantize_to_grid(x, torch.tensor([0.0, 1.0])),
    ):
        with pytest.raises(ValueError, match="NaN or inf"):
            call()


def test_quantizer_settings_are_checked():
    x = torch.randn(4, 4)
    with pytest.raises(ValueError, match="iterations"):
        quantization.kmeans_codebook(x, 2, iterations=-1)
    with pytest.raises(ValueError, match="axis"):
        quantization.quantize_uniform(x, 8, axis=1.0)
    with pytest.raises(ValueError, match="axis"):
        quantization.quantize_uniform(x, 8, axis=True)
