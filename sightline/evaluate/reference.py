"""The monitor's reference profile of a bundle, built from its dataset through the inference core (issue 11,
sections 1 and 2): `train` writes it for every new bundle, `evaluate` refreshes it after recalibrating.

What happens, in order:
1. every VALIDATION image is decoded once (`score_val`): its image statistics (`monitor.stats.image_stats`) are
   measured on the decoded image and its crop is scored (logits and pooled features). `evaluate` runs this pass
   for its calibration anyway and hands it over (`val=`), so val is not scored twice;
2. a seeded, class-stratified sample of at most `bank_images` (5,000) TRAINING images is decoded once and scored
   for the k-NN bank and the PCA basis, and its image statistics join validation's in the image-statistics
   reference (they do not depend on the model, so seen images describe them without bias; `score_val`), except a
   statistic whose training values differ from validation's (`check_train_stats`);
3. stand-in outliers are made without new data (`sightline.evaluate.outliers`: synthetic textures and noise,
   severity-5 corruptions of `corrupt_images` validation crops, scikit-image's photos) and scored;
4. `monitor.reference.build_reference` + `fit_ood` choose the open-set score (highest AUROC, validation vs
   stand-ins) and its threshold (the `quantile` of validation scores: 99 % of validation images accepted);
5. `bundle/reference.npz` is written and model.json gets `extra["reference"]`: the profile's summary, every
   score's figures and the rejection rate per stand-in family.

Steps 2 and 3 depend only on the model, its preprocessing, the chosen files and the seed, not on the temperature
or the quantile, so the profile keeps what they produced (the bank, PCA basis and Mahalanobis model; the stand-ins'
logits and float16 features) with a fingerprint of those inputs (`inputs_fingerprint`). A rebuild over a stored
profile whose fingerprint matches reuses them and runs the model on validation only; any difference (new weights,
another input size, other training files, another seed), an older file without these entries or an unreadable one
means a full rebuild. `profile.meta["built"]` says which and why; `describe_reference` prints it.

Probabilities use the bundle's temperature (or `temperature`, what evaluate just fitted on val); the profile
records it. Old bundles without reference.npz keep working everywhere: the monitor says how to add one.

Example:
    >>> profile = build_bundle_reference("runs/demo", "data/parts")        # writes runs/demo/bundle/reference.npz
    >>> profile.ood_choice.score, profile.ood_choice.threshold, profile.meta["built"]["mode"]   # "full" | "refresh"
    >>> print("\\n".join(describe_reference(load_bundle("runs/demo").extra["reference"])))
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sightline.errors import BundleError, DatasetError, ImageError, UserInputError, one_line

if TYPE_CHECKING:
    from sightline.bundle import Bundle
    from sightline.data.datasets import Dataset, Sample
    from sightline.inference import Engine, Output
    from sightline.monitor.reference import OutlierOutputs, ReferenceProfile
    from sightline.progress import ProgressFn

__all__ = ["BANK_IMAGES", "CORRUPT_IMAGES", "ValScores", "corrupt_positions", "score_val", "build_bundle_reference",
           "check_train_stats", "model_digest", "inputs_fingerprint", "stand_in_report", "reference_summary",
           "describe_reference"]

BANK_IMAGES = 5000  # training images scored for the k-NN bank (12.8 MB at 1,280 features, float16)
CORRUPT_IMAGES = 16  # validation crops corrupted by each of the 8 corruptions for the stand-in outliers
STAND_IN_RECIPE = 1  # bump when sightline.evaluate.outliers makes other images from the same settings
STATS_RECIPE = 2  # bump when sightline.monitor.stats measures other statistics (2: flat_share, training images'
# statistics stored); a stored profile of another recipe is rebuilt in full


@dataclass
class ValScores:
    """The validation split decoded once and scored by one or more engines (`score_val`)."""

    outputs: list[Output]  # per engine: (N_ok, K) logits, (N_ok, D) features, rows in `samples` order
    samples: list[Sample]  # the val samples that decoded, in row order
    stats: list[dict[str, Any]]  # image statistics of each decoded image (monitor.stats.image_stats)
    corrupt_crops: np.ndarray  # (M, S, S, 3) uint8: the decoded crops at `corrupt_at`, for the corruption stand-ins
    corrupt_at: list[int]  # seeded positions in the listed val split (decoded or not) the crops were taken from
    failed: list[dict[str, str]] = field(default_factory=list)  # unreadable files ({"path", "reason"})
    seconds: float = 0.0

    def of(self, j: int) -> ValScores:
        """The same images with the outputs of engine `j` only."""
        return ValScores([self.outputs[j]], self.samples, self.stats, self.corrupt_crops, self.corrupt_at,
                         self.failed, self.seconds)


def corrupt_positions(n_val: int, *, seed: int, corrupt_images: int = CORRUPT_IMAGES) -> list[int]:
    """Sorted seeded positions among `n_val` listed validation images whose crops the corruption stand-ins use."""
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(n_val, min(corrupt_images, n_val), replace=False).tolist())


def score_val(
    engines: Sequence[Engine],
    samples: Sequence[Sample],
    *,
    seed: int = 0,
    corrupt_images: int = CORRUPT_IMAGES,
    batch_size: int = 64,
    progress: ProgressFn | None = None,
    task: str = "reference: val images",
) -> ValScores:
    """Each validation image decoded once (on the first engine's threads) for its image statistics and its crop;
    every engine scores each batch of crops (the engines must share one preprocessing: the seeds of a run). Keeps
    the crops at `corrupt_positions(len(samples), seed, corrupt_images)` that decoded. A file that cannot be read
    is listed in `failed`, never raised; anything else is."""
    from sightline.inference import Output
    from sightline.monitor.stats import image_stats
    from sightline.progress import Steps

    started = time.perf_counter()
    first = engines[0]
    if any(e.preprocessing != first.preprocessing for e in engines):
        raise ValueError("score_val needs engines with one preprocessing; group them by preprocessing")

    def one(path: Path) -> tuple[dict[str, Any], np.ndarray]:
        image = first.decode(path)
        return image_stats(image, path), first.crop(image)

    keep = corrupt_positions(len(samples), seed=seed, corrupt_images=corrupt_images)
    wanted = set(keep)
    parts: list[list[Output]] = [[] for _ in engines]
    stats: list[dict[str, Any]] = []
    kept_samples: list[Sample] = []
    kept: list[np.ndarray] = []
    failed: list[dict[str, str]] = []
    with Steps(progress, task, len(samples)) as steps:
        for start in range(0, len(samples), batch_size):
            chunk = samples[start : start + batch_size]
            crops = []
            for i, (sample, res) in enumerate(zip(chunk, first.map(one, [s.path for s in chunk])), start):
                if isinstance(res, (ImageError, OSError)):
                    failed.append({"path": str(sample.path), "reason": str(res)})
                    continue
                if isinstance(res, BaseException):
                    raise res  # a bug, not a bad file
                stats.append(res[0])
                crops.append(res[1])
                kept_samples.append(sample)
                if i in wanted:
                    kept.append(res[1])
            if crops:
                x = first.to_batch(np.stack(crops))
                for out, engine in zip(parts, engines):
                    out.append(engine.run(x))
            steps.advance(len(chunk))
    s = first.preprocessing.input_size
    outputs = [Output.concat(out, num_classes=len(e.classes)) for out, e in zip(parts, engines)]
    held = np.stack(kept) if kept else np.zeros((0, s, s, 3), np.uint8)
    return ValScores(outputs, kept_samples, stats, held, keep, failed, time.perf_counter() - started)


def build_bundle_reference(
    bundle: Bundle | str | Path,
    data: Dataset | str | Path,
    *,
    engine: Engine | None = None,
    val: ValScores | None = None,
    temperature: float | None = None,
    quantile: float = 0.99,
    bank_images: int = BANK_IMAGES,
    corrupt_images: int = CORRUPT_IMAGES,
    per_kind: int = 12,
    photos: bool = True,
    batch_size: int = 64,
    device: str | None = None,
    seed: int = 0,
    reuse: bool = True,
    save: bool = True,
    progress: ProgressFn | None = None,
) -> ReferenceProfile:
    """Build (and with `save`, write into the bundle) the reference profile of `bundle` from the val split of
    `data` (a folder in the split layout or a scanned Dataset); see the module docstring for the steps.

    `engine`: an open Engine of this bundle to reuse (evaluate passes its own); otherwise a PyTorch one is
    opened on `device` and closed here. `val`: this engine's `score_val` of the dataset's val split with the same
    `seed` and `corrupt_images` (evaluate's calibration pass), so val is not scored again. `temperature`: the
    calibration to record (default the bundle's). `quantile`: the share of validation images the open-set
    threshold accepts. `per_kind`: synthetic images per texture kind; `photos`: include scikit-image's photos
    (skipped, with a note, when it is not installed). `reuse`: take the training bank and the stand-ins' outputs
    from the bundle's stored profile when its fingerprint matches (see the module docstring); False always
    rebuilds in full.

    Raises DatasetError when the dataset has no val split, no readable val image or other classes than the
    bundle; BundleError when the engine's ONNX graph has no features output."""
    from sightline.bundle import Bundle, load_bundle
    from sightline.data.datasets import Dataset, scan_dataset
    from sightline.progress import Steps

    started = time.perf_counter()
    bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    dataset = data if isinstance(data, Dataset) else scan_dataset(data)
    if not 0.5 <= quantile < 1.0:
        raise UserInputError(f"the open-set quantile must lie in [0.5, 1), got {quantile}")
    _check_classes(bundle, dataset)
    val_samples = dataset.split("val")
    if not val_samples:
        raise DatasetError(f"'{dataset.root}' has no val/ split; the reference profile is built from validation "
                           f"images: run `sightline data split` or add DATA/val/<class>/ folders.")
    t = float(bundle.temperature if temperature is None else temperature)
    seconds: dict[str, float] = {}
    with ExitStack() as stack:
        if engine is None:
            from sightline.inference import open_engine

            engine = stack.enter_context(open_engine(bundle, backend="torch", device=device))
        engine.require_features()
        if val is None:
            val = score_val([engine], val_samples, seed=seed, corrupt_images=corrupt_images, batch_size=batch_size,
                            progress=progress)
            seconds["val_s"] = val.seconds
        elif len(val.outputs) != 1 or val.corrupt_at != corrupt_positions(len(val_samples), seed=seed,
                                                                          corrupt_images=corrupt_images):
            raise ValueError("`val` must be one engine's score_val of this dataset's val split with the same seed "
                             "and corrupt_images")
        vout = val.outputs[0]
        vlogits = vout.logits
        vfeats = vout.features if vout.features is not None else np.zeros((len(vlogits), 0), np.float32)
        if len(vlogits) < 2:
            raise DatasetError(f"only {len(vlogits)} image(s) of '{dataset.root}/val' could be read; the reference "
                               "profile needs at least 2 (see `sightline data audit`).")
        t0 = time.perf_counter()
        bank_rows, bank_labels_all = _bank_rows(dataset, bundle.classes, bank_images, seed=seed)
        fingerprint = inputs_fingerprint(engine, dataset, bank_rows=bank_rows, val_samples=val_samples,
                                         corrupt_at=val.corrupt_at, seed=seed, per_kind=per_kind, photos=photos)
        stored, why = _stored_profile(bundle, fingerprint) if reuse else (None, "asked for a full rebuild")
        seconds["fingerprint_s"] = time.perf_counter() - t0
        n_train = len(dataset.split("train"))
        bank_feats = bank_labels = None
        bank_stats: list[dict[str, Any]] = []
        if stored is None:
            t0 = time.perf_counter()
            bank_feats, bank_labels, bank_stats = _score_bank(engine, dataset, bank_rows, bank_labels_all,
                                                              batch_size=batch_size, progress=progress)
            seconds["bank_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            outliers = _score_stand_ins(engine, val.corrupt_crops, seed=seed, per_kind=per_kind, photos=photos,
                                        batch_size=batch_size, progress=progress)
            seconds["stand_ins_s"] = time.perf_counter() - t0
        else:
            assert stored.outliers is not None  # _stored_profile checked
            outliers = stored.outliers
    meta = {"split": "val", "n_val": len(val_samples), "n_val_unreadable": len(val.failed), "n_train": n_train,
            "bank_images_cap": bank_images, "dataset_root": str(dataset.root), "seed": seed,
            "architecture": bundle.architecture, "model_version": bundle.version,
            "built": {"mode": "full" if stored is None else "refresh", "reason": why}}
    t0 = time.perf_counter()
    with Steps(progress, "reference: profile and open-set choice", None), _too_few_images(dataset):
        from sightline.monitor.reference import build_reference, refresh_reference

        if stored is not None and stored.bank is not None:
            profile = refresh_reference(stored, vlogits, vfeats, temperature=t, image_stats=val.stats, meta=meta)
        else:  # a full build; or a refresh of a profile without a training side (no train split): nothing to keep
            profile = build_reference(vlogits, vfeats, classes=bundle.classes, temperature=t, image_stats=val.stats,
                                      bank_features=bank_feats, bank_labels=bank_labels, bank_size=bank_images,
                                      seed=seed, meta=meta, train_image_stats=bank_stats or None)
        profile.outliers, profile.fingerprint = outliers, fingerprint
        profile.meta["train_stats"] = check_train_stats(profile)
        profile.fit_ood(vlogits, vfeats, outliers.logits, outliers.features32, quantile=quantile)
        profile.meta["stand_ins"] = stand_in_report(profile, vlogits, vfeats, outliers)
    seconds["fit_s"] = time.perf_counter() - t0
    profile.meta["timings"] = {k: round(v, 2) for k, v in seconds.items()}
    profile.meta["seconds"] = round(time.perf_counter() - started, 1)
    if save:
        assert bundle.path is not None  # loaded or saved bundles have one
        profile.save(bundle.path)
        bundle.extra["reference"] = reference_summary(profile)
        bundle.write_json()
    return profile


TRAIN_STATS_ALPHA = 0.01  # a statistic whose training sample differs from validation at this level (Holm) is left out


def check_train_stats(profile: ReferenceProfile, *, alpha: float = TRAIN_STATS_ALPHA) -> dict[str, Any]:
    """Leave out of the image-statistics reference each training-sample statistic that differs from validation's
    (KS / chi-square, Holm over the statistics, at `alpha`): the reference is meant to be one population, and a
    training split gathered apart from validation (another camera, another season) would otherwise make production
    that looks like validation drift from its first window. Returns {"kept": [...], "left_out": {name: adjusted
    p}} for the profile's meta; {} without training statistics."""
    from sightline.monitor.drift import image_stats_test

    train = profile.train_image_stats
    if not train:
        return {}
    result = image_stats_test(train, profile.image_stats, alpha=alpha, min_window=2)
    left_out = {pt["name"]: round(pt["p_adjusted"], 6) for pt in result.parts if pt["significant"]}
    profile.keep_train_stats([name for name in train if name not in left_out])
    return {"kept": sorted(profile.train_image_stats), "left_out": left_out, "alpha": alpha}


def _check_classes(bundle: Bundle, dataset: Dataset) -> None:
    only_data = sorted(set(dataset.classes) - set(bundle.classes))
    if only_data:
        raise DatasetError(f"'{dataset.root}' has classes {only_data} that the model does not know; build the "
                           f"reference on data with the model's classes {bundle.classes}.")


def _bank_rows(dataset: Dataset, classes: list[str], cap: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions in the train split of a class-stratified, seeded sample of at most `cap` training images (sorted),
    and the labels of the whole train split."""
    train = dataset.split("train")
    labels = np.array([classes.index(s.label) for s in train], dtype=np.int64)
    if not train or cap < 1:
        return np.zeros(0, np.int64), labels
    rows = np.arange(len(train))
    if len(train) > cap:
        rng = np.random.default_rng(seed)
        rows = np.concatenate([
            rng.choice(idx, min(idx.size, max(1, round(cap * idx.size / len(train)))), replace=False)
            for idx in (np.flatnonzero(labels == c) for c in np.unique(labels))])
        if rows.size > cap:  # rounding small classes up can overshoot by a few rows
            rows = rng.choice(rows, cap, replace=False)
        rows = np.sort(rows)
    return rows, labels


@contextmanager
def _too_few_images(dataset: Dataset) -> Iterator[None]:
    """What the profile's build refuses (its minimums: 4 val images without a training side, 3 rows for a
    covariance; outputs that are not finite) as a DatasetError naming the dataset: `train` and `evaluate` then go on
    without a profile and say why. As a UserInputError from deep inside, it stopped `train` after training (exit 2,
    the bundle without a profile) and `evaluate` entirely."""
    try:
        yield
    except UserInputError as exc:
        why = one_line(exc).rstrip(".")
        fix = "; add images to train/ and val/" if "at least" in why else ""
        raise DatasetError(f"the reference profile cannot be built from '{dataset.root}' ({why}){fix}") from None


def _score_bank(engine: Engine, dataset: Dataset, rows: np.ndarray, labels: np.ndarray, *, batch_size: int,
                progress: ProgressFn | None) -> tuple[np.ndarray | None, np.ndarray | None, list[dict[str, Any]]]:
    """Features, labels and image statistics of the training images at `rows` that decode (None, None, [] without
    any, or with fewer than 3: the relative Mahalanobis score's covariance needs 3; the profile is then built without
    a training side). Unreadable files are left out, as in the rest of the reference."""
    if rows.size == 0:
        return None, None, []
    train = dataset.split("train")
    scored = score_val([engine], [train[i] for i in rows], corrupt_images=0, batch_size=batch_size,
                       progress=progress, task="reference: train sample (k-NN bank)")
    out = scored.outputs[0]
    if out.features is None or len(out) < 3:
        return None, None, []
    position = {id(s): j for j, s in enumerate(train)}
    decoded = np.array([position[id(s)] for s in scored.samples], dtype=np.int64)
    return out.features, labels[decoded], scored.stats


def _score_stand_ins(engine: Engine, val_crops: np.ndarray, *, seed: int, per_kind: int, photos: bool,
                     batch_size: int, progress: ProgressFn | None) -> OutlierOutputs:
    """The stand-in outliers made and scored; features kept L2-normalised in float16, as the profile stores them
    (every feature score normalises first; raw features of an untrained net can pass float16's 65,504), so a
    refresh scores exactly what this build scored."""
    from sightline.evaluate.outliers import stand_in_outliers
    from sightline.monitor.ood import l2_normalize
    from sightline.monitor.reference import OutlierOutputs

    made = stand_in_outliers(engine, val_crops, seed=seed, per_kind=per_kind, photos=photos)
    out = engine.run_crops(made.crops, batch_size=batch_size, progress=progress, task="reference: stand-in outliers")
    feats = None if out.features is None else l2_normalize(out.features).astype(np.float16)
    return OutlierOutputs(out.logits.astype(np.float32), feats, list(made.families), list(made.kinds),
                          list(made.notes))


def _digest(rows: list[Any]) -> str:
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()


def _files_digest(samples: Sequence[Sample]) -> str:
    """Which files, as what: relative path, label and size in bytes of each (cheap for 5,000 files; an image
    replaced by another of exactly the same size is not seen: `build_bundle_reference(..., reuse=False)`)."""
    rows = []
    for s in samples:
        try:
            size = os.stat(s.path).st_size
        except OSError:
            size = None
        rows.append([s.relpath, s.label, size])
    return _digest(rows)


def model_digest(engine: Engine) -> str:
    """SHA-256 of what `engine` runs: a PyTorch model's state dict (names, dtypes, shapes, values) or the ONNX
    file's bytes, prefixed by the backend kind ("torch:...", "onnx-int8:...")."""
    from sightline.inference import OnnxBackend, TorchBackend

    backend = engine.backend
    h = hashlib.sha256()
    if isinstance(backend, TorchBackend):
        import torch

        for name, tensor in backend.model.state_dict().items():
            t = tensor.detach().cpu().contiguous().reshape(-1)
            h.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}|".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())  # the bytes of any dtype (bfloat16 has no numpy twin)
    elif isinstance(backend, OnnxBackend):
        with open(backend.path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    else:
        raise ValueError(f"no fingerprint for a {type(backend).__name__} backend")
    return f"{backend.kind}:{h.hexdigest()}"


def inputs_fingerprint(engine: Engine, dataset: Dataset, *, bank_rows: np.ndarray, val_samples: Sequence[Sample],
                       corrupt_at: Sequence[int], seed: int, per_kind: int, photos: bool) -> dict[str, Any]:
    """What the training side of a profile (bank, PCA basis, Mahalanobis) and the stand-ins' outputs were computed
    from, JSON-able: {"model": model_digest, "preprocessing": {...}, "bank": files digest, "stand_ins": {...}}.
    Two equal fingerprints mean a rebuild would run the same model on the same pixels."""
    from sightline.evaluate.outliers import photo_files

    train = dataset.split("train")
    return json.loads(json.dumps({  # as it reads back from reference.npz (tuples become lists)
        "model": model_digest(engine),
        "preprocessing": engine.preprocessing.to_dict(),
        "bank": _files_digest([train[i] for i in bank_rows]),
        "stats": STATS_RECIPE,
        "stand_ins": {"recipe": STAND_IN_RECIPE, "seed": seed, "per_kind": per_kind,
                      "photos": sorted(p.name for p in photo_files()[0]) if photos else [],
                      "corrupted": _files_digest([val_samples[i] for i in corrupt_at])},
    }))


def _stored_profile(bundle: Bundle, fingerprint: dict[str, Any]) -> tuple[ReferenceProfile | None, str]:
    """The bundle's stored profile when its bank and stand-in outputs can be reused for `fingerprint`, else None;
    and why, in a few words (said by `describe_reference`)."""
    from sightline.monitor.reference import load_reference

    if bundle.path is None:
        return None, "the bundle has no folder"
    try:
        stored = load_reference(bundle.path)
    except BundleError as exc:
        return None, f"the stored profile cannot be read ({exc})"
    if stored is None:
        return None, "the bundle had no profile"
    if stored.outliers is None or not stored.fingerprint:
        return None, "the stored profile predates the stored stand-in outputs"
    old = stored.fingerprint
    for key, what in (("model", "the model's weights"), ("preprocessing", "the preprocessing"),
                      ("bank", "the training sample")):
        if old.get(key) != fingerprint[key]:
            return None, f"{what} changed since the stored profile"
    if old.get("stats") != fingerprint["stats"]:
        return None, (f"the stored profile has image statistics of recipe {old.get('stats', 1)}, this version "
                      f"measures recipe {fingerprint['stats']} (flat_share, the training images' statistics)")
    was, now = old.get("stand_ins") or {}, fingerprint["stand_ins"]
    for key, what in (("seed", "seed"), ("per_kind", "synthetic images per kind"), ("photos", "photos"),
                      ("corrupted", "validation images they corrupt"), ("recipe", "recipe")):
        if was.get(key) != now[key]:
            shown = f" ({was.get(key)} -> {now[key]})" if key in ("seed", "per_kind") else ""
            return None, f"the stand-in outliers changed since the stored profile: {what}{shown}"
    if stored.classes != list(bundle.classes):
        return None, "the classes changed since the stored profile"
    return stored, "same model and training sample: stored bank and stand-in outputs reused"


def stand_in_report(profile: ReferenceProfile, val_logits: np.ndarray, val_features: np.ndarray | None,
                    outliers: OutlierOutputs) -> dict[str, Any]:
    """How the chosen open-set score treats each stand-in family and kind, from (N, K) / (N, D) validation
    outputs and the stand-ins' (M, K) / (M, D) ones: {n, score, rejection_rate, notes, families: {family: {n,
    rejection_rate, auroc, kinds: {kind: {n, rejection_rate}}}}}. AUROC is against the validation images, on which
    the score was also chosen (optimistic)."""
    from sightline.monitor import ood

    choice = profile.ood_choice
    assert choice is not None  # fit_ood ran
    scores, flagged = profile.unknown(outliers.logits, outliers.features32)
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
    left_out = sorted((meta.get("train_stats") or {}).get("left_out") or {})
    stats = ""
    if summary.get("image_stats_train"):
        stats = f" (image statistics of val and these {summary['image_stats_train']}" + (
            f", except {', '.join(left_out)}: the training sample's differ from val's)" if left_out else ")")
    elif left_out:
        stats = f" (image statistics of val only: the training sample's differ from val's in {', '.join(left_out)})"
    lines = [f"reference profile: {summary['n_images']} val images, k-NN bank of {summary['bank_size']} train "
             f"images{stats}, {summary['components']} PCA components -> {summary['file']}"]
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
    built = meta.get("built")
    if built:
        how = "refreshed on validation only" if built.get("mode") == "refresh" else "built in full"
        took = f" in {meta['seconds']:.0f} s" if isinstance(meta.get("seconds"), (int, float)) else ""
        lines.append(f"  {how}{took} ({built.get('reason')})")
    if meta.get("n_val_unreadable"):
        lines.append(f"  {meta['n_val_unreadable']} val image(s) could not be read and were left out")
    return lines
