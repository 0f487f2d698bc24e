"""The OpenAI-compatible routes, driven by the official ``openai`` client against a real uvicorn server that
serves three tiny causal-LM runs (LoRA, adapter, UniPELT) on one backbone: answers equal each run generating
alone, streamed equals plain, mixed concurrent requests equal alone, OpenAI's errors, a dropped stream frees
its row."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from tiny_chat import save_tiny_chat_llm, sentiment_rows, write_chats

from unipelt.data.chat import encode_prompt, parse_conversation
from unipelt.errors import UniPELTError
from unipelt.inference.generation import ChatRun, Sampling, generate_ids, generate_texts
from unipelt.training import TrainConfig, train

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

METHODS = {"lora": "lora", "adapter": "adapter", "gated": "unipelt"}
PROMPTS = [
    "is the review positive or negative ? the film was good",
    "tell me about the movie",
    "hello",
    "is the review positive or negative ? the acting was very bad and the plot was not good",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("llm_runs")
    save_tiny_chat_llm(root / "llm")
    write_chats(root / "train.jsonl", sentiment_rows(16))
    folders = {}
    for name, method in METHODS.items():
        config = TrainConfig(
            output_dir=str(root / name),
            model=str(root / "llm"),
            method=method,
            task=None,
            task_type="causal-lm",
            train_file=str(root / "train.jsonl"),
            epochs=1,
            batch_size=8,
            lr=1e-3,
            max_length=64,
            max_new_tokens=4,
            seed=len(name),
        )
        train(config)
        folders[name] = root / name
    return folders


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, server: subprocess.Popen | None = None) -> None:
    deadline = time.time() + 300  # a busy machine can take minutes to import torch and load the runs
    while True:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if server is not None:
            assert server.poll() is None, server.stdout.read().decode()
        assert time.time() < deadline, "server did not start"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def server(runs):
    port = _port()
    specs = [f"{name}={folder}" for name, folder in runs.items()]
    command = [sys.executable, "-m", "unipelt.cli", "serve", *specs, "--port", str(port)]
    command += ["--max-running-rows", "4", "--max-step-tokens", "24", "--threads", "1"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ})
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for(f"{base}/health", process)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=60)


def _alone(folder, prompt: str, max_tokens: int) -> str:
    """What the run generates for a one-message chat when it runs alone (``unipelt generate``'s path)."""
    model, tokenizer = ChatRun(folder).load()
    conversation = parse_conversation({"prompt": prompt}, "p", False)
    return generate_texts(model, tokenizer, [conversation], Sampling(max_new_tokens=max_tokens))[0]


def test_models_lists_the_tasks_and_the_base_model(client):
    assert [m.id for m in client.models.list().data] == [*METHODS, "llm"]


def test_chat_plain_and_streamed_equal_the_run_alone(client, runs):
    prompt = PROMPTS[0]
    expected = _alone(runs["gated"], prompt, 12)
    answer = client.chat.completions.create(
        model="gated", messages=[{"role": "user", "content": prompt}], max_tokens=12, temperature=0
    )
    assert answer.choices[0].message.content.strip() == expected and expected
    assert answer.choices[0].message.role == "assistant" and answer.model == "gated"
    assert answer.choices[0].finish_reason in ("stop", "length")
    model, tokenizer = ChatRun(runs["gated"]).load()
    prompt_ids = encode_prompt(tokenizer, parse_conversation({"prompt": prompt}, "p", False))
    assert answer.usage.prompt_tokens == len(prompt_ids)
    generated = generate_ids(model, tokenizer, [list(prompt_ids)], Sampling(max_new_tokens=12))[0]
    assert answer.usage.completion_tokens == len(generated)
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    chunks = list(
        client.chat.completions.create(
            model="gated",
            messages=[{"role": "user", "content": prompt}],
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == answer.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == answer.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == answer.usage.completion_tokens


def test_the_stream_ends_with_done(server):
    body = {"model": "lora", "prompt": "hello", "max_tokens": 3, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{server}/v1/completions", json=body, timeout=30) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)


def test_concurrent_requests_of_several_tasks_equal_each_alone(client, runs, server):
    jobs = [
        (task, prompt, 4 + 5 * (i % 3))
        for i, (task, prompt) in enumerate((t, p) for p in PROMPTS for t in [*METHODS, "llm"])
    ]
    expected = []
    for task, prompt, max_tokens in jobs:
        if task == "llm":
            model, tokenizer = ChatRun(runs["lora"]).load()
            conversation = parse_conversation({"prompt": prompt}, "p", False)
            with model.disabled():
                text = generate_texts(model, tokenizer, [conversation], Sampling(max_new_tokens=max_tokens))[
                    0
                ]
            expected.append(text)
        else:
            expected.append(_alone(runs[task], prompt, max_tokens))
    start = threading.Barrier(len(jobs))

    def ask(job):
        task, prompt, max_tokens = job
        start.wait()
        answer = client.chat.completions.create(
            model=task, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0
        )
        return answer.choices[0].message.content.strip()

    with ThreadPoolExecutor(len(jobs)) as pool:
        together = list(pool.map(ask, jobs))
    assert together == expected
    assert len(set(expected)) > 4  # the tasks and prompts do answer differently
    metrics = httpx.get(f"{server}/metrics").text
    assert 'unipelt_requests_total{route="/v1/chat/completions",status="200",task="gated"}' in metrics


def test_completions_and_stop_texts(client, runs):
    model, tokenizer = ChatRun(runs["adapter"]).load()
    ids = tokenizer("the film was")["input_ids"]
    full = tokenizer.decode(
        generate_ids(model, tokenizer, [ids], Sampling(max_new_tokens=10), task=None)[0],
        skip_special_tokens=True,
    )
    answer = client.completions.create(model="adapter", prompt="the film was", max_tokens=10, temperature=0)
    assert answer.choices[0].text == full and answer.usage.prompt_tokens == len(ids)
    words = full.split()
    if len(words) >= 3:  # stop at the third generated word: the answer ends before it, finish_reason "stop"
        stopped = client.completions.create(
            model="adapter", prompt="the film was", max_tokens=10, temperature=0, stop=[" " + words[2]]
        )
        assert stopped.choices[0].text == full[: full.index(" " + words[2])]
        assert stopped.choices[0].finish_reason == "stop"


def test_seeded_sampling_repeats(client):
    def draw(seed):
        return (
            client.chat.completions.create(
                model="lora",
                messages=[{"role": "user", "content": "hello"}],
                max_tokens=10,
                temperature=1.5,
                seed=seed,
            )
            .choices[0]
            .message.content
        )

    assert draw(3) == draw(3)


def test_errors_have_openai_shape_and_status(client, server):
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert missing.value.status_code == 404 and "gated" in missing.value.message
    assert missing.value.body["code"] == "model_not_found"
    long = " ".join(["the film was very good"] * 40)  # 200 words: more than the 128-token context
    with pytest.raises(openai.BadRequestError) as too_long:
        client.chat.completions.create(model="lora", messages=[{"role": "user", "content": long}])
    assert too_long.value.status_code == 400 and "context length is 128" in too_long.value.message
    assert too_long.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model="lora", prompt="hello", max_tokens=1000)
    with pytest.raises(openai.BadRequestError) as several:
        client.chat.completions.create(model="lora", messages=[{"role": "user", "content": "hi"}], n=2)
    assert several.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError) as role:  # the tiny chat template refuses other roles
        client.chat.completions.create(model="lora", messages=[{"role": "tool", "content": "hi"}])
    assert role.value.body["param"] == "messages" and "roles tool" in role.value.message
    response = httpx.post(f"{server}/v1/chat/completions", content=b"{not json", timeout=10)
    assert response.status_code == 400 and set(response.json()["error"]) == {
        "message",
        "type",
        "param",
        "code",
    }


def test_a_client_that_goes_away_frees_its_row(runs):
    """In-process uvicorn with a slowed model (each forward sleeps 50 ms), so that a request asking for 100
    tokens is surely mid-way when its client leaves: first a stream closed after three chunks, then a plain
    request whose client times out. Each ends cancelled, well short of its 100 tokens."""
    import uvicorn

    from unipelt.cli.serve import NoEncoderTasks, assemble
    from unipelt.inference.generation_engine import GenerationEngine

    engine = GenerationEngine([str(runs["lora"])], max_rows=2, max_step_tokens=64)
    model = engine.model
    forward = model.forward

    def slow(*args, **kwargs):
        time.sleep(0.05)
        return forward(*args, **kwargs)

    def wait_until_idle() -> None:
        deadline = time.time() + 10
        while engine.scheduler.running and time.time() < deadline:
            time.sleep(0.01)

    model.forward = slow
    port = _port()
    app = assemble(NoEncoderTasks(), engine)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    messages = [{"role": "user", "content": "hello"}]
    try:
        _wait_for(f"{base}/health")
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        stream = client.chat.completions.create(
            model="lora", messages=messages, max_tokens=100, stream=True, extra_body={"ignore_eos": True}
        )
        for count, _ in enumerate(stream):
            if count == 3:
                break
        stream.close()
        wait_until_idle()
        streamed = dict(engine.scheduler.stats)
        body = {"model": "lora", "messages": messages, "max_tokens": 100, "ignore_eos": True}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{base}/v1/chat/completions", json=body, timeout=0.5)
        wait_until_idle()
        metrics = httpx.get(f"{base}/metrics").text
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        del model.forward
    assert streamed["cancelled"] == 1 and streamed["tokens"] < 100
    assert engine.scheduler.running == 0 and engine.scheduler.stats["cancelled"] == 2
    assert engine.scheduler.stats["tokens"] - streamed["tokens"] < 100
    assert "unipelt_generation_cancelled_total 2.0" in metrics


def test_runs_of_another_base_are_refused_by_name(runs, tmp_path):
    from unipelt.inference.generation_engine import GenerationEngine

    other = tmp_path / "other"
    save_tiny_chat_llm(tmp_path / "llm2", seed=1)
    import shutil

    shutil.copytree(runs["lora"], other)
    config = (
        (other / "config.json").read_text().replace(str(runs["lora"].parent / "llm"), str(tmp_path / "llm2"))
    )
    (other / "config.json").write_text(config)
    with pytest.raises(UniPELTError, match="one server shares one backbone") as refused:
        GenerationEngine([str(runs["lora"]), str(other)])
    assert "llm2" in str(refused.value)


def test_causal_lm_tasks_use_the_backbone_tensors_of_the_other_kinds(runs):
    """With classification tasks of the same base in the server, the causal LM runs on their backbone weights
    (the same tensors), and generates what the run alone does."""
    from unipelt.backbones import load_base_model
    from unipelt.inference.generation_engine import GenerationEngine

    classifier = load_base_model(str(runs["lora"].parent / "llm"), "classification", labels=["no", "yes"])
    engine = GenerationEngine([str(runs["lora"]), str(runs["gated"])], backbone=classifier)
    try:
        ours = dict(engine.model.base_model.base_model.named_parameters())
        theirs = dict(classifier.base_model.named_parameters())
        assert theirs and all(ours[name] is weight for name, weight in theirs.items())
        conversation = parse_conversation({"prompt": PROMPTS[3]}, "p", False)
        text = generate_texts(
            engine.model, engine.tokenizer, [conversation], Sampling(max_new_tokens=8), task="gated"
        )
        assert text[0] == _alone(runs["gated"], PROMPTS[3], 8)
    finally:
        engine.close()
