"""An image statistic whose median did not move is worded by its spread: a window of one image size read 'image
width (px) of some images (the median is about the same: 250, reference 250)', as if a few images were odd."""
from __future__ import annotations

import numpy as np

from sightline.monitor.report import _stat_words
from sightline.monitor.windows import _stat_shifts


def test_the_words_follow_the_spread_when_the_median_stays() -> None:
    rng = np.random.default_rng(0)
    reference = {"width": rng.normal(250, 40, 300)}
    one_size = _stat_shifts({"width": np.full(40, 250.0)}, reference)["width"]
    assert one_size["window_iqr"] == 0.0 and one_size["reference_iqr"] > 40
    assert _stat_words("width", one_size).startswith("image width (px) nearly the same in every image (250; the "
                                                     "reference varies, middle half")
    wide = _stat_shifts({"width": rng.normal(250, 400, 40)}, reference)["width"]
    assert "varies far more than in the reference" in _stat_words("width", wide)
    mixed = _stat_shifts({"width": np.r_[rng.normal(250, 40, 36), np.full(4, 900.0)]}, reference)["width"]
    assert "of some images (the median is about the same" in _stat_words("width", mixed)
    moved = _stat_shifts({"width": rng.normal(400, 40, 40)}, reference)["width"]
    assert _stat_words("width", moved).endswith("; medians)")
