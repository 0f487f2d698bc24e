"""Class imbalance options (class weights, oversampling) and tagged Hub data, without training."""

from __future__ import annotations

from collections import Counter

import pytest

from unipelt.data import Example, TaskData
from unipelt.data.conll import TokenData, TokenExample, load_hub_tokens
from unipelt.errors import UniPELTError
from unipelt.kinds import resolve_kind
from unipelt.kinds.imbalance import (
    apply_oversampling,
    class_weights,
    oversample,
    parse_class_weights,
    rarest_tag_group,
)
from unipelt.training import TrainConfig


def test_balanced_weights_are_inverse_frequency():
    counts = Counter({0: 90, 1: 10})
    assert parse_class_weights("balanced", ["neg", "pos"], counts) == pytest.approx([100 / 180, 100 / 20])
    assert parse_class_weights("none", ["neg", "pos"], counts) is None
    assert parse_class_weights("1,4.5", ["neg", "pos"], counts) == [1.0, 4.5]
    # a class that training never shows gets weight 1
    assert parse_class_weights("balanced", ["a", "b", "c"], Counter({0: 3, 1: 1})) == pytest.approx(
        [4 / 9, 4 / 3, 1]
    )


@pytest.mark.parametrize("spec", ["1,2,3", "x", "-1,2", "0,0"])
def test_bad_class_weights_are_one_line_errors(spec):
    with pytest.raises(UniPELTError, match="class-weights"):
        parse_class_weights(spec, ["neg", "pos"], Counter({0: 1, 1: 1}))


def test_oversampling_evens_the_classes_and_is_seeded():
    items = list(range(12))  # 9 of class 0, 3 of class 1
    group = lambda i: int(i >= 9)  # noqa: E731
    once = oversample(items, group, seed=5)
    assert once[:12] == items  # originals first, in order
    assert Counter(group(i) for i in once) == {0: 9, 1: 9}
    assert oversample(items, group, seed=5) == once
    assert oversample(items, group, seed=6) != once


def test_a_tagged_sentence_counts_for_its_rarest_tag():
    tags = [[0, 0, 1], [0, 2], [0, 0], [0, 1]]  # tag 2 is the rarest, then 1
    group = rarest_tag_group(tags)
    assert [group(t) for t in tags] == [1, 2, 0, 1]


def _sentences(config: TrainConfig) -> TaskData:
    examples = [Example(f"t{i}", None, int(i < 2)) for i in range(10)]  # 2 positives, 8 negatives
    return TaskData(examples, ["neg", "pos"], False, "mem")


def test_run_options_on_sentence_and_token_data():
    config = TrainConfig(class_weights="balanced", oversample=True, seed=1)
    data = _sentences(config)
    assert class_weights(config, data) == pytest.approx([10 / 16, 10 / 4])
    balanced = apply_oversampling(config, data)
    assert Counter(e.label for e in balanced.examples) == {0: 8, 1: 8}
    tokens = TokenData(
        [TokenExample(("a", "b"), (0, 1)), TokenExample(("c",), (0,)), TokenExample(("d",), (0,))],
        ["O", "B-X"],
        False,
        "mem",
    )
    assert class_weights(config, tokens) == pytest.approx([4 / (2 * 3), 4 / (2 * 1)])
    assert len(apply_oversampling(config, tokens).examples) == 4  # the one B-X sentence repeated once
    assert apply_oversampling(TrainConfig(), data) is data


def test_task_type_resolution(tmp_path):
    conll = tmp_path / "a.conll"
    conll.write_text("John B-PER\n")
    assert resolve_kind(TrainConfig(task=None, train_file=str(conll))).name == "token-classification"
    assert resolve_kind(TrainConfig(task="rte")).name == "classification"
    assert resolve_kind(TrainConfig(task="stsb", regression=True)).name == "regression"
    with pytest.raises(UniPELTError, match="contradicts"):
        resolve_kind(TrainConfig(task="rte", regression=True, task_type="token-classification"))
    with pytest.raises(UniPELTError, match="task_type must be one of"):
        TrainConfig(task="rte", task_type="ner").validate()
    TrainConfig(task="conll2003", task_type="token-classification").validate()  # a Hub dataset name


def test_hub_tagged_dataset_through_datasets(monkeypatch):
    import datasets

    features = datasets.Features(
        {
            "tokens": datasets.Sequence(datasets.Value("string")),
            "ner_tags": datasets.Sequence(datasets.ClassLabel(names=["O", "B-PER", "I-PER", "B-LOC"])),
        }
    )
    rows = {"tokens": [["John", "Smith", "runs"], [], ["Paris"]], "ner_tags": [[1, 2, 0], [], [3]]}
    calls = []

    def fake_load(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_dict(rows, features=features)

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    data = load_hub_tokens("conll2003", "train")
    assert calls == [("conll2003", "train")]
    assert data.label_list == ["O", "B-PER", "I-PER", "B-LOC"]  # the dataset's own id order
    assert len(data) == 2 and data.skipped_empty == 1
    assert data.examples[0].tags == (1, 2, 0)

    def offline(name, split):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UniPELTError, match="cannot load the test split of 'conll2003'"):
        load_hub_tokens("conll2003", "test")


def test_hub_dataset_gives_the_three_splits_of_a_run(monkeypatch):
    import datasets

    from unipelt.training.run import load_splits

    features = datasets.Features(
        {
            "tokens": datasets.Sequence(datasets.Value("string")),
            "ner_tags": datasets.Sequence(datasets.ClassLabel(names=["O", "B-PER", "I-PER"])),
        }
    )
    sizes = {"train": 6, "validation": 3, "test": 2}

    def fake_load(name, split):
        n = sizes[split]
        return datasets.Dataset.from_dict(
            {"tokens": [["Ann", "Lee", "ran"]] * n, "ner_tags": [[1, 2, 0]] * n}, features=features
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    splits = load_splits(TrainConfig(task="conll2003", task_type="token-classification"))
    assert splits.kind.name == "token-classification" and splits.glue_task is None
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (6, 3, 2)
    assert splits.label_list == ["O", "B-PER", "I-PER"]
