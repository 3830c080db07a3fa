"""Offline jobs shared by the CLI and the embedded default: train a model, build an index.

Plain functions over directories; the CLI (`service/cli.py`) and the first-start bootstrap
(`service/bootstrap.py`) only parse arguments and call these.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from index import Manifest, build_index, publish, recall_at_k
from models.artifacts import save_model
from models.corpus import Corpus
from models.embedder import Embedder
from models.evaluate import evaluate_model, evaluate_popularity
from models.train import TrainConfig, train

log = logging.getLogger(__name__)

RECALL_QUERIES = 1000  # query vectors used to measure an index's recall@10 against exact search


def train_to_dir(
    corpus: Corpus,
    cfg: TrainConfig,
    model_dir: Path,
    *,
    evaluate: bool = True,
    name: str | None = None,
) -> dict[str, Any]:
    """Train on ``corpus``, evaluate on its test split, save to ``model_dir``; returns the report."""
    result = train(corpus, cfg)
    report: dict[str, Any] = {"training": result.summary(), "data": _data_summary(corpus)}
    if evaluate and len(corpus.test):
        report["metrics"] = {
            "split": "test",
            "model": evaluate_model(result.model, result.vocab, corpus.test, seed=cfg.seed),
            "most_popular": evaluate_popularity(corpus, result.vocab, corpus.test, seed=cfg.seed),
        }
    fingerprint = save_model(
        result.model,
        result.spec,
        result.vocab,
        corpus.items,
        model_dir,
        name=name or corpus.name,
        info=report,
    )
    report["fingerprint"] = fingerprint
    return report


def _data_summary(corpus: Corpus) -> dict[str, Any]:
    return {
        "name": corpus.name,
        "items": len(corpus.items),
        "train_sequences": len(corpus.train),
        "train_events": len(corpus.train.item_id),
        "test_examples": len(corpus.test),
        **{k: v for k, v in corpus.info.items() if isinstance(v, str | int | float)},
    }


def recall_queries(
    embedder: Embedder, corpus: Corpus | None, n: int = RECALL_QUERIES, seed: int = 0
) -> np.ndarray:
    """Held-out query vectors: real user vectors from validation histories when a corpus is
    given, else a sample of item vectors. (Q, D) float32."""
    rng = np.random.default_rng(seed)
    if corpus is not None and len(corpus.valid):
        pick = rng.choice(len(corpus.valid), size=min(n, len(corpus.valid)), replace=False)
        histories = [corpus.valid.history.sequence(int(i)) for i in np.sort(pick)]
        return embedder.user_vectors(histories)
    items = embedder.item_vectors()
    return items[rng.choice(len(items), size=min(n, len(items)), replace=False)]


def build_and_publish(
    model_dir: Path,
    index_root: Path,
    *,
    index_type: str = "HNSW32",
    corpus: Corpus | None = None,
    keep: int = 3,
    seed: int = 0,
) -> Manifest:
    """Encode the model's catalogue, build a FAISS index, measure recall@10, publish it."""
    started = time.perf_counter()
    embedder = Embedder.from_dir(model_dir)
    vectors = embedder.item_vectors()  # (N, D)
    index = build_index(
        vectors, embedder.item_ids, embedder.item_surfaces, index_type=index_type, seed=seed
    )
    queries = recall_queries(embedder, corpus, seed=seed)
    recall = recall_at_k(index, vectors, queries, k=10)
    log.info("index %s over %d items: recall@10 %.4f", index_type, index.count, recall)
    return publish(
        index,
        Path(index_root),
        model_fingerprint=embedder.fingerprint,
        model_version=embedder.version,
        recall_at_10=recall,
        keep=keep,
        extra={
            "build_seconds": round(time.perf_counter() - started, 2),
            "recall_queries": len(queries),
        },
    )
