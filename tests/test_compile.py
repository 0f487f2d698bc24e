"""torch.compile of the single-task path: no graph break, the eager outputs, eager fallbacks where a graph
cannot see the caller's state. The ``aot_eager`` backend keeps the tests fast; it runs the same traced graph
that inductor would compile."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from tiny_models import batch, perturb, tiny_model

from unipelt.errors import UniPELTError
from unipelt.model import UniPELTModel, add_unipelt


def _model(arch: str, preset: str = "unipelt") -> UniPELTModel:
    model = add_unipelt(tiny_model(arch), preset)
    perturb(model)
    return model.eval()


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_single_task_path_has_no_graph_break(arch):
    model, inputs = _model(arch), batch(arch)
    torch._dynamo.reset()
    with torch.no_grad():
        explained = torch._dynamo.explain(model)(**inputs)
    assert explained.graph_break_count == 0, [str(b.reason)[:200] for b in explained.break_reasons]
    assert explained.graph_count == 1


@pytest.mark.parametrize("arch", ["bert", "llama", "mpnet"])
def test_compiled_model_gives_the_eager_outputs(arch):
    model, inputs = _model(arch), batch(arch)
    torch._dynamo.reset()
    with torch.no_grad():
        eager = model(**inputs).logits
        compiled = torch.compile(model, backend="aot_eager")(**inputs).logits
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
    with torch.no_grad(), model.disabled():
        assert not torch.allclose(model(**inputs).logits, eager, atol=1e-3)  # the modules do change it


def test_model_compile_runs_each_task_and_falls_back_to_eager():
    model = UniPELTModel(tiny_model("bert"))
    model.add_task("a", "unipelt")
    model.add_task("b", "lora", num_labels=3)
    perturb(model)
    model.eval()
    inputs = batch("bert", batch_size=4)
    with torch.no_grad():
        eager = {name: model(**inputs, task=name).logits for name in ("a", "b")}
        mixed = model(**inputs, task=["a", "b", "b", "a"]).logits
        model.compile(backend="aot_eager")
        torch._dynamo.reset()
        for name in ("a", "b"):
            torch.testing.assert_close(model(**inputs, task=name).logits, eager[name], atol=1e-5, rtol=1e-5)
        with model.task("b"):
            torch.testing.assert_close(model(**inputs).logits, eager["b"], atol=1e-5, rtol=1e-5)
        # a list naming one task is that task; a mixed batch runs eagerly, row for row as before
        torch.testing.assert_close(model(**inputs, task=["a"] * 4).logits, eager["a"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(**inputs, task=["a", "b", "b", "a"]).logits, mixed, equal_nan=True)
        with model.eager():
            model(**inputs, task="a")
        assert set(model.gate_values()) == {0, 1}
        model(**inputs, task="a")
        assert model.gate_values() == {}  # a compiled call publishes none, and leaves no stale ones
        with pytest.raises(UniPELTError, match="unknown task"):
            model(**inputs, task="c")
    copied = copy.deepcopy(model)
    with torch.no_grad():
        torch.testing.assert_close(copied(**inputs, task="a").logits, eager["a"], atol=1e-5, rtol=1e-5)


def test_compiled_trace_refuses_a_mixed_batch():
    model = UniPELTModel(tiny_model("bert"))
    model.add_task("a", "lora")
    model.add_task("b", "lora")
    inputs = batch("bert", batch_size=2)
    with pytest.raises(Exception, match="one task per call"):
        torch.compile(model, backend="eager")(**inputs, task=["a", "b"])


def test_predict_and_eval_with_compile_give_the_eager_answers(tmp_path, tiny_model_dir, capsys):
    from unipelt.backbones import load_base_model, load_tokenizer
    from unipelt.checkpoint import write_json
    from unipelt.cli import main
    from unipelt.config import UniPELTConfig
    from unipelt.training import TrainConfig

    folder = tmp_path / "run"
    labels = ["entailment", "not_entailment"]
    config = TrainConfig(model=str(tiny_model_dir), task="rte", method="unipelt", output_dir=str(folder))
    model = UniPELTModel(
        load_base_model(tiny_model_dir, "classification", labels=labels), UniPELTConfig.from_preset("unipelt")
    )
    perturb(model)
    model.save_pretrained(folder / "checkpoint")
    load_tokenizer(tiny_model_dir).save_pretrained(folder / "tokenizer")
    write_json(folder / "config.json", config.to_dict())
    write_json(folder / "labels.json", {"labels": labels, "regression": False, "metric_kind": "rte"})
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("A man is sleeping.\tA person rests.\nTwo dogs run in a field.\tAnimals move.\n")
    answers = []
    for extra in ([], ["--compile", "aot_eager"]):
        torch._dynamo.reset()
        assert main(["predict", str(folder), "--input", str(pairs), *extra]) == 0
        answers.append([json.loads(line) for line in capsys.readouterr().out.splitlines()])
    eager, compiled = answers
    assert [r["label"] for r in compiled] == [r["label"] for r in eager]
    for a, b in zip(eager, compiled):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)
    assert main(["predict", str(folder), "--input", str(pairs), "--compile", "--runtime", "onnx"]) == 2
    assert "--compile applies to the torch runtime" in capsys.readouterr().err
