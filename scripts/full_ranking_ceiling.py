"""How much signal a dataset leaves for full-ranking next-item retrieval, model-free.

    python scripts/full_ranking_ceiling.py --data kuairand [--window 3] [--json]

Prints, for the test split: the share of targets never seen in training (a sure miss for any
id-based retriever), the training-count quantiles of the targets, how often the target already
occurs in the user's own history (repeat consumption, which a full ranking could exploit), and
the full-ranking Recall@10 over the whole catalogue of three model-free retrievers fitted on the
training sequences: most popular, next-item transitions from the last event, and windowed
co-occurrence with the last ten events (weights 0.8^age). When all of them sit near zero, a
learnt model's full-ranking Recall@10 near zero says more about the data than about the model.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from itertools import pairwise

import numpy as np

from models.data import load_corpus
from service.cli import DATA_HELP

K = 10
RECENT = 10  # last events of the history scored by co-occurrence
DECAY = 0.8  # weight of an event one step older


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", "--dataset", dest="data", default="kuairand", help=DATA_HELP)
    p.add_argument("--window", type=int, default=3, help="co-occurrence window (default 3)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    corpus = load_corpus(args.data)
    train, test = corpus.train, corpus.test

    counts = Counter(train.item_id.tolist())
    following: defaultdict[object, Counter] = defaultdict(Counter)  # item -> next items
    nearby: defaultdict[object, Counter] = defaultdict(Counter)  # item -> items <= window later
    for _, items, _ in train:
        seq = items.tolist()
        for a, b in pairwise(seq):
            following[a][b] += 1
        for w in range(1, args.window + 1):
            for a, b in zip(seq[:-w], seq[w:], strict=True):
                nearby[a][b] += 1
    popular = {x for x, _ in counts.most_common(K)}

    target_counts = np.array([counts.get(t, 0) for t in test.target_item.tolist()])  # (U,)
    repeat = hits_pop = hits_next = hits_co = 0
    for i in range(len(test)):
        items, _ = test.history.sequence(i)
        history, target = items.tolist(), test.target_item[i]
        repeat += target in set(history)
        hits_pop += target in popular
        hits_next += target in {x for x, _ in following[history[-1]].most_common(K)}
        scores: Counter = Counter()
        for age, a in enumerate(reversed(history[-RECENT:])):
            for b, n in nearby[a].items():
                scores[b] += n * DECAY**age
        hits_co += target in {x for x, _ in scores.most_common(K)}
    n = max(len(test), 1)
    report = {
        "data": corpus.name,
        "test_targets": len(test),
        "catalogue_items": len(corpus.items),
        "unseen_target_share": round(float((target_counts == 0).mean()), 4),
        "target_train_count_quantiles": {
            str(q): float(np.percentile(target_counts, q)) for q in (25, 50, 75, 90, 99)
        },
        "repeat_share": round(repeat / n, 4),
        "full_recall@10": {
            "most_popular": round(hits_pop / n, 4),
            "next_item_transitions": round(hits_next / n, 4),
            f"cooccurrence_window{args.window}": round(hits_co / n, 4),
        },
    }
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
