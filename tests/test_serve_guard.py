"""The server's guard rails, on a small model-free engine: token-budget batching, limits, one error shape per
route group (OpenAI's on mounted OpenAI routes), API keys on every route, request logs, CORS, the queue bound,
and the `serve` command's refusals."""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from unipelt.inference.batching import TokenBatcher, bucket
from unipelt.inference.served_tasks import Row, ServedTask

fastapi = pytest.importorskip("fastapi")
from fastapi import APIRouter  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from unipelt.inference.http_errors import ApiError, openai_error  # noqa: E402
from unipelt.inference.serve import ServeOptions, create_app, mount  # noqa: E402

KEY = "s3cret-key"


def _rows(task: str, lengths: list[int]) -> list[Row]:
    return [Row(task, {"input_ids": list(range(n))}, False, n) for n in lengths]


def test_token_batcher_runs_a_lone_request_at_once_and_buckets_by_length():
    forwards: list[list[int]] = []
    gate = threading.Event()

    def forward(rows, gates):
        gate.wait(5)
        forwards.append([r.length for r in rows])
        return [r.length for r in rows], None

    batcher = TokenBatcher(forward, max_tokens=64, max_rows=8)
    try:
        gate.set()
        start = time.perf_counter()
        assert batcher.submit(_rows("a", [5])).result(5) == ([5], None)
        assert time.perf_counter() - start < 1.0  # not held back waiting for company
        gate.clear()
        blocker = batcher.submit(_rows("a", [3]))  # occupies the worker while the rest queue up
        time.sleep(0.05)
        mixed = batcher.submit(_rows("b", [4, 30, 5, 31, 6]))
        more = batcher.submit(_rows("c", [7, 29]))
        gate.set()
        assert blocker.result(5)[0] == [3]
        assert mixed.result(5)[0] == [4, 30, 5, 31, 6]  # answers in the request's order
        assert more.result(5)[0] == [7, 29]
    finally:
        batcher.close()
    assert forwards[0] == [5] and forwards[1] == [3]
    later = forwards[2:]
    assert sorted(n for f in later for n in f) == [4, 5, 6, 7, 29, 30, 31]
    for lengths in later:
        assert len({bucket(n) for n in lengths}) == 1  # a short row is never padded to a long one
        assert max(lengths) * len(lengths) <= 64 or len(lengths) == 1  # the token budget
    assert [4, 5, 6, 7] in later  # short rows of two requests shared one forward


def test_token_batcher_bounds_its_queue_and_survives_a_failing_forward():
    release = threading.Event()

    def forward(rows, gates):
        release.wait(5)
        if rows[0].task == "boom":
            raise RuntimeError("model failed")
        return [0] * len(rows), [{"g": 1.0}] * len(rows)

    batcher = TokenBatcher(forward, max_tokens=1000, max_queue=2)
    try:
        first, second = batcher.submit(_rows("boom", [2, 40])), batcher.submit(_rows("a", [100]))
        with pytest.raises(ApiError) as full:
            batcher.submit(_rows("a", [2]))
        assert full.value.status == 429 and int(full.value.headers["Retry-After"]) >= 1
        release.set()
        with pytest.raises(RuntimeError, match="model failed"):
            first.result(5)
        assert second.result(5) == ([0], None)
        assert batcher.submit(_rows("a", [2]), gates=True).result(5) == ([0], [{"g": 1.0}])
    finally:
        batcher.close()


# ------------------------------------------------------------------------------------- app, no model


class Tokens:
    """A stand-in tokenizer: one id per character, [CLS]=1 ... [SEP]=2."""

    pad_token_id = 0
    padding_side = "right"

    def __call__(self, first, second=None, truncation=False, max_length=None):
        ids = []
        for i, text in enumerate(first):
            row = [1, *(ord(c) % 1000 + 3 for c in text), 2]
            if second is not None:
                row += [*(ord(c) % 1000 + 3 for c in second[i]), 2]
            ids.append(row[:max_length] if truncation else row)
        return {"input_ids": ids, "attention_mask": [[1] * len(r) for r in ids]}


class Engine:
    """Logits (length, -length) per row, so an answer says which row it was."""

    runtime = "torch"

    def __init__(self) -> None:
        common = dict(
            source="mem", labels=["long", "short"], regression=False, max_length=16, tokenizer=Tokens()
        )
        self.tasks = {
            "one": ServedTask(name="one", pair=False, **common),
            "two": ServedTask(name="two", pair=True, **common),
        }
        self.calls = 0

    def forward(self, rows, gates=False):
        self.calls += 1
        return [np.array([r.length, -r.length], dtype=np.float32) for r in rows], None


def openai_router() -> APIRouter:
    router = APIRouter()

    @router.get("/v1/models")
    async def models():
        return {
            "object": "list",
            "data": [{"id": "one", "object": "model", "created": 0, "owned_by": "unipelt"}],
        }

    @router.post("/v1/completions")
    async def completions(body: dict):
        raise ApiError(404, f"unknown model {body.get('model')!r}", param="model", code="model_not_found")

    return router


def app_with(**options):
    engine = Engine()
    app = create_app(engine, ServeOptions(**options))
    mount(app, openai_router(), openai_error)
    return app, engine


def test_errors_take_the_shape_of_their_route_group():
    app, _ = app_with(max_body_bytes=2000, max_inputs=2)
    with TestClient(app) as client:
        own = client.post("/v1/predict", json={"task": "nope", "inputs": ["x"]})
        assert own.status_code == 404 and own.json()["tasks"] == ["one", "two"]
        theirs = client.post("/v1/completions", json={"model": "nope"})
        assert theirs.status_code == 404
        assert theirs.json() == {
            "error": {
                "message": "unknown model 'nope'",
                "type": "not_found_error",
                "param": "model",
                "code": "model_not_found",
            }
        }
        # FastAPI's own errors, in each shape: malformed JSON, a body over the limit (declared or streamed)
        broken = client.post("/v1/completions", content=b"{", headers={"content-type": "application/json"})
        assert broken.status_code == 422 and "malformed JSON" in broken.json()["error"]["message"]
        big = b'{"task": "one", "inputs": ["' + b"x" * 3000 + b'"]}'
        assert (
            client.post("/v1/predict", content=big).json()["error"].startswith("the request body is larger")
        )
        assert client.post("/v1/completions", content=big).json()["error"]["type"] == "invalid_request_error"
        streamed = client.post("/v1/predict", content=iter([big[:1000], big[1000:]]))
        assert streamed.status_code == 413 and "error" in streamed.json()
        assert client.get("/v1/nowhere").json()["error"].startswith("no route")
        assert client.delete("/v1/predict").status_code == 405
        text = client.get("/metrics").text
    assert 'unipelt_requests_total{route="/v1/completions",status="404",task=""} 1.0' in text
    assert 'unipelt_requests_total{route="/v1/predict",status="413",task=""} 2.0' in text
    assert 'unipelt_request_errors_total{status="405"} 1.0' in text


def test_limits_and_texts_that_are_not_utf8():
    app, engine = app_with(max_text_chars=50, max_inputs=2)
    with TestClient(app) as client:

        def post(body):
            content = json.dumps(body).encode()  # ASCII escapes: a lone surrogate travels as \ud800
            return client.post("/v1/predict", content=content, headers={"content-type": "application/json"})

        ok = post({"task": "one", "inputs": ["abc", "abcdef"]})
        assert ok.status_code == 200
        assert [p["probabilities"]["long"] > 0.99 for p in ok.json()["predictions"]] == [True, True]
        surrogate = post({"task": "two", "inputs": [["fine", "a \ud800 b"]]})
        assert surrogate.status_code == 422 and surrogate.json()["error"].startswith(
            "inputs[0][1] cannot be encoded"
        )
        calls = engine.calls
        long = post({"task": "one", "inputs": ["y" * 51]})
        assert long.status_code == 413 and "inputs[0] has 51 characters" in long.json()["error"]
        assert post({"task": "one", "inputs": ["a", "b", "c"]}).status_code == 413
        assert post({"task": "two", "inputs": ["only one"]}).status_code == 400
        assert post({"task": "one", "inputs": ["x"], "gates": "yes"}).status_code == 422  # strict types
        assert engine.calls == calls  # none of them reached the model
        nested = client.post(
            "/v1/predict", content=b"[" * 50000, headers={"content-type": "application/json"}
        )
        assert nested.status_code in (400, 422) and "error" in nested.json()
        assert client.get("/health").status_code == 200


def test_full_queue_answers_429_with_retry_after():
    app, engine = app_with(max_queue=1)
    release = threading.Event()
    plain = engine.forward

    def slow(rows, gates=False):
        release.wait(10)
        return plain(rows, gates)

    app.state.batcher.forward = slow
    with TestClient(app) as client, ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.post, "/v1/predict", json={"task": "one", "inputs": ["a"]})
        time.sleep(0.3)
        busy = client.post("/v1/predict", json={"task": "one", "inputs": ["b"]})
        release.set()
        assert first.result(10).status_code == 200
    assert (
        busy.status_code == 429 and int(busy.headers["retry-after"]) >= 1 and "busy" in busy.json()["error"]
    )


def protected_routes(app) -> list[tuple[str, str]]:
    """Every (method, path) the app answers, read from its routes, except the open /health."""
    from unipelt.inference.http_errors import leaf_routes

    out = []
    for route in leaf_routes(app.router.routes):
        for method in sorted(getattr(route, "methods", None) or {"GET"}):
            if route.path != "/health" and method != "HEAD":
                out.append((method, route.path))
    return out


@pytest.mark.parametrize("public_metrics", [False, True])
def test_every_route_but_health_needs_the_key(public_metrics):
    """The server's routes and the real OpenAI-compatible ones (their engine is never reached: the key is
    checked first)."""
    from types import SimpleNamespace

    from unipelt.inference.openai_api import openai_router

    app = create_app(Engine(), ServeOptions(api_key=KEY, public_metrics=public_metrics))
    mount(app, openai_router(SimpleNamespace(tasks={}, models=["base"])), openai_error)
    routes = protected_routes(app)
    for route in [
        ("POST", "/v1/predict"),
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),
        ("GET", "/docs"),
    ]:
        assert route in routes
    with TestClient(app) as client:
        for method, path in routes:
            path = path.replace("{", "").replace("}", "")
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
                answer = client.request(method, path, headers=headers)
                if path == "/metrics" and public_metrics:
                    assert answer.status_code == 200
                    continue
                assert answer.status_code == 401, (method, path, headers)
                assert answer.headers["www-authenticate"] == "Bearer"
                error = answer.json()["error"]
                if path in ("/v1/models", "/v1/completions", "/v1/chat/completions"):
                    assert error["type"] == "authentication_error" and error["code"] == "invalid_api_key"
                else:
                    assert error.startswith("missing or wrong API key")
        good = {"Authorization": f"Bearer {KEY}"}
        assert client.get("/health").status_code == 200
        assert client.get("/v1/models", headers=good).status_code == 200
        assert (
            client.post("/v1/predict", json={"task": "one", "inputs": ["x"]}, headers=good).status_code == 200
        )
        schema = client.get("/openapi.json", headers=good).json()
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert "security" not in schema["paths"]["/health"]["get"]
    assert schema["paths"]["/v1/predict"]["post"]["security"] == [{"bearer": []}]


def test_each_request_logs_one_line_with_its_id_and_no_text(caplog):
    for log_inputs in (False, True):
        app, _ = app_with(log_inputs=log_inputs)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="unipelt.serve"), TestClient(app) as client:
            mine = client.post(
                "/v1/predict",
                json={"task": "one", "inputs": ["secret words"]},
                headers={"X-Request-ID": "req-42"},
            )
            theirs = client.post("/v1/predict", json={"task": "two", "inputs": [["a", "b"], ["c", "d"]]})
        assert mine.headers["x-request-id"] == "req-42" and len(theirs.headers["x-request-id"]) == 32
        lines = [r.getMessage() for r in caplog.records if r.name == "unipelt.serve"]
        assert len(lines) == 2
        assert lines[0].startswith("request req-42 POST /v1/predict status=200 task=one rows=1 latency_ms=")
        assert f"request {theirs.headers['x-request-id']} " in lines[1] and "task=two rows=2" in lines[1]
        assert ("secret words" in lines[0]) is log_inputs


def test_cors_is_off_unless_an_origin_is_given():
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    app, _ = app_with(api_key=KEY)
    with TestClient(app) as client:
        assert "access-control-allow-origin" not in client.options("/v1/predict", headers=preflight).headers
    app, _ = app_with(api_key=KEY, cors_origins=["https://app.example"])
    with TestClient(app) as client:
        answer = client.options(
            "/v1/predict", headers={**preflight, "Access-Control-Request-Headers": "authorization"}
        )
        assert (
            answer.status_code == 200
            and answer.headers["access-control-allow-origin"] == "https://app.example"
        )
        other = client.options("/v1/predict", headers={**preflight, "Origin": "https://evil.example"})
        assert other.status_code == 400


def test_serve_refuses_a_public_bind_without_a_key(tmp_path, monkeypatch, capsys):
    from unipelt.cli import main

    monkeypatch.delenv("UNIPELT_API_KEY", raising=False)
    missing = tmp_path / "no-run"
    assert main(["serve", str(missing), "--host", "0.0.0.0"]) != 0
    err = capsys.readouterr().err
    assert "--host 0.0.0.0 lets other machines in" in err and "--api-key-file" in err and "--insecure" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    # with a key (from a file, or the environment) or --insecure it goes on to the run folder
    (tmp_path / "key").write_text(KEY + "\n")
    for extra, env in ((["--api-key-file", str(tmp_path / "key")], None), ([], KEY), (["--insecure"], None)):
        if env:
            monkeypatch.setenv("UNIPELT_API_KEY", env)
        assert main(["serve", str(missing), "--host", "0.0.0.0", *extra]) != 0
        assert "not a finished unipelt run" in capsys.readouterr().err
        monkeypatch.delenv("UNIPELT_API_KEY", raising=False)


def test_serve_on_an_export_folder_gives_the_runtime_hint(tmp_path, capsys):
    from unipelt.cli import main

    (tmp_path / "export.json").write_text("{}")
    assert main(["serve", str(tmp_path)]) != 0
    assert f"{tmp_path} is an ONNX export; serve it with --runtime onnx" in capsys.readouterr().err


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def self_signed(folder) -> tuple[str, str]:
    """A certificate for 127.0.0.1 signed by its own key, made here: (cert file, key file)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return str(cert_file), str(key_file)


def test_tls_round_trip_and_the_openai_client_with_right_and_wrong_keys(tmp_path):
    pytest.importorskip("cryptography")
    openai = pytest.importorskip("openai")
    import httpx
    import uvicorn

    cert, key = self_signed(tmp_path)
    app, _ = app_with(api_key=KEY)
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="error", ssl_certfile=cert, ssl_keyfile=key
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"https://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while not server.started:
            assert thread.is_alive() and time.time() < deadline
            time.sleep(0.05)
        with httpx.Client(verify=cert) as web:
            assert web.get(f"{base}/health").json()["status"] == "ok"
            answer = web.post(
                f"{base}/v1/predict",
                json={"task": "one", "inputs": ["over TLS"]},
                headers={"Authorization": f"Bearer {KEY}"},
            )
            assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] == "long"
            with pytest.raises(httpx.ConnectError):  # an unknown certificate is refused by default
                httpx.get(f"{base}/health")
            good = openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, http_client=web, max_retries=0)
            assert [m.id for m in good.models.list()] == ["one"]
            bad = openai.OpenAI(base_url=f"{base}/v1", api_key="wrong", http_client=web, max_retries=0)
            with pytest.raises(openai.AuthenticationError) as refused:
                bad.models.list()
        assert refused.value.status_code == 401 and "API key" in refused.value.message
    finally:
        server.should_exit = True
        thread.join(30)


def test_an_exception_in_a_route_is_a_500_in_its_shape_and_counted(caplog):
    app, _ = app_with()
    broken = APIRouter()

    @broken.get("/v1/broken")
    async def fails():
        raise RuntimeError("bug")

    mount(app, broken, openai_error)
    with (
        caplog.at_level(logging.ERROR, logger="unipelt.serve"),
        TestClient(app, raise_server_exceptions=False) as client,
    ):
        answer = client.get("/v1/broken", headers={"X-Request-ID": "r-500"})
        assert client.get("/health").status_code == 200  # still serving
        text = client.get("/metrics").text
    assert answer.status_code == 500 and answer.headers["x-request-id"] == "r-500"
    assert answer.json()["error"] == {
        "message": "internal error: RuntimeError (request id r-500)",
        "type": "server_error",
        "param": None,
        "code": None,
    }
    assert 'unipelt_requests_total{route="/v1/broken",status="500",task=""} 1.0' in text
    assert any("request r-500 failed: RuntimeError: bug" in r.getMessage() for r in caplog.records)
