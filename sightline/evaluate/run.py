"""`evaluate`: a trained bundle + a dataset -> metrics.json, report.html (RUN/eval/ or `out`) and an updated bundle.

What happens, in order (DESIGN.md, "Numbers you can trust"):
1. logits for the VALIDATION split: temperature scaling and the decision thresholds (per-class and human review,
   from sightline.yaml) are fitted there and stored in the bundle (model.json) for the server to enforce;
2. logits for the evaluated split (test by default): every metric, with bootstrap confidence intervals, the
   targets' pass/fail, calibration before/after, coverage vs accuracy;
3. heatmaps (Grad-CAM by default) for a gallery and for every image with a ground-truth region (pointing game);
4. a corruption suite on a sample of the split;
5. report.html (self-contained) and MODEL_CARD.md in the bundle.

A multi-seed folder (OUT/seed-<s>/bundle, from `sightline train --seeds N`) is evaluated seed by seed, from one
scan of the dataset and one decode of each image shared by all seeds; the headline metrics get mean +- std
across seeds. Prediction streams: pixels are never held for the whole split, only logits (see predict.py).

Example:
    >>> m = evaluate("runs/demo", "data/parts")               # writes runs/demo/eval/{metrics.json,report.html}
    >>> m["accuracy"], m["ci"]["accuracy"], m["targets"]
"""
from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sightline.bundle import Bundle, Preprocessing, load_bundle, resolve_bundle_dir
from sightline.errors import BundleError, DatasetError, UserInputError
from sightline.spec import ProblemSpec, find_spec, load_spec

if TYPE_CHECKING:
    from sightline.data.datasets import Sample

__all__ = ["evaluate", "evaluate_seeds", "seed_runs", "check_classes", "HEADLINE_KEYS"]

HEADLINE_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "macro_roc_auc", "ece")


def check_classes(model_classes: list[str], data_classes: list[str], *, data_dir: Path) -> None:
    """One-line DatasetError naming the mismatch between a model's classes and a dataset's."""
    only_model = sorted(set(model_classes) - set(data_classes))
    only_data = sorted(set(data_classes) - set(model_classes))
    if only_model or only_data:
        parts = []
        if only_data:
            parts.append(f"dataset has {only_data} that the model does not know")
        if only_model:
            parts.append(f"model has {only_model} that the dataset lacks")
        raise DatasetError(
            f"classes of the model and of '{data_dir}' differ: {'; '.join(parts)}; evaluate on data with the "
            f"model's classes {model_classes}."
        )


def seed_runs(path: str | Path) -> list[Path]:
    """RUN folders of a multi-seed training folder (OUT/seed-<s>/ holding a bundle), sorted by seed; [] if none."""
    path = Path(path)
    if not path.is_dir():
        return []
    runs = [p for p in path.glob("seed-*") if (p / "bundle" / "model.json").is_file()]

    def key(p: Path) -> tuple[int, str]:
        tail = p.name.split("-", 1)[1]
        return (int(tail), p.name) if tail.isdigit() else (1 << 30, p.name)

    return sorted(runs, key=key)


def _default_out(bundle: Bundle) -> Path:
    folder = bundle.path
    assert folder is not None
    return (folder.parent if folder.name == "bundle" else folder) / "eval"


def _resolve_spec(spec: str | Path | ProblemSpec | None, data_dir: Path) -> ProblemSpec | None:
    if isinstance(spec, ProblemSpec):
        return spec
    if spec is not None:
        return load_spec(spec)
    return find_spec(data_dir)


def _labels(samples: list[Any], classes: list[str]) -> np.ndarray:
    return np.array([classes.index(s.label) for s in samples], dtype=np.int64)


def evaluate(
    run_or_bundle: str | Path,
    data_dir: str | Path,
    *,
    split: str = "test",
    out: str | Path | None = None,
    spec: str | Path | ProblemSpec | None = None,
    method: str = "gradcam",
    n_bootstrap: int = 1000,
    gallery_per_group: int = 3,
    max_region_images: int = 300,
    robustness: bool = True,
    robustness_images: int = 100,
    severities: tuple[int, ...] = (1, 3, 5),
    batch_size: int = 64,
    device: str | None = None,
    update_bundle: bool = True,
    report: bool = True,
    progress: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Evaluate a RUN or bundle folder on `split` of `data_dir`; returns the metrics.json dict.

    Temperature and thresholds are fitted on the val split (when the dataset has one; otherwise the bundle's are
    kept) and written into the bundle unless `update_bundle=False`. `max_region_images` caps the images scored
    against ground-truth regions, `robustness_images` the images run through the corruption suite (at each of
    `severities`). A folder of seed runs (OUT/seed-<s>/) is evaluated with `evaluate_seeds`.

    Memory does not grow with the split: images are decoded and scored a chunk at a time, only logits are kept,
    and the few images the gallery, the region scores and the corruption suite need are decoded again.

    Raises BundleError / DatasetError / SpecError (one line, says what to do) on bad input."""
    from sightline.explain.cam import method_class

    method_class(method)  # an unknown heatmap method fails now, not after all the inference
    path = Path(run_or_bundle)
    try:
        resolve_bundle_dir(path)
    except BundleError:
        if seed_runs(path):
            return evaluate_seeds(
                path, data_dir, split=split, out=out, spec=spec, method=method, n_bootstrap=n_bootstrap,
                gallery_per_group=gallery_per_group, max_region_images=max_region_images, robustness=robustness,
                robustness_images=robustness_images, severities=severities, batch_size=batch_size, device=device,
                update_bundle=update_bundle, report=report, progress=progress, seed=seed,
            )
        raise
    return _evaluate_runs(
        [path], data_dir, outs=[out], reports=[report], split=split, spec=spec, batch_size=batch_size,
        device=device, progress=progress, method=method, n_bootstrap=n_bootstrap,
        gallery_per_group=gallery_per_group, max_region_images=max_region_images, robustness=robustness,
        robustness_images=robustness_images, severities=severities, update_bundle=update_bundle, seed=seed,
    )[0]


class _SplitCrops:
    """Crops of the evaluated split by position in `paths`, decoded again on demand with `load_crops` (the path
    prediction took, so the same pixels): prediction keeps no pixels, and only the gallery, the region scores and
    the robustness sample ask for some. With `remember` (several runs share this split: the seeds of one run)
    each crop is decoded once and kept for the next run; that holds only the images those steps ask for, bounded
    by their settings, never the whole split."""

    def __init__(self, paths: list[Path], pre: Preprocessing, *, remember: bool) -> None:
        self.paths = paths
        self.pre = pre
        self.remember = remember
        self._held: dict[int, np.ndarray] = {}

    def __call__(self, idx: Sequence[int] | np.ndarray) -> np.ndarray:
        """(len(idx), S, S, 3) uint8 crops of the images at positions `idx`."""
        from sightline.inference import load_crops

        idx = [int(i) for i in idx]
        todo = sorted(set(idx) - self._held.keys())
        fresh: dict[int, np.ndarray] = {}
        if todo:
            got = load_crops([self.paths[i] for i in todo], self.pre)
            if got.failed:
                bad = got.failed[0]
                raise DatasetError(f"'{bad['path']}' was read for the metrics but not now ({bad['reason']}); was it "
                                   "changed during the evaluation? Run it again.")
            fresh = dict(zip(todo, got.crops))
            if self.remember:
                self._held.update(fresh)
        if not idx:
            return np.zeros((0, self.pre.input_size, self.pre.input_size, 3), dtype=np.uint8)
        return np.stack([fresh[i] if i in fresh else self._held[i] for i in idx])


@dataclass
class _Scored:
    """One run's predictions: what the metrics need, shared by the runs whose preprocessing is the same."""

    logits_val: np.ndarray | None  # (N_val_ok, K), None without a val split
    val_samples: list[Sample]  # the val samples that decoded, in logits_val order
    logits: np.ndarray  # (N_ok, K) on the evaluated split
    samples: list[Sample]  # the evaluated split's samples that decoded, in logits order
    failed: list[dict[str, str]]  # the evaluated split's unreadable files ({"path", "reason"})
    crops: _SplitCrops  # pixels of `samples` by position, decoded on demand
    timings: dict[str, float]  # seconds spent on the shared prediction passes
    shared_s: float  # seconds the shared part took (model loading and prediction passes)


def _evaluate_runs(
    paths: list[Path],
    data_dir: str | Path,
    *,
    outs: list[str | Path | None],
    reports: list[bool],
    split: str,
    spec: str | Path | ProblemSpec | None,
    batch_size: int,
    device: str | None,
    progress: bool,
    **settings: Any,
) -> list[dict[str, Any]]:
    """Evaluate the runs at `paths` on one dataset (see `evaluate`; `settings` are its remaining keywords).

    The dataset is scanned once, and each val and `split` image is decoded once for all runs that share a
    preprocessing (the seeds of one run): their models score every decoded chunk together, so they are held in
    memory together while their pass lasts."""
    from sightline.data.datasets import scan_dataset
    from sightline.inference import default_device
    from sightline.progress import rich_progress

    bundles = [load_bundle(p) for p in paths]
    data_dir = Path(data_dir)
    dataset = scan_dataset(data_dir)
    for bundle in bundles:
        check_classes(bundle.classes, dataset.classes, data_dir=data_dir)
    if dataset.layout != "split":
        raise DatasetError(f"'{data_dir}' is in the flat layout; run `sightline data split {data_dir}` first.")
    samples = dataset.split(split)
    if not samples:
        raise DatasetError(f"'{data_dir}' has no images in {split}/; pick another --split or add images.")
    problem = _resolve_spec(spec, data_dir)
    if problem is not None:
        for bundle in bundles:
            problem.check_classes(bundle.classes)
    device = device or default_device()
    val_samples = dataset.split("val")

    groups: dict[Preprocessing, list[int]] = {}
    for i, bundle in enumerate(bundles):
        groups.setdefault(bundle.preprocessing, []).append(i)
    results: list[dict[str, Any]] = [{} for _ in bundles]
    with rich_progress(enabled=progress) as report_progress:
        for pre, members in groups.items():
            _evaluate_group(
                [bundles[i] for i in members], [outs[i] for i in members], [reports[i] for i in members],
                results=results, members=members, pre=pre, samples=samples, val_samples=val_samples,
                data_dir=data_dir, split=split, problem=problem, batch_size=batch_size, device=device,
                progress=report_progress, settings=settings,
            )
    return results


def _evaluate_group(
    group: list[Bundle], outs: list[str | Path | None], reports: list[bool], *, results: list[dict[str, Any]],
    members: list[int], pre: Preprocessing, samples: list[Sample], val_samples: list[Sample], data_dir: Path,
    split: str, problem: ProblemSpec | None, batch_size: int, device: str, progress: Any, settings: dict[str, Any],
) -> None:
    """The runs of one preprocessing: each image decoded once for all of them (see `_evaluate_runs`)."""
    from sightline.inference import Engine, TorchBackend, score_files

    started = time.perf_counter()
    engines = [Engine(TorchBackend(b.load_model(device), device=device), bundle=b) for b in group]
    common = dict(batch_size=batch_size, progress=progress)
    timings: dict[str, float] = {}
    val_logits: list[np.ndarray] | list[None] = [None] * len(group)
    val_kept: list[Sample] = []
    if val_samples:
        t0 = time.perf_counter()
        val_out, val_inputs = score_files(
            engines, [s.path for s in val_samples], task="val (calibration, thresholds)", **common)
        val_logits = [o.logits for o in val_out]
        val_kept = [val_samples[i] for i in val_inputs.index]
        timings["val_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    outputs, inputs = score_files(engines, [s.path for s in samples], task=f"{split} (metrics)", **common)
    logits = [o.logits for o in outputs]
    timings["predict_s"] = time.perf_counter() - t0
    kept = [samples[i] for i in inputs.index]
    if not kept:
        raise DatasetError(f"no image in '{data_dir}/{split}' could be read; see `sightline data audit {data_dir}`.")
    crops = _SplitCrops([s.path for s in kept], pre, remember=len(group) > 1)
    shared_s = time.perf_counter() - started
    for j, i in enumerate(members):
        scored = _Scored(logits_val=val_logits[j], val_samples=val_kept, logits=logits[j], samples=kept,
                         failed=inputs.failed, crops=crops, timings=dict(timings), shared_s=shared_s)
        results[i] = _evaluate_one(
            group[j], engines[j], scored, data_dir=data_dir, split=split, n_val=len(val_samples),
            problem=problem, out=outs[j], report=reports[j], batch_size=batch_size, device=device,
            progress=progress, **settings,
        )


def _evaluate_one(
    bundle: Bundle,
    engine: Any,
    scored: _Scored,
    *,
    data_dir: Path,
    split: str,
    n_val: int,
    problem: ProblemSpec | None,
    out: str | Path | None,
    report: bool,
    method: str,
    n_bootstrap: int,
    gallery_per_group: int,
    max_region_images: int,
    robustness: bool,
    robustness_images: int,
    severities: tuple[int, ...],
    batch_size: int,
    device: str,
    update_bundle: bool,
    progress: Any,
    seed: int,
) -> dict[str, Any]:
    """Metrics, explanations, robustness and files for one run from its predictions (see `evaluate`)."""
    model = engine.backend.model
    from sightline.decision import decide, softmax
    from sightline.evaluate.calibration import expected_calibration_error, fit_temperature, reliability
    from sightline.evaluate.metrics import bootstrap_ci, classification_metrics, coverage_accuracy_curve
    from sightline.evaluate.thresholds import check_targets, choose_thresholds, decision_metrics
    from sightline.explain.orchestrate import explain_split

    started = time.perf_counter()
    timings = scored.timings
    classes = bundle.classes

    # 1. Validation: calibration and thresholds (never on the evaluated split unless it *is* val).
    chosen_on_eval_split = split == "val"
    val_metrics: dict[str, Any] | None = None
    if scored.logits_val is not None:
        logits_val, y_val = scored.logits_val, _labels(scored.val_samples, classes)
        temperature = fit_temperature(logits_val, y_val)
        thresholds = choose_thresholds(logits_val, y_val, classes, spec=problem, temperature=temperature)
        val_dec = decide(logits_val, classes, temperature=temperature, thresholds=thresholds)
        val_metrics = decision_metrics(y_val, val_dec.labels, classes, problem)
    else:
        temperature = float(bundle.temperature)
        thresholds = dict(bundle.thresholds)
    review_curve_val = (thresholds.get("review") or {}).pop("val_curve", None)

    # 2. The evaluated split.
    t0 = time.perf_counter()
    logits = scored.logits
    kept_samples = scored.samples
    y = _labels(kept_samples, classes)
    dec = decide(logits, classes, temperature=temperature, thresholds=thresholds)
    pred = dec.labels
    metrics: dict[str, Any] = {"split": split, "n_images": int(len(y))}
    metrics.update(classification_metrics(y, pred, dec.probabilities, classes))
    metrics["argmax_accuracy"] = float((logits.argmax(axis=1) == y).mean())
    metrics["decision_rule"] = (
        "softmax(logits / temperature), per-class thresholds then arg-max, as sightline.decision.decide "
        f"(temperature and thresholds chosen on {'val' if n_val else 'an earlier evaluation'})"
    )
    metrics["ci"] = bootstrap_ci(y, pred, len(classes), n_resamples=n_bootstrap, seed=seed)
    metrics["ece_uncalibrated"] = expected_calibration_error(softmax(logits), y)
    metrics["ece"] = expected_calibration_error(dec.probabilities, y)
    metrics["temperature"] = float(temperature)
    metrics["reliability"] = {"before": reliability(softmax(logits), y), "after": reliability(dec.probabilities, y)}
    correct = pred == y
    r = thresholds.get("review_confidence")
    accepted = dec.confidences >= r if r is not None else np.ones(len(y), dtype=bool)
    metrics["review"] = {
        "review_confidence": r,
        "chosen_on": "val" if n_val else "bundle",
        "coverage": float(accepted.mean()),
        "accuracy_accepted": float(correct[accepted].mean()) if accepted.any() else None,
        "n_review": int((~accepted).sum()),
        "curve": coverage_accuracy_curve(correct, dec.confidences),
        "val_curve": review_curve_val,
    }
    metrics["thresholds"] = dict(thresholds)
    test_dm = decision_metrics(y, pred, classes, problem)
    metrics["expected_cost"] = test_dm["expected_cost"]
    metrics["targets"] = check_targets(problem, classes, test=test_dm, val=val_metrics)
    metrics["spec"] = None if problem is None else {
        "path": str(problem.path) if problem.path else None,
        "task": problem.task,
        "primary_metric": problem.primary_metric,
    }
    if chosen_on_eval_split:
        metrics["warning"] = "thresholds and temperature were chosen on the split being reported (val): optimistic."
    metrics["unreadable"] = scored.failed
    metrics["struggling_classes"] = _struggling(metrics, classes)
    timings["predict_s"] = timings["predict_s"] + time.perf_counter() - t0

    # 3. Explanations: gallery and regions.
    t0 = time.perf_counter()
    explain = explain_split(
        model, crops=scored.crops, samples=kept_samples, y=y, decisions=dec, classes=classes,
        pre=bundle.preprocessing, method=method, review_confidence=r, per_group=gallery_per_group,
        max_region_images=max_region_images, seed=seed,
    )
    if explain.regions is not None:
        metrics["pointing_game"] = explain.regions
    metrics["explain_method"] = method
    timings["explain_s"] = time.perf_counter() - t0

    # 4. Robustness.
    if robustness:
        t0 = time.perf_counter()
        metrics["robustness"] = _robustness(
            engine, bundle, scored.crops, y, temperature, thresholds, n_images=robustness_images,
            severities=severities, seed=seed, batch_size=batch_size, device=device, progress=progress,
        )
        timings["robustness_s"] = time.perf_counter() - t0

    metrics["model"] = {"name": bundle.name, "version": bundle.version, "architecture": bundle.architecture,
                        "path": str(bundle.path), "dataset_version": bundle.dataset_version}
    metrics["data"] = {"root": str(data_dir), "n_val": n_val, "device": device}
    timings["total_s"] = scored.shared_s + time.perf_counter() - started
    metrics["timings"] = {k: round(v, 2) for k, v in timings.items()}

    # 5. Bundle, files.
    if update_bundle:
        bundle.temperature = float(temperature)
        bundle.thresholds = {k: v for k, v in thresholds.items()}
        bundle.metrics[split] = {k: metrics[k] for k in ("split", "n_images", *HEADLINE_KEYS)} | {
            "ci": metrics["ci"], "targets": metrics["targets"]}
        if "pointing_game" in metrics:
            bundle.metrics[split]["pointing_game"] = metrics["pointing_game"]["overall"]
        bundle.write_json()
    out_dir = Path(out) if out is not None else _default_out(bundle)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics["files"] = {"metrics": str(out_dir / "metrics.json")}
    if report:
        from sightline.evaluate.report import write_model_card, write_report

        metrics["files"]["report"] = str(write_report(metrics, out_dir / "report.html", gallery=explain.gallery))
        if update_bundle:
            metrics["files"]["model_card"] = str(write_model_card(metrics, bundle))
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=_json_default) + "\n")
    return metrics


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to metrics.json")


def _struggling(metrics: dict[str, Any], classes: list[str]) -> list[dict[str, Any]]:
    """Classes whose recall or precision is clearly worse than the rest (below 0.8 or 10 points under macro),
    worst first, each with the class it is most confused with."""
    cm = np.asarray(metrics["confusion_matrix"]["matrix"])
    macro_r = metrics["macro_recall"]
    out = []
    for i, c in enumerate(classes):
        pc = metrics["per_class"][c]
        if pc["support"] == 0:
            continue
        weak = min(pc["recall"], pc["precision"])
        if weak < 0.8 or pc["recall"] < macro_r - 0.1:
            row = cm[i].copy()
            row[i] = 0
            confused = classes[int(row.argmax())] if row.sum() else None
            out.append({"class": c, "recall": pc["recall"], "precision": pc["precision"], "f1": pc["f1"],
                        "confused_with": confused, "n_confused": int(row.max()) if row.sum() else 0})
    return sorted(out, key=lambda d: d["f1"])


def _robustness(
    engine: Any, bundle: Bundle, crops: _SplitCrops, y: np.ndarray, temperature: float, thresholds: dict[str, Any],
    *, n_images: int, severities: tuple[int, ...], seed: int, batch_size: int, device: str, progress: Any,
) -> dict[str, Any]:
    """The corruption suite on a seeded sample of `n_images` of the split (`crops` gives pixels by position)."""
    from sightline.decision import decide
    from sightline.evaluate.robustness import CORRUPTIONS, failure_modes, robustness_suite

    rng = np.random.default_rng(seed)
    idx = np.arange(len(y))
    if len(idx) > n_images:
        idx = np.sort(rng.choice(idx, n_images, replace=False))

    def predict(batch: np.ndarray) -> np.ndarray:
        logits = engine.run_crops(batch, batch_size=batch_size).logits
        return decide(logits, bundle.classes, temperature=temperature, thresholds=thresholds).labels

    from sightline.progress import Steps

    with Steps(progress, "robustness", len(CORRUPTIONS) * len(severities)) as steps:
        result = robustness_suite(predict, crops(idx), y[idx], severities=severities, seed=seed,
                                  on_step=steps.advance)
    result["failure_modes"] = failure_modes(result)
    return result


def evaluate_seeds(run_dir: str | Path, data_dir: str | Path, *, out: str | Path | None = None,
                   **kwargs: Any) -> dict[str, Any]:
    """Evaluate every seed run of OUT/seed-<s>/ (each into its own RUN/eval/); OUT/eval/metrics.json holds the
    first seed's full metrics plus `seeds`: per-seed headline metrics and their mean +- std (sample std).

    `kwargs` are `evaluate`'s keywords. The dataset is scanned once and each image decoded once for all seeds
    (they share preprocessing); every seed's model is held in memory during that shared pass."""
    import inspect

    from sightline.explain.cam import method_class

    runs = seed_runs(run_dir)
    if not runs:
        raise UserInputError(f"'{run_dir}' holds no seed-<s>/bundle folders; pass a RUN or bundle folder.")
    defaults = {name: p.default for name, p in inspect.signature(evaluate).parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY and name != "out"}
    settings = {**defaults, **kwargs}
    method_class(settings["method"])
    report = settings.pop("report")
    # each seed gets RUN/eval/metrics.json; the first also its full report
    results = _evaluate_runs(runs, data_dir, outs=[None] * len(runs),
                             reports=[i == 0 and report for i in range(len(runs))], **settings)
    first = dict(results[0])
    per_seed = [{"seed": run.name.split("-", 1)[1], **{k: r.get(k) for k in HEADLINE_KEYS}} for run, r in
                zip(runs, results)]
    summary: dict[str, Any] = {"n_seeds": len(runs), "per_seed": per_seed, "mean": {}, "std": {}}
    for k in HEADLINE_KEYS:
        values = np.array([r[k] for r in results if r.get(k) is not None], dtype=np.float64)
        if len(values):
            summary["mean"][k] = float(values.mean())
            summary["std"][k] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    first["seeds"] = summary
    out_dir = Path(out) if out is not None else Path(run_dir) / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    first["files"] = {"metrics": str(out_dir / "metrics.json")}
    if report:
        from sightline.evaluate.report import write_report

        # This report adds the mean +- std table; the first seed's own report holds its gallery.
        first["files"]["report"] = str(write_report(first, out_dir / "report.html", gallery=[]))
    (out_dir / "metrics.json").write_text(json.dumps(first, indent=2, default=_json_default) + "\n")
    return first
