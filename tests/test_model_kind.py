"""A model unipelt cannot train is refused by `train` with the message `params` gives, before the tokenizer or
the weights are read (the folders here hold a config only, so reading either would fail differently)."""

from __future__ import annotations

import pytest

from unipelt.cli import main


@pytest.fixture
def folders(tmp_path):
    from transformers import T5Config, ViTConfig

    T5Config(d_model=32, num_layers=1, num_heads=2, d_ff=16, vocab_size=100).save_pretrained(tmp_path / "t5")
    ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16
    ).save_pretrained(tmp_path / "vit")
    (tmp_path / "d.csv").write_text("text,label\na,0\nb,1\nc,0\nd,1\n")
    return tmp_path


@pytest.mark.parametrize(
    "kind,says", [("t5", "model type 't5' is not supported"), ("vit", "is an image model (vit)")]
)
def test_train_names_the_model_kind_like_params(folders, capsys, kind, says):
    assert main(["params", str(folders / kind)]) == 2
    from_params = capsys.readouterr().err
    out = folders / "run"
    assert (
        main(["train", "--model", str(folders / kind), "--train", str(folders / "d.csv"), "--out", str(out)])
        == 2
    )
    from_train = capsys.readouterr().err
    assert from_train == from_params and says in from_train and from_train.count("\n") == 1
    assert not out.exists()
    causal = ["--task-type", "causal-lm"]
    assert (
        main(
            [
                "train",
                "--model",
                str(folders / kind),
                "--train",
                str(folders / "d.csv"),
                "--out",
                str(out),
                *causal,
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert f"({kind}), which unipelt cannot use for causal-lm" in err and err.count("\n") == 1
