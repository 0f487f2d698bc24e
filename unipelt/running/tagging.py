"""Tagging words with a token-classification model, turning tags into entity spans, scoring against gold tags.

A word's prediction is the head's output at its first sub-token (as in training). A word past the run's maximum
length gets no prediction: it is tagged ``O`` with score 0 and counted (``words_cut``), so ``eval`` charges it as a
miss instead of leaving it out. Spans come from seqeval's reading of the tags (IOB1, IOB2 or IOBES), each with
the mean probability of its words' predicted tags as its score.

The model is a ``forward`` function (:data:`unipelt.running.loop.Forward`): a PyTorch model through the batch
loop, or an ONNX Runtime session, answer alike.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from transformers import DataCollatorWithPadding

from unipelt.data.conll import TokenExample
from unipelt.data.token_align import encode_words
from unipelt.errors import UniPELTError
from unipelt.metrics import entity_metrics
from unipelt.running.loop import Forward, chunks


def as_sentence(sentence: TokenExample | Sequence[str] | str) -> TokenExample:
    """A sentence to tag from a TokenExample, a list of words or a whitespace-separated string."""
    if isinstance(sentence, TokenExample):
        return sentence
    words = sentence.split() if isinstance(sentence, str) else [str(w) for w in sentence]
    if not words:
        raise UniPELTError("an empty sentence cannot be tagged")
    return TokenExample(tuple(words), None)


def word_rows(
    sentences: Sequence[TokenExample], tokenizer: Any, max_length: int
) -> tuple[list[dict[str, list[int]]], list[list[int]]]:
    """(one row of model inputs per sentence, the first sub-token position of each word; -1: cut)."""
    encoding, positions, _ = encode_words(sentences, tokenizer, max_length)
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in encoding]
    return [{n: encoding[n][i] for n in names} for i in range(len(sentences))], positions


def word_probabilities(
    forward: Forward,
    tokenizer: Any,
    sentences: Sequence[TokenExample],
    max_length: int,
    batch_size: int = 32,
) -> list[np.ndarray]:
    """For each sentence, a (words, tags) array of probabilities; rows of NaN for words past the max length."""
    rows, positions = word_rows(sentences, tokenizer, max_length)
    left = getattr(tokenizer, "padding_side", "right") == "left"
    result: list[np.ndarray] = []
    for logits in forward(chunks(rows, DataCollatorWithPadding(tokenizer), batch_size)):
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probabilities = shifted / shifted.sum(axis=-1, keepdims=True)
        for offset in range(probabilities.shape[0]):
            index = len(result)  # the sentence of this row
            shift = probabilities.shape[1] - len(rows[index]["input_ids"]) if left else 0
            first = positions[index]
            words = np.full((len(first), probabilities.shape[-1]), np.nan, dtype=np.float32)
            for w, p in enumerate(first):
                if p >= 0:
                    words[w] = probabilities[offset, shift + p]
            result.append(words)
    return result


def decode(probabilities: np.ndarray, labels: Sequence[str]) -> tuple[list[str], list[float], int]:
    """(tag of each word, its probability, how many words had no prediction and were tagged O)."""
    tags, scores, cut = [], [], 0
    for row in probabilities:
        if np.isnan(row).any():
            tags.append("O")
            scores.append(0.0)
            cut += 1
        else:
            best = int(row.argmax())
            tags.append(labels[best])
            scores.append(float(row[best]))
    return tags, scores, cut


def entity_spans(tokens: Sequence[str], tags: Sequence[str], scores: Sequence[float]) -> list[dict[str, Any]]:
    """Entities as seqeval reads the tags: type, word span [start, end), text and mean word score."""
    from seqeval.metrics.sequence_labeling import get_entities

    spans = []
    for kind, start, last in get_entities(list(tags)):
        spans.append(
            {
                "type": kind,
                "start": start,
                "end": last + 1,
                "text": " ".join(tokens[start : last + 1]),
                "score": round(float(np.mean(scores[start : last + 1])), 6),
            }
        )
    return spans


def tag_sentences(
    forward: Forward,
    tokenizer: Any,
    sentences: Sequence[Any],
    labels: Sequence[str],
    max_length: int,
) -> Iterator[dict[str, Any]]:
    """One record per sentence: tokens, tags, per-word scores, entity spans, and words_cut when any.

    A sentence is a :class:`TokenExample`, a list of words, or a string (split on whitespace).
    """
    sentences = [as_sentence(s) for s in sentences]
    for sentence, probabilities in zip(
        sentences, word_probabilities(forward, tokenizer, sentences, max_length)
    ):
        tags, scores, cut = decode(probabilities, labels)
        record: dict[str, Any] = {
            "tokens": list(sentence.tokens),
            "tags": tags,
            "scores": [round(s, 6) for s in scores],
            "entities": entity_spans(sentence.tokens, tags, scores),
        }
        if cut:
            record["words_cut"] = cut
        yield record


def evaluate_tagged(
    forward: Forward,
    tokenizer: Any,
    sentences: Sequence[TokenExample],
    labels: Sequence[str],
    max_length: int,
) -> dict[str, float]:
    """seqeval entity and word scores of the predicted tags against the gold ones; cut words count as O."""
    if any(s.tags is None for s in sentences):
        raise UniPELTError("`eval` needs tagged sentences (use `predict` for untagged text)")
    gold, predicted, cut = [], [], 0
    for sentence, probabilities in zip(
        sentences, word_probabilities(forward, tokenizer, sentences, max_length)
    ):
        tags, _, missing = decode(probabilities, labels)
        predicted.append(tags)
        gold.append([labels[i] for i in sentence.tags])
        cut += missing
    return {**entity_metrics(gold, predicted), "words_cut": float(cut)}


def bracketed(record: dict[str, Any]) -> str:
    """A sentence with its entities in brackets: ``[PER John Smith] met [LOC Paris] .``"""
    tokens = record["tokens"]
    starts = {e["start"]: e for e in record["entities"]}
    out, i = [], 0
    while i < len(tokens):
        if i in starts:
            entity = starts[i]
            out.append(f"[{entity['type']} {entity['text']}]")
            i = entity["end"]
        else:
            out.append(tokens[i])
            i += 1
    return " ".join(out)
