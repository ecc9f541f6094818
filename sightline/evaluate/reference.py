"""The monitor's reference profile of a bundle, built from its dataset through the inference core (issue 11,
sections 1 and 2): `train` writes it for every new bundle, `evaluate` refreshes it after recalibrating.

What happens, in order:
1. every VALIDATION image is decoded once (`Engine.decode`): its image statistics (`monitor.stats.image_stats`)
   are measured on the decoded image and its crop is scored (logits and pooled features);
2. a seeded, class-stratified sample of at most `bank_images` (5,000) TRAINING images is scored for the k-NN bank
   and the PCA basis (`score_files`);
3. stand-in outliers are made without new data (`sightline.evaluate.outliers`: synthetic textures and noise,
   severity-5 corruptions of `corrupt_images` validation crops, scikit-image's photos) and scored;
4. `monitor.reference.build_reference` + `fit_ood` choose the open-set score (highest AUROC, validation vs
   stand-ins) and its threshold (the `quantile` of validation scores: 99 % of validation images accepted);
5. `bundle/reference.npz` is written and model.json gets `extra["reference"]`: the profile's summary, every
   score's figures and the rejection rate per stand-in family.

Probabilities use the bundle's temperature (or `temperature`, what evaluate just fitted on val); the profile
records it. Old bundles without reference.npz keep working everywhere: the monitor says how to add one.

Example:
    >>> profile = build_bundle_reference("runs/demo", "data/parts")        # writes runs/demo/bundle/reference.npz
    >>> profile.ood_choice.score, profile.ood_choice.threshold
    >>> print("\\n".join(describe_reference(load_bundle("runs/demo").extra["reference"])))
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sightline.errors import DatasetError, ImageError, UserInputError

if TYPE_CHECKING:
    from sightline.bundle import Bundle
    from sightline.data.datasets import Dataset, Sample
    from sightline.evaluate.outliers import StandIns
    from sightline.inference import Engine
    from sightline.monitor.reference import ReferenceProfile
    from sightline.progress import ProgressFn

__all__ = ["BANK_IMAGES", "CORRUPT_IMAGES", "build_bundle_reference", "stand_in_report", "reference_summary",
           "describe_reference"]

BANK_IMAGES = 5000  # training images scored for the k-NN bank (12.8 MB at 1,280 features, float16)
CORRUPT_IMAGES = 16  # validation crops corrupted by each of the 8 corruptions for the stand-in outliers


def build_bundle_reference(
    bundle: Bundle | str | Path,
    data: Dataset | str | Path,
    *,
    engine: Engine | None = None,
    temperature: float | None = None,
    quantile: float = 0.99,
    bank_images: int = BANK_IMAGES,
    corrupt_images: int = CORRUPT_IMAGES,
    per_kind: int = 12,
    photos: bool = True,
    batch_size: int = 64,
    device: str | None = None,
    seed: int = 0,
    save: bool = True,
    progress: ProgressFn | None = None,
) -> ReferenceProfile:
    """Build (and with `save`, write into the bundle) the reference profile of `bundle` from the val split of
    `data` (a folder in the split layout or a scanned Dataset); see the module docstring for the steps.

    `engine`: an open Engine of this bundle to reuse (evaluate passes its own); otherwise a PyTorch one is
    opened on `device` and closed here. `temperature`: the calibration to record (default the bundle's).
    `quantile`: the share of validation images the open-set threshold accepts. `per_kind`: synthetic images per
    texture kind; `photos`: include scikit-image's photos (skipped, with a note, when it is not installed).

    Raises DatasetError when the dataset has no val split, no readable val image or other classes than the
    bundle; BundleError when the engine's ONNX graph has no features output."""
    from sightline.bundle import Bundle, load_bundle
    from sightline.data.datasets import Dataset, scan_dataset
    from sightline.evaluate.outliers import stand_in_outliers
    from sightline.monitor.reference import build_reference
    from sightline.progress import Steps

    started = time.perf_counter()
    bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    dataset = data if isinstance(data, Dataset) else scan_dataset(data)
    if not 0.5 <= quantile < 1.0:
        raise UserInputError(f"the open-set quantile must lie in [0.5, 1), got {quantile}")
    _check_classes(bundle, dataset)
    val = dataset.split("val")
    if not val:
        raise DatasetError(f"'{dataset.root}' has no val/ split; the reference profile is built from validation "
                           f"images: run `sightline data split` or add DATA/val/<class>/ folders.")
    t = float(bundle.temperature if temperature is None else temperature)
    with ExitStack() as stack:
        if engine is None:
            from sightline.inference import open_engine

            engine = stack.enter_context(open_engine(bundle, backend="torch", device=device))
        engine.require_features()
        rng = np.random.default_rng(seed)
        corrupt_at = set(rng.choice(len(val), min(corrupt_images, len(val)), replace=False).tolist())
        vlogits, vfeats, vstats, vcrops, failed = _score_val(engine, val, corrupt_at, batch_size=batch_size,
                                                             progress=progress)
        if len(vlogits) < 2:
            raise DatasetError(f"only {len(vlogits)} image(s) of '{dataset.root}/val' could be read; the reference "
                               "profile needs at least 2 (see `sightline data audit`).")
        bank_feats, bank_labels, n_train = _score_bank(engine, dataset, bundle.classes, bank_images, seed=seed,
                                                       batch_size=batch_size, progress=progress)
        outliers = stand_in_outliers(engine, vcrops, seed=seed, per_kind=per_kind, photos=photos)
        out = engine.run_crops(outliers.crops, batch_size=batch_size, progress=progress,
                               task="reference: stand-in outliers")
    meta = {"split": "val", "n_val": len(val), "n_val_unreadable": len(failed), "n_train": n_train,
            "bank_images_cap": bank_images, "dataset_root": str(dataset.root), "seed": seed,
            "architecture": bundle.architecture, "model_version": bundle.version}
    with Steps(progress, "reference: profile and open-set choice", None):
        profile = build_reference(vlogits, vfeats, classes=bundle.classes, temperature=t, image_stats=vstats,
                                  bank_features=bank_feats, bank_labels=bank_labels, bank_size=bank_images,
                                  seed=seed, meta=meta)
        profile.fit_ood(vlogits, vfeats, out.logits, out.features, quantile=quantile)
        profile.meta["stand_ins"] = stand_in_report(profile, vlogits, vfeats, out.logits, out.features, outliers)
        profile.meta["seconds"] = round(time.perf_counter() - started, 1)
    if save:
        assert bundle.path is not None  # loaded or saved bundles have one
        profile.save(bundle.path)
        bundle.extra["reference"] = reference_summary(profile)
        bundle.write_json()
    return profile


def _check_classes(bundle: Bundle, dataset: Dataset) -> None:
    only_data = sorted(set(dataset.classes) - set(bundle.classes))
    if only_data:
        raise DatasetError(f"'{dataset.root}' has classes {only_data} that the model does not know; build the "
                           f"reference on data with the model's classes {bundle.classes}.")


def _score_val(engine: Engine, samples: Sequence[Sample], keep: set[int], *, batch_size: int,
               progress: ProgressFn | None) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]], np.ndarray,
                                                     list[dict[str, str]]]:
    """Each validation image decoded once: (N, K) logits, (N, D) features, N image statistics, the crops of the
    positions in `keep` that decoded (M, S, S, 3) uint8, and the unreadable files ({"path", "reason"})."""
    from sightline.inference import Output
    from sightline.monitor.stats import image_stats
    from sightline.progress import Steps

    def one(path: Path) -> tuple[dict[str, Any], np.ndarray]:
        image = engine.decode(path)
        return image_stats(image, path), engine.crop(image)

    parts: list[Output] = []
    stats: list[dict[str, Any]] = []
    kept: list[np.ndarray] = []
    failed: list[dict[str, str]] = []
    with Steps(progress, "reference: val images", len(samples)) as steps:
        for start in range(0, len(samples), batch_size):
            chunk = samples[start : start + batch_size]
            crops = []
            for i, (sample, res) in enumerate(zip(chunk, engine.map(one, [s.path for s in chunk])), start):
                if isinstance(res, (ImageError, OSError)):
                    failed.append({"path": str(sample.path), "reason": str(res)})
                    continue
                if isinstance(res, BaseException):
                    raise res  # a bug, not a bad file
                stats.append(res[0])
                crops.append(res[1])
                if i in keep:
                    kept.append(res[1])
            if crops:
                parts.append(engine.run(engine.to_batch(np.stack(crops))))
            steps.advance(len(chunk))
    out = Output.concat(parts, num_classes=len(engine.classes))
    s = engine.preprocessing.input_size
    held = np.stack(kept) if kept else np.zeros((0, s, s, 3), np.uint8)
    feats = out.features if out.features is not None else np.zeros((0, 0), np.float32)
    return out.logits, feats, stats, held, failed


def _score_bank(engine: Engine, dataset: Dataset, classes: list[str], cap: int, *, seed: int, batch_size: int,
                progress: ProgressFn | None) -> tuple[np.ndarray | None, np.ndarray | None, int]:
    """Features and labels of a class-stratified, seeded sample of at most `cap` training images (None, None
    without a train split), and how many training images there were."""
    from sightline.inference import score_files

    train = dataset.split("train")
    if not train or cap < 1:
        return None, None, len(train)
    labels = np.array([classes.index(s.label) for s in train], dtype=np.int64)
    rows = np.arange(len(train))
    if len(train) > cap:
        rng = np.random.default_rng(seed)
        rows = np.concatenate([
            rng.choice(idx, min(idx.size, max(1, round(cap * idx.size / len(train)))), replace=False)
            for idx in (np.flatnonzero(labels == c) for c in np.unique(labels))])
        if rows.size > cap:  # rounding small classes up can overshoot by a few rows
            rows = rng.choice(rows, cap, replace=False)
        rows = np.sort(rows)
    (out,), inputs = score_files([engine], [train[i].path for i in rows], batch_size=batch_size, progress=progress,
                                 task="reference: train sample (k-NN bank)")
    if out.features is None or len(out) < 2:
        return None, None, len(train)
    return out.features, labels[rows[inputs.index]], len(train)


def stand_in_report(profile: ReferenceProfile, val_logits: np.ndarray, val_features: np.ndarray | None,
                    logits: np.ndarray, features: np.ndarray | None, outliers: StandIns) -> dict[str, Any]:
    """How the chosen open-set score treats each stand-in family and kind, from (N, K) / (N, D) validation and
    (M, K) / (M, D) stand-in outputs: {n, score, rejection_rate, notes, families: {family: {n, rejection_rate,
    auroc, kinds: {kind: {n, rejection_rate}}}}}. AUROC is against the validation images, on which the
    score was also chosen (optimistic)."""
    from sightline.monitor import ood

    choice = profile.ood_choice
    assert choice is not None  # fit_ood ran
    scores, flagged = profile.unknown(logits, features)
    val_scores = profile.unknown(val_logits, val_features)[0]
    families: dict[str, dict[str, Any]] = {}
    fam, kind = np.array(outliers.families), np.array(outliers.kinds)
    for name in dict.fromkeys(outliers.families):
        rows = fam == name
        families[name] = {"n": int(rows.sum()), "rejection_rate": float(flagged[rows].mean()),
                          "auroc": ood.auroc(val_scores, scores[rows]), "kinds": {}}
        for k in dict.fromkeys(kind[rows].tolist()):
            here = rows & (kind == k)
            families[name]["kinds"][k] = {"n": int(here.sum()), "rejection_rate": float(flagged[here].mean())}
    return {"n": len(outliers), "score": choice.score, "rejection_rate": float(flagged.mean()) if len(flagged) else None,
            "families": families, "notes": list(outliers.notes)}


def reference_summary(profile: ReferenceProfile) -> dict[str, Any]:
    """What model.json keeps about the profile (`bundle.extra["reference"]`): `profile.summary()`, every
    open-set score's figures on the stand-ins (`ood_table`: auroc, fpr_at_95_tpr, threshold, rejection_rate,
    val_flag_rate, chosen), how the choice was made, and the stand-in report."""
    summary = profile.summary()
    choice = profile.ood_choice
    if choice is not None:
        summary["ood"] |= {"chosen_by": choice.chosen_by, "n_in": choice.n_in, "n_out": choice.n_out,
                           "val_flag_rate": choice.val_flag_rate}
        summary["ood_table"] = choice.table
    summary["temperature"] = profile.temperature
    summary["stand_ins"] = profile.meta.get("stand_ins")
    summary["meta"] = {k: v for k, v in profile.meta.items() if k != "stand_ins"}
    return summary


def describe_reference(summary: dict[str, Any]) -> list[str]:
    """Plain lines for the command line from `reference_summary` (model.json's extra["reference"])."""
    meta = summary.get("meta", {})
    lines = [f"reference profile: {summary['n_images']} val images, k-NN bank of {summary['bank_size']} train "
             f"images, {summary['components']} PCA components -> {summary['file']}"]
    ood = summary.get("ood")
    if ood:
        table = summary.get("ood_table", {})
        row = table.get(ood["score"], {})
        auroc = row.get("auroc")
        lines.append(f"open-set score: {ood['score']} (AUROC {auroc:.3f} on {ood['n_out']} stand-in outliers; chosen "
                     f"by {ood['chosen_by']}); threshold {ood['threshold']:.4g} flags "
                     f"{ood['val_flag_rate']:.1%} of val" if auroc is not None else
                     f"open-set score: {ood['score']} ({ood['chosen_by']}); threshold {ood['threshold']:.4g}")
        others = ", ".join(f"{n} {r['auroc']:.3f}" for n, r in table.items() if r.get("auroc") is not None)
        if others:
            lines.append(f"  AUROC of every score: {others}")
    stand = summary.get("stand_ins") or {}
    if stand.get("families"):
        fams = ", ".join(f"{f} {v['rejection_rate']:.0%} of {v['n']}" for f, v in stand["families"].items())
        lines.append(f"  rejected as unknown: {stand['rejection_rate']:.0%} of stand-ins ({fams})")
    for note in stand.get("notes", []):
        lines.append(f"  note: {note}")
    if meta.get("n_val_unreadable"):
        lines.append(f"  {meta['n_val_unreadable']} val image(s) could not be read and were left out")
    return lines
