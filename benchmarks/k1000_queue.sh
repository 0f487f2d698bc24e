#!/usr/bin/env bash
# The K = 1000 grid (issue 15) as a resumable queue, seed by seed so that a queue cut short still holds every
# task and method for the seeds it reached: APL, adapter, LoRA and fine-tuning (the comparison the claim rests on)
# on all five tasks, seed 1, then seed 2, then seed 3; then prefix-tuning and UniPELT (AP) on the three seeds. Every stage is benchmarks/grid.py, which skips
# finished cells and claims the cell it trains, so the script can be killed and restarted at any time, and two
# copies of it (one per core) share the work. Rates: the validation-tuned K = 100 rates (rates/k100_tuned.json).
#   for w in 1 2; do nohup nice -n 10 benchmarks/k1000_queue.sh > benchmarks/out/k1000_queue$w.log 2>&1 & done
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
TASKS=rte,mrpc,stsb,cola,sst2
MAIN=unipelt,adapter,lora,ft
grid() {
    $PY "$CODE/benchmarks/grid.py" --out "$OUT" --k 1000 --n-valid 1000 --epochs 10 --patience 3 --threads 1 \
        --hyper benchmarks/rates/k100_tuned.json --data-dir "$DATA" "$@"
}
grid --tasks $TASKS --methods $MAIN --seeds 1
grid --tasks $TASKS --methods $MAIN --seeds 2
grid --tasks $TASKS --methods $MAIN --seeds 3
grid --tasks $TASKS --methods prefix,unipelt-ap --seeds 1,2,3
