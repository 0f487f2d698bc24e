"""`unipelt serve` asks each run's task kind how its inputs are read and answered: image runs served with base64
images, and a kind registered outside unipelt served without any change to the server."""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_image_runs import image_data  # noqa: F401 - the tiny ViT and its images

from unipelt.errors import UniPELTError
from unipelt.kinds import TaskKind, register_kind, unregister_kind
from unipelt.kinds.base import class_answer

fastapi = pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from unipelt.inference.serve import ServeOptions, create_app  # noqa: E402

FAST = ["--epochs", "1", "--batch-size", "16", "--threads", "1"]


def _base64(path: Path, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    Image.open(path).save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def image_run(image_data, tmp_path_factory) -> Path:  # noqa: F811
    from unipelt.cli import main

    run = tmp_path_factory.mktemp("image-serve") / "digits"
    args = ["train", "--model", str(image_data / "vit"), "--train", str(image_data / "train")]
    assert main([*args, "--method", "unipelt", "--lr", "3e-3", "--out", str(run), *FAST]) == 0
    return run


@pytest.fixture(scope="module")
def text_run(tiny_model_dir, glue_dir, tmp_path_factory) -> Path:
    from unipelt.cli import main

    run = tmp_path_factory.mktemp("text-serve") / "sst2"
    args = ["train", "--model", tiny_model_dir, "--data-dir", glue_dir, "--task", "sst2", "--k", "8"]
    args += ["--n-valid", "8", "--max-length", "32", "--out", run, *FAST]
    assert main([str(a) for a in args]) == 0
    return run


def test_image_runs_answer_base64_and_data_urls_as_predict_does(image_data, image_run):  # noqa: F811
    from unipelt.data.images import ImageExample
    from unipelt.inference import Run
    from unipelt.inference.engine import TorchEngine

    paths = [image_data / "test" / "bright" / "0.png", image_data / "test" / "dark" / "3.png"]
    engine = TorchEngine([f"digits={image_run}", f"again={image_run}"])
    one = engine.tasks["digits"].encode([_base64(paths[0])])
    two = engine.tasks["again"].encode([_base64(paths[1]), _base64(paths[0])])
    mixed = engine.forward([*one, *two])[0]  # two image tasks in one forward, each row as alone
    alone = [*engine.forward(one)[0], *engine.forward(two)[0]]
    assert all(np.allclose(m, a, atol=1e-5) for m, a in zip(mixed, alone)) and len(mixed) == 3
    with TestClient(create_app(engine, ServeOptions(max_inputs=4))) as client:
        task = client.get("/v1/tasks").json()["tasks"][0]
        assert task["name"] == "digits" and task["parameters"]["lora"] > 0
        assert (task["kind"], task["inputs"], task["labels"]) == (
            "image-classification",
            "image",
            ["bright", "dark"],
        )
        schema = client.get("/openapi.json").json()
        body = json.dumps(schema["paths"]["/v1/predict"]["post"]["requestBody"])
        assert "data:image" in body  # the published input is a base64 image
        inputs = [_base64(paths[0]), "data:image/png;base64," + _base64(paths[1])]
        answer = client.post("/v1/predict", json={"task": "digits", "inputs": inputs, "gates": True})
        assert answer.status_code == 200, answer.text
        jpeg = client.post("/v1/predict", json={"task": "digits", "inputs": [_base64(paths[0], "JPEG")]})
        assert jpeg.status_code == 200 and jpeg.json()["predictions"][0]["label"] in ("bright", "dark")
    expected = list(Run(image_run).predict([ImageExample(str(p), None) for p in paths]))
    for got, want in zip(answer.json()["predictions"], expected):
        assert got["label"] == want["label"]
        for name, p in want["probabilities"].items():
            assert got["probabilities"][name] == pytest.approx(p, abs=1e-5)
        layers = got["gates"]
        assert set(layers) == {"0", "1"} and all(0 <= v <= 1 for s in layers.values() for v in s.values())


def test_image_requests_that_cannot_be_answered_get_4xx_and_never_read_server_files(image_data, image_run):  # noqa: F811
    from unipelt.inference.engine import TorchEngine

    engine = TorchEngine([f"digits={image_run}"])
    calls = []
    forward = engine.forward
    engine.forward = lambda rows, gates=False: calls.append(len(rows)) or forward(rows, gates)
    huge = io.BytesIO()
    Image.new("1", (6400, 6400)).save(huge, format="PNG")  # 41 million pixels in a few kB
    with TestClient(create_app(engine)) as client:

        def post(inputs):
            return client.post("/v1/predict", json={"task": "digits", "inputs": inputs})

        path = post([str(image_data / "test" / "bright" / "0.png")])  # a path on the server: not an image
        assert path.status_code == 422 and path.json()["error"].startswith("inputs[0] is not a base64")
        garbage = post([_base64(image_data / "test" / "dark" / "0.png"), base64.b64encode(b"text").decode()])
        assert garbage.status_code == 422 and garbage.json()["error"].startswith("inputs[1] is not")
        big = post([base64.b64encode(huge.getvalue()).decode()])
        assert big.status_code == 413 and "6400 x 6400 pixels" in big.json()["error"]
        assert post([""]).status_code == 400 and post([["a", "b"]]).status_code == 400
        assert calls == []  # none of them reached the model
        assert client.get("/health").status_code == 200


def test_an_image_run_and_a_text_run_of_another_base_are_refused_by_name(image_run, text_run):
    from unipelt.cli import build_parser
    from unipelt.cli.serve import build_app

    args = build_parser().parse_args(["serve", str(image_run), str(text_run), "--threads", "1"])
    with pytest.raises(UniPELTError, match="one server shares one backbone") as error:
        build_app(args, None)
    assert str(text_run) in str(error.value) and "trained on" in str(error.value)


class Reversed(TaskKind):
    """A kind defined outside unipelt: texts read backwards. Only ``serves``, ``encode_request`` and
    ``decode_output`` are its own; everything else serving needs comes from the base class."""

    name = "reversed-text"
    serves = "predict"

    def encode_request(self, tokenizer, texts, max_length):
        return tokenizer([t[::-1] for t in texts], truncation=True, max_length=max_length)

    def decode_output(self, outputs, labels):
        return class_answer(outputs, labels)


def test_a_kind_registered_elsewhere_is_served_without_changes_to_the_server(text_run, tmp_path):
    from unipelt.inference.engine import TorchEngine

    backwards = tmp_path / "backwards"
    shutil.copytree(text_run, backwards)
    info = json.loads((backwards / "labels.json").read_text())
    (backwards / "labels.json").write_text(json.dumps({**info, "task_type": "reversed-text"}))
    register_kind(Reversed())
    try:
        engine = TorchEngine([f"plain={text_run}", f"backwards={backwards}"])
        with TestClient(create_app(engine)) as client:
            tasks = {t["name"]: t for t in client.get("/v1/tasks").json()["tasks"]}
            assert tasks["backwards"]["kind"] == "reversed-text" and tasks["backwards"]["inputs"] == "single"
            texts = ["a gripping, funny film", "dull and far too long"]
            flipped = client.post("/v1/predict", json={"task": "backwards", "inputs": texts}).json()
            plain = client.post("/v1/predict", json={"task": "plain", "inputs": [t[::-1] for t in texts]})
            bad = client.post("/v1/predict", json={"task": "backwards", "inputs": [["two", "texts"]]})
    finally:
        unregister_kind("reversed-text")
    assert bad.status_code == 400 and "inputs[0] must be a text" in bad.json()["error"]
    for got, want in zip(flipped["predictions"], plain.json()["predictions"]):
        assert got["label"] == want["label"]
        assert np.allclose(
            list(got["probabilities"].values()), list(want["probabilities"].values()), atol=1e-5
        )


def test_a_kind_that_serves_nothing_is_refused_by_name():
    from unipelt.inference.served_tasks import served_task

    class Silent(TaskKind):
        name = "silent"

    with pytest.raises(UniPELTError, match="RUN is a silent run: `unipelt serve` cannot answer it"):
        served_task(Silent(), name="x", source="RUN", labels=None, regression=False, pair=False,
                    max_length=8, tokenizer=None)  # fmt: skip
    with pytest.raises(UniPELTError, match="causal-lm run; `unipelt serve` answers it only on its own"):
        served_task("causal-lm", name="x", source="RUN", labels=None, regression=False, pair=False,
                    max_length=8, tokenizer=None)  # fmt: skip


def test_a_live_server_answers_an_image_over_http(image_data, image_run):  # noqa: F811
    from test_serve import _live

    from unipelt.inference.engine import TorchEngine

    image = "data:image/png;base64," + _base64(image_data / "test" / "dark" / "1.png")
    app = create_app(TorchEngine([f"digits={image_run}"]))
    with TestClient(app) as client:
        expected = client.post("/v1/predict", json={"task": "digits", "inputs": [image]}).json()
    base, stop = _live(create_app(TorchEngine([f"digits={image_run}"])))
    try:
        answer = httpx.post(f"{base}/v1/predict", json={"task": "digits", "inputs": [image]}, timeout=60)
        metrics = httpx.get(f"{base}/metrics", timeout=60).text
    finally:
        stop()
    assert answer.status_code == 200 and answer.json() == expected
    assert 'unipelt_requests_total{route="/v1/predict",status="200",task="digits"} 1.0' in metrics
