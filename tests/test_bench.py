"""benchmarks/cost.py (the cost protocol on unipelt's methods) end to end on a tiny model: every record is there
and ratios are computed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.mark.slow
def test_cost_writes_params_latency_and_train_step_records(tiny_model_dir, tmp_path):
    from benchmarks import cost

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


def test_paired_differences_best_single_and_five_task_average(tmp_path):
    from benchmarks import paired

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


def test_grid_seed_table_shows_every_seed_bolds_the_best_mean_and_averages_complete_seeds():
    from benchmarks import grid

    tasks = ["rte", "stsb"]
    rows = [
        {"task": t, "k": 1000, "method": m, "seed": s, "test": base + 0.01 * s + (0.1 if t == "stsb" else 0)}
        for t in tasks
        for m, base in (("adapter", 0.50), ("unipelt", 0.52))
        for s in (1, 2)
    ]
    rows.append({"task": "rte", "k": 1000, "method": "lora", "seed": 1, "test": 0.90})  # one task only
    rows += [{"task": "rte", "k": 1000, "method": "majority", "seed": s, "test": 0.47} for s in (1, 2)]
    text = grid.seed_table(rows, tasks, ["adapter", "lora", "unipelt", "majority"])
    lines = text.splitlines()
    assert lines[2] == "| task | Adapter | LoRA | UniPELT (APL) | Majority class |"
    # LoRA's single seed is the best RTE mean; the majority class is one value where the seeds agree
    assert (
        lines[4]
        == "| RTE | 51.00 / 52.00: 51.50 (0.71) | 90.00: **90.00** (0.00) | 53.00 / 54.00: 53.50 (0.71) | 47.00 |"
    )
    assert lines[5].startswith(
        "| STS-B (Spearman) | 61.00 / 62.00: 61.50 (0.71) | – | 63.00 / 64.00: **63.50**"
    )
    # LoRA lacks STS-B, so it has no average; APL's per-seed averages are (53 + 63) / 2 and (54 + 64) / 2
    assert (
        lines[6]
        == "| **Avg**, per seed | 56.00 / 57.00: 56.50 (0.71) |  | 58.00 / 59.00: **58.50** (0.71) |  |"
    )


def write_cell(
    root: Path, task: str, method: str, seed: int, test: float, gates: dict[str, list[float]]
) -> None:
    """A finished grid cell as grid.py leaves it: metrics, config, log with two evaluations, gates.csv."""
    cell = root / task / "k1000" / method / f"seed-{seed}"
    cell.mkdir(parents=True)
    (cell / "metrics.json").write_text(
        json.dumps({"seed": seed, "metric": "accuracy", "test": {"accuracy": test}})
    )
    (cell / "config.json").write_text(json.dumps({"lr": 1e-3}))
    log = [{"epoch": e, "eval_accuracy": 0.5 + 0.1 * e, "eval_loss": 1.0 / e} for e in (1, 2)]
    (cell / "log.jsonl").write_text("\n".join(json.dumps(r) for r in log) + "\n")
    if gates:
        lines = ["layer,site,mean,std,count"]
        lines += [f"{layer},{site},{m},0.02,10" for site, ms in gates.items() for layer, m in enumerate(ms)]
        (cell / "gates.csv").write_text("\n".join(lines) + "\n")


def test_curves_gate_lean_table_averages_layers_and_seeds_and_ranks_single_methods(tmp_path):
    from benchmarks import curves

    write_cell(tmp_path, "rte", "unipelt", 1, 0.55, {"lora_query": [0.8, 1.0], "prefix": [0.2, 0.4]})
    write_cell(tmp_path, "rte", "unipelt", 2, 0.53, {"lora_query": [0.6, 0.6], "prefix": [0.3, 0.3]})
    write_cell(tmp_path, "rte", "lora", 1, 0.56, {})
    write_cell(tmp_path, "rte", "adapter", 1, 0.50, {})
    rows = curves.cell_rows(tmp_path)
    assert {r["method"] for r in rows} == {"unipelt", "lora", "adapter"}
    unipelt = next(r for r in rows if r["method"] == "unipelt" and r["seed"] == 1)
    assert unipelt["sites"] == pytest.approx({"lora_query": 0.9, "prefix": 0.3})
    assert unipelt["best"]["epoch"] == 2 and unipelt["test"] == pytest.approx(55)
    text = curves.lean_table(rows)
    # lora_query: (0.9 + 0.6) / 2; prefix: (0.3 + 0.3) / 2; singles ranked by test
    assert "| RTE | UniPELT (APL) | 2 | 0.75 | 0.30 | LoRA 56.00, Adapter 50.00 |" in text


def test_decision_balance_separates_threshold_from_ranking():
    import numpy as np

    from benchmarks.decision_balance import balance

    labels = np.array([1, 1, 1, 1, 1, 1, 0, 0])  # label 0 is the rarer one
    # perfectly ordered scores for label 0, but a threshold that calls everything label 1
    logits = np.stack([np.array([-3, -3, -3, -3, -3, -3, -1, -0.5]), np.zeros(8)], axis=1)
    stats = balance(labels, logits)
    assert stats["rare"] == 0 and stats["gold_rare"] == pytest.approx(0.25)
    assert stats["predicted_rare"] == 0 and stats["recall_rare"] == 0
    assert stats["accuracy"] == pytest.approx(0.75) and stats["matthews"] == 0
    assert stats["auc"] == pytest.approx(1.0)  # the ranking is perfect: only the threshold is wrong
    shifted = logits + np.array([[2.0, 0.0]])  # move the threshold: label 0 for the two rare rows only
    assert balance(labels, shifted)["matthews"] == pytest.approx(1.0)
    assert balance(labels, shifted)["auc"] == pytest.approx(1.0)


def test_compare_runs_pairs_cells_on_the_chosen_split(tmp_path):
    from benchmarks import compare_runs

    def cell(root: Path, seed: int, valid: float, test: float) -> None:
        folder = root / "stsb" / "k100" / "unipelt" / f"seed-{seed}"
        folder.mkdir(parents=True)
        metrics = {"seed": seed, "metric": "spearman", "steps": 70, "train_seconds": 60.0}
        metrics |= {"test": {"spearman": test}, "valid": {"spearman": valid}}
        (folder / "metrics.json").write_text(json.dumps(metrics))
        (folder / "config.json").write_text(json.dumps({"lr": 3e-3}))

    cell(tmp_path / "a", 1, valid=0.40, test=0.30)
    cell(tmp_path / "a", 2, valid=0.20, test=0.10)
    cell(tmp_path / "b", 1, valid=0.45, test=0.20)
    cell(tmp_path / "b", 3, valid=0.90, test=0.90)  # no partner in "a": left out
    on_valid = compare_runs.compare(
        compare_runs.index(tmp_path / "a", "valid"),
        compare_runs.index(tmp_path / "b", "valid"),
        ("a", "b"),
        "valid",
    )
    assert "| STS-B | 100 | UniPELT (APL) | 1 | 40.00 | 45.00 | +5.00 |" in on_valid
    assert "| STS-B | 100 | UniPELT (APL) | 1 | +5.00 |" in on_valid
    on_test = compare_runs.compare(
        compare_runs.index(tmp_path / "a"), compare_runs.index(tmp_path / "b"), ("a", "b")
    )
    assert "| STS-B | 100 | UniPELT (APL) | 1 | 30.00 | 20.00 | -10.00 |" in on_test
