"""The embedded default: make sure a model and a live index exist before serving.

On a fresh machine `uniserve serve` trains a small model on the shipped KuaiRand sample (seconds
on two cores) and publishes an index built from it. When a model exists but the live index was
built for another model (or none is published), only the index is rebuilt. Existing artifacts
are never overwritten.
"""

from __future__ import annotations

import logging

from index import IndexIntegrityError, NoIndexError, load_current
from models.artifacts import CONFIG_FILE, model_fingerprint, read_config
from models.compat import serves_index_of
from models.data import load_corpus
from models.train import TrainConfig
from service.jobs.pipeline import build_and_publish, train_to_dir
from service.settings import Settings

log = logging.getLogger(__name__)

# Small and quick: the sample has a few hundred users; 15 epochs are 105 steps (about 20 s on two
# cores). No time budget: the same steps everywhere, so the first-start model is reproducible.
EMBEDDED_TRAIN = TrainConfig(dim=64, num_layers=2, max_len=50, epochs=15, batch_size=64)


def ensure_artifacts(settings: Settings, *, progress: bool = False) -> None:
    model_dir, index_root = settings.model_path, settings.index_path
    corpus = None
    if not (model_dir / CONFIG_FILE).is_file():
        log.info("no model at %s: training on the shipped sample %r", model_dir, settings.sample)
        corpus = load_corpus(settings.sample)
        cfg = TrainConfig(**{**EMBEDDED_TRAIN.__dict__, "progress": progress})
        report = train_to_dir(corpus, cfg, model_dir, name=corpus.name)
        log.info("trained in %.1fs: %s", report["training"]["seconds"], model_dir)
    fingerprint = model_fingerprint(model_dir)
    try:
        _, manifest = load_current(index_root)
        if serves_index_of(read_config(model_dir), fingerprint, manifest.model_fingerprint):
            return  # its own index, or an old model's it was trained compatible with
        log.info("live index %s was built for another model: rebuilding", manifest.version)
    except NoIndexError:
        log.info("no index under %s: building one", index_root)
    except IndexIntegrityError as exc:
        log.warning("live index is damaged (%s): building a new one", exc)
    manifest = build_and_publish(
        model_dir, index_root, index_type=settings.index_type, corpus=corpus
    )
    log.info("published index %s (recall@10 %.3f)", manifest.version, manifest.recall_at_10 or 0.0)
