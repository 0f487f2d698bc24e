"""AutoPELT structure plans: pruning zero-gated units and folding constant gates keep outputs, plans travel
with checkpoints, the trained weights stay in them, and restoring brings the modules back."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import batch, perturb, tiny_model

from unipelt import add_unipelt, load_unipelt
from unipelt.autopelt import Plan, Unit, apply_plan, read_plan, task_units, write_plan
from unipelt.autopelt.measure import measure_units
from unipelt.autopelt.search import plan_from_thresholds, search
from unipelt.errors import UniPELTError


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def apl(arch: str = "bert", seed: int = 0, **overrides):
    model = add_unipelt(tiny_model(arch, seed=seed), "unipelt", **overrides)
    perturb(model)
    return model.eval()


def set_gate(model, layer: int, site: str, bias: float) -> None:
    """Make one sigmoid gate a constant sigmoid(bias) for every input (zero weights)."""
    layer_modules = model.tasks["default"].layers[layer]
    gate = layer_modules.adapter.gate if site == "adapter" else layer_modules.gate
    row = gate.sites.index(site)
    with torch.no_grad():
        gate.linear.weight[row].zero_()
        gate.linear.bias[row] = bias


def test_units_of_apl():
    model = apl()
    units = task_units(model.tasks["default"])
    assert [u.site for u in units if u.layer == 0] == ["lora_query", "lora_value", "prefix", "adapter"]
    assert len(units) == 2 * 4


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_pruning_a_unit_whose_gate_is_zero_leaves_outputs_unchanged(arch):
    model = apl(arch)
    inputs = batch(arch)
    set_gate(model, 0, "lora_query", -1e4)  # sigmoid(-1e4) is exactly 0 in float32
    set_gate(model, 1, "lora_value", -1e4)
    set_gate(model, 1, "adapter", -1e4)
    reference = logits(model, inputs)
    plain = logits(apl(arch), inputs)
    assert not torch.allclose(reference, plain, atol=1e-3)  # the remaining modules still act
    plan = Plan({Unit(0, "lora_query"), Unit(1, "lora_value"), Unit(1, "adapter")}, {})
    apply_plan(model, "default", plan)
    torch.testing.assert_close(logits(model, inputs), reference, atol=1e-5, rtol=0)
    layers = model.tasks["default"].layers
    assert list(layers[0].lora.slots) == ["value"] and not hasattr(layers[1], "adapter")
    assert layers[0].gate.sites == ["lora_value", "prefix"]  # the pruned site is not computed any more
    assert ("query", "output") not in layers[0].by_site


@pytest.mark.parametrize("arch", ["bert", "llama"])
@pytest.mark.parametrize("merge", [True, False])
def test_folding_constant_gates_leaves_outputs_unchanged(arch, merge):
    model = apl(arch)
    inputs = batch(arch)
    biases = {"lora_query": 0.7, "lora_value": -1.2, "prefix": 0.3, "adapter": 1.5}
    for layer in (0, 1):
        for site, bias in biases.items():
            set_gate(model, layer, site, bias + layer)
    reference = logits(model, inputs)
    fold = {
        Unit(layer, site): 1 / (1 + math.exp(-(b + layer))) for layer in (0, 1) for site, b in biases.items()
    }
    if not merge:
        model.add_task("other", "lora")  # a second task on the backbone: LoRA stays, ungated
    apply_plan(model, "default", Plan(set(), fold), merge=merge)
    with model.task("default"):
        torch.testing.assert_close(logits(model, inputs), reference, atol=1e-5, rtol=0)
        assert not any(model.gate_values().values())  # no gate is computed any more
    layers = model.tasks["default"].layers
    assert all(lm.gate is None and lm.adapter.gate is None for lm in layers)
    assert all(hasattr(lm, "lora") != merge for lm in layers)  # merged into the projections, or kept
    assert ("lora" in model.merged) == merge
    if merge:
        with pytest.raises(UniPELTError, match="merged"):
            model.add_task("late", "lora")


def test_pruning_a_zero_gated_prefix_is_not_exact_but_removes_it():
    """A prefix scaled to zero still takes attention mass; pruning it is a (documented) approximation."""
    model = apl()
    inputs = batch("bert")
    for layer in (0, 1):
        set_gate(model, layer, "prefix", -1e4)
    reference = logits(model, inputs)
    apply_plan(model, "default", Plan({Unit(0, "prefix"), Unit(1, "prefix")}, {}))
    assert model.tasks["default"].prefix is None
    assert model.base_model.config._attn_implementation == "sdpa"  # the model's own attention again
    assert not torch.allclose(logits(model, inputs), reference, atol=1e-5)


def test_measure_reports_constant_gates_and_zero_contributions():
    model = apl()
    set_gate(model, 0, "lora_query", -1e4)
    set_gate(model, 1, "adapter", 0.4)
    stats = {
        (s.layer, s.site): s for s in measure_units(model, "default", [batch("bert"), batch("bert", seed=2)])
    }
    assert stats[(0, "lora_query")].contribution == 0.0 and stats[(0, "lora_query")].gate_mean == 0.0
    assert stats[(1, "adapter")].gate_std == pytest.approx(0.0, abs=1e-7)
    assert stats[(1, "adapter")].gate_mean == pytest.approx(1 / (1 + math.exp(-0.4)), abs=1e-6)
    assert stats[(0, "lora_value")].gate_std > 0 and stats[(0, "prefix")].contribution > 0
    assert all(s.examples == 6 for s in stats.values())
    plan = plan_from_thresholds(list(stats.values()), threshold=1e-9, epsilon=1e-6)
    assert plan.prune == {Unit(0, "lora_query")} and set(plan.fold) == {Unit(1, "adapter")}


def test_search_prunes_as_much_as_the_budget_allows():
    stats = [
        type("S", (), {"unit": Unit(0, s), "contribution": c, "gate_std": 0.5, "gate_mean": 0.5})()
        for s, c in (("a", 0.1), ("b", 0.2), ("c", 0.3), ("d", 0.4))
    ]
    # The metric drops one point per pruned unit past the second: a 1.5 point budget allows three.
    choice = search(stats, lambda plan: 0.9 - 0.01 * max(0, len(plan.prune) - 2), 0.9, max_drop=1.5)
    assert choice.plan.prune == {Unit(0, "a"), Unit(0, "b"), Unit(0, "c")}
    assert 0.3 < choice.threshold <= 0.4 and choice.score == pytest.approx(0.89)


def test_planned_task_round_trips_and_keeps_pruned_weights(tmp_path):
    model = apl()
    inputs = batch("bert")
    original = logits(model, inputs)
    set_gate(model, 1, "adapter", 2.0)
    trained = logits(model, inputs)
    plan = Plan(
        {Unit(0, "adapter"), Unit(0, "lora_query"), Unit(1, "prefix")},
        {Unit(1, "adapter"): 1 / (1 + math.exp(-2.0))},
    )
    apply_plan(model, "default", plan, merge=False)
    optimized = logits(model, inputs)
    assert not torch.allclose(optimized, trained, atol=1e-4)
    model.save_pretrained(tmp_path / "ckpt")
    weights = load_file(str(tmp_path / "ckpt" / "unipelt_weights.safetensors"))
    assert "layers.0.adapter.up.weight" in weights and "layers.0.lora.query.lora_A.weight" in weights
    assert read_plan(tmp_path / "ckpt").to_dict() == plan.to_dict()
    loaded = load_unipelt(tiny_model("bert"), tmp_path / "ckpt").eval()
    assert "lora" not in loaded.merged  # nothing folded into LoRA here
    torch.testing.assert_close(logits(loaded, inputs), optimized, atol=1e-5, rtol=0)
    assert not hasattr(loaded.tasks["default"].layers[0], "adapter")
    write_plan(tmp_path / "ckpt", None)  # restore: the trained structure comes back
    restored = load_unipelt(tiny_model("bert"), tmp_path / "ckpt").eval()
    torch.testing.assert_close(logits(restored, inputs), trained, atol=1e-6, rtol=0)
    assert not torch.allclose(trained, original)


def test_bad_plans_are_clear_errors():
    model = apl()
    with pytest.raises(UniPELTError, match="does not have"):
        apply_plan(model, "default", Plan({Unit(5, "adapter")}, {}))
    router = add_unipelt(tiny_model("bert"), "unipelt-router")
    with pytest.raises(UniPELTError, match="router"):
        apply_plan(router, "default", Plan(set(), {Unit(0, "adapter"): 0.3}))
    apply_plan(model, "default", Plan({Unit(0, "adapter")}, {}))
    with pytest.raises(UniPELTError, match="already has"):
        apply_plan(model, "default", Plan({Unit(1, "adapter")}, {}))


@pytest.mark.slow
def test_optimize_command_writes_a_run_that_loads_evaluates_and_restores(
    tiny_model_dir, glue_dir, tmp_path, capsys
):
    import json

    from unipelt.cli import main
    from unipelt.inference import Run

    run = tmp_path / "rte"
    common = ["--epochs", "1", "--batch-size", "8", "--max-length", "64", "--threads", "1"]
    train = ["train", "--model", tiny_model_dir, "--data-dir", glue_dir, "--task", "rte", "--k", "16"]
    assert main([str(a) for a in [*train, "--n-valid", "16", "--out", run, *common]]) == 0
    optimized = tmp_path / "rte-opt"
    assert main(["optimize", str(run), "--out", str(optimized), "--max-drop", "100", "--threads", "1"]) == 0
    report = json.loads((optimized / "optimize.json").read_text())
    assert report["chosen_by"] == "max_drop" and len(report["units"]) == 8
    assert {"1x128", "32x128"} <= set(report["inference_ratio"])
    assert (optimized / "optimize.png").stat().st_size > 0
    # With 100 points of budget every unit is pruned: the checkpoint still holds them all, the model none.
    assert len(report["plan"]["prune"]) == 8
    assert "layers.0.adapter.up.weight" in load_file(
        str(optimized / "checkpoint" / "unipelt_weights.safetensors")
    )
    model, _ = Run(optimized).load()
    assert model.tasks["default"].prefix is None and not list(model.tasks["default"].layers[0].parts())
    capsys.readouterr()
    assert main(["eval", str(optimized), "--json"]) == 0
    after = json.loads(capsys.readouterr().out)
    assert after["accuracy"] == pytest.approx(report["test"]["after"]["accuracy"])
    restored = tmp_path / "rte-restored"
    assert main(["optimize", str(optimized), "--restore", "--out", str(restored)]) == 0
    capsys.readouterr()
    assert main(["eval", str(restored), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(
        report["test"]["before"]["accuracy"]
    )
    assert main(["optimize", str(optimized)]) == 2
    assert "already optimized" in capsys.readouterr().err
    flags = tmp_path / "rte-flags"
    args = ["optimize", str(run), "--out", str(flags), "--threshold", "0", "--epsilon", "1", "--no-timing"]
    args.append("--no-shorten")  # thresholds alone: every gate folded, no prefix position dropped
    assert main(args) == 0
    folded = json.loads((flags / "optimize.json").read_text())
    assert folded["chosen_by"] == "flags" and len(folded["plan"]["fold"]) == 8
    assert folded["test"]["after"]["accuracy"] == pytest.approx(
        folded["test"]["before"]["accuracy"], abs=0.07
    )
    # The folded run loaded alone has its LoRA merged into the base weights: that deployed form exports, and
    # the export's own parity check (ONNX Runtime against PyTorch on the test inputs) passes.
    pytest.importorskip("onnxruntime")
    assert main(["export", str(flags), "--format", "onnx", "--out", str(tmp_path / "onnx")]) == 0
    assert (tmp_path / "onnx" / "model.onnx").stat().st_size > 0


def test_hard_concrete_gate_samples_exact_zeros_and_ones_and_is_deterministic_in_eval():
    from unipelt.gates import HardConcreteGate

    gate = HardConcreteGate(["a", "b"], init_log_alpha=0.0)
    with torch.no_grad():
        gate.log_alpha.copy_(torch.tensor([-4.0, 4.0]))
    x = torch.zeros(4000, 3, 8)
    values = gate(x, None, "mean")
    assert values["a"].shape == (4000,)
    assert ((values["a"] == 0).float().mean() > 0.5) and ((values["b"] == 1).float().mean() > 0.5)
    assert 0 < ((values["a"] > 0) & (values["a"] < 1)).float().mean() < 0.5  # the relaxed part in between
    gate.eval()
    assert gate(x, None, "mean")["a"].unique().tolist() == [0.0]
    assert gate(x, None, "token")["b"].shape == (4000, 3) and bool((gate(x, None, "mean")["b"] == 1).all())
    p = gate.probability_open()
    p.sum().backward()
    assert p[0] < 0.1 < 0.9 < p[1] and bool((gate.log_alpha.grad > 0).all())
    assert gate.subset(["b"]).log_alpha.tolist() == [4.0]


@pytest.mark.slow
@pytest.mark.parametrize("sparsity, pruned", [(-300.0, 0), (300.0, 8)])  # pushed open / closed
def test_autopelt_training_prunes_closed_units_and_writes_its_tables(
    tiny_model_dir, glue_dir, tmp_path, sparsity, pruned
):
    import json

    from unipelt.inference import Run
    from unipelt.training import TrainConfig, train

    config = TrainConfig(
        output_dir=str(tmp_path / "run"),
        model=str(tiny_model_dir),
        method="autopelt",
        task="rte",
        data_dir=str(glue_dir),
        k=16,
        n_valid=16,
        epochs=3,
        batch_size=8,
        max_length=64,
        threads=1,
        lr_gates=20.0,  # with 2 steps an epoch, the gates must close within the first (best) epoch
        gate_warmup_steps=0,  # so no warm-up holds them there
        patience=10,
        sparsity_weight=sparsity,
        latency_weight=0.0,
    )
    result = train(config)
    run = Path(config.output_dir)
    table = json.loads((run / "latency.json").read_text())
    assert table["deployed"]["lora"] == 0.0 and set(table["measured"]) == {"lora", "prefix", "adapter"}
    track = [json.loads(line) for line in (run / "autopelt.jsonl").read_text().splitlines()]
    assert len(track) == 3 and len(track[-1]["units"]) == 8 and set(track[-1]["entropy"]) == {"0", "1"}
    assert (run / "autopelt_curves.png").stat().st_size > 0 and (run / "autopelt.png").stat().st_size > 0
    plan = read_plan(run / "checkpoint")
    assert len(plan.prune) == pruned and len(plan.prune) + len(plan.fold) == 8
    assert result["autopelt"]["counts"]["adapter"]["prune"] == pruned // 4
    model, _ = Run(run).load()
    assert all(layer.gate is None for layer in model.tasks["default"].layers)  # nothing input-dependent left
    assert (model.tasks["default"].prefix is None) == (pruned == 8)
    data = Run(run).data()
    assert Run(run).evaluate(data, progress=False)["accuracy"] == pytest.approx(result["test"]["accuracy"])


def test_folded_lora_is_merged_when_loaded_alone_and_kept_beside_other_tasks(tmp_path):
    from unipelt.model import UniPELTModel

    model = apl()
    inputs = batch("bert")
    set_gate(model, 0, "lora_query", 0.9)
    apply_plan(model, "default", Plan(set(), {Unit(0, "lora_query"): 1 / (1 + math.exp(-0.9))}), merge=False)
    expected = logits(model, inputs)
    model.save_pretrained(tmp_path / "ckpt")
    alone = load_unipelt(tiny_model("bert"), tmp_path / "ckpt").eval()
    assert alone.merged == ["lora"] and "query" not in alone.tasks["default"].layers[0].lora.slots
    torch.testing.assert_close(logits(alone, inputs), expected, atol=1e-5, rtol=0)
    shared = UniPELTModel(tiny_model("bert"))
    shared.load_task("sst2", tmp_path / "ckpt")  # e.g. `unipelt serve`: other tasks may follow
    shared.add_task("rte", "lora")
    assert not shared.merged and "query" in shared.tasks["sst2"].layers[0].lora.slots
    with shared.task("sst2"):
        torch.testing.assert_close(logits(shared.eval(), inputs), expected, atol=1e-5, rtol=0)
