"""Chat data for causal-LM tuning: response-only labels, packing, collation, and one-line errors for bad input."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from tiny_chat import tiny_chat_llm, tiny_chat_tokenizer, write_chats

from unipelt.data.chat import (
    IGNORE,
    ChatCollator,
    Conversation,
    choice_of,
    detect_answer_choices,
    encode_conversation,
    encode_prompt,
    pack,
    parse_conversation,
    read_chat_file,
    tokenize_conversations,
)
from unipelt.errors import DataError


def _learned(tokenizer, ids, labels):
    return tokenizer.convert_ids_to_tokens([i for i, label in zip(ids, labels) if label != IGNORE])


def test_labels_cover_the_assistant_turns_only():
    tokenizer = tiny_chat_tokenizer()
    messages = [
        {"role": "system", "content": "say yes or no"},
        {"role": "user", "content": "is it good"},
        {"role": "assistant", "content": "yes"},
        {"role": "user", "content": "is it bad"},
        {"role": "assistant", "content": "no it is good"},
    ]
    ids, labels = encode_conversation(tokenizer, Conversation(messages, "x:1"))
    assert len(ids) == len(labels)
    # each answer and its end-of-turn token are learned, nothing else (system, user, role markers)
    assert _learned(tokenizer, ids, labels) == ["yes", "</s>", "no", "it", "is", "good", "</s>"]
    assert labels[ids.index(tokenizer.convert_tokens_to_ids("<|system|>"))] == IGNORE
    # the ids are the template's text, and the prompt part is exactly what generation is given
    whole = tokenizer.apply_chat_template(messages, tokenize=False)
    assert ids == tokenizer(whole, add_special_tokens=False)["input_ids"]
    prompt = encode_prompt(tokenizer, Conversation(messages, "x:1"))
    first_answer = next(i for i, label in enumerate(labels) if label != IGNORE)
    assert prompt[:first_answer] == ids[:first_answer]


def test_causal_loss_is_the_mean_over_answer_tokens():
    model, tokenizer = tiny_chat_llm()
    conversation = parse_conversation({"prompt": "is the film good", "response": "yes it is"}, "x:1", True)
    ids, labels = encode_conversation(tokenizer, conversation)
    input_ids, label_tensor = torch.tensor([ids]), torch.tensor([labels])
    with torch.no_grad():
        out = model(input_ids=input_ids, labels=label_tensor)
        logits = model(input_ids=input_ids).logits[0, :-1]
    targets = label_tensor[0, 1:]
    keep = targets != IGNORE
    assert int(keep.sum()) == 4  # "yes it is </s>"
    expected = torch.nn.functional.cross_entropy(logits[keep], targets[keep])
    torch.testing.assert_close(out.loss, expected)


def test_collator_pads_right_with_ignored_labels():
    rows = [{"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    batch = ChatCollator(pad_token_id=0)(rows)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]


def test_packed_conversations_do_not_see_each_other():
    model, tokenizer = tiny_chat_llm()
    rows = [{"prompt": "hello", "response": "hi"}, {"prompt": "how are you", "response": "fine thanks"}]
    conversations = [parse_conversation(r, f"x:{i}", True) for i, r in enumerate(rows)]
    encoded = [encode_conversation(tokenizer, c) for c in conversations]
    packed = pack([e[0] for e in encoded], [e[1] for e in encoded], max_length=64)
    assert len(packed["input_ids"]) == 1
    assert packed["position_ids"][0] == list(range(len(encoded[0][0]))) + list(range(len(encoded[1][0])))
    batch = ChatCollator(tokenizer.pad_token_id)(
        [{k: packed[k][0] for k in packed}, {"input_ids": [1, 2], "labels": [1, 2], "position_ids": [0, 1]}]
    )
    assert "attention_mask" not in batch
    with torch.no_grad():
        together = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
        ).logits
        second = model(input_ids=torch.tensor([encoded[1][0]])).logits
    n = len(encoded[0][0])
    torch.testing.assert_close(together[0, n : n + len(encoded[1][0])], second[0], atol=1e-5, rtol=1e-4)
    # packing into rows no longer than max_length, whole conversations only
    small = pack([e[0] for e in encoded], [e[1] for e in encoded], max_length=len(encoded[0][0]) + 1)
    assert [len(r) for r in small["input_ids"]] == [len(encoded[0][0]), len(encoded[1][0])]


def test_too_long_prompt_is_cut_from_the_left_with_a_warning(tmp_path, caplog):
    tokenizer = tiny_chat_tokenizer()
    long_prompt = " ".join(["the film"] * 30)
    path = write_chats(tmp_path / "long.jsonl", [{"prompt": long_prompt, "response": "good film"}])
    conversations = read_chat_file(path)
    with caplog.at_level(logging.WARNING):
        dataset = tokenize_conversations(conversations, tokenizer, max_length=20)
    assert "cut from the left" in caplog.text and "1 of 1" in caplog.text
    ids, labels = dataset[0]["input_ids"], dataset[0]["labels"]
    assert len(ids) == 20
    assert _learned(tokenizer, ids, labels) == ["good", "film", "</s>"]  # the answer is kept whole


def test_answer_longer_than_the_context_is_refused(tmp_path):
    tokenizer = tiny_chat_tokenizer()
    path = write_chats(tmp_path / "a.jsonl", [{"prompt": "hi", "response": " ".join(["good"] * 30)}])
    with pytest.raises(DataError, match=r"a\.jsonl:1: the answer alone is 31 tokens.*--max-length 20"):
        tokenize_conversations(read_chat_file(path), tokenizer, max_length=20)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            '{"text": "hi"}',
            r"bad\.jsonl:2: a line needs 'prompt' and 'response', or 'messages' \(it has: text\)",
        ),
        ('{"prompt": "hi"}', r"bad\.jsonl:2: no answer to learn"),
        ("{not json", r"bad\.jsonl:2: not valid JSON"),
        ('["a"]', r"bad\.jsonl:2: expected a JSON object"),
        ('{"messages": [{"role": "user"}]}', r"bad\.jsonl:2: the 'user' message has no string 'content'"),
        ('{"messages": []}', r"bad\.jsonl:2: 'messages' must be a non-empty list"),
        ('{"prompt": 3, "response": "x"}', r"bad\.jsonl:2: 'prompt' must be a string"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, line, message):
    good = json.dumps({"prompt": "hi", "response": "hello"})
    path = tmp_path / "bad.jsonl"
    path.write_text(good + "\n" + line + "\n")
    with pytest.raises(DataError, match=message):
        read_chat_file(path)


def test_empty_missing_file_and_rejected_role(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match=r"empty\.jsonl has no conversations"):
        read_chat_file(empty)
    with pytest.raises(DataError, match=r"nothere\.jsonl does not exist"):
        read_chat_file(tmp_path / "nothere.jsonl")
    path = write_chats(
        tmp_path / "roles.jsonl",
        [
            {"prompt": "hi", "response": "hello"},
            {"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        ],
    )
    with pytest.raises(
        DataError, match=r"roles\.jsonl:2: the chat template rejects this conversation.*robot"
    ):
        tokenize_conversations(read_chat_file(path), tiny_chat_tokenizer(), max_length=64)


def test_tokenizer_without_template_is_refused(tmp_path):
    tokenizer = tiny_chat_tokenizer()
    tokenizer.chat_template = None
    path = write_chats(tmp_path / "a.jsonl", [{"prompt": "hi", "response": "hello"}])
    with pytest.raises(DataError, match="no chat template"):
        tokenize_conversations(read_chat_file(path), tokenizer, max_length=64)


def test_answer_choices_detection_and_matching():
    def conversations(answers):
        return [Conversation([{"role": "assistant", "content": a}], f"x:{i}") for i, a in enumerate(answers)]

    assert detect_answer_choices(conversations(["Positive", "negative.", "positive", "negative"])) == [
        "negative",
        "positive",
    ]
    assert detect_answer_choices(conversations(["yes", "no", "maybe"])) is None  # seen once each
    assert detect_answer_choices(conversations(["a long free text answer here"] * 3)) is None
    choices = ["negative", "positive"]
    assert choice_of("Positive!", choices) == "positive"
    assert choice_of("The sentiment of this review is negative.", choices) == "negative"
    assert choice_of("neutral", choices) is None
