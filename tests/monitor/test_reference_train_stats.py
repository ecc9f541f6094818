"""The image-statistics reference holds the training sample's statistics beside validation's (they do not depend
on the model), and `flat_share` measures uniform areas. Tiny arrays and images made here."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from sightline.errors import UserInputError
from sightline.monitor.drift import check_window, image_stats_test
from sightline.monitor.reference import build_reference, load_reference, refresh_reference
from sightline.monitor.stats import flat_share, image_stats

from test_monitor_reference import _arrays, _profile, _stats  # the same synthetic arrays (this folder is on sys.path)


def _photo_like(h: int, w: int, seed: int) -> np.ndarray:
    """(H, W, 3) uint8 smooth gradients plus noise: no 8 x 8 block is uniform."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 60 + 100 * (xx / w) + 40 * np.sin(yy / 7.0)
    return np.clip(base[..., None] + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)


def test_flat_share_counts_uniform_blocks_only():
    assert flat_share(np.asarray(Image.fromarray(_photo_like(160, 240, 0)).convert("L"), np.float32)) == 0.0
    grey = np.asarray(Image.fromarray(_photo_like(160, 240, 1)).convert("L"), np.float32).copy()
    grey[:80, :120] = 127.0  # a uniform patch over exactly a quarter of the 8 x 8 blocks
    assert flat_share(grey) == pytest.approx(0.25)
    grey[:80, :120] += np.tile([0.0, 1.0], 60)  # one grey level of JPEG rounding is still flat ...
    assert flat_share(grey) == pytest.approx(0.25)
    grey[:80, :120] += np.tile([0.0, 2.0], 60)  # ... three levels are not
    assert flat_share(grey) == 0.0
    assert flat_share(np.zeros((5, 300), np.float32)) == 0.0  # smaller than one block


def test_image_stats_report_a_uniform_occluder_and_padding(tmp_path):
    clean = _photo_like(300, 400, 2)
    occluded = clean.copy()
    occluded[100:220, 150:270] = 127  # 120 x 120 of 300 x 400: 12 % of the area
    padded = np.full((300, 400, 3), 0, np.uint8)
    padded[:, 50:350] = clean[:, 50:350]  # letterboxed: 25 % black bars
    stats = {}
    for name, pixels in (("clean", clean), ("occluded", occluded), ("padded", padded)):
        path = tmp_path / f"{name}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        with Image.open(path) as im:
            stats[name] = image_stats(im.convert("RGB"), path)
    assert stats["clean"]["flat_share"] == 0.0
    assert 0.06 <= stats["occluded"]["flat_share"] <= 0.12  # the patch's inner blocks (its edges ring in JPEG)
    assert stats["padded"]["flat_share"] >= 0.15  # 25 % of the area, less the blocks across the bars' edges


def test_training_statistics_join_validation_in_the_reference_and_survive_save_refresh_load(tmp_path):
    profile, logits, feats = _profile(train_image_stats=_stats(400, 5))
    assert len(profile.train_image_stats["brightness"]) == 400  # one per bank row (bank of 400, cap 5,000)
    ref = profile.stats_reference
    assert len(ref["brightness"]) == 120 + 400
    np.testing.assert_array_equal(ref["brightness"][:120], profile.image_stats["brightness"])
    assert list(ref["format"][120:]) == [s["format"] for s in _stats(400, 5)]

    capped, _, _ = _profile(train_image_stats=_stats(400, 5), bank_size=100)
    assert len(capped.train_image_stats["width"]) == capped.bank.shape[0] == 100  # subsampled with the bank

    profile.save(tmp_path)
    loaded = load_reference(tmp_path)
    for name, col in profile.train_image_stats.items():
        np.testing.assert_array_equal(loaded.train_image_stats[name], col)
    refreshed = refresh_reference(loaded, logits[:60], feats[:60], image_stats=_stats(60, 9))
    assert len(refreshed.stats_reference["width"]) == 60 + 400  # new validation, the same training side
    assert refreshed.summary()["image_stats_train"] == 400

    with pytest.raises(UserInputError, match="400 bank rows"):
        _profile(train_image_stats=_stats(399, 5))


def test_a_profile_without_training_statistics_tests_against_validation_alone(tmp_path):
    profile, _, _ = _profile()  # as files written before the training sample's statistics were kept
    assert profile.train_image_stats == {}
    assert len(profile.stats_reference["width"]) == 120
    profile.save(tmp_path)
    assert load_reference(tmp_path).train_image_stats == {}


def test_window_test_uses_the_larger_reference_and_gains_power():
    """A small brightness shift: against 60 validation images it goes unseen; with 600 training images'
    statistics beside them the same window is flagged, and a clean window still is not."""
    logits, feats, _ = _arrays(60, 0)
    _, bank, bank_y = _arrays(600, 1)
    with_train = build_reference(logits, feats, classes=["ant", "bee", "wasp"], image_stats=_stats(60, 0),
                                 bank_features=bank, bank_labels=bank_y, train_image_stats=_stats(600, 1))
    val_only = dataclasses.replace(with_train, train_image_stats={})
    window = _stats(300, 2)
    for row in window:
        row["brightness"] += 0.04  # brightness is uniform on [0.3, 0.6]: a 13 % shift of its range
    shifted = image_stats_test(window, val_only.stats_reference)
    assert shifted.n_reference == 60 and not shifted.significant
    bigger = image_stats_test(window, with_train.stats_reference)
    assert bigger.n_reference == 660 and bigger.significant
    clean = check_window(with_train, np.full((300, 3), 1 / 3), image_stats=_stats(300, 3))
    assert clean.tests["image_stats"].n_reference == 660 and not clean.tests["image_stats"].significant


def test_flat_share_equals_a_plain_block_reduction():
    """The halving implementation against max - min over each 8 x 8 tile of a 4-d view, on random images of every
    shape (ragged edges included) with few grey levels, so flat and non-flat tiles both occur."""
    rng = np.random.default_rng(0)
    for _ in range(60):
        h, w = rng.integers(8, 70, 2)
        grey = rng.integers(0, 3, (h, w)).astype(np.uint8)
        grey[rng.random((h, w)) < 0.9] = 1  # mostly one level: many tiles flat
        hh, ww = h // 8 * 8, w // 8 * 8
        tiles = grey[:hh, :ww].astype(np.float32).reshape(hh // 8, 8, ww // 8, 8)
        expected = float(((tiles.max(axis=(1, 3)) - tiles.min(axis=(1, 3))) <= 1.0).mean())
        assert flat_share(grey) == expected
        assert flat_share(grey.astype(np.float32)) == expected


def test_window_summary_scales_a_statistic_whose_reference_iqr_is_zero_by_its_spread():
    """flat_share is 0 for most photos (IQR 0): an occluded window's shift is reported in reference standard
    deviations (large), not in raw share units (0.06, which reads as no shift), and its images are the examples."""
    from sightline.monitor.windows import Batch, summarize

    def with_flat(rows: list[dict], values) -> list[dict]:
        return [{**r, "flat_share": float(v)} for r, v in zip(rows, values)]

    rng = np.random.default_rng(0)
    ref_flat = np.where(rng.random(120) < 0.1, rng.uniform(0.0, 0.05, 120), 0.0)
    logits, feats, _ = _arrays(120, 0)
    _, bank, bank_y = _arrays(400, 1)
    profile = build_reference(logits, feats, classes=["ant", "bee", "wasp"],
                              image_stats=with_flat(_stats(120, 0), ref_flat),
                              bank_features=bank, bank_labels=bank_y,
                              train_image_stats=with_flat(_stats(400, 1), np.zeros(400)))
    n = 100
    wl, wf, _ = _arrays(n, 7)
    batch = Batch(ids=np.arange(1, n + 1), times=np.arange(n, dtype=np.float64), probabilities=np.full((n, 3), 1 / 3),
                  projected=profile.project(wf), unknown=np.zeros(n, bool), ood=np.full(n, np.nan),
                  image_stats=with_flat(_stats(n, 7), np.full(n, 0.06)))
    summary = summarize(profile, batch, kind="block", key=0)
    flat = summary["image_stats"]["flat_share"]
    spread = np.concatenate([ref_flat, np.zeros(400)]).std()
    assert flat["reference_median"] == 0.0 and flat["shift_iqr"] == pytest.approx(0.06 / spread)
    assert flat["shift_iqr"] > 3
    assert summary["tests"]["image_stats"]["significant"] and len(flat["examples"]) > 0
