"""The prefix step of `unipelt optimize`: a constant prefix gate folds exactly into the vectors, a shortened
prefix keeps the positions that carry the attention, travels in the plan through save and load, and the step's
search never spends more metric than its budget."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tiny_models import batch, perturb, tiny_model

from unipelt import add_unipelt, load_unipelt
from unipelt.autopelt import Plan, Unit, apply_plan, read_plan, write_plan
from unipelt.autopelt.prefix_step import prefix_mass, shorten, shortened
from unipelt.autopelt.steps import deployed_parameters
from unipelt.errors import UniPELTError
from unipelt.modules.prefix import PrefixEncoder
from unipelt.plan import planned_copy


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def apl(arch: str = "bert", **overrides):
    model = add_unipelt(tiny_model(arch), "unipelt", **overrides)
    perturb(model)
    return model.eval()


def constant_prefix_gate(model, layer: int, bias: float) -> float:
    """Make layer ``layer``'s prefix gate the constant sigmoid(bias) (zero weights); returns that value."""
    gate = model.tasks["default"].layers[layer].gate
    row = gate.sites.index("prefix")
    with torch.no_grad():
        gate.linear.weight[row].zero_()
        gate.linear.bias[row] = bias
    return 1 / (1 + math.exp(-bias))


@pytest.mark.parametrize("arch", ["bert", "llama"])  # a gate per example, and per token (decoders)
def test_a_constant_prefix_gate_folds_into_plain_keys_and_values(arch):
    model = apl(arch)
    inputs = batch(arch)
    values = {layer: constant_prefix_gate(model, layer, 0.4 - layer) for layer in (0, 1)}
    gated = logits(model, inputs)
    folded = planned_copy(model, "default", Plan(set(), {Unit(i, "prefix"): v for i, v in values.items()}))
    torch.testing.assert_close(logits(folded, inputs), gated, atol=1e-5, rtol=0)
    with folded.task("default"):
        logits(folded, inputs)
        assert all("prefix" not in sites for sites in folded.gate_values().values())  # no prefix gate left
    expected = model.tasks["default"].prefix.layer_prefix(0).detach().clone()  # (2 [keys, values], P, width)
    if model.tasks["default"].prefix.parallel:  # its gate scales its own output: the values alone
        expected[1] *= values[0]
    else:  # the paper's gate scales keys and values
        expected *= values[0]
    torch.testing.assert_close(folded.tasks["default"].prefix.layer_prefix(0), expected)


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_prefix_positions_carry_no_order(arch):
    model = apl(arch)
    inputs = batch(arch)
    length = model.tasks["default"].prefix.length
    plan = Plan(positions={0: tuple(reversed(range(length))), 1: tuple(range(length))})
    reordered = planned_copy(model, "default", plan)
    torch.testing.assert_close(logits(reordered, inputs), logits(model, inputs), atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["bert", "llama"])  # a concatenated prefix, and a parallel one (own softmax)
def test_the_positions_that_take_the_least_attention_matter_least(arch):
    model = apl(arch)
    assert model.tasks["default"].prefix.parallel == (arch == "llama")
    inputs = [batch(arch), batch(arch, seed=2)]
    mass, score = prefix_mass(model, "default", Plan(), inputs)
    length = model.tasks["default"].prefix.length
    assert mass.shape == score.shape == (2, length)
    assert bool((mass > 0).all())
    if arch == "llama":  # the prefix's own softmax: its positions share all of it
        torch.testing.assert_close(mass.sum(dim=1), torch.ones(2), atol=1e-5, rtol=0)
    else:  # the real tokens take the rest
        assert bool((mass.sum(dim=1) < 1).all())
    reference = logits(model, inputs[0])
    change = {}
    for name, pick in (("lightest", slice(0, 5)), ("heaviest", slice(5, None))):
        positions = {i: tuple(sorted(score[i].argsort(descending=True)[pick].tolist())) for i in (0, 1)}
        short = planned_copy(model, "default", Plan(positions=positions))
        change[name] = float((logits(short, inputs[0]) - reference).abs().max())
    # keeping the five heaviest (dropping the lightest) changes the output less than the converse
    assert change["lightest"] < change["heaviest"]


def test_a_shortened_prefix_round_trips_through_save_load_and_restore(tmp_path):
    model = apl("bert")
    inputs = batch("bert")
    trained = logits(model, inputs)
    value = constant_prefix_gate(model, 0, 1.0)
    gated = logits(model, inputs)
    plan = Plan({Unit(1, "adapter")}, {Unit(0, "prefix"): value}, {0: (1, 4, 7), 1: (0, 2, 9)})
    apply_plan(model, "default", plan)
    short = logits(model, inputs)
    assert model.tasks["default"].prefix.prefix.shape == (2, 2, 3, 32)
    model.save_pretrained(tmp_path / "ckpt")
    stored = read_plan(tmp_path / "ckpt")
    assert stored.positions == plan.positions and stored.to_dict()["format"] == 2
    loaded = load_unipelt(tiny_model("bert"), tmp_path / "ckpt").eval()
    torch.testing.assert_close(logits(loaded, inputs), short, atol=1e-6, rtol=0)
    assert loaded.tasks["default"].prefix.length == 3
    write_plan(tmp_path / "ckpt", None)  # the checkpoint kept the trained prefix: every position comes back
    restored = load_unipelt(tiny_model("bert"), tmp_path / "ckpt").eval()
    torch.testing.assert_close(logits(restored, inputs), gated, atol=1e-6, rtol=0)
    assert restored.tasks["default"].prefix.length == 10 and not torch.allclose(gated, trained)


def test_shortening_a_staged_prefix_keeps_each_layers_vectors():
    encoder = PrefixEncoder(2, 4, [8, 16], hidden_size=8, reparam=True, mlp_hidden=6)
    before = [encoder.layer_prefix(i).detach().clone() for i in (0, 1)]
    encoder.keep_positions([[3, 0], [1, 2]])
    assert encoder.length == 2 and encoder.mlp is None
    torch.testing.assert_close(encoder.layer_prefix(0), before[0][:, [3, 0]])
    torch.testing.assert_close(encoder.layer_prefix(1), before[1][:, [1, 2]])
    assert encoder.num_prefix_values() == 2 * 2 * (8 + 16)


def test_malformed_shortening_plans_are_clear_errors():
    model = apl("bert")
    cases = [
        (Plan(positions={0: (0, 1)}), "must name exactly"),
        (Plan(positions={0: (0, 1), 1: (2,)}), "same, non-zero"),
        (Plan(positions={0: (0, 10), 1: (1, 2)}), "distinct"),
        (Plan({Unit(1, "prefix")}, {}, {0: (0,), 1: (1,)}), "must name exactly"),
    ]
    for plan, message in cases:
        with pytest.raises(UniPELTError, match=message):
            apply_plan(planned_copy(model, "default", Plan()), "default", plan)
    lora = add_unipelt(tiny_model("bert"), "lora")
    with pytest.raises(UniPELTError, match="has none"):
        apply_plan(lora, "default", Plan(positions={0: (0,), 1: (0,)}))


def test_shortened_plans_empty_the_lowest_layers_and_keep_each_layers_heaviest():
    score = torch.tensor([[0.1, 0.2, 0.9], [0.01, 0.02, 0.03], [0.5, 0.6, 0.7]])
    start = Plan({Unit(0, "adapter")}, {Unit(1, "prefix"): 0.5})
    assert shortened(start, score, 0, 3) is start  # nothing to change
    one = shortened(start, score, 1, 3)  # layer 1 has the lowest total
    assert one.prune == {Unit(0, "adapter"), Unit(1, "prefix")} and not one.fold and not one.positions
    assert shortened(start, score, 2, 3).prune == {Unit(0, "adapter"), Unit(1, "prefix"), Unit(0, "prefix")}
    assert shortened(start, score, 1, 2).positions == {0: (1, 2), 2: (1, 2)}
    assert shortened(start, score, 0, 1).positions == {0: (2,), 1: (2,), 2: (2,)}
    score[1] = float("nan")  # a layer without prefix takes no part
    assert shortened(start, score, 1, 3).prune == {Unit(0, "adapter"), Unit(0, "prefix")}


def test_the_shortening_search_stays_within_its_budget():
    score = torch.arange(12, dtype=torch.float).reshape(3, 4)
    calls = []

    def evaluate(plan):  # two points lost per layer emptied, half a point per position dropped elsewhere
        calls.append(plan)
        emptied = sum(1 for u in plan.prune if u.site == "prefix")
        kept = len(next(iter(plan.positions.values()))) if plan.positions else 4
        return 0.9 - 0.02 * emptied - 0.005 * (4 - kept)

    plan, outcome = shorten(Plan(), score, evaluate, floor=0.9 - 0.051)
    assert outcome == {"layers_emptied": 2, "length": 2}
    assert plan.prune == {Unit(0, "prefix"), Unit(1, "prefix")} and plan.positions == {2: (2, 3)}
    assert evaluate(plan) >= 0.9 - 0.051
    assert len(calls) - 1 == len({json.dumps(p.to_dict()) for p in calls[:-1]})  # no plan evaluated twice
    nothing, outcome = shorten(Plan(), score, evaluate, floor=0.9)
    assert nothing.empty and outcome == {"layers_emptied": 0, "length": 4}


def test_deployed_parameters_count_only_what_the_forward_uses():
    model = apl("bert")
    task = model.tasks["default"]
    full = deployed_parameters(model, "default")
    kv = task.prefix.kv_dims[0]
    shorter = planned_copy(model, "default", Plan(positions={0: (0, 1), 1: (0, 1)}))
    assert full - deployed_parameters(shorter, "default") == 2 * 2 * 8 * kv
    no_prefix = planned_copy(model, "default", Plan({Unit(0, "prefix"), Unit(1, "prefix")}))
    gate_rows = 2 * (32 + 1)  # each layer's gate no longer computes the prefix's value (weights and bias)
    assert full - deployed_parameters(no_prefix, "default") == 2 * 2 * 10 * kv + gate_rows


@pytest.mark.slow
def test_optimize_with_no_budget_never_loses_metric_and_reports_each_step(
    tiny_model_dir, glue_dir, tmp_path, capsys
):
    from tiny_runs import tiny_run_config

    from unipelt.cli import main
    from unipelt.inference import Run
    from unipelt.training import train

    train(tiny_run_config(tiny_model_dir, glue_dir, tmp_path / "rte", n_valid=32))
    searched, flagged = tmp_path / "rte-opt", tmp_path / "rte-flags"
    args = ["optimize", str(tmp_path / "rte"), "--max-drop", "0", "--threads", "1"]
    assert main([*args, "--out", str(searched)]) == 0
    # thresholds that prune and fold nothing: the prefix step gets every layer's prefix to work on
    assert main([*args, "--out", str(flagged), "--threshold", "0", "--epsilon", "0", "--no-timing"]) == 0
    printed = capsys.readouterr().out
    for out in (searched, flagged):
        report = json.loads((out / "optimize.json").read_text())
        metric, steps = report["metric"], [row["step"] for row in report["steps"]]
        folded = report["steps"][2]["plan"]  # the prefix step runs when the fold step left a prefix layer
        kept = sum(1 for _, site in folded["prune"] if site == "prefix") < 2
        assert steps == (["trained", "prune", "fold", "shorten"] if kept else ["trained", "prune", "fold"])
        for row in report["steps"]:
            assert row["valid"][metric] >= report["valid"]["before"][metric] and row["parameters"] > 0
        assert report["valid"]["after"][metric] >= report["valid"]["before"][metric]
        assert report["steps"][-1]["parameters"] <= report["steps"][0]["parameters"]
    timed = json.loads((searched / "optimize.json").read_text())
    assert all({"1x128", "32x128"} == set(row["inference_ratio"]) for row in timed["steps"])
    report = json.loads((flagged / "optimize.json").read_text())
    assert report["steps"][-1]["step"] == "shorten" and "shorten" in printed
    assert len(report["prefix_mass"]) == 2 and set(report["prefix_step"]) == {"layers_emptied", "length"}
    model, _ = Run(flagged).load()
    length = report["steps"][-1]["prefix_length"]
    encoder = model.tasks["default"].prefix
    assert (encoder is None and length == 0) or encoder.length == length
    assert main(["eval", str(flagged), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[metric] == pytest.approx(report["test"]["after"][metric])


@pytest.mark.slow
def test_a_shortened_run_evaluates_exports_and_restores(tiny_model_dir, glue_dir, tmp_path, capsys):
    import shutil

    from tiny_runs import tiny_run_config

    from unipelt.cli import main
    from unipelt.inference import Run
    from unipelt.training import train

    train(tiny_run_config(tiny_model_dir, glue_dir, tmp_path / "rte"))
    short = tmp_path / "rte-short"
    shutil.copytree(tmp_path / "rte", short)
    write_plan(short / "checkpoint", Plan(positions={0: (0, 3, 5), 1: (1, 2, 4)}))
    model, _ = Run(short).load()
    assert model.tasks["default"].prefix.prefix.shape[:3] == (2, 2, 3)
    capsys.readouterr()
    assert main(["eval", str(short), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert 0 <= scores["accuracy"] <= 1
    # the export's own parity check compares ONNX Runtime with PyTorch on the shortened prefix
    pytest.importorskip("onnxruntime")
    assert main(["export", str(short), "--format", "onnx", "--out", str(tmp_path / "onnx")]) == 0
    restored = tmp_path / "rte-restored"
    assert main(["optimize", str(short), "--restore", "--out", str(restored)]) == 0
    assert Run(restored).load()[0].tasks["default"].prefix.length == 10


def test_the_step_runs_only_where_a_prefix_is_kept_and_attention_reports_its_weights():
    from unipelt.autopelt.prefix_step import can_shorten

    model = apl("bert")
    assert can_shorten(model, "default", Plan({Unit(0, "prefix")}))
    assert not can_shorten(model, "default", Plan({Unit(0, "prefix"), Unit(1, "prefix")}))
    assert not can_shorten(add_unipelt(tiny_model("bert"), "lora"), "default", Plan())
    assert not can_shorten(apl("mpnet"), "default", Plan())  # its attention runs through a seam
