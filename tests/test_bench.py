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
