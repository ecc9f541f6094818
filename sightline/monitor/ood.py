"""Open-set ("unknown") scores from one forward pass, and the per-bundle choice of which one to use.

Every score is oriented so that HIGHER = more out-of-distribution, one float per image:
  msp          1 - maximum calibrated softmax probability (Hendrycks & Gimpel 2017)
  energy       -T * logsumexp(logits / T) (Liu et al. 2020), T = 1 by default
  knn          distance from the L2-normalised feature to its k-th nearest neighbour in a bank of normalised
               training features (Sun et al. 2022, "Out-of-distribution detection with deep nearest neighbors");
               Euclidean on the unit sphere, i.e. sqrt(2 - 2 cos)
  mahalanobis  relative Mahalanobis distance (Ren et al. 2021): min over classes of the class-conditional
               distance minus the distance under one background Gaussian fitted to all training features

Published rankings of these flip between architectures (OpenOOD v1.5), so `choose_score` picks one per bundle:
in-distribution = validation images, stand-in outliers = whatever the caller can make (textures, noise, heavy
corruptions, other-domain photos), highest AUROC wins, threshold = a quantile of the validation scores.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.linalg import eigh
from scipy.special import logsumexp
from scipy.stats import rankdata

from sightline.decision import softmax
from sightline.errors import UserInputError

__all__ = ["SCORES", "l2_normalize", "top_directions", "msp_score", "energy_score", "default_k", "knn_score",
           "ledoit_wolf", "Mahalanobis", "fit_mahalanobis", "mahalanobis_score", "OpenSetScorer", "auroc", "fpr_at_tpr",
           "OODChoice", "choose_score"]

SCORES = ("msp", "energy", "knn", "mahalanobis")  # also the tie-break order in `choose_score`: simplest first


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """(N, D) rows scaled to unit length, float32; all-zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def top_directions(centred: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray, float]:
    """The top `d` principal directions of (N, D) centred rows: ((D, d) unit columns, (d,) variances along them,
    total variance). An eigendecomposition of the smaller of the two Gram matrices (D x D or N x N), computing
    only the top d eigenpairs; each direction's sign is fixed (largest absolute loading positive)."""
    x = np.asarray(centred, dtype=np.float64)
    n, dim = x.shape
    d = int(min(d, n, dim))
    total = float(np.sum(x * x) / n)
    small = x.T @ x if n >= dim else x @ x.T
    vals, vecs = eigh(small, subset_by_index=[small.shape[0] - d, small.shape[0] - 1])
    vals, vecs = np.maximum(vals[::-1], 0.0), vecs[:, ::-1]
    if n < dim:  # eigenvectors of x x^T -> directions x^T u / ||x^T u||
        vecs = x.T @ vecs
        vecs /= np.maximum(np.linalg.norm(vecs, axis=0, keepdims=True), 1e-12)
    signs = np.sign(vecs[np.abs(vecs).argmax(axis=0), np.arange(d)])
    return vecs * np.where(signs == 0, 1.0, signs), vals / n, total


def msp_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """(N,) 1 - max softmax(logits / temperature) for (N, K) logits; use the bundle's calibration temperature."""
    return 1.0 - softmax(logits, temperature).max(axis=1)


def energy_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """(N,) free energy -T * logsumexp(logits / T) of (N, K) logits (higher = more out-of-distribution)."""
    z = np.asarray(logits, dtype=np.float64)
    return -temperature * logsumexp(z / temperature, axis=1)


def default_k(bank_size: int, k: int = 50) -> int:
    """The neighbour rank used for a bank of `bank_size` rows: `k`, but at most 1 % of the bank (at least 1).
    Sun et al. scale k with the bank (k = 50 for CIFAR-10's 50,000 images); a k close to a class's size would
    measure the distance to the far side of the class instead of to the nearest training images."""
    return int(max(1, min(k, bank_size // 100)))


def knn_score(features: np.ndarray, bank: np.ndarray, *, k: int = 50, chunk: int = 1024,
              bank_normalized: bool = False) -> np.ndarray:
    """(N,) distance from each of (N, D) features to its k-th nearest neighbour among (M, D) `bank` rows.

    Both are L2-normalised here; pass `bank_normalized=True` for a float32 bank already normalised (a
    `ReferenceProfile`'s), which saves normalising M x D floats per call. k is capped by `default_k(M, k)`.
    Memory: `chunk` x M floats at a time."""
    bank = bank if bank_normalized else l2_normalize(bank)
    return _kth_distance(l2_normalize(features), bank, default_k(bank.shape[0], k), chunk)


def _kth_distance(feats: np.ndarray, bank: np.ndarray, kk: int, chunk: int = 1024) -> np.ndarray:
    """(N,) Euclidean distance on the unit sphere from each normalised row of `feats` to its `kk`-th nearest row
    of the normalised float32 `bank`: one (chunk, M) product and one partial sort per chunk of rows."""
    if feats.shape[1] != bank.shape[1]:
        raise UserInputError(f"features have {feats.shape[1]} dimensions but the k-NN bank has {bank.shape[1]}; "
                             "rebuild the reference profile with this model")
    if bank.shape[0] == 0:
        raise UserInputError("the k-NN bank is empty; rebuild the reference profile with training features")
    out = np.empty(feats.shape[0], dtype=np.float64)
    for start in range(0, feats.shape[0], chunk):
        sims = feats[start:start + chunk] @ bank.T  # (c, M) cosine similarities
        kth = np.partition(sims, sims.shape[1] - kk, axis=1)[:, sims.shape[1] - kk]  # k-th largest
        out[start:start + chunk] = np.sqrt(np.clip(2.0 - 2.0 * kth.astype(np.float64), 0.0, None))
    return out


def ledoit_wolf(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit-Wolf shrunk covariance of (N, d) rows already centred: ((d, d) covariance, shrinkage in [0, 1]).

    (1 - s) * S + s * trace(S) / d * I with the shrinkage s of Ledoit & Wolf (2004), as scikit-learn's
    `ledoit_wolf(assume_centered=True)`. Keeps the covariance invertible when N is not much larger than d."""
    x = np.asarray(x, dtype=np.float64)
    n, d = x.shape
    emp = x.T @ x / n
    mu = np.trace(emp) / d
    x2 = x ** 2
    beta_ = float(np.sum(x2.T @ x2))
    delta_ = float(np.sum(emp ** 2))  # ||S||_F^2
    beta = (beta_ / n - delta_) / (d * n)
    delta = (delta_ - 2.0 * mu * np.trace(emp) + d * mu ** 2) / d
    beta = min(beta, delta)
    shrink = 0.0 if beta == 0 else beta / delta
    cov = (1.0 - shrink) * emp
    cov.flat[:: d + 1] += shrink * mu
    return cov, float(shrink)


@dataclass
class Mahalanobis:
    """Gaussians fitted to normalised training features in their top principal directions (arrays float32)."""

    mean: np.ndarray  # (D,) mean of the normalised training features
    basis: np.ndarray  # (D, d) principal directions, columns
    class_means: np.ndarray  # (K, d) per-class means in the basis; NaN rows for classes without training rows
    chol: np.ndarray  # (d, d) Cholesky factor L of the shared within-class precision (precision = L @ L.T)
    chol_background: np.ndarray  # (d, d) same for the one background Gaussian (mean 0 in the basis)


def fit_mahalanobis(features: np.ndarray, labels: np.ndarray, n_classes: int, *, max_dim: int = 128) -> Mahalanobis:
    """Fit the class-conditional Gaussians (shared covariance) and the background Gaussian of relative
    Mahalanobis on (N, D) training features and their (N,) integer labels in [0, n_classes).

    The features are L2-normalised and projected on their top `max_dim` principal directions first (d =
    min(max_dim, D, N - 1)): with a few hundred or thousand training images a full D x D covariance is not
    estimable, and Ledoit-Wolf shrinkage keeps the d x d ones invertible."""
    z = l2_normalize(features).astype(np.float64)
    labels = np.asarray(labels).astype(np.int64)
    if z.shape[0] != labels.shape[0]:
        raise UserInputError(f"{z.shape[0]} feature rows but {labels.shape[0]} labels for relative Mahalanobis")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise UserInputError(f"labels must lie in [0, {n_classes}) for relative Mahalanobis")
    if z.shape[0] < 3:
        raise UserInputError(f"relative Mahalanobis needs at least 3 training rows, got {z.shape[0]}")
    mean = z.mean(axis=0)
    zc = z - mean
    basis = top_directions(zc, min(max_dim, z.shape[0] - 1))[0]
    d = basis.shape[1]
    y = zc @ basis
    class_means = np.full((n_classes, d), np.nan)
    within = np.empty_like(y)
    for c in range(n_classes):
        rows = labels == c
        if rows.any():
            class_means[c] = y[rows].mean(axis=0)
            within[rows] = y[rows] - class_means[c]
    chol = np.linalg.cholesky(np.linalg.inv(ledoit_wolf(within)[0]))
    chol_bg = np.linalg.cholesky(np.linalg.inv(ledoit_wolf(y)[0]))
    f32 = np.float32
    return Mahalanobis(mean.astype(f32), basis.astype(f32), class_means.astype(f32), chol.astype(f32),
                       chol_bg.astype(f32))


def mahalanobis_score(features: np.ndarray, model: Mahalanobis) -> np.ndarray:
    """(N,) relative Mahalanobis distance min_k [MD_k(x) - MD_0(x)] of (N, D) features."""
    return _relative_mahalanobis(features, _whiten(model))


@dataclass(frozen=True)
class _Whitened:
    """A `Mahalanobis` in float64, its class means whitened: what each scoring call would otherwise convert."""

    mean: np.ndarray  # (D,)
    basis: np.ndarray  # (D, d)
    chol: np.ndarray  # (d, d)
    class_means: np.ndarray  # (K', d) whitened means of the classes that had training rows
    class_norms: np.ndarray  # (1, K') their squared norms
    chol_background: np.ndarray  # (d, d)


def _whiten(model: Mahalanobis) -> _Whitened:
    chol = model.chol.astype(np.float64)
    means = model.class_means.astype(np.float64)
    means = means[~np.isnan(means).any(axis=1)]
    mw = means @ chol
    return _Whitened(model.mean.astype(np.float64), model.basis.astype(np.float64), chol, mw,
                     (mw ** 2).sum(1)[None, :], model.chol_background.astype(np.float64))


def _relative_mahalanobis(features: np.ndarray, w: _Whitened) -> np.ndarray:
    z = l2_normalize(features).astype(np.float64)
    if z.shape[1] != w.mean.shape[0]:
        raise UserInputError(f"features have {z.shape[1]} dimensions but the Mahalanobis model has "
                             f"{w.mean.shape[0]}; rebuild the reference profile with this model")
    y = (z - w.mean) @ w.basis
    yw = y @ w.chol  # whitened: MD_k = ||yw - mw_k||^2
    md = (yw ** 2).sum(1)[:, None] - 2.0 * yw @ w.class_means.T + w.class_norms
    md0 = ((y @ w.chol_background) ** 2).sum(axis=1)
    return md.min(axis=1) - md0


class OpenSetScorer:
    """One open-set score prepared for many calls (the service scores every micro-batch): what the score reads is
    converted once, not per call (the k-NN bank widened to float32 from its stored float16; the Mahalanobis
    matrices to float64, the class means whitened). Returns what `msp_score`, `energy_score`, `knn_score` (bank
    normalised) and `mahalanobis_score` return, to the bit: they share the arithmetic.

    Example:
        >>> scorer = OpenSetScorer("knn", bank=profile.bank)
        >>> scores = scorer(logits, features)              # (N,), higher = more out-of-distribution
    """

    def __init__(self, name: str, *, temperature: float = 1.0, energy_temperature: float = 1.0,
                 bank: np.ndarray | None = None, mahalanobis: Mahalanobis | None = None, k: int = 50) -> None:
        """`bank`: (M, D) L2-normalised training features (a profile's, any float dtype) for "knn"; `mahalanobis`
        for "mahalanobis"; the temperatures for "msp" and "energy". UserInputError when what the score needs is
        missing."""
        if name not in SCORES:
            raise UserInputError(f"unknown open-set score {name!r}; use one of {', '.join(SCORES)}")
        self.name = name
        self.temperature = float(temperature)
        self.energy_temperature = float(energy_temperature)
        self._bank: np.ndarray | None = None
        self._whitened: _Whitened | None = None
        if name == "knn":
            if bank is None:
                raise UserInputError("the k-NN open-set score needs the profile's bank of training features; "
                                     "rebuild the reference profile with them")
            self._bank = np.asarray(bank, dtype=np.float32)
            self._k = default_k(self._bank.shape[0], k)
        elif name == "mahalanobis":
            if mahalanobis is None:
                raise UserInputError("the relative Mahalanobis open-set score needs the profile's Gaussians; "
                                     "rebuild the reference profile with labelled training features")
            self._whitened = _whiten(mahalanobis)

    @property
    def needs_features(self) -> bool:
        return self.name in ("knn", "mahalanobis")

    def __call__(self, logits: np.ndarray, features: np.ndarray | None = None) -> np.ndarray:
        """(N,) scores of (N, K) logits and (N, D) features (float64)."""
        if self.name == "msp":
            return msp_score(logits, self.temperature)
        if self.name == "energy":
            return energy_score(logits, self.energy_temperature)
        if features is None:
            raise UserInputError(f"the open-set score {self.name!r} needs the image features; pass them")
        if self._bank is not None:
            return _kth_distance(l2_normalize(features), self._bank, self._k)
        assert self._whitened is not None
        return _relative_mahalanobis(features, self._whitened)


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """Area under the ROC curve for telling outliers (positives) from in-distribution by a higher score; ties
    count one half (the Mann-Whitney U statistic, as scikit-learn's roc_auc_score)."""
    a, b = np.asarray(in_scores, np.float64), np.asarray(out_scores, np.float64)
    ranks = rankdata(np.concatenate([b, a]))
    u = ranks[: b.size].sum() - b.size * (b.size + 1) / 2.0
    return float(u / (a.size * b.size))


def fpr_at_tpr(in_scores: np.ndarray, out_scores: np.ndarray, tpr: float = 0.95) -> float:
    """Fraction of in-distribution images flagged by the highest threshold that flags at least `tpr` of the
    outliers (flagged = score >= threshold)."""
    out = np.sort(np.asarray(out_scores, np.float64))[::-1]
    need = int(np.ceil(tpr * out.size - 1e-9))
    threshold = out[max(need, 1) - 1]
    return float(np.mean(np.asarray(in_scores) >= threshold))


@dataclass
class OODChoice:
    """Which score a bundle uses for "unknown", its threshold, and how every candidate did (JSON-able)."""

    score: str  # the chosen score's name (one of SCORES)
    threshold: float  # flag an image as unknown when its score is above this
    quantile: float  # the validation quantile the threshold sits at (0.99: 1 % of validation images flagged)
    chosen_by: str  # "auroc" or why the default was taken
    n_in: int  # validation images
    n_out: int  # stand-in outliers
    table: dict[str, dict[str, Any]] = field(default_factory=dict)  # {score: {auroc, fpr_at_95_tpr, threshold,
    # rejection_rate (outliers flagged), val_flag_rate (validation images flagged), chosen}}

    @property
    def val_flag_rate(self) -> float:
        return float(self.table[self.score]["val_flag_rate"])

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> OODChoice:
        return cls(**{k: data[k] for k in ("score", "threshold", "quantile", "chosen_by", "n_in", "n_out")},
                   table={k: dict(v) for k, v in data.get("table", {}).items()})


def choose_score(
    in_scores: Mapping[str, np.ndarray],
    out_scores: Mapping[str, np.ndarray] | None = None,
    *,
    quantile: float = 0.99,
    default: str = "msp",
) -> OODChoice:
    """Pick the open-set score with the highest AUROC and set its threshold at `quantile` of validation.

    `in_scores` {name: (N,)} on validation images; `out_scores` {name: (M,)} on stand-in outliers, same names.
    The threshold of every score is the `quantile` of its validation scores, so about (1 - quantile) of
    in-distribution images are flagged. Ties in AUROC go to the earlier name in SCORES (the simpler score).
    Without outliers (or with fewer than 2) the `default` score is taken and no AUROC is reported. The AUROC that
    chose a score is optimistic as an estimate; report it on other outliers when the figure matters."""
    if not 0.5 <= quantile < 1.0:
        raise UserInputError(f"the open-set quantile must lie in [0.5, 1), got {quantile}")
    names = [n for n in SCORES if n in in_scores] + [n for n in in_scores if n not in SCORES]
    if not names:
        raise UserInputError("no open-set scores were given to choose from")
    usable = out_scores is not None and all(n in out_scores for n in names) and \
        min(np.asarray(out_scores[n]).size for n in names) >= 2
    table: dict[str, dict[str, Any]] = {}
    for name in names:
        val = np.asarray(in_scores[name], dtype=np.float64)
        if val.size < 2 or not np.isfinite(val).all():
            raise UserInputError(f"open-set score {name!r}: need at least 2 finite validation scores")
        threshold = float(np.quantile(val, quantile))
        row: dict[str, Any] = {"threshold": threshold, "val_flag_rate": float(np.mean(val > threshold)),
                               "auroc": None, "fpr_at_95_tpr": None, "rejection_rate": None, "chosen": False}
        if usable:
            out = np.asarray(out_scores[name], dtype=np.float64)
            row.update(auroc=auroc(val, out), fpr_at_95_tpr=fpr_at_tpr(val, out, 0.95),
                       rejection_rate=float(np.mean(out > threshold)))
        table[name] = row
    if usable:
        chosen = max(names, key=lambda n: (table[n]["auroc"], -names.index(n)))
        chosen_by = "auroc"
    else:
        chosen = default if default in table else names[0]
        chosen_by = "default: no stand-in outliers were given"
    table[chosen]["chosen"] = True
    n_out = int(np.asarray(out_scores[names[0]]).size) if usable else 0
    return OODChoice(score=chosen, threshold=table[chosen]["threshold"], quantile=quantile, chosen_by=chosen_by,
                     n_in=int(np.asarray(in_scores[names[0]]).size), n_out=n_out, table=table)
