"""What training does to a fresh model before step one: with --regression-bias label-mean a regression head
starts at the training labels' mean (zero by default), and --backbone-dropout sets the frozen model's dropout
while the added modules keep theirs."""

from __future__ import annotations

import argparse
import statistics
from functools import partial

import pytest
import torch
from tiny_runs import tiny_run_config
from torch import nn

from unipelt.cli.train import add_parser, train_config
from unipelt.errors import UniPELTError
from unipelt.training import train
from unipelt.training.model_init import set_backbone_dropout
from unipelt.training.run import build_model, load_splits

_config = partial(
    tiny_run_config, task="stsb", k=32, n_valid=32, epochs=1, max_length=48, patience=5, lr=None
)


def _mean_prediction(model, tokenizer, texts) -> float:
    batch = tokenizer(*zip(*texts), padding=True, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        return float(model(**batch).logits.mean())


@pytest.mark.parametrize("method", ["unipelt", "lora", "prefix", "ft"])
def test_regression_head_starts_at_the_training_label_mean(tiny_model_dir, glue_dir, tmp_path, method):
    config = _config(tiny_model_dir, glue_dir, tmp_path, method=method, regression_bias="label-mean")
    splits = load_splits(config)
    labels = [float(e.label) for e in splits.train.examples]
    mean = statistics.fmean(labels)
    assert mean > 1.0  # STS-B labels lie in [0, 5]: a zero start is far off
    model, unipelt, tokenizer = build_model(config, splits)
    head = model.classifier if unipelt is None else unipelt._task().head  # the task's own head (not gates)
    biases = [m.bias for m in head.modules() if isinstance(m, nn.Linear) and m.out_features == 1]
    assert len(biases) == 1 and biases[0].item() == pytest.approx(mean, abs=1e-6)
    texts = [(e.text_a, e.text_b) for e in splits.valid.examples]
    assert _mean_prediction(model, tokenizer, texts) == pytest.approx(mean, abs=0.3)

    zero = _config(tiny_model_dir, glue_dir, tmp_path, method=method, regression_bias="zero")
    model, _, _ = build_model(zero, splits)
    assert abs(_mean_prediction(model, tokenizer, texts)) < 0.3
    default = _config(tiny_model_dir, glue_dir, tmp_path, method=method)  # prefix-only starts at the mean
    model, _, _ = build_model(default, splits)
    expected = mean if method == "prefix" else 0.0
    assert _mean_prediction(model, tokenizer, texts) == pytest.approx(expected, abs=0.3)


def test_classification_heads_are_left_alone(tiny_model_dir, glue_dir, tmp_path):
    config = _config(tiny_model_dir, glue_dir, tmp_path, task="rte")
    model, unipelt, _ = build_model(config, load_splits(config))
    head = unipelt._task().head
    out = [m for m in head.modules() if isinstance(m, nn.Linear) and m.out_features == 2]
    assert len(out) == 1 and torch.count_nonzero(out[0].bias) == 0


@pytest.mark.slow
def test_a_regression_run_starts_with_the_label_variance_as_its_loss(tiny_model_dir, glue_dir, tmp_path):
    """With training frozen (lr ~ 0), validation MSE is what the start gives: the labels' variance (plus the
    train/valid mean gap) from the mean, their mean square from zero."""
    frozen = dict(lr=1e-12, max_steps=1, patience=1)
    config = _config(tiny_model_dir, glue_dir, tmp_path / "mean", regression_bias="label-mean", **frozen)
    splits = load_splits(config)
    train_mean = statistics.fmean(float(e.label) for e in splits.train.examples)
    valid = [float(e.label) for e in splits.valid.examples]
    from_mean = statistics.fmean((y - train_mean) ** 2 for y in valid)
    from_zero = statistics.fmean(y * y for y in valid)

    started = train(config)["valid"]["loss"]
    assert started == pytest.approx(from_mean, rel=0.15)
    zero = train(_config(tiny_model_dir, glue_dir, tmp_path / "zero", **frozen))  # the default start
    assert zero["valid"]["loss"] == pytest.approx(from_zero, rel=0.15)
    assert started < zero["valid"]["loss"] / 2


def test_backbone_dropout_sets_the_base_model_and_spares_added_modules(tiny_model_dir, glue_dir, tmp_path):
    config = _config(
        tiny_model_dir, glue_dir, tmp_path, task="rte", backbone_dropout=0.0, unipelt={"lora_dropout": 0.2}
    )
    model, unipelt, tokenizer = build_model(config, load_splits(config))
    base = [m.p for m in unipelt.base_model.modules() if isinstance(m, nn.Dropout)]
    added = [m.p for m in unipelt.tasks.modules() if isinstance(m, nn.Dropout)]
    assert base and all(p == 0.0 for p in base if p != 0.2)
    assert 0.2 in added  # LoRA's own dropout is built after the backbone's was set
    assert unipelt.base_model.config.hidden_dropout_prob == 0.0
    assert unipelt.base_model.config.attention_probs_dropout_prob == 0.0

    batch = tokenizer(["a short sentence", "another one here"], padding=True, return_tensors="pt")
    unipelt.tasks.requires_grad_(False)
    for module in unipelt.tasks.modules():  # only the backbone's randomness is left to show
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    model.train()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, model(**batch).logits)

    noisy = _config(tiny_model_dir, glue_dir, tmp_path, task="rte", backbone_dropout=0.5, method="ft")
    model, _, _ = build_model(noisy, load_splits(noisy))
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(**batch).logits, model(**batch).logits)


def _train_args(*argv: str):
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    return parser.parse_args(["train", *argv])


def test_backbone_dropout_flag_reaches_the_run_config(tiny_model_dir, glue_dir, tmp_path):
    args = _train_args("--task", "stsb", "--backbone-dropout", "0", "--out", "x")
    assert train_config(args).backbone_dropout == 0.0
    assert train_config(args).regression_start() == "zero"  # the default: it measured better (RESULTS.md)
    assert train_config(args).regression_bias is None  # None: the method decides (autopelt: label-mean)
    default = _train_args("--task", "stsb", "--out", "x")
    assert train_config(default).backbone_dropout is None
    with pytest.raises(UniPELTError, match="backbone_dropout"):
        _config(tiny_model_dir, glue_dir, tmp_path, backbone_dropout=1.0).validate()
    with pytest.raises(UniPELTError, match="regression_bias"):
        _config(tiny_model_dir, glue_dir, tmp_path, regression_bias="median").validate()
    with pytest.raises(UniPELTError, match="backbone dropout"):
        set_backbone_dropout(nn.Sequential(nn.Dropout(0.1)), -0.1)
