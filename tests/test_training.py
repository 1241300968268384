"""Fine-tuning, metrics, batching, latency, size and the checkpoint cache."""

from __future__ import annotations

import pathlib

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from efficient_attention import data, models, training


@pytest.fixture(scope="module")
def tokenizer():
    return models.load_encoder(verbose=False)[1]


def test_metrics_by_hand():
    metrics = training.classification_metrics(
        torch.tensor([1, 1, 0, 0, 1]), torch.tensor([1, 0, 1, 0, 1])
    )
    # tp = 2, predicted positives 3, actual positives 3: F1 = 4 / 6
    assert metrics == pytest.approx({"accuracy": 0.6, "f1": 2 / 3})
    assert training.classification_metrics(torch.zeros(3), torch.zeros(3)) == {
        "accuracy": 1.0,
        "f1": 0.0,
    }


def test_always_paraphrase_scores_by_hand():
    pairs = data.generate_paraphrase_pairs("dev", size=4)
    pairs = pairs.remove_columns("label").add_column("label", [1, 0, 1, 1])
    # 3 of 4 right; precision 3/4, recall 1: F1 = 2 * 3 / (4 + 3)
    assert training.always_paraphrase_scores(pairs) == pytest.approx(
        {"accuracy": 0.75, "f1": 6 / 7}
    )


def test_metrics_refuse_unknown_labels_and_bad_shapes():
    with pytest.raises(ValueError, match="labels hold -1"):
        training.classification_metrics(
            torch.tensor([1, 0]), torch.tensor([-1, -1])
        )
    with pytest.raises(ValueError, match=r"two \(N,\) tensors"):
        training.classification_metrics(
            torch.tensor([1, 0]), torch.tensor([1])
        )


def test_batches_pad_to_the_longest_and_keep_labels_with_pairs(tokenizer):
    pairs = data.generate_paraphrase_pairs("dev", size=40)
    examples = training.encode_pairs(tokenizer, pairs)
    kept = list(training.batches(examples, 16))
    assert [b["labels"].shape[0] for b in kept] == [16, 16, 8]
    first = kept[0]
    longest = max(len(e["input_ids"]) for e in examples[:16])
    assert first["input_ids"].shape == (16, longest)
    lengths = first["attention_mask"].sum(-1).tolist()
    assert lengths == [len(e["input_ids"]) for e in examples[:16]]
    assert first["labels"].tolist() == list(pairs["label"][:16])
    assert (
        first["input_ids"][first["attention_mask"] == 0]
        == tokenizer.pad_token_id
    ).all()


def test_shuffled_batches_are_a_seeded_permutation_grouped_by_length(
    tokenizer,
):
    pairs = data.generate_paraphrase_pairs("train", size=200)
    examples = training.encode_pairs(tokenizer, pairs)
    by_ids = {tuple(e["input_ids"]): e["label"] for e in examples}

    def run(seed):
        out = list(
            training.batches(
                examples, 8, generator=torch.Generator().manual_seed(seed)
            )
        )
        rows = [
            (tuple(ids[mask.bool()].tolist()), int(label))
            for b in out
            for ids, mask, label in zip(
                b["input_ids"], b["attention_mask"], b["labels"]
            )
        ]
        return out, rows

    batches_a, rows_a = run(0)
    _, rows_b = run(0)
    _, rows_c = run(1)
    assert rows_a == rows_b and rows_a != rows_c
    assert sorted(rows_a) == sorted(
        by_ids.items()
    )  # every pair once, label attached
    padded = sum(b["input_ids"].numel() for b in batches_a)
    unsorted = sum(
        b["input_ids"].numel() for b in training.batches(examples, 8)
    )
    assert padded < unsorted


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("epochs", 0, "epochs must be a positive int"),
        ("batch_size", 2.0, "batch_size must be a positive int"),
        ("learning_rate", 0.0, "learning_rate must be in"),
        ("warmup_ratio", 1.0, "warmup_ratio must be in"),
        ("dropout", -0.1, "dropout must be in"),
        ("head_learning_rate", 1.5, "head_learning_rate must be in"),
    ],
)
def test_config_refuses_bad_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        training.FineTuneConfig(**{field: value})


def test_fine_tuning_learns_and_the_cache_returns_the_same_model(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("EFFICIENT_ATTENTION_CACHE", str(tmp_path))
    train = data.generate_paraphrase_pairs("train", size=16)
    config = training.FineTuneConfig(
        epochs=12, batch_size=16, learning_rate=2e-4, warmup_ratio=0.0
    )
    model, tokenizer, info = training.fine_tune_mrpc(
        config, train=train, progress=False
    )
    assert not info["from_cache"] and info["path"].startswith(str(tmp_path))
    assert (
        training.evaluate(model, tokenizer, train)["accuracy"] == 1.0
    )  # it fits 16 pairs
    cached, _, cached_info = training.fine_tune_mrpc(
        config, train=train, progress=False
    )
    assert cached_info["from_cache"] and cached_info["key"] == info["key"]
    torch.testing.assert_close(
        training.predict(cached, tokenizer, train),
        training.predict(model, tokenizer, train),
    )
    models.load_encoder(info["path"])  # prints the folder's name only
    out = capsys.readouterr().out
    assert f"from the local folder '{pathlib.Path(info['path']).name}'" in out
    assert str(tmp_path) not in out
    other_seed = training.FineTuneConfig(**{**config.__dict__, "seed": 1})
    assert training.checkpoint_key(other_seed, train) != info["key"]


def test_the_cache_key_sees_the_data():
    train = data.generate_paraphrase_pairs("train", size=8)
    flipped = train.map(lambda row: {"label": 1 - row["label"]})
    config = training.FineTuneConfig()
    assert training.checkpoint_key(config, train) != training.checkpoint_key(
        config, flipped
    )


def test_latency_and_size(tokenizer):
    model = models.load_encoder(verbose=False)[0]
    pairs = data.generate_paraphrase_pairs("dev", size=4)
    timing = training.measure_latency(
        model, tokenizer, pairs, batch_size=4, min_run_time=0.05
    )
    assert timing["median"] > 0 and timing["iqr"] >= 0
    lengths = [
        len(e["input_ids"]) for e in training.encode_pairs(tokenizer, pairs)
    ]
    assert timing["tokens"] == 4 * max(lengths)
    assert training.model_size_mb(torch.nn.Linear(10, 10)) == 110 * 4 / 2**20
    assert 80 < training.model_size_mb(model) < 90  # 22.7M float32 parameters


def test_predict_returns_logits_in_the_dataset_order(tokenizer):
    model = models.load_encoder(verbose=False)[0]
    pairs = data.generate_paraphrase_pairs("dev", size=6)
    logits = training.predict(model, tokenizer, pairs, batch_size=4)
    for i, row in enumerate(pairs):
        one = tokenizer(
            row["sentence1"], row["sentence2"], return_tensors="pt"
        )
        with torch.no_grad():
            expected = model(**one).logits[0]
        torch.testing.assert_close(logits[i], expected, atol=1e-5, rtol=1e-5)


def test_the_head_learns_at_its_own_rate_and_biases_do_not_decay():
    model = models.load_encoder(verbose=False)[0]
    config = training.FineTuneConfig(
        learning_rate=1e-4, head_learning_rate=1e-3
    )
    groups = training._parameter_groups(model, config)
    names = {id(p): n for n, p in model.named_parameters()}
    seen = [names[id(p)] for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(names.values())  # each parameter once
    for group in groups:
        for parameter in group["params"]:
            name = names[id(parameter)]
            head = name.startswith("classifier") or ".pooler." in name
            assert group["lr"] == (1e-3 if head else 1e-4), name
            matrix = parameter.dim() == 2 and "LayerNorm" not in name
            assert group["weight_decay"] == (0.01 if matrix else 0.0), name


def test_set_dropout_reaches_every_dropout_layer():
    model = models.load_encoder(verbose=False)[0]
    # embeddings, classifier, and per layer: attention probabilities,
    # attention output, feed-forward output
    assert training.set_dropout(model, 0.0) == 2 + 6 * 3
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert all(m.p == 0.0 for m in layers)
    model.train()
    batch = {"input_ids": torch.tensor([[101, 7592, 102]])}
    with torch.no_grad():  # no dropout left: training mode is deterministic
        torch.testing.assert_close(
            model(**batch).logits, model(**batch).logits
        )


@given(
    st.lists(
        st.tuples(st.integers(0, 1), st.integers(0, 1)),
        min_size=1,
        max_size=60,
    )
)
def test_metrics_match_their_definitions(pairs):
    predictions = torch.tensor([p for p, _ in pairs])
    labels = torch.tensor([y for _, y in pairs])
    metrics = training.classification_metrics(predictions, labels)
    tp = sum(p == y == 1 for p, y in pairs)
    fp = sum(p == 1 and y == 0 for p, y in pairs)
    fn = sum(p == 0 and y == 1 for p, y in pairs)
    assert metrics["accuracy"] == pytest.approx(
        sum(p == y for p, y in pairs) / len(pairs)
    )
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    assert metrics["f1"] == pytest.approx(f1)


def test_model_report_pads_to_128_and_compares_in_one_run(tokenizer):
    model = models.load_encoder(verbose=False)[0]
    pairs = data.generate_paraphrase_pairs("dev", size=32)
    fixed = training.measure_latency(
        model,
        tokenizer,
        pairs,
        batch_size=2,
        min_run_time=0.01,
        pad_to_max_length=True,
    )
    assert fixed["tokens"] == 2 * 128
    report = training.model_report(
        {"fp32": model, "bf16": model},
        tokenizer,
        pairs,
        rounds=1,
        min_run_time=0.01,
        autocast={"bf16": torch.bfloat16},
    )
    assert list(report) == ["fp32", "bf16"]
    assert report["fp32"]["speed-up (32 x 128)"] == pytest.approx(1.0)
    assert report["fp32"]["MiB"] == pytest.approx(
        training.serialized_megabytes(model)
    )
    assert 80 < report["fp32"]["MiB"] < 95
    for row in report.values():
        assert 0 <= row["f1"] <= 1 and row["ms (batch 1)"] > 0


def test_model_report_scores_given_predictions_without_predicting(
    tokenizer,
):
    model = models.load_encoder(verbose=False)[0]
    pairs = data.generate_paraphrase_pairs("dev", size=32)
    labels = torch.tensor(list(pairs["label"]))
    report = training.model_report(
        {"given": model},
        tokenizer,
        pairs,
        rounds=1,
        min_run_time=0.01,
        predictions={"given": labels},  # a perfect classifier's labels
    )
    assert report["given"]["accuracy"] == 1.0
    with pytest.raises(ValueError, match="one predicted label per pair"):
        training.model_report(
            {"given": model},
            tokenizer,
            pairs,
            rounds=1,
            predictions={"given": labels[:3]},
        )


def test_train_classifier_stops_at_max_steps_under_autocast(tokenizer):
    model = models.load_encoder(verbose=False)[0]
    pairs = data.generate_paraphrase_pairs("train", size=12)
    config = training.FineTuneConfig(batch_size=4)
    losses = training.train_classifier(
        model,
        tokenizer,
        pairs,
        config,
        progress=False,
        autocast=torch.bfloat16,
        max_steps=2,
    )
    assert len(losses) == 2 and all(loss > 0 for loss in losses)
    assert next(model.parameters()).dtype == torch.float32  # master weights
    with pytest.raises(ValueError, match="autocast must be"):
        training.train_classifier(
            model, tokenizer, pairs, config, autocast=torch.int8
        )


def test_fine_tuning_bar_redraws_rarely(tokenizer, monkeypatch):
    # a notebook bar sends a message per redraw: one a step overflowed the
    # kernel's output queue while nbval waited for a long cell
    redraws = []

    class CountingBar(training.tqdm):
        def refresh(self, *args, **kwargs):
            redraws.append(self.n)
            return super().refresh(*args, **kwargs)

    monkeypatch.setattr(training, "tqdm", CountingBar)
    model = models.load_encoder(verbose=False)[0]
    pairs = data.generate_paraphrase_pairs("train", size=24)
    losses = training.train_classifier(
        model,
        tokenizer,
        pairs,
        training.FineTuneConfig(batch_size=2, max_length=16),
        max_steps=8,
    )
    assert len(losses) == 8
    assert len(redraws) <= 3  # not one (or two) a step


def _tiny_fit(steps=5):
    """A fit for cached_training: a few Adam steps on random tokens."""

    def fit(model):
        generator = torch.Generator().manual_seed(0)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        losses = []
        model.train()
        for _ in range(steps):
            ids = torch.randint(0, 50, (4, 8), generator=generator)
            loss = model(input_ids=ids, labels=ids[:, 0] % 2).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        return losses

    return fit


def test_cached_training_trains_once_and_loads_the_same_weights(
    tmp_path, monkeypatch
):
    from tiny_models import tiny_bert

    from efficient_attention.compression import pruning

    monkeypatch.setenv("EFFICIENT_ATTENTION_CACHE", str(tmp_path))
    key = {"start": "tiny seed 0", "pruned heads": {0: [1, 2]}, "steps": 5}
    trained = tiny_bert()
    pruning.prune_heads(trained, {0: [1, 2]})  # an architecture of its own
    info = training.cached_training(trained, key, _tiny_fit())
    assert not info["from_cache"] and len(info["losses"]) == 5

    calls = []
    again = tiny_bert()
    pruning.prune_heads(again, {0: [1, 2]})
    loaded = training.cached_training(
        again, key, lambda m: calls.append(m) or []
    )
    assert loaded["from_cache"] and not calls and not again.training
    assert loaded["losses"] == info["losses"]
    for (name, a), b in zip(
        trained.state_dict().items(), again.state_dict().values()
    ):
        assert torch.equal(a, b), name  # a copy: bit for bit
    other = tiny_bert()
    pruning.prune_heads(other, {0: [1, 2]})
    assert not training.cached_training(
        other, {**key, "steps": 6}, _tiny_fit(6)
    )["from_cache"]


def test_cached_training_retrains_a_corrupted_file_and_survives_a_bad_cache(
    tmp_path, monkeypatch
):
    from tiny_models import tiny_bert

    monkeypatch.setenv("EFFICIENT_ATTENTION_CACHE", str(tmp_path))
    info = training.cached_training(tiny_bert(), {"k": 1}, _tiny_fit())
    weights = pathlib.Path(info["path"]) / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-8:] = b"\x7f" * 8  # same size, other numbers
    weights.write_bytes(bytes(raw))
    with pytest.warns(RuntimeWarning, match="does not match its checksum"):
        again = training.cached_training(tiny_bert(), {"k": 1}, _tiny_fit())
    assert not again["from_cache"]
    assert training.cached_training(tiny_bert(), {"k": 1}, _tiny_fit())[
        "from_cache"
    ]  # repaired
    # A cache root that is a file: the model is trained and returned.
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("EFFICIENT_ATTENTION_CACHE", str(blocked))
    model = tiny_bert()
    before = model.classifier.weight.clone()
    with pytest.warns(RuntimeWarning, match="could not save"):
        info = training.cached_training(model, {"k": 2}, _tiny_fit())
    assert not info["from_cache"]
    assert not torch.equal(model.classifier.weight, before)  # trained
    with pytest.raises(ValueError, match="JSON values"):
        training.cached_training(tiny_bert(), {"k": {1, 2}}, _tiny_fit())


def test_train_classifier_cached_keys_the_start_recipe_and_data(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("EFFICIENT_ATTENTION_CACHE", str(tmp_path))
    train = data.generate_paraphrase_pairs("train", size=8)
    config = training.FineTuneConfig(batch_size=4, learning_rate=1e-3)

    def run(start="pretrained", steps=2, pairs=train):
        model, tokenizer = models.load_encoder(verbose=False)
        info = training.train_classifier_cached(
            model, tokenizer, pairs, config, start=start, max_steps=steps,
            progress=False,
        )
        return model, info

    trained, info = run()
    assert not info["from_cache"] and len(info["losses"]) == 2
    loaded, again = run()
    assert again["from_cache"]
    torch.testing.assert_close(
        loaded.classifier.weight, trained.classifier.weight, rtol=0, atol=0
    )
    flipped = train.map(lambda row: {"label": 1 - row["label"]})
    for changed in (
        dict(start="other"), dict(steps=1), dict(pairs=flipped)
    ):
        assert not run(**changed)[1]["from_cache"], changed
# -- issue 22: the checkpoint cache verifies what it loads and loses no fit -


class CountingFit:
    """A fit() that returns a tiny BERT (a different one each call) and
    counts its calls."""

    def __init__(self, tokenizer):
        self.tokenizer, self.calls = tokenizer, 0

    def __call__(self):
        from tiny_models import tiny_bert

        self.calls += 1
        return tiny_bert(seed=self.calls), self.tokenizer, [0.5, 0.25]


KEY = {"config": {"seed": 0}, "train_data": "abc", "note": [1, 2.5, None]}


def cached(fit, key=KEY):
    return training.cached_checkpoint(key, fit)


def weights_file(info):
    return pathlib.Path(info["path"]) / "model.safetensors"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFICIENT_ATTENTION_CACHE", str(tmp_path))
    return tmp_path


def test_the_cache_stores_checksums_and_loads_what_it_saved(cache, tokenizer):
    fit = CountingFit(tokenizer)
    model, _, info = cached(fit)
    again, _, info_again = cached(fit)
    assert fit.calls == 1 and info_again["from_cache"]
    assert "checksums" not in info_again
    assert info_again["losses"] == [0.5, 0.25]
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[name], tensor)
    import json

    saved = json.loads((pathlib.Path(info["path"]) / "info.json").read_text())
    assert "model.safetensors" in saved["checksums"]
    assert not list(cache.glob("checkpoints/.partial-*"))


def flip_bytes(path):
    data = bytearray(path.read_bytes())
    middle = len(data) - 200  # inside the last tensor's values
    for i in range(middle, middle + 8):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path):
    path.write_bytes(path.read_bytes()[:-100])


def drop_info(path):
    (path.parent / "info.json").unlink()


def corrupt_info(path):
    (path.parent / "info.json").write_text('{"key": ')


def drop_checksums(path):
    import json

    info_path = path.parent / "info.json"
    info = json.loads(info_path.read_text())
    del info["checksums"]  # as the package saved them before
    info_path.write_text(json.dumps(info))


@pytest.mark.parametrize(
    "damage, problem",
    [
        (flip_bytes, "does not match its checksum"),  # loaded silently
        (truncate, "does not match its checksum"),  # raised on every call
        (drop_info, "has no info.json"),  # a stale folder: lost the fit
        (corrupt_info, "corrupt info.json"),  # a JSONDecodeError
        (drop_checksums, "no checksums"),
    ],
)
def test_a_damaged_checkpoint_is_never_loaded_but_trained_again(
    cache, tokenizer, damage, problem
):
    fit = CountingFit(tokenizer)
    _, _, info = cached(fit)
    damage(weights_file(info))
    with pytest.warns(RuntimeWarning, match=problem) as caught:
        model, _, info_again = cached(fit)
    assert info["path"] in str(caught[0].message)
    assert fit.calls == 2 and not info_again["from_cache"]
    repaired, _, info_third = cached(fit)  # the folder was replaced
    assert fit.calls == 2 and info_third["from_cache"]
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(repaired.state_dict()[name], tensor)


def test_a_failed_save_returns_the_trained_model_and_says_why(
    tmp_path, monkeypatch, tokenizer
):
    root = tmp_path / "a file"
    root.write_text("not a folder")
    monkeypatch.setenv("EFFICIENT_ATTENTION_CACHE", str(root))
    fit = CountingFit(tokenizer)
    with pytest.warns(RuntimeWarning, match="could not save"):
        model, _, info = cached(fit)
    assert fit.calls == 1 and not info["from_cache"]
    assert isinstance(model, torch.nn.Module)


@pytest.mark.parametrize(
    "key", [{"layers": {1, 2}}, {"fn": len}, ["not", "a dict"], {1: 2, "a": 3}]
)
def test_cache_keys_hold_json_values_only(cache, tokenizer, key):
    fit = CountingFit(tokenizer)
    with pytest.raises(ValueError, match="key must"):
        cached(fit, key)
    assert fit.calls == 0


def test_config_takes_numpy_numbers_and_checks_every_field():
    # issue 22 (NumPy scalars accepted everywhere): np.int64 epochs were
    # refused; a seed, a weight decay or a model of any type passed
    import numpy as np

    config = training.FineTuneConfig(
        epochs=np.int64(3), learning_rate=np.float32(0.5)
    )
    assert type(config.epochs) is int and config.epochs == 3
    assert type(config.learning_rate) is float
    import json

    json.dumps(config.__dict__)  # part of the cache key: plain numbers
    for bad, name in [
        ({"seed": "x"}, "seed"),
        ({"seed": -1}, "seed"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"learning_rate": "0.1"}, "learning_rate"),
        ({"model": 3}, "model"),
    ]:
        with pytest.raises(ValueError, match=name):
            training.FineTuneConfig(**bad)
