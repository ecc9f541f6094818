"""The reference profile: what the monitor compares production windows against, one file in the bundle.

Built from the validation split (calibrated outputs, features, image statistics) plus a bank of training
features for the k-NN open-set score, and the image statistics of those training images:

    profile = build_reference(val_logits, val_features, classes=bundle.classes, temperature=bundle.temperature,
                              image_stats=[image_stats(im, path) for ...], bank_features=train_features,
                              bank_labels=train_labels, train_image_stats=[image_stats(im, path) for ...])
    profile.fit_ood(val_logits, val_features, outlier_logits, outlier_features)   # chooses the "unknown" score
    profile.save(bundle.path)            # -> bundle/reference.npz
    profile = load_reference(bundle.path)  # None when the bundle has none

The PCA basis is fitted on the training features (the bank's source), never on the images it projects for the
reference: a basis fitted on a sample captures that sample's own noise, so the sample looks more spread along it
than fresh images do, and the MMD test would flag clean windows (seen as p < 0.01 on pure noise, 2,000 x 1,280).
Without training features the validation split is halved: one half fits the basis, the other is projected.

Image statistics are the one part of the reference that the training images describe without bias: the model's
outputs on images it was trained on are more confident and its features tighter than on new images (used as a
reference, they flag every clean window: 100 % at 200 images on the hymenoptera bundle of benchmarks/drift_power.py),
but an image's brightness or sharpness does not depend on the model. So the image-statistics test compares a window
with validation AND the training sample (`stats_reference`): 76 + 97 images instead of 76 on that bundle, which took
the detection of a 15-degree rotation at windows of 200 from 7 % to 100 % with no clean window flagged.

Sizes: logits (N, K) float32, projected features (N', C) float16 with C <= 32, the k-NN bank (M, D) float16 with
M <= 5,000 (12.8 MB at D = 1,280), Mahalanobis matrices d x d float32 with d <= 128, the stand-in outliers' outputs
(about 350 x K float32 logits, 350 x D float16 features: 0.9 MB at D = 1,280).

A refresh (new temperature, new threshold quantile, new validation outputs of the same model) needs the model's
outputs on nothing but validation: `refresh_reference` keeps the stored training side (PCA basis, k-NN bank,
Mahalanobis), and `OutlierOutputs` keeps the stand-in outliers' outputs for `fit_ood`. `fingerprint` says what
those were computed from (model weights, preprocessing, which files), so a caller can tell whether they still
hold; files written before these entries load with `outliers=None` and `fingerprint={}`.
"""
from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import numpy as np

from sightline.decision import softmax
from sightline.errors import BundleError, UserInputError
from sightline.monitor import ood
from sightline.monitor.stats import stats_columns

__all__ = ["REFERENCE_FILE", "FORMAT_VERSION", "ReferenceProfile", "OutlierOutputs", "fit_pca", "build_reference",
           "refresh_reference", "load_reference"]

REFERENCE_FILE = "reference.npz"
FORMAT_VERSION = 1


def fit_pca(features: np.ndarray, *, max_components: int = 32, variance: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """PCA of (N, D) features after L2 normalisation: ((D,) mean, (D, C) components as columns, float32).

    C = the fewest components that explain `variance` of the variance, at most `max_components` (and at most
    N - 1 and D). Each component's sign is fixed (largest absolute loading positive) so a refit is comparable."""
    z = ood.l2_normalize(features).astype(np.float64)
    n = z.shape[0]
    if n < 2:
        raise UserInputError(f"the PCA basis needs at least 2 feature rows, got {n}")
    mean = z.mean(axis=0)
    comps, var, total = ood.top_directions(z - mean, min(max_components, n - 1))
    reach = int(np.searchsorted(np.cumsum(var) / total, variance) + 1) if total > 0 else 1
    c = max(1, min(reach, comps.shape[1]))
    return mean.astype(np.float32), comps[:, :c].astype(np.float32)


@dataclass
class OutlierOutputs:
    """The model's outputs on the stand-in outliers the open-set score was chosen on; row i is `kinds[i]` of
    `families[i]` (see sightline.evaluate.outliers). Kept in the profile so a refresh refits without the model."""

    logits: np.ndarray  # (M, K) float32
    features: np.ndarray | None  # (M, D) float16 pooled features, L2-normalised as every feature score takes
    # them (raw ones can overflow float16); None: the model gave none
    families: list[str] = field(default_factory=list)  # "synthetic" | "corruption" | "photo"
    kinds: list[str] = field(default_factory=list)  # e.g. "stripes", "blur", "coffee"
    notes: list[str] = field(default_factory=list)  # why a family is smaller or missing

    def __len__(self) -> int:
        return int(self.logits.shape[0])

    @property
    def features32(self) -> np.ndarray | None:
        """(M, D) float32 features, as the open-set scores take them."""
        return None if self.features is None else self.features.astype(np.float32)


@dataclass
class ReferenceProfile:
    """Arrays describing in-distribution data; row i of logits / image_stats is one validation image."""

    classes: list[str]
    temperature: float  # the bundle's calibration temperature when the profile was built
    logits: np.ndarray  # (N, K) float32 validation logits
    pca_mean: np.ndarray  # (D,) float32
    pca_components: np.ndarray  # (D, C) float32
    projected: np.ndarray  # (N', C) float16 validation features, normalised and projected (N' = N, or about
    # N / 2 when the basis had to be fitted on the other half; see the module docstring)
    image_stats: dict[str, np.ndarray] = field(default_factory=dict)  # column -> (N,) (see monitor.stats)
    train_image_stats: dict[str, np.ndarray] = field(default_factory=dict)  # column -> (M,) of the bank's images
    # ({} in older files and without a training side)
    bank: np.ndarray | None = None  # (M, D) float16 normalised training features for the k-NN score
    bank_labels: np.ndarray | None = None  # (M,) int16 training labels of the bank rows
    mahalanobis: ood.Mahalanobis | None = None
    ood_choice: ood.OODChoice | None = None  # the chosen open-set score and its threshold (None: no "unknown")
    energy_temperature: float = 1.0
    meta: dict[str, Any] = field(default_factory=dict)  # free JSON-able notes (split, sizes, created, ...)
    outliers: OutlierOutputs | None = None  # the stand-in outliers' outputs fit_ood chose on (None: not kept)
    fingerprint: dict[str, Any] = field(default_factory=dict)  # what the bank and `outliers` were computed from
    # (model weights, preprocessing, files; JSON-able, compared as a whole by the builder); {} in older files
    _bank32: np.ndarray | None = field(default=None, repr=False, compare=False)
    _stats_ref: dict[str, np.ndarray] | None = field(default=None, init=False, repr=False, compare=False)

    # --- derived ------------------------------------------------------------------------------------------
    @property
    def probabilities(self) -> np.ndarray:
        """(N, K) calibrated validation probabilities (softmax of logits / temperature)."""
        return softmax(self.logits, self.temperature)

    @property
    def predicted(self) -> np.ndarray:
        """(N,) predicted class index of each validation image (arg-max, as the class mix is counted)."""
        return self.probabilities.argmax(axis=1)

    @property
    def class_mix(self) -> dict[str, int]:
        counts = np.bincount(self.predicted, minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts)}

    @property
    def stats_reference(self) -> dict[str, np.ndarray]:
        """The image statistics a window is tested against: validation's and the training sample's, one column
        per statistic (validation's alone for a statistic the training side lacks: an older file)."""
        if self._stats_ref is None:
            train = self.train_image_stats
            self._stats_ref = {name: np.concatenate([col, train[name]]) if name in train else col
                               for name, col in self.image_stats.items()}
        return self._stats_ref

    def keep_train_stats(self, names: Sequence[str]) -> None:
        """Keep only the training sample's statistics `names` (the others are tested against validation alone)."""
        self.train_image_stats = {k: v for k, v in self.train_image_stats.items() if k in set(names)}
        self._stats_ref = None

    def project(self, features: np.ndarray) -> np.ndarray:
        """(N, D) raw features -> (N, C) float32: L2-normalised, centred, projected on the PCA basis."""
        z = ood.l2_normalize(features)
        if z.shape[1] != self.pca_mean.shape[0]:
            raise UserInputError(f"features have {z.shape[1]} dimensions but the reference profile has "
                                 f"{self.pca_mean.shape[0]}; rebuild the profile with this model")
        return (z - self.pca_mean) @ self.pca_components

    def ood_scores(self, logits: np.ndarray, features: np.ndarray | None = None,
                   names: Sequence[str] = ood.SCORES) -> dict[str, np.ndarray]:
        """The open-set scores in `names` this profile can compute from (N, K) logits and (N, D) features,
        {name: (N,)}, higher = more out-of-distribution."""
        scores = {}
        if "msp" in names:
            scores["msp"] = ood.msp_score(logits, self.temperature)
        if "energy" in names:
            scores["energy"] = ood.energy_score(logits, self.energy_temperature)
        if "knn" in names and features is not None and self.bank is not None:
            if self._bank32 is None:  # stored normalised in float16; widened once
                self._bank32 = self.bank.astype(np.float32)
            scores["knn"] = ood.knn_score(features, self._bank32, bank_normalized=True)
        if "mahalanobis" in names and features is not None and self.mahalanobis is not None:
            scores["mahalanobis"] = ood.mahalanobis_score(features, self.mahalanobis)
        return scores

    def unknown(self, logits: np.ndarray, features: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """((N,) chosen open-set score, (N,) bool unknown flag). Without a chosen score: NaN scores, no flags."""
        n = np.asarray(logits).shape[0]
        if self.ood_choice is None:
            return np.full(n, np.nan), np.zeros(n, dtype=bool)
        scores = self.ood_scores(logits, features, names=(self.ood_choice.score,))
        if self.ood_choice.score not in scores:
            raise UserInputError(f"the profile's open-set score {self.ood_choice.score!r} needs the image features; "
                                 "pass them")
        s = scores[self.ood_choice.score]
        return s, s > self.ood_choice.threshold

    def fit_ood(
        self,
        val_logits: np.ndarray,
        val_features: np.ndarray | None,
        outlier_logits: np.ndarray | None = None,
        outlier_features: np.ndarray | None = None,
        *,
        quantile: float = 0.99,
    ) -> ood.OODChoice:
        """Choose this profile's open-set score on validation vs stand-in outliers (see `ood.choose_score`),
        store it in `self.ood_choice` and return it."""
        inside = self.ood_scores(val_logits, val_features)
        outside = self.ood_scores(outlier_logits, outlier_features) if outlier_logits is not None else None
        self.ood_choice = ood.choose_score(inside, outside, quantile=quantile)
        return self.ood_choice

    def summary(self) -> dict[str, Any]:
        """A small JSON-able description (for model.json or a report)."""
        return {
            "file": REFERENCE_FILE,
            "n_images": int(self.logits.shape[0]),
            "feature_dim": int(self.pca_mean.shape[0]),
            "components": int(self.pca_components.shape[1]),
            "bank_size": int(self.bank.shape[0]) if self.bank is not None else 0,
            "image_stats": sorted(self.image_stats),
            "image_stats_train": int(len(next(iter(self.train_image_stats.values())))) if self.train_image_stats
            else 0,
            "class_mix": self.class_mix,
            "ood": None if self.ood_choice is None else {
                "score": self.ood_choice.score, "threshold": self.ood_choice.threshold,
                "quantile": self.ood_choice.quantile},
        }

    # --- files --------------------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write `folder/reference.npz` atomically (a temporary file, then a rename) and return its path."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        header = {"format_version": FORMAT_VERSION, "classes": self.classes, "temperature": self.temperature,
                  "energy_temperature": self.energy_temperature, "meta": self.meta,
                  "ood": None if self.ood_choice is None else self.ood_choice.to_json(),
                  "image_stats": sorted(self.image_stats), "train_image_stats": sorted(self.train_image_stats),
                  "fingerprint": self.fingerprint}
        o = self.outliers
        if o is not None:
            header["outliers"] = {"families": o.families, "kinds": o.kinds, "notes": o.notes}
        arrays: dict[str, np.ndarray] = {
            "header": np.array(json.dumps(header)),
            "logits": self.logits.astype(np.float32),
            "pca_mean": self.pca_mean.astype(np.float32),
            "pca_components": self.pca_components.astype(np.float32),
            "projected": self.projected.astype(np.float16),
        }
        for name, col in self.image_stats.items():
            arrays[f"stat_{name}"] = col
        for name, col in self.train_image_stats.items():
            arrays[f"train_stat_{name}"] = col
        if self.bank is not None:
            arrays["bank"] = self.bank.astype(np.float16)
            if self.bank_labels is not None:
                arrays["bank_labels"] = self.bank_labels.astype(np.int16)
        if self.mahalanobis is not None:
            for name, value in vars(self.mahalanobis).items():
                arrays[f"maha_{name}"] = value
        if o is not None:
            arrays["outlier_logits"] = o.logits.astype(np.float32)
            if o.features is not None:
                arrays["outlier_features"] = o.features.astype(np.float16)
        path = folder / REFERENCE_FILE
        tmp = folder / (REFERENCE_FILE + ".tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        tmp.replace(path)
        return path


def build_reference(
    logits: np.ndarray,
    features: np.ndarray,
    *,
    classes: Sequence[str],
    temperature: float = 1.0,
    image_stats: Sequence[dict[str, Any]] | None = None,
    bank_features: np.ndarray | None = None,
    bank_labels: np.ndarray | None = None,
    max_components: int = 32,
    variance: float = 0.95,
    bank_size: int = 5000,
    seed: int = 0,
    meta: dict[str, Any] | None = None,
    train_image_stats: Sequence[dict[str, Any]] | None = None,
) -> ReferenceProfile:
    """A profile from validation (N, K) logits and (N, D) pooled features, optional per-image statistics
    (N dicts from `monitor.stats.image_stats`) and an optional bank of (M, D) training features with (M,) labels
    and the M training images' statistics (`train_image_stats`, row i = bank row i).

    The bank is subsampled to `bank_size` rows (seeded, stratified by label when labels are given); the PCA basis
    and, with labels, relative Mahalanobis are fitted on those rows. Without a bank the basis is fitted on half
    of validation (see the module docstring). No open-set score is chosen here: call `fit_ood`."""
    logits, features = _validation_arrays(logits, features, classes, image_stats)
    n = logits.shape[0]
    bank = labels = maha = None
    if bank_features is not None:
        bank_features = np.asarray(bank_features, dtype=np.float32)
        if bank_features.ndim != 2 or bank_features.shape[1] != features.shape[1]:
            raise UserInputError(f"bank features must be (M, {features.shape[1]}), got {bank_features.shape}")
        if bank_labels is not None:
            bank_labels = np.asarray(bank_labels)
            if bank_labels.shape != (bank_features.shape[0],):
                raise UserInputError(f"bank labels must be ({bank_features.shape[0]},) like the bank features, "
                                     f"got {bank_labels.shape}")
        if train_image_stats is not None and len(train_image_stats) != bank_features.shape[0]:
            raise UserInputError(f"{len(train_image_stats)} training image statistics for {bank_features.shape[0]} "
                                 "bank rows")
        keep = _subsample(bank_features.shape[0], bank_size, bank_labels, seed)
        bank_features = bank_features[keep]
        bank_labels = None if bank_labels is None else bank_labels[keep]
        train_image_stats = None if train_image_stats is None else [train_image_stats[i] for i in keep]
    if bank_features is not None and bank_features.shape[0] >= 2:
        mean, comps = fit_pca(bank_features, max_components=max_components, variance=variance)
        to_project, pca_fit = features, "training"
    else:
        half = np.random.default_rng(seed).permutation(n)
        if n < 4:
            raise UserInputError(f"the reference needs at least 4 validation images without training features, got {n}")
        mean, comps = fit_pca(features[half[: n // 2]], max_components=max_components, variance=variance)
        to_project, pca_fit = features[np.sort(half[n // 2:])], "validation half"
    projected = ((ood.l2_normalize(to_project) - mean) @ comps).astype(np.float16)
    if bank_features is not None:
        if bank_labels is not None:
            maha = ood.fit_mahalanobis(bank_features, bank_labels, len(classes))
        bank = ood.l2_normalize(bank_features).astype(np.float16)
        labels = None if bank_labels is None else bank_labels.astype(np.int16)
    return ReferenceProfile(
        classes=list(classes), temperature=float(temperature), logits=logits, pca_mean=mean, pca_components=comps,
        projected=projected, image_stats=stats_columns(list(image_stats)) if image_stats else {}, bank=bank,
        bank_labels=labels, mahalanobis=maha, meta={"pca_fit": pca_fit, **(meta or {})},
        train_image_stats=stats_columns(train_image_stats) if bank is not None and train_image_stats else {},
    )


def refresh_reference(
    stored: ReferenceProfile,
    logits: np.ndarray,
    features: np.ndarray,
    *,
    temperature: float = 1.0,
    image_stats: Sequence[dict[str, Any]] | None = None,
    meta: dict[str, Any] | None = None,
) -> ReferenceProfile:
    """A profile of new validation (N, K) logits, (N, D) features and image statistics on the training side of
    `stored` (its PCA basis, k-NN bank and Mahalanobis model, which depend only on the training features): what
    `build_reference` gives with the training features `stored` was built from, without them (the training images'
    statistics are kept too). `stored` must hold
    a bank (a profile fitted on half of validation has no training side to keep: use `build_reference`).
    `outliers` and `fingerprint` are carried over; no open-set score is chosen here: call `fit_ood`."""
    if stored.bank is None:
        raise UserInputError("the stored reference profile has no k-NN bank (its PCA basis was fitted on validation); "
                             "build the profile again with build_reference")
    logits, features = _validation_arrays(logits, features, stored.classes, image_stats)
    if features.shape[1] != stored.pca_mean.shape[0]:
        raise UserInputError(f"features have {features.shape[1]} dimensions but the stored profile has "
                             f"{stored.pca_mean.shape[0]}; build the profile again with this model")
    projected = ((ood.l2_normalize(features) - stored.pca_mean) @ stored.pca_components).astype(np.float16)
    return ReferenceProfile(
        classes=list(stored.classes), temperature=float(temperature), logits=logits, pca_mean=stored.pca_mean,
        pca_components=stored.pca_components, projected=projected,
        image_stats=stats_columns(list(image_stats)) if image_stats else {},
        train_image_stats=dict(stored.train_image_stats), bank=stored.bank,
        bank_labels=stored.bank_labels, mahalanobis=stored.mahalanobis, energy_temperature=stored.energy_temperature,
        meta={"pca_fit": stored.meta.get("pca_fit", "training"), **(meta or {})}, outliers=stored.outliers,
        fingerprint=dict(stored.fingerprint),
    )


def _validation_arrays(logits: np.ndarray, features: np.ndarray, classes: Sequence[str],
                       image_stats: Sequence[dict[str, Any]] | None) -> tuple[np.ndarray, np.ndarray]:
    """(N, K) logits and (N, D) features as float32, checked against each other, the classes and the statistics."""
    logits = np.asarray(logits, dtype=np.float32)
    features = np.asarray(features, dtype=np.float32)
    n, k = logits.shape if logits.ndim == 2 else (-1, -1)
    if logits.ndim != 2 or k != len(classes):
        raise UserInputError(f"logits must be (N, {len(classes)}) for {len(classes)} classes, got {logits.shape}")
    if features.ndim != 2 or features.shape[0] != n:
        raise UserInputError(f"features must be (N, D) with N = {n} rows like the logits, got {features.shape}")
    if not np.isfinite(logits).all() or not np.isfinite(features).all():
        raise UserInputError("validation logits or features contain NaN or infinity; check the model's outputs")
    if image_stats is not None and len(image_stats) != n:
        raise UserInputError(f"{len(image_stats)} image statistics for {n} validation images")
    return logits, features


def _subsample(n: int, cap: int, labels: np.ndarray | None, seed: int) -> np.ndarray:
    """Sorted indices of at most `cap` of n rows, seeded; each label keeps its share (at least one row)."""
    if n <= cap:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    if labels is None:
        return np.sort(rng.choice(n, cap, replace=False))
    keep = np.concatenate([
        rng.choice(rows, min(rows.size, max(1, round(cap * rows.size / n))), replace=False)
        for rows in (np.flatnonzero(labels == c) for c in np.unique(labels))])
    if keep.size > cap:  # rounding up small classes can overshoot by a few rows
        keep = rng.choice(keep, cap, replace=False)
    return np.sort(keep)


_LOAD_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError, TypeError)


def load_reference(folder: str | Path) -> ReferenceProfile | None:
    """The profile in `folder/reference.npz`; None when the file does not exist. A damaged or inconsistent file
    raises BundleError naming it and what to do."""
    path = Path(folder) / REFERENCE_FILE
    if not path.is_file():
        return None
    fix = "rebuild it with `sightline evaluate` or copy the bundle again"
    try:
        # Our own handle: np.load(path) leaks its file when the zip directory is damaged (numpy 2.4).
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as z:
            header = json.loads(str(z["header"]))
            version = header.get("format_version")
            if not isinstance(version, int) or version > FORMAT_VERSION:
                raise BundleError(f"{path} has format_version {version!r}; upgrade sightline to read it")
            arrays = {name: z[name] for name in z.files if name != "header"}
        maha = None
        if "maha_mean" in arrays:
            maha = ood.Mahalanobis(**{f: arrays[f"maha_{f}"] for f in ood.Mahalanobis.__dataclass_fields__})
        outliers = None
        if "outlier_logits" in arrays and isinstance(header.get("outliers"), dict):
            info = header["outliers"]
            outliers = OutlierOutputs(arrays["outlier_logits"], arrays.get("outlier_features"),
                                      families=[str(f) for f in info["families"]],
                                      kinds=[str(k) for k in info["kinds"]], notes=[str(n) for n in info["notes"]])
        profile = ReferenceProfile(
            classes=[str(c) for c in header["classes"]], temperature=float(header["temperature"]),
            logits=arrays["logits"], pca_mean=arrays["pca_mean"], pca_components=arrays["pca_components"],
            projected=arrays["projected"],
            image_stats={name: arrays[f"stat_{name}"] for name in header["image_stats"]},
            train_image_stats={name: arrays[f"train_stat_{name}"] for name in header.get("train_image_stats", [])},
            bank=arrays.get("bank"), bank_labels=arrays.get("bank_labels"), mahalanobis=maha,
            ood_choice=None if header["ood"] is None else ood.OODChoice.from_json(header["ood"]),
            energy_temperature=float(header["energy_temperature"]), meta=dict(header["meta"]),
            outliers=outliers, fingerprint=dict(header.get("fingerprint") or {}),
        )
    except BundleError:
        raise
    except _LOAD_ERRORS as exc:
        raise BundleError(f"{path} cannot be read ({type(exc).__name__}: {exc}); {fix}") from None
    _check_shapes(profile, path, fix)
    return profile


def _check_shapes(p: ReferenceProfile, path: Path, fix: str) -> None:
    n, k = p.logits.shape if p.logits.ndim == 2 else (-1, -1)
    d = p.pca_mean.shape[0] if p.pca_mean.ndim == 1 else -1
    problems = []
    if k != len(p.classes):
        problems.append(f"logits {p.logits.shape} do not match {len(p.classes)} classes")
    if p.pca_components.ndim != 2 or p.pca_components.shape[0] != d:
        problems.append(f"PCA components {p.pca_components.shape} do not match the mean {p.pca_mean.shape}")
    elif p.projected.ndim != 2 or p.projected.shape[1] != p.pca_components.shape[1]:
        problems.append(f"projected features {p.projected.shape} do not match the PCA basis")
    if any(col.shape != (n,) for col in p.image_stats.values()):
        problems.append("image statistics do not have one value per image")
    m_bank = p.bank.shape[0] if p.bank is not None and p.bank.ndim == 2 else 0
    if any(col.shape != (m_bank,) for col in p.train_image_stats.values()):
        problems.append("training image statistics do not have one value per bank row")
    if p.bank is not None and (p.bank.ndim != 2 or p.bank.shape[1] != d):
        problems.append(f"the k-NN bank {p.bank.shape} does not have {d} columns")
    o = p.outliers
    if o is not None:
        m = o.logits.shape[0] if o.logits.ndim == 2 else -1
        if o.logits.ndim != 2 or o.logits.shape[1] != len(p.classes):
            problems.append(f"stand-in logits {o.logits.shape} do not match {len(p.classes)} classes")
        elif o.features is not None and o.features.shape != (m, d):
            problems.append(f"stand-in features {o.features.shape} are not ({m}, {d})")
        elif len(o.families) != m or len(o.kinds) != m:
            problems.append(f"{len(o.families)} stand-in families / {len(o.kinds)} kinds for {m} stand-in rows")
    if problems:
        raise BundleError(f"{path} is inconsistent ({problems[0]}); {fix}")
