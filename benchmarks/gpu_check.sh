#!/usr/bin/env bash
# Every life-cycle verb on one device, end to end, in at most 8 minutes on a CUDA machine: train a small
# UniPELT and an autopelt run (MiniLM, real GLUE RTE, a few steps), evaluate, predict, optimize, generate
# (SmolLM2), serve one request, and run the cost table, all with --device "$DEVICE".
#
#   bash benchmarks/gpu_check.sh                 # DEVICE=cuda
#   DEVICE=cpu STEPS=2 K=16 N_VALID=16 MAX_LENGTH=64 COST_ARGS="--repeats 1 --no-train" \
#     nice -n 10 bash benchmarks/gpu_check.sh   # a dry check of the script on a machine without a GPU
#
# Needs `make setup` (MiniLM, SmolLM2) and GLUE TSVs in $DATA_DIR (default ../shared/data/glue). Writes into
# $OUT (default a fresh temporary folder) and prints one "ok" line per step with its seconds; stops at the
# first failing step.
set -euo pipefail
DEVICE=${DEVICE:-cuda}
DATA_DIR=${DATA_DIR:-$(cd "$(dirname "$0")/.." && pwd)/../shared/data/glue}
OUT=${OUT:-$(mktemp -d)}
PORT=${PORT:-8765}
STEPS=${STEPS:-30}        # training steps of each run
K=${K:-64}                # training examples (--k) and validation examples (--n-valid) of each run
N_VALID=${N_VALID:-32}
MAX_LENGTH=${MAX_LENGTH:-128}
COST_ARGS=${COST_ARGS:---repeats 5 --train-repeats 2}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
UNIPELT=${UNIPELT:-unipelt}
COMMON=(--device "$DEVICE")

step() {  # step NAME COMMAND...: run it, print its seconds, stop the script when it fails
  local name=$1 start=$SECONDS
  shift
  if "$@" >"$OUT/$name.log" 2>&1; then
    echo "ok   $name ($((SECONDS - start)) s)"
  else
    echo "FAIL $name ($((SECONDS - start)) s): last lines of $OUT/$name.log"
    tail -n 20 "$OUT/$name.log"
    exit 1
  fi
}

python -c "import torch; print('torch', torch.__version__, 'cuda' if torch.cuda.is_available() else 'no cuda', torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
echo "device $DEVICE, data $DATA_DIR, output $OUT"
TRAIN=(train --model minilm --task rte --data-dir "$DATA_DIR" --k "$K" --n-valid "$N_VALID" --max-steps "$STEPS"
  --batch-size 16 --max-length "$MAX_LENGTH" "${COMMON[@]}")
step train-unipelt "$UNIPELT" "${TRAIN[@]}" --method unipelt --out "$OUT/unipelt"
step train-autopelt "$UNIPELT" "${TRAIN[@]}" --method autopelt --out "$OUT/autopelt"
grep -h '"device"' "$OUT/unipelt/config.json" "$OUT/autopelt/config.json"
step eval "$UNIPELT" eval "$OUT/unipelt" --json "${COMMON[@]}"
step eval-bf16 "$UNIPELT" eval "$OUT/unipelt" --json --dtype bf16 "${COMMON[@]}"
printf 'A man is sleeping.\tA person rests.\nThe cat sat on the mat.\tNo animal is present.\n' >"$OUT/pairs.txt"
step predict "$UNIPELT" predict "$OUT/unipelt" --input "$OUT/pairs.txt" "${COMMON[@]}"
step optimize "$UNIPELT" optimize "$OUT/unipelt" --out "$OUT/unipelt-optimized" "${COMMON[@]}"
step eval-optimized "$UNIPELT" eval "$OUT/unipelt-optimized" --json "${COMMON[@]}"
step generate "$UNIPELT" generate smollm2 --prompt "Name a colour." --max-new-tokens 16 "${COMMON[@]}"

"$UNIPELT" serve "$OUT/unipelt" --port "$PORT" "${COMMON[@]}" >"$OUT/serve.log" 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true' EXIT
serve_request() {
  python - "$PORT" <<'PY'
import json, sys, time, urllib.request
port = int(sys.argv[1])
for _ in range(240):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
        break
    except OSError:
        time.sleep(0.5)
task = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/tasks"))
name = task["tasks"][0]["name"] if isinstance(task, dict) else task[0]["name"]
body = json.dumps({"task": name, "inputs": [["A man is sleeping.", "A person rests."]]}).encode()
request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/predict", body, {"Content-Type": "application/json"})
print(json.load(urllib.request.urlopen(request, timeout=60)))
PY
}
step serve serve_request
kill "$SERVER" 2>/dev/null || true

# shellcheck disable=SC2086  # COST_ARGS holds several flags
step cost python -m benchmarks.cost --model minilm --methods base,full_ft,unipelt,lora_merged --no-memory \
  $COST_ARGS "${COMMON[@]}" --out "$OUT/cost.jsonl"
cat "$OUT/eval.log" "$OUT/eval-bf16.log" "$OUT/eval-optimized.log" "$OUT/predict.log" "$OUT/generate.log"
tail -n 12 "$OUT/cost.log"
echo "gpu_check: every step passed on $DEVICE in $SECONDS s"
