"""benchmarks/cost.py (the cost protocol on unipelt's methods) end to end on a tiny model: every record is there
and ratios are computed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.slow
def test_cost_writes_params_latency_and_train_step_records(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import cost

    out = tmp_path / "cost.jsonl"
    args = [
        "--model",
        str(tiny_model_dir),
        "--methods",
        "unipelt,lora",
        "--infer-batches",
        "1,2",
        "--seq-len",
        "16",
        "--repeats",
        "2",
        "--train-repeats",
        "2",
        "--train-batch",
        "2",
        "--warmup",
        "1",
        "--no-memory",
        "--threads",
        "1",
        "--max-rounds-factor",
        "1",
        "--out",
        str(out),
    ]
    assert cost.main(args) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    by = {(r.get("method"), r["measure"], r.get("batch")): r for r in records}
    assert by[("unipelt", "params", None)]["trainable"] > 0
    assert by[("base", "infer_latency", 2)]["ratio"] == pytest.approx(1.0)
    assert by[("unipelt", "infer_latency", 2)]["ratio"] > 0
    assert by[("full_ft", "train_step", 2)]["ratio"] == pytest.approx(1.0)
    assert by[("lora", "train_step", 2)]["median_s"] > 0


def test_paired_differences_best_single_and_five_task_average(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import paired

    tasks = paired.TASKS
    base = {"unipelt": 0.60, "adapter": 0.58, "lora": 0.59, "ft": 0.61}
    rows = [
        {"task": task, "k": 1000, "method": method, "seed": seed, "test": score + 0.01 * seed}
        for task in tasks
        for method, score in base.items()
        for seed in (1, 2)
    ]
    rows[0] = {**rows[0], "test": 0.70}  # APL, first task, seed 1: +10 points over the plan above
    peer = tmp_path / "peer.jsonl"
    peer.write_text(
        "\n".join(
            json.dumps({"method": "unipelt", "task": tasks[0], "k": 1000, "seed": seed, "test_main": 0.5})
            for seed in (1, 2)
        )
        + "\n"
    )
    table = paired.scores(rows + paired.peer_rows(peer))
    assert paired.best_single(table, tasks[0], 1000, {1, 2}) == "lora"
    assert paired.paired(table[(tasks[0], 1000, "unipelt")], table[(tasks[0], 1000, "lora")])[
        1
    ] == pytest.approx([70 - 60, 1])
    averages = paired.per_seed_average(table, 1000, "unipelt")
    assert averages == pytest.approx({1: 61 + 9 / len(tasks), 2: 62})
    text = paired.report(rows + paired.peer_rows(peer))
    assert "| Avg | best single on average: lora | [1, 2] | +2.80 / +1.00 | +1.90 | 1.27 | 2/2 |" in text
    assert "| Avg | fine-tune | [1, 2] | +0.80 / -1.00 | -0.10 | 1.27 | 1/2 |" in text
    assert f"| {paired.TASK_TITLES[tasks[0]]} | adapters' UniPELT | [1, 2] | +20.00 / +12.00 |" in text
