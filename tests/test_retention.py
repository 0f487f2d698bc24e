"""Knowledge retention of causal-LM runs: the facts file, the measure, and the train / eval options."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_chat import save_tiny_chat_llm, sentiment_rows, tiny_chat_llm, write_chats
from tiny_models import batch, perturb, tiny_model

from benchmarks.retention_parts import switch_off
from unipelt import add_unipelt
from unipelt.cli import main
from unipelt.data.chat import Conversation
from unipelt.errors import DataError, UniPELTError
from unipelt.inference.generation import Sampling, generate_texts
from unipelt.running.retention import PACKAGED_FACTS, is_correct, measure_retention, read_facts
from unipelt.training import TrainConfig

PROMPTS = ["what is the capital of france", "hello how are you", "tell me about the film", "say yes or no"]


def test_answers_count_as_whole_words_ignoring_case():
    assert is_correct("The capital of France is Paris.", ["Paris"])
    assert is_correct("It is the BLUE  whale", ["blue whale"])
    assert not is_correct("Parisian food", ["Paris"])
    assert is_correct("4 legs", ["four", "4"]) and not is_correct("14 legs", ["4"])


def test_the_packaged_facts_parse(tmp_path):
    facts = read_facts(PACKAGED_FACTS)
    assert len(facts) >= 25 and len({f.prompt for f in facts}) == len(facts)
    assert facts[0].answers == ("Paris",)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q", "answer": "a"}\n{"prompt": "q2"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: expected"):
        read_facts(bad)
    with pytest.raises(DataError, match="does not exist"):
        read_facts(tmp_path / "none.jsonl")


def base_answers(model, tokenizer) -> list[str]:
    conversations = [Conversation([{"role": "user", "content": p}], "t") for p in PROMPTS]
    return generate_texts(model, tokenizer, conversations, Sampling(max_new_tokens=32))


def facts_of_the_base(path, model, tokenizer):
    """A facts file whose expected answers are the first word the base model answers (all correct for it)."""
    rows = [{"prompt": p, "answer": a.split()[0]} for p, a in zip(PROMPTS, base_answers(model, tokenizer))]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_retention_counts_what_the_run_keeps(tmp_path):
    base, tokenizer = tiny_chat_llm()
    facts = read_facts(facts_of_the_base(tmp_path / "facts.jsonl", base, tokenizer))
    model = add_unipelt(base, "lora").eval()  # LoRA's B starts at zero: the run is the base model
    result = measure_retention(model, tokenizer, facts)
    assert result == {
        "facts": 4,
        "base_correct": 4,
        "run_correct": 4,
        "kept": 4,
        "retention": 1.0,
        "lost": [],
    }
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 3.0)
    changed = base_answers(model, tokenizer)
    kept = sum(is_correct(text, f.answers) for text, f in zip(changed, facts))
    result = measure_retention(model, tokenizer, facts)
    assert result["base_correct"] == 4 and result["kept"] == kept == result["run_correct"]
    assert result["retention"] == kept / 4 and len(result["lost"]) == 4 - kept


def test_train_and_eval_report_retention_in_metrics(tmp_path, capsys):
    save_tiny_chat_llm(tmp_path / "llm")
    base, tokenizer = tiny_chat_llm()
    facts = facts_of_the_base(tmp_path / "facts.jsonl", base, tokenizer)
    write_chats(tmp_path / "train.jsonl", sentiment_rows(16))
    run = tmp_path / "run"
    common = [
        "--model",
        str(tmp_path / "llm"),
        "--train",
        str(tmp_path / "train.jsonl"),
        "--method",
        "unipelt",
    ]
    args = [*common, "--max-steps", "2", "--batch-size", "8", "--out", str(run), "--retention", str(facts)]
    assert main(["train", "--task-type", "causal-lm", *args]) == 0
    trained = json.loads((run / "metrics.json").read_text())["retention"]
    assert trained["facts"] == 4 and trained["base_correct"] == 4
    assert 0 <= trained["kept"] <= 4 and trained["retention"] == trained["kept"] / 4
    capsys.readouterr()
    assert main(["eval", str(run), "--retention", str(facts), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert {k: printed[k] for k in trained} == trained  # the same greedy answers from the saved run
    assert json.loads((run / "metrics.json").read_text())["retention"]["file"] == str(facts)
    assert main(["eval", str(run), "--retention", str(facts)]) == 0
    assert "of the 4 facts the base model answers correctly" in capsys.readouterr().out


def test_retention_needs_a_chat_run():
    with pytest.raises(UniPELTError, match="needs --task-type causal-lm"):
        TrainConfig(task="sst2", retention="facts").validate()


def test_switching_every_part_off_gives_the_base_model_back_and_one_part_does_not():
    """benchmarks.retention_parts zeroes what each part adds; all three off is the base model exactly."""
    torch.manual_seed(0)
    base = tiny_model("llama").eval()
    inputs = batch("llama")
    with torch.no_grad():
        expected = base(**inputs).logits
    outputs = {}
    for parts in ({"adapter"}, {"lora"}, {"prefix"}, {"adapter", "lora", "prefix"}):
        torch.manual_seed(0)
        model = add_unipelt(tiny_model("llama"), "unipelt").eval()
        perturb(model)
        with torch.no_grad():
            model.tasks["default"].prefix.mlp[-1].bias.add_(1.0)  # values away from zero too
        switch_off(model, parts)
        with torch.no_grad():
            outputs[frozenset(parts)] = (model(**inputs).logits - expected).abs().max().item()
    assert outputs[frozenset({"adapter", "lora", "prefix"})] < 1e-5
    assert min(v for k, v in outputs.items() if len(k) == 1) > 1e-3
