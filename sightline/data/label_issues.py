"""Likely-mislabeled images by confident learning (Northcutt, Jiang & Chuang 2021, "Confident learning: estimating
uncertainty in dataset labels", JAIR 70), as the audit's `label_issue` finding.

Pure functions over arrays: image features (N, D) and given labels (N,) -> out-of-fold predicted probabilities
(N, K) from a cheap model (standardised features, multinomial logistic regression, stratified k-fold: no image is
scored by a model that saw its label) -> the images whose given label those probabilities contradict, ranked most
likely wrong first, each with the label the probabilities suggest. Nothing is relabelled: the result is a list to
review (`write_suggestions` writes it as a CSV a review-queue import can read).

Where the features come from (a pretrained backbone through the inference core) is a layer up, in
`sightline.train.label_audit`. cleanlab is imported in `_confident_learning` only, so the rule can be swapped for
an own implementation of the same published method without touching anything else.
"""
from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sightline.data.findings import Finding

__all__ = ["LabelIssue", "LabelCheck", "plan_label_check", "out_of_fold_probabilities", "fit_out_of_fold",
           "check_labels", "write_suggestions", "MIN_IMAGES_PER_CLASS", "DEFAULT_FOLDS", "SUGGESTION_COLUMNS"]

DEFAULT_FOLDS = 5
# A class needs this many images to be checked: each of 5 folds then holds at least two of them out, and the
# per-class confidence threshold of confident learning is a mean over at least 8 out-of-fold scores.
MIN_IMAGES_PER_CLASS = 10
# Inverse L2 strength of the logistic regression on standardised features: chosen per dataset by the out-of-fold
# log loss of the given labels (`fit_out_of_fold`), walking this ladder from START_C. Confident learning reads the
# probabilities as they are, so they must be calibrated: a fixed strong C (0.01) gave soft probabilities and recall
# 0.44 on one seed of separable 3-class clusters; a fixed weak one (1.0) gave overconfident ones and precision 0.51
# (mean of 5 seeds) on hymenoptera train with 5 % flips (benchmarks/label_noise.py).
C_LADDER = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
START_C = 1e-2
# Below this out-of-fold recall of a class (given labels), a note says the features barely see that class. On the
# synthetic surfaces (600 at 160 px, 5 % flipped) Lite0's mean-pooled ImageNet features recall 'spot' at only
# 0.56-0.67 out of fold, the rest mostly taken for 'ok', and spot -> ok is the most common false alarm there
# (benchmarks/label_noise.py); the stains are visible to the eye, so it is the features, not the labels.
WEAK_RECALL = 0.5
SUGGESTION_COLUMNS = ("rank", "path", "split", "sha256", "given_label", "suggested_label", "p_given", "p_suggested",
                      "source")


@dataclass(frozen=True)
class LabelIssue:
    """One image whose given label the out-of-fold probabilities contradict."""

    index: int  # row in the arrays given to `check_labels`
    path: str  # as given (the audit passes paths relative to the dataset root)
    given: str
    suggested: str  # the most probable other class
    p_given: float  # out-of-fold probability of the given label (cleanlab's self-confidence; low = likely wrong)
    p_suggested: float  # out-of-fold probability of the suggested label


@dataclass
class LabelCheck:
    """The outcome of the label check; `skipped` says why it did not run (then `issues` is empty)."""

    issues: list[LabelIssue] = field(default_factory=list)  # ranked: most likely wrong first
    n_checked: int = 0  # images scored out of fold
    classes: list[str] = field(default_factory=list)  # classes checked
    left_out: dict[str, int] = field(default_factory=dict)  # {class: images} left out for having too few
    folds: int = 0
    oof_accuracy: float | None = None  # share of checked images whose out-of-fold arg-max is the given label
    log_loss: float | None = None  # out-of-fold log loss of the given labels (nats per image)
    class_recall: dict[str, float] = field(default_factory=dict)  # {class: share of its images predicted as it}
    c: float | None = None  # the logistic regression's inverse L2 strength that loss chose
    notes: list[str] = field(default_factory=list)  # one line each: what the check did instead, and why
    skipped: str | None = None  # one line: why the check did not run at all
    model: dict = field(default_factory=dict)  # what made the features (filled by the caller)

    def findings(self) -> list[Finding]:
        """One `label_issue` Finding per issue, in rank order."""
        return [Finding("label_issue", [i.path], {
            "rank": rank, "given": i.given, "suggested": i.suggested,
            "p_given": round(i.p_given, 4), "p_suggested": round(i.p_suggested, 4),
        }) for rank, i in enumerate(self.issues, start=1)]

    def summary(self) -> dict:
        """What audit.json says about the check (the issues themselves are findings)."""
        return {"ran": self.skipped is None, "skipped": self.skipped, "n_checked": self.n_checked,
                "n_issues": len(self.issues), "classes": self.classes, "left_out": self.left_out,
                "folds": self.folds, "oof_accuracy": self.oof_accuracy, "class_recall": self.class_recall,
                "log_loss": self.log_loss, "c": self.c,
                "notes": self.notes, "model": self.model,
                "method": "confident learning (cleanlab.filter.find_label_issues, prune_by_noise_rate) on "
                          "out-of-fold logistic-regression probabilities"}


def plan_label_check(labels: Sequence[str], *, folds: int = DEFAULT_FOLDS,
                     min_per_class: int = MIN_IMAGES_PER_CLASS) -> LabelCheck:
    """Which classes the check can use, with how many folds; `skipped` set when it cannot run.

    A class with fewer than `min_per_class` images is left out (a note says so): its images are neither checked
    nor suggested. Fewer than two classes left -> skipped. Folds above the smallest class count are lowered to it
    (a note says so). Returns a LabelCheck with `classes`, `left_out`, `folds`, `notes` (and `skipped`) set."""
    if folds < 2:
        raise ValueError(f"folds={folds}; k-fold needs at least 2")
    counts = Counter(labels)
    left_out = {c: n for c, n in sorted(counts.items()) if n < min_per_class}
    kept = sorted(c for c in counts if c not in left_out)
    notes = [f"class '{c}' has {n} image{'s' if n != 1 else ''}; the label check needs at least {min_per_class} per "
             f"class, so it leaves '{c}' out (its images are not checked and never suggested)"
             for c, n in left_out.items()]
    if len(kept) < 2:
        enough = f"only '{kept[0]}' has" if kept else "no class has"
        return LabelCheck(classes=kept, left_out=left_out, notes=notes, skipped=(
            f"label check skipped: it needs two classes with at least {min_per_class} images each and {enough} that "
            "many; add images to run it"))
    smallest = min(counts[c] for c in kept)
    if smallest < folds:
        notes.append(f"the smallest checked class has {smallest} images, so the label check uses {smallest} folds "
                     f"instead of {folds}")
        folds = smallest
    return LabelCheck(classes=kept, left_out=left_out, folds=folds, notes=notes)


def out_of_fold_probabilities(features: np.ndarray, labels: np.ndarray, *, folds: int = DEFAULT_FOLDS,
                              seed: int = 0, c: float = START_C) -> np.ndarray:
    """(N, D) features, (N,) int labels in [0, K) -> (N, K) probabilities, each row from a model fitted without it.

    The model: features standardised on the training folds, then L2-regularised multinomial logistic regression
    (inverse strength `c`). Folds are stratified and shuffled with `seed`; every class needs >= `folds` images."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    if features.ndim != 2 or len(features) != len(labels):
        raise ValueError(f"features {features.shape} and labels {labels.shape} must be (N, D) and (N,)")
    k = int(labels.max()) + 1
    probs = np.zeros((len(labels), k))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fit_rows, held_out in splitter.split(features, labels):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
        model.fit(features[fit_rows], labels[fit_rows])
        probs[np.ix_(held_out, model.classes_)] = model.predict_proba(features[held_out])
    return probs


def _log_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.mean(np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-12))))


def fit_out_of_fold(features: np.ndarray, labels: np.ndarray, *, folds: int = DEFAULT_FOLDS,
                    seed: int = 0) -> tuple[np.ndarray, float, float]:
    """`out_of_fold_probabilities` with the C (on C_LADDER) whose out-of-fold log loss of the given labels is
    lowest: (N, K) probabilities, that C, that loss. Walks the ladder from START_C towards lower loss and stops at
    the first rise (the loss is unimodal in log C in practice), so it fits 3-4 C values, not all 13."""
    cache: dict[int, tuple[np.ndarray, float]] = {}

    def loss(i: int) -> float:
        if i not in cache:
            probs = out_of_fold_probabilities(features, labels, folds=folds, seed=seed, c=C_LADDER[i])
            cache[i] = (probs, _log_loss(probs, labels))
        return cache[i][1]

    best = C_LADDER.index(START_C)
    for step in (-1, 1):
        while 0 <= best + step < len(C_LADDER) and loss(best + step) < loss(best):
            best += step
    return cache[best][0], C_LADDER[best], cache[best][1]


def _confident_learning(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Indices of likely label errors, most likely first (ranked by self-confidence, the given label's
    probability). The one place cleanlab is used: confident joint, pruned by the estimated noise rate."""
    from cleanlab.filter import find_label_issues

    return np.asarray(find_label_issues(labels, probs, return_indices_ranked_by="self_confidence", n_jobs=1),
                      dtype=int)


def check_labels(features: np.ndarray, labels: Sequence[str], paths: Sequence[str], *, folds: int = DEFAULT_FOLDS,
                 seed: int = 0, min_per_class: int = MIN_IMAGES_PER_CLASS) -> LabelCheck:
    """Features (N, D) of N images with given class names (N,) -> the images whose label is likely wrong.

    Classes with too few images are left out first (`plan_label_check`; notes say what happened). Example:
        >>> check = check_labels(features, labels, relpaths)
        >>> [(i.path, i.given, i.suggested, i.p_given) for i in check.issues[:3]]
    """
    features = np.asarray(features)
    if len(features) != len(labels) or len(labels) != len(paths):
        raise ValueError(f"features ({len(features)}), labels ({len(labels)}) and paths ({len(paths)}) differ in length")
    check = plan_label_check(labels, folds=folds, min_per_class=min_per_class)
    if check.skipped:
        return check
    code = {name: i for i, name in enumerate(check.classes)}
    rows = np.asarray([i for i, name in enumerate(labels) if name in code], dtype=int)
    y = np.asarray([code[labels[i]] for i in rows], dtype=int)
    probs, check.c, loss = fit_out_of_fold(features[rows], y, folds=check.folds, seed=seed)
    check.log_loss = round(loss, 4)
    check.n_checked = len(rows)
    predicted = probs.argmax(axis=1)
    check.oof_accuracy = round(float(np.mean(predicted == y)), 4)
    for k, name in enumerate(check.classes):
        mine = predicted[y == k]
        check.class_recall[name] = round(float(np.mean(mine == k)), 4)
        if check.class_recall[name] < WEAK_RECALL:  # the features barely see this class: say so beside its issues
            taken = Counter(int(p) for p in mine if p != k).most_common(1)[0][0]
            check.notes.append(f"the features tell '{name}' apart poorly (out-of-fold recall {check.class_recall[name]:.2f}, "
                               f"mostly taken for '{check.classes[taken]}'), so issues involving '{name}' are less "
                               "reliable")
    others = probs.copy()
    others[np.arange(len(y)), y] = -1.0  # the suggestion is the most probable *other* class
    for j in _confident_learning(y, probs):
        s = int(others[j].argmax())
        check.issues.append(LabelIssue(index=int(rows[j]), path=str(paths[rows[j]]), given=check.classes[y[j]],
                                       suggested=check.classes[s], p_given=float(probs[j, y[j]]),
                                       p_suggested=float(probs[j, s])))
    return check


def write_suggestions(check: LabelCheck, path: str | Path, *, splits: Mapping[str, str | None] | None = None,
                      sha256: Mapping[str, str] | None = None) -> Path:
    """Write the issues as review-queue suggestions, one CSV row per image in rank order (SUGGESTION_COLUMNS):
    `path` relative to the dataset root, `split` ("" in the flat layout), the file's `sha256` when known, the given
    and suggested labels and their out-of-fold probabilities, `source` = "label_audit". Never relabels anything."""
    splits, sha256 = splits or {}, sha256 or {}
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=SUGGESTION_COLUMNS)
        writer.writeheader()
        for rank, issue in enumerate(check.issues, start=1):
            writer.writerow({"rank": rank, "path": issue.path, "split": splits.get(issue.path) or "",
                             "sha256": sha256.get(issue.path, ""), "given_label": issue.given,
                             "suggested_label": issue.suggested, "p_given": f"{issue.p_given:.4f}",
                             "p_suggested": f"{issue.p_suggested:.4f}", "source": "label_audit"})
    return path
