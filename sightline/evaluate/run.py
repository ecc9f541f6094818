"""`evaluate`: a trained bundle + a dataset -> metrics.json, report.html (RUN/eval/ or `out`) and an updated bundle.

What happens, in order (DESIGN.md, "Numbers you can trust"), one small function each in `_evaluate_one`:
1. logits for the VALIDATION split: temperature scaling and the decision thresholds (per-class and human review,
   from sightline.yaml) are fitted there and stored in the bundle (model.json) for the server to enforce;
2. logits for the evaluated split (test by default): every metric, with bootstrap confidence intervals, the
   targets' pass/fail, calibration before/after, coverage vs accuracy;
3. heatmaps (Grad-CAM by default) for a gallery and for every image with a ground-truth region (pointing game),
   by sightline.explain.orchestrate;
4. a corruption suite on a sample of the split;
5. the bundle, metrics.json, report.html (self-contained) and MODEL_CARD.md; with the bundle, the monitor's
   reference profile is refreshed from val at the new temperature (sightline.evaluate.reference): from the val
   outputs and image statistics of step 1's pass, plus the training bank and the stand-in outliers' outputs
   stored with the profile when they were made by this model (otherwise those are scored again); and with
   `ood=DIR` every open-set score is measured on the user's outliers (sightline.evaluate.openset).

Images go through the inference core (`score_files`: decode once, stream, (logits, features) per image).
A multi-seed folder (OUT/seed-<s>/bundle, from `sightline train --seeds N`) is evaluated seed by seed, from one
scan of the dataset and one decode of each image shared by all seeds; the headline metrics get mean +- std
across seeds. Pixels are never held for the whole split, only logits.

Example:
    >>> r = evaluate("runs/demo", "data/parts", n_bootstrap=200)   # writes runs/demo/eval/{metrics.json,report.html}
    >>> r.accuracy, r.ci["accuracy"], r.targets                     # typed; r["accuracy"] reads like metrics.json
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sightline.bundle import Bundle, Preprocessing, is_registry_copy, load_bundle, resolve_bundle_dir
from sightline.errors import BundleError, DatasetError, UserInputError, one_line
from sightline.evaluate.figures import Fitted, fit_on_val, split_figures
from sightline.evaluate.options import EvaluateOptions, resolve_options
from sightline.evaluate.result import HEADLINE_KEYS, EvaluationResult, SeedSummary, write_json
from sightline.spec import ProblemSpec, find_spec, load_spec

if TYPE_CHECKING:
    from sightline.data.datasets import Dataset, Sample
    from sightline.decision import Decisions
    from sightline.evaluate.reference import ValScores
    from sightline.inference import Engine
    from sightline.progress import ProgressFn

__all__ = ["evaluate", "evaluate_seeds", "seed_runs", "check_classes", "EvaluateOptions", "EvaluationResult",
           "HEADLINE_KEYS"]


def evaluate(
    run_or_bundle: str | Path,
    data_dir: str | Path,
    options: EvaluateOptions | None = None,
    *,
    progress: ProgressFn | bool | None = None,
    **settings: Any,
) -> EvaluationResult:
    """Evaluate a RUN or bundle folder on `options.split` of `data_dir`; returns what metrics.json holds.

    `settings` are EvaluateOptions fields (split, out, spec, method, n_bootstrap, gallery_per_group,
    max_region_images, robustness, robustness_images, severities, batch_size, device, update_bundle, report,
    seed) laid over `options`; EvaluateOptions documents each one and its default. `progress`: a ProgressFn
    (the CLI passes rich_progress()'s), True for rich bars drawn here, or None / False for nothing.

    Temperature and thresholds are fitted on the val split (when the dataset has one; otherwise the bundle's are
    kept) and written into the bundle unless `update_bundle=False`. A folder of seed runs (OUT/seed-<s>/) is
    evaluated with `evaluate_seeds`.

    Memory does not grow with the split: images are decoded and scored a chunk at a time, only logits are kept,
    and the few images the gallery, the region scores and the corruption suite need are decoded again.

    Raises UserInputError (a bad setting, before any work) / BundleError / DatasetError / SpecError, one line
    that says what to do, on bad input."""
    opts = resolve_options(options, **settings)
    path = Path(run_or_bundle)
    try:
        resolve_bundle_dir(path)
    except BundleError:
        if seed_runs(path):
            return evaluate_seeds(path, data_dir, opts, progress=progress)
        raise
    return _evaluate_runs([path], data_dir, opts, outs=[opts.out], reports=[opts.report], progress=progress)[0]


def evaluate_seeds(
    run_dir: str | Path,
    data_dir: str | Path,
    options: EvaluateOptions | None = None,
    *,
    progress: ProgressFn | bool | None = None,
    **settings: Any,
) -> EvaluationResult:
    """Evaluate every seed run of OUT/seed-<s>/ (each into its own RUN/eval/); OUT/eval/metrics.json (or
    `out`) holds the first seed's full metrics plus `seeds`: per-seed headline metrics and their mean +- std
    (sample std). Options and progress as for `evaluate`; only the first seed gets a full report.

    The dataset is scanned once and each image decoded once for all seeds (they share preprocessing); every
    seed's model is held in memory during that shared pass."""
    opts = resolve_options(options, **settings)
    runs = seed_runs(run_dir)
    if not runs:
        raise UserInputError(f"'{run_dir}' holds no seed-<s>/bundle folders; pass a RUN or bundle folder.")
    # each seed gets RUN/eval/metrics.json; the first also its full report
    results = _evaluate_runs(runs, data_dir, opts, outs=[None] * len(runs),
                             reports=[i == 0 and opts.report for i in range(len(runs))], progress=progress)
    out_dir = opts.out if opts.out is not None else Path(run_dir) / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    first = replace(results[0], seeds=_seed_summary(runs, results), files={"metrics": str(out_dir / "metrics.json")})
    if opts.report:
        from sightline.evaluate.report import write_report

        # This report adds the mean +- std table; the first seed's own report holds its gallery.
        first.files["report"] = str(write_report(first, out_dir / "report.html", gallery=[]))
    write_json(first, out_dir / "metrics.json")
    return first


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
    features: np.ndarray | None  # (N_ok, D) pooled features on the evaluated split (for --ood)
    samples: list[Sample]  # the evaluated split's samples that decoded, in logits order
    failed: list[dict[str, str]]  # the evaluated split's unreadable files ({"path", "reason"})
    crops: _SplitCrops  # pixels of `samples` by position, decoded on demand
    timings: dict[str, float]  # seconds spent on the shared prediction passes
    shared_s: float  # seconds the shared part took (model loading and prediction passes)
    val: ValScores | None = None  # this run's val pass with image statistics, when a reference profile is built




@dataclass(frozen=True)
class _Job:
    """What every run of one `evaluate` call shares."""

    options: EvaluateOptions
    data_dir: Path
    dataset: Dataset  # the scan of data_dir, shared by every run (the reference profile reads val and train)
    problem: ProblemSpec | None
    n_val: int  # val images listed (0: no val split)
    device: str
    progress: ProgressFn | None


@contextmanager
def _progress_fn(progress: ProgressFn | bool | None) -> Iterator[ProgressFn | None]:
    """A ProgressFn as given; True: rich bars drawn for the length of the `with` (the former default)."""
    if progress is True:
        from sightline.progress import rich_progress

        with rich_progress() as fn:
            yield fn
    else:
        yield progress or None


def _refuse_registry_copies(bundles: list[Bundle], outs: list[Path | None], options: EvaluateOptions) -> None:
    """UserInputError for a registry's copy of a version (ROOT/<hash>/) that evaluate would write into: updating it
    rewrote its model.json and reference.npz, so the registry then called the version "changed" and `serve
    --registry` refused to start; the default output folder is inside it too."""
    for bundle, out in zip(bundles, outs):
        if bundle.path is None or not is_registry_copy(bundle.path):
            continue
        if options.update_bundle:
            raise UserInputError(f"'{bundle.path}' is a registry copy, which must stay as it was added (its hash is "
                                 "checked before it is served); evaluate the RUN it was added from (`sightline registry "
                                 "show` names it) and add it again, or pass --no-update --out DIR.")
        if out is None:
            raise UserInputError(f"'{bundle.path}' is a registry copy, which stays as it was added; pass --out DIR for "
                                 "metrics.json and report.html.")


def _evaluate_runs(
    paths: list[Path],
    data_dir: str | Path,
    options: EvaluateOptions,
    *,
    outs: list[Path | None],
    reports: list[bool],
    progress: ProgressFn | bool | None,
) -> list[EvaluationResult]:
    """Evaluate the runs at `paths` on one dataset (see `evaluate`); `outs` and `reports` per run.

    The dataset is scanned once, and each val and split image is decoded once for all runs that share a
    preprocessing (the seeds of one run): their models score every decoded chunk together, so they are held in
    memory together while their pass lasts."""
    from sightline.data.datasets import refuse_out_inside_splits, scan_dataset, split_hint
    from sightline.inference import default_device

    for out in outs:
        if out is not None:
            refuse_out_inside_splits(out, data_dir)
    bundles = [load_bundle(p) for p in paths]
    _refuse_registry_copies(bundles, outs, options)
    for bundle in bundles if options.update_bundle else ():
        # a bundle on a read-only share or mount: every figure was computed, then writing model.json failed and
        # nothing was written, metrics.json included
        if bundle.path is not None and not os.access(bundle.path, os.W_OK):
            raise UserInputError(f"the bundle folder '{bundle.path}' cannot be written, and evaluate stores the fitted "
                                 "temperature, thresholds and figures in it; pass --no-update to leave it as it is, "
                                 "or copy the bundle somewhere writable.")
    data_dir = Path(data_dir)
    dataset = scan_dataset(data_dir)
    if dataset.layout != "split":  # before the classes: DATA/test given for DATA lacks the classes test/ lacks
        raise DatasetError(f"'{data_dir}' is in the flat layout; {split_hint(data_dir)}.")
    for bundle in bundles:
        check_classes(bundle.classes, dataset.classes, data_dir=data_dir)
    samples = dataset.split(options.split)
    if not samples:
        raise DatasetError(f"'{data_dir}' has no images in {options.split}/; pick another --split or add images.")
    problem = _resolve_spec(options.spec, data_dir)
    if problem is not None:
        for bundle in bundles:
            problem.check_classes(bundle.classes)
    val_samples = dataset.split("val")
    if options.ood is not None and not val_samples:
        from sightline.monitor.reference import REFERENCE_FILE

        for bundle in bundles:
            if bundle.path is None or not (bundle.path / REFERENCE_FILE).is_file():
                raise DatasetError(f"--ood needs a reference profile: '{data_dir}' has no val/ split to build one "
                                   f"from and {bundle.path} has no {REFERENCE_FILE}; evaluate on data with a val split.")

    groups: dict[Preprocessing, list[int]] = {}
    for i, bundle in enumerate(bundles):
        groups.setdefault(bundle.preprocessing, []).append(i)
    results: list[EvaluationResult | None] = [None] * len(bundles)
    with _progress_fn(progress) as report_progress:
        job = _Job(options=options, data_dir=data_dir, dataset=dataset, problem=problem, n_val=len(val_samples),
                   device=options.device or default_device(), progress=report_progress)
        for pre, members in groups.items():
            done = _evaluate_group([bundles[i] for i in members], job, pre=pre, samples=samples,
                                   val_samples=val_samples, outs=[outs[i] for i in members],
                                   reports=[reports[i] for i in members])
            for i, result in zip(members, done):
                results[i] = result
    return [r for r in results if r is not None]


def _evaluate_group(
    group: list[Bundle], job: _Job, *, pre: Preprocessing, samples: list[Sample], val_samples: list[Sample],
    outs: list[Path | None], reports: list[bool],
) -> list[EvaluationResult]:
    """The runs of one preprocessing: each image decoded once for all of them (see `_evaluate_runs`)."""
    from sightline.inference import open_engine, score_files

    started = time.perf_counter()
    split = job.options.split
    with ExitStack() as stack:
        engines = [stack.enter_context(open_engine(b, backend="torch", device=job.device)) for b in group]
        common = {"batch_size": job.options.batch_size, "progress": job.progress}
        timings: dict[str, float] = {}
        val_logits: list[np.ndarray | None] = [None] * len(group)
        val_kept: list[Sample] = []
        val_scores: ValScores | None = None
        if val_samples and any(_builds_reference(b, job) for b in group):
            # One pass serves calibration and the reference profile: image statistics and the crops the
            # corruption stand-ins start from are taken as the images decode (seeded as the profile draws them).
            from sightline.evaluate.reference import score_val

            t0 = time.perf_counter()
            val_scores = score_val(engines, val_samples, seed=job.options.seed, task="val (calibration, thresholds, "
                                   "reference)", **common)
            val_logits = [o.logits for o in val_scores.outputs]
            val_kept = val_scores.samples
            timings["val_s"] = time.perf_counter() - t0
        elif val_samples:
            t0 = time.perf_counter()
            val_out, val_inputs = score_files(
                engines, [s.path for s in val_samples], task="val (calibration, thresholds)", **common)
            val_logits = [o.logits for o in val_out]
            val_kept = [val_samples[i] for i in val_inputs.index]
            timings["val_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        outputs, inputs = score_files(engines, [s.path for s in samples], task=f"{split} (metrics)", **common)
        timings["predict_s"] = time.perf_counter() - t0
        kept = [samples[i] for i in inputs.index]
        if not kept:
            raise DatasetError(f"no image in '{job.data_dir}/{split}' could be read; see `sightline data audit "
                               f"{job.data_dir}`.")
        crops = _SplitCrops([s.path for s in kept], pre, remember=len(group) > 1)
        shared_s = time.perf_counter() - started
        return [
            _evaluate_one(bundle, engine, _Scored(
                logits_val=val_logits[j], val_samples=val_kept, logits=outputs[j].logits,
                features=outputs[j].features, samples=kept,
                failed=inputs.failed, crops=crops, timings=dict(timings), shared_s=shared_s,
                val=None if val_scores is None else val_scores.of(j),
            ), job, out=outs[j], report=reports[j])
            for j, (bundle, engine) in enumerate(zip(group, engines))
        ]


def _evaluate_one(
    bundle: Bundle, engine: Engine, scored: _Scored, job: _Job, *, out: Path | None, report: bool
) -> EvaluationResult:
    """Metrics, explanations, robustness and files for one run from its predictions (the steps of the module
    docstring)."""
    from sightline.data.datasets import is_region_file
    from sightline.decision import decide

    started = time.perf_counter()
    timings = scored.timings
    classes = bundle.classes
    y_val = _labels(scored.val_samples, classes) if scored.logits_val is not None else None
    fitted = fit_on_val(scored.logits_val, y_val, classes, problem=job.problem,  # 1
                        bundle_temperature=bundle.temperature, bundle_thresholds=bundle.thresholds)
    t0 = time.perf_counter()
    y = _labels(scored.samples, classes)
    dec = decide(scored.logits, classes, temperature=fitted.temperature, thresholds=fitted.thresholds)
    result = split_figures(  # 2
        scored.logits, y, dec, classes, fitted=fitted, problem=job.problem, options=job.options, n_val=job.n_val,
        # files of the split the scan already refused (not images, unreadable, too large) with those that failed
        # to decode: both are left out of the figures, and metrics.json and the report say so
        unreadable=[_relative(f, job.dataset.root) for f in scored.failed] + [
            {"path": f["path"], "reason": f["reason"]} for f in job.dataset.skipped
            if f["path"].split("/", 1)[0] == job.options.split and not is_region_file(f["path"])],
        model={"name": bundle.name, "version": bundle.version, "architecture": bundle.architecture,
               "path": str(bundle.path), "dataset_version": bundle.dataset_version},
        data={"root": str(job.data_dir), "n_val": job.n_val, "device": job.device},
    )
    timings["predict_s"] = timings["predict_s"] + time.perf_counter() - t0
    t0 = time.perf_counter()
    gallery = _explain(engine, bundle, scored, y, dec, result, job, gallery=report)  # 3
    timings["explain_s"] = time.perf_counter() - t0
    if job.options.robustness:  # 4
        t0 = time.perf_counter()
        result.robustness = _robustness(engine, bundle, scored.crops, y, fitted, job)
        timings["robustness_s"] = time.perf_counter() - t0
    if job.options.update_bundle:  # 5
        _store_in_bundle(bundle, result, fitted)
    _open_set(engine, bundle, scored, fitted, result, job)
    timings["total_s"] = scored.shared_s + time.perf_counter() - started
    result.timings = {k: round(v, 2) for k, v in timings.items()}
    _write_files(result, bundle, out, report=report, gallery=gallery, update_bundle=job.options.update_bundle)
    return result


def _explain(
    engine: Engine, bundle: Bundle, scored: _Scored, y: np.ndarray, dec: Decisions, result: EvaluationResult,
    job: _Job, *, gallery: bool = True,
) -> list[dict[str, Any]]:
    """Step 3: the gallery (returned, for the report; none without one: its heatmaps and pictures only show there)
    and the region scores (into `result.pointing_game`)."""
    from sightline.explain.orchestrate import explain_split
    from sightline.inference import TorchBackend

    backend = engine.backend
    assert isinstance(backend, TorchBackend)  # pytorch-grad-cam needs the nn.Module
    options = job.options
    found = explain_split(
        backend.model, crops=scored.crops, samples=scored.samples, y=y, decisions=dec, classes=bundle.classes,
        pre=bundle.preprocessing, method=options.method, review_confidence=result.review["review_confidence"],
        per_group=options.gallery_per_group if gallery else 0, max_region_images=options.max_region_images,
        seed=options.seed,
    )
    result.pointing_game = found.regions
    return found.gallery


def _robustness(
    engine: Engine, bundle: Bundle, crops: _SplitCrops, y: np.ndarray, fitted: Fitted, job: _Job
) -> dict[str, Any]:
    """Step 4: the corruption suite on a seeded sample of the split (`crops` gives pixels by position)."""
    from sightline.decision import decide
    from sightline.evaluate.robustness import CORRUPTIONS, failure_modes, robustness_suite
    from sightline.progress import Steps

    options = job.options
    rng = np.random.default_rng(options.seed)
    idx = np.arange(len(y))
    if len(idx) > options.robustness_images:
        idx = np.sort(rng.choice(idx, options.robustness_images, replace=False))

    def predict(batch: np.ndarray) -> np.ndarray:
        logits = engine.run_crops(batch, batch_size=options.batch_size).logits
        return decide(logits, bundle.classes, temperature=fitted.temperature, thresholds=fitted.thresholds).labels

    with Steps(job.progress, "robustness", len(CORRUPTIONS) * len(options.severities)) as steps:
        result = robustness_suite(predict, crops(idx), y[idx], severities=options.severities, seed=options.seed,
                                  on_step=steps.advance)
    result["failure_modes"] = failure_modes(result)
    return result


def _store_in_bundle(bundle: Bundle, result: EvaluationResult, fitted: Fitted) -> None:
    """Step 5a: the val-fitted temperature and thresholds (what the server enforces) and the headline figures."""
    bundle.temperature = fitted.temperature
    bundle.thresholds = dict(fitted.thresholds)
    figures = {k: result[k] for k in ("split", "n_images", *HEADLINE_KEYS)} | {"ci": result.ci,
                                                                              "targets": result.targets}
    if result.pointing_game is not None:
        figures["pointing_game"] = result.pointing_game["overall"]
    bundle.metrics[result.split] = figures
    bundle.write_json()


def _relative(failed: dict[str, str], root: Path) -> dict[str, str]:
    """A decode failure's path relative to the dataset root, as the scan's refusals and the manifest name files
    (metrics.json's `unreadable` mixed absolute paths with relative ones)."""
    try:
        return {**failed, "path": Path(failed["path"]).relative_to(root).as_posix()}
    except ValueError:
        return failed


def _builds_reference(bundle: Bundle, job: _Job) -> bool:
    """Whether step 5 builds a reference profile for `bundle`: refreshed into the bundle, or (--ood on a bundle
    without one) built in memory. Both need a val split."""
    from sightline.monitor.reference import REFERENCE_FILE

    options = job.options
    if job.n_val == 0:
        return False
    if options.reference and options.update_bundle:
        return True
    return options.ood is not None and (bundle.path is None or not (bundle.path / REFERENCE_FILE).is_file())


def _open_set(engine: Engine, bundle: Bundle, scored: _Scored, fitted: Fitted, result: EvaluationResult,
              job: _Job) -> None:
    """Step 5a': the monitor's reference profile refreshed from val at the val-fitted temperature (written into the
    bundle with update_bundle; built in memory only when --ood needs it), and with --ood the open-set figures of
    every score on the user's outliers against the evaluated split."""
    from sightline.evaluate.openset import ood_folder_report
    from sightline.evaluate.reference import build_bundle_reference, reference_summary
    from sightline.monitor.reference import ReferenceProfile, load_reference

    options = job.options
    timings = scored.timings

    def build(save: bool) -> ReferenceProfile:
        t0 = time.perf_counter()
        profile = build_bundle_reference(bundle, job.dataset, engine=engine, val=scored.val,
                                         temperature=fitted.temperature, batch_size=options.batch_size,
                                         seed=options.seed, save=save, progress=job.progress)
        result.reference = reference_summary(profile)
        timings["reference_s"] = time.perf_counter() - t0
        return profile

    if options.reference and options.update_bundle and job.n_val > 0:
        try:
            profile = build(save=True)
        except DatasetError as exc:  # too few readable val images: the metrics stand; only the profile is missing
            if options.ood is not None:
                raise
            note = (f"no reference profile written ({one_line(exc).rstrip('.')}); the bundle keeps the one it had, if "
                    "any, and `sightline monitor` needs one")
            result.warning = f"{result.warning} {note}" if result.warning else note
            return
    elif options.ood is None:
        return
    else:  # --ood with the profile the bundle holds; one built from val (not saved) for a bundle without one
        assert bundle.path is not None
        profile = load_reference(bundle.path)
        if profile is None and job.n_val > 0:
            profile = build(save=False)
    if options.ood is None:
        return
    if profile is None:  # checked before any work: no val split and none in the bundle
        raise DatasetError(f"--ood needs a reference profile and {bundle.path} has none; evaluate on data with a "
                           "val split.")
    t0 = time.perf_counter()
    result.ood = ood_folder_report(engine, profile, options.ood, in_logits=scored.logits, in_features=scored.features,
                                   split=result.split, batch_size=options.batch_size, progress=job.progress)
    timings["ood_s"] = time.perf_counter() - t0


def _write_files(
    result: EvaluationResult, bundle: Bundle, out: Path | None, *, report: bool, gallery: list[dict[str, Any]],
    update_bundle: bool,
) -> None:
    """Step 5b: metrics.json, report.html and (with update_bundle) MODEL_CARD.md; `result.files` lists them."""
    out_dir = out if out is not None else _default_out(bundle)
    out_dir.mkdir(parents=True, exist_ok=True)
    result.files = {"metrics": str(out_dir / "metrics.json")}
    if report:
        from sightline.evaluate.report import write_model_card, write_report

        result.files["report"] = str(write_report(result, out_dir / "report.html", gallery=gallery))
        if update_bundle:
            result.files["model_card"] = str(write_model_card(result, bundle))
    write_json(result, out_dir / "metrics.json")


def _seed_summary(runs: list[Path], results: list[EvaluationResult]) -> SeedSummary:
    """Per-seed headline metrics and their mean and sample std (0 for one seed)."""
    per_seed = [{"seed": run.name.split("-", 1)[1], **{k: r.get(k) for k in HEADLINE_KEYS}}
                for run, r in zip(runs, results)]
    summary: SeedSummary = {"n_seeds": len(runs), "per_seed": per_seed, "mean": {}, "std": {}}
    for k in HEADLINE_KEYS:
        values = np.array([r[k] for r in results if r.get(k) is not None], dtype=np.float64)
        if len(values):
            summary["mean"][k] = float(values.mean())
            summary["std"][k] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return summary
