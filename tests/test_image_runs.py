"""Image classification runs end to end on a tiny ViT: train, eval, predict, base64 inputs."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import transformers as tf
from PIL import Image

from unipelt.cli import main
from unipelt.errors import DataError
from unipelt.kinds import get_kind


def _image(path, bright: bool, rng) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(150, 255, (8, 8)) if bright else rng.integers(0, 90, (8, 8))
    Image.fromarray(pixels.astype(np.uint8), mode="L").save(path)


@pytest.fixture(scope="module")
def image_data(tmp_path_factory):
    """A tiny ViT folder with its image processor, and bright / dark 8 x 8 images in class folders."""
    root = tmp_path_factory.mktemp("images")
    config = tf.ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        image_size=16,
        patch_size=4,
    )
    tf.ViTForImageClassification(config).save_pretrained(root / "vit")
    tf.ViTImageProcessor(
        size={"height": 16, "width": 16}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ).save_pretrained(root / "vit")
    rng = np.random.default_rng(0)
    for split, count in (("train", 24), ("valid", 8), ("test", 8)):
        for label in ("bright", "dark"):
            for i in range(count):
                _image(root / split / label / f"{i}.png", label == "bright", rng)
    return root


@pytest.mark.slow
def test_an_image_run_trains_evaluates_and_predicts(image_data, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--model", str(image_data / "vit"), "--train", str(image_data / "train")]
    args += ["--valid", str(image_data / "valid"), "--test", str(image_data / "test"), "--method", "unipelt"]
    args += ["--epochs", "4", "--batch-size", "8", "--lr", "3e-3", "--out", str(run), "--threads", "1"]
    assert main(args) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    labels = json.loads((run / "labels.json").read_text())
    assert labels["task_type"] == "image-classification" and labels["labels"] == ["bright", "dark"]
    assert metrics["test"]["accuracy"] >= 0.9, metrics["test"]  # bright against dark is easy
    assert (run / "tokenizer" / "preprocessor_config.json").is_file()
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["accuracy"] == pytest.approx(metrics["test"]["accuracy"], abs=1e-6)
    assert main(["predict", str(run), "--input", str(image_data / "test" / "dark")]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == 8 and all(r["image"].endswith(".png") for r in records)
    assert sum(r["label"] == "dark" for r in records) >= 7


def test_base64_and_path_inputs_decode_to_the_same_pixels(image_data):
    kind = get_kind("image-classification")
    processor = kind.load_preprocessor(image_data / "vit")
    path = image_data / "test" / "bright" / "0.png"
    buffer = io.BytesIO()
    Image.open(path).save(buffer, format="PNG")
    text = base64.b64encode(buffer.getvalue()).decode()
    from_path = kind.encode_request(processor, [str(path)], 0)["pixel_values"]
    from_base64 = kind.encode_request(processor, [text, f"data:image/png;base64,{text}"], 0)["pixel_values"]
    assert from_path.shape == (1, 3, 16, 16)
    assert np.array_equal(from_base64[0], from_path[0]) and np.array_equal(from_base64[1], from_path[0])
    with pytest.raises(DataError, match="neither an image file nor a base64"):
        kind.encode_request(processor, ["not an image"], 0)


def test_auto_detects_images_and_a_model_without_processor_gets_a_default(image_data, tmp_path, caplog):
    from unipelt.training.config import TrainConfig

    config = TrainConfig(model=str(image_data / "vit"), task=None, train_file=str(image_data / "train"))
    from unipelt.kinds import resolve_kind

    assert resolve_kind(config).name == "image-classification"
    bare = tmp_path / "bare"
    tf.ViTConfig(image_size=16, patch_size=4).save_pretrained(bare)
    processor = get_kind("image-classification").load_preprocessor(bare)
    assert processor.size == {"height": 16, "width": 16}
    assert "has no image processor" in caplog.text


def test_an_image_run_exports_to_onnx_and_predicts_from_it(image_data, tmp_path, capsys):
    """pixel_values in, logits out, any batch size; the export answers predict as the run does."""
    pytest.importorskip("onnxruntime")
    from unipelt.inference import Run
    from unipelt.inference.onnx_runtime import OnnxModel

    run = tmp_path / "run"
    args = ["train", "--model", str(image_data / "vit"), "--train", str(image_data / "train")]
    args += ["--test", str(image_data / "test"), "--method", "unipelt", "--epochs", "1", "--batch-size", "16"]
    assert main([*args, "--out", str(run), "--threads", "1"]) == 0
    out = tmp_path / "export"
    capsys.readouterr()
    assert (
        main(["export", str(run), "--out", str(out), "--quantize", "int8", "--threads", "1", "--json"]) == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["inputs"] == ["pixel_values"] and report["examples"] == 16
    assert report["parity_max_abs_diff"] <= 1e-4
    assert report["metrics_onnx"]["accuracy"] == report["metrics_torch"]["accuracy"]
    assert report["int8"]["metric"] == "accuracy"
    assert (out / "tokenizer" / "preprocessor_config.json").is_file()

    trained, exported = Run(run), OnnxModel(out, threads=1)
    examples = trained.kind.prediction_inputs(str(image_data / "test"), [], "utf-8", None)
    expected = trained.logits(examples)
    for batch_size in (1, 3, 16):  # the batch axis is dynamic
        got = exported.logits(examples, batch_size=batch_size)
        assert got.shape == expected.shape == (16, 2)
        assert np.abs(got - expected).max() <= 1e-4

    folder = str(image_data / "test" / "bright")
    assert main(["predict", str(run), "--input", folder]) == 0
    torch_records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert main(["predict", str(out), "--input", folder, "--runtime", "onnx"]) == 0
    onnx_records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(onnx_records) == 8
    assert [r["image"] for r in onnx_records] == [r["image"] for r in torch_records]
    assert [r["label"] for r in onnx_records] == [r["label"] for r in torch_records]
    for a, b in zip(torch_records, onnx_records):
        for name in a["probabilities"]:
            assert b["probabilities"][name] == pytest.approx(a["probabilities"][name], abs=1e-5)


def test_an_image_export_is_served_with_onnx_runtime_as_predict_answers(image_data, tmp_path, capsys):
    """`serve --runtime onnx` on an image export: base64 images in, the run's own probabilities out."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from unipelt.inference.onnx_runtime import OnnxEngine
    from unipelt.inference.serve import ServeOptions, create_app

    run, out = tmp_path / "run", tmp_path / "export"
    args = ["train", "--model", str(image_data / "vit"), "--train", str(image_data / "train")]
    args += ["--test", str(image_data / "test"), "--method", "unipelt", "--epochs", "1", "--threads", "1"]
    assert main([*args, "--out", str(run)]) == 0
    assert main(["export", str(run), "--out", str(out), "--threads", "1"]) == 0
    capsys.readouterr()
    assert main(["predict", str(run), "--input", str(image_data / "test" / "dark")]) == 0
    expected = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    paths = [Path(record["image"]) for record in expected]
    inputs = [base64.b64encode(p.read_bytes()).decode() for p in paths]
    with TestClient(create_app(OnnxEngine([f"digits={out}"], threads=1), ServeOptions())) as client:
        answer = client.post("/v1/predict", json={"task": "digits", "inputs": inputs})
    assert answer.status_code == 200, answer.text
    got = answer.json()["predictions"]
    assert [g["label"] for g in got] == [e["label"] for e in expected]
    for g, e in zip(got, expected):
        for name, p in e["probabilities"].items():
            assert g["probabilities"][name] == pytest.approx(p, abs=1e-5)
