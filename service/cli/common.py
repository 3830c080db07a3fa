"""What the subcommands share: the --data help, exit statuses, the metrics report printer."""

from __future__ import annotations

from typing import Any

DATA_HELP = (
    "dataset: 'sample' (shipped KuaiRand sample), 'kuairand', 'amazon-art-office', "
    "'amazon-sports', 'amazon-toys' (../shared/data/amazon-s3rec), or a directory in the "
    "generic format (interactions.parquet [+ items.parquet])"
)

EXIT_ERROR = 2  # bad arguments or inputs
EXIT_REFUSED = 3  # the index was refused (gate, or a damaged version); nothing was changed


def print_report(report: dict[str, Any]) -> None:
    metrics = report.get("metrics")
    if metrics:
        print(
            f"{'':14}{'group':>8}{'n':>7}  {'protocol':<18}" + "".join(f"{m:>11}" for m in _METRICS)
        )
        for who in ("most_popular", "cooccurrence", "model_alone", "model"):
            for group, res in metrics.get(who, {}).items():
                for protocol in ("full_seen_removed", "full", "sampled"):
                    if protocol not in res:
                        continue
                    vals = "".join(f"{res[protocol][m]:>11.4f}" for m in _METRICS)
                    print(f"{who:<14}{group:>8}{res['n']:>7}  {protocol:<18}{vals}")
    within = report.get("within_surface")
    if within:
        print("full ranking within the target's surface (what /v1/retrieve with surfaces does):")
        for who in ("most_popular", "model"):
            for group, res in within[who].items():
                vals = "".join(f"{res[m]:>11.4f}" for m in _METRICS)
                print(f"{who:<14}{group:>16}{res['n']:>6}  {vals}")
    if "training" in report:
        t = report["training"]
        print(f"training: {t['steps']} steps in {t['seconds']}s, epoch losses {t['epoch_losses']}")
        race = t.get("norm_race")
        if race:
            curves = "; ".join(
                f"{norm}-norm {race[norm]}" for norm in ("post", "pre") if norm in race
            )
            print(f"norm race over {race['epochs']} epochs ({curves}): {race['kept']}-norm kept")
        if t.get("selected_on"):
            print(f"epoch selected on {t['selected_on']}")
        if t.get("best_epoch"):
            per_epoch = ", ".join(
                f"({name}) {t[key]}"
                for name, key in (
                    ("sampled", "valid_ndcg@10_sampled"),
                    ("full ranking", "valid_ndcg@10_full"),
                    ("seen removed", "valid_ndcg@10_full_seen_removed"),
                )
                if t.get(key)
            )
            print(
                f"validation NDCG@10 per epoch {per_epoch}: kept epoch {t['best_epoch']}"
                + (f" ({t['stopped']})" if t.get("stopped") else "")
            )
    if report.get("cooccurrence_valid_ndcg@10"):
        tried = report["cooccurrence_valid_ndcg@10"]
        print(f"co-occurrence baseline, validation NDCG@10 (seen removed) per setting: {tried}")
    blend = report.get("blend")
    if blend:
        chose = (
            f"beta {blend['beta']:g}: model score + beta x log(1 + co-occurrence), window "
            f"{blend['window']}, last {blend['last']}, decay {blend['decay']:g}"
            + (", counted both ways" if blend.get("two_way") else "")
            if blend["beta"]
            else "beta 0: the model alone"
        )
        tried = blend.get("valid_ndcg@10_by_beta")
        ways = blend.get("cooccurrence_valid_ndcg@10_by_way")
        print(
            f"served blend ({chose})"
            + (f"; validation NDCG@10 by beta: {tried}" if tried else "")
            + (f"; co-occurrence alone by way of counting: {ways}" if ways else "")
        )
    if "fingerprint" in report:
        print(f"model fingerprint {report['fingerprint']}")


_METRICS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20")
