"""Shared fixtures of the loop tests; the helpers live in loop_tiny.py."""
from __future__ import annotations

from pathlib import Path

import pytest
from loop_tiny import write_images


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train 8, val 4, test 10 images per class; production: 10 per class, brighter by 20 grey levels."""
    root = write_images(tmp_path_factory.mktemp("data"), {"train": 8, "val": 4, "test": 10})
    write_images(root, {"production": 10}, seed=1, shift=20)
    return root
