"""Turn the raw class activation maps of a forward pass (`Output.cams`, (N, h, w)) into heatmaps over the input.

The same post-processing pytorch-grad-cam applies to its maps: keep the positive evidence (ReLU), scale each
map to [0, 1] by its own min and max, and resize bilinearly to the network input. With the classic CAM from
`Output.cams` this gives Grad-CAM's heatmap of the last feature map without a backward pass
(`tests/inference/test_inference_cams.py` checks it against pytorch-grad-cam on real photos).
"""
from __future__ import annotations

import numpy as np

__all__ = ["scale_cams"]


def scale_cams(raw: np.ndarray, size: int) -> np.ndarray:
    """(N, h, w) raw maps -> (N, size, size) float32 heatmaps in [0, 1]; an all-zero map stays zero."""
    from PIL import Image

    raw = np.maximum(np.asarray(raw, dtype=np.float32), 0.0)
    out = np.empty((len(raw), size, size), dtype=np.float32)
    for i, cam in enumerate(raw):
        cam = cam - cam.min()
        cam = cam / (1e-7 + cam.max())
        out[i] = np.asarray(Image.fromarray(cam).resize((size, size), Image.Resampling.BILINEAR))
    return np.clip(out, 0.0, 1.0)
