"""Pruning a BERT-style encoder: by magnitude, by sensitivity, by structure.

Unstructured magnitude pruning (Han et al. 2015, "Learning both Weights and
Connections for Efficient Neural Networks", arXiv:1506.02626) zeroes the
smallest weights, through ``torch.nn.utils.prune``; a sensitivity scan prunes
one group of matrices at a time and measures what the task loses; structured
pruning removes whole attention heads and feed-forward neurons from the
weights, ranked by the gradient of the loss with respect to a gate on each
(Michel et al. 2019, "Are Sixteen Heads Really Better than One?",
arXiv:1905.10650). transformers 5 has no ``prune_heads``, so ``prune_heads``
here does it with ``transformers.pytorch_utils.prune_linear_layer``. Taught
in the chapter "Pruning".
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor, nn
from torch.nn.utils import prune
from transformers.pytorch_utils import prune_linear_layer

from .._validation import check_int_list


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ``encoder.layer`` list of a BERT-style model (any head on top).

    Raises:
        ValueError: the model has no BERT-style ``encoder.layer``.
    """
    base = getattr(model, "base_model", model)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(
            f"{type(model).__name__} has no BERT-style encoder.layer list; "
            "pass a BertModel or a Bert*For* model."
        )
    return layers


def prunable_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The six weight matrices of each encoder layer, by name.

    Returns:
        ``{"layer.0.attention.self.query": Linear, ...}``: query, key, value,
        the attention output, and the feed-forward in and out, per layer
        (embeddings, pooler and classifier are left alone).
    """
    return {
        f"layer.{i}.{name}": module
        for i, layer in enumerate(encoder_layers(model))
        for name, module in layer.named_modules()
        if isinstance(module, nn.Linear)
    }


def layer_groups(model: nn.Module) -> dict[str, list[nn.Linear]]:
    """The matrices grouped for a sensitivity scan: attention, FFN, by layer.

    Returns:
        ``{"layer 0 attention": [query, key, value, output], "layer 0 FFN":
        [in, out], ...}``.
    """
    groups: dict[str, list[nn.Linear]] = {}
    for name, linear in prunable_linears(model).items():
        index = name.split(".")[1]
        kind = "attention" if ".attention." in name else "FFN"
        groups.setdefault(f"layer {index} {kind}", []).append(linear)
    return groups


def check_amount(amount: object) -> float:
    """A pruning amount must be a fraction in [0, 1) (any real number
    type: ``0.5``, ``np.float32(0.5)``)."""
    if isinstance(amount, bool) or not isinstance(amount, numbers.Real):
        raise ValueError(f"amount must be a number in [0, 1); got {amount!r}.")
    if not 0 <= amount < 1:
        raise ValueError(
            f"amount must be in [0, 1) (the fraction of weights to zero); "
            f"got {amount!r}. Use 0.9 to keep 10% of the weights."
        )
    return float(amount)


def magnitude_mask(weight: Tensor, amount: float) -> Tensor:
    """Keep-mask that zeroes the ``round(amount * numel)`` smallest |weights|.

    Returns:
        A bool tensor shaped like ``weight``: True = kept.

    Equivalent to:
        ``torch.nn.utils.prune.l1_unstructured(module, "weight", amount)``'s
        ``weight_mask`` (up to ties).
    """
    amount = check_amount(amount)
    count = round(amount * weight.numel())
    keep = torch.ones(weight.numel(), dtype=torch.bool, device=weight.device)
    smallest = weight.detach().abs().flatten().argsort()[:count]
    keep[smallest] = False
    return keep.view_as(weight)


def magnitude_prune(
    model: nn.Module, amount: float, *, scope: str = "global"
) -> float:
    """Zero the smallest weights of the encoder's matrices, in place.

    Args:
        amount: fraction of the weights to zero, in [0, 1).
        scope: ``"global"`` ranks all matrices together (a matrix with
            smaller weights loses more), ``"layer"`` prunes each matrix by
            the same fraction.

    Returns:
        The fraction of the matrices' weights that are now zero.
    """
    amount = check_amount(amount)
    linears = list(prunable_linears(model).values())
    if scope == "global":
        prune.global_unstructured(
            [(m, "weight") for m in linears],
            pruning_method=prune.L1Unstructured,
            amount=amount,
        )
    elif scope == "layer":
        for linear in linears:
            prune.l1_unstructured(linear, "weight", amount=amount)
    else:
        raise ValueError(f"scope must be 'global' or 'layer'; got {scope!r}.")
    for linear in linears:
        prune.remove(linear, "weight")  # the zeros become the weights
    return sparsity(model)


def sparsity(model: nn.Module) -> float:
    """Fraction of zero weights in the encoder's matrices."""
    weights = [m.weight for m in prunable_linears(model).values()]
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / sum(w.numel() for w in weights)


@torch.no_grad()
def sensitivity_scan(
    model: nn.Module,
    score: Callable[[nn.Module], float],
    amounts: Iterable[float],
    *,
    groups: Mapping[str, list[nn.Linear]] | None = None,
) -> dict[str, list[float]]:
    """Prune one group of matrices at a time and score the model.

    Each group's matrices are magnitude-pruned (per matrix) at each amount,
    ``score(model)`` is measured, and the weights are put back.

    Args:
        score: e.g. the dev F1; called ``len(groups) * len(amounts)`` times.
        amounts: fractions in [0, 1).
        groups: default ``layer_groups(model)``.

    Returns:
        ``{group: [score at each amount]}``.
    """
    amounts = [check_amount(a) for a in amounts]
    groups = layer_groups(model) if groups is None else groups
    scores: dict[str, list[float]] = {}
    for name, linears in groups.items():
        saved = [linear.weight.clone() for linear in linears]
        scores[name] = []
        try:
            for amount in amounts:
                for linear, weight in zip(linears, saved):
                    kept = magnitude_mask(weight, amount)
                    linear.weight.copy_(weight * kept)
                scores[name].append(score(model))
        finally:  # the weights come back even when score() raises
            for linear, weight in zip(linears, saved):
                linear.weight.copy_(weight)
    return scores


def _gate_importance(
    model: nn.Module,
    batches: Iterable[Mapping[str, Tensor]],
    modules: list[nn.Module],
    width: Callable[[Tensor], int],
    size: int,
) -> list[Tensor]:
    """``sum over batches of |dLoss/dgate|`` for gates of ones on the units
    entering ``modules``.

    A pre-hook multiplies each module's input, seen as ``(..., units,
    size)``, by a gate of ones per unit; the gradient of the loss with
    respect to a gate is the first-order change in the loss if that unit
    were removed (Michel et al. 2019, equation 2). The absolute value is
    taken per batch, of the gradient of the batch's mean loss (as Michel
    et al.'s code does), not per example as the paper's expectation reads:
    opposite signs within a batch cancel before the absolute value.
    """
    gates = []
    handles = []
    for module in modules:
        units = width(module.weight) // size
        gate = torch.ones(units, requires_grad=True)
        gates.append(gate)

        def gated(_: nn.Module, args: tuple, gate: Tensor = gate) -> tuple:
            x = args[0]  # (B, S, units * size)
            shaped = x.view(*x.shape[:-1], gate.numel(), size)
            return ((shaped * gate[:, None]).view_as(x),)

        handles.append(module.register_forward_pre_hook(gated))
    importance = [torch.zeros(g.numel()) for g in gates]
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            loss = model(**batch).loss
            grads = torch.autograd.grad(loss, gates)
            for total, grad in zip(importance, grads):
                total += grad.abs()
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return importance


def head_importance(
    model: nn.Module, batches: Iterable[Mapping[str, Tensor]]
) -> Tensor:
    """Importance of every attention head (Michel et al. 2019).

    Args:
        batches: labelled batches (``training.batches``) the loss is taken on.

    Returns:
        ``(layers, heads)``: the summed ``|dLoss/dgate|`` of each head's gate.
    """
    layers = encoder_layers(model)
    head_size = layers[0].attention.self.attention_head_size
    scores = _gate_importance(
        model,
        batches,
        [layer.attention.output.dense for layer in layers],
        lambda weight: weight.shape[1],
        head_size,
    )
    if len({len(s) for s in scores}) > 1:
        raise ValueError(
            "layers have different numbers of heads (already pruned); use "
            "the per-layer scores of neuron-style ranking instead."
        )
    return torch.stack(scores)


def neuron_importance(
    model: nn.Module, batches: Iterable[Mapping[str, Tensor]]
) -> list[Tensor]:
    """Importance of every feed-forward neuron: ``E |dLoss/dgate|`` per layer.

    Returns:
        One ``(d_ff,)`` tensor per layer.
    """
    layers = encoder_layers(model)
    return _gate_importance(
        model,
        batches,
        [layer.output.dense for layer in layers],
        lambda weight: weight.shape[1],
        1,
    )


def least_important(
    scores: Tensor | list[Tensor], fraction: float, *, per_layer: bool = False
) -> dict[int, list[int]]:
    """The units to remove: the ``fraction`` with the lowest scores.

    Scores are first divided by their layer's L2 norm (Michel et al. 2019
    normalise per layer), then ranked across all layers (or within each
    layer with ``per_layer``); every layer keeps at least one unit.

    Returns:
        ``{layer: [unit indices]}`` for ``prune_heads``/``prune_neurons``.

    Raises:
        ValueError: a fraction outside [0, 1), or scores that are not
            finite.
    """
    fraction = check_amount(fraction)
    rows = [torch.as_tensor(s, dtype=torch.float64) for s in scores]
    if not all(bool(row.isfinite().all()) for row in rows):
        raise ValueError(
            "scores hold NaN or inf, which rank nowhere; compute them again "
            "(head_importance, neuron_importance) on finite losses."
        )
    rows = [r / r.norm().clamp_min(1e-30) for r in rows]
    chosen: dict[int, list[int]] = {i: [] for i in range(len(rows))}
    if per_layer:
        for i, row in enumerate(rows):
            count = min(round(fraction * len(row)), len(row) - 1)
            chosen[i] = sorted(row.argsort()[:count].tolist())
        return chosen
    flat = [
        (float(v), i, j)
        for i, row in enumerate(rows)
        for j, v in enumerate(row)
    ]
    budget = round(fraction * len(flat))
    for _, i, j in sorted(flat):
        if budget == 0:
            break
        if len(chosen[i]) < len(rows[i]) - 1:
            chosen[i].append(j)
            budget -= 1
    return {i: sorted(units) for i, units in chosen.items()}


def prune_heads(model: nn.Module, heads: Mapping[int, Iterable[int]]) -> int:
    """Remove attention heads from the weights, in place.

    The query, key and value matrices lose the heads' rows and the attention
    output loses their columns, so the pruned model computes exactly what the
    full model computes with those heads' outputs set to zero, at less cost.

    Args:
        heads: ``{layer: [head indices]}`` of the heads to remove (indices
            into the layer's current heads).

    Returns:
        The number of heads removed.

    Raises:
        ValueError: ``heads`` not a dict, a layer or head that does not
            exist (or is not an int: ``1.7`` is refused, not truncated),
            or a layer that would lose all its heads; the model is left
            unchanged.
    """
    layers = encoder_layers(model)
    counts = [layer.attention.self.num_attention_heads for layer in layers]
    chosen = _check_units("heads", heads, counts, "head")
    for index, units in chosen.items():  # every entry checked: now change
        attention = layers[index].attention.self
        count, size = (
            attention.num_attention_heads,
            attention.attention_head_size,
        )
        keep = torch.tensor(
            [
                h * size + e
                for h in range(count)
                if h not in units
                for e in range(size)
            ]
        )
        attention.query = prune_linear_layer(attention.query, keep)
        attention.key = prune_linear_layer(attention.key, keep)
        attention.value = prune_linear_layer(attention.value, keep)
        output = layers[index].attention.output
        output.dense = prune_linear_layer(output.dense, keep, dim=1)
        attention.num_attention_heads = count - len(units)
        attention.all_head_size = attention.num_attention_heads * size
    return sum(len(units) for units in chosen.values())


def _check_units(
    name: str, mapping: object, counts: list[int], unit: str
) -> dict[int, list[int]]:
    """``{layer: sorted unit indices}`` from ``mapping``, every entry
    checked against ``counts`` (units per layer) before anything changes,
    so that a bad entry leaves the model as it was.

    Raises:
        ValueError: not a mapping, a layer that is not an int naming one of
            the model's layers, indices that are not ints or not among the
            layer's units, or a layer that would lose every unit.
    """
    if not isinstance(mapping, Mapping):
        raise ValueError(
            f"{name} must be a dict {{layer: [{unit} indices]}}, e.g. "
            f"{{0: [1, 2]}}; got {type(mapping).__name__}."
        )
    chosen: dict[int, list[int]] = {}
    for layer, indices in mapping.items():
        if (
            isinstance(layer, bool)
            or not isinstance(layer, numbers.Integral)
            or not 0 <= layer < len(counts)
        ):
            raise ValueError(
                f"{name} names layer {layer!r}; the model has layers 0 to "
                f"{len(counts) - 1} (ints)."
            )
        layer = int(layer)
        units = check_int_list(f"{name}[{layer}]", indices)
        units = sorted(set(units) | set(chosen.get(layer, [])))
        count = counts[layer]
        if units and (units[0] < 0 or units[-1] >= count):
            raise ValueError(
                f"layer {layer} has {unit}s 0 to {count - 1}; got {units}."
            )
        if len(units) == count:
            raise ValueError(
                f"removing every {unit} of layer {layer} is not supported "
                f"(it would leave the layer without one); keep at least one."
            )
        if units:
            chosen[layer] = units
    return chosen


def prune_neurons(
    model: nn.Module, neurons: Mapping[int, Iterable[int]]
) -> int:
    """Remove feed-forward neurons from the weights, in place.

    The FFN's first matrix loses the neurons' rows and its second their
    columns; the result equals the full model with those neurons' outputs
    set to zero.

    Args:
        neurons: ``{layer: [neuron indices]}`` to remove.

    Returns:
        The number of neurons removed.

    Raises:
        ValueError: ``neurons`` not a dict, a layer or neuron that does not
            exist (or is not an int), or a layer that would lose every
            neuron; the model is left unchanged.
    """
    layers = encoder_layers(model)
    counts = [layer.intermediate.dense.out_features for layer in layers]
    chosen = _check_units("neurons", neurons, counts, "neuron")
    for index, units in chosen.items():  # every entry checked: now change
        inner = layers[index].intermediate.dense
        kept = set(range(inner.out_features)) - set(units)
        keep = torch.tensor(sorted(kept))
        layers[index].intermediate.dense = prune_linear_layer(inner, keep)
        outer = layers[index].output.dense
        layers[index].output.dense = prune_linear_layer(outer, keep, dim=1)
    return sum(len(units) for units in chosen.values())


def count_parameters(model: nn.Module, *, embeddings: bool = True) -> int:
    """Parameters of the model, with or without the embedding tables."""
    return sum(
        p.numel()
        for name, p in model.named_parameters()
        if embeddings or ".embeddings." not in f".{name}"
    )
