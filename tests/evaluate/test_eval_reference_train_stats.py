"""The training sample's image statistics join validation's in the reference only where the two agree: a training
split gathered apart from validation must not make production that looks like validation drift. Arrays made here."""
from __future__ import annotations

import numpy as np

from sightline.evaluate.reference import check_train_stats, describe_reference, reference_summary
from sightline.monitor.reference import build_reference

CLASSES = ["ant", "bee"]


def _stats(n: int, seed: int, *, brightness: float = 0.0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"width": 400, "height": 300, "aspect": 4 / 3, "brightness": float(b + brightness),
             "contrast": float(c), "sharpness": float(s), "flat_share": 0.0, "mode": "RGB", "format": "JPEG"}
            for b, c, s in zip(rng.uniform(0.3, 0.6, n), rng.uniform(0.1, 0.3, n), rng.lognormal(5, 1, n))]


def _profile(train_stats: list[dict] | None, n_val: int = 80, n_train: int = 300):
    rng = np.random.default_rng(0)
    logits, feats = rng.normal(size=(n_val, 2)), rng.normal(size=(n_val, 16))
    bank, bank_y = rng.normal(size=(n_train, 16)), rng.integers(0, 2, n_train)
    return build_reference(logits, feats, classes=CLASSES, image_stats=_stats(n_val, 1), bank_features=bank,
                           bank_labels=bank_y, train_image_stats=train_stats)


def test_a_training_statistic_unlike_validations_is_left_out_and_said():
    profile = _profile(_stats(300, 2, brightness=0.1))  # the training photos 0.1 brighter: another light
    assert len(profile.stats_reference["brightness"]) == 380  # cached before the check: the check must reset it
    report = check_train_stats(profile)
    assert list(report["left_out"]) == ["brightness"] and report["left_out"]["brightness"] < 0.01
    assert "brightness" not in profile.train_image_stats and "contrast" in report["kept"]
    assert len(profile.stats_reference["brightness"]) == 80  # validation alone
    assert len(profile.stats_reference["contrast"]) == 380  # the others keep both
    profile.meta["train_stats"] = report
    line = describe_reference(reference_summary(profile))[0]
    assert "except brightness: the training sample's differ from val's" in line


def test_training_statistics_like_validations_are_all_kept():
    profile = _profile(_stats(300, 3))
    report = check_train_stats(profile)
    assert report["left_out"] == {} and len(report["kept"]) == len(_stats(1, 0)[0])
    assert len(profile.stats_reference["sharpness"]) == 380
    assert check_train_stats(_profile(None)) == {}  # no training statistics: nothing to check
