#!/usr/bin/env bash
# The K = 1000 grid (issue 15) as a resumable queue, most decisive and cheapest cells first:
# SST-2 and STS-B for APL / adapter / LoRA / fine-tuning on every seed, then prefix and UniPELT (AP),
# then the sentence-pair tasks. Every stage is benchmarks/grid.py, which skips finished cells, so the
# script can be killed and restarted at any time. Rates: the validation-tuned K = 100 rates (rates/k100_tuned.json).
#   nohup nice -n 10 benchmarks/k1000_queue.sh > benchmarks/out/k1000_queue.log 2>&1 &
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
OUT=${OUT:-benchmarks/out/grid_k1000}
grid() {
    $PY "$CODE/benchmarks/grid.py" --out "$OUT" --k 1000 --n-valid 1000 --epochs 10 --patience 3 --threads 1 \
        --hyper benchmarks/rates/k100_tuned.json --data-dir "$DATA" "$@"
}
for seed in 1 2 3; do
    grid --tasks sst2,stsb --methods unipelt,adapter,lora,ft --seeds $seed
done
grid --tasks sst2,stsb --methods prefix,unipelt-ap --seeds 1,2,3
grid --tasks rte,mrpc,cola --methods unipelt,adapter,lora,ft --seeds 1,2,3
grid --tasks rte,mrpc,cola --methods prefix,unipelt-ap --seeds 1,2,3
