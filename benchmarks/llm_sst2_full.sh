#!/bin/sh
# Issue 13's full protocol (K = 1000 training chats, seeds 1-3, all 872 SST-2 dev rows as test), resumable:
# every phase skips what it has already written, so run the same command again after a kill.
#   CODE=DIR nohup nice -n 5 benchmarks/llm_sst2_full.sh > benchmarks/out/llm_sst2_full.log 2>&1 &
# Timings (cost, gen) take the benchmark lock so that other timed work on the machine waits for them; seeds 2
# and 3 train side by side, one thread each (two 1-thread processes get more done on 2 cores than one with 2).
set -eu
cd "$(dirname "$0")/.."
export LLM_SST2_OUT=${LLM_SST2_OUT:-$(pwd)/benchmarks/out/llm_sst2_full}
# CODE: a frozen copy of the repository to run (`git archive HEAD | tar -x -C DIR`), so that edits to this tree
# during the hours the protocol takes cannot change it half-way; default this tree.
CODE=${CODE:-.}
export PYTHONPATH=$CODE${PYTHONPATH:+:$PYTHONPATH}
# WAIT_PID: start only when this process (an earlier run of the protocol) has ended
while [ -n "${WAIT_PID:-}" ] && kill -0 "$WAIT_PID" 2>/dev/null; do sleep 10; done
P=".venv/bin/python $CODE/benchmarks/llm_sst2.py"
LOCK="flock /tmp/unipelt-bench.lock"
$P data --test 872 --pool 4000
$P zeroshot --threads 2
$LOCK $P cost --methods lora,unipelt,prefix,adapter --steps 3 --threads 1
$P train --k 1000 --seeds 1 --threads 2
$LOCK $P gen --k 1000 --seeds 1 --rounds 5 --threads 1
$P train --k 1000 --seeds 2 --threads 1 > "$LLM_SST2_OUT/train_seed2.log" 2>&1 &
$P train --k 1000 --seeds 3 --threads 1 > "$LLM_SST2_OUT/train_seed3.log" 2>&1 &
wait
$P saved --k 1000 --seeds 1
$P report --k 1000 --seeds 1,2,3 > "$LLM_SST2_OUT/report.md"
