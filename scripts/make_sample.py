"""Build the committed KuaiRand-1K sample in ``models/sample/`` (generic format, CC BY-SA 4.0).

    python scripts/make_sample.py

KuaiRand-1K is extremely long-tailed (about 730k train items over 1.9M events, the 500th most
frequent item seen 55 times), so a random handful of users shares almost no items and nothing is
learnable from it. The sample is therefore a dense, still real, slice:

1. keep only train events whose item is among the ``--top-items`` most frequent train items;
2. take the ``--users`` users with the most such events (ties broken by a seeded shuffle);
3. truncate each to its last ``--max-len`` kept events;
4. repeat until stable: drop events whose item occurs fewer than ``--min-item-count`` times in
   the sample, then users with fewer than ``--min-user-events`` events (a k-core);
5. remap ids (users "u0".., in train order; items "0".. in order of first appearance) and write
   ``interactions.parquet`` / ``items.parquet`` with `models.data.write_generic`, plus the
   README (with counts and baseline numbers) and LICENSE.

Finally the sample is reloaded with `models.data.load_generic` and two baselines are measured on
its leave-last-out split: most-popular and a first-order transition model (most frequent
successor of the last item in train, padded with popular items). The transition model must
clearly beat most-popular, which shows that the sample carries sequential signal. Running the
script twice gives byte-identical files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.corpus import EvalSet, ItemTable, Sequences
from models.data import SAMPLE_DIR, load_generic, load_kuairand, most_frequent, write_generic

LICENSE_TEXT = """\
Creative Commons Attribution-ShareAlike 4.0 International (CC BY-SA 4.0)

The files in this folder (interactions.parquet, items.parquet) are a derived work of KuaiRand
(Gao et al., "KuaiRand: An Unbiased Sequential Recommendation Dataset with Randomly Exposed
Videos", CIKM 2022; github.com/chongminggao/KuaiRand), as preprocessed by snap-research/AutoCDSR
(Ju et al., "Revisiting Self-attention for Cross-domain Sequential Recommendation", KDD 2025). KuaiRand is
licensed under CC BY-SA 4.0, and this sample is distributed under the same license.

Changes: events were filtered to frequent items and a subset of users, sequences truncated, and
user and item ids remapped (see README.md).

License text: https://creativecommons.org/licenses/by-sa/4.0/
"""


def select(
    train: Sequences,
    *,
    top_items: int,
    n_users: int,
    max_len: int,
    min_item_count: int,
    min_user_events: int,
    seed: int,
) -> Sequences:
    """The dense slice of ``train`` described in the module docstring, original ids kept."""
    item_names, item = np.unique(train.item_id, return_inverse=True)  # (I,), (E,)
    surface = train.surface  # (E,) str
    user = np.repeat(np.arange(len(train)), train.lengths)  # (E,) row of each event

    counts = np.bincount(item, minlength=len(item_names))  # (I,)
    popular = np.zeros(len(item_names), dtype=bool)  # (I,)
    popular[np.argsort(-counts, kind="stable")[:top_items]] = True
    keep = popular[item]  # (E,)

    per_user = np.bincount(user[keep], minlength=len(train))  # (U,)
    tie_break = np.random.default_rng(seed).permutation(len(train))  # (U,)
    chosen = np.zeros(len(train), dtype=bool)  # (U,)
    chosen[np.lexsort((tie_break, -per_user))[:n_users]] = True
    keep &= chosen[user]

    # Last max_len kept events of each user: rank kept events from the end of their user.
    kept_idx = np.flatnonzero(keep)  # (K,)
    kept_user = user[kept_idx]  # (K,)
    last_of_user = np.zeros(len(train), dtype=np.int64)  # (U,)
    np.maximum.at(last_of_user, kept_user, np.arange(len(kept_idx)))
    from_end = last_of_user[kept_user] - np.arange(len(kept_idx))  # (K,)
    keep[kept_idx[from_end >= max_len]] = False

    while True:  # k-core: items >= min_item_count events, users >= min_user_events events
        item_count = np.bincount(item[keep], minlength=len(item_names))  # (I,)
        new_keep = keep & (item_count[item] >= min_item_count)  # (E,)
        user_count = np.bincount(user[new_keep], minlength=len(train))  # (U,)
        new_keep &= user_count[user] >= min_user_events
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep

    lengths = np.bincount(user[keep], minlength=len(train))  # (U,)
    users = np.flatnonzero(lengths > 0)  # (S,)
    offsets = np.zeros(len(users) + 1, dtype=np.int64)  # (S + 1,)
    np.cumsum(lengths[users], out=offsets[1:])
    return Sequences(train.user_id[users], offsets, item_names[item[keep]], surface[keep])


def remap(seqs: Sequences) -> tuple[Sequences, ItemTable]:
    """Dense ids: users "u0".. in order, items "0".. by first appearance; item surface = its most
    frequent surface in the sample."""
    names, first, inverse = np.unique(seqs.item_id, return_index=True, return_inverse=True)
    rank = np.empty(len(names), dtype=np.int64)  # (M,) new id of each sorted original id
    rank[np.argsort(first, kind="stable")] = np.arange(len(names))
    new_item = rank[inverse]  # (E,)
    surfaces, surface_code = np.unique(seqs.surface, return_inverse=True)  # (D,), (E,)
    item_surface = surfaces[most_frequent(new_item, surface_code, len(names))]  # (M,)
    item_ids = np.array([str(i) for i in range(len(names))], dtype=object)  # (M,)
    user_ids = np.array([f"u{i}" for i in range(len(seqs))], dtype=object)  # (S,)
    sample = Sequences(user_ids, seqs.offsets.copy(), item_ids[new_item], seqs.surface.copy())
    return sample, ItemTable(item_id=item_ids, surface=item_surface)


def recall_at_10(train: Sequences, split: EvalSet) -> dict[str, float]:
    """Recall@10 of most-popular and of the first-order transition baseline on ``split``."""
    names, item = np.unique(
        np.concatenate([train.item_id, split.history.item_id, split.target_item]),
        return_inverse=True,
    )  # (I,), (E_train + E_hist + U,)
    n_train, n_hist = len(train.item_id), len(split.history.item_id)
    train_item = item[:n_train]  # (E_train,)
    history_item = item[n_train : n_train + n_hist]  # (E_hist,)
    target = item[n_train + n_hist :]  # (U,)
    popular = np.argsort(-np.bincount(train_item, minlength=len(names)), kind="stable")[:10]

    same_user = np.repeat(np.arange(len(train)), train.lengths)  # (E_train,)
    follows = same_user[1:] == same_user[:-1]  # (E_train - 1,)
    pairs, counts = np.unique(
        train_item[:-1][follows] * len(names) + train_item[1:][follows], return_counts=True
    )  # (P,), (P,)
    successors: dict[int, list[int]] = {}
    for p in np.lexsort((pairs, -counts)).tolist():  # by count desc, ties by id
        successors.setdefault(int(pairs[p] // len(names)), []).append(int(pairs[p] % len(names)))

    last = history_item[split.history.offsets[1:] - 1]  # (U,)
    pop_hits = trans_hits = 0
    for prev, tgt in zip(last.tolist(), target.tolist(), strict=True):
        ranked = successors.get(prev, [])[:10]
        ranked += [p for p in popular.tolist() if p not in ranked][: 10 - len(ranked)]
        pop_hits += tgt in popular
        trans_hits += tgt in ranked
    n = max(len(split), 1)
    return {"most_popular": pop_hits / n, "transition": trans_hits / n}


def write_readme(out: Path, args: argparse.Namespace, stats: dict[str, object]) -> None:
    """README.md of the sample: provenance, exact command, counts, columns, attribution."""
    command = (
        "python scripts/make_sample.py"
        f" --top-items {args.top_items} --users {args.users} --max-len {args.max_len}"
        f" --min-item-count {args.min_item_count} --min-user-events {args.min_user_events}"
        f" --seed {args.seed}"
    )
    text = f"""\
# KuaiRand-1K sample (generic format)

A small, real slice of KuaiRand-1K cross-surface sequences, used by the embedded default of
`uniserve serve` (a model is trained on it in seconds on first start) and by fast tests. It is
in the generic format read by `models.data.load_generic` (`load_corpus("sample")`).

## How it was made
From the train split of `../shared/data/kuairand-1k` (AutoCDSR preprocessing, -1 ids dropped):
```
{command}
```
1. keep only events whose item is among the {args.top_items} most frequent train items;
2. take the {args.users} users with the most such events (ties broken by a seeded shuffle);
3. truncate each to its last {args.max_len} kept events;
4. k-core until stable: every item occurs >= {args.min_item_count} times and every user has
   >= {args.min_user_events} events;
5. remap ids: users `u0`, `u1`... in KuaiRand train order; items `0`, `1`... in order of first
   appearance.

KuaiRand is so long-tailed (about 730k items, most seen once) that a random set of users shares
almost no items; step 1 makes the sample learnable. Consequently consecutive events in a sample
sequence are chronological but not necessarily adjacent in the original sequence.

## Counts
| users | events | items | events per user (min / median / max) |
| ---: | ---: | ---: | --- |
| {stats["users"]:,} | {stats["events"]:,} | {stats["items"]:,} | {stats["len_min"]} / {stats["len_median"]} / {stats["len_max"]} |

Events per surface: {stats["surfaces"]}.

Leave-last-out split as loaded by `load_generic`: train keeps all but each user's last two
events, valid predicts the second-to-last ({stats["n_valid"]} examples), test the last
({stats["n_test"]} examples). Recall@10 over the full catalogue, measured by the script
(most popular: the 10 most frequent train items; first-order transition: the most frequent
successors in train of the last history item, padded with popular items):

| split | most popular | first-order transition |
| --- | ---: | ---: |
| valid | {stats["valid_pop"]:.4f} | {stats["valid_trans"]:.4f} |
| test | {stats["test_pop"]:.4f} | {stats["test_trans"]:.4f} |

## Files and columns
- `interactions.parquet`: `user_id` (string, `u0`..), `item_id` (string, dense `0`..), `surface`
  (string: the KuaiRand domain / tab id, e.g. `9`, `4`), `ts` (int64: position of the event in
  the user's sample sequence, oldest first).
- `items.parquet`: `item_id`, `surface` (the item's most frequent surface in the sample). The
  preprocessed KuaiRand-1K data has no other item metadata.

## Attribution and license
KuaiRand: Gao et al., "KuaiRand: An Unbiased Sequential Recommendation Dataset with Randomly
Exposed Videos", CIKM 2022 (github.com/chongminggao/KuaiRand). Preprocessed by
snap-research/AutoCDSR: Ju et al., "Revisiting Self-attention for Cross-domain Sequential
Recommendation", KDD 2025.

KuaiRand is licensed under CC BY-SA 4.0; this sample is a derived work distributed under the
same license (see `LICENSE`, https://creativecommons.org/licenses/by-sa/4.0/).
"""
    (out / "README.md").write_text(text, encoding="utf-8")
    (out / "LICENSE").write_text(LICENSE_TEXT, encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=None, help="kuairand-1k folder")
    parser.add_argument("--out", type=Path, default=SAMPLE_DIR)
    parser.add_argument("--top-items", type=int, default=700)
    parser.add_argument("--users", type=int, default=400)
    parser.add_argument("--max-len", type=int, default=120)
    parser.add_argument("--min-item-count", type=int, default=5)
    parser.add_argument("--min-user-events", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    corpus = load_kuairand(args.source)
    dense = select(
        corpus.train,
        top_items=args.top_items,
        n_users=args.users,
        max_len=args.max_len,
        min_item_count=args.min_item_count,
        min_user_events=args.min_user_events,
        seed=args.seed,
    )
    if len(dense) == 0:
        raise SystemExit("the selection left no users; relax --min-item-count/--min-user-events")
    sequences, items = remap(dense)
    write_generic(args.out, sequences, items)

    sample = load_generic(args.out)  # measure on exactly what was written
    lengths = sequences.lengths
    surfaces, surface_counts = np.unique(sequences.surface, return_counts=True)
    stats: dict[str, object] = {
        "users": len(sequences),
        "events": int(lengths.sum()),
        "items": len(items),
        "len_min": int(lengths.min()),
        "len_median": int(np.median(lengths)),
        "len_max": int(lengths.max()),
        "surfaces": ", ".join(
            f"`{s}`: {c}"
            for s, c in sorted(zip(surfaces, surface_counts, strict=True), key=lambda x: -x[1])
        ),
        "n_valid": len(sample.valid),
        "n_test": len(sample.test),
    }
    for name, split in (("valid", sample.valid), ("test", sample.test)):
        recall = recall_at_10(sample.train, split)
        stats[f"{name}_pop"] = recall["most_popular"]
        stats[f"{name}_trans"] = recall["transition"]
    write_readme(args.out, args, stats)
    for key, value in stats.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
