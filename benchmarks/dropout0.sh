#!/usr/bin/env bash
# Issue 15: does accuracy hold with the frozen backbone's dropout off (--backbone-dropout 0)? The same cells as
# the STS-B bias study (K = 100, label-mean start) and the K = 1000 grid, with backbone_dropout 0 added to every
# method's rates; compare with those folders cell by cell (same seeds = same samples). Resumable.
#   CODE=<frozen copy> nohup nice -n 10 benchmarks/dropout0.sh > benchmarks/out/dropout0.log 2>&1 &
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
CODE=${CODE:-.}
export PYTHONPATH=$CODE${PYTHONPATH:+:$PYTHONPATH}
DATA=${UNIPELT_DATA_DIR:-$(realpath ../shared/data/glue)}
OUT=${OUT:-benchmarks/out/dropout0}
mkdir -p "$OUT"
$PY - "$OUT" <<'PYEOF'
import json, sys
rates = json.load(open("benchmarks/rates/k100_tuned.json"))
json.dump({key: {**value, "backbone_dropout": 0.0} for key, value in rates.items()},
          open(f"{sys.argv[1]}/hyper.json", "w"), indent=1)
PYEOF
for seed in 1 2 3; do
    $PY "$CODE/benchmarks/grid.py" --out "$OUT" --tasks stsb --methods unipelt,adapter --k 100 --seeds $seed \
        --n-valid 200 --epochs 10 --patience 3 --threads 1 --hyper "$OUT/hyper.json" --data-dir "$DATA"
    $PY "$CODE/benchmarks/grid.py" --out "$OUT" --tasks sst2 --methods unipelt,adapter --k 1000 --seeds $seed \
        --n-valid 1000 --epochs 10 --patience 3 --threads 1 --hyper "$OUT/hyper.json" --data-dir "$DATA"
done
