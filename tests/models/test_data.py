"""Dataset loaders (`models.data`): generic format round trip, the shipped sample, and the real
KuaiRand-1K and Amazon Art-Office files in ``../shared/data`` checked against their READMEs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from models.corpus import Corpus, EvalSet, ItemTable, Sequences
from models.data import (
    load_amazon_art_office,
    load_corpus,
    load_generic,
    load_kuairand,
    shared_data_dir,
    write_generic,
)


def as_lists(seqs: Sequences) -> dict[str, list[str]]:
    return {user: list(items) for user, items, _ in seqs}


def isin(values: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Membership of str ids (np.isin on object arrays is a quadratic loop)."""
    known_set = set(known.tolist())
    return np.array([v in known_set for v in values.tolist()], dtype=bool)


def check_sequences(seqs: Sequences) -> None:
    """CSR invariants plus: every id is a str."""
    assert seqs.offsets[0] == 0
    assert (np.diff(seqs.offsets) >= 0).all()
    assert seqs.offsets[-1] == len(seqs.item_id) == len(seqs.surface)
    for col in (seqs.user_id, seqs.item_id, seqs.surface):
        assert col.dtype == object
        assert all(type(x) is str for x in col[:1000])


def check_eval(split: EvalSet) -> None:
    check_sequences(split.history)
    assert (split.history.lengths >= 1).all()
    assert len(split.target_item) == len(split.target_surface) == len(split.group) == len(split)


# ---------------------------------------------------------------------------------------------
# Generic format
# ---------------------------------------------------------------------------------------------


def write_interactions(directory: Path, **columns: pa.Array | list[object]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), directory / "interactions.parquet")


@pytest.fixture
def hand_made(tmp_path: Path) -> Path:
    """Integer ids, rows out of order, ts ties; user 7: 5 events, 8: 2 events, 9: 3 events."""
    rows = [  # (user, item, surface, ts)
        (7, 30, 1, 5),
        (9, 10, 2, 1),
        (7, 10, 1, 1),
        (8, 20, 2, 4),
        (7, 11, 2, 3),  # tie with the next row at ts=3: file order must be kept
        (7, 12, 2, 3),
        (9, 11, 1, 2),
        (8, 10, 1, 1),
        (7, 13, 1, 9),
        (9, 40, 1, 3),
    ]
    user, item, surface, ts = (list(col) for col in zip(*rows, strict=True))
    write_interactions(
        tmp_path,
        user_id=pa.array(user, pa.int64()),
        item_id=pa.array(item, pa.int32()),
        surface=pa.array(surface, pa.int8()),
        ts=pa.array(ts, pa.int64()),
    )
    items = pa.table(
        {
            "item_id": pa.array([10, 11, 12, 13, 20], pa.int64()),  # 30 and 40 missing
            "title": ["red shoe", "blue hat", None, "cap", "sock"],
            "brand": ["acme", None, "acme", "zed", "zed"],
            "price": [1.5, 2.0, 3.0, None, 4.0],
            "notes_text": ["a b", "c", "", "d", "e"],
        }
    )
    pq.write_table(items, tmp_path / "items.parquet")
    return tmp_path


def test_generic_leave_last_out_split(hand_made: Path) -> None:
    corpus = load_generic(hand_made)
    # Users sorted by id string; int ids became str; order by ts with ties in file order.
    assert as_lists(corpus.train) == {"7": ["10", "11", "12"], "8": ["10", "20"], "9": ["10"]}
    assert list(corpus.train.surface) == ["1", "2", "2", "1", "2", "2"]
    assert as_lists(corpus.valid.history) == {"7": ["10", "11", "12"], "9": ["10"]}
    assert list(corpus.valid.target_item) == ["30", "11"]
    assert list(corpus.valid.target_surface) == ["1", "1"]
    assert as_lists(corpus.test.history) == {"7": ["10", "11", "12", "30"], "9": ["10", "11"]}
    assert list(corpus.test.target_item) == ["13", "40"]
    assert list(corpus.test.group) == ["all", "all"]
    for split in (corpus.valid, corpus.test):
        check_eval(split)
    check_sequences(corpus.train)
    assert corpus.name == hand_made.name
    assert corpus.info["n_test"] == 2


def test_generic_items_fields_and_missing(hand_made: Path) -> None:
    items = load_generic(hand_made).items
    # items.parquet rows in file order, then interaction items it lacks, sorted by id.
    assert list(items.item_id) == ["10", "11", "12", "13", "20", "30", "40"]
    assert set(items.text) == {"title", "notes_text"}
    assert set(items.categorical) == {"brand", "price"}
    assert list(items.text["title"]) == ["red shoe", "blue hat", "", "cap", "sock", "", ""]
    assert list(items.categorical["brand"]) == ["acme", "", "acme", "zed", "zed", "", ""]
    assert list(items.categorical["price"]) == ["1.5", "2", "3", "", "4", "", ""]
    # No surface column: each item's most frequent interaction surface (ties: smallest).
    assert list(items.surface) == ["1", "1", "2", "1", "2", "1", "1"]

    explicit = load_generic(hand_made, text_fields=["brand"]).items
    assert set(explicit.text) == {"brand"}
    assert set(explicit.categorical) == {"title", "price", "notes_text"}
    with pytest.raises(ValueError, match="nope"):
        load_generic(hand_made, text_fields=["nope"])


def test_generic_without_items_file_and_string_ids(tmp_path: Path) -> None:
    write_interactions(
        tmp_path,
        user_id=["b", "a", "b", "b", "a"],
        item_id=["x", "y", "y", "z", "x"],
        surface=pa.array([None, 3, None, 3, 3], pa.int16()),
        ts=pa.array(np.array([1, 2, 3, 4, 5], dtype="datetime64[s]")),
    )
    corpus = load_generic(tmp_path)
    assert as_lists(corpus.train) == {"a": ["y", "x"], "b": ["x"]}
    assert list(corpus.valid.target_item) == ["y"]
    assert list(corpus.test.target_item) == ["z"]
    assert list(corpus.items.item_id) == ["x", "y", "z"]
    assert list(corpus.train.surface) == ["3", "3", ""]
    assert list(corpus.items.surface) == ["", "", "3"]  # x: "" and "3" tie, "" sorts first
    assert corpus.items.categorical == {} and corpus.items.text == {}


def test_write_generic_round_trip(tmp_path: Path) -> None:
    seqs = Sequences.from_lists(
        ["u1", "u0"],
        [["a", "b", "c", "d"], ["c", "a", "e"]],
        [["s", "t", "s", "s"], ["s", "s", "t"]],
    )
    items = ItemTable(
        item_id=np.array(["a", "b", "c", "d", "e", "f"], dtype=object),
        surface=np.array(["s", "t", "s", "s", "t", ""], dtype=object),
        categorical={"color": np.array(["r", "g", "", "b", "r", "g"], dtype=object)},
        text={"attributes": np.array(["x y", "", "z", "w", "v", "q"], dtype=object)},
    )
    write_generic(tmp_path, seqs, items)
    corpus = load_generic(tmp_path)
    assert as_lists(corpus.train) == {"u0": ["c"], "u1": ["a", "b"]}
    assert as_lists(corpus.valid.history) == {"u0": ["c"], "u1": ["a", "b"]}
    assert list(corpus.valid.target_item) == ["a", "c"]
    assert list(corpus.test.target_item) == ["e", "d"]
    assert list(corpus.test.target_surface) == ["t", "s"]
    assert list(corpus.items.item_id) == list(items.item_id)
    assert list(corpus.items.surface) == list(items.surface)
    # "attributes" is not a default text name: the field kinds travel in the file metadata.
    assert list(corpus.items.text) == ["attributes"]
    assert list(corpus.items.text["attributes"]) == list(items.text["attributes"])
    assert list(corpus.items.categorical["color"]) == list(items.categorical["color"])

    first = (tmp_path / "interactions.parquet").read_bytes()
    write_generic(tmp_path, seqs, items)
    assert (tmp_path / "interactions.parquet").read_bytes() == first


def test_generic_bad_input(tmp_path: Path) -> None:
    write_interactions(tmp_path / "no_ts", user_id=["a"], item_id=["x"])
    with pytest.raises(ValueError, match=r"interactions\.parquet.*\['ts'\]"):
        load_generic(tmp_path / "no_ts")

    write_interactions(tmp_path / "float_user", user_id=[1.5], item_id=["x"], ts=[1])
    with pytest.raises(ValueError, match="'user_id' has type double"):
        load_generic(tmp_path / "float_user")

    write_interactions(tmp_path / "str_ts", user_id=["a"], item_id=["x"], ts=["monday"])
    with pytest.raises(ValueError, match="'ts' has type string"):
        load_generic(tmp_path / "str_ts")

    write_interactions(tmp_path / "null_item", user_id=["a", "b"], item_id=["x", None], ts=[1, 2])
    with pytest.raises(ValueError, match="'item_id' has 1 null"):
        load_generic(tmp_path / "null_item")

    write_interactions(tmp_path / "bad_items", user_id=["a"], item_id=["x"], ts=[1])
    pq.write_table(pa.table({"id": ["x"]}), tmp_path / "bad_items" / "items.parquet")
    with pytest.raises(ValueError, match=r"items\.parquet.*\['item_id'\]"):
        load_generic(tmp_path / "bad_items")

    pq.write_table(pa.table({"item_id": ["x", "x"]}), tmp_path / "bad_items" / "items.parquet")
    with pytest.raises(ValueError, match="'x' appears more than once"):
        load_generic(tmp_path / "bad_items")

    with pytest.raises(FileNotFoundError, match="does_not_exist"):
        load_generic(tmp_path / "does_not_exist")
    with pytest.raises(FileNotFoundError, match="unknown corpus"):
        load_corpus(str(tmp_path / "does_not_exist"))


# ---------------------------------------------------------------------------------------------
# The shipped sample
# ---------------------------------------------------------------------------------------------


def test_sample_loads() -> None:
    corpus = load_corpus("sample")
    assert 200 <= len(corpus.train) <= 1000
    assert len(corpus.valid) == len(corpus.test) == len(corpus.train)  # all users have >= 20
    check_sequences(corpus.train)
    assert (corpus.train.lengths >= 18).all()
    for split in (corpus.valid, corpus.test):
        check_eval(split)
        assert isin(split.target_item, corpus.items.item_id).all()
    assert isin(corpus.train.item_id, corpus.items.item_id).all()
    assert list(corpus.items.item_id) == [str(i) for i in range(len(corpus.items))]
    assert set(corpus.items.surface) <= {"0", "1", "4", "7", "8", "9", "11"}
    assert str(corpus.info["license"]).startswith("Creative Commons Attribution-ShareAlike 4.0")
    # Dense enough to learn from: every item occurs at least 5 times in the sample.
    all_items = np.concatenate([corpus.test.history.item_id, corpus.test.target_item])
    assert np.unique(all_items, return_counts=True)[1].min() >= 5


# ---------------------------------------------------------------------------------------------
# KuaiRand-1K
# ---------------------------------------------------------------------------------------------


def write_kuairand_split(path: Path, seq_ids: list[int], items: list[list[int]]) -> None:
    domains = [[i % 3 for i in seq] for seq in items]  # domain = item % 3, -1 -> 2
    pq.write_table(
        pa.table(
            {
                "sequence_id": pa.array(seq_ids, pa.int32()),
                "item_ids": pa.array(items, pa.list_(pa.int32())),
                "domain_ids": pa.array(domains, pa.list_(pa.int8())),
            }
        ),
        path,
    )


def test_kuairand_format_on_tiny_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "kuairand-1k"
    root.mkdir()
    write_kuairand_split(root / "train.parquet", [0, 1], [[-1, 3, 4, -1, 3], [4, -1, 6, 7, 1]])
    write_kuairand_split(root / "valid.parquet", [5], [[-1, 3, 9, 4]])
    write_kuairand_split(root / "test.parquet", [6, 8], [[6, -1, 100], [1, 3]])
    monkeypatch.setenv("UNISERVE_SHARED_DATA", str(tmp_path))
    assert shared_data_dir() == tmp_path

    corpus = load_corpus("kuairand")
    assert as_lists(corpus.train) == {
        "train-0": ["3", "4", "3"],
        "train-1": ["4", "6", "7", "1"],
    }
    assert list(corpus.train.surface) == ["0", "1", "0", "1", "0", "1", "1"]
    assert list(corpus.items.item_id) == ["1", "3", "4", "6", "7"]  # train items, numeric order
    assert list(corpus.items.surface) == ["1", "0", "1", "0", "1"]
    assert as_lists(corpus.valid.history) == {"valid-5": ["3", "9"]}
    assert list(corpus.test.target_item) == ["100", "3"]
    assert list(corpus.test.target_surface) == ["1", "0"]
    assert corpus.info["license"] == "CC BY-SA 4.0"

    short = load_kuairand(root, max_len=2)
    assert as_lists(short.train) == {"train-0": ["4", "3"], "train-1": ["7", "1"]}
    assert list(short.items.item_id) == list(corpus.items.item_id)  # catalogue from full train
    with pytest.raises(ValueError, match="max_len must be >= 1"):
        load_kuairand(root, max_len=0)


@pytest.fixture(scope="module")
def kuairand() -> Corpus:
    root = shared_data_dir() / "kuairand-1k"
    if not root.is_dir():
        pytest.skip(f"KuaiRand-1K not found at {root}")
    return load_kuairand(root)


def test_kuairand_matches_readme(kuairand: Corpus) -> None:
    assert len(kuairand.train) == 3101
    assert len(kuairand.valid) == 1000 and len(kuairand.test) == 1000
    check_sequences(kuairand.train)
    check_eval(kuairand.valid)
    check_eval(kuairand.test)
    train_items = set(kuairand.train.item_id.tolist())
    assert "-1" not in train_items
    assert "-1" not in set(kuairand.test.history.item_id.tolist())
    assert "-1" not in set(kuairand.test.target_item.tolist())
    # 45 to 800 interactions per sequence after dropping -1.
    assert kuairand.train.lengths.min() >= 45 and kuairand.train.lengths.max() <= 800
    assert kuairand.test.history.lengths.min() >= 44
    # Catalogue: the distinct train items, about 730k.
    assert set(kuairand.items.item_id.tolist()) == train_items
    assert 725_000 <= len(kuairand.items) <= 735_000
    assert set(kuairand.train.surface.tolist()) == {"0", "1", "4", "7", "8", "9", "11"}
    assert set(kuairand.train.user_id.tolist()) == {f"train-{i}" for i in range(3101)}
    # 81% of valid/test targets occur in train.
    in_train = isin(kuairand.test.target_item, kuairand.items.item_id).mean()
    assert 0.80 <= in_train <= 0.82


# ---------------------------------------------------------------------------------------------
# Amazon Art-Office
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def amazon() -> Corpus:
    root = shared_data_dir() / "amazon-art-office-urllm"
    if not root.is_dir():
        pytest.skip(f"Amazon Art-Office not found at {root}")
    return load_amazon_art_office(root)


def test_amazon_matches_readme(amazon: Corpus) -> None:
    items = amazon.items
    assert len(items) == 38_396
    assert list(items.item_id[[0, 18_638, 18_639, 38_395]]) == ["0", "18638", "18639", "38395"]
    assert (items.surface[:18_639] == "art").all() and (items.surface[18_639:] == "office").all()
    assert set(items.text) == {"title", "attributes"} and items.categorical == {}
    assert all(items.text["title"]) and all(items.text["attributes"])
    assert items.text["attributes"][0].startswith("arts crafts sewing")

    assert len(amazon.train) == 16_000
    assert len(amazon.valid) == 1_154 and len(amazon.test) == 2_000
    assert list(amazon.train.user_id[:4]) == ["0-0", "0-1", "1-0", "1-1"]
    check_sequences(amazon.train)
    assert amazon.train.lengths.min() >= 9 and amazon.train.lengths.max() <= 29
    for split in (amazon.valid, amazon.test):
        check_eval(split)
        assert (split.group == split.target_surface).all()
        # The second line of each user always has an Art target.
        assert (split.group[1::2] == "art").all()
    groups, counts = np.unique(amazon.test.group, return_counts=True)
    assert dict(zip(groups, counts, strict=True)) == {"art": 1_050, "office": 950}

    # Over all files: first-line targets are Office for 9,162 users and Art for 415.
    first_line_targets = np.concatenate(
        [
            amazon.train.item_id[amazon.train.offsets[1::2] - 1],
            amazon.valid.target_item[0::2],
            amazon.test.target_item[0::2],
        ]
    ).astype(int)
    assert (first_line_targets >= 18_639).sum() == 9_162
    assert (first_line_targets < 18_639).sum() == 415

    seen = np.unique(
        np.concatenate(
            [
                amazon.train.item_id,
                amazon.valid.history.item_id,
                amazon.valid.target_item,
                amazon.test.history.item_id,
                amazon.test.target_item,
            ]
        ).astype(int)
    )
    assert len(seen) == 33_425 and (seen < 18_639).sum() == 18_127
    assert isin(amazon.train.item_id, items.item_id).all()
