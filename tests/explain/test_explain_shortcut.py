"""Issue 4 section 6: on synthetic data made with `--shortcut crack` (a corner marker on every crack image) the
shortcut flag fires for crack; for the same recipe without the marker it does not.

Kept under a minute on 2 CPU cores: ok-vs-crack at 64 px, a subset of the images, and the offline ImageNet
Lite0 backbone frozen with its classifier fitted on pooled features (a linear probe). A probe is a model like any
other here: the bundle holds the whole network, and Grad-CAM explains it end to end."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sightline.bundle import Bundle
from sightline.data.synth import synthesize
from sightline.data.transforms import to_batch
from sightline.evaluate.run import evaluate
from sightline.inference import load_crops
from sightline.models.factory import create_model, default_preprocessing

CLASSES = ["crack", "ok"]
# The first N images of a class in a split; a split not named here: all of them. 40 of each class to fit the probe
# on: it finds the marker, or the cracks, from these as it did from 120 ok and all 84 cracks (crack recall on test
# 0.94, was 0.89; pointing game 0.06 and lift 0.94 with the marker, 0.61 and 4.7 without; flagged below 0.5 and 2).
# val (the fitted temperature and thresholds) and test (the pointing game's 18 cracks with masks) as before.
TAKE = {"ok": {"train": 40, "val": 20, "test": 20}, "crack": {"train": 40}}


def _dataset(root: Path, shortcut: str | None) -> Path:
    """The images `synthesize(n=1500, size=64, seed=0, shortcut=shortcut)` writes for the first TAKE images of each
    class and split (cracks with their masks), byte for byte, in root/data. Rendered one by one (an image is a
    function of the seed and its index) instead of synthesising all 1,500 and their masks to copy ~200 of them."""
    left = {label: dict(splits) for label, splits in TAKE.items()}

    def wanted(label: str, split: str) -> bool:
        if label not in left:
            return False
        if split not in left[label]:
            return True
        if left[label][split]:
            left[label][split] -= 1
            return True
        return False

    _synthesize_some(root / "data", 1500, shortcut, wanted)
    return root / "data"


def _synthesize_some(out: Path, n: int, shortcut: str | None, wanted) -> None:
    """What `synthesize(out, n=n, size=64, seed=0, shortcut=shortcut)` writes (split layout, no planted issues),
    for the images `wanted(label, split)` picks, asked in the order of the images' indices."""
    from sightline.data import synth
    from sightline.data.datasets import MASK_SUFFIX

    width = max(4, len(str(n)))
    for i, (label, split) in enumerate(synth._labels_and_splits(n, 0, "split")):
        if not wanted(label, split):
            continue
        pixels, mask = synth.render_sample(0, i, label, 64, shortcut=label == shortcut, textures=synth.TEXTURES)
        folder = out / split / label
        folder.mkdir(parents=True, exist_ok=True)
        synth._save_jpeg(folder / f"{label}_{i:0{width}d}.jpg", pixels)
        if mask is not None:
            Image.fromarray(mask.astype(np.uint8) * 255, "L").save(folder / f"{label}_{i:0{width}d}{MASK_SUFFIX}",
                                                                   optimize=False)


@pytest.mark.parametrize("shortcut", ["crack", None])
def test_some_of_a_synthesis_is_that_synthesis_byte_for_byte(tmp_path, shortcut):
    """_dataset's rendering stays what synthesize writes (checked on a small one, every image and mask)."""
    synthesize(tmp_path / "full", n=40, size=64, seed=0, shortcut=shortcut)
    _synthesize_some(tmp_path / "some", 40, shortcut, lambda label, split: True)
    full = {p.relative_to(tmp_path / "full"): p.read_bytes() for p in (tmp_path / "full").rglob("*.*g")}
    some = {p.relative_to(tmp_path / "some"): p.read_bytes() for p in (tmp_path / "some").rglob("*.*g")}
    assert any(p.name.endswith(".mask.png") for p in some) and some == full


def _probe(data: Path, run: Path) -> None:
    pre = default_preprocessing("tf_efficientnet_lite0", input_size=64)
    torch.manual_seed(0)
    model = create_model("tf_efficientnet_lite0", len(CLASSES), weights="auto").eval()
    files = sorted((data / "train").glob("*/*.jpg"))
    inputs = load_crops(files, pre)
    x = torch.from_numpy(to_batch(inputs.crops, pre))
    y = torch.tensor([CLASSES.index(p.parent.name) for p in inputs.paths])
    with torch.no_grad():
        feats = model.forward_head(model.forward_features(x), pre_logits=True)
    head = model.get_classifier()
    weight = (len(y) / (2 * torch.bincount(y, minlength=2).float())).clamp(max=10)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(head(feats), y, weight=weight).backward()
        opt.step()
    Bundle("tf_efficientnet_lite0", CLASSES, preprocessing=pre).save(run / "bundle", model.state_dict())


@pytest.mark.slow
@pytest.mark.parametrize("shortcut", ["crack", None])
def test_shortcut_flag(tmp_path, shortcut):
    data = _dataset(tmp_path, shortcut)
    _probe(data, tmp_path / "run")
    # reference=False: the monitor's reference profile (stand-in outliers and a train-feature bank scored through
    # Lite0) is not what this test is about, and was half of evaluate's time here
    m = evaluate(tmp_path / "run", data, robustness=False, n_bootstrap=20, progress=False, report=False,
                 reference=False)
    assert m["per_class"]["crack"]["recall"] >= 0.7  # the model does find cracks, one way or the other
    crack = m["pointing_game"]["per_class"]["crack"]
    print(shortcut, crack)
    if shortcut:
        assert crack["shortcut"] and m["pointing_game"]["shortcut_classes"] == ["crack"]
    else:
        assert not crack["shortcut"] and m["pointing_game"]["shortcut_classes"] == []
