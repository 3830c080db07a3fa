#!/usr/bin/env bash
# One wrong-promotion trial (issue 20): two models of the same default config trained on the
# shipped sample with seeds A and B (equally good by construction), B published as the shadow,
# A live, `uniserve bench replay` over 400 test users, then the gated promotion. A promotion here
# is a wrong one. Usage: bash scripts/promotion_trial.sh A B   (work files under /tmp/wp).
set -u
A=$1; B=$2; W=/tmp/wp/t$A-$B; rm -rf $W; mkdir -p $W
U=${UNISERVE:-uniserve}
export OMP_NUM_THREADS=1
$U train --data sample --out $W/ma --seed $A --quiet > $W/train-a.log 2>&1
$U train --data sample --out $W/mb --seed $B --quiet > $W/train-b.log 2>&1
$U build-index --model $W/mb --index-root $W/idx --type Flat --quiet > $W/b.log 2>&1
VB=$(ls $W/idx/versions | tail -1)
$U build-index --model $W/ma --index-root $W/idx --type Flat --quiet > $W/a.log 2>&1
PORT=$((18800 + A))
UNISERVE_MODEL_DIR=$W/ma UNISERVE_INDEX_ROOT=$W/idx UNISERVE_SHADOW_VERSION=$VB UNISERVE_SHADOW_SAMPLE=1 \
  UNISERVE_ADMIN_KEY=trial-admin-key-0123456789 UNISERVE_TORCH_THREADS=1 UNISERVE_INDEX_POLL_SECONDS=0 \
  $U serve --no-bootstrap --port $PORT > $W/serve.log 2>&1 &
SP=$!
for i in $(seq 60); do curl -sf localhost:$PORT/readyz >/dev/null && break; sleep 1; done
UNISERVE_ADMIN_KEY=trial-admin-key-0123456789 ${PYTHON:-python} scripts/replay.py --url http://127.0.0.1:$PORT --users 400 \
  --live-model $W/ma --shadow-model $W/mb --promote --min-events 200 > $W/replay.log 2>&1
kill $SP; wait $SP 2>/dev/null
echo "== seeds $A $B"; tail -n 12 $W/replay.log
