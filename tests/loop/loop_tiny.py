"""Tiny data and bundles for the loop tests (`from loop_tiny import ...`), made here: 32 px images whose class is
their brightness, and `test_efficientnet` bundles whose head is a nearest-centroid probe on the network's pooled
features (closed form, no training run), so the tests have a real, accurate classifier in well under a second."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sightline.bundle import Bundle
from sightline.data.images import load_image
from sightline.data.transforms import eval_preprocess, stack
from sightline.decision import decide
from sightline.models.factory import create_model
from sightline.preprocessing import Preprocessing

CLASSES = ["dark", "light"]
LEVELS = {"dark": 45, "light": 205}  # mean grey level per class; the noise (sd 12) never bridges the gap


def write_images(root: Path, counts: dict[str, int], *, seed: int = 0, shift: int = 0,
                 classes: tuple[str, ...] = tuple(CLASSES)) -> Path:
    """root/<split>/<class>/<i>.png for split -> images per class; `shift` adds to every grey level."""
    rng = np.random.default_rng(seed)
    for split, n in counts.items():
        for c in classes:
            folder = root / split / c
            folder.mkdir(parents=True, exist_ok=True)
            level = LEVELS.get(c, 125) + shift
            for i in range(n):
                pixels = np.clip(level + rng.normal(0, 12, (36, 40, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{c}_{seed}_{i}.png")
    return root


def oracle_logits(bundle: Bundle, paths: list[Path]) -> np.ndarray:
    """(N, K) logits computed outside the inference core: PIL decode, eval_preprocess, a plain forward pass."""
    model = bundle.load_model()
    x = torch.from_numpy(stack([eval_preprocess(load_image(p), bundle.preprocessing) for p in paths]))
    with torch.no_grad():
        return model(x).float().numpy()


def oracle_predictions(bundle: Bundle, paths: list[Path]) -> np.ndarray:
    """(N,) served class indices (the bundle's temperature and thresholds applied)."""
    return decide(oracle_logits(bundle, paths), bundle.classes, temperature=bundle.temperature,
                  thresholds=bundle.thresholds).labels


def make_bundle(folder: Path, train_dir: Path, *, seed: int = 0, input_size: int = 32, classes: list[str] | None = None,
                **fields) -> Bundle:
    """A test_efficientnet bundle in `folder` whose classifier is the nearest-centroid rule on the pooled features
    of train_dir's images (random backbone, seeded). `fields` go to Bundle (thresholds, temperature, version...)."""
    classes = classes or CLASSES
    torch.manual_seed(seed)
    model = create_model("test_efficientnet", len(classes), weights="none").eval()
    pre = Preprocessing(input_size)
    feats, labels = [], []
    for k, c in enumerate(classes):
        paths = sorted((train_dir / c).glob("*.png"))
        x = torch.from_numpy(stack([eval_preprocess(load_image(p), pre) for p in paths]))
        with torch.no_grad():
            feats.append(model.forward_head(model.forward_features(x), pre_logits=True))
        labels += [k] * len(paths)
    f = torch.cat(feats)
    centroids = torch.stack([f[torch.tensor(labels) == k].mean(0) for k in range(len(classes))])
    head = model.get_classifier()
    with torch.no_grad():  # argmax_k of -|f - c_k|^2 = argmax_k of 2 c_k.f - |c_k|^2
        scale = 4.0 / float((centroids[0] - centroids[-1]).norm() ** 2)
        head.weight.copy_(2 * centroids * scale)
        head.bias.copy_(-(centroids ** 2).sum(1) * scale)
    bundle = Bundle("test_efficientnet", list(classes), pre, **fields)
    bundle.save(folder, model.state_dict())
    return bundle
