"""The audit's label check, end to end: a pretrained backbone's pooled features for every image of a dataset,
through the inference core, then confident learning over them (`sightline.data.label_issues.check_labels`).

The backbone is ImageNet-pretrained, not trained on this dataset's labels, so a wrong label cannot have been
learned into the features; the out-of-fold logistic regression over them is the only thing that sees labels.

Example:
    >>> check = audit_labels(scan_dataset("DATA"), progress=progress)
    >>> [(i.path, i.given, i.suggested) for i in check.issues[:5]]
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sightline.data.datasets import Dataset, Sample
from sightline.data.label_issues import (
    DEFAULT_FOLDS,
    MIN_IMAGES_PER_CLASS,
    LabelCheck,
    check_labels,
    plan_label_check,
)
from sightline.errors import UserInputError
from sightline.progress import ProgressFn

__all__ = ["audit_labels", "image_features", "principal_components", "DEFAULT_ARCH"]

DEFAULT_ARCH = "tf_efficientnet_lite0"  # ImageNet weights ship in a package: works offline


def image_features(
    paths: Sequence[str | Path],
    classes: Sequence[str],
    *,
    arch: str = DEFAULT_ARCH,
    weights: str | Path = "auto",
    device: str | None = None,
    batch_size: int = 64,
    input_size: int | None = None,
    crop_pct: float | None = None,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> tuple[np.ndarray, list[int], list[dict[str, str]], dict]:
    """(N_ok, D) pooled features of the files that decode, their positions in `paths`, the files that did not
    ({"path", "reason"}), and what made the features ({"arch", "weights", "input_size"}).

    One decode -> preprocess -> run path (sightline.inference.score_files) with the architecture's own
    preprocessing (`default_preprocessing`; `input_size` px and `crop_pct` override its size and center crop);
    the classifier head (sized for `classes`) is not used. `seed`: what is initialised at random (everything with
    weights="none") is drawn from it, so the same seed gives the same features whatever the process ran before."""
    import torch

    from sightline.inference import Engine, TorchBackend, score_files
    from sightline.models.factory import create_model, default_preprocessing

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_model(arch, num_classes=len(classes), weights=weights)
    pre = default_preprocessing(arch, input_size=input_size, crop_pct=crop_pct)
    with Engine(TorchBackend(model, device=device), preprocessing=pre, classes=classes) as engine:
        (out,), inputs = score_files([engine], list(paths), batch_size=batch_size, progress=progress,
                                     task="label check: features")
    info = {"arch": arch, "weights": model.sightline_weights["source"], "input_size": pre.input_size,
            "crop_pct": pre.crop_pct}
    assert out.features is not None  # a TorchBackend always returns features
    return out.features, inputs.index, inputs.failed, info


def principal_components(features: np.ndarray, dims: int, *, seed: int = 0) -> np.ndarray:
    """(N, D) features -> (N, min(dims, N, D)) scores on their leading principal components (sklearn's PCA,
    seeded). Fitted on every image without labels, so no label crosses the check's folds; it keeps the directions
    the images vary along most and drops the rest, and with them most of the logistic regression's cost."""
    from sklearn.decomposition import PCA

    if dims < 1:
        raise ValueError(f"dims={dims}; keep at least one principal component")
    features = np.asarray(features, dtype=np.float64)
    k = min(dims, *features.shape)
    return PCA(n_components=k, random_state=seed).fit_transform(features) if k < features.shape[1] else features


def audit_labels(
    dataset: Dataset,
    *,
    arch: str = DEFAULT_ARCH,
    weights: str | Path = "auto",
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
    min_per_class: int = MIN_IMAGES_PER_CLASS,
    device: str | None = None,
    input_size: int | None = None,
    crop_pct: float | None = None,
    feature_dims: int | None = None,
    progress: ProgressFn | None = None,
) -> LabelCheck:
    """Likely-mislabeled images among all of `dataset`'s images (every split: a wrong test label corrupts the
    figures as surely as a wrong training label corrupts the model), ranked; paths relative to the dataset root.

    Classes with fewer than `min_per_class` images are left out, and with fewer than two such classes the check is
    skipped before any model is built (LabelCheck.notes / .skipped say so). Files that do not decode are left out
    of the check (the audit reports them as corrupt). `input_size` / `crop_pct`: see `image_features` (default:
    the architecture's pretrained input, 224 px for Lite0; a smaller size cuts the backbone's cost, about by its
    square: the demo uses 80 px). `feature_dims`: keep this many principal components of the features
    (`principal_components`) before the k-fold fits, whose cost grows with the dimension (default: all of them)."""
    if seed < 0:  # scikit-learn's folds take 0 .. 2**32 - 1; a negative one was a ValueError traceback
        raise UserInputError(f"--seed {seed} must be 0 or more.")
    check = plan_label_check([s.label for s in dataset.samples], folds=folds, min_per_class=min_per_class)
    if check.skipped:
        return check
    samples: list[Sample] = [s for s in dataset.samples if s.label in check.classes]
    features, index, _, info = image_features([s.path for s in samples], dataset.classes, arch=arch,
                                              weights=weights, device=device, input_size=input_size,
                                              crop_pct=crop_pct, seed=seed, progress=progress)
    used = [samples[i] for i in index]
    if feature_dims is not None:
        features = principal_components(features, feature_dims, seed=seed)
        info["feature_dims"] = features.shape[1]
    result = check_labels(features, [s.label for s in used], [s.relpath for s in used], folds=folds, seed=seed,
                          min_per_class=min_per_class)
    # Classes left out before extraction stay listed, with their notes, beside any a failed decode pushed out.
    result.left_out = {**check.left_out, **result.left_out}
    result.notes = list(dict.fromkeys(check.notes + result.notes))
    result.model = info
    return result
