"""Instruction data for causal-LM tuning: JSON-lines conversations, the chat template, response-only labels.

Each line of a file is one conversation, either ``{"prompt": ..., "response": ...}`` (an optional ``"system"``
too) or ``{"messages": [{"role": ..., "content": ...}, ...]}``. The tokenizer's own chat template renders it, so
training sees exactly the text that :mod:`unipelt.inference.generation` later gives the model to continue.

Only the assistant turns are learned: the conversation is rendered turn by turn, the text each assistant turn
adds (its content and the template's end-of-turn marker, so the model learns to stop) gets labels, and every
other token gets -100. Pieces are tokenised one by one, so the prompt part of a training row has exactly the
ids that generation will see for the same prompt.

Too long a conversation loses tokens from the left (the start of the prompt) with one warning per file; a
response that alone does not fit in ``max_length`` is refused. Every problem with a line is one
:class:`~unipelt.errors.DataError` naming the file and line.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unipelt.data.files import json_lines, read_source
from unipelt.errors import DataError

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger(__name__)

IGNORE = -100
"""Label of a token that is not learned (prompt, template, padding), as the Transformers losses expect."""


@dataclass
class Conversation:
    """One line of a chat file: the messages, and where it came from (``file:line``) for error messages."""

    messages: list[dict[str, str]]
    source: str

    @property
    def response(self) -> str | None:
        """The last assistant message (the reference answer), or None when the conversation ends elsewhere."""
        last = self.messages[-1] if self.messages else None
        return last["content"] if last is not None and last["role"] == "assistant" else None

    @property
    def prompt_messages(self) -> list[dict[str, str]]:
        """The conversation without its final answer: what a model is asked to continue."""
        return self.messages[:-1] if self.response is not None else list(self.messages)


def _message(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not isinstance(value.get("role"), str):
        raise DataError(f"{where}: each message must be an object with a string 'role' and 'content'")
    if not isinstance(value.get("content"), str):
        raise DataError(f"{where}: the {value['role']!r} message has no string 'content'")
    return {"role": value["role"], "content": value["content"]}


def parse_conversation(record: Any, where: str, need_response: bool) -> Conversation:
    """A :class:`Conversation` from one JSON value (``where`` is ``file:line`` for errors)."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object with 'prompt'/'response' or 'messages'")
    if "messages" in record:
        raw = record["messages"]
        if not isinstance(raw, list) or not raw:
            raise DataError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
        messages = [_message(m, where) for m in raw]
    elif "prompt" in record:
        if not isinstance(record["prompt"], str):
            raise DataError(f"{where}: 'prompt' must be a string")
        messages = []
        if isinstance(record.get("system"), str):
            messages.append({"role": "system", "content": record["system"]})
        messages.append({"role": "user", "content": record["prompt"]})
        if "response" in record:
            if not isinstance(record["response"], str):
                raise DataError(f"{where}: 'response' must be a string")
            messages.append({"role": "assistant", "content": record["response"]})
    else:
        keys = ", ".join(sorted(record)) or "none"
        raise DataError(f"{where}: a line needs 'prompt' and 'response', or 'messages' (it has: {keys})")
    conversation = Conversation(messages, where)
    if need_response and conversation.response is None:
        raise DataError(
            f"{where}: no answer to learn: give 'response', or end 'messages' with an 'assistant' message"
        )
    return conversation


def read_chat_file(
    path: str | Path, need_response: bool = True, encoding: str = "utf-8"
) -> list[Conversation]:
    """All conversations of a JSON-lines file, or of standard input for ``-`` (blank lines skipped), decoded
    like every other input; ``need_response`` for training data."""
    if str(path) != "-" and not Path(path).exists():
        raise DataError(f"chat file {path} does not exist")
    path, text = read_source(path, encoding)
    conversations = []
    for where, record in json_lines(text, path):
        conversations.append(parse_conversation(record, where, need_response))
    if not conversations:
        raise DataError(f"{path} has no conversations (the file is empty)")
    return conversations


def is_chat_file(path: str | Path) -> bool:
    """Whether a data file holds chats (for ``task_type=auto``): a JSON-lines file whose first record has
    ``messages``, or ``prompt`` together with ``response``. A table row never has both of those keys."""
    from unipelt.data.files import JSONL_SUFFIXES, first_jsonl_record

    if Path(path).suffix.lower() not in JSONL_SUFFIXES:
        return False
    record = first_jsonl_record(path)
    return record is not None and ("messages" in record or {"prompt", "response"} <= record.keys())


def check_chat_template(tokenizer: Any) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            "this tokenizer has no chat template, so prompts cannot be formatted; use an instruction-tuned model "
            "(e.g. --model smollm2) or set tokenizer.chat_template"
        )


def render(tokenizer: Any, messages: list[dict[str, str]], where: str, generation_prompt: bool) -> str:
    """The chat template's text for ``messages``; a conversation the template rejects is a DataError."""
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )
    except TemplateError as error:
        roles = ", ".join(m["role"] for m in messages)
        raise DataError(
            f"{where}: the chat template rejects this conversation (roles {roles}): {error}"
        ) from error


def _ids(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def encode_prompt(tokenizer: Any, conversation: Conversation) -> list[int]:
    """Token ids of the prompt with the template's generation prompt: what the model continues."""
    return _ids(tokenizer, render(tokenizer, conversation.prompt_messages, conversation.source, True))


def encode_conversation(tokenizer: Any, conversation: Conversation) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of a whole conversation, labels set on the assistant turns only."""
    messages, where = conversation.messages, conversation.source
    pieces: list[tuple[str, bool]] = []
    done = ""
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:index], where, True)
        after = render(tokenizer, messages[: index + 1], where, False)
        if not before.startswith(done) or not after.startswith(before):
            raise DataError(
                f"{where}: the chat template renders the conversation differently turn by turn, so the answer "
                "tokens cannot be told from the prompt"
            )
        pieces += [(before[len(done) :], False), (after[len(before) :], True)]
        done = after
    whole = render(tokenizer, messages, where, False)
    if whole.startswith(done) and len(whole) > len(done):
        pieces.append((whole[len(done) :], False))
    input_ids: list[int] = []
    labels: list[int] = []
    for text, learned in pieces:
        ids = _ids(tokenizer, text)
        input_ids += ids
        labels += ids if learned else [IGNORE] * len(ids)
    return input_ids, labels


def truncate_left(
    ids: list[int], labels: list[int] | None, max_length: int, where: str
) -> tuple[list[int], list[int] | None]:
    """Keep the last ``max_length`` tokens; refuse when that would cut into the final answer."""
    if len(ids) <= max_length:
        return ids, labels
    kept_from = len(ids) - max_length
    if labels is None:
        return ids[kept_from:], None
    answer_start = len(labels)  # start of the final run of learned tokens: the last answer
    while answer_start > 0 and labels[answer_start - 1] == IGNORE:
        answer_start -= 1
    while answer_start > 0 and labels[answer_start - 1] != IGNORE:
        answer_start -= 1
    if kept_from > answer_start:
        raise DataError(
            f"{where}: the answer alone is {len(ids) - answer_start} tokens, more than --max-length "
            f"{max_length}; raise --max-length or shorten it"
        )
    return ids[kept_from:], labels[kept_from:]


def tokenize_conversations(
    conversations: Sequence[Conversation], tokenizer: Any, max_length: int, packing: bool = False
) -> datasets.Dataset:
    """Training rows (input_ids, labels; ``position_ids`` too when packing) for the causal-LM Trainer.

    Nothing is padded here; :class:`ChatCollator` pads each batch. Too-long rows lose their prompt's start (one
    warning per call says how many).
    """
    import datasets

    check_chat_template(tokenizer)
    rows_ids, rows_labels, cut = [], [], 0
    for conversation in conversations:
        ids, labels = encode_conversation(tokenizer, conversation)
        if len(ids) > max_length:
            cut += 1
            ids, labels = truncate_left(ids, labels, max_length, conversation.source)
        rows_ids.append(ids)
        rows_labels.append(labels)
    if cut:
        source = conversations[0].source.rsplit(":", 1)[0]
        logger.warning(
            "%d of %d conversations in %s are longer than --max-length %d: their prompts were cut from the left",
            cut,
            len(conversations),
            source,
            max_length,
        )
    if packing:
        return datasets.Dataset.from_dict(pack(rows_ids, rows_labels, max_length))
    return datasets.Dataset.from_dict({"input_ids": rows_ids, "labels": rows_labels})


def pack(rows_ids: list[list[int]], rows_labels: list[list[int]], max_length: int) -> dict[str, list]:
    """Concatenate whole conversations into rows of at most ``max_length`` tokens (first fit, in order).

    Each conversation's ``position_ids`` restart at 0. Given position ids and no attention mask, Transformers'
    decoders build a block-diagonal causal mask from them, so packed conversations do not see each other
    (the sdpa and eager attention of LLaMA-family models; gates that pool over a row see the whole row).
    """
    packed: dict[str, list] = {"input_ids": [], "labels": [], "position_ids": []}
    current: dict[str, list] = {"input_ids": [], "labels": [], "position_ids": []}
    for ids, labels in zip(rows_ids, rows_labels):
        if current["input_ids"] and len(current["input_ids"]) + len(ids) > max_length:
            for key in packed:
                packed[key].append(current[key])
            current = {"input_ids": [], "labels": [], "position_ids": []}
        current["input_ids"] += ids
        current["labels"] += labels
        current["position_ids"] += list(range(len(ids)))
    if current["input_ids"]:
        for key in packed:
            packed[key].append(current[key])
    return packed


class ChatCollator:
    """Pads a batch to its longest row: pad ids, attention mask 0 and label -100 on the padding (right side).

    Packed rows (with ``position_ids``) get no attention mask: their padding continues the position ids from 0
    as one more block of its own, which the block-diagonal mask keeps apart and the -100 labels leave unlearned.
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(row["input_ids"]) for row in rows)
        packed = "position_ids" in rows[0]
        batch: dict[str, list] = {"input_ids": [], "labels": []}
        batch["position_ids" if packed else "attention_mask"] = []
        for row in rows:
            n = len(row["input_ids"])
            gap = width - n
            batch["input_ids"].append(list(row["input_ids"]) + [self.pad_token_id] * gap)
            batch["labels"].append(list(row["labels"]) + [IGNORE] * gap)
            if packed:
                batch["position_ids"].append(list(row["position_ids"]) + list(range(gap)))
            else:
                batch["attention_mask"].append([1] * n + [0] * gap)
        return {key: torch.tensor(value, dtype=torch.long) for key, value in batch.items()}


def normalise_answer(text: str) -> str:
    """Lower case, single spaces, no surrounding punctuation: how generated answers are compared."""
    return re.sub(r"\s+", " ", text).strip().strip(".!?,;:'\"").strip().lower()


def detect_answer_choices(conversations: Sequence[Conversation], most: int = 20) -> list[str] | None:
    """The answer set when the answers are short labels (at most ``most`` distinct answers of at most three
    words, each seen at least twice), else None."""
    answers = [normalise_answer(c.response or "") for c in conversations]
    distinct = sorted(set(answers))
    if not answers or len(distinct) > most or any(not a or len(a.split()) > 3 for a in distinct):
        return None
    if any(answers.count(a) < 2 for a in distinct):
        return None
    return distinct


def choice_of(generated: str, choices: Sequence[str]) -> str | None:
    """The choice a generated answer names: the one it starts with (longest first), else the one that occurs
    first as a whole word ("The sentiment is positive." names positive), else None."""
    text = normalise_answer(generated)
    for choice in sorted(choices, key=len, reverse=True):
        if text.startswith(choice):
            return choice
    found = [(m.start(), c) for c in choices if (m := re.search(rf"\b{re.escape(c)}\b", text))]
    return min(found)[1] if found else None
