"""``--method autopelt``: differentiable module selection while training, a fixed cheaper structure after it.

Every unit (a LoRA pair, a layer's prefix, an adapter) sits behind a hard-concrete gate
(:class:`~unipelt.gates.HardConcreteGate`). At the start of the run the cost of each kind of unit is measured
on this machine (:func:`latency_table`, saved as ``RUN/latency.json``); the loss is

    task loss + latency_weight * sum_u P(open_u) * latency_u + sparsity_weight * mean_u P(open_u)

where ``latency_u`` is the unit's share of the base model's forward time as deployed, so the middle term is
the expected extra inference time as a fraction of the base model's. LoRA's deployed cost is zero: an open
LoRA gate is a constant after training and the pair is merged into the projection. The gates are held open
(deterministic, not updated) for the first third of the steps, then sampled at a temperature annealed from 2/3
to 0.1 over training (the ``Schedule`` callback). After every evaluation
:class:`Tracker` measures each unit's contribution and gate on a fixed slice of the validation set and writes
``RUN/autopelt.jsonl`` (drawn as ``RUN/autopelt_curves.png``: contribution per unit, gate entropy per
layer). At the end (:func:`finish`) the gates are made hard: closed units (deterministic gate exactly 0)
are pruned, open ones folded with their constant gate, by the same plan as ``unipelt optimize``, stored in the
checkpoint; the run's metrics are those of that deployed structure.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import EvalPrediction, TrainerCallback

from unipelt.atomic import writing
from unipelt.autopelt.latency import median_times, random_batch
from unipelt.autopelt.measure import UnitStats, measure_units
from unipelt.autopelt.plan import write_plan
from unipelt.autopelt.report import plot_units
from unipelt.checkpoint import atomic_file, write_json
from unipelt.gates import HardConcreteGate
from unipelt.plan import Plan, Unit, apply_plan, planned_copy, task_units
from unipelt.running.loop import chunks, logits_and_labels, model_device

LATENCY_JSON = "latency.json"
TRACK_JSONL = "autopelt.jsonl"
CURVES_PNG = "autopelt_curves.png"
STRUCTURE_PNG = "autopelt.png"
TEMPERATURES = (2 / 3, 0.1)
KINDS = ("lora", "prefix", "adapter")


def _gates(unipelt: Any, name: str) -> list[tuple[int, HardConcreteGate]]:
    return [
        (index, lm.gate)
        for index, lm in enumerate(unipelt.tasks[name].layers)
        if isinstance(lm.gate, HardConcreteGate)
    ]


def _kind(site: str) -> str:
    return "lora" if site.startswith("lora") else site


# ------------------------------------------------------------------------------------------ latency table


def latency_table(
    unipelt: Any, name: str, vocab_size: int, batch: int = 4, length: int = 128, reps: int = 9
) -> dict[str, Any]:
    """Each kind's cost per unit as a fraction of the base forward at ``batch x length``, measured here.

    One copy of the model per kind keeps only that kind's units (gates folded to 1, LoRA not merged) and is
    timed against the base model; the extra time is split over the kind's units. ``deployed`` is what the
    loss uses: LoRA's is 0 because an open LoRA is merged into the base weights after training.
    """
    task = unipelt.tasks[name]
    units = task_units(task)
    copies: dict[str, Any] = {}
    for kind in KINDS:
        mine = [u for u in units if u.kind == kind]
        if not mine:
            continue
        clone = copy.deepcopy(unipelt).eval()
        apply_plan(
            clone, name, Plan({u for u in units if u.kind != kind}, dict.fromkeys(mine, 1.0)), merge=False
        )
        copies[kind] = (clone, len(mine))
    base = unipelt

    def run_base(inputs: dict) -> Any:
        with base.disabled():
            return base(**inputs)

    calls = {"base": run_base, **{k: (lambda inputs, _m=m: _m(**inputs)) for k, (m, _) in copies.items()}}
    was_training = unipelt.training
    unipelt.eval()
    try:
        with unipelt.task(name):
            inputs = random_batch(vocab_size, batch, length, device=model_device(unipelt))
            times = median_times(calls, inputs, reps)
    finally:
        unipelt.train(was_training)
    per_unit = {
        kind: max(0.0, (times[kind] - times["base"]) / times["base"] / count)
        for kind, (_, count) in copies.items()
    }
    return {
        "shape": f"{batch}x{length}",
        "base_ms": round(1000 * times["base"], 3),
        "measured": {k: round(v, 6) for k, v in per_unit.items()},
        "deployed": {k: (0.0 if k == "lora" else round(v, 6)) for k, v in per_unit.items()},
        "units": {kind: count for kind, (_, count) in copies.items()},
    }


# ------------------------------------------------------------------------------------------ the loss


class Objective:
    """Adds ``latency_weight * expected latency + sparsity_weight * mean P(open)`` to the training loss.

    It is a forward hook on the UniPELT model, active in training mode only and removed by :meth:`close`;
    the terms of the last step are kept for the log.
    """

    def __init__(
        self, unipelt: Any, name: str, table: dict[str, Any], latency_weight: float, sparsity_weight: float
    ):
        self.gates = _gates(unipelt, name)
        self.costs = [
            torch.tensor([table["deployed"].get(_kind(site), 0.0) for site in gate.sites])
            for _, gate in self.gates
        ]
        self.latency_weight, self.sparsity_weight = latency_weight, sparsity_weight
        self.last: dict[str, float] = {}
        self.handle = unipelt.register_forward_hook(self._add)

    def terms(self) -> tuple[torch.Tensor, torch.Tensor]:
        probabilities = [gate.probability_open() for _, gate in self.gates]
        latency = sum((p * c.to(p.device)).sum() for p, c in zip(probabilities, self.costs))
        sparsity = torch.cat(probabilities).mean()
        return latency, sparsity

    def _add(self, module: Any, args: Any, output: Any) -> Any:
        if not module.training or getattr(output, "loss", None) is None or not self.gates:
            return None
        latency, sparsity = self.terms()
        self.last = {"expected_latency": float(latency.detach()), "open_fraction": float(sparsity.detach())}
        output["loss"] = output["loss"] + self.latency_weight * latency + self.sparsity_weight * sparsity
        return output

    def close(self) -> None:
        self.handle.remove()


# ------------------------------------------------------------------------------------------ callbacks


class Schedule(TrainerCallback):
    """The gates' schedule: held, open and noise-free during the warm-up, then sampled.

    The temperature goes from soft (2/3) to sharp (0.1), geometric in the fraction of training done. When
    the warm-up ends, the evaluations made during it stop counting for the best checkpoint: the structure
    must come from gates that have learnt, or every latency weight deploys the same warm-up model (SST-2
    seed 2: its validation tied at 80.5 over all epochs, so the first, pre-warm-up checkpoint won).
    """

    def __init__(self, gates: list[tuple[int, HardConcreteGate]], warmup: Callable[[int], int]) -> None:
        self.gates, self.warmup = gates, warmup

    def on_step_begin(self, args, state, control, **kwargs):
        held = self.warmup(state.max_steps)
        fraction = state.global_step / max(1, state.max_steps)
        start, end = TEMPERATURES
        for _, gate in self.gates:
            gate.temperature = start * (end / start) ** fraction
            gate.sampling = state.global_step >= held
        if held and state.global_step == held:
            state.best_metric, state.best_model_checkpoint = None, None


class Tracker(TrainerCallback):
    """After each evaluation: every unit's contribution and gate, each layer's gate entropy (RUN/track.jsonl)."""

    def __init__(
        self,
        unipelt: Any,
        name: str,
        objective: Objective,
        run_dir: Path,
        batches: list[dict],
        gates: list[tuple[int, HardConcreteGate]],
    ) -> None:
        self.unipelt, self.name, self.objective, self.run_dir = unipelt, name, objective, run_dir
        self.batches, self.gates = batches, gates
        self.seen: set[int] = set()

    def on_evaluate(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or state.global_step in self.seen:
            return  # the final evaluations (validation, test) repeat the last step's
        self.seen.add(state.global_step)
        stats = measure_units(self.unipelt, self.name, self.batches)
        open_p = {}
        for index, gate in self.gates:
            with torch.no_grad():
                for site, p in zip(gate.sites, gate.probability_open().tolist()):
                    open_p[(index, site)] = p
        entropy: dict[int, list[float]] = {}
        for (index, _), p in open_p.items():
            q = min(max(p, 1e-6), 1 - 1e-6)
            entropy.setdefault(index, []).append(-(q * math.log2(q) + (1 - q) * math.log2(1 - q)))
        record = {
            "step": state.global_step,
            "temperature": self.gates[0][1].temperature if self.gates else None,
            **self.objective.last,
            "units": [{**s.to_dict(), "p_open": open_p.get((s.layer, s.site))} for s in stats],
            "entropy": {str(i): sum(v) / len(v) for i, v in sorted(entropy.items())},
        }
        with writing(self.run_dir / TRACK_JSONL), open(self.run_dir / TRACK_JSONL, "a") as handle:
            handle.write(json.dumps(record) + "\n")


def callbacks(
    unipelt: Any,
    name: str,
    objective: Objective,
    run_dir: Path,
    track_batches: list[dict],
    warmup: Callable[[int], int] = lambda max_steps: 0,
) -> list[Any]:
    """The schedule and the tracker; ``warmup(max_steps)`` is the number of steps the gates are held."""
    gates = _gates(unipelt, name)
    return [Schedule(gates, warmup), Tracker(unipelt, name, objective, run_dir, track_batches, gates)]


# ------------------------------------------------------------------------------------------ the end


def hard_plan(unipelt: Any, name: str) -> Plan:
    """Closed gates (deterministic value exactly 0) pruned, open ones folded with their constant value."""
    prune, fold = set(), {}
    for index, gate in _gates(unipelt, name):
        with torch.no_grad():
            values = gate.deterministic().tolist()
        for site, value in zip(gate.sites, values):
            unit = Unit(index, site)
            if value == 0.0:
                prune.add(unit)
            else:
                fold[unit] = float(value)
    return Plan(prune, fold)


def finish(unipelt: Any, name: str, run_dir: Path, scores: Any) -> dict[str, Any]:
    """Store the hard plan in RUN/checkpoint, score the deployed structure, draw the curves.

    ``scores(model)`` returns ``{"valid": {...}, "test": {...}}`` for a model; the result holds the deployed
    structure's scores, the plan's counts and the latency table."""
    plan = hard_plan(unipelt, name)
    write_plan(run_dir / "checkpoint", plan)
    deployed = scores(planned_copy(unipelt, name, plan))
    counts: dict[str, dict[str, int]] = {}
    for unit in task_units(unipelt.tasks[name]):
        row = counts.setdefault(unit.kind, {"keep": 0, "fold": 0, "prune": 0})
        row[plan.action(unit)] += 1
    track = _read_track(run_dir)
    if track:
        last = [UnitStats(**{k: v for k, v in u.items() if k != "p_open"}) for u in track[-1]["units"]]
        plot_units(last, plan, run_dir / STRUCTURE_PNG, title="autopelt: kept (folded) / pruned")
        plot_curves(track, run_dir / CURVES_PNG)
    table = json.loads((run_dir / LATENCY_JSON).read_text()) if (run_dir / LATENCY_JSON).is_file() else None
    return {**deployed, "autopelt": {"plan": plan.to_dict(), "counts": counts, "latency_table": table}}


def _read_track(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / TRACK_JSONL
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(track: list[dict[str, Any]], path: Path) -> Path:
    """Two panels over training steps: each unit's contribution (by kind), and each layer's gate entropy."""
    from matplotlib import colormaps  # late: matplotlib loads only when a figure is drawn
    from matplotlib.figure import Figure

    steps = [r["step"] for r in track]
    figure = Figure(figsize=(11, 4))
    left, right = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    colours = {"lora": "tab:green", "prefix": "tab:orange", "adapter": "tab:blue"}
    units = [(u["layer"], u["site"]) for u in track[-1]["units"]]
    for layer, site in units:
        values = [
            next(
                (u["contribution"] for u in r["units"] if (u["layer"], u["site"]) == (layer, site)), math.nan
            )
            for r in track
        ]
        left.plot(steps, [100 * v for v in values], color=colours.get(_kind(site), "grey"), alpha=0.5, lw=1)
    for kind, colour in colours.items():
        left.plot([], [], color=colour, label=kind)
    left.set(xlabel="step", ylabel="contribution ||delta|| / ||h|| (%)", title="contribution per unit")
    left.legend(fontsize=8)
    layers = sorted({int(k) for r in track for k in r["entropy"]})
    cmap = colormaps["viridis"]
    for layer in layers:
        values = [r["entropy"].get(str(layer), math.nan) for r in track]
        right.plot(steps, values, color=cmap(layer / max(1, len(layers) - 1)), label=f"layer {layer}")
    right.set(xlabel="step", ylabel="mean binary entropy of P(open) (bits)", title="gate entropy per layer")
    right.legend(fontsize=6, ncols=2)
    figure.tight_layout()
    with atomic_file(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=110)
    return path


def save_latency(run_dir: Path, table: dict[str, Any]) -> None:
    write_json(run_dir / LATENCY_JSON, table)


# ------------------------------------------------------------------------------------------ one run


class Session:
    """What ``unipelt.training.run.train`` does for ``--method autopelt``: set up, callbacks, finish."""

    def __init__(
        self, config: Any, unipelt: Any, run_dir: Path, datasets: dict, collate: Any, compute_metrics: Any
    ):
        self.unipelt, self.run_dir, self.collate = unipelt, run_dir, collate
        self.compute_metrics, self.datasets = compute_metrics, datasets
        self.name = unipelt.active_task
        vocab = int(unipelt.base_model.config.vocab_size)
        table = latency_table(unipelt, self.name, vocab, length=min(128, config.max_length))
        save_latency(run_dir, table)
        (run_dir / TRACK_JSONL).unlink(missing_ok=True)
        self.objective = Objective(unipelt, self.name, table, config.latency_weight, config.sparsity_weight)
        valid = datasets["valid"]
        track = self._batches(valid.select(range(min(128, len(valid)))), 32)
        self.callbacks = callbacks(unipelt, self.name, self.objective, run_dir, track, config.gate_warmup)

    def _batches(self, dataset: Any, size: int) -> list[dict]:
        return list(chunks([dataset[i] for i in range(len(dataset))], self.collate, size))

    def _scores(self, model: Any) -> dict[str, dict[str, float]]:
        out = {}
        for split in ("valid", "test"):
            if split in self.datasets:
                logits, labels = logits_and_labels(model, self._batches(self.datasets[split], 64))
                out[split] = self.compute_metrics(EvalPrediction(predictions=logits, label_ids=labels))
        return out

    def finish(self, result: dict[str, Any]) -> dict[str, Any]:
        """The run's result with the deployed (pruned and folded) structure's scores; the gated ones as ``gated``."""
        self.objective.close()
        self.unipelt.eval()
        final = finish(self.unipelt, self.name, self.run_dir, self._scores)
        return {
            **result,
            "gated": {"valid": result.get("valid"), "test": result.get("test")},
            "valid": final.get("valid", result.get("valid")),
            "test": final.get("test", result.get("test")),
            "autopelt": final["autopelt"],
        }
