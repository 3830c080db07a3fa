"""Choose the served blend of an already-trained model, as `uniserve train` does after training.

    python scripts/blend_model.py --data amazon-toys --model runs/toys [--save]

Picks the co-occurrence table (window / last / decay) and beta on the validation split
(`service.jobs.pipeline.choose_blend`), prints the test split's full-ranking metrics (seen items
removed) of the model alone and of the blend, and with `--save` writes `neighbours.safetensors`
into the model directory (for models trained before the blend existed; the model's fingerprint
changes, so rebuild its index with `uniserve build-index`). A beta of 0 saves nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="dataset name or folder (as for train)")
    parser.add_argument("--model", required=True, help="trained model directory")
    parser.add_argument("--save", action="store_true", help="write the blend into --model")
    args = parser.parse_args()

    from models.artifacts import load_model, model_fingerprint
    from models.data import load_corpus
    from models.evaluate import evaluate_model
    from service.jobs.pipeline import choose_blend

    corpus = load_corpus(args.data)
    model, _, vocab, _ = load_model(Path(args.model))
    started = time.perf_counter()
    blend, _, info = choose_blend(model, vocab, corpus)
    print(f"chosen on validation in {time.perf_counter() - started:.1f}s: {json.dumps(info)}")
    arms = [("model alone", None), *([("served blend", blend)] if blend else [])]
    for name, chosen in arms:
        report = evaluate_model(model, vocab, corpus.test, blend=chosen)["all"]
        for protocol in ("full_seen_removed", "full", "sampled"):
            values = " ".join(f"{k} {v:.4f}" for k, v in report[protocol].items())
            print(f"test {name:<12} {protocol:<18} {values}")
    if args.save and blend is not None:
        blend.save(Path(args.model))
        print(f"saved; the model's fingerprint is now {model_fingerprint(Path(args.model))}")


if __name__ == "__main__":
    main()
