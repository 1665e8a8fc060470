"""Shared pytest fixtures.

The real benchmark images live next to the project in ../shared/data (never copied into the repo).
Tests that need them take the `shared_data` fixture and are skipped cleanly when the folder is absent.
"""
import os
import sys
from pathlib import Path

import pytest

# Make the flat top-level modules (models.py, utils.py, ...) importable from tests/.
REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

SHARED_DATA = Path(os.environ.get("SR_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data():
    """Path to ../shared/data (Set5, Set14, BSD100, train/...), or skip the test if it is absent."""
    if not (SHARED_DATA / "Set5" / "HR").is_dir():
        pytest.skip(f"benchmark images not found in {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def repo_root():
    return REPO_ROOT
