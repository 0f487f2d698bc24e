"""One row of the paper's Table 1 (low-resource GLUE) as a resumable list of cells, tuned per task on validation.

For each group of methods, in order:

1. seed 1 of every (task, method) cell at the grid's base rate (``--hyper``, default rates/k100_tuned.json);
2. seed 1 again at 1/3 and 3 times that rate; per task and method the rate with the best validation score
   wins and its run becomes the seed-1 cell (``grid_tune``: OUT/tuned_rates.json, OUT/tuning.md);
3. seeds 2 and 3 at the chosen rates (twice, so a second worker's candidates are caught up);
4. with ``--peer``, AdapterHub ``adapters``' UniPELT on the same samples at APL's chosen rates (in
   benchmarks/.venv-adapters, made by benchmarks/peer_env.sh; skipped when it is missing).

Every stage skips finished cells and claims the cell it trains (an flock per cell), so the command can be killed
and restarted at any time, and two copies (one per core) share the work:

    nice -n 10 python -m benchmarks.table1 --k 1000 --groups unipelt,adapter,lora,ft prefix,unipelt-ap
    python -m benchmarks.grid --out benchmarks/out/grid_k1000 --report
"""

from __future__ import annotations

import argparse
import fcntl
import os
import subprocess
from pathlib import Path

from benchmarks import grid, grid_tune

TASKS = "rte,mrpc,stsb,cola,sst2"
PEER_PYTHON = Path("benchmarks/.venv-adapters/bin/python")


def row_flags(args: argparse.Namespace) -> list[str]:
    """The flags every stage of the row shares."""
    flags = ["--out", str(args.out), "--k", str(args.k), "--n-valid", str(args.n_valid), "--epochs", "10"]
    flags += ["--patience", "3", "--hyper", args.hyper, "--tasks", args.tasks]
    if args.data_dir:
        flags += ["--data-dir", args.data_dir]
    if args.threads:
        flags += ["--threads", str(args.threads)]
    return flags


def peer_row(args: argparse.Namespace) -> None:
    """The peer's UniPELT on the row's samples, once per row (one worker holds the row's peer lock)."""
    if not PEER_PYTHON.is_file():
        print(f"peer row skipped: {PEER_PYTHON} is missing (bash benchmarks/peer_env.sh makes it)")
        return
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / ".peer.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return
        command = [
            str(PEER_PYTHON),
            "-m",
            "benchmarks.peer_accuracy",
            "--tasks",
            args.tasks,
            "--ks",
            str(args.k),
        ]
        command += ["--seeds", "1,2,3", "--methods", "unipelt", "--epochs", "10", "--patience", "3"]
        command += ["--n-valid", str(args.n_valid), "--rates", str(args.out / "tuned_rates.json"), "--resume"]
        command += ["--out", f"benchmarks/out/peer_accuracy_k{args.k}_tuned.jsonl", "--verbose"]
        if args.data_dir:
            command += ["--data-dir", args.data_dir]
        subprocess.run(command, check=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Time: a K = 1000 row of four methods is about 20 h of one core for MiniLM (5-10 min a cell, "
        "60 cells + 40 tuning runs); a K = 100 row about a fifth of that.",
    )
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--out", type=Path, help="default benchmarks/out/grid_k<K>")
    parser.add_argument(
        "--groups",
        nargs="+",
        default=["unipelt,adapter,lora,ft", "prefix,unipelt-ap"],
        help="groups of methods, each tuned and seeded before the next",
    )
    parser.add_argument("--tasks", default=TASKS)
    parser.add_argument("--n-valid", type=int, default=1000)
    parser.add_argument("--hyper", default="benchmarks/rates/k100_tuned.json", help="the base rates")
    parser.add_argument("--data-dir", default=os.environ.get("UNIPELT_DATA_DIR"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--peer", action="store_true", help="also the peer row after the first group")
    args = parser.parse_args(argv)
    args.out = args.out or Path(f"benchmarks/out/grid_k{args.k}")
    flags = row_flags(args)
    for n, methods in enumerate(args.groups):
        grid.main([*flags, "--methods", methods, "--seeds", "1"])
        grid_tune.main([*flags, "--methods", methods, "--seed", "1"])
        for _ in range(2):
            grid.main(
                [
                    *flags,
                    "--methods",
                    methods,
                    "--seeds",
                    "2,3",
                    "--tuned",
                    str(args.out / "tuned_rates.json"),
                ]
            )
            grid_tune.main([*flags, "--methods", methods, "--seed", "1", "--report"])
        if args.peer and n == 0:
            peer_row(args)


if __name__ == "__main__":
    main()
