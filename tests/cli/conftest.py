"""The `registry` fixture: the test's own registry directory, as a Path."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def registry(registry_dir: str) -> Path:
    return Path(registry_dir)
