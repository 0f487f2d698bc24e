#!/usr/bin/env bash
# The K = 1000 grid (issue 15) as a resumable queue. For the four methods the claim rests on (APL, adapter, LoRA,
# fine-tuning), then for prefix-tuning and UniPELT (AP):
#   1. seed 1 at the grid's rate (the validation-tuned K = 100 rates, rates/k100_tuned.json);
#   2. grid_tune.py: seed 1 again at 1/3 and 3 times that rate; per task and method the rate with the best
#      validation score wins, and its run becomes the seed-1 cell (OUT/tuned_rates.json, OUT/tuning.md);
#   3. seeds 2 and 3 at the chosen rates (grid.py --tuned defers a cell whose rate is not chosen yet; the stage
#      runs twice so the second pass catches cells another worker's candidates held up).
# After the four main methods, one worker (flock) runs the peer row: AdapterHub `adapters`' UniPELT on the same
# samples, seeds 1-3, at APL's chosen rate per task, with the same early stopping (peer_accuracy.py, in
# benchmarks/.venv-adapters; skipped when that environment is missing) while the other goes on to prefix and AP.
# Every stage skips finished cells and claims the cell it trains (flock), so the script can be killed and
# restarted at any time, and two copies of it (one per core) share the work:
#   for w in 1 2; do nohup nice -n 10 benchmarks/k1000_queue.sh > benchmarks/out/k1000_queue$w.log 2>&1 & done
# K=100 (K=100 N_VALID=1000 OUT=benchmarks/out/grid_k100) runs the other row of Table 1 the same way.
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
K=${K:-1000}
N_VALID=${N_VALID:-1000}
OUT=${OUT:-benchmarks/out/grid_k$K}
TASKS=rte,mrpc,stsb,cola,sst2
# METHOD_GROUPS: the groups of methods to run, in order (each group tuned, then seeded, before the next)
METHOD_GROUPS=${METHOD_GROUPS:-"unipelt,adapter,lora,ft prefix,unipelt-ap"}
FLAGS=(--out "$OUT" --k "$K" --n-valid "$N_VALID" --epochs 10 --patience 3 --threads 1
    --hyper benchmarks/rates/k100_tuned.json --data-dir "$DATA")
for methods in $METHOD_GROUPS; do
    $PY "$CODE/benchmarks/grid.py" "${FLAGS[@]}" --tasks $TASKS --methods $methods --seeds 1
    $PY "$CODE/benchmarks/grid_tune.py" "${FLAGS[@]}" --tasks $TASKS --methods $methods --seed 1
    for pass in 1 2; do
        $PY "$CODE/benchmarks/grid.py" "${FLAGS[@]}" --tasks $TASKS --methods $methods --seeds 2,3 \
            --tuned "$OUT/tuned_rates.json"
        $PY "$CODE/benchmarks/grid_tune.py" "${FLAGS[@]}" --seed 1 --report
    done
    PEER_PY=benchmarks/.venv-adapters/bin/python
    if [ "$methods" = unipelt,adapter,lora,ft ] && [ -x "$PEER_PY" ]; then
        flock -n "$OUT/.peer.lock" "$PEER_PY" "$CODE/benchmarks/peer_accuracy.py" --tasks $TASKS --ks "$K" \
            --seeds 1,2,3 --methods unipelt --epochs 10 --patience 3 --n-valid "$N_VALID" --threads 1 \
            --rates "$OUT/tuned_rates.json" --data-dir "$DATA" --verbose --resume \
            --out "benchmarks/out/peer_accuracy_k${K}_tuned.jsonl"
    fi
done
