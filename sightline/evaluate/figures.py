"""What a run's predictions say, as functions of logits and labels (no model, no files): the decision rule fitted
on val (`fit_on_val`, step 1 of `evaluate`) and every figure of the evaluated split (`split_figures`, step 2).

Shapes: `logits` (N, K) raw model outputs; `y` (N,) int true class indices into `classes`.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from sightline.evaluate.result import DataInfo, EvaluationResult, ModelInfo, Review, Struggling

if TYPE_CHECKING:
    from sightline.decision import Decisions
    from sightline.evaluate.options import EvaluateOptions
    from sightline.spec import ProblemSpec

__all__ = ["Fitted", "fit_on_val", "split_figures", "review_block", "struggling_classes"]


@dataclass
class Fitted:
    """The decision rule the val split chose (or, without one, the rule the bundle already held)."""

    temperature: float
    thresholds: dict[str, Any]  # bundle.thresholds as choose_thresholds makes them
    val_metrics: dict[str, Any] | None  # decision_metrics on val; None without a val split
    review_val_curve: dict[str, Any] | None  # coverage vs accuracy on val, from the threshold search
    val_missing: list[str] = field(default_factory=list)  # classes without a val image: fitted without them


def fit_on_val(
    logits_val: np.ndarray | None,
    y_val: np.ndarray | None,
    classes: list[str],
    *,
    problem: ProblemSpec | None,
    bundle_temperature: float,
    bundle_thresholds: Mapping[str, Any],
) -> Fitted:
    """Temperature and thresholds fitted on val (never on the evaluated split unless it *is* val); the bundle's
    own (`bundle_temperature`, `bundle_thresholds`) when there is no val split (`logits_val` None)."""
    from sightline.decision import decide
    from sightline.evaluate.calibration import fit_temperature
    from sightline.evaluate.thresholds import choose_thresholds, decision_metrics

    val_metrics = None
    if logits_val is not None and y_val is not None:
        temperature = fit_temperature(logits_val, y_val)
        thresholds = choose_thresholds(logits_val, y_val, classes, spec=problem, temperature=temperature)
        val_dec = decide(logits_val, classes, temperature=temperature, thresholds=thresholds)
        val_metrics = decision_metrics(y_val, val_dec.labels, classes, problem)
    else:
        temperature = float(bundle_temperature)
        thresholds = dict(bundle_thresholds)
    val_curve = (thresholds.get("review") or {}).pop("val_curve", None)
    missing = [] if y_val is None else [c for i, c in enumerate(classes) if not np.any(np.asarray(y_val) == i)]
    return Fitted(float(temperature), thresholds, val_metrics, val_curve, missing)


def split_figures(
    logits: np.ndarray,
    y: np.ndarray,
    decisions: Decisions,
    classes: list[str],
    *,
    fitted: Fitted,
    problem: ProblemSpec | None,
    options: EvaluateOptions,
    n_val: int,
    unreadable: list[dict[str, str]],
    model: ModelInfo,
    data: DataInfo,
) -> EvaluationResult:
    """Every figure of the evaluated split (`options.split`) from its `decisions` (decide() under `fitted`) and true
    labels; the explanation, robustness, timing and file fields are filled in by the later steps."""
    from sightline.decision import softmax
    from sightline.evaluate.calibration import expected_calibration_error, reliability
    from sightline.evaluate.metrics import bootstrap_ci, classification_metrics
    from sightline.evaluate.thresholds import check_targets, decision_metrics

    figures = classification_metrics(y, decisions.labels, decisions.probabilities, classes)
    figures["n_images"] = int(len(y))
    raw = softmax(logits)
    test_dm = decision_metrics(y, decisions.labels, classes, problem)
    result = EvaluationResult(
        split=options.split,
        **figures,
        argmax_accuracy=float((logits.argmax(axis=1) == y).mean()),
        decision_rule=(
            "softmax(logits / temperature), per-class thresholds then arg-max, as sightline.decision.decide "
            f"(temperature and thresholds chosen on {'val' if n_val else 'an earlier evaluation'})"
        ),
        ci=bootstrap_ci(y, decisions.labels, len(classes), n_resamples=options.n_bootstrap, seed=options.seed),
        ece_uncalibrated=expected_calibration_error(raw, y),
        ece=expected_calibration_error(decisions.probabilities, y),
        temperature=fitted.temperature,
        reliability={"before": reliability(raw, y), "after": reliability(decisions.probabilities, y)},
        review=review_block(y, decisions, fitted, chosen_on="val" if n_val else "bundle"),
        thresholds=dict(fitted.thresholds),
        expected_cost=test_dm["expected_cost"],
        targets=check_targets(problem, classes, test=test_dm, val=fitted.val_metrics),
        spec=None if problem is None else {
            "path": str(problem.path) if problem.path else None,
            "task": problem.task,
            "primary_metric": problem.primary_metric,
        },
        warning=" ".join(filter(None, (
            "thresholds and temperature were chosen on the split being reported (val): optimistic."
            if options.split == "val" else None, _absent_classes(figures["per_class"], options.split),
            _unfitted_classes(fitted.val_missing) if options.split != "val" else None))) or None,
        unreadable=unreadable,
        struggling_classes=[],
        explain_method=options.method,
        model=model,
        data=data,
    )
    result.struggling_classes = struggling_classes(result, classes)
    return result


def _absent_classes(per_class: dict[str, dict[str, Any]], split: str) -> str | None:
    """What to say when the evaluated split has no image of some classes: their recall and F1 read 0.000 in every
    table (undefined, 0 as sklearn's zero_division=0) and macro-F1 averages those zeros in, so a test split without
    'wasps' reported 'wasps recall 0.000' as if the model never found one, and said nothing else."""
    absent = [c for c, pc in per_class.items() if pc["support"] == 0]
    if not absent:
        return None
    names = ", ".join(f"'{c}'" for c in absent)
    return (f"{split} has no image of {names}: recall and F1 there are undefined (shown as 0) and pull macro-F1 "
            f"down; add {split} images of {'it' if len(absent) == 1 else 'them'} or re-split the data "
            "(`sightline data split`).")


def _unfitted_classes(missing: list[str]) -> str | None:
    """What to say when val, where temperature and thresholds are chosen, has no image of some classes: they were
    fitted without them (a class threshold from sightline.yaml cannot be chosen for them), and nothing said so."""
    if not missing:
        return None
    names = ", ".join(f"'{c}'" for c in missing)
    return (f"val has no image of {names}, so the temperature and thresholds were chosen without "
            f"{'it' if len(missing) == 1 else 'them'}; add val images or re-split the data (`sightline data split`).")


def review_block(y: np.ndarray, decisions: Decisions, fitted: Fitted, *, chosen_on: str) -> Review:
    """Who goes to a person under the review rule (confidence below `review_confidence`), and coverage vs
    accuracy over every possible rule."""
    from sightline.evaluate.metrics import coverage_accuracy_curve

    correct = decisions.labels == y
    r = fitted.thresholds.get("review_confidence")
    accepted = decisions.confidences >= r if r is not None else np.ones(len(y), dtype=bool)
    return {
        "review_confidence": r,
        "chosen_on": chosen_on,
        "coverage": float(accepted.mean()),
        "accuracy_accepted": float(correct[accepted].mean()) if accepted.any() else None,
        "n_review": int((~accepted).sum()),
        "curve": coverage_accuracy_curve(correct, decisions.confidences),
        "val_curve": fitted.review_val_curve,
    }


def struggling_classes(result: EvaluationResult, classes: list[str]) -> list[Struggling]:
    """Classes whose recall or precision is clearly worse than the rest (below 0.8 or 10 points under macro),
    worst first, each with the class its images are most often predicted as (`confused_with`, what costs recall)
    and the class whose images are most often predicted as it (`taken_from`, what costs precision)."""
    cm = np.asarray(result.confusion_matrix["matrix"])
    macro_r = result.macro_recall
    out: list[Struggling] = []
    for i, c in enumerate(classes):
        pc = result.per_class[c]
        if pc["support"] == 0:
            continue
        weak = min(pc["recall"], pc["precision"])
        if weak < 0.8 or pc["recall"] < macro_r - 0.1:
            row = cm[i].copy()
            row[i] = 0
            confused = classes[int(row.argmax())] if row.sum() else None
            col = cm[:, i].copy()
            col[i] = 0
            out.append({"class": c, "recall": pc["recall"], "precision": pc["precision"], "f1": pc["f1"],
                        "confused_with": confused, "n_confused": int(row.max()) if row.sum() else 0,
                        "taken_from": classes[int(col.argmax())] if col.sum() else None,
                        "n_taken_from": int(col.max()) if col.sum() else 0})
    return sorted(out, key=lambda d: d["f1"])
