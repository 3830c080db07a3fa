#!/usr/bin/env bash
# The GPU check (issue 22), one script for a lent accelerator machine, run from the repo root:
#   OUT=runs/gpu UNISERVE_SHARED_DATA=/path/to/data bash scripts/gpu_check.sh
# 1. trains the default config on Amazon Toys and Sports (S3-Rec) with --device cuda, both at
#    once on the one GPU, each under TRAIN_TIMEOUT seconds;
# 2. publishes a Flat index of a synthetic catalogue of CATALOGUE_ITEMS new items (metadata only:
#    cold-start vectors from the Sports model) with CUDA catalogue encoding (faiss on the CPU:
#    no GPU faiss wheel fits the machine's transfer limit), reporting items/s;
# 3. runs the test suite's device tests (the models and build tests; CUDA is picked at run time).
# Logs and a summary JSON go to $OUT. Nothing here is needed on a CPU machine.
set -uo pipefail
OUT=${OUT:-runs/gpu}
TRAIN_TIMEOUT=${TRAIN_TIMEOUT:-200}
CATALOGUE_ITEMS=${CATALOGUE_ITEMS:-2000000}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
python3 - > "$OUT/device.txt" 2>&1 <<'PY'
import os, torch
print(torch.__version__, torch.cuda.get_device_name(0), os.cpu_count(), "CPUs")
PY
cat "$OUT/device.txt"

start=$EPOCHREALTIME
for ds in toys sports; do
  (
    t0=$EPOCHREALTIME
    timeout "$TRAIN_TIMEOUT" python3 -m service.cli train --data "amazon-$ds" \
      --out "$OUT/model-$ds" --device cuda --quiet > "$OUT/train-$ds.log" 2>&1
    echo "exit $? wall $(awk "BEGIN{print $EPOCHREALTIME - $t0}") s" >> "$OUT/train-$ds.log"
  ) &
done
wait
for ds in toys sports; do echo "== train $ds"; tail -25 "$OUT/train-$ds.log"; done

python3 - "$OUT/catalogue.parquet" "$CATALOGUE_ITEMS" <<'PY'
# new items described like real Sports items: a real item's tags plus two more real tags
import os, sys
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
path, n = sys.argv[1], int(sys.argv[2])
root = os.environ.get("UNISERVE_SHARED_DATA", "../shared/data")
real = pq.read_table(f"{root}/amazon-s3rec/sports/items.parquet").column("tags").to_pylist()
vocab = np.array(sorted({w for t in real for w in (t or "").split()}), dtype=object)
rng = np.random.default_rng(0)
base = np.array(real, dtype=object)[rng.integers(0, len(real), n)]
extra = vocab[rng.integers(0, len(vocab), (n, 2))]
tags = [f"{b or ''} {e1} {e2}".strip() for b, (e1, e2) in zip(base, extra)]
pq.write_table(pa.table({"item_id": [f"new-{i}" for i in range(n)], "tags": tags}), path)
PY
t0=$EPOCHREALTIME
timeout 240 python3 -m service.cli build-index --model "$OUT/model-sports" \
  --index-root "$OUT/index" --catalog "$OUT/catalogue.parquet" --type Flat \
  --device cuda --quiet > "$OUT/build.log" 2>&1
echo "exit $? wall $(awk "BEGIN{print $EPOCHREALTIME - $t0}") s" >> "$OUT/build.log"
echo "== build-index"; tail -5 "$OUT/build.log"

timeout 200 python3 -m pytest -q -p no:cacheprovider tests/models tests/jobs \
  -k "device or cuda or catalog or encode" > "$OUT/tests.log" 2>&1
echo "exit $?" >> "$OUT/tests.log"
echo "== device tests"; tail -8 "$OUT/tests.log"
echo "total $(awk "BEGIN{print $EPOCHREALTIME - $start}") s"
