#!/usr/bin/env bash
# RTE, MiniLM, K=100, seeds 1-3: full fine-tuning, UniPELT (APL) and LoRA, with the CLI; one folder per method in benchmarks/out/issue3/.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${UNIPELT_DATA_DIR:-$(cd .. && pwd)/shared/data/glue}
for method in unipelt lora ft; do
  /usr/bin/time -f "$method wall %e s" unipelt train --model minilm --task rte --data-dir "$DATA" --method "$method" \
    --k 100 --seeds 1,2,3 --n-valid 200 --epochs 10 --patience 3 --out "benchmarks/out/issue3/$method"
done
