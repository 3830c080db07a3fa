#!/usr/bin/env bash
# The GPU check (issue 22): one script for a lent accelerator machine, run from the repo root:
#   OUT=runs/gpu UNISERVE_SHARED_DATA=/path/to/data bash scripts/gpu_check.sh [RUN ...]
# RUN is "DATASET [train flags]" (default: "toys" "sports", the default config on Amazon Toys
# and Sports, S3-Rec); every RUN trains at once on the one GPU with --device cuda (a Sports
# run under SPORTS_BUDGET seconds of training when that is set), beside the model and index
# suites (every training and catalogue encoding in them picks CUDA at run time there). Then
# publishes a Flat index of a synthetic catalogue of CATALOGUE_ITEMS new items, described like
# real Toys items (metadata only: cold-start vectors), with CUDA catalogue encoding (faiss on
# the CPU: no GPU faiss wheel fits the device tool's transfer limit); items/s is in build.log's
# JSON line. Logs go to $OUT. Nothing here is needed, or run, on a CPU machine.
# The device machine has torch, numpy, pyarrow, safetensors, tqdm, httpx, hypothesis and
# pytest; carry the rest as cp312 wheels (pip download --no-deps): faiss-cpu, fastapi,
# starlette, uvicorn, redis, pydantic, pydantic-core, pydantic-settings, python-dotenv, orjson,
# annotated-types, annotated-doc, typing-inspection, typing-extensions and opentelemetry-api
# (fastapi imports it). TRAIN_TIMEOUT bounds each training with its test evaluation.
set -uo pipefail
OUT=${OUT:-runs/gpu}
CATALOGUE_ITEMS=${CATALOGUE_ITEMS:-2000000}
DEVICE=${DEVICE:-cuda}  # cpu: a dry run of this script on a machine without a GPU
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
start=$EPOCHREALTIME
since() { awk "BEGIN{printf \"%.1f\", $EPOCHREALTIME - $1}"; }
python3 -c "import os, torch; print(torch.__version__, torch.cuda.get_device_name(0), os.cpu_count(), 'CPUs')" \
  | tee "$OUT/device.txt"

train() {  # name, dataset, extra flags... (a run with --device cpu gets CPU_THREADS threads)
  local name=$1 ds=$2 t0=$EPOCHREALTIME threads=${GPU_RUN_THREADS:-1}
  shift 2
  case " $* " in *" --device cpu "*) threads=${CPU_THREADS:-3} ;; esac
  OMP_NUM_THREADS=$threads timeout "${TRAIN_TIMEOUT:-600}" python3 -m service.cli train --data "amazon-$ds" \
    --out "$OUT/model-$name" --device "$DEVICE" --quiet "$@" > "$OUT/train-$name.log" 2>&1
  echo "exit $? wall $(since "$t0") s" >> "$OUT/train-$name.log"
}
[ $# -gt 0 ] || set -- toys sports
names=() pids=()
for spec in "$@"; do
  read -r ds flags <<< "$spec"
  name="$ds$(( ${#names[@]} + 1 ))"
  names+=("$name")
  budget=()
  [ "$ds" = sports ] && [ -n "${SPORTS_BUDGET:-}" ] && budget=(--time-budget "$SPORTS_BUDGET")
  # shellcheck disable=SC2086  # flags are words
  train "$name" "$ds" "${budget[@]}" $flags &
  pids+=($!)
  echo "$name: $spec" >> "$OUT/runs.txt"
done
(
  t0=$EPOCHREALTIME
  OMP_NUM_THREADS=2 timeout "${TEST_TIMEOUT:-300}" python3 -m pytest -q -p no:cacheprovider tests/models tests/index \
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
wait "${pids[0]}"  # the index is built with the first run's model
t0=$EPOCHREALTIME
timeout 120 python3 -m service.cli build-index --model "$OUT/model-${names[0]}" \
  --index-root "$OUT/index" --catalog "$OUT/catalogue.parquet" --type Flat \
  --device "$DEVICE" --quiet > "$OUT/build.log" 2>&1
echo "exit $? wall $(since "$t0") s" >> "$OUT/build.log"
echo "== build-index"; tail -4 "$OUT/build.log"
wait
cat "$OUT/runs.txt"
for name in "${names[@]}"; do echo "== train $name"; tail -24 "$OUT/train-$name.log"; done
echo "== device tests"; tail -6 "$OUT/tests.log"
echo "total $(since "$start") s"
