"""A tiny random LLaMA with a word-level tokenizer and a chat template, saved as a model folder (no network).

The template is ChatML-like and rejects roles other than system/user/assistant, so tests can check both the
response-only labels and the one-line error for a role the template refuses.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers as tf

SPECIAL = ["<pad>", "<s>", "</s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>"]
WORDS = [
    "is",
    "the",
    "review",
    "positive",
    "or",
    "negative",
    "good",
    "bad",
    "great",
    "awful",
    "film",
    "movie",
    "plot",
    "acting",
    "a",
    "an",
    "it",
    "this",
    "was",
    "very",
    "not",
    "what",
    "capital",
    "of",
    "france",
    "paris",
    "hello",
    "hi",
    "how",
    "are",
    "you",
    "fine",
    "thanks",
    "say",
    "yes",
    "no",
    "one",
    "two",
    "three",
    "four",
    "five",
    "and",
    "question",
    "answer",
    "please",
    "tell",
    "me",
    "about",
]
TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + m['role']) }}{% endif %}"
    "<|{{ m['role'] }}|> {{ m['content'] }} </s> "
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def tiny_chat_tokenizer() -> tf.PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {token: i for i, token in enumerate(SPECIAL + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = tf.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=SPECIAL[4:],
    )
    tokenizer.chat_template = TEMPLATE
    return tokenizer


def tiny_chat_llm(seed: int = 0) -> tuple[torch.nn.Module, tf.PreTrainedTokenizerFast]:
    """(LlamaForCausalLM in eval mode, tokenizer): 2 layers, hidden 32, GQA with 2 KV heads."""
    tokenizer = tiny_chat_tokenizer()
    torch.manual_seed(seed)
    config = tf.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=37,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return tf.LlamaForCausalLM(config).eval(), tokenizer


def save_tiny_chat_llm(folder: Path, seed: int = 0) -> Path:
    model, tokenizer = tiny_chat_llm(seed)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_chats(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def sentiment_rows(count: int) -> list[dict]:
    """Prompt/response rows of a toy sentiment task whose answers are one word (answer choices)."""
    good = ["good", "great", "very good"]
    bad = ["bad", "awful", "not good"]
    rows = []
    for i in range(count):
        positive = i % 2 == 0
        word = (good if positive else bad)[i % 3]
        rows.append(
            {
                "prompt": f"is the review positive or negative ? the film was {word}",
                "response": "positive" if positive else "negative",
            }
        )
    return rows
