"""Knowledge retention: of the facts the base model answers correctly, how many a trained run still gets right.

Fine-tuning a chat model on a narrow task can make it forget what it knew. A facts file is JSON lines of
``{"prompt": "What is the capital of France?", "answer": "Paris"}`` (``answer`` may also be a list of
accepted spellings); an answer is correct when it contains an accepted answer as whole words, ignoring case.
Both models answer greedily through the chat template, the base one being the same model with the UniPELT
modules switched off (``disabled()``), or a separately loaded base for full fine-tuning. Retention is the share
of the base model's correct answers that the run answers correctly too; facts the base model gets wrong say
nothing about forgetting and are only counted.

``unipelt/data/facts.jsonl`` is a small packaged set of everyday facts that SmolLM2-135M-Instruct answers
correctly (each checked with the base model).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unipelt.data.chat import Conversation
from unipelt.data.files import json_lines
from unipelt.errors import DataError
from unipelt.running.decoding import Sampling, generate_texts

PACKAGED_FACTS = Path(__file__).resolve().parent.parent / "data" / "facts.jsonl"
MAX_NEW_TOKENS = 32
SHOWN_LOSSES = 10


def facts_path(name: str) -> Path:
    """A facts file by path; ``facts`` names the packaged one."""
    return PACKAGED_FACTS if name == "facts" else Path(name)


@dataclass(frozen=True)
class Fact:
    prompt: str
    answers: tuple[str, ...]
    source: str


def read_facts(path: str | Path) -> list[Fact]:
    """The facts of a JSON-lines file; a malformed line is one error naming the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"facts file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read facts file {path}: {error}") from None
    facts = []
    for where, record in json_lines(text, path):
        answer = record.get("answer") if isinstance(record, dict) else None
        answers = [answer] if isinstance(answer, str) else answer
        if (
            not isinstance(record.get("prompt") if isinstance(record, dict) else None, str)
            or not isinstance(answers, list)
            or not answers
            or not all(isinstance(a, str) and a.strip() for a in answers)
        ):
            raise DataError(f'{where}: expected {{"prompt": "...", "answer": "..." or ["...", ...]}}')
        facts.append(Fact(record["prompt"], tuple(answers), where))
    if not facts:
        raise DataError(f"facts file {path} holds no facts")
    return facts


def is_correct(generated: str, answers: Sequence[str]) -> bool:
    """Whether ``generated`` names one of ``answers`` as whole words (case and spacing ignored)."""
    text = " ".join(generated.lower().split())
    for answer in answers:
        words = r"\s+".join(re.escape(word) for word in answer.lower().split())
        if re.search(rf"(?<!\w){words}(?!\w)", text):
            return True
    return False


def measure_retention(
    model: Any,
    tokenizer: Any,
    facts: Sequence[Fact],
    *,
    base: Any = None,
    task: str | None = None,
    max_new_tokens: int = MAX_NEW_TOKENS,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Greedy answers of ``model`` and of its base to every fact, and how many the run keeps.

    ``base`` is the base model when ``model`` has no ``disabled()`` switch (full fine-tuning); by default the
    base is ``model`` with its modules switched off.
    """
    conversations = [Conversation([{"role": "user", "content": f.prompt}], f.source) for f in facts]
    sampling = Sampling(max_new_tokens=max_new_tokens)
    if base is None:
        base_context = model.disabled()
        base = model
    else:
        base_context = nullcontext()
    with base_context:
        base_answers = generate_texts(base, tokenizer, conversations, sampling, batch_size=batch_size)
    run_answers = generate_texts(model, tokenizer, conversations, sampling, task=task, batch_size=batch_size)
    base_ok = [is_correct(text, f.answers) for text, f in zip(base_answers, facts)]
    run_ok = [is_correct(text, f.answers) for text, f in zip(run_answers, facts)]
    kept = sum(b and r for b, r in zip(base_ok, run_ok))
    lost = [
        {"prompt": f.prompt, "expected": list(f.answers), "base": b_text, "run": r_text}
        for f, b, r, b_text, r_text in zip(facts, base_ok, run_ok, base_answers, run_answers)
        if b and not r
    ]
    return {
        "facts": len(facts),
        "base_correct": sum(base_ok),
        "run_correct": sum(run_ok),
        "kept": kept,
        "retention": kept / sum(base_ok) if any(base_ok) else None,
        "lost": lost[:SHOWN_LOSSES],
    }


def retention_line(result: dict[str, Any]) -> str:
    """One human line: how many of the base model's correct answers the run keeps."""
    share = "n/a" if result["retention"] is None else f"{100 * result['retention']:.1f} %"
    return (
        f"retention {share}: the run answers {result['kept']} of the {result['base_correct']} facts the base "
        f"model answers correctly ({result['facts']} facts; the run gets {result['run_correct']} right in all)"
    )
