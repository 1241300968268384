"""MRPC loading: GLUE's layout, the generated fallback, malformed files."""

from __future__ import annotations

import os
import pathlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from efficient_attention import data

HEADER = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
TEST_HEADER = "\ufeffindex\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
GOOD_ROWS = (
    '1\t702876\t702977\tHe said "yes", then left.\t'
    'Then he left, saying "yes".\n'
    "0\t2108705\t2108831\tShares rose 5 percent.\tShares fell 5 percent.\n"
)
SHARED_GLUE = (
    pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
)


def write_mrpc(
    folder: pathlib.Path, split: str, text: str | bytes
) -> pathlib.Path:
    path = folder / "MRPC" / f"{split}.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, str):
        text = text.encode("utf-8")
    path.write_bytes(text)
    return path


@pytest.fixture
def no_glue_dir(monkeypatch):
    monkeypatch.delenv("GLUE_DIR", raising=False)


def test_reads_glue_layout_with_bom_and_literal_quotes(tmp_path, capsys):
    path = write_mrpc(tmp_path, "train", HEADER + GOOD_ROWS)
    dataset = data.load_mrpc("train", glue_dir=tmp_path)
    assert dataset.column_names == ["sentence1", "sentence2", "label", "idx"]
    assert list(dataset["label"]) == [1, 0]
    assert list(dataset["idx"]) == [0, 1]
    assert dataset[0]["sentence1"] == 'He said "yes", then left.'
    assert dataset[0]["sentence2"] == 'Then he left, saying "yes".'
    assert (
        f"MRPC train: 2 pairs from GLUE's file {path}"
        in capsys.readouterr().out
    )


def test_glue_dir_comes_from_the_environment(tmp_path, monkeypatch, capsys):
    write_mrpc(tmp_path, "dev", HEADER + GOOD_ROWS)
    monkeypatch.setenv("GLUE_DIR", str(tmp_path))
    assert len(data.load_mrpc("dev")) == 2
    out = capsys.readouterr().out
    assert "2 pairs from GLUE's file $GLUE_DIR/MRPC/dev.tsv" in out


def test_windows_line_endings_and_no_final_newline(tmp_path):
    text = (HEADER + GOOD_ROWS).replace("\n", "\r\n").rstrip("\r\n")
    write_mrpc(tmp_path, "train", text)
    dataset = data.load_mrpc("train", glue_dir=tmp_path, verbose=False)
    assert dataset[1]["sentence2"] == "Shares fell 5 percent."


def test_test_split_has_unknown_labels_and_its_own_index(tmp_path):
    write_mrpc(tmp_path, "test", TEST_HEADER + "7\t1\t2\tA b.\tC d.\n")
    dataset = data.load_mrpc("test", glue_dir=tmp_path, verbose=False)
    assert list(dataset["label"]) == [-1]
    assert list(dataset["idx"]) == [7]


@pytest.mark.skipif(
    not (SHARED_GLUE / "MRPC").is_dir(),
    reason="no GLUE copy beside the repository",
)
def test_the_real_glue_files():
    sizes = {}
    for split in data.SPLITS:
        dataset = data.load_mrpc(split, glue_dir=SHARED_GLUE, verbose=False)
        sizes[split] = len(dataset)
        labels = list(dataset["label"])
        if split == "test":
            assert set(labels) == {-1}
        else:
            assert set(labels) == {0, 1}
            assert (
                0.6 < sum(labels) / len(labels) < 0.75
            )  # MRPC: 68% paraphrases
    assert sizes == data.GLUE_SIZES


def test_generated_fallback_when_offline_without_glue(no_glue_dir, capsys):
    assert os.environ.get("HF_DATASETS_OFFLINE") == "1"  # set by conftest
    dataset = data.load_mrpc("dev")
    out = capsys.readouterr().out
    assert "generated paraphrase set" in out and "offline mode" in out
    assert len(dataset) == data.GLUE_SIZES["dev"]
    assert list(dataset["idx"]) == list(range(len(dataset)))
    labels = list(dataset["label"])
    assert set(labels) == {0, 1}
    assert 0.6 < sum(labels) / len(labels) < 0.76


def test_the_source_is_recorded_and_survives_select_and_map(
    tmp_path, no_glue_dir
):
    write_mrpc(tmp_path, "dev", HEADER + GOOD_ROWS)
    glue = data.load_mrpc("dev", glue_dir=tmp_path, verbose=False)
    generated = data.load_mrpc("dev", verbose=False)
    assert data.source_of(glue) == "glue"
    assert data.source_of(generated) == "generated"
    assert data.source_of(generated.select(range(3))) == "generated"
    flipped = glue.map(lambda row: {"label": 1 - row["label"]})
    assert data.source_of(flipped) == "glue"
    assert data.source_of(data.generate_paraphrase_pairs("dev")) == "unknown"
    assert data.source_of([1, 2]) == "unknown"


def test_generated_set_is_deterministic_and_splits_differ():
    first = data.generate_paraphrase_pairs("train", size=50)
    again = data.generate_paraphrase_pairs("train", size=50)
    other = data.generate_paraphrase_pairs("dev", size=50)
    assert first.to_dict() == again.to_dict()
    assert first["sentence1"][:] != other["sentence1"][:]


def test_generated_non_paraphrases_change_a_fact():
    dataset = data.generate_paraphrase_pairs("train", size=300)
    for row in dataset:
        if row["label"] == 0:
            assert row["sentence1"] != row["sentence2"]
    negated = [
        r for r in dataset if r["label"] == 0 and " not " in r["sentence2"]
    ]
    paraphrases_with_not = [
        r for r in dataset if r["label"] == 1 and " not " in r["sentence2"]
    ]
    assert negated and not paraphrases_with_not


def test_asking_for_the_hub_offline_is_a_connection_error(no_glue_dir):
    with pytest.raises(ConnectionError, match="offline mode"):
        data.load_mrpc("train", source="hub")


def test_asking_for_glue_without_a_folder(no_glue_dir):
    with pytest.raises(ValueError, match="GLUE_DIR"):
        data.load_mrpc("train", source="glue")


@pytest.mark.parametrize(
    "kw", [{"split": "valid"}, {"split": "dev", "source": "web"}]
)
def test_unknown_split_or_source(kw):
    split = kw.pop("split")
    with pytest.raises(ValueError, match="must be one of"):
        data.load_mrpc(split, **kw)


def test_validation_is_the_dev_split(tmp_path):
    write_mrpc(tmp_path, "dev", HEADER + GOOD_ROWS)
    dev = data.load_mrpc("dev", glue_dir=tmp_path, verbose=False)
    validation = data.load_mrpc("validation", glue_dir=tmp_path, verbose=False)
    assert validation["sentence1"] == dev["sentence1"]
    generated = data.generate_paraphrase_pairs("validation", size=5)
    same = data.generate_paraphrase_pairs("dev", size=5)
    assert generated["sentence2"] == same["sentence2"]


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"MRPC/train\.tsv does not exist.*GLUE_DIR"
    ):
        data.load_mrpc("train", glue_dir=tmp_path)


MALFORMED = {
    "empty file": (b"", r"train\.tsv is empty"),
    "header only": (HEADER, r"has a header but no rows"),
    "wrong header": (
        "a\tb\tc\td\te\n" + GOOD_ROWS,
        r"line 1: expected the header",
    ),
    "test file as train": (
        TEST_HEADER + "0\t1\t2\tA.\tB.\n",
        r"line 1: .*split='test'",
    ),
    "too few columns": (
        HEADER + "1\t5\t6\tOnly one sentence.\n",
        r"line 2: expected 5 .* got 4",
    ),
    "too many columns": (
        HEADER + GOOD_ROWS + "1\t5\t6\tA.\tB.\tC.\n",
        r"line 4: .* got 6",
    ),
    "truncated last line": (
        HEADER + GOOD_ROWS + "1\t70",
        r"line 4: .*truncated",
    ),
    "label not 0/1": (
        HEADER + "2\t5\t6\tA.\tB.\n",
        r"line 2: the label .* got '2'",
    ),
    "empty sentence": (
        HEADER + GOOD_ROWS + "1\t5\t6\t \tB.\n",
        r"line 4: the sentence #1 String is empty",
    ),
    "ID not a number": (
        HEADER + "1\tx5\t6\tA.\tB.\n",
        r"line 2: the sentence IDs must be numbers",
    ),
    "blank line": (HEADER + "\n" + GOOD_ROWS, r"line 2: empty line"),
    "not UTF-8": (
        HEADER.encode() + b"1\t5\t6\tA \xff.\tB.\n",
        r"line 2: not valid UTF-8",
    ),
}


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_malformed_files_name_the_file_and_line(tmp_path, kind):
    text, message = MALFORMED[kind]
    path = write_mrpc(tmp_path, "train", text)
    with pytest.raises(data.MRPCFormatError, match=message) as raised:
        data.load_mrpc("train", glue_dir=tmp_path, verbose=False)
    assert str(path) in str(raised.value)


def test_malformed_test_index(tmp_path):
    write_mrpc(tmp_path, "test", TEST_HEADER + "x\t1\t2\tA.\tB.\n")
    with pytest.raises(
        data.MRPCFormatError, match="line 2: the index must be a number"
    ):
        data.load_mrpc("test", glue_dir=tmp_path, verbose=False)


@pytest.mark.parametrize("index", ["\u00b2", "\u0661\u0662", "3\u00b2"])
def test_a_test_index_of_other_digits_names_the_file_and_line(tmp_path, index):
    # issue 22: str.isdigit took "²", then int() raised without a place
    row = f"{index}\t1\t2\tA.\tB.\n"
    path = write_mrpc(tmp_path, "test", TEST_HEADER + row)
    with pytest.raises(
        data.MRPCFormatError, match="line 2: the index must be a number"
    ) as raised:
        data.load_mrpc("test", glue_dir=tmp_path, verbose=False)
    assert str(path) in str(raised.value)


def test_generated_size_takes_numpy_ints():
    import numpy as np

    assert len(data.generate_paraphrase_pairs("dev", size=np.int64(3))) == 3


@pytest.mark.parametrize("size", [0, -3, 2.5, True])
def test_generated_size_must_be_positive(size):
    with pytest.raises(ValueError, match="size must be a positive int"):
        data.generate_paraphrase_pairs("dev", size=size)


SENTENCES = st.text(
    st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), min_size=1
).filter(lambda s: s.strip() and "\t" not in s)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(st.integers(0, 1), SENTENCES, SENTENCES),
        min_size=1,
        max_size=8,
    ),
    st.data(),
)
def test_any_valid_file_reads_back_and_any_broken_row_is_named(
    tmp_path, rows, data_
):
    text = HEADER + "".join(f"{y}\t1\t2\t{a}\t{b}\n" for y, a, b in rows)
    write_mrpc(tmp_path, "train", text)
    dataset = data.load_mrpc("train", glue_dir=tmp_path, verbose=False)
    assert list(dataset["label"]) == [y for y, _, _ in rows]
    assert list(dataset["sentence1"]) == [a for _, a, _ in rows]
    assert list(dataset["sentence2"]) == [b for _, _, b in rows]
    broken = data_.draw(st.integers(0, len(rows) - 1), label="broken row")
    bad = data_.draw(
        st.sampled_from(["2\t1\t2\tA.\tB.", "1\t1\t2\tA.", "1\tx\t2\tA.\tB."])
    )
    lines = text.split("\n")
    lines[broken + 1] = bad
    write_mrpc(tmp_path, "train", "\n".join(lines))
    with pytest.raises(data.MRPCFormatError, match=f"line {broken + 2}:"):
        data.load_mrpc("train", glue_dir=tmp_path, verbose=False)


def test_held_out_split_is_disjoint_seeded_and_keeps_the_source():
    whole = data.load_mrpc("train", source="generated", verbose=False)
    pairs = whole.select(range(50))
    fit, held_out = data.held_out_split(pairs, size=10, seed=3)
    assert (len(fit), len(held_out)) == (40, 10)
    ids = set(fit["idx"]) | set(held_out["idx"])
    assert ids == set(pairs["idx"])  # every pair once, none twice
    again = data.held_out_split(pairs, size=10, seed=3)[1]
    assert list(again["idx"]) == list(held_out["idx"])
    other = data.held_out_split(pairs, size=10, seed=4)[1]
    assert list(other["idx"]) != list(held_out["idx"])
    assert data.source_of(fit) == data.source_of(held_out) == "generated"


@pytest.mark.parametrize("size", [0, 50, 51, 2.5, "10"])
def test_held_out_split_needs_pairs_left_to_train_on(size):
    pairs = data.generate_paraphrase_pairs("train", size=50)
    with pytest.raises(ValueError, match="size"):
        data.held_out_split(pairs, size=size)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(1, 29), seed=st.integers(0, 2**31 - 1))
def test_any_held_out_split_partitions_the_pairs(size, seed):
    pairs = data.generate_paraphrase_pairs("train", size=30)
    fit, held_out = data.held_out_split(pairs, size=size, seed=seed)
    assert len(held_out) == size and len(fit) == 30 - size
    both = list(fit["idx"]) + list(held_out["idx"])
    assert sorted(both) == sorted(pairs["idx"])


@pytest.mark.parametrize("seed", [-1, 2.5, "0", None])
def test_held_out_split_names_a_bad_seed(seed):
    pairs = data.generate_paraphrase_pairs("train", size=30)
    with pytest.raises(ValueError, match="seed"):
        data.held_out_split(pairs, size=5, seed=seed)
