#!/usr/bin/env bash
# The GPU check (issue 22): one script for a lent accelerator machine, run from the repo root:
#   OUT=runs/gpu UNISERVE_SHARED_DATA=/path/to/data bash scripts/gpu_check.sh
# At once on the one GPU: trains the default config on Amazon Toys and Sports (S3-Rec) with
# --device cuda (Sports under SPORTS_BUDGET seconds of training), and runs the model and index
# suites (every training and catalogue encoding in them picks CUDA at run time there). Then publishes a Flat
# index of a synthetic catalogue of CATALOGUE_ITEMS new items, described like real Toys items
# (metadata only: cold-start vectors), with CUDA catalogue encoding (faiss on the CPU: no GPU
# faiss wheel fits the device tool's transfer limit); items/s is in build.log's JSON line.
# Logs go to $OUT. Nothing here is needed, or run, on a CPU machine.
# The device machine has torch, numpy, pyarrow, safetensors, tqdm, httpx and pytest; carry the
# rest as cp312 wheels (pip download --no-deps): faiss-cpu, fastapi, starlette, uvicorn, redis,
# pydantic, pydantic-core, pydantic-settings, python-dotenv, orjson, annotated-types,
# annotated-doc, typing-inspection, typing-extensions and opentelemetry-api (fastapi imports it).
# TRAIN_TIMEOUT bounds each training with its test evaluation: 220 s was too short for either
# (BENCHMARKS.md, "GPU").
set -uo pipefail
OUT=${OUT:-runs/gpu}
SPORTS_BUDGET=${SPORTS_BUDGET:-140}
CATALOGUE_ITEMS=${CATALOGUE_ITEMS:-2000000}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
start=$EPOCHREALTIME
since() { awk "BEGIN{printf \"%.1f\", $EPOCHREALTIME - $1}"; }
python3 -c "import os, torch; print(torch.__version__, torch.cuda.get_device_name(0), os.cpu_count(), 'CPUs')" \
  | tee "$OUT/device.txt"

train() {  # dataset, extra flags...
  local ds=$1 t0=$EPOCHREALTIME
  shift
  timeout "${TRAIN_TIMEOUT:-600}" python3 -m service.cli train --data "amazon-$ds" --out "$OUT/model-$ds" \
    --device cuda --quiet "$@" > "$OUT/train-$ds.log" 2>&1
  echo "exit $? wall $(since "$t0") s" >> "$OUT/train-$ds.log"
}
train toys & toys=$!
train sports --time-budget "$SPORTS_BUDGET" &
(
  t0=$EPOCHREALTIME
  timeout 200 python3 -m pytest -q -p no:cacheprovider tests/models tests/index \
    > "$OUT/tests.log" 2>&1
  echo "exit $? wall $(since "$t0") s" >> "$OUT/tests.log"
) &
python3 - "$OUT/catalogue.parquet" "$CATALOGUE_ITEMS" <<'PY'
# new items described like real Toys items: a real item's tags plus two more real tags
import os, sys
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
path, n = sys.argv[1], int(sys.argv[2])
root = os.environ.get("UNISERVE_SHARED_DATA", "../shared/data")
real = pq.read_table(f"{root}/amazon-s3rec/toys/items.parquet").column("tags").to_pylist()
vocab = np.array(sorted({w for t in real for w in (t or "").split()}), dtype=object)
rng = np.random.default_rng(0)
base = np.array(real, dtype=object)[rng.integers(0, len(real), n)]
extra = vocab[rng.integers(0, len(vocab), (n, 2))]
tags = [f"{b or ''} {e1} {e2}".strip() for b, (e1, e2) in zip(base, extra)]
pq.write_table(pa.table({"item_id": [f"new-{i}" for i in range(n)], "tags": tags}), path)
PY
wait "$toys"
echo "== train toys"; tail -22 "$OUT/train-toys.log"
t0=$EPOCHREALTIME
timeout 120 python3 -m service.cli build-index --model "$OUT/model-toys" \
  --index-root "$OUT/index" --catalog "$OUT/catalogue.parquet" --type Flat \
  --device cuda --quiet > "$OUT/build.log" 2>&1
echo "exit $? wall $(since "$t0") s" >> "$OUT/build.log"
echo "== build-index"; tail -4 "$OUT/build.log"
wait
echo "== train sports"; tail -22 "$OUT/train-sports.log"
echo "== device tests"; tail -6 "$OUT/tests.log"
echo "total $(since "$start") s"
