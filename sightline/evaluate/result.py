"""`EvaluationResult`: what `evaluate` found on one split. metrics.json is written from it and report.html and
MODEL_CARD.md are built from it.

The fields are metrics.json's keys, in its order (DESIGN.md, "Runs and bundles", lists the required ones).
`warning`, `pointing_game`, `robustness`, `reference`, `ood` and `seeds` are left out of the file when None. The
result also reads like the file: it is a read-only Mapping of those keys (`result["accuracy"]`, `dict(result)`), so
scripts written against metrics.json read the returned value the same way.

Blocks computed by the pure functions of this stage stay the plain data those functions return, and each field
names its producer. The blocks `evaluate` builds itself have a TypedDict here.
"""
from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NotRequired, TypedDict

__all__ = ["EvaluationResult", "Review", "SpecInfo", "Struggling", "ModelInfo", "DataInfo", "SeedSummary",
           "HEADLINE_KEYS", "write_json"]

HEADLINE_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "macro_roc_auc", "ece")


class Review(TypedDict):
    """The human-review rule on the reported split: predictions below `review_confidence` go to a person."""

    review_confidence: float | None  # None: no review rule
    chosen_on: str  # "val" (fitted in this evaluation) or "bundle" (no val split: the bundle's earlier rule)
    coverage: float  # share of images decided without a person
    accuracy_accepted: float | None  # accuracy on those images (None when none is accepted)
    n_review: int
    curve: dict[str, list[float]]  # coverage_accuracy_curve on this split: {threshold, coverage, accuracy}
    val_curve: dict[str, list[float]] | None  # the same on val, from the threshold search


class SpecInfo(TypedDict):
    path: str | None  # the sightline.yaml read (None when the spec was built in code)
    task: str
    primary_metric: str


# A class clearly behind the rest (recall or precision below 0.8, or recall 10 points under macro), with the class
# it is most often predicted as (its misses) and the class most often predicted as it (its false alarms).
# Functional form: one key is "class".
Struggling = TypedDict("Struggling", {
    "class": str, "recall": float, "precision": float, "f1": float, "confused_with": str | None, "n_confused": int,
    "taken_from": NotRequired[str | None], "n_taken_from": NotRequired[int]})


class ModelInfo(TypedDict):
    name: str
    version: str
    architecture: str
    path: str
    dataset_version: str | None


class DataInfo(TypedDict):
    root: str
    n_val: int  # val images listed (0: no val split; temperature and thresholds kept from the bundle)
    device: str


class SeedSummary(TypedDict):
    """Headline metrics of every seed of a multi-seed run, and their mean and sample std."""

    n_seeds: int
    per_seed: list[dict[str, Any]]  # {"seed": "0", accuracy, ...}: HEADLINE_KEYS per seed
    mean: dict[str, float]
    std: dict[str, float]


# left out of metrics.json when None
_OPTIONAL = frozenset({"warning", "pointing_game", "robustness", "reference", "ood", "seeds"})


@dataclass(kw_only=True, eq=False)
class EvaluationResult(Mapping[str, Any]):
    """One run on one split (see the module docstring). Probabilities are calibrated (val temperature) and
    decisions apply the thresholds, as `sightline.decision.decide` and the server do."""

    split: str  # "test" | "val" | "train"
    n_images: int  # images of the split that were read (unreadable ones are in `unreadable`)
    # from classification_metrics (sightline.evaluate.metrics), on the decisions:
    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    weighted_f1: float
    macro_precision: float
    macro_recall: float
    weighted_precision: float
    weighted_recall: float
    per_class: dict[str, dict[str, Any]]  # class -> precision, recall, f1, support, false_positive_rate, AP, ROC-AUC
    macro_average_precision: float | None
    macro_roc_auc: float | None
    confusion_matrix: dict[str, Any]  # labels, matrix (rows: true), normalized (rows sum to 1)
    top_k: dict[str, float]  # "top_3" -> accuracy
    pr_curves: dict[str, dict[str, list[float]]]  # class -> recall, precision (one vs rest)
    argmax_accuracy: float  # accuracy of the plain arg-max, without thresholds
    decision_rule: str
    ci: dict[str, dict[str, Any]]  # bootstrap_ci: metric -> low, high, level, n_resamples
    ece_uncalibrated: float  # expected calibration error before temperature scaling
    ece: float  # ... and after
    temperature: float
    reliability: dict[str, dict[str, Any]]  # "before" / "after" -> reliability() bins
    review: Review
    thresholds: dict[str, Any]  # choose_thresholds (sightline.evaluate.thresholds): what the bundle enforces
    expected_cost: float | None  # mean cost per image under sightline.yaml's costs
    # check_targets: target, metric, class, min, max, value, val_value, passed, n, low, high, conclusive
    targets: list[dict[str, Any]]
    spec: SpecInfo | None
    warning: str | None = None  # e.g. thresholds chosen on the split being reported
    unreadable: list[dict[str, str]]  # {"path", "reason"} of the split's files that could not be read
    struggling_classes: list[Struggling]
    pointing_game: dict[str, Any] | None = None  # explain_split's region scores, when regions exist
    explain_method: str
    robustness: dict[str, Any] | None = None  # robustness_suite + failure_modes, unless turned off
    reference: dict[str, Any] | None = None  # the monitor's reference profile refreshed from val
    # (sightline.evaluate.reference.reference_summary: open-set choice on stand-in outliers), unless turned off
    ood: dict[str, Any] | None = None  # --ood DIR: every open-set score on the user's outliers vs this split
    # (sightline.evaluate.openset.ood_folder_report)
    model: ModelInfo
    data: DataInfo
    timings: dict[str, float] = field(default_factory=dict)  # seconds: val_s, predict_s, explain_s, ..., total_s
    files: dict[str, str] = field(default_factory=dict)  # what was written: metrics, report, model_card
    seeds: SeedSummary | None = None  # a multi-seed run: this is its first seed, plus every seed's figures

    # --- metrics.json, as a read-only mapping --------------------------------------------------------------
    def __iter__(self) -> Iterator[str]:
        return (f.name for f in fields(self) if f.name not in _OPTIONAL or getattr(self, f.name) is not None)

    def __getitem__(self, key: str) -> Any:
        if key not in _NAMES or (key in _OPTIONAL and getattr(self, key) is None):
            raise KeyError(key)
        return getattr(self, key)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __eq__(self, other: object) -> bool:
        return dict(self) == dict(other) if isinstance(other, Mapping) else NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable

    def to_json(self) -> dict[str, Any]:
        """metrics.json's content (a shallow dict: the blocks are shared, not copied)."""
        return dict(self)

    @property
    def thresholds_source(self) -> str:
        """Where temperature and thresholds came from, in words: "chosen on val", or "kept from the bundle" when
        the dataset had no val split."""
        return "chosen on val" if self.review.get("chosen_on", "val") == "val" else "kept from the bundle"

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EvaluationResult:
        """A result from a metrics.json dict (e.g. to build the report again from the file)."""
        return cls(**{k: v for k, v in data.items() if k in _NAMES})


_NAMES = frozenset(f.name for f in fields(EvaluationResult))


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to metrics.json")


def write_json(result: Mapping[str, Any], path: str | Path) -> Path:
    """Write `result` (metrics.json's keys) to `path` as indented JSON; returns the path."""
    path = Path(path)
    path.write_text(json.dumps(dict(result), indent=2, default=_json_default) + "\n")
    return path
