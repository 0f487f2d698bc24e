"""`unipelt params` on a folder that holds only a config.json."""

from __future__ import annotations

import json

import transformers as tf

from unipelt.cli import main


def test_params_json_on_a_config_only_folder(tmp_path, capsys):
    tf.BertConfig().save_pretrained(tmp_path)  # BERT-base shape, no weights
    assert main(["params", str(tmp_path), "--method", "unipelt", "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert {k: counts[k] for k in ("lora", "prefix", "adapter", "gates")} == {
        "lora": 294_912,
        "prefix": 184_320,
        "adapter": 894_528,
        "gates": 36_912,
    }
    assert set(counts) >= {"lora", "prefix", "prefix_mlp", "adapter", "gates", "head"}


def test_params_table_and_overrides(tmp_path, capsys):
    tf.LlamaConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=100,
    ).save_pretrained(tmp_path)
    assert main(["params", str(tmp_path), "--method", "lora", "--set", "lora_rank=4"]) == 0
    out = capsys.readouterr().out
    assert "LoRA" in out and "total at inference" in out
    # q: 64->64 and v: 64->32 (2 kv heads of 16), rank 4, 2 layers
    assert f"{2 * (4 * (64 + 64) + 4 * (64 + 32)):,}" in out


def test_params_errors_are_one_line(tmp_path, capsys):
    assert main(["params", str(tmp_path / "missing")]) == 2
    assert main(["params", str(tmp_path)]) == 2  # no config.json
    tf.T5Config(d_model=16, num_layers=1, num_heads=2, d_ff=8, d_kv=8).save_pretrained(tmp_path / "t5")
    assert main(["params", str(tmp_path / "t5")]) == 2
    err = capsys.readouterr().err
    assert err.count("unipelt: error:") == 3 and "Traceback" not in err and "not supported" in err


def test_params_shows_ia3_and_a_mix_set_from_the_command_line(tmp_path, capsys):
    tf.BertConfig().save_pretrained(tmp_path)
    assert main(["params", str(tmp_path), "--method", "ia3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ia3"] == 55_296  # 12 x (768 + 768 + 3072)
    assert main(["params", str(tmp_path), "--set", "modules=lora,prefix,adapter,ia3"]) == 0
    out = capsys.readouterr().out
    assert "IA3 vectors" in out and f"{55_296:,}" in out and "adapter" in out and "BitFit" not in out
