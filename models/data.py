"""Dataset loaders: KuaiRand-1K, Amazon Art-Office and the generic Parquet format, as a `Corpus`.

Every loader returns the containers of `models.corpus` with string ids. The heavy lifting is
vectorised (flat NumPy arrays plus CSR offsets); integer ids are converted to strings once per
distinct value, so a 2M-event split loads in a few seconds.

The generic format (what any team exports to train uniserve on its own data):

``interactions.parquet`` (required)
    ``user_id`` (string or integer), ``item_id`` (string or integer), ``ts`` (integer or
    timestamp; orders events within a user, ties keep file order) and optionally ``surface``
    (string or integer; missing or null means "").
``items.parquet`` (optional)
    ``item_id``, optionally ``surface``, and any other columns as item metadata. Text
    (bag-of-tokens) fields are the ``text_fields`` passed to `load_generic`, else the list stored
    by `write_generic` in the file's schema metadata (key ``uniserve:text_fields``), else the
    columns named ``title``, ``description``, ``text``, ``tags`` or ending in ``_text``. Every
    other column is categorical. Values become strings, null becomes "".

The split is leave-last-out per user: the last event is the test target, the second-to-last the
valid target (its history is every event before it), and train keeps all but the last two events.
Users with fewer than 3 events go to train only.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from models.corpus import Corpus, EvalSet, ItemTable, Sequences

SAMPLE_DIR = Path(__file__).parent / "sample"
SHARED_DATA_ENV = "UNISERVE_SHARED_DATA"

KUAIRAND_LICENSE = "CC BY-SA 4.0"
KUAIRAND_SOURCE = (
    "KuaiRand-1K (Gao et al., CIKM 2022) as preprocessed by snap-research/AutoCDSR "
    "(Ju et al., KDD 2025)"
)
AMAZON_LICENSE = (
    "Amazon Review Data (2018), research use only, not redistributable; "
    "URLLM repository has no licence file"
)
AMAZON_SOURCE = (
    "Amazon Art-Office from TingJShen/URLLM (Shen et al., arXiv:2406.03085), "
    "built from Amazon Review Data 2018 (Ni, Li and McAuley, EMNLP 2019)"
)
AMAZON_FIRST_OFFICE_ITEM = 18639  # Art items are 0..18638, Office items 18639..38395

DEFAULT_TEXT_FIELDS = ("title", "description", "text", "tags")
TEXT_FIELDS_METADATA_KEY = b"uniserve:text_fields"
INTERACTIONS_FILE = "interactions.parquet"
ITEMS_FILE = "items.parquet"


def shared_data_dir() -> Path:
    """The shared data folder: ``$UNISERVE_SHARED_DATA``, else ``shared/data`` beside the repo."""
    env = os.environ.get(SHARED_DATA_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


# ---------------------------------------------------------------------------------------------
# Vectorised helpers
# ---------------------------------------------------------------------------------------------


def _to_str_ids(values: np.ndarray) -> np.ndarray:
    """Object array of ``str(v)`` for each value, converting each distinct value once."""
    uniq, inverse = np.unique(values, return_inverse=True)  # (K,), (N,)
    names = np.array([str(v) for v in uniq.tolist()], dtype=object)  # (K,)
    return names[inverse.reshape(-1)]  # (N,) str


def _offsets(lengths: np.ndarray) -> np.ndarray:
    """CSR offsets (U + 1,) int64 from per-row lengths (U,)."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)  # (U + 1,)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def _row_of_event(offsets: np.ndarray) -> np.ndarray:
    """Row index of every event (E,) from CSR offsets (U + 1,)."""
    return np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))  # (E,)


def _position_from_end(offsets: np.ndarray) -> np.ndarray:
    """For every event, how many events of its row come after it (0 for the last one)."""
    row = _row_of_event(offsets)  # (E,)
    return offsets[1:][row] - np.arange(int(offsets[-1])) - 1  # (E,)


def most_frequent(keys: np.ndarray, values: np.ndarray, n_keys: int) -> np.ndarray:
    """For integer codes ``keys`` (E,) in [0, n_keys) and ``values`` (E,) >= 0, the most frequent
    value of each key (ties: the smallest value; keys never seen: -1)."""
    if len(keys) != len(values):
        raise ValueError(f"keys has {len(keys)} entries but values has {len(values)}")
    best = np.full(n_keys, -1, dtype=np.int64)  # (K,)
    if len(keys) == 0:
        return best
    keys = keys.astype(np.int64)
    values = values.astype(np.int64)
    n_values = int(values.max()) + 1
    pairs, counts = np.unique(keys * n_values + values, return_counts=True)  # (P,), (P,)
    pair_key, pair_value = pairs // n_values, pairs % n_values  # (P,), (P,)
    order = np.lexsort((pair_value, -counts, pair_key))  # key, then count desc, then value asc
    pair_key, pair_value = pair_key[order], pair_value[order]
    first = np.ones(len(pair_key), dtype=bool)  # (P,)
    first[1:] = pair_key[1:] != pair_key[:-1]
    best[pair_key[first]] = pair_value[first]
    return best


def _keep_events(
    offsets: np.ndarray, keep: np.ndarray, *arrays: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Drop events where ``keep`` (E,) is False: new offsets, then each array filtered."""
    row = _row_of_event(offsets)  # (E,)
    lengths = np.bincount(row[keep], minlength=len(offsets) - 1)  # (U,)
    return (_offsets(lengths), *(a[keep] for a in arrays))


def _split_last(
    user_id: np.ndarray,
    offsets: np.ndarray,
    item_id: np.ndarray,
    surface: np.ndarray,
    group: np.ndarray | None = None,
) -> EvalSet:
    """EvalSet whose target is each row's last event and whose history is the rest."""
    lengths = np.diff(offsets)  # (U,)
    if len(lengths) and int(lengths.min()) < 2:
        bad = user_id[int(np.argmin(lengths))]
        raise ValueError(f"sequence of user {bad!r} has {int(lengths.min())} events, need >= 2")
    last = offsets[1:] - 1  # (U,)
    keep = np.ones(len(item_id), dtype=bool)  # (E,)
    keep[last] = False
    history = Sequences(user_id, offsets - np.arange(len(offsets)), item_id[keep], surface[keep])
    if group is None:
        group = np.full(len(user_id), "all", dtype=object)  # (U,)
    return EvalSet(history, item_id[last], surface[last], group)


# ---------------------------------------------------------------------------------------------
# KuaiRand-1K
# ---------------------------------------------------------------------------------------------


def _read_kuairand_split(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One KuaiRand parquet file as (sequence_id (U,), offsets (U+1,), items (E,), domains (E,)),
    integer arrays with the -1 (out-of-vocabulary) positions removed."""
    if not path.is_file():
        raise FileNotFoundError(f"KuaiRand split file {str(path)!r} does not exist")
    table = pq.read_table(path, columns=["sequence_id", "item_ids", "domain_ids"])
    items_col, domains_col = table.column("item_ids"), table.column("domain_ids")
    lengths = pc.list_value_length(items_col).to_numpy(zero_copy_only=False)  # (U,)
    domain_lengths = pc.list_value_length(domains_col).to_numpy(zero_copy_only=False)  # (U,)
    if not np.array_equal(lengths, domain_lengths):
        raise ValueError(f"{str(path)!r}: item_ids and domain_ids lists differ in length")
    items = pc.list_flatten(items_col).to_numpy(zero_copy_only=False)  # (E,) int32
    domains = pc.list_flatten(domains_col).to_numpy(zero_copy_only=False)  # (E,) int8
    seq_id = table.column("sequence_id").to_numpy(zero_copy_only=False)  # (U,)
    offsets, items, domains = _keep_events(_offsets(lengths), items != -1, items, domains)
    return seq_id, offsets, items, domains


def load_kuairand(root: Path | None = None, *, max_len: int | None = None) -> Corpus:
    """KuaiRand-1K cross-surface sequences (AutoCDSR preprocessing) from ``root``.

    ``root`` defaults to ``<shared data>/kuairand-1k``. Train sequences are kept whole (or their
    last ``max_len`` events); each valid/test sequence gives one example whose target is its last
    event. The item catalogue is every item seen in train, in increasing numeric id order, with
    the item's most frequent surface there; valid/test targets absent from train stay unknown.
    Surfaces are the domain ids as strings ("9", "4"...); user ids are ``f"{split}-{seq_id}"``.
    """
    if max_len is not None and max_len < 1:
        raise ValueError(f"max_len must be >= 1 or None, got {max_len!r}")
    root = Path(root) if root is not None else shared_data_dir() / "kuairand-1k"
    splits = {
        name: _read_kuairand_split(root / f"{name}.parquet") for name in ("train", "valid", "test")
    }

    # One string per distinct item / domain over all splits, then plain fancy indexing.
    all_items = np.concatenate([s[2] for s in splits.values()])  # (E_all,)
    all_domains = np.concatenate([s[3] for s in splits.values()])  # (E_all,)
    item_names, item_code = np.unique(all_items, return_inverse=True)  # (I,), (E_all,)
    domain_names, domain_code = np.unique(all_domains, return_inverse=True)  # (D,), (E_all,)
    item_str = np.array([str(v) for v in item_names.tolist()], dtype=object)  # (I,)
    domain_str = np.array([str(v) for v in domain_names.tolist()], dtype=object)  # (D,)

    corpus_parts: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
    start = 0
    for name, (seq_id, offsets, _, _) in splits.items():
        stop = start + int(offsets[-1])
        user_id = np.array([f"{name}-{s}" for s in seq_id.tolist()], dtype=object)  # (U,)
        corpus_parts[name] = (user_id, offsets, item_code[start:stop], domain_code[start:stop])
        start = stop

    # Catalogue: items seen in train (whole sequences, before any max_len cut).
    train_user, train_offsets, train_items, train_domains = corpus_parts["train"]
    surface_of_item = most_frequent(train_items, train_domains, len(item_names))  # (I,)
    catalogue = np.flatnonzero(surface_of_item >= 0)  # (N,) item codes, numeric id order
    items = ItemTable(item_id=item_str[catalogue], surface=domain_str[surface_of_item[catalogue]])

    if max_len is not None:
        keep = _position_from_end(train_offsets) < max_len  # (E,)
        train_offsets, train_items, train_domains = _keep_events(
            train_offsets, keep, train_items, train_domains
        )
    train = Sequences(train_user, train_offsets, item_str[train_items], domain_str[train_domains])
    evals = {
        name: _split_last(user, offsets, item_str[codes], domain_str[doms])
        for name, (user, offsets, codes, doms) in corpus_parts.items()
        if name != "train"
    }
    info: dict[str, object] = {
        "source": KUAIRAND_SOURCE,
        "license": KUAIRAND_LICENSE,
        "root": str(root),
        "max_len": max_len,
        **_counts(items, train, evals["valid"], evals["test"]),
    }
    return Corpus("kuairand-1k", items, train, evals["valid"], evals["test"], info)


def _counts(items: ItemTable, train: Sequences, valid: EvalSet, test: EvalSet) -> dict[str, int]:
    """The summary counts every loader puts in ``Corpus.info``."""
    return {
        "n_items": len(items),
        "n_train_sequences": len(train),
        "n_train_events": int(train.offsets[-1]),
        "n_valid": len(valid),
        "n_test": len(test),
    }


# ---------------------------------------------------------------------------------------------
# Amazon Art-Office (URLLM)
# ---------------------------------------------------------------------------------------------


def _amazon_surface(ids: np.ndarray) -> np.ndarray:
    """Surface of Amazon item ids (N,) int: "art" below 18639, else "office" -> (N,) str."""
    return np.where(ids < AMAZON_FIRST_OFFICE_ITEM, "art", "office").astype(object)  # (N,)


def _read_amazon_sequences(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One C2DSR-format interaction file as (user ids (L,) "user-k", offsets (L+1,), items (E,)).

    Each line is ``user_id <tab> n <tab> item|pos|pos <tab> ... <tab>``; ``k`` numbers the lines
    of one user (0, 1).
    """
    if not path.is_file():
        raise FileNotFoundError(f"Amazon interaction file {str(path)!r} does not exist")
    user_ids: list[str] = []
    lengths: list[int] = []
    items: list[int] = []
    previous_user, line_of_user = "", 0
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            fields = line.rstrip("\r\n").rstrip("\t").split("\t")
            if len(fields) < 3:
                raise ValueError(
                    f"{str(path)!r} line {line_no}: expected >= 3 fields, got {line!r}"
                )
            user = fields[0]
            line_of_user = line_of_user + 1 if user == previous_user else 0
            previous_user = user
            try:
                entry_items = [int(entry.split("|", 1)[0]) for entry in fields[2:]]
            except ValueError as err:
                raise ValueError(f"{str(path)!r} line {line_no}: bad entry in {line!r}") from err
            user_ids.append(f"{user}-{line_of_user}")
            lengths.append(len(entry_items))
            items.extend(entry_items)
    return (
        np.array(user_ids, dtype=object),  # (L,)
        _offsets(np.array(lengths, dtype=np.int64)),  # (L + 1,)
        np.array(items, dtype=np.int64),  # (E,)
    )


def _read_amazon_items(paths: Sequence[Path]) -> ItemTable:
    """Item table from the URLLM item CSVs (idBefore,item_title,idAfter,item_attribute)."""
    ids: list[int] = []
    titles: list[str] = []
    attributes: list[str] = []
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"Amazon item file {str(path)!r} does not exist")
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            missing = {"item_title", "idAfter", "item_attribute"} - set(reader.fieldnames or ())
            if missing:
                raise ValueError(f"{str(path)!r} lacks column(s) {sorted(missing)}")
            for row in reader:
                ids.append(int(row["idAfter"]))
                titles.append(row["item_title"] or "")
                attributes.append(row["item_attribute"] or "")
    id_array = np.array(ids, dtype=np.int64)  # (N,)
    order = np.argsort(id_array, kind="stable")  # (N,)
    id_array = id_array[order]
    return ItemTable(
        item_id=np.array([str(v) for v in id_array.tolist()], dtype=object),  # (N,)
        surface=_amazon_surface(id_array),
        text={
            "title": np.array(titles, dtype=object)[order],  # (N,)
            "attributes": np.array(attributes, dtype=object)[order],  # (N,)
        },
    )


def load_amazon_art_office(root: Path | None = None) -> Corpus:
    """Amazon Art-Office cross-domain sequences with item titles and attributes (URLLM files).

    ``root`` defaults to ``<shared data>/amazon-art-office-urllm``. Each line of
    ``traindata_new.txt`` becomes one train sequence (history plus target), so every train user
    gives two sequences ``f"{user}-0"`` and ``f"{user}-1"``; each line of the valid/test files is
    one example whose target is its last entry, grouped "art" or "office" by the target's domain
    (user ids numbered the same way, so each valid/test user gives two examples).
    Surfaces are "art" (ids 0..18638) and "office" (18639..38395). The catalogue is all 38,396
    items of the two item CSVs, with text fields ``title`` and ``attributes``.
    Research use only: these files are not redistributable.
    """
    root = Path(root) if root is not None else shared_data_dir() / "amazon-art-office-urllm"
    items = _read_amazon_items([root / "item_listA_F.csv", root / "item_listO_AA_F.csv"])

    def read(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        user, offsets, ids = _read_amazon_sequences(root / name)
        return user, offsets, _to_str_ids(ids), _amazon_surface(ids)

    train = Sequences(*read("traindata_new.txt"))
    evals = {}
    for split in ("valid", "test"):
        user, offsets, item_id, surface = read(f"{split}data_new.txt")
        evals[split] = _split_last(user, offsets, item_id, surface, group=surface[offsets[1:] - 1])
    info: dict[str, object] = {
        "source": AMAZON_SOURCE,
        "license": AMAZON_LICENSE,
        "root": str(root),
        **_counts(items, train, evals["valid"], evals["test"]),
    }
    return Corpus("amazon-art-office", items, train, evals["valid"], evals["test"], info)


# ---------------------------------------------------------------------------------------------
# Generic format
# ---------------------------------------------------------------------------------------------


def _check_id_type(
    col: pa.ChunkedArray, name: str, path: Path, *, allow_null: bool = False
) -> pa.ChunkedArray:
    """A string-or-integer column (dictionary columns decoded) without nulls unless
    ``allow_null``, else ValueError."""
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    if not (
        pa.types.is_integer(col.type)
        or pa.types.is_string(col.type)
        or pa.types.is_large_string(col.type)
    ):
        raise ValueError(
            f"{str(path)!r}: column {name!r} has type {col.type}, expected string or int"
        )
    if col.null_count and not allow_null:
        raise ValueError(f"{str(path)!r}: column {name!r} has {col.null_count} null value(s)")
    return col


def _encode(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Hash-encode a string-or-integer column: (distinct values as str, sorted (K,); code of each
    row (E,) int64). Only the K distinct values become Python strings."""
    encoded = pc.dictionary_encode(col.combine_chunks())
    dictionary = encoded.dictionary.cast(pa.string())  # (K,) str(int) for integer columns
    order = pc.sort_indices(dictionary).to_numpy()  # (K,) UTF-8 byte order == code point order
    rank = np.empty(len(order), dtype=np.int64)  # (K,)
    rank[order] = np.arange(len(order))
    names = dictionary.take(order).to_numpy(zero_copy_only=False).astype(object)  # (K,)
    codes = rank[encoded.indices.to_numpy(zero_copy_only=False)]  # (E,)
    return names, codes


def _str_column(col: pa.ChunkedArray) -> np.ndarray:
    """Any metadata column as an object array of str, null -> ""; lists are joined by spaces."""
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        col = pc.binary_join(col.cast(pa.list_(pa.string())), " ")
    try:
        as_str = col.cast(pa.string())
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
        values = ["" if v is None else str(v) for v in col.to_pylist()]
        return np.array(values, dtype=object)  # (N,)
    return pc.fill_null(as_str, "").to_numpy(zero_copy_only=False).astype(object)  # (N,)


def _read_parquet(path: Path, required: Sequence[str]) -> pa.Table:
    """Read a Parquet file and check it has the ``required`` columns."""
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise ValueError(f"{str(path)!r} is not a readable Parquet file: {err}") from err
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise ValueError(
            f"{str(path)!r} lacks required column(s) {missing}; it has {table.column_names}"
        )
    return table


def _read_interactions(path: Path) -> dict[str, np.ndarray]:
    """The interaction columns, in file order: ``{user,item,surface}_names`` (sorted distinct
    str), ``{user,item,surface}_code`` (E,) int64 codes into them, and ``ts`` (E,) int64."""
    table = _read_parquet(path, ["user_id", "item_id", "ts"])
    columns: dict[str, np.ndarray] = {}
    for key, name in (("user", "user_id"), ("item", "item_id"), ("surface", "surface")):
        if name == "surface" and name not in table.column_names:
            col = pa.chunked_array([pa.array([""] * table.num_rows, pa.string())])
        elif name == "surface":  # optional: nulls mean ""
            col = _check_id_type(table.column(name), name, path, allow_null=True)
            col = pc.fill_null(col.cast(pa.string()), "")
        else:
            col = _check_id_type(table.column(name), name, path)
        columns[f"{key}_names"], columns[f"{key}_code"] = _encode(col)
    ts_col = table.column("ts")
    if not (pa.types.is_integer(ts_col.type) or pa.types.is_timestamp(ts_col.type)):
        raise ValueError(
            f"{str(path)!r}: column 'ts' has type {ts_col.type}, expected integer or timestamp"
        )
    if ts_col.null_count:
        raise ValueError(f"{str(path)!r}: column 'ts' has {ts_col.null_count} null value(s)")
    columns["ts"] = ts_col.cast(pa.int64()).to_numpy(zero_copy_only=False)  # (E,) int64
    return columns


def _text_field_names(
    table: pa.Table, metadata_cols: list[str], text_fields: Sequence[str] | None, path: Path
) -> set[str]:
    """Which metadata columns are text: explicit argument, then file metadata, then names."""
    if text_fields is not None:
        unknown = [f for f in text_fields if f not in metadata_cols]
        if unknown:
            raise ValueError(
                f"{str(path)!r}: text field(s) {unknown} are not metadata columns {metadata_cols}"
            )
        return set(text_fields)
    stored = (table.schema.metadata or {}).get(TEXT_FIELDS_METADATA_KEY)
    if stored is not None:
        return {f for f in json.loads(stored) if f in metadata_cols}
    return {c for c in metadata_cols if c in DEFAULT_TEXT_FIELDS or c.endswith("_text")}


def load_generic(directory: Path, *, text_fields: Sequence[str] | None = None) -> Corpus:
    """A dataset in the generic format (see the module docstring) split leave-last-out per user.

    Users are ordered by id string; each user's events by ``ts`` with ties in file order. The
    catalogue is the ``items.parquet`` rows in file order (or, without that file, the distinct
    interaction items sorted by id), followed by interaction items missing from it (sorted by
    id, empty metadata). An item's surface defaults to its most frequent interaction surface.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"dataset directory {str(directory)!r} does not exist")
    inter_path = directory / INTERACTIONS_FILE
    if not inter_path.is_file():
        raise FileNotFoundError(f"{str(inter_path)!r} does not exist")
    cols = _read_interactions(inter_path)
    user_names, item_names, surface_names = (
        cols["user_names"],
        cols["item_names"],
        cols["surface_names"],
    )

    # Group by user (sorted id string), then by ts, stable so ties keep file order.
    order = np.argsort(cols["ts"], kind="stable")  # (E,)
    order = order[np.argsort(cols["user_code"][order], kind="stable")]  # (E,)
    item_code, surface_code = cols["item_code"][order], cols["surface_code"][order]  # (E,)
    offsets = _offsets(np.bincount(cols["user_code"], minlength=len(user_names)))  # (U + 1,)
    item, surface = item_names[item_code], surface_names[surface_code]  # (E,) str

    best = most_frequent(item_code, surface_code, len(item_names))  # (I,)
    items = _generic_items(directory / ITEMS_FILE, item_names, surface_names[best], text_fields)

    # Leave-last-out: from the end, 0 is the test target, 1 the valid target.
    lengths = np.diff(offsets)  # (U,)
    from_end = _position_from_end(offsets)  # (E,)
    evaluated = (lengths >= 3)[_row_of_event(offsets)]  # (E,)
    train_offsets, train_item, train_surface = _keep_events(
        offsets, ~evaluated | (from_end >= 2), item, surface
    )
    train = Sequences(user_names, train_offsets, train_item, train_surface)
    eval_users = np.flatnonzero(lengths >= 3)  # (V,)
    _, test_item, test_surface = _keep_events(offsets, evaluated, item, surface)
    test_offsets = _offsets(lengths[eval_users])  # (V + 1,)
    test = _split_last(user_names[eval_users], test_offsets, test_item, test_surface)
    valid_offsets, valid_item, valid_surface = _keep_events(
        test_offsets, _position_from_end(test_offsets) >= 1, test_item, test_surface
    )
    valid = _split_last(user_names[eval_users], valid_offsets, valid_item, valid_surface)
    info: dict[str, object] = {
        "source": str(directory),
        "format": "generic",
        "n_users": len(user_names),
        **_counts(items, train, valid, test),
    }
    license_file = directory / "LICENSE"
    if license_file.is_file():
        info["license"] = license_file.read_text(encoding="utf-8").splitlines()[0].strip()
    return Corpus(directory.name, items, train, valid, test, info)


def _generic_items(
    path: Path,
    item_names: np.ndarray,
    item_surface: np.ndarray,
    text_fields: Sequence[str] | None,
) -> ItemTable:
    """The catalogue for `load_generic`, given the distinct interaction items (I,) str (sorted)
    and each one's most frequent interaction surface (I,) str."""
    if not path.is_file():
        return ItemTable(item_id=item_names, surface=item_surface)

    table = _read_parquet(path, ["item_id"])
    col = _check_id_type(table.column("item_id"), "item_id", path)
    item_id = _str_column(col)  # (N,)
    listed = set(item_id.tolist())  # sets, not np.isin: that is quadratic on object arrays
    if len(listed) != len(item_id):
        dup = Counter(item_id.tolist()).most_common(1)[0][0]
        raise ValueError(f"{str(path)!r}: item_id {dup!r} appears more than once")
    seen_surface = dict(zip(item_names.tolist(), item_surface.tolist(), strict=True))
    surface = np.array([seen_surface.get(i, "") for i in item_id.tolist()], dtype=object)  # (N,)
    if "surface" in table.column_names:  # given surfaces win; null ones fall back to the above
        given = table.column("surface")
        surface = np.where(
            given.is_null().to_numpy(zero_copy_only=False), surface, _str_column(given)
        )  # (N,)
    metadata_cols = [c for c in table.column_names if c not in ("item_id", "surface")]
    text_names = _text_field_names(table, metadata_cols, text_fields, path)
    columns = {c: _str_column(table.column(c)) for c in metadata_cols}  # field -> (N,)

    missing = np.array([i not in listed for i in item_names.tolist()], dtype=bool)  # (I,)
    if missing.any():
        blank = np.full(int(missing.sum()), "", dtype=object)  # (M,)
        item_id = np.concatenate([item_id, item_names[missing]])  # (N + M,)
        surface = np.concatenate([surface, item_surface[missing]])  # (N + M,)
        columns = {c: np.concatenate([v, blank]) for c, v in columns.items()}
    return ItemTable(
        item_id=item_id,
        surface=surface,
        categorical={c: v for c, v in columns.items() if c not in text_names},
        text={c: v for c, v in columns.items() if c in text_names},
    )


def write_generic(directory: Path, sequences: Sequences, items: ItemTable) -> None:
    """Write ``sequences`` and ``items`` in the generic format (``ts`` = position in sequence).

    The text field names go in ``items.parquet``'s schema metadata, so `load_generic` reads them
    back as text whatever they are called. Files are zstd-compressed and byte-for-byte
    deterministic for the same input.
    """
    directory = Path(directory)
    reserved = {"item_id", "surface"} & (set(items.categorical) | set(items.text))
    if reserved:
        raise ValueError(f"item metadata fields may not be named {sorted(reserved)}")
    both = set(items.categorical) & set(items.text)
    if both:
        raise ValueError(f"fields {sorted(both)} are both categorical and text")
    directory.mkdir(parents=True, exist_ok=True)
    lengths = sequences.lengths  # (U,)
    ts = np.arange(int(sequences.offsets[-1]), dtype=np.int64) - np.repeat(
        sequences.offsets[:-1], lengths
    )  # (E,) position within the user's sequence
    interactions = pa.table(
        {
            "user_id": pa.array(np.repeat(sequences.user_id, lengths).tolist(), pa.string()),
            "item_id": pa.array(sequences.item_id.tolist(), pa.string()),
            "surface": pa.array(sequences.surface.tolist(), pa.string()),
            "ts": pa.array(ts, pa.int64()),
        }
    )
    pq.write_table(interactions, directory / INTERACTIONS_FILE, compression="zstd")
    columns = {
        "item_id": items.item_id,
        "surface": items.surface,
        **items.categorical,
        **items.text,
    }
    item_table = pa.table({k: pa.array(v.tolist(), pa.string()) for k, v in columns.items()})
    item_table = item_table.replace_schema_metadata(
        {TEXT_FIELDS_METADATA_KEY: json.dumps(list(items.text)).encode()}
    )
    pq.write_table(item_table, directory / ITEMS_FILE, compression="zstd")


# ---------------------------------------------------------------------------------------------
# Dispatch
# ---------------------------------------------------------------------------------------------


S3REC_DATASETS = {"amazon-sports": "sports", "amazon-toys": "toys"}  # name -> folder


NAMED_CORPORA = ("kuairand", "kuairand-1k", "amazon-art-office", *S3REC_DATASETS, "sample")


def s3rec_path(name: str, root: Path | None = None) -> Path:
    """The folder of S3-Rec dataset `name` ("amazon-sports" / "amazon-toys") under `root`
    (default ``shared/data/amazon-s3rec``)."""
    if name not in S3REC_DATASETS:
        raise ValueError(f"unknown S3-Rec dataset {name!r}: expected one of {list(S3REC_DATASETS)}")
    return (root or shared_data_dir() / "amazon-s3rec") / S3REC_DATASETS[name]


def load_s3rec(name: str, root: Path | None = None) -> Corpus:
    """Amazon Sports or Toys (S3-Rec 5-core), generic format with ``tags`` metadata, read from
    ``shared/data/amazon-s3rec/<folder>`` (never copied into the repository)."""
    path = s3rec_path(name, root)
    if not (path / INTERACTIONS_FILE).is_file():
        raise FileNotFoundError(
            f"{name}: {path / INTERACTIONS_FILE} not found (the S3-Rec data is read from "
            f"../shared/data/amazon-s3rec/, or ${SHARED_DATA_ENV}/amazon-s3rec/; it is not shipped)"
        )
    corpus = load_generic(path, text_fields=["tags"])
    corpus.name = name
    return corpus


def load_corpus(spec: str) -> Corpus:
    """Load a corpus by name or path.

    "kuairand" / "kuairand-1k" -> `load_kuairand`, "amazon-art-office" ->
    `load_amazon_art_office`, "amazon-sports" / "amazon-toys" -> `load_s3rec`, "sample" -> the
    KuaiRand-1K sample shipped in ``models/sample``; anything else is a directory in the
    generic format.
    """
    if spec in ("kuairand", "kuairand-1k"):
        return load_kuairand()
    if spec == "amazon-art-office":
        return load_amazon_art_office()
    if spec in S3REC_DATASETS:
        return load_s3rec(spec)
    if spec == "sample":
        return load_generic(SAMPLE_DIR)
    path = Path(spec)
    if not path.is_dir():
        raise FileNotFoundError(
            f"unknown corpus {spec!r}: not one of {', '.join(map(repr, NAMED_CORPORA))}, and not "
            "an existing generic-format directory"
        )
    return load_generic(path)
