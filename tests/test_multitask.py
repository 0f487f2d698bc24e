"""One backbone, many tasks: named task modules, mixed-task batches, per-call state, checkpoints."""

from __future__ import annotations

import copy
import json
import threading
from pathlib import Path

import pytest
import torch
from tiny_models import batch, perturb, tiny_model

from unipelt import UniPELTModel, add_unipelt, load_unipelt
from unipelt.errors import UniPELTError

FIXTURES = Path(__file__).parent / "fixtures"


def logits(model, inputs, **kwargs):
    with torch.no_grad():
        return model(**inputs, **kwargs).logits


def three_tasks(arch: str = "bert") -> UniPELTModel:
    """A classification task (APL), a regression task (LoRA + a longer prefix) and a 3-label IA3 task."""
    model = UniPELTModel(tiny_model(arch))
    model.add_task("cls", "unipelt")
    model.add_task("reg", "unipelt", num_labels=1, modules="lora,prefix", prefix_length=4)
    model.add_task("three", "ia3", num_labels=3)
    perturb(model)
    return model


def one_row(inputs: dict, row: int) -> dict:
    mask = inputs["attention_mask"][row : row + 1]
    length = int(mask.sum())
    return {key: value[row : row + 1, :length] for key, value in inputs.items()}


@pytest.mark.parametrize("legacy", ["legacy_bert_unipelt", "legacy_llama_router"])
def test_checkpoints_of_the_single_task_format_still_load(legacy):
    expected = json.loads((FIXTURES / legacy / "expected.json").read_text())
    model = load_unipelt(tiny_model(expected["arch"]), FIXTURES / legacy)
    assert list(model.tasks) == ["default"]
    out = logits(model, batch(expected["arch"]))
    assert torch.allclose(out, torch.tensor(expected["logits"]), atol=1e-6)


@pytest.mark.parametrize("arch", ["bert", "llama", "mpnet", "gpt2"])
def test_mixed_task_batch_equals_each_row_alone(arch):
    model = three_tasks(arch)
    inputs = batch(arch, batch_size=6, length=9, pad=4)
    tasks = ["cls", "reg", "three", "three", "cls", "reg"]
    mixed = logits(model, inputs, task=tasks)
    assert mixed.shape == (6, 3)
    # Gate values come back in batch order; a row whose task has no such site holds NaN.
    gates = model.gate_values()
    assert gates[0]["prefix"].shape[0] == 6
    assert torch.isnan(gates[0]["prefix"][2]).all() and not torch.isnan(gates[0]["prefix"][0]).any()
    widths = {"cls": 2, "reg": 1, "three": 3}
    for row, name in enumerate(tasks):
        row_inputs = _row(inputs, row) if arch in ("gpt2", "llama") else one_row(inputs, row)
        alone = logits(model, row_inputs, task=name)
        assert alone.shape == (1, widths[name])
        assert torch.allclose(mixed[row, : widths[name]], alone[0], atol=1e-5), (row, name)
        assert torch.isnan(mixed[row, widths[name] :]).all(), "columns beyond a task's labels are NaN"


def test_a_mixed_batch_gathers_only_what_its_modules_read(monkeypatch):
    """Output sites whose modules read only the output (the adapter) or what the layer prepared before attention
    (LoRA on query and value) gather each task's rows of the output alone, never the projection's input (at the
    adapter's site the feed-forward block's wide inner state, 37 wide here)."""
    from unipelt.inject.context import RowGroup

    model = UniPELTModel(tiny_model("bert"))
    model.add_task("a", "unipelt")
    model.add_task("b", "unipelt")
    perturb(model)
    gathered, take = [], RowGroup.take

    def spy(self, tensor):
        gathered.append(tensor.shape[-1])
        return take(self, tensor)

    monkeypatch.setattr(RowGroup, "take", spy)
    logits(model, batch("bert", batch_size=4, length=9), task=["a", "b", "b", "a"])
    assert 37 not in gathered
    # per layer and task: the attention input for the gates, the query and value outputs, the adapter's output
    assert len(gathered) == 2 * 2 * 4, gathered


def _row(inputs: dict, row: int) -> dict:
    """Decoders classify at the last real token: keep the row's own padding so the pick is the same."""
    return {key: value[row : row + 1] for key, value in inputs.items()}


def test_mixed_batch_loss_is_the_row_weighted_task_losses():
    model = three_tasks()
    inputs = batch("bert", batch_size=4, length=6)
    tasks = ["cls", "reg", "cls", "reg"]
    labels = torch.tensor([1.0, 0.5, 0.0, -0.3])
    loss = model(**inputs, task=tasks, labels=labels).loss
    cls = model(**{k: v[[0, 2]] for k, v in inputs.items()}, task="cls", labels=labels[[0, 2]].long()).loss
    reg = model(**{k: v[[1, 3]] for k, v in inputs.items()}, task="reg", labels=labels[[1, 3]]).loss
    assert torch.allclose(loss, (cls + reg) / 2, atol=1e-6)


def test_tasks_api_and_active_task(tmp_path):
    model = three_tasks()
    inputs = batch("bert")
    with pytest.raises(UniPELTError, match="several tasks"):
        logits(model, inputs)
    model.set_task("cls")
    assert torch.equal(logits(model, inputs), logits(model, inputs, task="cls"))
    with model.task("three"):
        assert logits(model, inputs).shape == (3, 3)
    assert logits(model, inputs).shape == (3, 2)
    with pytest.raises(UniPELTError, match="unknown task 'nope'.*cls, reg, three"):
        logits(model, inputs, task="nope")
    model.save_task("reg", tmp_path / "reg")
    expected = logits(model, inputs, task="reg")
    model.remove_task("reg")
    assert list(model.tasks) == ["cls", "three"]
    model.load_task("again", tmp_path / "reg")
    assert torch.equal(logits(model, inputs, task="again"), expected)
    # A multi-task save loads back every task.
    model.save_pretrained(tmp_path / "all")
    loaded = load_unipelt(tiny_model("bert"), tmp_path / "all")
    assert sorted(loaded.tasks) == ["again", "cls", "three"]
    for name in loaded.tasks:
        assert torch.equal(logits(loaded, inputs, task=name), logits(model, inputs, task=name))


def test_threads_get_their_own_results_and_gates():
    model = three_tasks()
    model.set_task("cls")
    jobs = []
    for i in range(4):
        size = 1 + i % 2
        inputs = batch("bert", batch_size=2 + i, length=4 + 9 * (i % 2), pad=size)
        tasks = [["cls", "reg", "three"][(i + r) % 3] for r in range(2 + i)]
        expected = logits(model, inputs, task=tasks)
        jobs.append((inputs, tasks, expected, model.gate_values()))
    errors: list[str] = []

    def work(inputs, tasks, expected, gates):
        for _ in range(15):
            out = logits(model, inputs, task=tasks)
            if not torch.allclose(out, expected, atol=1e-6, equal_nan=True):
                errors.append("output")
            mine = model.gate_values()
            if not torch.allclose(mine[1]["prefix"], gates[1]["prefix"], equal_nan=True):
                errors.append("gates")

    threads = [threading.Thread(target=work, args=job) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, f"{len(errors)} calls differed from the single-thread result"


def _no_dropout(model):
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


@pytest.mark.parametrize("arch", ["bert", "llama"])
@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(arch, reentrant):
    def run(checkpointing: bool):
        model = add_unipelt(_no_dropout(tiny_model(arch)), "unipelt")
        perturb(model)
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable({"use_reentrant": reentrant})
        inputs = batch(arch)
        with model.collect_gates() as live:
            loss = model(**inputs, labels=torch.tensor([0, 1, 1])).loss
        # A gate penalty needs the first run's graph, which only non-re-entrant checkpointing keeps.
        penalty = torch.stack([v.mean() for v in live]).sum() if not reentrant else 0.0
        (loss + penalty).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return loss.detach(), grads, len(live)

    loss, grads, n_live = run(False)
    loss_ck, grads_ck, n_live_ck = run(True)
    assert torch.allclose(loss, loss_ck, atol=1e-6)
    assert n_live == n_live_ck, "recomputation must not record gates a second time"
    assert grads.keys() == grads_ck.keys() and len(grads) > 10
    for name in grads:
        assert torch.allclose(grads[name], grads_ck[name], atol=1e-5), name


def test_a_checkpointed_re_run_writes_its_gates_to_slots_of_its_own():
    """Gradient checkpointing re-runs a layer in backward with the first run's routing, but its gate values must
    go to slots of their own: written into the first run's slots (as they once were), they kept every re-computed
    layer's activations alive until backward ended, and on SmolLM2 with APL checkpointing saved no memory
    (benchmarks/RESULTS.md: peak 2462 MB with it, 2447 MB without; 1138 MB once fixed)."""
    from unipelt.inject.context import LAYER, ForwardContext, Group, LayerCall
    from unipelt.inject.layer_hooks import _Replaying

    context = ForwardContext(
        model_id=1, groups=[Group("a", torch.tensor([0, 2])), Group("b", torch.tensor([1]))]
    )
    context.mask = torch.ones(3, 4, dtype=torch.long)
    first = LayerCall(0, context)
    first.groups[0].gates["adapter"] = torch.ones(2)
    seen = []

    def layer_forward():
        call = LAYER.get()
        seen.append(call)
        call.groups[0].gates["adapter"] = torch.zeros(2)  # what a gate computes in this run
        return call

    def checkpoint(function):  # runs the function for the forward, then once more as backward would
        function()
        return function()

    token = LAYER.set(first)
    try:
        _Replaying(checkpoint)(layer_forward)
    finally:
        LAYER.reset(token)
    forward, replay = seen
    assert forward is first and replay is not first and replay.context is context
    assert [(g.task, g.rows.tolist(), g.mask.tolist()) for g in replay.groups] == [
        (g.task, g.rows.tolist(), g.mask.tolist()) for g in first.groups
    ]
    assert torch.equal(first.groups[0].gates["adapter"], torch.zeros(2))  # the forward's own value
    assert replay.groups[0].gates.keys() == {"adapter"} and replay.groups[1].gates == {}


def test_deepcopy_and_state_dict_round_trip():
    model = three_tasks()
    model.set_task("cls")
    inputs = batch("bert")
    clone = copy.deepcopy(model)
    for name in model.tasks:
        assert torch.equal(logits(clone, inputs, task=name), logits(model, inputs, task=name))
    with torch.no_grad():
        for parameter in clone.tasks["cls"].parameters():
            parameter.add_(0.5)
    assert not torch.allclose(logits(clone, inputs), logits(model, inputs)), "the copy has its own weights"
    assert torch.equal(logits(model, inputs), logits(copy.deepcopy(model), inputs))
    fresh = UniPELTModel(tiny_model("bert", seed=5))
    fresh.add_task("cls", "unipelt")
    fresh.add_task("reg", "unipelt", num_labels=1, modules="lora,prefix", prefix_length=4)
    fresh.add_task("three", "ia3", num_labels=3)
    fresh.load_state_dict(clone.state_dict())
    assert torch.equal(logits(fresh, inputs, task="cls"), logits(clone, inputs, task="cls"))


def test_disabled_is_per_thread():
    model = add_unipelt(tiny_model("bert"), "unipelt")
    perturb(model)
    inputs = batch("bert")
    enabled = logits(model, inputs)
    seen = []
    with model.disabled():
        thread = threading.Thread(target=lambda: seen.append(logits(model, inputs)))
        thread.start()
        thread.join()
    assert torch.equal(seen[0], enabled)


def test_a_task_of_another_head_kind_is_refused():
    model = UniPELTModel(tiny_model("llama", head="causal-lm"))
    with pytest.raises(UniPELTError, match="cannot run on this causal-lm model"):
        model.add_task("cls", "lora", kind="classification", num_labels=2)


def test_adding_a_task_copies_the_head_not_the_model(monkeypatch):
    from unipelt.inject.hooks import Injector

    model = three_tasks()  # head hooks are installed by now
    copied = []
    monkeypatch.setattr(Injector, "__deepcopy__", lambda self, memo: copied.append(self), raising=False)
    task = model.add_task("fourth", "lora")
    assert not copied, "copying a head must not copy the injector (and through it the whole model)"
    assert all(not sub._forward_hooks for sub in task.head.modules())
    size = sum(p.numel() for p in task.parameters())
    assert size < sum(p.numel() for p in model.base_model.parameters()) / 4
