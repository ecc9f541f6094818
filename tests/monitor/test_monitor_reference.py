"""The reference profile: built from arrays, saved and loaded from a bundle folder, damaged files refused."""
from __future__ import annotations

import numpy as np
import pytest

from sightline.decision import softmax
from sightline.errors import BundleError, UserInputError
from sightline.monitor.reference import REFERENCE_FILE, build_reference, fit_pca, load_reference

CLASSES = ["ant", "bee", "wasp"]
D = 40


def _arrays(n: int, seed: int, *, shift: float = 0.0):
    """Features with a low-rank class structure plus noise, logits from a linear head."""
    centres = np.random.default_rng(99).normal(size=(3, D)) * 3
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    feats = centres[y] + rng.normal(size=(n, D)) + shift
    return feats @ centres.T / 10, feats, y


def _stats(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"width": int(w), "height": 300, "aspect": w / 300, "brightness": float(b), "contrast": 0.2,
             "sharpness": float(s), "bytes_per_pixel": 0.3, "jpeg_quality": 90 if i % 4 else None,
             "mode": "RGB", "channels": 3, "format": "JPEG" if i % 4 else "PNG"}
            for i, (w, b, s) in enumerate(zip(rng.integers(200, 400, n), rng.uniform(0.3, 0.6, n),
                                              rng.lognormal(5, 1, n)))]


def _profile(**kw):
    logits, feats, _ = _arrays(120, 0)
    _, bank, bank_y = _arrays(400, 1)
    defaults = dict(classes=CLASSES, temperature=1.5, image_stats=_stats(120, 0), bank_features=bank,
                    bank_labels=bank_y, meta={"split": "val"})
    return build_reference(logits, feats, **{**defaults, **kw}), logits, feats


def test_fit_pca_keeps_variance_components_with_a_cap():
    rng = np.random.default_rng(0)
    low_rank = rng.normal(size=(200, 3)) @ rng.normal(size=(3, D)) * 10 + rng.normal(size=(200, D)) * 0.01
    _, comps = fit_pca(low_rank, max_components=32, variance=0.95)
    assert comps.shape[1] <= 3 and comps.dtype == np.float32
    np.testing.assert_allclose(comps.T @ comps, np.eye(comps.shape[1]), atol=1e-5)
    _, capped = fit_pca(rng.normal(size=(200, D)), max_components=8)
    assert capped.shape == (D, 8)


def test_build_profile_contents():
    profile, logits, feats = _profile()
    assert profile.probabilities.shape == (120, 3)
    np.testing.assert_allclose(profile.probabilities, softmax(logits, 1.5), rtol=1e-5)
    assert profile.projected.dtype == np.float16 and profile.projected.shape == (120, profile.pca_components.shape[1])
    np.testing.assert_allclose(profile.project(feats), profile.projected.astype(np.float32), atol=2e-3)
    assert profile.bank.dtype == np.float16 and profile.bank.shape == (400, D)
    np.testing.assert_allclose(np.linalg.norm(profile.bank.astype(np.float32), axis=1), 1.0, atol=1e-3)
    assert sum(profile.class_mix.values()) == 120 and profile.meta == {"pca_fit": "training", "split": "val"}
    assert set(profile.ood_scores(logits, feats)) == {"msp", "energy", "knn", "mahalanobis"}
    assert profile.image_stats["format"].tolist().count("PNG") == 30


def test_bank_is_capped_stratified_and_basis_falls_back_to_half_of_validation():
    logits, feats, _ = _arrays(120, 0)
    _, bank, bank_y = _arrays(1000, 1)
    capped = build_reference(logits, feats, classes=CLASSES, bank_features=bank, bank_labels=bank_y, bank_size=100)
    assert capped.bank.shape[0] == 100
    assert abs(np.bincount(capped.bank_labels, minlength=3) - np.bincount(bank_y) / 10).max() <= 1
    alone = build_reference(logits, feats, classes=CLASSES)
    assert alone.bank is None and alone.mahalanobis is None and alone.meta["pca_fit"] == "validation half"
    assert alone.projected.shape[0] == 60  # the other half fitted the basis
    assert set(alone.ood_scores(logits, feats)) == {"msp", "energy"}


def test_projection_of_fresh_data_is_unbiased():
    """The basis is fitted on training features, so validation and fresh production features spread the same
    along it (a basis fitted on validation itself would make validation look wider than any fresh window)."""
    logits, feats, _ = _arrays(300, 0)
    _, bank, y = _arrays(300, 1)
    profile = build_reference(logits, feats, classes=CLASSES, bank_features=bank, bank_labels=y)
    fresh = profile.project(_arrays(300, 2)[1])
    ratio = fresh.var(axis=0).sum() / profile.projected.astype(np.float64).var(axis=0).sum()
    assert 0.85 < ratio < 1.15


def test_save_load_round_trip(tmp_path):
    profile, logits, feats = _profile()
    profile.fit_ood(logits, feats, *_arrays(50, 5, shift=4.0)[:2])
    path = profile.save(tmp_path)
    assert path == tmp_path / REFERENCE_FILE and not list(tmp_path.glob("*.tmp"))
    loaded = load_reference(tmp_path)
    assert loaded.classes == CLASSES and loaded.temperature == 1.5 and loaded.meta == profile.meta
    assert loaded.ood_choice == profile.ood_choice
    for name in ("logits", "pca_mean", "pca_components", "projected", "bank", "bank_labels"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(profile, name))
    for name, col in profile.image_stats.items():
        np.testing.assert_array_equal(loaded.image_stats[name], col)
    np.testing.assert_array_equal(loaded.mahalanobis.chol, profile.mahalanobis.chol)
    s0, f0 = profile.unknown(logits, feats)
    s1, f1 = loaded.unknown(logits, feats)
    np.testing.assert_allclose(s0, s1)
    assert (f0 == f1).all() and f0.mean() <= 0.02
    assert loaded.summary()["ood"]["score"] == profile.ood_choice.score


def test_missing_profile_is_none_and_damaged_ones_are_one_line_errors(tmp_path):
    assert load_reference(tmp_path) is None
    (tmp_path / REFERENCE_FILE).write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(BundleError, match="cannot be read") as err:
        load_reference(tmp_path)
    assert "\n" not in str(err.value) and REFERENCE_FILE in str(err.value)
    profile, _, _ = _profile()
    path = profile.save(tmp_path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # cut in the middle
    with pytest.raises(BundleError, match="cannot be read"):
        load_reference(tmp_path)
    profile.save(tmp_path)
    with np.load(path) as z:
        data = dict(z)
    data["logits"] = data["logits"][:, :2]  # inconsistent with three classes
    np.savez(path, **data)
    with pytest.raises(BundleError, match="inconsistent"):
        load_reference(tmp_path)


def test_bad_arrays_name_the_problem():
    logits, feats, _ = _arrays(30, 0)
    with pytest.raises(UserInputError, match="logits must be"):
        build_reference(logits[:, :2], feats, classes=CLASSES)
    with pytest.raises(UserInputError, match="features must be"):
        build_reference(logits, feats[:10], classes=CLASSES)
    with pytest.raises(UserInputError, match="NaN"):
        build_reference(np.where(logits > 0, np.nan, logits), feats, classes=CLASSES)
    with pytest.raises(UserInputError, match="bank labels"):
        build_reference(logits, feats, classes=CLASSES, bank_features=feats, bank_labels=np.zeros(3))
    profile, _, _ = _profile()
    with pytest.raises(UserInputError, match="dimensions"):
        profile.project(feats[:, :10])
