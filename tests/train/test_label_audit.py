"""audit_labels' feature settings: the demo extracts the label check's features at its own input size and the whole
frame (a quarter of the backbone's work of the pretrained 224 px); the default stays the architecture's own."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from sightline.data.datasets import scan_dataset
from sightline.models.factory import default_preprocessing
from sightline.train.label_audit import audit_labels, image_features


def _images(root: Path, per_class: int = 10) -> Path:
    rng = np.random.default_rng(0)
    for label, hue in (("red", (200, 40, 40)), ("blue", (40, 40, 200))):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(np.asarray(hue) + rng.normal(0, 20, (24, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    return root


def test_features_at_a_chosen_input_size_and_crop(tmp_path: Path) -> None:
    data = _images(tmp_path / "data")
    paths = sorted(data.rglob("*.png"))
    default = default_preprocessing("test_efficientnet")
    feats, index, failed, info = image_features(paths, ["blue", "red"], arch="test_efficientnet", weights="none")
    assert (info["input_size"], info["crop_pct"]) == (default.input_size, default.crop_pct)
    small, _, _, info = image_features(paths, ["blue", "red"], arch="test_efficientnet", weights="none",
                                       input_size=32, crop_pct=1.0)
    assert (info["input_size"], info["crop_pct"]) == (32, 1.0) != (default.input_size, default.crop_pct)
    assert small.shape == feats.shape and index == list(range(len(paths))) and not failed

    check = audit_labels(scan_dataset(data), arch="test_efficientnet", weights="none", folds=3, input_size=32,
                         crop_pct=1.0)
    assert check.skipped is None and check.folds == 3 and check.n_checked == len(paths)
    assert (check.model["input_size"], check.model["crop_pct"]) == (32, 1.0)


def test_the_seed_decides_a_random_initialisation_whatever_ran_before(tmp_path: Path) -> None:
    """With weights="none" the features come from a randomly initialised network: drawn from `seed`, not from
    whatever torch's global generator holds (the demo's `--seed` gave other label issues after other work)."""
    import torch

    paths = sorted(_images(tmp_path / "data", per_class=3).rglob("*.png"))

    def features(seed: int) -> np.ndarray:
        return image_features(paths, ["blue", "red"], arch="test_efficientnet", weights="none", input_size=32,
                              seed=seed)[0]

    torch.manual_seed(1)
    first = features(0)
    torch.rand(1000)  # other work moves the global generator on
    np.testing.assert_array_equal(features(0), first)
    assert not np.allclose(features(1), first)
