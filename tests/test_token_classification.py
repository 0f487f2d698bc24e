"""Token classification: tagged-file readers, sub-word alignment, seqeval metrics, the token head on every
architecture, and (slow) training, eval and predict end to end on a small CoNLL file made here."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as tf
from seqeval.metrics import f1_score, precision_score, recall_score
from tiny_models import ARCHS, DECODERS, tiny_config

from unipelt.config import PRESETS
from unipelt.data.conll import is_token_file, load_tokens, read_conll, read_token_jsonl, tag_order
from unipelt.data.token_align import IGNORE, tokenize_tagged
from unipelt.errors import DataError
from unipelt.metrics import compute_token_metrics, entity_metrics
from unipelt.model import UniPELTModel

PEOPLE = [["John", "Smith"], ["Mary"], ["Ana", "Lopez"]]
PLACES = [["Paris"], ["New", "York"], ["Berlin"]]
GROUPS = [["Acme", "Corp"], ["United", "Nations"]]
FILLER = ["the", "met", "in", "visited", "from", "today", "and", "works", "for", "."]


def sentences(n: int, seed: int = 0) -> list[tuple[list[str], list[str]]]:
    """Random sentences with PER, LOC and ORG entities (B-/I- tags) among filler words."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        tokens, tags = [], []
        for _ in range(rng.randint(2, 5)):
            if rng.random() < 0.5:
                tokens.append(rng.choice(FILLER))
                tags.append("O")
            else:
                kind, names = rng.choice([("PER", PEOPLE), ("LOC", PLACES), ("ORG", GROUPS)])
                name = rng.choice(names)
                tokens += name
                tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(name) - 1)
        out.append((tokens, tags))
    return out


def write_conll(path: Path, data: list[tuple[list[str], list[str]]], sep: str = " ") -> Path:
    lines = ["-DOCSTART- -X- O", ""]
    for tokens, tags in data:
        lines += [f"{t}{sep}NNP{sep}{g}" for t, g in zip(tokens, tags)] + [""]
    path.write_text("\n".join(lines) + "\n")
    return path


# ------------------------------------------------------------------------------------------ readers


def test_conll_reader_skips_docstart_and_reads_the_tag_column(tmp_path):
    path = write_conll(
        tmp_path / "a.conll", [(["John", "lives", "in", "Paris"], ["B-PER", "O", "O", "B-LOC"])]
    )
    data = read_conll(path)
    assert len(data) == 1
    assert data.examples[0].tokens == ("John", "lives", "in", "Paris")
    assert data.label_list == ["O", "B-LOC", "B-PER"]
    assert [data.label_list[i] for i in data.examples[0].tags] == ["B-PER", "O", "O", "B-LOC"]
    pos = read_conll(path, tag_column=1)  # the middle column as the tag
    assert pos.label_list == ["NNP"]
    tabbed = read_conll(write_conll(tmp_path / "b.conll", [(["New", "York"], ["B-LOC", "I-LOC"])], sep="\t"))
    assert tabbed.examples[0].tokens == ("New", "York") and tabbed.label_list == ["O", "B-LOC", "I-LOC"][1:]


def test_tag_order_puts_o_first_then_type_then_prefix():
    assert tag_order({"I-PER", "B-LOC", "O", "B-PER", "E-PER"}) == ["O", "B-LOC", "B-PER", "E-PER", "I-PER"]


def test_wrong_column_count_names_file_and_line(tmp_path):
    path = tmp_path / "bad.conll"
    path.write_text("John NNP B-PER\nlives VBZ O\nin O\n")
    with pytest.raises(DataError, match=r"bad\.conll, line 3: 2 columns, but line 1 has 3"):
        read_conll(path)


def test_unseen_eval_tags_are_named(tmp_path):
    train = read_conll(write_conll(tmp_path / "t.conll", [(["John"], ["B-PER"]), (["x"], ["O"])]))
    other = write_conll(tmp_path / "e.conll", [(["Acme", "x"], ["B-ORG", "B-MISC"])])
    with pytest.raises(DataError, match="tags not seen in training: B-MISC, B-ORG"):
        read_conll(other, label_list=train.label_list)


def test_jsonl_reader_counts_empty_sentences(tmp_path):
    path = tmp_path / "a.jsonl"
    rows = [
        {"tokens": ["John", "runs"], "tags": ["B-PER", "O"]},
        {"tokens": [], "tags": []},
        {"tokens": ["Paris"], "tags": ["B-LOC"]},
        {"tokens": [], "tags": []},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    data = read_token_jsonl(path)
    assert len(data) == 2 and data.skipped_empty == 2
    path.write_text(json.dumps({"tokens": ["a", "b"], "tags": ["O"]}))
    with pytest.raises(DataError, match=r"a\.jsonl, line 1: 2 tokens but 1 tags"):
        read_token_jsonl(path)


def test_tagged_files_are_read_in_the_given_encoding(tmp_path):
    conll = tmp_path / "latin.conll"
    conll.write_bytes("José B-PER\nvit O\n\nà O\nParís B-LOC\n".encode("latin-1"))
    lines = tmp_path / "latin.jsonl"
    lines.write_bytes(
        (json.dumps({"tokens": ["Zoë"], "tags": ["B-PER"]}, ensure_ascii=False) + "\n").encode("latin-1")
    )
    with pytest.raises(DataError, match=r"latin\.conll.*not valid UTF-8"):
        load_tokens(conll)
    data = load_tokens(conll, encoding="latin-1")
    assert [e.tokens for e in data.examples] == [("José", "vit"), ("à", "París")]
    assert load_tokens(lines, encoding="latin-1").examples[0].tokens == ("Zoë",)


def test_task_type_is_inferred_from_the_file(tmp_path):
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text(json.dumps({"tokens": ["a"], "tags": ["O"]}) + "\n")
    table = tmp_path / "c.jsonl"
    table.write_text(json.dumps({"text": "a", "label": "pos"}) + "\n")
    tsv_tags = tmp_path / "t.tsv"
    tsv_tags.write_text("John\tB-PER\nruns\tO\n")
    tsv_table = tmp_path / "c.tsv"
    tsv_table.write_text("text\tlabel\nhello\tpos\n")
    assert is_token_file(jsonl) and is_token_file(tsv_tags) and is_token_file(tmp_path / "x.conll")
    assert not is_token_file(table) and not is_token_file(tsv_table)
    assert load_tokens(tsv_tags).label_list == ["O", "B-PER"]


# ---------------------------------------------------------------------------------------- alignment


def test_first_sub_token_carries_the_tag_and_cut_words_are_counted(tiny_model_dir, tmp_path):
    tokenizer = tf.AutoTokenizer.from_pretrained(tiny_model_dir)
    path = write_conll(
        tmp_path / "a.conll",
        [(["Unbelievably", "Johnson", "went"], ["O", "B-PER", "O"]), (["a"] * 20, ["O"] * 20)],
    )
    data = read_conll(path)
    dataset, report = tokenize_tagged(data.examples, tokenizer, max_length=10)
    encoding = tokenizer(["Unbelievably", "Johnson", "went"], is_split_into_words=True)
    words = encoding.word_ids()
    labels = dataset[0]["labels"]
    for position, word in enumerate(words):
        first = word is not None and words.index(word) == position
        expected = data.examples[0].tags[word] if first else IGNORE
        assert labels[position] == expected
    assert sum(label != IGNORE for label in labels) == 3  # one label per word, however many pieces
    assert report.words == 23 and report.words_cut == 20 - 8 and report.sentences_cut == 1


# ------------------------------------------------------------------------------------------ metrics


def test_entity_metrics_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O"]]
    # gold entities: PER(0-1), LOC(3), ORG(0); predicted: PER(0-1), ORG(3), ORG(0): 2 of 3 right each way
    scores = entity_metrics(gold, pred)
    assert scores["precision"] == pytest.approx(2 / 3)
    assert scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 / 3)
    assert scores["accuracy"] == pytest.approx(5 / 6)
    assert scores["f1_PER"] == 1.0 and scores["f1_LOC"] == 0.0
    assert scores["precision_ORG"] == 0.5 and scores["recall_ORG"] == 1.0
    assert scores["support_LOC"] == 1 and scores["support_ORG"] == 1
    for name, function in (("f1", f1_score), ("precision", precision_score), ("recall", recall_score)):
        assert scores[name] == pytest.approx(function(gold, pred))


@pytest.mark.parametrize(
    ("gold", "pred", "f1"),
    [
        # IOBES: S- is a one-word entity, E- closes one
        ([["S-PER", "O", "B-LOC", "E-LOC"]], [["S-PER", "O", "B-LOC", "I-LOC"]], 1.0),
        # IOB1: an entity may start with I-; seqeval's lenient mode reads I-PER I-PER as one entity
        ([["I-PER", "I-PER", "O"]], [["B-PER", "I-PER", "O"]], 1.0),
        # a span cut short is a miss both ways
        ([["B-PER", "I-PER", "I-PER"]], [["B-PER", "I-PER", "O"]], 0.0),
    ],
)
def test_entity_metrics_follow_seqeval_on_schemes(gold, pred, f1):
    assert entity_metrics(gold, pred)["f1"] == pytest.approx(f1)
    assert entity_metrics(gold, pred)["f1"] == pytest.approx(f1_score(gold, pred))


def test_token_metrics_ignore_masked_positions():
    tags = ["O", "B-PER", "I-PER"]
    labels = np.array([[-100, 1, 2, -100, 0], [-100, 0, 1, -100, -100]])
    logits = np.zeros((2, 5, 3))
    logits[0, [1, 2, 4], [1, 2, 0]] = 5  # right on every scored position
    logits[0, 3, 0] = 9  # a later sub-token: ignored
    logits[1, [1, 2], [0, 0]] = 5  # misses the PER
    scores = compute_token_metrics(logits, labels, tags)
    assert scores["precision"] == 1.0 and scores["recall"] == 0.5 and scores["accuracy"] == 4 / 5


# --------------------------------------------------------------------------- the head on every model


def _token_batch(num_labels: int):
    torch.manual_seed(1)
    ids = torch.randint(3, 100, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    labels = torch.randint(0, num_labels, (2, 7))
    labels[:, 0] = IGNORE
    labels[1, 5:] = IGNORE
    return ids, mask, labels


@pytest.mark.parametrize("arch", ARCHS)
def test_token_head_trains_on_every_architecture(arch):
    torch.manual_seed(0)
    base = tf.AutoModelForTokenClassification.from_config(tiny_config(arch, 5))
    model = UniPELTModel(base, "unipelt")
    assert model.tasks[model.active_task].kind == "token-classification"
    ids, mask, labels = _token_batch(5)
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    assert out.logits.shape == (2, 7, 5)
    out.loss.backward()
    added = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad is not None for p in added if p.grad is not None) and any(
        p.grad is not None and p.grad.abs().sum() > 0 for p in added
    )
    if arch in DECODERS:  # a decoder tags from causal states: a later token cannot change an earlier tag
        model.eval()
        changed = ids.clone()
        changed[:, 6] = (changed[:, 6] + 1) % 100
        with torch.no_grad():
            before = model(input_ids=ids, attention_mask=mask).logits
            after = model(input_ids=changed, attention_mask=mask).logits
        assert torch.allclose(before[:, :6], after[:, :6], atol=1e-5)
        assert not torch.allclose(before[0, 6], after[0, 6])


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_takes_the_token_head(preset):
    torch.manual_seed(0)
    base = tf.AutoModelForTokenClassification.from_config(tiny_config("bert", 4))
    model = UniPELTModel(base, preset)
    ids, mask, labels = _token_batch(4)
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)


def test_class_weights_change_the_token_loss_and_are_saved(tmp_path):
    torch.manual_seed(0)
    base = tf.AutoModelForTokenClassification.from_config(tiny_config("bert", 3))
    model = UniPELTModel(base, "lora")
    ids, mask, labels = _token_batch(3)
    plain = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    model.tasks[model.active_task].class_weights = torch.tensor([0.1, 1.0, 5.0])
    weighted = model(input_ids=ids, attention_mask=mask, labels=labels)
    logits = weighted.logits.reshape(-1, 3)
    expected = torch.nn.functional.cross_entropy(
        logits, labels.reshape(-1), weight=torch.tensor([0.1, 1.0, 5.0]), ignore_index=IGNORE
    )
    assert weighted.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert weighted.loss.item() != pytest.approx(plain.item())
    model.save_pretrained(tmp_path / "ckpt")
    base2 = tf.AutoModelForTokenClassification.from_config(tiny_config("bert", 3))
    loaded = UniPELTModel.from_pretrained(base2, tmp_path / "ckpt")
    assert loaded.tasks[loaded.active_task].class_weights.tolist() == pytest.approx([0.1, 1.0, 5.0])


def test_byte_level_tokenizer_takes_words_for_a_decoder(tmp_path):
    """GPT-2-style tokenizers need add_prefix_space for split words; alignment turns it on by itself."""
    from tokenizers import ByteLevelBPETokenizer

    from unipelt.backbones import load_tokenizer
    from unipelt.data.conll import TokenExample

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        ["John Smith visited Paris today"] * 20, vocab_size=270, special_tokens=["<|eos|>"]
    )
    tf.GPT2TokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|eos|>").save_pretrained(tmp_path)
    tokenizer = load_tokenizer(tmp_path)
    dataset, report = tokenize_tagged([TokenExample(("John", "Smith", "visited"), (1, 2, 0))], tokenizer, 16)
    labels = dataset[0]["labels"]
    assert [label for label in labels if label != IGNORE] == [1, 2, 0] and report.words_cut == 0
