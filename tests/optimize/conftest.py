"""Shared data for the optimize tests: a tiny split-layout dataset whose two classes differ in brightness."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

CLASSES = ["dark", "light"]


def _write_dataset(root):
    """Split layout, 2 classes told apart by brightness, 4 images per class and split (JPEG and PNG)."""
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        for c, base in zip(CLASSES, (40, 210)):
            folder = root / split / c
            folder.mkdir(parents=True)
            for i in range(4):
                img = np.clip(base + rng.normal(0, 20, (40, 48, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"{i}.{'jpg' if i % 2 else 'png'}")
    return root


@pytest.fixture(scope="session")
def make_dataset():
    """A function root -> root that writes the dataset (CLASSES dark/light, 4 images per class and split)."""
    return _write_dataset
