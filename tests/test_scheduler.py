"""Continuous batching on a tiny random LLaMA with several tasks: answers under mixed concurrent load equal each
request generated alone, rows join and leave, caps hold, cancelled rows free their slot, text streams cut stop
texts."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from tiny_chat import tiny_chat_llm
from tiny_models import perturb

from unipelt.errors import UniPELTError
from unipelt.inference.generation import Sampling, generate_ids
from unipelt.inference.row_cache import RowCache
from unipelt.inference.scheduler import Params, Scheduler, Sequence, pick_token
from unipelt.inference.text_stream import TextStream
from unipelt.model import UniPELTModel

TASKS = {"gated": "unipelt", "prefix": "prefix", "lora": "lora", "adapter": "adapter"}


@pytest.fixture(scope="module")
def served():
    base, tokenizer = tiny_chat_llm()
    model = UniPELTModel(base)
    for name, preset in TASKS.items():
        model.add_task(name, preset)
    perturb(model)
    return model.eval(), tokenizer


def _alone(model, tokenizer, prompt, task, max_tokens):
    if task is None:
        with model.disabled():
            return generate_ids(model, tokenizer, [prompt], Sampling(max_new_tokens=max_tokens))[0]
    return generate_ids(model, tokenizer, [prompt], Sampling(max_new_tokens=max_tokens), task=task)[0]


class Collect:
    """Records what the scheduler emits for each request; ``wait`` until all have ended."""

    def __init__(self, count: int) -> None:
        self.ended: dict[int, tuple[str, object]] = {}
        self.all_done = threading.Event()
        self.count = count
        self.lock = threading.Lock()
        self.running_seen: list[int] = []

    def emit_for(self, index: int):
        def emit(kind, value):
            if kind == "token":
                return
            with self.lock:
                self.ended[index] = (kind, value)
                if len(self.ended) == self.count:
                    self.all_done.set()

        return emit


def _requests(tokenizer, count, seed=0):
    generator = torch.Generator().manual_seed(seed)
    tasks = [*TASKS, None]
    requests = []
    for i in range(count):
        length = int(torch.randint(2, 40, (1,), generator=generator))
        prompt = [tokenizer.bos_token_id] + torch.randint(
            7, len(tokenizer), (length,), generator=generator
        ).tolist()
        requests.append((prompt, tasks[i % len(tasks)], 3 + 4 * (i % 4)))
    return requests


@pytest.mark.parametrize(("max_rows", "max_step_tokens"), [(6, 20), (16, 512)])
def test_greedy_answers_under_mixed_concurrent_load_equal_each_request_alone(
    served, max_rows, max_step_tokens
):
    model, tokenizer = served
    requests = _requests(tokenizer, 12)
    alone = [_alone(model, tokenizer, *r) for r in requests]
    stop = frozenset({tokenizer.eos_token_id, tokenizer.pad_token_id})
    scheduler = Scheduler(model, max_rows=max_rows, max_step_tokens=max_step_tokens)
    collect = Collect(len(requests))
    sequences = []
    try:
        for i, (prompt, task, max_tokens) in enumerate(requests):  # arrivals spread over the first steps
            sequences.append(
                scheduler.submit(Sequence(prompt, task, Params(max_tokens, stop), collect.emit_for(i)))
            )
            collect.running_seen.append(scheduler.running)
            time.sleep(0.002 * (i % 3))
        assert collect.all_done.wait(120)
    finally:
        scheduler.close()
    assert [s.generated for s in sequences] == alone
    assert all(kind == "finish" for kind, _ in collect.ended.values())
    assert max(collect.running_seen) <= max_rows
    assert scheduler.stats["tokens"] == sum(len(a) for a in alone)
    assert scheduler.stats["prompt_tokens"] == sum(len(r[0]) for r in requests)
    assert scheduler.running == 0 and not scheduler.waiting
    assert len({r[1] for r in requests}) == 5 and len({len(r[0]) for r in requests}) > 5


def test_a_step_never_feeds_more_than_the_token_budget(served):
    model, tokenizer = served
    fed: list[int] = []
    original = model.forward

    def counting(*args, **kwargs):
        fed.append(kwargs["input_ids"].numel())
        return original(*args, **kwargs)

    scheduler = Scheduler(model, max_rows=4, max_step_tokens=10)
    collect = Collect(6)
    requests = _requests(tokenizer, 6, seed=1)
    stop = frozenset({tokenizer.eos_token_id, tokenizer.pad_token_id})
    model.forward = counting  # count the tokens of every forward (instance attribute, removed below)
    try:
        sequences = [
            scheduler.submit(Sequence(p, t, Params(n, stop), collect.emit_for(i)))
            for i, (p, t, n) in enumerate(requests)
        ]
        assert collect.all_done.wait(120)
    finally:
        del model.forward
        scheduler.close()
    assert max(fed) <= 10
    assert [s.generated for s in sequences] == [_alone(model, tokenizer, *r) for r in requests]


def test_a_cancelled_request_leaves_at_the_next_step_and_the_others_go_on(served):
    model, tokenizer = served
    scheduler = Scheduler(model, max_rows=2, max_step_tokens=64)
    first_token = threading.Event()
    ended = {}

    def emit_long(kind, value):
        if kind == "token":
            first_token.set()
        else:
            ended["long"] = value

    collect = Collect(1)
    prompt = [1, 8, 9, 10]
    try:
        long = scheduler.submit(Sequence(prompt, "lora", Params(10_000), emit_long))
        assert first_token.wait(30)
        scheduler.cancel(long)
        short = scheduler.submit(Sequence(prompt, "gated", Params(5), collect.emit_for(0)))
        assert collect.all_done.wait(30)
        deadline = time.time() + 10
        while scheduler.running and time.time() < deadline:
            time.sleep(0.01)
    finally:
        scheduler.close()
    assert ended["long"] == "cancelled" and len(long.generated) < 10_000
    assert scheduler.stats["cancelled"] == 1 and scheduler.running == 0
    assert short.generated == _alone(model, tokenizer, prompt, "gated", 5)


def test_sampling_is_reproducible_with_a_seed_and_top_p_keeps_the_head(served):
    model, tokenizer = served
    scheduler = Scheduler(model, max_rows=4, max_step_tokens=64)
    collect = Collect(3)
    prompt = [1, 20, 21, 22]
    try:
        runs = [
            scheduler.submit(
                Sequence(prompt, "prefix", Params(12, temperature=1.5, seed=seed), collect.emit_for(i))
            )
            for i, seed in enumerate([7, 7, 8])
        ]
        assert collect.all_done.wait(60)
    finally:
        scheduler.close()
    assert runs[0].generated == runs[1].generated != runs[2].generated
    logits = torch.tensor([0.0, 3.0, 2.9, -5.0])
    params = Params(1, temperature=1.0, top_p=0.5)
    drawn = {pick_token(logits, params, torch.Generator().manual_seed(s)) for s in range(50)}
    assert drawn == {1}  # the top token alone holds more than half of the mass
    assert {
        pick_token(logits, Params(1, temperature=1.0, top_p=0.9), torch.Generator().manual_seed(s))
        for s in range(50)
    } == {1, 2}


def test_row_cache_aligns_rows_on_the_right_and_cuts_unused_columns():
    from transformers import DynamicCache

    def prefilled(length, value):
        cache = DynamicCache()
        keys = torch.full((1, 2, length, 3), float(value))
        cache.update(keys, keys.clone(), 0)
        return cache

    rows = RowCache()
    rows.add(prefilled(2, 1), 2)
    rows.add(prefilled(5, 2), 5)
    rows.add(prefilled(3, 3), 3)
    assert rows.mask.tolist() == [[0, 0, 0, 1, 1], [1, 1, 1, 1, 1], [0, 0, 1, 1, 1]]
    keys = rows.cache.layers[0].keys
    assert keys.shape == (3, 2, 5, 3) and keys[0, 0, :, 0].tolist() == [0, 0, 0, 1, 1]
    rows.keep([2, 0])  # the longest row leaves: two columns are no longer used by anyone
    assert rows.mask.tolist() == [[1, 1, 1], [0, 1, 1]]
    assert rows.cache.layers[0].keys[:, 0, :, 0].tolist() == [[3, 3, 3], [0, 1, 1]]
    rows.keep([])
    assert rows.rows == 0 and rows.cache is None


def test_text_stream_holds_back_a_possible_stop_and_cuts_at_it():
    _, tokenizer = tiny_chat_llm()
    ids = tokenizer("the film was very good and bad", add_special_tokens=False)["input_ids"]
    stream = TextStream(tokenizer, ["very good", "awful"])
    pieces, stopped = [], False
    for token in ids:
        piece, stopped = stream.push(token)
        pieces.append(piece)
        if stopped:
            break
    assert stopped and "".join(pieces) == "the film was "
    plain = TextStream(tokenizer)
    assert "".join(plain.push(t)[0] for t in ids) + plain.finish() == "the film was very good and bad"


def test_caps_are_checked():
    model, _ = tiny_chat_llm()
    with pytest.raises(UniPELTError, match="max-step-tokens"):
        Scheduler(model, max_rows=8, max_step_tokens=8)
