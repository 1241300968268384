"""Compression with random input: quantization, pruning, distillation
losses and the checkpoint cache."""

from __future__ import annotations

import contextlib
import io
import math
import pathlib
from unittest import mock

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from strategies import (  # noqa: E402
    ints,
    not_finite_reals,
    not_numbers,
    raises_naming,
    reals,
)
from torch import Tensor  # noqa: E402

from efficient_attention.compression import (  # noqa: E402
    distillation,
    pruning,
    quantization,
)

# -- compression: quantization -------------------------------------------

FEW = max(1, settings().max_examples // 4)
"""Examples for the slower properties (a model, files on disk)."""

QUANT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@st.composite
def float_tensors(draw, max_dims: int = 3) -> Tensor:
    """Small tensors of finite values of any float dtype: zeros, ties,
    magnitudes from 1e-30 to 1e30 (as the dtype holds them)."""
    dtype = draw(st.sampled_from(QUANT_DTYPES))
    shape = draw(st.lists(st.integers(1, 4), min_size=1, max_size=max_dims))
    top = min(1e30, float(torch.finfo(dtype).max) / 4)
    values = draw(
        st.lists(
            st.one_of(
                st.floats(-top, top, allow_subnormal=False),
                st.sampled_from([0.0, 1.0, -1.0, 0.5]),
            ),
            min_size=math.prod(shape),
            max_size=math.prod(shape),
        )
    )
    return torch.tensor(values, dtype=torch.float64).view(shape).to(dtype)


@given(
    x=float_tensors(),
    bits=ints(2, 8),
    symmetric=st.booleans(),
    data=st.data(),
)
def test_fake_quantize_rounds_each_value_onto_its_grid(
    x, bits, symmetric, data
):
    axis = data.draw(st.none() | ints(-x.dim(), x.dim() - 1), label="axis")
    q = quantization.quantize_uniform(x, bits, symmetric=symmetric, axis=axis)
    out = quantization.fake_quantize(x, bits, symmetric=symmetric, axis=axis)
    assert out.dtype == x.dtype and out.shape == x.shape
    assert out.isfinite().all() and not q.scale.isnan().any()
    qmin, qmax = quantization.integer_range(bits, symmetric=symmetric)
    assert qmin <= int(q.q.min()) and int(q.q.max()) <= qmax
    # within half a step of every value (the range covers every value)
    wide = x.double()
    error = (q.dequantize().double() - wide).abs()
    step = q.scale.double().expand_as(wide)
    assert (error <= step / 2 * (1 + 1e-5) + 1e-300).all()
    if symmetric:  # zero is on every symmetric grid
        assert (out[x == 0] == 0).all()


@given(
    x=float_tensors(max_dims=2),
    bad=st.one_of(
        st.tuples(
            st.one_of(not_numbers(), st.integers(-3, 1), st.integers(17, 40),
                      st.just(8.0)).map(lambda b: {"bits": b}),
            st.just("bits"),
        ),
        st.tuples(
            st.one_of(st.just(1.0), st.just(True), st.integers(3, 9),
                      st.integers(-9, -4), st.just("0")).map(
                lambda a: {"axis": a}
            ),
            st.just("axis"),
        ),
        st.tuples(
            st.sampled_from([math.nan, math.inf, -math.inf]).map(
                lambda v: {"poison": v}
            ),
            st.just("x"),
        ),
    ),
)  # fmt: skip
def test_quantizers_refuse_bad_arguments_by_name(x, bad):
    changes, name = bad
    kwargs = {"bits": 8, **changes}
    if "poison" in kwargs:
        x = x.clone()
        x.view(-1)[0] = kwargs.pop("poison")
    raises_naming(name, lambda: quantization.fake_quantize(x, **kwargs))


@given(
    x=float_tensors(max_dims=2),
    levels=st.lists(
        st.floats(-1e6, 1e6, allow_subnormal=False), min_size=1, max_size=9
    ),
)
def test_quantize_to_grid_picks_a_nearest_level(x, levels):
    grid = torch.tensor(levels, dtype=torch.float64)
    out = quantization.quantize_to_grid(x, grid)
    assert out.dtype == x.dtype and out.shape == x.shape
    grid32 = grid.float()  # the precision quantize_to_grid compares in
    distance = (x.float().view(-1, 1) - grid32.view(1, -1)).abs()
    nearest = distance <= distance.amin(-1, keepdim=True) * (1 + 1e-6)
    # each output is a nearest level (ties: any of them), in x's dtype
    same = out.view(-1, 1) == grid32.to(x.dtype).view(1, -1)
    assert (same & nearest).any(-1).all()


@given(
    x=float_tensors(max_dims=2),
    bits=ints(1, 3),
    iterations=ints(0, 3),
)
def test_kmeans_codebook_assigns_every_value_its_nearest_level(
    x, bits, iterations
):
    codebook, codes = quantization.kmeans_codebook(
        x, bits, iterations=iterations
    ) if int(bits) >= 2 else (None, None)  # fmt: skip
    if codebook is None:
        raises_naming("bits", lambda: quantization.kmeans_codebook(x, bits))
        return
    assert codebook.shape == (2 ** int(bits),) and codes.shape == x.shape
    assert (codebook[1:] >= codebook[:-1]).all()  # sorted
    values = x.detach().float().view(-1, 1)
    distance = (values - codebook.view(1, -1)).abs()
    picked = distance.gather(1, codes.view(-1, 1))[:, 0]
    assert (picked <= distance.amin(-1) * (1 + 1e-6) + 1e-30).all()
    raises_naming(
        "iterations",
        lambda: quantization.kmeans_codebook(x, 2, iterations=-1),
    )


# -- compression: pruning --------------------------------------------------


@given(
    shape=st.tuples(st.integers(1, 6), st.integers(1, 6)),
    amount=reals(0, 0.99),
    seed=st.integers(0, 2**16),
)
def test_magnitude_mask_zeroes_the_smallest_weights(shape, amount, seed):
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    keep = pruning.magnitude_mask(weight, amount)
    assert int((~keep).sum()) == round(float(amount) * weight.numel())
    if keep.any() and (~keep).any():
        assert weight[keep].abs().min() >= weight[~keep].abs().max()


@given(
    rows=st.lists(
        st.lists(st.floats(0, 10), min_size=1, max_size=5),
        min_size=1,
        max_size=4,
    ),
    fraction=reals(0, 0.99),
    per_layer=st.booleans(),
    poison=st.booleans(),
)
def test_least_important_keeps_a_unit_per_layer_and_refuses_nan(
    rows, fraction, per_layer, poison
):
    scores = [torch.tensor(r, dtype=torch.float64) for r in rows]
    if poison:
        scores[-1][0] = math.nan
        raises_naming(
            "scores", lambda: pruning.least_important(scores, fraction)
        )
        return
    chosen = pruning.least_important(scores, fraction, per_layer=per_layer)
    assert sorted(chosen) == list(range(len(rows)))
    for layer, units in chosen.items():
        assert units == sorted(set(units))
        assert len(units) <= len(rows[layer]) - 1
        assert all(0 <= u < len(rows[layer]) for u in units)


@pytest.fixture(scope="module")
def tiny_classifier():
    from tiny_models import tiny_bert

    return tiny_bert(layers=2, heads=4)


def unit_specs(counts: list[int]) -> st.SearchStrategy[dict]:
    """``{layer: [unit indices]}`` that leave every layer a unit."""
    return st.fixed_dictionaries(
        {},
        optional={
            layer: st.lists(st.integers(0, n - 1), max_size=n - 1, unique=True)
            for layer, n in enumerate(counts)
        },
    )


def bad_unit_specs(counts: list[int]) -> st.SearchStrategy[tuple]:
    """Bad specs, and what the error must name."""
    n = counts[0]
    return st.one_of(
        st.tuples(st.just({0: [0.0 + 1.7]}), st.just("[0]")),
        st.tuples(st.just({0: [True]}), st.just("[0]")),
        st.tuples(st.just({"0": [1]}), st.just("layer")),
        st.tuples(st.just({len(counts): [0]}), st.just("layer")),
        st.tuples(st.just({-1: [0]}), st.just("layer")),
        st.tuples(st.just({0: [n]}), st.just(f"0 to {n - 1}")),
        st.tuples(st.just({0: list(range(n))}), st.just("at least one")),
        st.tuples(st.just([[0]]), st.just("dict")),
        st.tuples(st.just({0: 1}), st.just("[0]")),
        st.tuples(
            st.just({0: [0], 1: [n + 3]}), st.just(f"0 to {n - 1}")
        ),  # a later entry: nothing changes before the error
    )


@settings(max_examples=FEW)
@given(data=st.data(), kind=st.sampled_from(["heads", "neurons"]))
def test_pruning_units_equals_zeroing_them_or_changes_nothing(
    tiny_classifier, data, kind
):
    import copy

    model = copy.deepcopy(tiny_classifier)
    layers = pruning.encoder_layers(model)
    if kind == "heads":
        counts = [lay.attention.self.num_attention_heads for lay in layers]
        prune = pruning.prune_heads
    else:
        counts = [lay.intermediate.dense.out_features for lay in layers]
        prune = pruning.prune_neurons
    ids = torch.arange(1, 31).view(2, 15) % 40
    if data.draw(st.booleans(), label="bad"):
        spec, name = data.draw(bad_unit_specs(counts), label="spec")
        state = {k: v.clone() for k, v in model.state_dict().items()}
        raises_naming(name, lambda: prune(model, spec))
        after = model.state_dict()
        assert list(after) == list(state)
        assert all(torch.equal(after[k], v) for k, v in state.items())
        return
    spec = data.draw(unit_specs(counts), label="spec")
    reference = copy.deepcopy(model)
    for layer, units in spec.items():  # zero what the units output
        block = pruning.encoder_layers(reference)[layer]
        with torch.no_grad():
            if kind == "heads":
                size = block.attention.self.attention_head_size
                weight = block.attention.output.dense.weight
                for u in units:
                    weight[:, u * size : (u + 1) * size] = 0
            else:
                block.output.dense.weight[:, units] = 0
    removed = prune(model, spec)
    assert removed == sum(len(u) for u in spec.values())
    with torch.no_grad():
        torch.testing.assert_close(
            model(input_ids=ids).logits, reference(input_ids=ids).logits
        )


# -- distillation losses ---------------------------------------------------


@st.composite
def logit_pairs(draw) -> tuple[Tensor, Tensor]:
    n = draw(st.integers(0, 4))
    c = draw(st.integers(1, 4))
    scale = draw(st.sampled_from([1e-3, 1.0, 30.0, 1e4]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    student = scale * torch.randn(n, c, generator=g, dtype=torch.float64)
    teacher = scale * torch.randn(n, c, generator=g, dtype=torch.float64)
    if c > 1 and draw(st.booleans()):  # a class ruled out by both
        student[:, 0] = teacher[:, 0] = -math.inf
    return student, teacher


def soft_label_reference(student, teacher, T) -> float:
    """T^2 KL(p_t || p_s) in exact rational-free float64 arithmetic, by
    the definition (only where the logits over T do not overflow)."""
    keep = teacher[0].isfinite() if len(teacher) else None
    s, t = student[:, keep] / T, teacher[:, keep] / T
    log_s, log_t = s.log_softmax(-1), t.log_softmax(-1)
    return float(T**2 * (log_t.exp() * (log_t - log_s)).sum(-1).mean())


@given(
    pair=logit_pairs(),
    temperature=st.floats(1e-300, 1e4) | st.sampled_from([1e-300, 1e4]),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
)
def test_soft_label_loss_is_finite_and_is_its_definition(
    pair, temperature, dtype
):
    student, teacher = (t.to(dtype) for t in pair)
    loss = distillation.soft_label_loss(
        student, teacher, temperature=temperature
    )
    assert loss.dtype == (torch.float64 if dtype == torch.float64
                          else torch.float32)  # fmt: skip
    assert loss.isfinite() and loss >= -1e-9
    if len(student) == 0:
        assert loss == 0
        return
    s, t = student.double(), teacher.double()
    if temperature >= 1e-2:
        expected = soft_label_reference(s, t, temperature)
        assert loss.item() == pytest.approx(expected, rel=1e-4, abs=1e-6)
    same = distillation.soft_label_loss(t, t, temperature=temperature)
    assert same == 0


@given(
    bad=st.one_of(
        not_finite_reals(),
        st.floats(max_value=0),
        st.floats(1e4, 1e300, exclude_min=True),
    )
)
def test_soft_label_loss_refuses_bad_temperatures_by_name(bad):
    raises_naming(
        "temperature",
        lambda: distillation.soft_label_loss(
            torch.zeros(2, 2), torch.ones(2, 2), temperature=bad
        ),
    )


@given(
    B=st.integers(1, 3),
    L=st.integers(1, 4),
    D=st.integers(1, 3),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_token_losses_average_over_real_tokens_only(B, L, D, seed, data):
    g = torch.Generator().manual_seed(seed)
    mask = data.draw(
        st.lists(st.integers(0, 1), min_size=B * L, max_size=B * L)
    )
    mask = torch.tensor(mask).view(B, L)
    student, teacher = torch.randn(2, B, L, D, generator=g).double()
    loss = distillation.hidden_state_loss(
        student, teacher, attention_mask=mask
    )
    squared = (student - teacher).pow(2).mean(-1)  # (B, L)
    real = mask.bool()
    expected = squared[real].mean() if real.any() else torch.tensor(0.0)
    torch.testing.assert_close(loss, expected.double())
    maps = torch.softmax(torch.randn(2, B, 2, L, L, generator=g), -1)
    kl = distillation.attention_map_loss(maps[0], maps[1],
                                         attention_mask=mask)  # fmt: skip
    assert kl.isfinite() and kl >= -1e-6
    if not real.any():
        assert kl == 0


# -- the checkpoint cache --------------------------------------------------


class FakeWeights:
    """Stands in for a model: ``save_pretrained`` writes its bytes."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def save_pretrained(self, folder) -> None:
        (folder / "model.safetensors").write_bytes(self.payload)
        (folder / "config.json").write_text('{"fake": true}')


class FakeTokenizer:
    def save_pretrained(self, folder) -> None:
        (folder / "tokenizer.json").write_text("{}")


def fake_load_encoder(folder, verbose=True):
    return FakeWeights((folder / "model.safetensors").read_bytes()), None


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-10, 10)
    | st.floats(allow_nan=False)
    | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6,
)


def damage(folder, how: str) -> None:
    weights = folder / "model.safetensors"
    if how == "flip":
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0x01
        weights.write_bytes(bytes(data))
    elif how == "truncate":
        weights.write_bytes(weights.read_bytes()[:-1])
    elif how == "no info":
        (folder / "info.json").unlink()
    elif how == "corrupt info":
        (folder / "info.json").write_text("{")
    elif how == "no weights":
        weights.unlink()


@settings(max_examples=FEW * 2)
@given(
    key=st.dictionaries(st.text(max_size=4), JSON_VALUES, max_size=3),
    payload=st.binary(min_size=2, max_size=64),
    how=st.sampled_from(
        ["none", "flip", "truncate", "no info", "corrupt info", "no weights"]
    ),
)
def test_the_cache_loads_exactly_what_verifies(tmp_path_factory, key,
                                               payload, how):  # fmt: skip
    from efficient_attention import training

    root = tmp_path_factory.mktemp("cache")
    calls = []

    def fit():
        calls.append(1)
        return FakeWeights(payload), FakeTokenizer(), [1.0]

    with contextlib.ExitStack() as stack:
        stack.enter_context(
            mock.patch.dict("os.environ", {"EFFICIENT_ATTENTION_CACHE":
                                           str(root)})  # fmt: skip
        )
        stack.enter_context(
            mock.patch.object(
                training.models, "load_encoder", fake_load_encoder
            )
        )
        stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
        _, _, info = training.cached_checkpoint(key, fit)
        damage(pathlib.Path(info["path"]), how)
        if how == "none":
            model, _, again = training.cached_checkpoint(key, fit)
        else:
            with pytest.warns(RuntimeWarning, match=info["path"]):
                model, _, again = training.cached_checkpoint(key, fit)
        assert again["from_cache"] == (how == "none")
        assert len(calls) == (1 if how == "none" else 2)
        assert model.payload == payload and again["key"] == key
        _, _, third = training.cached_checkpoint(key, fit)  # repaired
        assert third["from_cache"] and len(calls) <= 2


@given(
    bad=st.one_of(
        st.just({"s": {1, 2}}),
        st.just({"f": len}),
        st.just({1: "a", "b": 2}),
        st.just({"t": torch.ones(1)}),
        st.lists(st.integers(), max_size=2),
        st.none(),
    )
)
def test_cache_keys_that_json_cannot_hold_are_refused_by_name(bad):
    from efficient_attention import training

    def fit():
        raise AssertionError("nothing is trained for a bad key")

    raises_naming("key", lambda: training.cached_checkpoint(bad, fit))
