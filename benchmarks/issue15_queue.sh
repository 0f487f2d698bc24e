#!/usr/bin/env bash
# Everything issue 15 still measures, in order, as one resumable queue; run one copy per core. The claim's four
# methods (APL, adapter, LoRA, fine-tuning) come first in both rows of Table 1, then what completes the tables:
#   1. the K = 1000 grid of the four (k1000_queue.sh: tuning, seeds 1-3, then the peer row on one worker);
#   2. the backbone-dropout-0 cells of APL in the K = 1000 grid (dropout0.sh STAGE=grid), cheap tasks first, to
#      decide the default;
#   3. the K = 100 row of the four, the same way (1000 validation examples, its own peer row);
#   4. prefix-tuning and UniPELT (AP) at K = 100 (cells of a few minutes, so the K = 100 row is complete first),
#      then at K = 1000;
#   5. the backbone-dropout-0 cells of the adapter.
# Each stage skips finished cells and claims the cell it trains, so copies share the work and a killed queue
# starts again where it stopped:
#   rm -rf /tmp/code && mkdir /tmp/code && git archive HEAD | tar -x -C /tmp/code
#   for w in 1 2; do CODE=/tmp/code nohup nice -n 10 benchmarks/issue15_queue.sh > benchmarks/out/issue15_w$w.log 2>&1 & done
set -u
cd "$(dirname "$0")/.."
MAIN=unipelt,adapter,lora,ft
METHOD_GROUPS=$MAIN K=1000 benchmarks/k1000_queue.sh
STAGE=grid METHODS=unipelt TASKS=sst2,cola,mrpc,stsb,rte benchmarks/dropout0.sh
METHOD_GROUPS=$MAIN K=100 N_VALID=1000 benchmarks/k1000_queue.sh
METHOD_GROUPS=prefix,unipelt-ap K=100 N_VALID=1000 benchmarks/k1000_queue.sh
METHOD_GROUPS=prefix,unipelt-ap K=1000 benchmarks/k1000_queue.sh
STAGE=grid METHODS=adapter benchmarks/dropout0.sh
