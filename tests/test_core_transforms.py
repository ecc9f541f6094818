from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2 as T

from sightline.bundle import Preprocessing
from sightline.data.transforms import eval_preprocess, stack


def test_eval_preprocess_matches_torchvision_pipeline():
    # An independent computation of the same recipe: torchvision's Resize + CenterCrop + Normalize on PIL.
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, size=(90, 120, 3), dtype=np.uint8))
    pre = Preprocessing(64, interpolation="bilinear", crop_pct=0.875)
    ours = eval_preprocess(image, pre)
    ref = T.Compose([
        T.Resize(pre.resize_size, interpolation=T.InterpolationMode.BILINEAR),
        T.CenterCrop(pre.input_size),
        T.PILToTensor(),
        T.ToDtype(torch.float32, scale=True),
        T.Normalize(pre.mean, pre.std),
    ])(image).numpy()
    assert ours.shape == (3, 64, 64) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_non_rgb_and_tiny_images_are_handled():
    pre = Preprocessing(32)
    gray = Image.new("L", (10, 40), 128)  # smaller than the crop in one side: upscaled, never fails
    x = eval_preprocess(gray, pre)
    assert x.shape == (3, 32, 32)
    assert stack([x, x]).shape == (2, 3, 32, 32)
