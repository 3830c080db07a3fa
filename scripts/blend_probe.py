"""Probe: a trained model's score blended with the co-occurrence baseline's, offline.

    python scripts/blend_probe.py --data amazon-toys --model runs/toys [--betas 0,0.4,0.8,1.6,3.2]

Scores every catalogue item as ``model score + beta * log(1 + co-occurrence score)`` (the
co-occurrence retriever of `models.evaluate.Cooccurrence`, its window / last / decay picked on
the validation split as in every report), picks beta on the validation split by full-ranking
NDCG@10 with seen items removed, and reports the test split at that beta. Nothing is served this
way yet: the probe measures what a served blend would gain (BENCHMARKS.md, issue 18).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="dataset name or folder (as for train)")
    parser.add_argument("--model", required=True, help="trained model directory")
    parser.add_argument("--betas", default="0,0.4,0.8,1.6,3.2", help="blend weights to try")
    args = parser.parse_args()

    import torch

    from models.artifacts import load_model
    from models.data import load_corpus
    from models.evaluate import all_ranks, choose_cooccurrence, metrics_from_ranks, user_vectors_for

    corpus = load_corpus(args.data)
    model, _, vocab, _ = load_model(Path(args.model))
    with torch.inference_mode():
        items = model.eval().all_item_vectors()  # (N, D)
    cooc, grid = choose_cooccurrence(corpus, vocab)
    print(f"co-occurrence on validation: {grid}", flush=True)

    def measure(eval_set, beta: float) -> dict[str, float]:
        users = torch.from_numpy(user_vectors_for(model, vocab, eval_set))  # (U, D)

        def scorer(idx):
            blend = torch.log1p(cooc.scores(eval_set.history, vocab, idx))  # (b, N)
            return users[torch.from_numpy(idx)] @ items.T + beta * blend

        ranks = all_ranks(scorer, vocab, eval_set, 100, 0, batch_size=256)
        return metrics_from_ranks(ranks["full_seen_removed"], (10, 20))

    best: tuple[float, float] | None = None
    for beta in (float(b) for b in args.betas.split(",")):
        valid = measure(corpus.valid, beta)
        print(f"beta {beta}: valid NDCG@10 {valid['ndcg@10']:.4f} HR@10 {valid['recall@10']:.4f}")
        if best is None or valid["ndcg@10"] > best[0]:
            best = (valid["ndcg@10"], beta)
    assert best is not None
    test = measure(corpus.test, best[1])
    print(
        f"chosen beta {best[1]}: test HR@10 {test['recall@10']:.4f} NDCG@10 {test['ndcg@10']:.4f} "
        f"HR@20 {test['recall@20']:.4f} NDCG@20 {test['ndcg@20']:.4f}"
    )


if __name__ == "__main__":
    main()
