"""MRPC, the Microsoft Research Paraphrase Corpus (GLUE), offline first.

``load_mrpc(split)`` returns a ``datasets.Dataset`` with GLUE's columns
(``sentence1``, ``sentence2``, ``label``, ``idx``) from one of three sources,
tried in this order (the README's section "Data, the pretrained model and
the checkpoint cache"):

1. ``$GLUE_DIR/MRPC/{train,dev,test}.tsv``, the layout of the original BERT
   examples: a header line, tab-separated, UTF-8 with a byte-order mark,
   quote characters that are text (never quoting);
2. the datasets hub (``nyu-mll/glue``, ``mrpc``) when offline mode is off and
   the hub answers;
3. a paraphrase set the package generates: deterministic, labelled and
   MRPC-like (paraphrases by reordering and synonyms; non-paraphrases by
   swapped entities, changed numbers and negation).

One printed line says which source was used. GLUE's ``test.tsv`` has no
labels: its rows come back with ``label == -1``, as on the hub. A file that
is missing, truncated or malformed raises ``MRPCFormatError`` naming the file
and the line; no row is ever dropped silently. Taught in the chapter "The
MRPC worked example" (Dolan and Brockett 2005; GLUE, arXiv:1804.07461).
"""

from __future__ import annotations

import functools
import os
import pathlib
import random

import datasets

from .._validation import check_positive_int, check_seed

SPLITS = ("train", "dev", "test")
SOURCES = ("auto", "glue", "hub", "generated")
COLUMNS = ("sentence1", "sentence2", "label", "idx")
GLUE_SIZES = {"train": 3668, "dev": 408, "test": 1725}
"""Pairs in each split of GLUE's MRPC; the generated set has as many."""

_LABELLED_HEADER = ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String")
_TEST_HEADER = ("index", "#1 ID", "#2 ID", "#1 String", "#2 String")
_HUB_SPLITS = {"train": "train", "dev": "validation", "test": "test"}
SPLIT_ALIASES = {"validation": "dev"}
"""The datasets hub's names for GLUE's splits, accepted as the same split."""


PROSE_FILE = (
    pathlib.Path(__file__).resolve().parent / "texts" / "book_prose.txt"
)
"""The package's own long English text (see ``book_prose``)."""


@functools.lru_cache(maxsize=1)
def book_prose() -> str:
    """About 30,000 words of real English prose that ships with the package.

    The paragraphs of this book's chapters (maths written out, code and
    tables left out), frozen as a text file: a long document every reader
    has, offline, whatever MRPC's source. ``models.real_text_ids`` and
    ``models.long_text_inputs`` read it. Paragraphs are separated by blank
    lines.
    """
    return PROSE_FILE.read_text(encoding="utf-8")


class MRPCFormatError(ValueError):
    """An MRPC file that cannot be read as GLUE's layout; says where."""


def _split_name(split: object) -> str:
    """GLUE's name of ``split`` (``"validation"`` is ``"dev"``)."""
    name = SPLIT_ALIASES.get(split, split) if isinstance(split, str) else split
    if name not in SPLITS:
        names = SPLITS + tuple(SPLIT_ALIASES)
        raise ValueError(f"split must be one of {names}; got {split!r}.")
    return name


def load_mrpc(
    split: str,
    *,
    source: str = "auto",
    glue_dir: str | os.PathLike[str] | None = None,
    verbose: bool = True,
) -> datasets.Dataset:
    """Load one split of MRPC as a ``datasets.Dataset``.

    Args:
        split: ``"train"``, ``"dev"`` (or the hub's name, ``"validation"``)
            or ``"test"`` (GLUE's test set has no labels: every ``label`` is
            -1).
        source: ``"auto"`` (GLUE files if ``glue_dir`` or ``$GLUE_DIR`` is
            set, else the hub if reachable, else generated), or one of
            ``"glue"``, ``"hub"``, ``"generated"`` to insist on it.
        glue_dir: the folder holding ``MRPC/``; defaults to ``$GLUE_DIR``.
        verbose: print the one line that names the source.

    Returns:
        A Dataset with columns ``sentence1``, ``sentence2`` (str), ``label``
        (1 = paraphrase, 0 = not, -1 = unknown) and ``idx`` (int).

    Raises:
        ValueError: an unknown split or source, or ``source="glue"`` with no
            folder given.
        FileNotFoundError: the GLUE file is missing.
        MRPCFormatError: the GLUE file is truncated or malformed (names the
            file and the line).
        ConnectionError: ``source="hub"`` and the hub cannot be reached.
    """
    split = _split_name(split)
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}; got {source!r}.")
    folder = glue_dir if glue_dir is not None else os.environ.get("GLUE_DIR")
    if source == "glue" and not folder:
        raise ValueError(
            'source="glue" needs the folder that holds MRPC/: pass '
            "glue_dir=... or set the GLUE_DIR environment variable."
        )
    if source == "glue" or (source == "auto" and folder):
        path = pathlib.Path(folder).expanduser() / "MRPC" / f"{split}.tsv"
        dataset = read_glue_tsv(path, split)
        where = path if glue_dir is not None else f"$GLUE_DIR/MRPC/{split}.tsv"
        _notice(verbose, f"GLUE's file {where}", dataset, split)
        return _tagged(dataset, "glue")
    hub_error = None
    if source in ("auto", "hub"):
        try:
            dataset = _load_from_hub(split)
        except Exception as error:  # the hub's errors vary: offline, DNS, 404
            if source == "hub":
                raise ConnectionError(
                    f"could not load MRPC from the datasets hub: {error}"
                ) from error
            hub_error = error
        else:
            _notice(verbose, "the datasets hub (nyu-mll/glue)", dataset, split)
            return _tagged(dataset, "hub")
    dataset = generate_paraphrase_pairs(split)
    reason = "" if hub_error is None else f" (hub: {_short(hub_error)})"
    _notice(
        verbose,
        f"the package's generated paraphrase set{reason}; set GLUE_DIR "
        "for the real MRPC",
        dataset,
        split,
    )
    return _tagged(dataset, "generated")


_SOURCE_TAG = "efficient_attention.data.load_mrpc source: "


def _tagged(dataset: datasets.Dataset, source: str) -> datasets.Dataset:
    """Record in the dataset's info where its pairs came from."""
    dataset.info.description = _SOURCE_TAG + source
    return dataset


def source_of(dataset: datasets.Dataset) -> str:
    """Where ``load_mrpc`` found this dataset's pairs: ``"glue"``, ``"hub"``
    or ``"generated"`` (kept through ``select`` and ``map``), or
    ``"unknown"`` for a dataset it did not load.

    Chapters use it to check a claim that holds only for the real MRPC
    (and print why they skip it on the generated set).
    """
    description = getattr(getattr(dataset, "info", None), "description", "")
    if description and description.startswith(_SOURCE_TAG):
        return description[len(_SOURCE_TAG) :]
    return "unknown"


HELD_OUT_PAIRS = 408
"""Training pairs held out to choose the teacher's recipe on (as many as the
dev set has), so that the dev set is only ever reported."""


def held_out_split(
    dataset: datasets.Dataset, *, size: int = HELD_OUT_PAIRS, seed: int = 0
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Split ``size`` pairs off ``dataset`` at random (seeded), to choose
    settings on them while the dev set stays untouched.

    Returns:
        ``(fit, held_out)``: the pairs to train on and the ``size`` others.

    Raises:
        ValueError: ``size`` is not a positive int smaller than the dataset,
            or ``seed`` is not a valid seed.
    """
    size = check_positive_int("size", size)
    seed = check_seed("seed", seed)
    if size >= len(dataset):
        raise ValueError(
            f"size must leave pairs to train on: got {size} of "
            f"{len(dataset)} pairs; hold out fewer."
        )
    split = dataset.train_test_split(test_size=size, seed=seed)
    return _kept(split["train"], dataset), _kept(split["test"], dataset)


def _kept(part: datasets.Dataset, whole: datasets.Dataset) -> datasets.Dataset:
    """``part`` tagged with the source of the dataset it came from."""
    source = source_of(whole)
    return part if source == "unknown" else _tagged(part, source)


def read_glue_tsv(
    path: str | os.PathLike[str], split: str
) -> datasets.Dataset:
    """Read one MRPC file of GLUE's layout, refusing anything malformed.

    Args:
        path: the ``.tsv`` file.
        split: ``"test"`` for the unlabelled layout (``index`` first),
            anything else for the labelled one (``Quality`` first).

    Returns:
        The Dataset of ``load_mrpc``; ``idx`` counts rows from 0 (the
        ``index`` column for the test file).

    Raises:
        FileNotFoundError: no file at ``path``.
        MRPCFormatError: bad encoding, a wrong header, a wrong number of
            columns (a truncated file ends that way), a label other than 0
            or 1, an ID that is not a number, an empty sentence or line, or
            no rows at all; the message names the file and the line.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist. Point GLUE_DIR at the folder that holds "
            "MRPC/train.tsv, MRPC/dev.tsv and MRPC/test.tsv (GLUE's layout)."
        )
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = path.read_bytes()[: error.start].count(b"\n") + 1
        raise MRPCFormatError(
            f"{path}, line {line}: not valid UTF-8 ({error.reason})."
        ) from error
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline that ends the last row
    labelled = split != "test"
    expected = _LABELLED_HEADER if labelled else _TEST_HEADER
    if not lines:
        raise MRPCFormatError(f"{path} is empty; expected a header line.")
    header = tuple(lines[0].rstrip("\r").split("\t"))
    if header != expected:
        raise MRPCFormatError(
            f"{path}, line 1: expected the header {expected}; got {header}."
            + (
                " Is this the test file (no labels)? Load it as split='test'."
                if header == _TEST_HEADER
                else ""
            )
        )
    rows: dict[str, list] = {name: [] for name in COLUMNS}
    for number, line in enumerate(lines[1:], start=2):
        _parse_row(path, number, line.rstrip("\r"), labelled, rows)
    if not rows["idx"]:
        raise MRPCFormatError(f"{path} has a header but no rows.")
    if not labelled:
        rows["label"] = [-1] * len(rows["idx"])
    return datasets.Dataset.from_dict(rows)


def _parse_row(
    path: pathlib.Path,
    number: int,
    line: str,
    labelled: bool,
    rows: dict[str, list],
) -> None:
    where = f"{path}, line {number}"
    fields = line.split("\t")
    if len(fields) != 5:
        raise MRPCFormatError(
            f"{where}: expected 5 tab-separated columns; got {len(fields)}"
            " (a truncated file ends this way)."
            if line
            else f"{where}: empty line."
        )
    first, id1, id2, sentence1, sentence2 = fields
    if not (_is_number(id1) and _is_number(id2)):
        raise MRPCFormatError(
            f"{where}: the sentence IDs must be numbers; got {id1!r}, {id2!r}."
        )
    for column, sentence in (
        ("#1 String", sentence1),
        ("#2 String", sentence2),
    ):
        if not sentence.strip():
            raise MRPCFormatError(f"{where}: the sentence {column} is empty.")
    if labelled:
        if first not in ("0", "1"):
            raise MRPCFormatError(
                f"{where}: the label (Quality) must be 0 or 1; got {first!r}."
            )
        rows["label"].append(int(first))
        rows["idx"].append(len(rows["idx"]))
    else:
        if not _is_number(first):
            raise MRPCFormatError(
                f"{where}: the index must be a number; got {first!r}."
            )
        rows["idx"].append(int(first))
    rows["sentence1"].append(sentence1)
    rows["sentence2"].append(sentence2)


def _is_number(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also takes "²" or "١", which
    ``int`` then refuses or reads as another number."""
    return text.isascii() and text.isdigit()


def _load_from_hub(split: str) -> datasets.Dataset:
    if datasets.config.HF_HUB_OFFLINE:
        raise ConnectionError(
            "offline mode is on (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE)"
        )
    dataset = datasets.load_dataset(
        "nyu-mll/glue", "mrpc", split=_HUB_SPLITS[split]
    )
    return dataset.select_columns(list(COLUMNS))


def _notice(
    verbose: bool, source: str, dataset: datasets.Dataset, split: str
) -> None:
    if verbose:
        print(f"MRPC {split}: {len(dataset)} pairs from {source}.")


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}"[:120]


# The generated set: small templates filled from word lists. A paraphrase
# rewrites the same facts (another template of the same kind, synonyms); a
# non-paraphrase keeps the words close but changes one fact.

_COMPANIES = [
    "Acme Corp",
    "Globex",
    "Initech",
    "Umbrella Holdings",
    "Stark Industries",
    "Wayne Enterprises",
    "Hooli",
    "Vandelay Industries",
    "Soylent Inc",
    "Cyberdyne Systems",
    "Tyrell Corp",
    "Wonka Foods",
    "Oceanic Airlines",
    "Massive Dynamic",
    "Pied Piper",
    "Gringotts Bank",
]
_PEOPLE = [
    "John Smith",
    "Maria Garcia",
    "David Chen",
    "Sarah Johnson",
    "Ahmed Khan",
    "Laura Rossi",
    "Peter Novak",
    "Emily Brown",
    "Kenji Tanaka",
    "Anna Berg",
    "Carlos Diaz",
    "Grace Lee",
    "Tom Walsh",
    "Nina Petrova",
]
_CITIES = [
    "Boston",
    "Chicago",
    "Denver",
    "Seattle",
    "Atlanta",
    "Houston",
    "Dallas",
    "Miami",
    "Phoenix",
    "Detroit",
    "Portland",
    "Austin",
]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]
_METRICS = ["profit", "revenue", "net income", "sales", "earnings"]
_RISE = [("rose", "increased"), ("climbed", "grew"), ("jumped", "went up")]
_FALL = [("fell", "decreased"), ("dropped", "declined"), ("slid", "went down")]
_SAID = ["said", "announced", "reported", "stated"]
_ARREST = [("arrested", "detained"), ("charged", "accused")]
_CRIMES = ["fraud", "theft", "bribery", "tax evasion", "embezzlement"]
_BOUGHT = [("bought", "acquired"), ("purchased", "took over")]


def _facts(rng: random.Random, kind: str) -> dict[str, object]:
    facts: dict[str, object] = {
        "company": rng.choice(_COMPANIES),
        "other": rng.choice(_COMPANIES),
        "person": rng.choice(_PEOPLE),
        "city": rng.choice(_CITIES),
        "day": rng.choice(_DAYS),
        "metric": rng.choice(_METRICS),
        "said": rng.choice(_SAID),
        "crime": rng.choice(_CRIMES),
        "number": rng.randint(2, 95),
        "amount": rng.randint(11, 990),
        "up": rng.random() < 0.5,
        "negated": False,
    }
    while facts["other"] == facts["company"]:
        facts["other"] = rng.choice(_COMPANIES)
    facts["verbs"] = rng.choice(
        {
            "results": _RISE if facts["up"] else _FALL,
            "arrest": _ARREST,
            "deal": _BOUGHT,
        }[kind]
    )
    return facts


def _render(kind: str, f: dict[str, object], style: int, synonym: int) -> str:
    verb = f["verbs"][synonym]
    said = (
        f["said"]
        if synonym == 0
        else {
            "said": "stated",
            "announced": "said",
            "reported": "announced",
            "stated": "reported",
        }[f["said"]]
    )
    neg = f["negated"]
    if kind == "results":
        if neg:
            verb = (
                "did not "
                + {
                    "rose": "rise",
                    "increased": "increase",
                    "climbed": "climb",
                    "grew": "grow",
                    "jumped": "jump",
                    "went up": "go up",
                    "fell": "fall",
                    "decreased": "decrease",
                    "dropped": "drop",
                    "declined": "decline",
                    "slid": "slide",
                    "went down": "go down",
                }[verb]
            )
        if style == 0:
            return (
                f"{f['company']} {said} on {f['day']} that its quarterly "
                f"{f['metric']} {verb} {f['number']} percent to "
                f"${f['amount']} million."
            )
        return (
            f"On {f['day']}, {f['company']} {said} its {f['metric']} for "
            f"the quarter {verb} by {f['number']} percent, to "
            f"${f['amount']} million."
        )
    if kind == "arrest":
        verb = ("was not " if neg else "was ") + verb
        if style == 0:
            return (
                f"{f['person']}, a former executive of {f['company']}, "
                f"{verb} in {f['city']} on {f['day']} on {f['crime']} "
                "allegations, police said."
            )
        return (
            f"Police {said} {f['person']} {verb} on {f['day']} in "
            f"{f['city']} over alleged {f['crime']} while at "
            f"{f['company']}."
        )
    verb = ("has not " if neg else "") + verb
    if style == 0:
        return (
            f"{f['company']} {verb} a {f['number']} percent stake in "
            f"{f['other']} for ${f['amount']} million, it {said} "
            f"on {f['day']}."
        )
    return (
        f"On {f['day']} {f['company']} {said} it {verb} {f['number']} "
        f"percent of {f['other']}, paying ${f['amount']} million."
    )


def _change_one_fact(
    rng: random.Random, kind: str, f: dict[str, object]
) -> dict[str, object]:
    changed = dict(f)
    choices = ["negate", "number", "entity"]
    what = rng.choice(choices)
    if what == "negate":
        changed["negated"] = True
    elif what == "number" and kind != "arrest":
        key = rng.choice(["number", "amount"])
        changed[key] = int(f[key]) + rng.choice([-1, 1]) * rng.randint(1, 9)
    elif kind == "deal":
        changed["company"], changed["other"] = f["other"], f["company"]
    elif kind == "arrest":
        while changed["person"] == f["person"]:
            changed["person"] = rng.choice(_PEOPLE)
    else:
        while changed["company"] == f["company"]:
            changed["company"] = rng.choice(_COMPANIES)
    return changed


def generate_paraphrase_pairs(
    split: str, *, size: int | None = None, seed: int = 0
) -> datasets.Dataset:
    """Make an MRPC-like labelled set of sentence pairs, deterministically.

    About two thirds of the pairs are paraphrases (MRPC's balance): the same
    facts in another sentence structure with synonyms. The others change
    one fact: the entities swap or change, a number moves, or the verb is
    negated.

    Args:
        split: ``"train"``, ``"dev"`` (or ``"validation"``) or ``"test"``
            (each its own seed; the test split is labelled too).
        size: the number of pairs; defaults to GLUE's size of that split.
        seed: a base seed; the same arguments always give the same pairs.

    Returns:
        A Dataset with the columns of ``load_mrpc``.
    """
    split = _split_name(split)
    size = GLUE_SIZES[split] if size is None else size
    size = check_positive_int("size", size)
    rng = random.Random(f"mrpc-{split}-{seed}")
    rows: dict[str, list] = {name: [] for name in COLUMNS}
    for idx in range(size):
        kind = rng.choice(["results", "arrest", "deal"])
        facts = _facts(rng, kind)
        style = rng.randint(0, 1)
        label = int(rng.random() < 0.68)
        other = facts if label else _change_one_fact(rng, kind, facts)
        rows["sentence1"].append(_render(kind, facts, style, 0))
        rows["sentence2"].append(_render(kind, other, 1 - style, 1))
        rows["label"].append(label)
        rows["idx"].append(idx)
    return datasets.Dataset.from_dict(rows)
