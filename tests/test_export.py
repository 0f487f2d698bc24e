"""`unipelt export --format onnx`: parity with PyTorch, int8, refusals, and the onnx runtime of predict and serve."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from unipelt.cli import main
from unipelt.errors import UniPELTError

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pytestmark = pytest.mark.slow

FAST = ["--epochs", "1", "--batch-size", "8", "--max-length", "48", "--threads", "1"]


def cli(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def rte_run(tiny_model_dir, glue_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "rte"
    args = ["train", "--model", tiny_model_dir, "--data-dir", glue_dir, "--task", "rte", "--k", "8"]
    assert cli(*args, "--n-valid", "8", "--out", out, *FAST) == 0
    # A few steps leave the added modules near their zero start; move them well away so that an export that
    # dropped or mis-converted a module would show in the logits.
    from tiny_models import perturb

    from unipelt.inference import Run

    model, _ = Run(out).load()
    perturb(model, scale=0.5)
    model.save_pretrained(out / "checkpoint", extra=json.loads((out / "labels.json").read_text()))
    return out


@pytest.fixture(scope="module")
def exported(rte_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "rte"
    assert (
        cli("export", rte_run, "--format", "onnx", "--out", out, "--quantize", "int8", "--threads", "1") == 0
    )
    return out


def test_export_folder_and_report(exported, rte_run):
    names = {p.name for p in exported.iterdir()}
    assert {"model.onnx", "model.int8.onnx", "tokenizer", "labels.json", "export.json", "README.md"} <= names
    info = json.loads((exported / "export.json").read_text())
    assert info["labels"] == ["entailment", "not_entailment"] and info["pair"] is True
    assert info["examples"] == 277 and info["parity_max_abs_diff"] <= 1e-4  # the whole RTE dev set
    assert info["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    int8 = info["int8"]
    assert int8["metric"] == "accuracy" and int8["change"] == pytest.approx(int8["int8"] - int8["fp32"])
    assert int8["bytes"]["model.int8.onnx"] < int8["bytes"]["model.onnx"]
    assert int8["latency_1x128_ratio_int8_over_fp32"] > 0
    import onnx

    graph = onnx.load(str(exported / "model.onnx")).graph
    dims = [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "sequence"]  # dynamic batch and sequence axes


def test_onnx_logits_equal_pytorch_at_any_batch_size(exported, rte_run):
    from unipelt.inference import Run
    from unipelt.inference.onnx_runtime import OnnxModel

    run = Run(rte_run)
    examples = run.data().examples[:40]
    expected = run.logits(examples, batch_size=16)
    onnx_model = OnnxModel(exported, threads=1)
    scale = np.abs(expected).max()  # a tiny random model's logits are small: compare relative to them too
    for batch_size in (1, 7, 40):
        got = onnx_model.logits(examples, batch_size=batch_size)
        assert np.abs(got - expected).max() <= 1e-4
        assert np.abs(got - expected).max() <= 1e-4 * scale  # a wrong graph is off by ~1e-3 of the scale
    int8 = OnnxModel(exported, quantized=True, threads=1).logits(examples)
    assert int8.shape == expected.shape and np.isfinite(int8).all()


def test_predict_with_the_onnx_runtime(exported, rte_run, tmp_path, capsys):
    lines = tmp_path / "pairs.txt"
    lines.write_text("A man plays a guitar.\tA person makes music.\nIt rains.\tThe sun shines.\n")
    assert cli("predict", rte_run, "--input", lines) == 0
    torch_records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert cli("predict", exported, "--input", lines, "--runtime", "onnx") == 0
    onnx_records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["label"] for r in onnx_records] == [r["label"] for r in torch_records]
    for a, b in zip(torch_records, onnx_records):
        for name in a["probabilities"]:
            assert b["probabilities"][name] == pytest.approx(a["probabilities"][name], abs=1e-5)
    assert cli("predict", exported, "--input", lines) == 2  # an export needs --runtime onnx
    assert "--runtime onnx" in capsys.readouterr().err


def test_serve_with_the_onnx_runtime(exported, rte_run):
    from fastapi.testclient import TestClient

    from unipelt.inference.engine import TorchEngine
    from unipelt.inference.onnx_runtime import OnnxEngine
    from unipelt.inference.serve import create_app

    body = {
        "task": "rte",
        "inputs": [["A dog runs.", "An animal moves."], ["Short.", "A much longer text here."]],
    }
    answers = []
    for engine in (TorchEngine([rte_run]), OnnxEngine([exported], threads=1)):
        with TestClient(create_app(engine)) as client:
            assert client.get("/health").json()["runtime"] == engine.runtime
            answers.append(client.post("/v1/predict", json=body).json()["predictions"])
            if engine.runtime == "onnx":
                refused = client.post("/v1/predict", json={**body, "gates": True})
                assert refused.status_code == 400 and "gate" in refused.json()["error"]
    for a, b in zip(*answers):
        assert a["label"] == b["label"]
        assert np.allclose(list(a["probabilities"].values()), list(b["probabilities"].values()), atol=1e-5)
    on_the_fly = OnnxEngine([f"nli={rte_run}"], threads=1)  # a run folder is exported first
    assert list(on_the_fly.tasks) == ["nli"] and on_the_fly.tasks["nli"].pair


def test_the_serve_command_builds_an_onnx_server_from_an_export(exported):
    from fastapi.testclient import TestClient

    from unipelt.cli import build_parser
    from unipelt.cli.serve import build_app

    args = build_parser().parse_args(["serve", str(exported), "--runtime", "onnx", "--threads", "1"])
    app, served = build_app(args, None)
    assert [task.name for task in served] == ["rte"]
    with TestClient(app) as client:
        answer = client.post(
            "/v1/predict", json={"task": "rte", "inputs": [["A dog runs.", "An animal moves."]]}
        )
    assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] in (
        "entailment",
        "not_entailment",
    )


def test_refusals_name_the_reason(rte_run, tmp_path, capsys):
    from unipelt.inference.export import export_run

    with pytest.raises(UniPELTError, match=r"differ from PyTorch's by up to .*nothing was written"):
        export_run(rte_run, tmp_path / "strict", tolerance=0.0, max_examples=8)
    assert not (tmp_path / "strict").exists()
    assert cli("export", tmp_path, "--out", tmp_path / "x") == 2
    assert "not a finished unipelt run" in capsys.readouterr().err
    from unipelt.inference import Run
    from unipelt.inference.export import exportable

    run = Run(rte_run)
    model, _ = run.load()
    model.add_task("other", "lora", num_labels=2)
    with pytest.raises(UniPELTError, match="holds 2 tasks; an ONNX export holds one task"):
        exportable(run)
    model.remove_task("other")
    model.merged.append("lora")  # as an optimized run loaded alone: its merged weights are what is exported
    exportable(run)
