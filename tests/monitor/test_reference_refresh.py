"""Refreshing a reference profile without the training features: `refresh_reference` on a stored profile gives
what `build_reference` gives with the training features it was built from; the stand-in outliers' outputs and the
fingerprint survive a save and a load; files without them (older ones) still load."""
from __future__ import annotations

import json

import numpy as np
import pytest

from sightline.errors import BundleError, UserInputError
from sightline.monitor.reference import (
    REFERENCE_FILE,
    OutlierOutputs,
    build_reference,
    load_reference,
    refresh_reference,
)

from test_monitor_reference import CLASSES, _arrays  # the same synthetic arrays (this folder is on sys.path)


def _outliers(n: int = 60) -> OutlierOutputs:
    logits, feats, _ = _arrays(n, 7, shift=4.0)
    half = n // 2
    return OutlierOutputs(logits.astype(np.float32), feats.astype(np.float16),
                          families=["synthetic"] * half + ["photo"] * (n - half),
                          kinds=["stripes"] * half + ["coffee"] * (n - half), notes=["a note"])


def _stats(n: int) -> list[dict]:
    return [{"width": 300 + i, "height": 200, "brightness": 0.4, "format": "JPEG"} for i in range(n)]


def test_refresh_equals_a_build_with_the_same_training_features(tmp_path):
    logits, feats, _ = _arrays(150, 0)
    _, bank, bank_y = _arrays(500, 1)
    outliers = _outliers()
    first = build_reference(logits, feats, classes=CLASSES, temperature=1.0, image_stats=_stats(150),
                            bank_features=bank, bank_labels=bank_y)
    first.outliers, first.fingerprint = outliers, {"model": "torch:abc", "bank": "def"}
    first.fit_ood(logits, feats, outliers.logits, outliers.features32)
    first.save(tmp_path)
    stored = load_reference(tmp_path)

    # new validation outputs (another val set of the same model), a new temperature and quantile
    new_logits, new_feats, _ = _arrays(90, 2)
    fresh = refresh_reference(stored, new_logits, new_feats, temperature=2.5, image_stats=_stats(90),
                              meta={"split": "val"})
    full = build_reference(new_logits, new_feats, classes=CLASSES, temperature=2.5, image_stats=_stats(90),
                           bank_features=bank, bank_labels=bank_y, meta={"split": "val"})
    for p in (fresh, full):
        p.fit_ood(new_logits, new_feats, outliers.logits, outliers.features32, quantile=0.95)
    assert fresh.meta == full.meta == {"pca_fit": "training", "split": "val"}
    assert fresh.summary() == full.summary()
    np.testing.assert_allclose(fresh.projected.astype(np.float32), full.projected.astype(np.float32), atol=1e-3)
    np.testing.assert_array_equal(fresh.bank, full.bank)
    np.testing.assert_allclose(fresh.mahalanobis.chol, full.mahalanobis.chol, rtol=1e-5, atol=1e-5)
    assert fresh.ood_choice.score == full.ood_choice.score
    for name, row in full.ood_choice.table.items():
        assert fresh.ood_choice.table[name]["threshold"] == pytest.approx(row["threshold"], rel=1e-5), name
        assert fresh.ood_choice.table[name]["auroc"] == pytest.approx(row["auroc"], abs=1e-9), name
    # the temperature reached the scores: msp's threshold is not the stored one
    assert fresh.ood_choice.table["msp"]["threshold"] != pytest.approx(first.ood_choice.table["msp"]["threshold"])
    # carried over, and the stored training side is not copied into new arrays
    assert fresh.outliers is stored.outliers and fresh.fingerprint == first.fingerprint
    assert fresh.image_stats["width"].tolist() == list(range(300, 390))


def test_outliers_and_fingerprint_survive_save_and_load(tmp_path):
    logits, feats, _ = _arrays(60, 0)
    _, bank, bank_y = _arrays(200, 1)
    profile = build_reference(logits, feats, classes=CLASSES, bank_features=bank, bank_labels=bank_y)
    outliers = _outliers(20)
    profile.outliers = outliers
    profile.fingerprint = {"model": "torch:00", "preprocessing": {"input_size": 32}, "stand_ins": {"seed": 0}}
    profile.save(tmp_path)
    loaded = load_reference(tmp_path)
    assert loaded.fingerprint == profile.fingerprint
    o = loaded.outliers
    assert o.logits.dtype == np.float32 and o.features.dtype == np.float16 and len(o) == 20
    np.testing.assert_array_equal(o.logits, outliers.logits)
    np.testing.assert_array_equal(o.features, outliers.features)
    assert (o.families, o.kinds, o.notes) == (outliers.families, outliers.kinds, outliers.notes)
    # a file without them (written before they existed) loads with none
    profile.outliers, profile.fingerprint = None, {}
    profile.save(tmp_path)
    with np.load(tmp_path / REFERENCE_FILE) as z:
        assert "outlier_logits" not in z.files and "outliers" not in json.loads(str(z["header"]))
    old = load_reference(tmp_path)
    assert old.outliers is None and old.fingerprint == {}


def test_inconsistent_outliers_are_refused(tmp_path):
    logits, feats, _ = _arrays(60, 0)
    profile = build_reference(logits, feats, classes=CLASSES)
    bad = _outliers(20)
    bad.kinds = bad.kinds[:-1]
    profile.outliers = bad
    profile.save(tmp_path)
    with pytest.raises(BundleError, match="stand-in"):
        load_reference(tmp_path)
    wrong_dim = _outliers(20)
    wrong_dim.features = wrong_dim.features[:, :5]
    profile.outliers = wrong_dim
    profile.save(tmp_path)
    with pytest.raises(BundleError, match="stand-in features"):
        load_reference(tmp_path)


def test_refresh_needs_a_training_side_and_the_same_feature_size():
    logits, feats, _ = _arrays(60, 0)
    halves = build_reference(logits, feats, classes=CLASSES)  # basis from half of validation, no bank
    with pytest.raises(UserInputError, match="no k-NN bank"):
        refresh_reference(halves, logits, feats)
    _, bank, bank_y = _arrays(200, 1)
    stored = build_reference(logits, feats, classes=CLASSES, bank_features=bank, bank_labels=bank_y)
    with pytest.raises(UserInputError, match="dimensions"):
        refresh_reference(stored, logits, feats[:, :10])
    with pytest.raises(UserInputError, match="logits must be"):
        refresh_reference(stored, logits[:, :2], feats)
