"""The injector's observer hook (``model.observe``): it sees exactly what each added module changes, leaves
outputs unchanged, is scoped to the observing thread, and measuring a model's units goes through it."""

from __future__ import annotations

import threading

import pytest
import torch
from tiny_models import batch, perturb, tiny_model

from unipelt import add_unipelt
from unipelt.autopelt.measure import measure_units
from unipelt.inject import attention


def apl(arch: str):
    model = add_unipelt(tiny_model(arch), "unipelt")
    perturb(model)
    return model.eval()


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[int, str, str, torch.Tensor, torch.Tensor]] = []

    def __call__(self, layer, kind, role, before, after, mask) -> None:
        self.calls.append((layer, kind, role, before.clone(), after.clone()))


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_observing_leaves_outputs_unchanged_and_sees_every_module(arch):
    model, inputs = apl(arch), batch(arch)
    with torch.no_grad():
        plain = model(**inputs).logits
        seen = Recorder()
        with model.observe(seen):
            observed = model(**inputs).logits
        after = model(**inputs).logits
    torch.testing.assert_close(observed, plain, rtol=0, atol=0)
    torch.testing.assert_close(after, plain, rtol=0, atol=0)
    layers = len(model.tasks["default"].layers)
    kinds = sorted({(layer, kind, role) for layer, kind, role, _, _ in seen.calls})
    expected = sorted(
        (layer, kind, role)
        for layer in range(layers)
        for kind, role in (("lora", "query"), ("lora", "value"), ("adapter", "ffn_output"))
    ) + [(layer, "prefix", "attention") for layer in range(layers)]
    assert [k for k in kinds if k[1] != "adapter"] == sorted(k for k in expected if k[1] != "adapter")
    assert sum(1 for k in kinds if k[1] == "adapter") == layers
    assert len(seen.calls) == len(kinds)  # one call per module per forward
    for _, _, _, before, after in seen.calls:
        assert before.shape == after.shape
        assert (after - before).abs().max() > 0  # every perturbed module changes what it acts on


def test_lora_observation_is_its_gated_delta():
    model, inputs = apl("bert"), batch("bert")
    seen = Recorder()
    with torch.no_grad(), model.observe(seen):
        model(**inputs)
        gates = model.gate_values()
    layer, _, _, before, after = next(c for c in seen.calls if c[1] == "lora" and c[2] == "query")
    pair = model.tasks["default"].layers[layer].lora.query
    gate = gates[layer]["lora_query"]
    # the projection's input is not shown: the delta divided by the gate must lie in the span of B's columns
    delta = (after - before) / gate.view(-1, *([1] * (after.dim() - 1)))
    coefficients = torch.linalg.lstsq(pair.lora_B.weight, delta.reshape(-1, delta.shape[-1]).T).solution
    torch.testing.assert_close(
        pair.lora_B.weight @ coefficients, delta.reshape(-1, delta.shape[-1]).T, atol=1e-4, rtol=1e-4
    )


def test_observer_is_scoped_to_the_observing_thread():
    model, inputs = apl("bert"), batch("bert")
    seen = Recorder()
    started, release = threading.Event(), threading.Event()
    other: list[int] = []

    def elsewhere() -> None:
        started.wait()
        with torch.no_grad():
            model(**inputs)
        other.append(len(seen.calls))
        release.set()

    thread = threading.Thread(target=elsewhere)
    thread.start()
    with model.observe(seen):
        started.set()
        release.wait(timeout=60)
    thread.join()
    assert other == [0]  # the other thread's forward ran during the block and was not observed
    with torch.no_grad(), model.observe(seen):
        model(**inputs)
    assert len(seen.calls) > 0


def test_measuring_units_replaces_nothing():
    model, inputs = apl("bert"), batch("bert")
    function = attention.attend_with_prefix
    parts = [p for layer in model.tasks["default"].layers for p in layer.parts()]
    stats = measure_units(model, "default", [inputs])
    assert attention.attend_with_prefix is function
    assert all("apply" not in part.__dict__ for part in parts)
    assert {s.site for s in stats} == {"lora_query", "lora_value", "prefix", "adapter"}
    assert all(s.contribution > 0 and s.examples == inputs["input_ids"].shape[0] for s in stats)
