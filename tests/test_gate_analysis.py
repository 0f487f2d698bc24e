"""Gate statistics, their files and plots, and the `unipelt gates` command. Tiny models, no network."""

from __future__ import annotations

import csv
import json
import logging
import math

import pytest
import torch
from matplotlib.image import imread
from tiny_models import batch, perturb, tiny_model

from unipelt import add_unipelt
from unipelt.analysis import (
    GateStats,
    collect_gate_stats,
    gates_command,
    order_sites,
    plot_gate_heatmap,
    plot_learning_curves,
)
from unipelt.errors import UniPELTError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def gated(arch: str, method: str = "unipelt", **overrides):
    model = add_unipelt(tiny_model(arch), method, **overrides)
    perturb(model)
    return model


def direct_gates(model, inputs) -> dict[int, dict[str, torch.Tensor]]:
    with torch.no_grad():
        model(**inputs)
    return model.gate_values()


def assert_same_stats(a: GateStats, b: GateStats, atol: float = 1e-6) -> None:
    assert a.layers == b.layers and a.sites == b.sites and a.count == b.count
    for table_a, table_b in ((a.mean, b.mean), (a.std, b.std)):
        assert torch.allclose(torch.tensor(table_a), torch.tensor(table_b), atol=atol), (table_a, table_b)


def pad_right(inputs: dict[str, torch.Tensor], extra: int) -> dict[str, torch.Tensor]:
    rows = inputs["input_ids"].shape[0]
    return {k: torch.cat([v, torch.zeros(rows, extra, dtype=v.dtype)], dim=1) for k, v in inputs.items()}


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    image = imread(path)
    return image.shape[1], image.shape[0]


def make_run(folder, stats: GateStats, config: dict | None = None, log: list[dict] | None = None):
    stats.save(folder)
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    if log is not None:
        (folder / "log.jsonl").write_text("".join(json.dumps(line) + "\n" for line in log))
    return folder


def fake_stats(layers: int = 3, sites=("lora_query", "lora_value", "prefix", "adapter"), offset: float = 0.0):
    values = [[(offset + 0.1 * i + 0.05 * j) % 1.0 for j in range(len(sites))] for i in range(layers)]
    return GateStats(
        layers=list(range(layers)),
        sites=list(sites),
        mean=values,
        std=[[0.01] * len(sites) for _ in range(layers)],
        count=[[10] * len(sites) for _ in range(layers)],
    )


# ------------------------------------------------------------------------------------------ statistics


def test_means_and_stds_equal_direct_computation_and_mode_is_restored():
    model = gated("bert")
    inputs = batch("bert")
    expected = direct_gates(model, inputs)
    model.train()  # dropout on: only an eval-mode forward can match the direct (eval) values
    # Wrong-shaped labels would make the loss fail: passing proves "labels" is dropped.
    with model.collect_gates() as live:  # as a trainer with a gate penalty collects them
        stats = collect_gate_stats(model, [{**inputs, "labels": torch.zeros(99, dtype=torch.long)}])
    assert model.training and model.base_model.training, "the caller's mode must be restored"
    assert all(not value.requires_grad for value in live), "statistics run without a graph"
    assert stats.layers == [0, 1]
    assert stats.sites == ["lora_query", "lora_value", "prefix", "adapter"]
    assert stats.examples == 3
    for layer, sites in expected.items():
        for site, value in sites.items():
            mean, std, count = stats.value(layer, site)
            assert count == 3
            assert math.isclose(mean, value.double().mean().item(), abs_tol=1e-6)
            assert math.isclose(std, value.double().std(unbiased=False).item(), abs_tol=1e-6)


def test_router_sites_are_ordered_lora_prefix_adapter():
    stats = collect_gate_stats(gated("bert", "unipelt-router"), [batch("bert")])
    assert stats.sites == ["lora", "prefix", "adapter"]
    assert order_sites(["adapter", "prefix", "lora_value", "x", "lora_query"]) == [
        "lora_value",
        "lora_query",
        "prefix",
        "adapter",
        "x",
    ]


def test_repeated_example_has_zero_std_across_batches():
    model = gated("bert")
    one = batch("bert", batch_size=1, length=6, pad=0)
    repeated = {k: v.repeat(4, 1) for k, v in one.items()}
    stats = collect_gate_stats(model, [repeated, repeated])
    direct = direct_gates(model, one)
    assert stats.examples == 8
    for layer, site, mean, std, count in stats.rows():
        assert count == 8
        assert std < 1e-7, (layer, site, std)
        assert math.isclose(mean, direct[layer][site].item(), abs_tol=1e-6)


def test_streaming_over_batches_equals_one_batch():
    model = gated("bert")
    inputs = batch("bert", batch_size=4)
    whole = collect_gate_stats(model, [inputs])
    parts = collect_gate_stats(
        model, [{k: v[:3] for k, v in inputs.items()}, {k: v[3:] for k, v in inputs.items()}]
    )
    assert_same_stats(whole, parts)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_padding_does_not_change_stats(arch):
    model = gated(arch)
    inputs = batch(arch, pad=2)
    assert_same_stats(
        collect_gate_stats(model, [inputs]), collect_gate_stats(model, [pad_right(inputs, 4)]), 1e-5
    )


def test_per_token_gates_average_real_tokens_only():
    model = gated("llama")
    inputs = batch("llama", batch_size=3, length=7, pad=3)
    gates = direct_gates(model, inputs)
    assert gates[0]["prefix"].shape == (3, 7)
    stats = collect_gate_stats(model, [inputs])
    mask = inputs["attention_mask"].double()
    differs_from_naive = False
    for layer, sites in gates.items():
        for site, value in sites.items():
            per_example = (value.double() * mask).sum(1) / mask.sum(1)
            mean, std, count = stats.value(layer, site)
            assert count == 3
            assert math.isclose(mean, per_example.mean().item(), abs_tol=1e-6)
            assert math.isclose(std, per_example.std(unbiased=False).item(), abs_tol=1e-6)
            differs_from_naive |= abs(mean - value.double().mean().item()) > 1e-4
    assert differs_from_naive, "padding tokens carry gate values; the test must be able to see them counted"


def test_model_without_gates_gives_empty_stats_and_disabled_model_is_an_error():
    stats = collect_gate_stats(add_unipelt(tiny_model("bert"), "lora"), [batch("bert")])
    assert stats.empty and stats.layers == [] and stats.examples == 0
    with pytest.raises(UniPELTError, match="no gate values"):
        plot_gate_heatmap(stats, "unused.png")
    model = gated("bert")
    with model.disabled(), pytest.raises(UniPELTError, match="disabled"):
        collect_gate_stats(model, [batch("bert")])


# ------------------------------------------------------------------------------------------------ files


def test_json_and_csv_round_trip(tmp_path):
    stats = collect_gate_stats(gated("bert"), [batch("bert")])
    stats.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gates.csv", "gates.json"], "no temp files left"
    assert GateStats.load(tmp_path) == stats
    assert GateStats.from_dict(json.loads((tmp_path / "gates.json").read_text())) == stats
    with open(tmp_path / "gates.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == ["layer", "site", "mean", "std", "count"]
        rows = list(reader)
    assert len(rows) == len(stats.layers) * len(stats.sites)
    for row in rows:
        mean, std, count = stats.value(int(row["layer"]), row["site"])
        assert float(row["mean"]) == mean and float(row["std"]) == std and int(row["count"]) == count


def test_missing_cell_round_trips_as_null(tmp_path):
    stats = GateStats([0], ["prefix", "adapter"], [[0.5, math.nan]], [[0.1, math.nan]], [[4, 0]])
    stats.save(tmp_path)
    assert json.loads((tmp_path / "gates.json").read_text())["mean"] == [[0.5, None]]
    back = GateStats.load(tmp_path)
    assert back.mean[0][0] == 0.5 and math.isnan(back.mean[0][1]) and back.count == [[4, 0]]
    with pytest.raises(UniPELTError, match="malformed"):
        GateStats.from_dict(
            {"layers": [0], "sites": ["prefix"], "mean": [[0.5, 0.2]], "std": [[0]], "count": [[1]]}
        )


# -------------------------------------------------------------------------------------------- plotting


def test_heatmaps_are_pngs_and_grow_with_panels(tmp_path):
    stats = collect_gate_stats(gated("bert"), [batch("bert")])
    widths = []
    for panels in (1, 2, 3):
        path = tmp_path / f"heat{panels}.png"
        argument = stats if panels == 1 else [(f"run {i}", stats) for i in range(panels)]
        assert plot_gate_heatmap(argument, path) == path
        widths.append(png_size(path)[0])
    assert widths[0] < widths[1] < widths[2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heat1.png", "heat2.png", "heat3.png"]


def test_learning_curves_from_hand_written_log(tmp_path):
    lines = [
        {"step": 5, "loss": 0.71, "learning_rate": 1e-3},
        {"step": 10, "loss": 0.65, "learning_rate": 9e-4},
        {
            "step": 10,
            "epoch": 1.0,
            "eval_loss": 0.69,
            "eval_accuracy": 0.55,
            "eval_f1": 0.5,
            "eval_runtime": 1.2,
        },
        {"step": 15, "loss": 0.6, "learning_rate": 8e-4},
        {
            "step": 20,
            "epoch": 2.0,
            "eval_loss": 0.62,
            "eval_accuracy": 0.61,
            "eval_f1": 0.58,
            "eval_runtime": 1.1,
        },
    ]
    log = tmp_path / "log.jsonl"
    log.write_text(
        "".join(json.dumps(line) + "\n" for line in lines) + "\n" + '{"step": 25, "lo'
    )  # killed mid-line
    out = tmp_path / "curves.png"
    assert plot_learning_curves(log, out) == out
    two_panels = png_size(out)[0]
    only_loss = tmp_path / "loss.jsonl"
    only_loss.write_text("".join(json.dumps(line) + "\n" for line in lines if "loss" in line))
    assert png_size(plot_learning_curves(only_loss, tmp_path / "loss.png"))[0] < two_panels


def test_learning_curves_skip_when_nothing_to_plot(tmp_path, caplog):
    log = tmp_path / "log.jsonl"
    log.write_text(json.dumps({"step": 1, "learning_rate": 1e-3}) + "\n")
    with caplog.at_level(logging.WARNING, logger="unipelt.analysis.plots"):
        assert plot_learning_curves(log, tmp_path / "curves.png") is None
    assert len(caplog.records) == 1 and "nothing to plot" in caplog.records[0].getMessage()
    assert not (tmp_path / "curves.png").exists()
    with pytest.raises(UniPELTError, match="not found"):
        plot_learning_curves(tmp_path / "missing.jsonl", tmp_path / "curves.png")


# --------------------------------------------------------------------------------------------- command


def test_gates_command_one_run(tmp_path):
    log = [{"step": 5, "loss": 0.7}, {"step": 10, "eval_loss": 0.6, "eval_accuracy": 0.6}]
    run = make_run(tmp_path / "run", fake_stats(), {"task": "rte", "method": "unipelt"}, log)
    assert gates_command([str(run)], None) == run / "gates.png"
    png_size(run / "gates.png")
    png_size(run / "learning_curves.png")


def test_gates_command_several_runs_side_by_side(tmp_path, monkeypatch):
    from unipelt.analysis.plots import _run_title

    first = make_run(tmp_path / "a", fake_stats(), {"task": "rte", "method": "unipelt"})
    second = make_run(tmp_path / "b", fake_stats(layers=4, sites=("lora", "prefix", "adapter"), offset=0.3))
    assert _run_title(first) == "rte / unipelt" and _run_title(second) == "b"
    monkeypatch.chdir(tmp_path)
    out = gates_command([str(first), str(second)], None)
    assert out.resolve() == (tmp_path / "gates_compare.png").resolve()
    compare_width = png_size(out)[0]
    single = gates_command([str(first)], str(tmp_path / "single.png"))
    assert png_size(single)[0] < compare_width
    three = gates_command([str(first), str(second), str(first)], str(tmp_path / "three.png"))
    assert png_size(three)[0] > compare_width


def test_gates_command_errors(tmp_path):
    empty = tmp_path / "not_a_run"
    empty.mkdir()
    with pytest.raises(UniPELTError, match=r"not_a_run.*gates\.json.*unipelt train"):
        gates_command([str(empty)], None)
    good = make_run(tmp_path / "good", fake_stats())
    with pytest.raises(UniPELTError, match="not_a_run"):
        gates_command([str(good), str(empty)], None)
    with pytest.raises(UniPELTError, match="not found"):
        gates_command([str(tmp_path / "nowhere")], None)
    gateless = make_run(tmp_path / "gateless", GateStats())
    with pytest.raises(UniPELTError, match="no gate values"):
        gates_command([str(gateless)], None)
