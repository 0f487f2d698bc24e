"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Real GLUE TSVs; tests that need them skip when the folder is not there.
_DEFAULT_GLUE_DIR = Path("/work/shared/data/glue")


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    """The real GLUE folder ($UNIPELT_DATA_DIR or the shared copy); skips the test when neither exists."""
    folder = Path(os.environ.get("UNIPELT_DATA_DIR") or _DEFAULT_GLUE_DIR)
    if not (folder / "RTE" / "train.tsv").is_file():
        pytest.skip(f"GLUE data not found at {folder} (set UNIPELT_DATA_DIR)")
    return folder
