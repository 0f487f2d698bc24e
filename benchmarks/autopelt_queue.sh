#!/usr/bin/env bash
# AutoPELT numbers (issue 11), the trainings: APL and autopelt at three latency weights on MiniLM, one task
# and seed per call, all four in parallel (one thread each, niced). Finished runs are skipped, so the script can
# be killed and restarted. Then `python benchmarks/autopelt.py` optimizes, times and reports.
#   nohup nice -n 10 benchmarks/autopelt_queue.sh sst2 1 > benchmarks/out/autopelt_queue.log 2>&1 &
set -u
cd "$(dirname "$0")/.."
TASK=${1:-sst2}
SEED=${2:-1}
PY=${PY:-.venv/bin/python}
DATA=${UNIPELT_DATA_DIR:-$(realpath ../shared/data/glue)}
OUT=${OUT:-benchmarks/out/autopelt}
EPOCHS=${EPOCHS:-3}
NVALID=${NVALID:-200}
WEIGHTS=${WEIGHTS-"0.3 3 30"}  # WEIGHTS="" trains no autopelt run
EXTRA=${EXTRA:-}  # more train flags for every run, e.g. EXTRA="--regression-bias label-mean"
cell() {  # method folder extra-args...
    local folder="$OUT/$TASK/k1000/$2/seed-$SEED"
    [ -f "$folder/metrics.json" ] && { echo "done: $folder"; return; }
    rm -rf "$folder"
    $PY -m unipelt.cli train --model minilm --task "$TASK" --data-dir "$DATA" --method "$1" --k 1000 \
        --n-valid "$NVALID" --epochs "$EPOCHS" --patience 3 --seed "$SEED" --threads 1 --out "$folder" $EXTRA "${@:3}" \
        > "$folder.log" 2>&1 && echo "finished: $folder" || echo "FAILED: $folder"
}
mkdir -p "$OUT/$TASK/k1000"
for w in $WEIGHTS; do
    mkdir -p "$OUT/$TASK/k1000/autopelt-lw$w"
    cell autopelt "autopelt-lw$w" --latency-weight "$w" &
done
# single methods for the Pareto line, at the validation-tuned K = 100 rates (benchmarks/rates/k100_tuned.json)
for m in ${SINGLES:-}; do
    case $m in lora|adapter) lr=3e-3 ;; *) lr=1e-3 ;; esac
    mkdir -p "$OUT/$TASK/k1000/$m"
    cell "$m" "$m" --lr "$lr" &
done
if [ "${APL:-1}" = 1 ]; then
    mkdir -p "$OUT/$TASK/k1000/unipelt"
    cell unipelt unipelt &
fi
wait
