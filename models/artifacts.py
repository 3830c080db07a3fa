"""Model artifact: a self-describing directory, no pickle.

    config.json              architecture, feature spec, surface vocabulary, training summary,
                             metrics
    weights.safetensors      learnt parameters
    items.parquet            the item-id vocabulary in catalogue order with its metadata
    neighbours.safetensors   optional: the served blend's co-occurrence table and weight
                             (`models.blend`), when training chose one

``config.json`` is written last, so a directory without it is an incomplete save. The model
fingerprint is the sha256 over the files (the optional one when present); the index manifest
records it so a model and an index built from it are always served as a pair.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from models.blend import NEIGHBOURS_FILE, Blend, NeighbourTableError
from models.corpus import ItemTable
from models.features import FeatureSpec
from models.recommender import Recommender, RecommenderConfig
from models.vocab import Vocab

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
ITEMS_FILE = "items.parquet"
ARTIFACT_FILES = (CONFIG_FILE, WEIGHTS_FILE, ITEMS_FILE)
OPTIONAL_FILES = (NEIGHBOURS_FILE,)  # fingerprinted when present


class ModelArtifactError(Exception):
    """A model directory is missing, incomplete or inconsistent."""


def save_model(
    model: Recommender,
    spec: FeatureSpec,
    vocab: Vocab,
    items: ItemTable,
    directory: Path,
    *,
    name: str,
    info: dict[str, Any] | None = None,
    blend: Blend | None = None,
) -> str:
    """Write the artifact and return its fingerprint. Existing files are replaced (a
    neighbours file too, removed when there is no ``blend``)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_FILE).unlink(missing_ok=True)  # marks the directory incomplete meanwhile
    (directory / NEIGHBOURS_FILE).unlink(missing_ok=True)
    if blend is not None:
        if blend.neighbours.items != len(vocab):
            raise ValueError(
                f"blend table over {blend.neighbours.items} items; the vocabulary has {len(vocab)}"
            )
        blend.save(directory)
    columns: dict[str, pa.Array] = {
        "item_id": pa.array(items.item_id.astype(str).tolist(), pa.string()),
        "surface": pa.array(items.surface.astype(str).tolist(), pa.string()),
    }
    for kind, fields in (("cat", items.categorical), ("text", items.text)):
        for field_name, col in fields.items():
            columns[f"{kind}:{field_name}"] = pa.array(
                np.asarray(col).astype(str).tolist(), pa.string()
            )
    pq.write_table(pa.table(columns), directory / ITEMS_FILE)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    config = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "model": model.config.to_dict(),
        "features": spec.to_dict(),
        "surfaces": vocab.surfaces,
        **(info or {}),
    }
    _write_synced(directory / CONFIG_FILE, json.dumps(config, indent=2, sort_keys=True).encode())
    for file in (ITEMS_FILE, WEIGHTS_FILE, *([NEIGHBOURS_FILE] if blend else [])):
        with open(directory / file, "rb") as fh:
            os.fsync(fh.fileno())
    return model_fingerprint(directory)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def model_fingerprint(directory: Path) -> str:
    digest = hashlib.sha256()
    present = [f for f in OPTIONAL_FILES if (Path(directory) / f).is_file()]
    for file in (*ARTIFACT_FILES, *present):
        path = Path(directory) / file
        if not path.is_file():
            raise ModelArtifactError(f"model directory {directory} has no {file}")
        file_digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                file_digest.update(chunk)
        digest.update(f"{file}:{file_digest.hexdigest()}\n".encode())
    return digest.hexdigest()


def read_config(directory: Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise ModelArtifactError(f"no model at {directory} ({CONFIG_FILE} missing)")
    config: dict[str, Any] = json.loads(path.read_text())
    if config.get("format_version") != FORMAT_VERSION:
        raise ModelArtifactError(
            f"model at {directory} has format_version {config.get('format_version')!r}, "
            f"this uniserve reads {FORMAT_VERSION}"
        )
    return config


def read_items(directory: Path) -> ItemTable:
    table = pq.read_table(Path(directory) / ITEMS_FILE)
    cols = {
        name: np.array(table.column(name).to_pylist(), dtype=object) for name in table.column_names
    }
    return ItemTable(
        item_id=cols["item_id"],
        surface=cols["surface"],
        categorical={k.split(":", 1)[1]: v for k, v in cols.items() if k.startswith("cat:")},
        text={k.split(":", 1)[1]: v for k, v in cols.items() if k.startswith("text:")},
    )


# First bytes of the pickle-based formats: a raw pickle (protocol 2+) and torch.save's zip.
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")


def load_weights(path: Path) -> dict[str, Any]:
    """Tensors of a safetensors file; ModelArtifactError for anything else, pickles included.

    safetensors parses a JSON header and raw tensor bytes and executes nothing; a pickle or a
    `torch.save` file put in its place is refused by its first bytes, before any parser sees it.
    uniserve never unpickles (no `torch.load`, `pickle`, `np.load(allow_pickle=True)`).
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise ModelArtifactError(f"cannot read weights {path}: {exc}") from exc
    if head.startswith(_PICKLE_MAGIC):
        raise ModelArtifactError(
            f"{path} is a pickle / torch.save file, not safetensors: refused (never unpickled)"
        )
    try:
        return dict(load_file(str(path)))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelArtifactError(f"{path} is not a valid safetensors file: {exc}") from exc


def load_model(directory: Path) -> tuple[Recommender, FeatureSpec, Vocab, dict[str, Any]]:
    """Load an artifact written by :func:`save_model`: (model in eval mode, spec, vocab, config)."""
    directory = Path(directory)
    config = read_config(directory)
    items = read_items(directory)
    spec = FeatureSpec(**config["features"])
    vocab = Vocab(items.item_id, config["surfaces"])
    item_cat, item_tokens = spec.encode_table(items)
    model = Recommender(RecommenderConfig.from_dict(config["model"]), item_cat, item_tokens)
    state = load_weights(directory / WEIGHTS_FILE)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelArtifactError(
            f"weights at {directory} do not match config: missing {missing}, unexpected {unexpected}"
        )
    model.eval()
    return model, spec, vocab, config


def load_blend(directory: Path, items: int) -> Blend | None:
    """The served blend saved with a model of ``items`` catalogue rows; None when it has none
    (the model's scores alone are served)."""
    path = Path(directory) / NEIGHBOURS_FILE
    if not path.is_file():
        return None
    try:
        return Blend.load(path, items)
    except NeighbourTableError as exc:
        raise ModelArtifactError(str(exc)) from exc
