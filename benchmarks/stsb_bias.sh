#!/usr/bin/env bash
# Issue 15: STS-B with the regression head's bias started at the training-label mean vs at zero (the old start),
# same cells otherwise (validation-tuned rates of rates/k100_tuned.json). Resumable (grid.py skips finished cells).
# K = 100 follows the K = 100 grid's protocol (200 validation examples); K = 1000 the K = 1000 grid's.
#   nohup nice -n 10 benchmarks/stsb_bias.sh > benchmarks/out/stsb_bias.log 2>&1 &
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
# CODE: a frozen copy of the package to run (e.g. `git archive HEAD | tar -x -C DIR`), so that edits others make
# to the shared tree during a long run cannot break or change it half-way; default this tree.
CODE=${CODE:-.}
export PYTHONPATH=$CODE${PYTHONPATH:+:$PYTHONPATH}
# WAIT_PID: start only when this process (an earlier run of the queue) has ended
while [ -n "${WAIT_PID:-}" ] && kill -0 "$WAIT_PID" 2>/dev/null; do sleep 20; done
DATA=${UNIPELT_DATA_DIR:-$(realpath ../shared/data/glue)}
OUT=${OUT:-benchmarks/out/stsb_bias}
mkdir -p "$OUT"
$PY - "$OUT" <<'PYEOF'
import json, sys
rates = json.load(open("benchmarks/rates/k100_tuned.json"))
for start in ("label-mean", "zero"):
    json.dump({key: {**value, "regression_bias": start} for key, value in rates.items()},
              open(f"{sys.argv[1]}/hyper-{start}.json", "w"), indent=1)
PYEOF
# APL and the adapter (the K = 100 grid's best single method) on every seed first, then LoRA and fine-tuning
for methods in unipelt,adapter lora,ft; do
    for seed in 1 2 3; do
        for start in label-mean zero; do
            $PY "$CODE/benchmarks/grid.py" --out "$OUT/$start" --tasks stsb --methods $methods --k 100 --seeds $seed \
                --n-valid 200 --epochs 10 --patience 3 --threads 1 --hyper "$OUT/hyper-$start.json" --data-dir "$DATA"
        done
    done
done
for seed in 1 2 3; do
    for start in label-mean zero; do
        $PY "$CODE/benchmarks/grid.py" --out "$OUT/$start" --tasks stsb --methods unipelt,adapter --k 1000 \
            --seeds $seed --n-valid 1000 --epochs 10 --patience 3 --threads 1 --hyper "$OUT/hyper-$start.json" \
            --data-dir "$DATA"
    done
done
