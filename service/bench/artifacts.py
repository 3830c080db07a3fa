"""The benchmark's artifacts: a synthetic clustered catalogue, a default-architecture model
fitted so its user vectors point at their users' interests, and an index published by the real
rebuild job; cached under `--work-dir`. Also the request bodies the load sends."""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.item_encoder import FIRST_ITEM_ID

RECALL_TARGET = 0.95
HISTORY_LEN = 50
SURFACES = ("feed", "search", "live", "shop")
ITEMS_PER_CLUSTER = 500
USER_FIT_STEPS = 150


# ------------------------------------------------------------------------------ artifacts
@dataclass(frozen=True)
class Catalogue:
    """A synthetic catalogue: items in clusters (the interests users have), made from a seed."""

    item_ids: np.ndarray  # (N,) str
    surfaces: np.ndarray  # (N,) str
    member: np.ndarray  # (N,) int: the item's cluster
    by_cluster: list[np.ndarray]  # cluster -> its item rows

    @staticmethod
    def make(n_items: int, seed: int) -> Catalogue:
        rng = np.random.default_rng(seed)
        n_clusters = max(16, n_items // ITEMS_PER_CLUSTER)
        member = rng.integers(0, n_clusters, n_items)
        order = np.argsort(member, kind="stable")
        bounds = np.searchsorted(member[order], np.arange(n_clusters + 1))
        return Catalogue(
            item_ids=np.array([f"i{i}" for i in range(n_items)], dtype=object),
            surfaces=np.array(SURFACES, dtype=object)[rng.integers(0, len(SURFACES), n_items)],
            member=member,
            by_cluster=[order[a:b] for a, b in itertools.pairwise(bounds)],
        )

    def histories(
        self, n: int, rng: np.random.Generator, length: int = HISTORY_LEN
    ) -> tuple[np.ndarray, np.ndarray]:
        """(n, length) item rows of users with 1-3 interests, and (n,) a next item for each."""
        rows = np.empty((n, length + 1), dtype=np.int64)
        for u in range(n):
            interests = rng.choice(len(self.by_cluster), size=rng.integers(1, 4), replace=False)
            pools = [self.by_cluster[c] for c in interests if len(self.by_cluster[c])]
            picks = rng.integers(0, len(pools), length + 1)
            rows[u] = [pool[rng.integers(0, len(pool))] for pool in (pools[i] for i in picks)]
        return rows[:, :-1], rows[:, -1]

    def as_history(self, rows: np.ndarray) -> tuple[list[str], list[str]]:
        return self.item_ids[rows].tolist(), self.surfaces[rows].tolist()


def synthetic_corpus(cat: Catalogue, seed: int, users: int = 2000) -> Any:
    """The catalogue as a corpus; its validation histories are the recall-tuning queries."""
    from models.corpus import Corpus, EvalSet, ItemTable, Sequences

    rng = np.random.default_rng(seed + 2)

    def sequences(rows: np.ndarray, prefix: str) -> Sequences:
        return Sequences.from_lists(
            [f"{prefix}{u}" for u in range(len(rows))],
            [cat.item_ids[r].tolist() for r in rows],
            [cat.surfaces[r].tolist() for r in rows],
        )

    def eval_set(n: int, prefix: str) -> EvalSet:
        rows, target = cat.histories(n, rng)
        return EvalSet(
            sequences(rows, prefix), cat.item_ids[target], cat.surfaces[target],
            np.full(n, "all", dtype=object),
        )  # fmt: skip

    items = ItemTable(item_id=cat.item_ids, surface=cat.surfaces)
    train_rows, _ = cat.histories(users, rng)
    return Corpus(
        f"synthetic-{len(cat.item_ids)}", items, sequences(train_rows, "u"),
        eval_set(1000, "v"), eval_set(10, "t"),
    )  # fmt: skip


def fit_user_encoder(model: Any, vocab: Any, cat: Catalogue, seed: int, steps: int) -> float:
    """Train the user encoder (item vectors frozen) to point at its history's interests, as a
    trained model's user vectors do; returns the last loss. In-batch softmax, temperature 0.1."""
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed + 3)
    model.item_encoder.requires_grad_(False)
    model.train()
    opt = torch.optim.Adam(model.user_encoder.parameters(), lr=1e-3)
    loss = torch.tensor(float("nan"))
    for _ in tqdm(range(steps), desc="fitting the user encoder", unit="step"):
        rows, target = cat.histories(64, rng)
        ids, surfaces, mask = vocab.batch([cat.as_history(r) for r in rows], HISTORY_LEN)
        users = model.user_vectors(ids, surfaces, mask)  # (B, D)
        items = model.item_vectors(torch.from_numpy(target + FIRST_ITEM_ID))  # (B, D)
        loss = F.cross_entropy(users @ items.T / 0.1, torch.arange(len(rows)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return float(loss.item())


def prepare_artifacts(
    work_dir: Path, n_items: int, *, index_type: str, seed: int, progress: bool = True
) -> Path:
    """A data dir (model/ + indexes/) for the benchmark, reused when made with the same options."""
    import torch

    from models.artifacts import save_model
    from models.train import TrainConfig, build_model
    from service.jobs.pipeline import build_and_publish

    key = {"items": n_items, "index_type": index_type, "seed": seed, "version": 2}
    data_dir = work_dir / f"{n_items}-{index_type.replace(',', '_')}-{seed}"
    stamp = data_dir / "bench.json"
    if stamp.exists() and json.loads(stamp.read_text()) == key:
        print(f"[artifacts] reusing {data_dir}", flush=True)
        return data_dir
    stamp.unlink(missing_ok=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cat = Catalogue.make(n_items, seed)
    corpus = synthetic_corpus(cat, seed)
    cfg = TrainConfig(seed=seed, progress=False)
    torch.manual_seed(seed)
    model, spec, vocab = build_model(corpus, cfg)
    rng = np.random.default_rng(seed + 1)
    centres = rng.standard_normal((len(cat.by_cluster), cfg.dim)).astype(np.float32)
    noise = 0.5 * rng.standard_normal((n_items, cfg.dim)).astype(np.float32)
    with torch.no_grad():  # clustered item vectors, as a trained catalogue has
        table = model.item_encoder.id_embedding.weight
        table[FIRST_ITEM_ID:] = torch.from_numpy(centres[cat.member] + noise)
    loss = fit_user_encoder(model, vocab, cat, seed, USER_FIT_STEPS)
    save_model(model, spec, vocab, corpus.items, data_dir / "model", name=f"bench{n_items}")
    print(
        f"[artifacts] model over {n_items:,} items in {len(cat.by_cluster):,} clusters "
        f"({USER_FIT_STEPS} user-encoder steps, loss {loss:.2f}) in "
        f"{time.perf_counter() - t0:.1f} s",
        flush=True,
    )
    t0 = time.perf_counter()
    manifest = build_and_publish(
        data_dir / "model",
        data_dir / "indexes",
        index_type=index_type,
        corpus=corpus,
        seed=seed,
        target_recall=RECALL_TARGET,
        progress=progress,
    )
    print(
        f"[artifacts] {index_type} index {manifest.version} in {time.perf_counter() - t0:.1f} s: "
        f"search params {manifest.search_params}, recall@10 {manifest.recall_at_10:.3f}",
        flush=True,
    )
    stamp.write_text(json.dumps(key))
    return data_dir


class BodyStream:
    """Retrieve bodies made on demand: each a distinct 50-event history of a synthetic user, so
    every request sent from a stream is a cache miss. Made between load steps, never during."""

    def __init__(self, n_items: int, seed: int, k: int = 10, cat: Catalogue | None = None) -> None:
        self.cat = Catalogue.make(n_items, seed) if cat is None else cat
        self.seed = seed
        self.rng = np.random.default_rng(seed + 7)
        self.k = k
        self.made = 0

    def probes(self) -> BodyStream:
        """Another stream over the same catalogue, of other histories (another seed)."""
        return BodyStream(len(self.cat.item_ids), self.seed + 1_000_003, self.k, self.cat)

    def again(self) -> BodyStream:
        """A stream that sends the bodies this one sent, in the same order, from the first
        (the catalogue is shared, not remade): each service under test gets the same histories."""
        return BodyStream(len(self.cat.item_ids), self.seed, self.k, self.cat)

    def take(self, n: int) -> list[bytes]:
        rows, _ = self.cat.histories(n, self.rng)
        bodies = []
        for r in rows:
            events = [
                {"item_id": i, "surface": s}
                for i, s in zip(self.cat.item_ids[r], self.cat.surfaces[r], strict=True)
            ]
            bodies.append(json.dumps({"events": events, "k": self.k}).encode())
        self.made += n
        return bodies
