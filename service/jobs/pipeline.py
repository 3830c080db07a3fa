"""Offline jobs shared by the CLI and the embedded default: train a model, build an index.

Plain functions over directories; the CLI (`service/cli/`) and the first-start bootstrap
(`service/jobs/bootstrap.py`) only parse arguments and call these.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from index import (
    DEFAULT_TARGET_RECALL,
    FDEConfig,
    ItemIndex,
    Manifest,
    MultiIndex,
    build_index,
    build_multi_index,
    check_vectors_finite,
    faiss_gpus,
    gate_build,
    publish,
    tune_search_params,
)
from index.chamfer import chamfer_topk
from index.multi import DEFAULT_CANDIDATES
from index.recall import overlap_recall
from index.shard import ShardSpec
from models.artifacts import save_model
from models.blend import Blend
from models.corpus import Corpus
from models.embedder import Embedder
from models.evaluate import (
    Cooccurrence,
    choose_beta,
    choose_cooccurrence,
    cooccurrence_ndcg,
    evaluation_report,
)
from models.recommender import Recommender
from models.train import TrainConfig, train
from models.vocab import Vocab
from service.jobs.catalog import ENCODE_BATCH, EncodedCatalogue, encode_catalogue, encode_items
from service.store.changelog import CHANGES_THROUGH, CatalogueState, fold, read_changes

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
    """Train on ``corpus``, choose the served blend on its validation split (`choose_blend`),
    evaluate on its test split, save to ``model_dir``; returns the report."""
    result = train(corpus, cfg)
    trained_on = result.corpus or corpus  # without held-out items' events, if any
    report: dict[str, Any] = {"training": result.summary(), "data": _data_summary(trained_on)}
    if "compatible_with" in result.extra:
        report["compatible_with"] = result.extra["compatible_with"]
    cold = [str(x) for x in result.extra.get("cold_items", [])]  # type: ignore[attr-defined]
    blend, cooccurrence = None, None
    if cfg.blend and len(trained_on.valid):
        blend, cooccurrence, report["blend"] = choose_blend(result.model, result.vocab, trained_on)
    if evaluate and len(corpus.test):  # the policy of `uniserve evaluate`, on the test split
        found = evaluation_report(
            result.model,
            result.vocab,
            corpus,
            cold_items=cold,
            seed=cfg.seed,
            blend=blend,
            cooccurrence=None if cold else cooccurrence,  # else counted without the cold items
        )
        found.pop("blend", None)  # the report's own entry says how it was chosen
        report.update(found)
    fingerprint = save_model(
        result.model,
        result.spec,
        result.vocab,
        corpus.items,
        model_dir,
        name=name or corpus.name,
        info=report,
        blend=blend,
    )
    report["fingerprint"] = fingerprint
    return report


def choose_blend(
    model: Recommender, vocab: Vocab, corpus: Corpus
) -> tuple[Blend | None, tuple[Cooccurrence, dict[str, float]], dict[str, Any]]:
    """The served blend of a trained model (`models.blend`): the co-occurrence table whose
    window / last / decay the baseline picks on the validation split, counted one way (as the
    baseline) or both ways, whichever ranks better alone on validation (a tie keeps one way),
    and the beta whose blended score gives the best validation NDCG@10 (full ranking, seen
    items removed); None when beta 0 (the model alone) wins. Returns it, the chosen
    co-occurrence retriever and its grid (the report's baseline reuses them), and what the
    report says about the choice."""
    started = time.perf_counter()
    cooc, grid = choose_cooccurrence(corpus, vocab)
    window, last, decay = cooc.params
    both = Cooccurrence.fit(
        corpus.train, vocab, window=window, last=last, decay=decay, two_way=True
    )
    alone = {  # validation NDCG@10 (seen removed) of each table ranking alone, as `grid` rounds
        "one_way": max(grid.values()),
        "two_way": round(cooccurrence_ndcg(both, vocab, corpus.valid), 5),
    }
    way = "two_way" if alone["two_way"] > alone["one_way"] else "one_way"
    table = both.neighbours if way == "two_way" else cooc.neighbours
    beta, tried, z = choose_beta(model, vocab, corpus.valid, table)
    blend = Blend(table, beta) if beta > 0 else None
    seconds = time.perf_counter() - started
    log.info(
        "blend: beta %g on validation (NDCG@10 by beta: %s; the best gains %.1f standard "
        "errors over the model alone, kept when > 2), co-occurrence counted %s, window %d "
        "last %d decay %g, %d pairs, %.1fs",
        beta,
        tried,
        z,
        way.replace("_", " "),
        window,
        last,
        decay,
        len(table.indices),
        seconds,
    )
    info: dict[str, Any] = {
        **(blend.to_json() if blend else {"beta": 0.0}),
        "valid_ndcg@10_by_beta": tried,
        # each way of counting, the co-occurrence alone (the served one is `two_way`)
        "cooccurrence_valid_ndcg@10_by_way": alone,
        "valid_gain_standard_errors": z,  # the best beta's gain over beta 0; kept when > 2
        "seconds": round(seconds, 2),
    }
    return blend, (cooc, grid), info


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
    embedder: Embedder,
    corpus: Corpus | None,
    n: int = RECALL_QUERIES,
    seed: int = 0,
    items: np.ndarray | None = None,
) -> tuple[np.ndarray, str]:
    """Held-out query vectors (Q, D) float32 and where they come from: real user vectors from
    the corpus's validation histories when a corpus is given, else a sample of item vectors
    (`items`, default the model's)."""
    rng = np.random.default_rng(seed)
    if corpus is not None and len(corpus.valid):
        pick = rng.choice(len(corpus.valid), size=min(n, len(corpus.valid)), replace=False)
        histories = [corpus.valid.history.sequence(int(i)) for i in np.sort(pick)]
        return embedder.user_vectors(histories), f"validation users of {corpus.name}"
    pool = embedder.item_vectors() if items is None else items
    return pool[rng.choice(len(pool), size=min(n, len(pool)), replace=False)], "item vectors"


def build_and_publish(
    model_dir: Path,
    index_root: Path,
    *,
    index_type: str = "HNSW32",
    corpus: Corpus | None = None,
    catalog: Path | None = None,
    keep: int = 3,
    seed: int = 0,
    target_recall: float = DEFAULT_TARGET_RECALL,
    search_params: dict[str, int] | None = None,
    n_queries: int = RECALL_QUERIES,
    device: str = "auto",
    batch_size: int = ENCODE_BATCH,
    progress: bool = False,
    dim: int | None = None,
    muvera: FDEConfig | None = None,
    fde_index_type: str = "Flat",
    shard: ShardSpec | None = None,
    encoded: EncodedCatalogue | None = None,
) -> Manifest:
    """The batch rebuild: encode the catalogue, build, tune, gate, publish.

    Encodes `catalog` (an items.parquet; default the model's vocabulary) on `device` ("auto":
    CUDA when torch sees one), builds `index_type` (IVF k-means on GPUs when faiss reports any),
    picks the cheapest efSearch / nprobe whose recall@10 against exact search on held-out
    queries meets `target_recall` (or measures the fixed `search_params`), and runs the gate.
    A refused index raises IndexRejectedError and nothing is published. Timings, devices and
    the tuning sweep go in the manifest's `extra`, with the model directory, so the service can
    load this index's model when it is not the one it serves.

    With `muvera` (an FDE config: `uniserve build-index --mode multi`), the version also holds
    a MUVERA index (`build_muvera`): the items' multi-vectors, their FDEs in an `fde_index_type`
    FAISS index, and the config and seed, with its recall@10 against exact Chamfer in
    `extra["muvera"]`. Multi mode indexes the model's own vocabulary at its full dimension.

    With `shard`, only the catalogue items that shard owns (`index.shard`) are indexed (and
    tuned on) and the manifest records the spec in `extra["shard"]`; publish each shard to its
    own index root (`index.shard.shard_root`). `encoded`: the catalogue already encoded by
    this model (`encode_catalogue` of `catalog`), so the shards of one build encode it once.

    The live catalogue's change log under `index_root` (`service.store.changelog`) is folded
    in (`fold_changes`): upserted items are indexed (encoded as the catalogue is), retired ones
    left out, and the manifest records the last change folded (`changes_through`), so replicas
    serving the version add only later changes live. Sharded builds fold nothing (their
    replicas keep replaying the log of their own root).
    """
    if muvera is not None and shard is not None:
        raise ValueError("--mode multi indexes the whole vocabulary; it cannot be sharded")
    if muvera is not None and (catalog is not None or dim is not None):
        raise ValueError(
            "--mode multi indexes the model's own vocabulary at full dimension; "
            f"got catalog {catalog!r} and dim {dim!r}"
        )
    started = time.perf_counter()
    model_dir = Path(model_dir).resolve()
    embedder = Embedder.from_dir(model_dir)
    if encoded is None:
        log.info("encoding %s", catalog or f"the vocabulary of {embedder.version}")
        encoded = encode_catalogue(
            embedder, catalog, device=device, batch_size=batch_size, progress=progress
        )
    elif len(encoded.vectors) and encoded.vectors.shape[1] != embedder.dim:
        raise ValueError(
            f"pre-encoded catalogue has dim {encoded.vectors.shape[1]}, the model {embedder.dim}"
        )
    through = 0
    if shard is None and muvera is None:
        changes = read_changes(Path(index_root))
        if changes:
            encoded = fold_changes(encoded, fold(changes), embedder)
            through = changes[-1].seq
            log.info("folded %d catalogue changes (through %d) in", len(changes), through)
    if shard is not None:  # one shard of a sharded build: only the items it owns
        mine = shard.owns(encoded.item_ids)  # (N,) bool
        encoded = replace(
            encoded,
            item_ids=encoded.item_ids[mine],
            surfaces=encoded.surfaces[mine],
            vectors=encoded.vectors[mine],
        )
    vectors = encoded.vectors  # (N, D)
    if dim is not None:  # a Matryoshka prefix: a smaller index from the same model
        vectors = embedder.prefix(vectors, dim)  # (N, dim)
    check_vectors_finite(vectors)

    t0 = time.perf_counter()
    gpus = 0 if device == "cpu" else faiss_gpus()
    log.info("building %s over %d items (faiss GPUs: %d)", index_type, len(vectors), gpus)
    index = build_index(
        vectors,
        encoded.item_ids,
        encoded.surfaces,
        index_type=index_type,
        seed=seed,
        use_gpu=gpus > 0,
        progress=progress,
    )
    build_seconds = time.perf_counter() - t0

    return tune_gate_publish(
        index,
        vectors,
        embedder,
        Path(index_root),
        corpus=corpus,
        seed=seed,
        target_recall=target_recall,
        search_params=search_params,
        n_queries=n_queries,
        dim=dim,
        keep=keep,
        started=started,
        muvera=muvera,
        fde_index_type=fde_index_type,
        progress=progress,
        extra={
            "model_dir": str(model_dir),
            "catalog": encoded.source,
            "cold_start_items": encoded.cold_start,
            "encode_device": encoded.device,
            "faiss_gpus": gpus,
            "encode_seconds": round(encoded.seconds, 2),
            "build_seconds": round(build_seconds, 2),
            **({"shard": shard.to_json()} if shard is not None else {}),
            **({CHANGES_THROUGH: through} if through else {}),
        },
    )


def fold_changes(
    encoded: EncodedCatalogue, state: CatalogueState, embedder: Embedder
) -> EncodedCatalogue:
    """The catalogue with the live changes folded in: retired and upserted ids dropped, the
    upserted items appended with their vectors from `embedder` (`encode_items`: as a catalogue
    row is encoded)."""
    drop = state.retired | set(state.upserts)
    keep = np.fromiter((i not in drop for i in encoded.item_ids), bool, len(encoded.item_ids))
    items = list(state.upserts.values())
    vectors = encode_items(embedder, [(i.item_id, i.surface, i.features) for i in items])
    return replace(
        encoded,
        item_ids=np.concatenate([encoded.item_ids[keep], [i.item_id for i in items]]),
        surfaces=np.concatenate([encoded.surfaces[keep], [i.surface or "" for i in items]]),
        vectors=np.concatenate([encoded.vectors[keep], vectors]),  # (N', D)
        cold_start=encoded.cold_start
        + int((embedder.item_rows([i.item_id for i in items]) < 0).sum()),
    )


def tune_gate_publish(
    index: ItemIndex,
    vectors: np.ndarray,
    embedder: Embedder,
    index_root: Path,
    *,
    corpus: Corpus | None,
    seed: int,
    target_recall: float,
    search_params: dict[str, int] | None,
    n_queries: int,
    dim: int | None,
    keep: int,
    started: float,
    extra: dict[str, Any],
    muvera: FDEConfig | None = None,
    fde_index_type: str = "Flat",
    progress: bool = False,
) -> Manifest:
    """The part of a rebuild after the index is filled, shared by the local path and the Ray
    path (`service/jobs/ray_build.py`): tune efSearch / nprobe on held-out queries against exact
    search over `vectors` (N, D), the index's rows (prefix-cut when `dim`), gate, add the
    MUVERA index when asked, publish. The manifest's `extra` is the caller's `extra` plus
    tuning, timings (total from `started`, a perf_counter reading) and the seed."""
    t0 = time.perf_counter()
    queries, query_source = recall_queries(embedder, corpus, n_queries, seed, items=vectors)
    if dim is not None and queries.shape[1] != dim:
        queries = embedder.prefix(queries, dim)
    tuned = tune_search_params(
        index,
        vectors,
        queries,
        target_recall=target_recall,
        candidates=None if search_params is None else [search_params],
    )
    tune_seconds = time.perf_counter() - t0
    log.info(
        "search params %s: recall@10 %.4f on %d %s (target %.2f)",
        tuned.params or "exhaustive",
        tuned.recall,
        len(queries),
        query_source,
        target_recall,
    )
    gate_build(
        index,
        dim=dim or embedder.dim,
        recall=tuned.recall,
        target=target_recall,
        params=tuned.params,
    )
    index.set_search_params(tuned.params)
    multi: MultiIndex | None = None
    muvera_extra: dict[str, Any] = {}
    if muvera is not None:
        multi, muvera_extra = build_muvera(
            embedder, corpus, muvera, index_type=fde_index_type, seed=seed, progress=progress
        )
    return publish(
        index,
        index_root,
        model_fingerprint=embedder.fingerprint,
        model_version=embedder.version,
        recall_at_10=tuned.recall,
        keep=keep,
        extra={
            **extra,
            "tune_seconds": round(tune_seconds, 2),
            "total_seconds": round(time.perf_counter() - started, 2),
            "recall_queries": len(queries),
            "query_source": query_source,
            "tuning": tuned.to_json(),
            "seed": seed,
            **({"matryoshka_dim": dim, "model_dim": embedder.dim} if dim else {}),
            **({"muvera": muvera_extra} if muvera_extra else {}),
        },
        multi=multi,
    )


MUVERA_RECALL_QUERIES = 200  # query clouds used to measure FDE + re-rank recall@10 at build


def build_muvera(
    embedder: Embedder,
    corpus: Corpus | None,
    config: FDEConfig,
    *,
    index_type: str = "Flat",
    seed: int = 0,
    candidates: int = DEFAULT_CANDIDATES,
    n_queries: int = MUVERA_RECALL_QUERIES,
    progress: bool = False,
) -> tuple[MultiIndex, dict[str, Any]]:
    """The MUVERA part of a version: every catalogue item's multi-vectors, their document FDEs
    indexed by `index_type`, and what the manifest records (config, seed, timings, recall@10
    of FDE retrieval + re-ranking of `candidates` rows against exact Chamfer top-10, measured on
    validation users' interest vectors when a corpus is given, else on items' own facets)."""
    t0 = time.perf_counter()
    vectors, mask = embedder.item_multi_vectors()  # (N, F, D), (N, F)
    item_ids = np.asarray(embedder.item_ids, dtype=object)
    multi = build_multi_index(
        vectors,
        mask,
        item_ids,
        np.asarray(embedder.item_surfaces, dtype=object),
        config=config,
        index_type=index_type,
        seed=seed,
        progress=progress,
    )
    build_seconds = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    if corpus is not None and len(corpus.valid):
        pick = rng.choice(len(corpus.valid), size=min(n_queries, len(corpus.valid)), replace=False)
        histories = [corpus.valid.history.sequence(int(i)) for i in np.sort(pick)]
        queries, qmask = embedder.user_multi_vectors(histories)  # (Q, K, D), (Q, K)
        source = f"validation users of {corpus.name}"
    else:
        pick = rng.choice(len(vectors), size=min(n_queries, len(vectors)), replace=False)
        queries, qmask, source = vectors[pick], mask[pick], "item multi-vectors"
    k = min(10, multi.count)
    _, exact = chamfer_topk(queries, vectors, k, qmask, mask)  # (Q, k)
    _, found = multi.search(queries, k, query_mask=qmask, candidates=candidates)  # (Q, k)
    recall = overlap_recall(found, exact)
    log.info(
        "MUVERA: %d items x %d facets, FDE dim %d (%s), recall@10 %.4f vs exact Chamfer "
        "with %d candidates on %d %s",
        multi.count,
        vectors.shape[1],
        multi.fde_index.dim,
        index_type,
        recall,
        candidates,
        len(queries),
        source,
    )
    return multi, {
        "recall_at_10": round(recall, 4),
        "recall_candidates": candidates,
        "recall_queries": len(queries),
        "query_source": source,
        "build_seconds": round(build_seconds, 2),
        "seed": config.seed,
    }
