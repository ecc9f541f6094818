"""Open-set scores and the per-bundle chooser, on Gaussian clusters made here, against independent computations."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax as scipy_softmax
from sklearn.covariance import ledoit_wolf as sk_ledoit_wolf
from sklearn.metrics import roc_auc_score, roc_curve

from sightline.errors import UserInputError
from sightline.monitor.ood import (
    OODChoice,
    auroc,
    choose_score,
    default_k,
    energy_score,
    fit_mahalanobis,
    fpr_at_tpr,
    knn_score,
    ledoit_wolf,
    mahalanobis_score,
    msp_score,
    top_directions,
)

D, K = 24, 3


def _clusters(n_per: int, seed: int, *, centre_scale: float = 4.0, shift: np.ndarray | None = None):
    """K Gaussian classes in D dimensions (fixed centres), features and labels; a linear head gives logits."""
    centres = np.random.default_rng(123).normal(size=(K, D)) * centre_scale
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(K), n_per)
    x = centres[y] + rng.normal(size=(y.size, D))
    if shift is not None:
        x = x + shift
    return x, y


def _head(x: np.ndarray) -> np.ndarray:
    centres = np.random.default_rng(123).normal(size=(K, D)) * 4.0
    return x @ centres.T / 8.0


def test_msp_and_energy_match_their_definitions():
    logits = np.random.default_rng(0).normal(size=(50, K)) * 3
    np.testing.assert_allclose(msp_score(logits, 2.0), 1 - scipy_softmax(logits / 2.0, axis=1).max(1))
    np.testing.assert_allclose(energy_score(logits, 1.0), -np.log(np.exp(logits).sum(1)))


def test_knn_score_matches_brute_force_and_caps_k():
    rng = np.random.default_rng(1)
    bank, x = rng.normal(size=(300, 8)), rng.normal(size=(20, 8))
    k = default_k(300, 50)
    assert k == 3 and default_k(10_000, 50) == 50 and default_k(5, 50) == 1
    bn = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    brute = np.array([np.sort(np.linalg.norm(bn - row, axis=1))[k - 1] for row in xn])
    np.testing.assert_allclose(knn_score(x, bank, k=50, chunk=7), brute, rtol=1e-5)
    with pytest.raises(UserInputError, match="dimensions"):
        knn_score(x[:, :4], bank)


def test_ledoit_wolf_matches_scikit_learn():
    x = np.random.default_rng(2).normal(size=(40, 30)) @ np.random.default_rng(3).normal(size=(30, 30))
    x -= x.mean(0)
    cov, shrink = ledoit_wolf(x)
    sk_cov, sk_shrink = sk_ledoit_wolf(x, assume_centered=True)
    assert shrink == pytest.approx(sk_shrink)
    np.testing.assert_allclose(cov, sk_cov, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n", [10, 200])  # fewer and more rows than dimensions: both Gram paths
def test_top_directions_match_svd(n):
    x = np.random.default_rng(4).normal(size=(n, 40)) * np.linspace(3, 0.1, 40)
    x -= x.mean(0)
    vecs, var, total = top_directions(x, 5)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    np.testing.assert_allclose(np.abs(vecs.T @ vt[:5].T), np.eye(5), atol=1e-8)
    np.testing.assert_allclose(var, s[:5] ** 2 / n, rtol=1e-8)
    assert total == pytest.approx((s ** 2).sum() / n)


def test_mahalanobis_matches_a_direct_computation():
    x, y = _clusters(60, 0)
    model = fit_mahalanobis(x, y, K, max_dim=D)  # no reduction: basis spans everything
    z = x / np.linalg.norm(x, axis=1, keepdims=True)
    q, _ = _clusters(5, 9, shift=np.full(D, 1.0))
    qz = q / np.linalg.norm(q, axis=1, keepdims=True)
    # Direct: precisions from the stored Cholesky factors, distances in the original normalised space.
    basis = model.basis.astype(np.float64)
    prec = basis @ (model.chol @ model.chol.T) @ basis.T
    prec0 = basis @ (model.chol_background @ model.chol_background.T) @ basis.T
    means = model.mean + model.class_means.astype(np.float64) @ basis.T
    md = np.array([[(r - mu) @ prec @ (r - mu) for mu in means] for r in qz])
    md0 = np.array([(r - model.mean) @ prec0 @ (r - model.mean) for r in qz])
    np.testing.assert_allclose(mahalanobis_score(q, model), md.min(1) - md0, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(model.mean, z.mean(0), atol=1e-6)


def test_far_cluster_is_separated_by_feature_scores():
    train_x, train_y = _clusters(200, 0)
    val_x, _ = _clusters(60, 1)
    far_x, _ = _clusters(60, 2, shift=np.random.default_rng(7).normal(size=D) * 6)
    model = fit_mahalanobis(train_x, train_y, K)
    scorers = {"knn": lambda a: knn_score(a, train_x), "mahalanobis": lambda a: mahalanobis_score(a, model)}
    for name, fn in scorers.items():
        val_s, far_s = fn(val_x), fn(far_x)
        a = auroc(val_s, far_s)
        assert a > 0.95, name
        labels = np.r_[np.zeros(val_s.size), np.ones(far_s.size)]
        assert a == pytest.approx(roc_auc_score(labels, np.r_[val_s, far_s]))


def test_auroc_and_fpr_match_scikit_learn_with_ties():
    rng = np.random.default_rng(5)
    inside, outside = rng.integers(0, 6, 300).astype(float), rng.integers(2, 9, 200).astype(float)
    labels, scores = np.r_[np.zeros(300), np.ones(200)], np.r_[inside, outside]
    assert auroc(inside, outside) == pytest.approx(roc_auc_score(labels, scores))
    fpr, tpr, _ = roc_curve(labels, scores)
    assert fpr_at_tpr(inside, outside, 0.95) == pytest.approx(fpr[np.searchsorted(tpr, 0.95)])


def test_chooser_avoids_msp_when_outliers_are_confident():
    """Far outliers along a class direction get confident logits from a linear head: MSP fails there, the
    feature scores do not, and the chooser must see it."""
    train_x, train_y = _clusters(200, 0)
    val_x, _ = _clusters(100, 1)
    centres = np.random.default_rng(123).normal(size=(K, D)) * 4.0
    # Twice class 0's centre (twice as confident) plus an equally long part orthogonal to every centre (which
    # the head cannot see): on the unit sphere these point away from all training features.
    q, _ = np.linalg.qr(centres.T, mode="complete")
    away = np.random.default_rng(8).normal(size=(100, D - K)) @ q[:, K:].T
    away *= 2 * np.linalg.norm(centres[0]) / np.linalg.norm(away, axis=1, keepdims=True)
    out_x = 2 * centres[0] + away + np.random.default_rng(9).normal(size=(100, D))
    model = fit_mahalanobis(train_x, train_y, K)

    def scores(x):
        logits = _head(x)
        return {"msp": msp_score(logits), "energy": energy_score(logits), "knn": knn_score(x, train_x),
                "mahalanobis": mahalanobis_score(x, model)}

    choice = choose_score(scores(val_x), scores(out_x), quantile=0.99)
    assert choice.table["msp"]["auroc"] < 0.6  # the planted failure is real
    assert choice.score in ("knn", "mahalanobis") and choice.table[choice.score]["auroc"] > 0.95
    assert choice.table[choice.score]["chosen"] and sum(r["chosen"] for r in choice.table.values()) == 1
    for row in choice.table.values():  # 1 % of validation flagged by every threshold
        assert row["val_flag_rate"] <= 0.02
    assert choice.table[choice.score]["rejection_rate"] > 0.9
    assert OODChoice.from_json(choice.to_json()) == choice


def test_chooser_without_outliers_takes_the_default_and_rejects_bad_input():
    val = {"msp": np.linspace(0, 0.5, 100), "knn": np.linspace(0, 1, 100)}
    choice = choose_score(val, None)
    assert choice.score == "msp" and choice.chosen_by.startswith("default") and choice.table["knn"]["auroc"] is None
    assert choice.threshold == pytest.approx(np.quantile(val["msp"], 0.99))
    with pytest.raises(UserInputError, match="quantile"):
        choose_score(val, None, quantile=1.0)
    with pytest.raises(UserInputError, match="finite"):
        choose_score({"msp": np.array([0.1, np.nan])}, None)


# --- the prepared scorer the service uses: equal, to the bit, to the functions as they were ------------------------
def _previous_knn_score(features, bank, *, k=50, chunk=1024, bank_normalized=False):
    """`knn_score` as it was before `OpenSetScorer` (verbatim), the reference for equality."""
    from sightline.monitor.ood import l2_normalize

    feats = l2_normalize(features)
    bank = bank if bank_normalized else l2_normalize(bank)
    kk = default_k(bank.shape[0], k)
    out = np.empty(feats.shape[0], dtype=np.float64)
    for start in range(0, feats.shape[0], chunk):
        sims = feats[start:start + chunk] @ bank.T
        kth = np.partition(sims, sims.shape[1] - kk, axis=1)[:, sims.shape[1] - kk]
        out[start:start + chunk] = np.sqrt(np.clip(2.0 - 2.0 * kth.astype(np.float64), 0.0, None))
    return out


def _previous_mahalanobis_score(features, model):
    """`mahalanobis_score` as it was before `OpenSetScorer` (verbatim), the reference for equality."""
    from sightline.monitor.ood import l2_normalize

    z = l2_normalize(features).astype(np.float64)
    y = (z - model.mean) @ model.basis.astype(np.float64)
    chol = model.chol.astype(np.float64)
    means = model.class_means.astype(np.float64)
    means = means[~np.isnan(means).any(axis=1)]
    yw, mw = y @ chol, means @ chol
    md = (yw ** 2).sum(1)[:, None] - 2.0 * yw @ mw.T + (mw ** 2).sum(1)[None, :]
    md0 = ((y @ model.chol_background.astype(np.float64)) ** 2).sum(axis=1)
    return md.min(axis=1) - md0


@pytest.mark.parametrize("n", [1, 3, 16])  # the server's micro-batches
def test_prepared_scorer_equals_the_previous_functions_bit_for_bit(n):
    from sightline.monitor.ood import OpenSetScorer, l2_normalize

    x, y = _clusters(80, 0)
    x = np.abs(x).astype(np.float32)
    model = fit_mahalanobis(x, y, K + 1, max_dim=16)  # class K has no rows: a NaN mean row, left out
    bank16 = l2_normalize(x).astype(np.float16)  # as a profile stores it
    q = np.abs(_clusters(n, 5, shift=np.full(D, 0.5))[0][:n]).astype(np.float32)
    logits = _head(q).astype(np.float32)
    bank32 = bank16.astype(np.float32)
    want = {"msp": msp_score(logits, 1.7), "energy": energy_score(logits, 1.3),
            "knn": _previous_knn_score(q, bank32, bank_normalized=True),
            "mahalanobis": _previous_mahalanobis_score(q, model)}
    for name, expected in want.items():
        scorer = OpenSetScorer(name, temperature=1.7, energy_temperature=1.3, bank=bank16, mahalanobis=model)
        assert np.array_equal(scorer(logits, q), expected), name
        assert scorer.needs_features == (name in ("knn", "mahalanobis"))
    assert np.array_equal(knn_score(q, bank32, bank_normalized=True), want["knn"])
    assert np.array_equal(knn_score(q, x, k=7, chunk=2), _previous_knn_score(q, x, k=7, chunk=2))
    assert np.array_equal(mahalanobis_score(q, model), want["mahalanobis"])


def test_prepared_scorer_says_what_it_lacks():
    from sightline.monitor.ood import OpenSetScorer

    with pytest.raises(UserInputError, match="bank"):
        OpenSetScorer("knn")
    with pytest.raises(UserInputError, match="Gaussians"):
        OpenSetScorer("mahalanobis")
    with pytest.raises(UserInputError, match="unknown open-set score 'odin'"):
        OpenSetScorer("odin")
    with pytest.raises(UserInputError, match="needs the image features"):
        OpenSetScorer("knn", bank=np.eye(4, dtype=np.float16))(np.zeros((1, K)))
    with pytest.raises(UserInputError, match="dimensions"):
        OpenSetScorer("knn", bank=np.eye(4, dtype=np.float16))(np.zeros((1, K)), np.ones((1, 5)))
