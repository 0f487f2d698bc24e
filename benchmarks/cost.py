"""Cost of unipelt's methods next to the frozen base model and full fine-tuning: the same as `unipelt bench`.

Same protocol, inputs and output format as the peer scripts: trainable parameters (with and without the prefix
MLP), inference latency at 1 x 128 and 32 x 128 (ratio to the base model), one training step (ratio to full
fine-tuning), and peak memory per method in a fresh subprocess.

    python benchmarks/cost.py --model minilm --out benchmarks/out/cost_minilm.jsonl
    python benchmarks/cost.py --model mpnet --device cuda --out benchmarks/out/cost_mpnet_gpu.jsonl
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from unipelt.bench import add_arguments, bench_command  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    return bench_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
