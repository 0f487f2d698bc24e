#!/usr/bin/env bash
# Everything issue 15 still measures, in order, as one resumable queue; run one copy per core:
#   1. the K = 1000 grid (k1000_queue.sh: four main methods, the peer row, then prefix and AP);
#   2. the backbone-dropout-0 cells of that grid (dropout0.sh STAGE=grid: APL, then the adapter);
#   3. the K = 100 row the same way as the K = 1000 one (K=100, 1000 validation examples).
# Each stage skips finished cells and claims the cell it trains, so copies share the work and a killed queue
# starts again where it stopped:
#   rm -rf /tmp/code && mkdir /tmp/code && git archive HEAD | tar -x -C /tmp/code
#   for w in 1 2; do CODE=/tmp/code nohup nice -n 10 benchmarks/issue15_queue.sh > benchmarks/out/issue15_w$w.log 2>&1 & done
set -u
cd "$(dirname "$0")/.."
K=1000 benchmarks/k1000_queue.sh
STAGE=grid benchmarks/dropout0.sh
K=100 N_VALID=1000 benchmarks/k1000_queue.sh
