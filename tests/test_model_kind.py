"""A model unipelt cannot train is refused by `train` with the message `params` gives, before the tokenizer or
the weights are read (the folders here hold a config only, so reading either would fail differently)."""

from __future__ import annotations

import pytest

from unipelt.cli import main


@pytest.fixture
def folders(tmp_path):
    from transformers import T5Config, ViTConfig, Wav2Vec2Config

    T5Config(d_model=32, num_layers=1, num_heads=2, d_ff=16, vocab_size=100).save_pretrained(tmp_path / "t5")
    ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16
    ).save_pretrained(tmp_path / "vit")
    Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, conv_dim=(8,),
        conv_stride=(5,), conv_kernel=(10,), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
    ).save_pretrained(tmp_path / "w2v")  # fmt: skip
    (tmp_path / "d.csv").write_text("text,label\na,0\nb,1\nc,0\nd,1\n")
    return tmp_path


def _train(folders, model: str, *extra: str) -> int:
    args = [
        "train",
        "--model",
        str(folders / model),
        "--train",
        str(folders / "d.csv"),
        "--out",
        str(folders / "run"),
    ]
    return main([*args, *extra])


@pytest.mark.parametrize(
    "kind,says",
    [
        ("t5", "model type 't5' is not supported"),
        ("w2v", "is an audio model (wav2vec2), which unipelt cannot use"),
    ],
)
def test_train_names_the_model_kind_like_params(folders, capsys, kind, says):
    assert main(["params", str(folders / kind)]) == 2
    from_params = capsys.readouterr().err
    assert _train(folders, kind) == 2
    from_train = capsys.readouterr().err
    assert from_train == from_params and says in from_train and from_train.count("\n") == 1
    assert not (folders / "run").exists()
    assert _train(folders, kind, "--task-type", "causal-lm") == 2
    err = capsys.readouterr().err
    assert "which unipelt cannot use for causal-lm" in err or "is not supported" in err
    assert err.count("\n") == 1


def test_an_image_model_on_text_is_pointed_at_image_classification(folders, capsys):
    assert _train(folders, "vit") == 2
    err = capsys.readouterr().err
    assert "is an image model (vit): train it on images with --task-type image-classification" in err
    assert "tokenizer" not in err and err.count("\n") == 1
