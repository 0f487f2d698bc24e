"""`unipelt serve`: many runs on one backbone, dynamic batching across tasks, and answers to bad requests."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from test_token_classification import sentences, write_conll

from unipelt.errors import UniPELTError
from unipelt.inference.batching import DynamicBatcher
from unipelt.inference.served_tasks import Row, unique_names

fastapi = pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

FAST = ["--epochs", "1", "--batch-size", "8", "--max-length", "32", "--threads", "1"]


# ------------------------------------------------------------------------------------- batcher alone


def _rows(task: str, n: int) -> list[Row]:
    return [Row(task, {"input_ids": [i]}, False, 1) for i in range(n)]


def test_batcher_gathers_concurrent_requests_and_routes_answers():
    seen: list[list[str]] = []

    def forward(rows, gates):
        seen.append([r.task for r in rows])
        time.sleep(0.01)
        return [(r.task, r.ids["input_ids"][0]) for r in rows], None

    batcher = DynamicBatcher(forward, max_batch=8, max_wait_ms=50)
    try:
        with ThreadPoolExecutor(6) as pool:
            futures = [
                pool.submit(lambda i=i: batcher.submit(_rows(f"t{i % 3}", 2)).result(5)) for i in range(6)
            ]
            answers = [f.result() for f in futures]
    finally:
        batcher.close()
    for i, (outputs, gates) in enumerate(answers):
        assert outputs == [(f"t{i % 3}", 0), (f"t{i % 3}", 1)] and gates is None
    assert all(len(batch) <= 8 for batch in seen)
    assert sum(len(b) for b in seen) == 12 and len(seen) < 6  # gathered, not one forward per request
    assert any(len(set(batch)) > 1 for batch in seen)  # mixed tasks in one forward


def test_batcher_without_batching_chunks_and_survives_a_failing_forward():
    sizes: list[int] = []

    def forward(rows, gates):
        sizes.append(len(rows))
        if rows[0].task == "boom":
            raise RuntimeError("model failed")
        return [r.ids["input_ids"][0] for r in rows], [{"g": 1.0}] * len(rows)

    batcher = DynamicBatcher(forward, max_batch=4, max_wait_ms=0, batching=False)
    try:
        with pytest.raises(RuntimeError, match="model failed"):
            batcher.submit(_rows("boom", 1)).result(5)
        outputs, gates = batcher.submit(_rows("a", 10), gates=True).result(5)  # over max_batch: chunks of 4
        assert outputs == list(range(10)) and len(gates) == 10
        assert batcher.submit(_rows("a", 1)).result(5) == ([0], None)  # the worker is still alive
    finally:
        batcher.close()
    assert sizes == [1, 4, 4, 2, 1]


def test_unique_names():
    assert unique_names(["rte", "rte", "a.b", "rte"]) == ["rte", "rte-2", "a-b", "rte-3"]


# ------------------------------------------------------------------------------------- real runs


@pytest.fixture(scope="module")
def runs(tiny_model_dir, glue_dir, tmp_path_factory) -> dict[str, Path]:
    from unipelt.cli import main

    root = tmp_path_factory.mktemp("serve-runs")
    out = {}
    for task in ("rte", "sst2", "stsb"):
        out[task] = root / task
        args = ["train", "--model", tiny_model_dir, "--data-dir", glue_dir, "--task", task, "--k", "8"]
        assert main([str(a) for a in [*args, "--n-valid", "8", "--out", out[task], *FAST]]) == 0
    train = write_conll(root / "train.conll", sentences(40, seed=1))
    test = write_conll(root / "test.conll", sentences(12, seed=2))
    out["ner"] = root / "ner"
    args = [
        "train",
        "--model",
        tiny_model_dir,
        "--train",
        train,
        "--test",
        test,
        "--lr",
        "1e-2",
        "--out",
        out["ner"],
    ]
    assert main([str(a) for a in [*args, *FAST]]) == 0
    return out


@pytest.fixture(scope="module")
def engine(runs):
    from unipelt.inference.engine import TorchEngine

    return TorchEngine([runs["rte"], runs["sst2"], runs["stsb"], runs["ner"]])


@pytest.fixture(scope="module")
def client(engine):
    from fastapi.testclient import TestClient

    from unipelt.inference.serve import ServeOptions, create_app

    with TestClient(create_app(engine, ServeOptions(max_batch=16, max_inputs=4))) as test_client:
        yield test_client


@pytest.mark.slow
def test_tasks_are_listed_with_labels_scores_and_parameters(client, runs):
    assert client.get("/health").json() == {"status": "ok", "runtime": "torch", "tasks": 4}
    tasks = {t["name"]: t for t in client.get("/v1/tasks").json()["tasks"]}
    assert list(tasks) == ["rte", "sst2", "stsb", "ner"]
    assert tasks["ner"]["kind"] == "token-classification" and tasks["ner"]["inputs"] == "words"
    assert tasks["rte"]["labels"] == ["entailment", "not_entailment"] and tasks["rte"]["inputs"] == "pair"
    assert tasks["sst2"]["inputs"] == "single" and tasks["stsb"]["kind"] == "regression"
    assert tasks["stsb"]["labels"] is None and tasks["stsb"]["metric"] == "spearman"
    metrics = json.loads((runs["rte"] / "metrics.json").read_text())
    assert tasks["rte"]["score"] == pytest.approx(metrics["test"]["accuracy"])
    assert tasks["rte"]["parameters"]["lora"] > 0 and tasks["rte"]["parameters"]["prefix_mlp"] == 0


@pytest.mark.slow
def test_predictions_match_the_run_and_flag_truncation(client, runs):
    from unipelt.data import Example
    from unipelt.inference import Run

    pair = ["A man plays a guitar.", "A person makes music."]
    answer = client.post("/v1/predict", json={"task": "rte", "inputs": [pair], "gates": True}).json()
    record = answer["predictions"][0]
    expected = next(Run(runs["rte"]).predict([Example(*pair, None)]))
    assert record["label"] == expected["label"]
    for name, p in expected["probabilities"].items():
        assert record["probabilities"][name] == pytest.approx(p, abs=1e-5)
    assert set(record["gates"]) == {"0", "1"} and all(0 <= v <= 1 for v in record["gates"]["0"].values())
    score = client.post("/v1/predict", json={"task": "stsb", "inputs": [pair]}).json()["predictions"][0]
    assert set(score) == {"score"}
    long = client.post("/v1/predict", json={"task": "sst2", "inputs": ["word " * 200, "fine"]}).json()
    assert long["predictions"][0]["truncated"] is True and long["predictions"][0]["tokens"] > 32
    assert "truncated" not in long["predictions"][1]


@pytest.mark.slow
def test_bad_requests_get_clear_answers_and_are_counted(client):
    def post(body=None, content=None):
        if content is not None:
            return client.post("/v1/predict", content=content, headers={"content-type": "application/json"})
        return client.post("/v1/predict", json=body)

    unknown = post({"task": "mnli", "inputs": ["x"]})
    assert unknown.status_code == 404 and unknown.json()["tasks"] == ["rte", "sst2", "stsb", "ner"]
    assert "rte, sst2, stsb, ner" in unknown.json()["error"]
    missing = post({"inputs": ["x"]})
    assert missing.status_code == 422 and missing.json()["fields"] == ["task"]
    assert "'task'" in missing.json()["error"]
    broken = post(content=b'{"task": "sst2", "inputs": [')
    assert broken.status_code == 422 and "malformed JSON" in broken.json()["error"]
    wrong = post({"task": "sst2", "inputs": [3]})
    assert wrong.status_code == 422 and "inputs[0]" in wrong.json()["error"]
    assert post({"task": "sst2", "inputs": []}).status_code == 400
    assert post({"task": "sst2", "inputs": ["x"] * 5}).status_code == 413
    single = post({"task": "rte", "inputs": ["only one text"]})
    assert single.status_code == 400 and "[text_a, text_b]" in single.json()["error"]
    assert post({"task": "sst2", "inputs": [["a", "b"]]}).status_code == 400
    assert client.get("/health").status_code == 200  # still up
    text = client.get("/metrics").text
    assert 'unipelt_requests_total{route="/v1/predict",status="413",task="sst2"} 1.0' in text
    assert 'unipelt_requests_total{route="/v1/predict",status="404",task=""} 1.0' in text
    assert 'unipelt_request_errors_total{status="422"} 3.0' in text
    assert "unipelt_request_latency_seconds_bucket" in text and "unipelt_batch_rows_bucket" in text


@pytest.mark.slow
def test_runs_on_another_base_or_full_fine_tuning_are_refused(runs, tmp_path):
    from unipelt.inference.engine import TorchEngine

    other = tmp_path / "other"
    shutil.copytree(runs["sst2"], other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model": "minilm"}))
    with pytest.raises(UniPELTError, match="trained on 'minilm'.*one server shares one backbone") as error:
        TorchEngine([runs["rte"], other])
    assert str(runs["rte"]) in str(error.value)
    (other / "config.json").write_text(json.dumps({**config, "method": "ft"}))
    with pytest.raises(UniPELTError, match="full fine-tuning run"):
        TorchEngine([other])


@pytest.mark.slow
def test_duplicate_and_explicit_names(runs):
    from unipelt.inference.engine import TorchEngine

    engine = TorchEngine([runs["sst2"], runs["sst2"], f"sentiment={runs['sst2']}"])
    assert list(engine.tasks) == ["sst2", "sst2-2", "sentiment"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_real_server_batches_concurrent_requests_of_three_tasks(runs):
    port = _free_port()
    command = [sys.executable, "-m", "unipelt.cli", "serve", *(str(runs[t]) for t in ("rte", "sst2", "stsb"))]
    command += ["--port", str(port), "--batching", "wait", "--max-wait-ms", "200", "--max-batch", "64"]
    command += ["--threads", "1"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240  # a loaded machine starts a server slowly
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, server.stdout.read().decode()
            assert time.time() < deadline, "server did not start"
            time.sleep(0.2)
        bodies = [
            {
                "task": "rte",
                "inputs": [["A dog runs.", "An animal moves."], ["It rains.", "The sun shines."]],
            },
            {"task": "sst2", "inputs": ["a wonderful film", "dull and far too long"]},
            {"task": "stsb", "inputs": [["A man eats.", "A man is eating."]]},
        ] * 3
        alone = [httpx.post(f"{base}/v1/predict", json=b, timeout=30).json() for b in bodies]
        start = threading.Barrier(len(bodies))

        def call(body):
            start.wait()
            return httpx.post(f"{base}/v1/predict", json=body, timeout=30).json()

        with ThreadPoolExecutor(len(bodies)) as pool:
            together = list(pool.map(call, bodies))
        for single, batched in zip(alone, together):
            assert single["task"] == batched["task"]
            for a, b in zip(single["predictions"], batched["predictions"]):
                if "score" in a:
                    assert b["score"] == pytest.approx(a["score"], abs=1e-5)
                else:
                    assert a["label"] == b["label"]
                    assert np.allclose(
                        list(a["probabilities"].values()), list(b["probabilities"].values()), atol=1e-5
                    )
        metrics = httpx.get(f"{base}/metrics").text
        forwards = _sample(metrics, "unipelt_batch_rows_count")
        rows = _sample(metrics, "unipelt_batch_rows_sum")
        tasks = _sample(metrics, "unipelt_batch_tasks_sum")
        assert rows == 2 * 15 and forwards < len(bodies) * 2  # the concurrent round took fewer forwards
        assert tasks > forwards  # at least one forward held rows of several tasks
    finally:
        server.terminate()
        server.wait(10)


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.mark.slow
def test_tagging_answers_equal_predict_and_share_the_backbone(client, engine, runs):
    from unipelt.inference import Run

    sentences_in = ["John Smith lives in Paris", ["Acme", "Corp", "hired", "Mary"]]
    answer = client.post("/v1/predict", json={"task": "ner", "inputs": sentences_in})
    assert answer.status_code == 200
    expected = list(Run(runs["ner"]).tag(sentences_in))
    for got, want in zip(answer.json()["predictions"], expected):
        assert got["tokens"] == want["tokens"] and got["tags"] == want["tags"]
        assert got["scores"] == pytest.approx(want["scores"], abs=1e-5)
        assert [(e["type"], e["start"], e["end"]) for e in got["entities"]] == [
            (e["type"], e["start"], e["end"]) for e in want["entities"]
        ]
    sequence = engine.models[engine.tasks["sst2"].group].base_model
    tokens = engine.models[engine.tasks["ner"].group].base_model
    shared = dict(sequence.base_model.named_parameters())
    for name, parameter in tokens.base_model.named_parameters():
        assert parameter is shared[name]  # one copy of the backbone for both kinds of head
    mixed = [{"task": "ner", "inputs": ["Mary flies to Rome"]}, {"task": "sst2", "inputs": ["fine"]}] * 3
    with ThreadPoolExecutor(6) as pool:
        together = list(pool.map(lambda b: client.post("/v1/predict", json=b).json(), mixed))
    alone = [client.post("/v1/predict", json=b).json() for b in mixed[:2]]
    for i, answer in enumerate(together):
        assert answer["task"] == alone[i % 2]["task"]
        a, b = answer["predictions"][0], alone[i % 2]["predictions"][0]
        assert (a.get("tags"), a.get("label")) == (b.get("tags"), b.get("label"))
    words = client.post("/v1/predict", json={"task": "ner", "inputs": [["ok", " "]]})
    assert words.status_code == 400 and "inputs[0]" in words.json()["error"]


@pytest.mark.slow
def test_tagging_exports_to_onnx_with_parity_and_serves_there(runs, tmp_path, capsys):
    from fastapi.testclient import TestClient

    from unipelt.cli import main
    from unipelt.inference.onnx_runtime import OnnxEngine
    from unipelt.inference.serve import create_app

    out = tmp_path / "ner-onnx"
    assert main(["export", str(runs["ner"]), "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["parity_max_abs_diff"] <= 1e-4 and report["examples"] == 12
    lines = tmp_path / "lines.txt"
    lines.write_text("John Smith lives in Paris\nAcme Corp hired Mary\n")
    assert main(["predict", str(runs["ner"]), "--input", str(lines)]) == 0
    torch_records = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert main(["predict", str(out), "--runtime", "onnx", "--input", str(lines)]) == 0
    onnx_records = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(onnx_records) == 2
    for a, b in zip(torch_records, onnx_records):
        assert a["tags"] == b["tags"] and a["scores"] == pytest.approx(b["scores"], abs=1e-5)
    with TestClient(create_app(OnnxEngine([f"tags={out}"], threads=1))) as client:
        answer = client.post("/v1/predict", json={"task": "tags", "inputs": ["Acme Corp hired Mary"]}).json()
    assert answer["predictions"][0]["tags"] == onnx_records[1]["tags"]


def _live(app, **ssl):
    """A real uvicorn server for ``app`` on a free loopback port, in a thread: (base URL, stop)."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", **ssl))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 120
    while not server.started:
        assert thread.is_alive() and time.time() < deadline, "server did not start"
        time.sleep(0.05)

    def stop():
        server.should_exit = True
        thread.join(30)

    return f"{'https' if ssl else 'http'}://127.0.0.1:{port}", stop


@pytest.mark.slow
def test_schemathesis_finds_no_failing_check_on_a_live_server(engine, tmp_path):
    pytest.importorskip("schemathesis")
    from unipelt.inference.serve import ServeOptions, create_app

    app = create_app(engine, ServeOptions(api_key="fuzz-key", max_inputs=8, max_text_chars=400))
    base, stop = _live(app)
    # 413 answers the schema's own limits (maxItems, maxLength): a rejection like 400 and 422
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        '[checks.negative_data_rejection]\nexpected-statuses = ["400", "401", "404", "413", "422"]\n'
    )
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "run",
        f"{base}/openapi.json",
    ]
    command += [
        "-H",
        "Authorization: Bearer fuzz-key",
        "--checks",
        "all",
        "--max-examples",
        "25",
        "--seed",
        "7",
    ]
    command += ["--workers", "1", "--phases", "examples,coverage,fuzzing"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    finally:
        stop()
    assert result.returncode == 0, result.stdout[-4000:]
    assert "No issues found" in result.stdout and "4 selected / 4 total" in result.stdout
