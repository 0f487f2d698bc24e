#!/usr/bin/env bash
# Issue 15: does accuracy hold with the frozen backbone's dropout off (--backbone-dropout 0)? Same seeds = same
# samples and initialisation, so compare with the folder run with dropout on, cell by cell
# (benchmarks/compare_runs.py). Resumable.
#   STAGE=stsb (default): the cells of the STS-B bias study (K = 100, label-mean start) and SST-2 K = 1000, at
#     rates/k100_tuned.json, into benchmarks/out/dropout0;
#   STAGE=grid: the K = 1000 grid's cells (GRID, default benchmarks/out/grid_k1000) at their chosen rates
#     (GRID/tuned_rates.json), APL then the adapter (METHODS="unipelt adapter"), 5 tasks (TASKS, in that order),
#     seeds 1-3, into GRID_dropout0.
#   CODE=<frozen copy> STAGE=grid nohup nice -n 10 benchmarks/dropout0.sh > benchmarks/out/dropout0_grid.log 2>&1 &
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
CODE=${CODE:-.}
export PYTHONPATH=$CODE${PYTHONPATH:+:$PYTHONPATH}
DATA=${UNIPELT_DATA_DIR:-$(realpath ../shared/data/glue)}
STAGE=${STAGE:-stsb}
GRID=${GRID:-benchmarks/out/grid_k1000}
TASKS=${TASKS:-rte,mrpc,stsb,cola,sst2}  # grid stage only
if [ "$STAGE" = grid ]; then OUT=${OUT:-${GRID}_dropout0}; else OUT=${OUT:-benchmarks/out/dropout0}; fi
mkdir -p "$OUT"
# the rates of the runs it is compared with, plus backbone_dropout 0 (the grid stage takes the chosen rates
# from --tuned, which also defers a cell whose rate is not chosen yet)
$PY - "$OUT" <<'PYEOF'
import json, sys
rates = json.load(open("benchmarks/rates/k100_tuned.json"))
json.dump({key: {**value, "backbone_dropout": 0.0} for key, value in rates.items()},
          open(f"{sys.argv[1]}/hyper.json", "w"), indent=1)
PYEOF
if [ "$STAGE" = grid ]; then
    for methods in ${METHODS:-unipelt adapter}; do
        $PY "$CODE/benchmarks/grid.py" --out "$OUT" --tasks "$TASKS" --methods $methods --k 1000 \
            --seeds 1,2,3 --n-valid 1000 --epochs 10 --patience 3 --threads 1 --hyper "$OUT/hyper.json" \
            --tuned "$GRID/tuned_rates.json" --data-dir "$DATA"
    done
    exit
fi
for seed in 1 2 3; do
    $PY "$CODE/benchmarks/grid.py" --out "$OUT" --tasks stsb --methods unipelt,adapter --k 100 --seeds $seed \
        --n-valid 200 --epochs 10 --patience 3 --threads 1 --hyper "$OUT/hyper.json" --data-dir "$DATA"
    $PY "$CODE/benchmarks/grid.py" --out "$OUT" --tasks sst2 --methods unipelt,adapter --k 1000 --seeds $seed \
        --n-valid 1000 --epochs 10 --patience 3 --threads 1 --hyper "$OUT/hyper.json" --data-dir "$DATA"
done
