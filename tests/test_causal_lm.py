"""Instruction tuning and generation on a tiny random LLaMA: trainable weights only, saved run == in-memory model,
cached == uncached generation with the trained modules, the train and generate commands."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_chat import save_tiny_chat_llm, sentiment_rows, tiny_chat_llm, write_chats
from tiny_models import perturb

from unipelt.cli import main
from unipelt.data.chat import ChatCollator, parse_conversation, tokenize_conversations
from unipelt.inference.generation import ChatRun, Sampling, generate_ids, generate_texts
from unipelt.model import UniPELTModel
from unipelt.training import TrainConfig, train


def _conversations(count: int):
    return [parse_conversation(r, f"x:{i}", True) for i, r in enumerate(sentiment_rows(count))]


@pytest.mark.parametrize(
    "preset", ["unipelt", "unipelt-router", "lora", "prefix", "adapter", "ia3", "bitfit"]
)
def test_one_step_changes_only_trainable_weights(preset):
    base, tokenizer = tiny_chat_llm()
    model = UniPELTModel(base, preset)
    assert model.tasks["default"].kind == "causal-lm"
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert frozen and trainable
    batch = ChatCollator(tokenizer.pad_token_id)(
        list(tokenize_conversations(_conversations(4), tokenizer, 64))
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    loss = model(**batch).loss
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            assert torch.equal(parameter, frozen[name]), name
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, trainable[n])]
    assert changed  # the step moved the added modules


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    base, tokenizer = tiny_chat_llm()
    model = UniPELTModel(base, "unipelt")
    perturb(model)
    batch = ChatCollator(tokenizer.pad_token_id)(
        list(tokenize_conversations(_conversations(3), tokenizer, 64))
    )
    model.train()
    results = []
    for checkpointing in (False, True):
        if checkpointing:
            model.gradient_checkpointing_enable({"use_reentrant": False})
        model.zero_grad()
        loss = model(**batch, use_cache=False).loss
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]))
    torch.testing.assert_close(results[0][0], results[1][0])
    for plain, recomputed in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(plain, recomputed)


@pytest.mark.parametrize("preset", ["unipelt", "prefix", "adapter"])
def test_cached_generation_equals_uncached_with_trained_modules(preset):
    base, tokenizer = tiny_chat_llm()
    model = UniPELTModel(base, preset).eval()
    perturb(model)
    prompts = [tokenizer("<|user|> hello </s> <|assistant|>")["input_ids"], [1, 7, 8, 9, 10, 11, 12, 13, 6]]
    kwargs = {"max_new_tokens": 8, "min_new_tokens": 8}
    cached = generate_ids(model, tokenizer, prompts, Sampling(max_new_tokens=8))
    pad = tokenizer.pad_token_id
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = (torch.arange(width)[None, :] >= torch.tensor([[width - len(p)] for p in prompts])).long()
    with torch.no_grad():
        with_cache = model.generate(
            input_ids=ids, attention_mask=mask, use_cache=True, do_sample=False, **kwargs
        )
        without = model.generate(
            input_ids=ids, attention_mask=mask, use_cache=False, do_sample=False, **kwargs
        )
        plain = generate_ids(model, tokenizer, prompts, Sampling(max_new_tokens=8), batch_size=1)
    assert torch.equal(with_cache, without)
    assert cached == plain  # a left-padded batch continues each prompt as it would alone
    with model.disabled():
        untouched = generate_ids(model, tokenizer, prompts, Sampling(max_new_tokens=8))
    assert untouched != cached  # the trained modules do change what is generated


@pytest.mark.parametrize("preset", ["unipelt", "prefix"])
def test_a_cached_decoding_step_gives_the_logits_of_the_whole_sequence(preset):
    """A decoding step has one query per row, where a per-token prefix gate takes the plain (unwidened) path:
    its logits must equal those of the last position of the uncached forward over the whole sequence."""
    base, tokenizer = tiny_chat_llm()
    model = UniPELTModel(base, preset).eval()
    perturb(model)
    ids = torch.tensor([[1, 7, 8, 9, 10, 11, 12, 13], [1, 14, 15, 16, 17, 18, 19, 20]])
    with torch.no_grad():
        whole = model(input_ids=ids, use_cache=False).logits[:, -1]
        first = model(input_ids=ids[:, :-1], use_cache=True)
        step = model(input_ids=ids[:, -1:], past_key_values=first.past_key_values, use_cache=True)
        with model.disabled():
            base_logits = model(input_ids=ids, use_cache=False).logits[:, -1]
    torch.testing.assert_close(step.logits[:, -1], whole, atol=1e-5, rtol=1e-5)
    assert (whole - base_logits).abs().max() > 1e-3  # the modules (prefix included) do act


def _train_tiny(tmp_path, method="unipelt", **overrides):
    save_tiny_chat_llm(tmp_path / "llm")
    write_chats(tmp_path / "train.jsonl", sentiment_rows(24))
    write_chats(tmp_path / "test.jsonl", sentiment_rows(6))
    config = TrainConfig(
        output_dir=str(tmp_path / "run"),
        model=str(tmp_path / "llm"),
        method=method,
        task=None,
        task_type="causal-lm",
        train_file=str(tmp_path / "train.jsonl"),
        test_file=str(tmp_path / "test.jsonl"),
        epochs=1,
        batch_size=8,
        lr=1e-2,
        max_length=64,
        max_new_tokens=4,
        **overrides,
    )
    return config


def test_saved_run_generates_what_the_trained_model_generated(tmp_path):
    from transformers import TrainerCallback

    captured = {}

    class Keep(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kwargs):
            captured["model"] = model

    config = _train_tiny(tmp_path)
    result = train(config, callbacks=[Keep()])
    assert result["metric"] == "accuracy" and result["answer_choices"] == ["negative", "positive"]
    assert {"loss", "perplexity", "accuracy", "exact_match", "no_choice"} <= set(result["test"])
    assert result["test"]["perplexity"] == pytest.approx(torch.tensor(result["test"]["loss"]).exp().item())
    in_memory = captured["model"].eval()
    in_memory.base_model.config.use_cache = True
    tokenizer = tiny_chat_llm()[1]
    test = [parse_conversation(r, f"t:{i}", True) for i, r in enumerate(sentiment_rows(6))]
    expected = generate_texts(in_memory, tokenizer, test, Sampling(max_new_tokens=6))
    run = ChatRun(tmp_path / "run")
    model, saved_tokenizer = run.load()
    assert generate_texts(model, saved_tokenizer, test, Sampling(max_new_tokens=6)) == expected
    assert run.answer_choices == ["negative", "positive"]
    for name, parameter in in_memory.named_parameters():
        if parameter.requires_grad:
            torch.testing.assert_close(parameter, model.get_parameter(name), msg=name)


def test_full_fine_tuning_with_packing_and_checkpointing(tmp_path):
    config = _train_tiny(tmp_path, "ft", packing=True, gradient_checkpointing=True)
    result = train(config)
    assert result["steps"] >= 1 and result["valid"]["loss"] > 0
    assert result["parameters"]["total_with_prefix_mlp"] == sum(
        p.numel() for p in tiny_chat_llm()[0].parameters()
    )
    model, _ = ChatRun(tmp_path / "run").load()  # the whole model was saved
    assert type(model).__name__ == "LlamaForCausalLM"


def test_train_and_generate_commands(tmp_path, capsys):
    config = _train_tiny(tmp_path)
    code = main(  # no --task-type: the chat file is detected (task_type auto)
        [
            "train",
            "--model",
            config.model,
            "--train",
            config.train_file,
            "--test",
            config.test_file,
            "--method",
            "lora",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--answer-choices",
            "positive,negative",
            "--out",
            config.output_dir,
        ]
    )
    assert code == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["answer_choices"] == ["positive", "negative"] and metrics["task_type"] == "causal-lm"
    capsys.readouterr()
    assert main(["generate", config.output_dir, "--input", config.test_file, "--max-new-tokens", "3"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 6 and all("generated" in r and "reference" in r for r in lines)
    assert main(["generate", config.output_dir, "--prompt", "is the film good", "--max-new-tokens", "3"]) == 0
    streamed = capsys.readouterr().out
    model, tokenizer = ChatRun(tmp_path / "run").load()
    conversation = parse_conversation({"prompt": "is the film good"}, "p", False)
    expected = generate_texts(model, tokenizer, [conversation], Sampling(max_new_tokens=3))[0]
    assert streamed.split() == expected.split()
    assert main(["generate", config.output_dir, "--prompt", "hi", "--task", "nope"]) == 2
    assert "has no task 'nope'" in capsys.readouterr().err
    # `unipelt eval` scores the run on its test chats exactly as training did
    assert main(["eval", config.output_dir, "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["examples"] == 6
    for name, value in metrics["test"].items():
        assert scores[name] == pytest.approx(value, abs=1e-6), name
    assert main(["eval", config.output_dir, "--data", config.train_file, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["examples"] == 24
    assert main(["eval", config.output_dir, "--task", "rte"]) == 2
    assert "causal-lm run" in capsys.readouterr().err


def test_answer_loss_is_the_models_own_loss_over_answer_tokens():
    from unipelt.running.chat_scoring import answer_loss

    base, tokenizer = tiny_chat_llm()
    base.eval()
    chats = _conversations(5)
    rows = list(tokenize_conversations(chats, tokenizer, 64))
    total = count = 0.0
    with torch.no_grad():
        for row in rows:  # one row at a time: the model's mean equals the token mean of that row
            batch = ChatCollator(tokenizer.pad_token_id)([row])
            answer_tokens = int((batch["labels"][:, 1:] != -100).sum())
            total += base(**batch).loss.item() * answer_tokens
            count += answer_tokens
    for batch_size in (1, 2, 5):  # token-weighted: the batching does not change it
        assert answer_loss(base, tokenizer, chats, 64, batch_size) == pytest.approx(total / count, rel=1e-5)


def test_chat_files_are_detected(tmp_path):
    from unipelt.data.chat import is_chat_file

    write_chats(tmp_path / "chats.jsonl", sentiment_rows(2))
    (tmp_path / "messages.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    (tmp_path / "table.jsonl").write_text('{"text": "good film", "label": "pos"}\n')
    (tmp_path / "prompt_only.jsonl").write_text('{"prompt": "a text column named prompt", "label": 1}\n')
    (tmp_path / "tokens.jsonl").write_text('{"tokens": ["Paris"], "tags": ["B-LOC"]}\n')
    (tmp_path / "table.csv").write_text("prompt,response\na,b\n")
    found = {p.name: is_chat_file(p) for p in sorted(tmp_path.iterdir())}
    assert found == {
        "chats.jsonl": True,
        "messages.jsonl": True,
        "prompt_only.jsonl": False,
        "table.csv": False,
        "table.jsonl": False,
        "tokens.jsonl": False,
    }
