"""`sightline data audit`: find the data problems that quietly ruin a model, before training.

The checks are pure functions over per-image arrays (cleanlab style); `audit_dataset` does the I/O around them:
one decoding pass (`describe_images`), the checks, `audit.json`, an HTML page, and optionally a quarantine.

Finding kinds (each finding is {"kind", "paths", "detail"}; paths relative to the dataset root):
  unreadable          not an image, unreadable, or a symlink leaving the root (from the scan)
  corrupt             a valid header but truncated or corrupt pixel data
  exact_duplicate     byte-identical files (same sha256), one finding per group
  near_duplicate      perceptual hashes within `max_distance` bits (re-encoded, resized, brightened copies; a
                      horizontally flipped copy too, against the mirror image's hash: detail "mirrored" names them)
  conflicting_labels  the same (or a near-identical) image under two or more labels
  split_leakage       the same (or a near-identical) image in two or more splits
  split_missing_class a class with images in the dataset but none in one of its splits (val without a class: early
                      stopping, temperature and thresholds never see it; test without it: no test figure for it)
  blurry              variance of the Laplacian far below the dataset's own (robust z-score of its log)
  too_small           shorter side below max(16, 1/4 of the dataset's median shorter side)
  extreme_aspect      width/height (or height/width) above 3
  similar_class_names class names that differ only in case, accents' encoding, width or spacing ('Ants' and 'ants';
                      'café' typed and 'café' from a Mac's file system; 'bees ' and 'bees'; 'golden_retriever' and
                      'golden retriever'): two classes where one was meant
  class_imbalance     max/min class count at or above BALANCE_NONE_BELOW (1.5), with what training will do
  mixed_color_modes   files stored in more than one colour mode (e.g. RGB and greyscale)
  multi_frame         animated PNG/WebP or multi-page TIFF files: every stage uses the first frame (page) only
  label_issue         likely mislabeled: the given label contradicted by out-of-fold probabilities (confident
                      learning, sightline.data.label_issues); ranked, with the suggested label. Only when the
                      caller ran the label check and passed it in (`label_check=`); never moved, never relabelled
"""
from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sightline.data.balance import choose_balance, class_ratio
from sightline.data.datasets import (SPLITS, Dataset, free_name, refuse_out_inside_splits, region_files,
                                     scan_dataset)
from sightline.data.findings import AuditResult, Finding  # re-exported: part of this module's API
from sightline.data.hashing import hamming_matrix
from sightline.data.inputs import shown_name
from sightline.data.label_issues import LabelCheck, write_suggestions
from sightline.data.manifest import ImageRecord, describe_images, write_manifest
from sightline.data.split import DEFAULT_MAX_DISTANCE, duplicate_groups, mirror_distance
from sightline.errors import UserInputError
from sightline.progress import ProgressFn

__all__ = [
    "Finding",
    "AuditResult",
    "audit_dataset",
    "refuse_audit_out_in_data",
    "audit_records",
    "missing_classes",
    "similar_class_names",
    "blurry_mask",
    "small_mask",
    "aspect_mask",
    "imbalance",
    "quarantine",
    "KINDS",
]

KINDS = (
    "unreadable", "ignored", "corrupt", "exact_duplicate", "near_duplicate", "conflicting_labels", "split_leakage",
    "split_missing_class", "similar_class_names", "blurry", "too_small", "extreme_aspect", "class_imbalance",
    "mixed_color_modes", "multi_frame", "label_issue",
)
# Kinds whose files `quarantine` moves away (imbalance and colour modes are properties of the set, not of a file).
QUARANTINE_KINDS = ("unreadable", "corrupt", "exact_duplicate", "near_duplicate", "conflicting_labels",
                    "split_leakage", "blurry", "too_small", "extreme_aspect")


# --- pure checks ----------------------------------------------------------------------------------------------

def blurry_mask(blur: np.ndarray, *, z: float = 4.0) -> tuple[np.ndarray, dict]:
    """(N,) Laplacian variances (NaN = unknown) -> (N,) bool "much blurrier than this dataset", and the rule.

    Judged on log variance with a robust z-score (median, 1.4826 x MAD): a sharp dataset and a soft one each get
    their own threshold. A floor on the spread keeps a very uniform dataset from flagging ordinary images."""
    blur = np.asarray(blur, dtype=float)
    ok = np.isfinite(blur)
    flags = np.zeros(blur.shape, dtype=bool)
    if ok.sum() < 5:
        return flags, {"reason": "too few images to judge blur"}
    logs = np.log(np.maximum(blur[ok], 1e-6))
    median = float(np.median(logs))
    spread = max(1.4826 * float(np.median(np.abs(logs - median))), 0.25)
    threshold = median - z * spread
    flags[ok] = logs < threshold
    return flags, {"median_laplacian_variance": float(np.exp(median)), "threshold": float(np.exp(threshold)), "z": z}


def small_mask(width: np.ndarray, height: np.ndarray) -> tuple[np.ndarray, int]:
    """(N,) sizes -> (N,) bool "shorter side below max(16, median shorter side / 4)", and that minimum side."""
    short = np.minimum(np.asarray(width), np.asarray(height))
    minimum = int(max(16, np.median(short) / 4)) if len(short) else 16
    return short < minimum, minimum


def aspect_mask(width: np.ndarray, height: np.ndarray, *, max_ratio: float = 3.0) -> np.ndarray:
    w = np.maximum(np.asarray(width, dtype=float), 1)
    h = np.maximum(np.asarray(height, dtype=float), 1)
    return np.maximum(w / h, h / w) > max_ratio


def imbalance(counts: dict[str, int]) -> dict:
    """Class-count ratio (`class_ratio`) and what `sightline train` does about it (`choose_balance`, the function
    training calls)."""
    action = {
        "none": "none needed",
        "weights": "training weights the loss by inverse class frequency (balance=weights)",
        "sampler": "training samples classes evenly (balance=sampler); collect more of the rare classes if you can",
    }[choose_balance(counts)]
    return {"counts": counts, "ratio": round(class_ratio(counts), 2), "training": action,
            "advice": "judge per-class recall, not accuracy; thresholds are chosen on val"}


def missing_classes(pairs: Sequence[tuple[str | None, str]], *, folders: Sequence[str] = ()) -> list[Finding]:
    """`split_missing_class` findings for (split, label) pairs of a split layout, one per split that lacks a class
    the dataset has (flat layout, split None: none). Counts every listed image, readable or not: a class whose
    only val image is corrupt is flagged as `corrupt`, not here. `folders`: the split folders present, so an empty
    test/ is flagged as lacking every class (it was not, and evaluate then found no test image)."""
    splits = [s for s in SPLITS if s in folders or any(split == s for split, _ in pairs)]
    labels = sorted({label for _, label in pairs})
    out = []
    for split in splits:
        have = {label for s, label in pairs if s == split}
        lacking = [c for c in labels if c not in have]
        if lacking:
            out.append(Finding("split_missing_class", [], {
                "split": split, "classes": lacking,
                "advice": f"add {split} images of {', '.join(lacking)} or re-split the data (`sightline data split`)"}))
    return out


def similar_class_names(labels: Sequence[str]) -> list[Finding]:
    """`similar_class_names` findings: one per group of class names equal once Unicode-normalised (NFKC),
    case-folded and with spaces, '_' and '-' counted alike (a run of them as one, none at either end), which a person
    reads as one class and training learns as several: 'bees ' (a trailing space, invisible in every listing) beside
    'bees', or 'golden_retriever' from one source beside 'golden retriever' from another, were not found."""
    import re
    import unicodedata

    groups: dict[str, list[str]] = {}
    for label in sorted(set(labels)):
        key = re.sub(r"[\s_\-]+", " ", unicodedata.normalize("NFKC", label).casefold()).strip()
        groups.setdefault(key, []).append(label)
    return [Finding("similar_class_names", [], {
        "classes": names,
        "advice": "merge the folders if they hold one class, or rename one so the names differ in more than "
                  "case, spacing or encoding"}) for names in groups.values() if len(names) > 1]


def audit_records(records: Sequence[ImageRecord], *, skipped: Sequence[dict] = (), max_distance: int = DEFAULT_MAX_DISTANCE,
                  train_split: str | None = "train", split_folders: Sequence[str] = ()) -> list[Finding]:
    """All findings for per-image records (one `describe_images` pass) plus the scan's skipped files.
    `split_folders`: the split layout's folders present (Dataset.split_folders), an empty one included."""
    # a file that is no readable image is `unreadable` (and quarantined); a folder or link the layout does not use
    # (production/, a folder beside the splits, a link out of the dataset) is `ignored`: said, never moved
    findings = [Finding(s.get("kind", "unreadable"), [s["path"]], {"reason": s["reason"]}) for s in skipped]
    findings += [Finding("corrupt", [r.relpath], {"reason": r.error}) for r in records if r.error]
    good = [r for r in records if not r.error]
    if not good:
        return findings

    sha = [r.sha256 for r in good]
    hashes = np.asarray([r.phash_int for r in good], dtype=np.uint64)
    mirrored = np.asarray([r.phash_mirror_int for r in good], dtype=np.uint64)
    for group in duplicate_groups(sha, hashes, max_distance=max_distance, mirrored=mirrored):
        if len(group) < 2:
            continue
        members = sorted((good[i] for i in group), key=lambda r: r.relpath)
        paths = [r.relpath for r in members]
        labels = sorted({r.label for r in members})
        splits = sorted({r.split for r in members if r.split})
        exact = len({r.sha256 for r in members}) == 1
        detail = {"labels": labels, "splits": splits}
        flipped = _mirrored_members(members, max_distance)
        if flipped:
            detail["mirrored"] = flipped
        findings.append(Finding("exact_duplicate" if exact else "near_duplicate", paths, detail))
        if len(labels) > 1:
            findings.append(Finding("conflicting_labels", paths, {"labels": {r.relpath: r.label for r in members}}))
        if len(splits) > 1:
            findings.append(Finding("split_leakage", paths, {"splits": {r.relpath: r.split for r in members}}))

    blur = np.asarray([r.blur if r.blur is not None else np.nan for r in good], dtype=float)
    width = np.asarray([r.width for r in good])
    height = np.asarray([r.height for r in good])
    small, minimum = small_mask(width, height)
    blur[small] = np.nan  # a thumbnail's sharpness says nothing
    flags, rule = blurry_mask(blur)
    findings += [Finding("blurry", [r.relpath], {"laplacian_variance": round(float(r.blur or 0), 3), **rule})
                 for r, f in zip(good, flags) if f]
    findings += [Finding("too_small", [r.relpath], {"width": r.width, "height": r.height, "min_side": minimum})
                 for r, f in zip(good, small) if f]
    findings += [Finding("extreme_aspect", [r.relpath], {"width": r.width, "height": r.height})
                 for r, f in zip(good, aspect_mask(width, height)) if f]

    has_train = any(r.split == train_split for r in good)
    counted = [r.label for r in good if not has_train or r.split == train_split]
    labels = sorted({r.label for r in records})
    counts = {c: Counter(counted).get(c, 0) for c in labels}
    info = imbalance(counts)
    info["split"] = train_split if has_train else "all"
    if choose_balance(counts) != "none":
        findings.append(Finding("class_imbalance", [], info))

    findings += missing_classes([(r.split, r.label) for r in records], folders=split_folders)
    findings += similar_class_names([r.label for r in records])

    modes = Counter(r.mode for r in good)
    if len(modes) > 1:
        common = modes.most_common(1)[0][0]
        findings.append(Finding("mixed_color_modes", sorted(r.relpath for r in good if r.mode != common),
                                {"modes": dict(modes), "most_common": common,
                                 "note": "every image is converted to RGB on load; check the odd ones are not a different camera or source"}))
    layered = sorted((r for r in records if r.frames > 1), key=lambda r: r.relpath)
    if layered:  # training, evaluation and serving decode the first frame: the others were dropped without a word
        findings.append(Finding("multi_frame", [r.relpath for r in layered], {
            "frames": {r.relpath: r.frames for r in layered},
            "note": "only the first frame (TIFF: page) of each is used by training, evaluation and serving; save the "
                    "frames that matter as separate images, or check the first one is the right one"}))
    return findings


def _mirrored_members(members: Sequence[ImageRecord], max_distance: int) -> list[str]:
    """The relpaths of a duplicate group's images that match another member only as its mirror image (a
    horizontally flipped copy), so the finding says why images that look different were grouped."""
    plain = np.asarray([r.phash_int for r in members], dtype=np.uint64)
    mirror = np.asarray([r.phash_mirror_int for r in members], dtype=np.uint64)
    sha = np.asarray([r.sha256 for r in members])
    near = (hamming_matrix(plain, plain) <= max_distance) | (sha[:, None] == sha[None, :])
    flipped = hamming_matrix(plain, mirror) <= mirror_distance(max_distance)
    np.fill_diagonal(near, False)
    np.fill_diagonal(flipped, False)
    return [r.relpath for r, n, f in zip(members, near.any(axis=1), flipped.any(axis=1)) if f and not n]


# --- I/O ------------------------------------------------------------------------------------------------------

def _keeper(paths: list[str], splits: dict[str, str | None]) -> str:
    """Which copy of a duplicate group stays: the training copy if any, else the first path."""
    train = [p for p in paths if splits.get(p) == "train"]
    return (train or paths)[0]


def _on_disk(root: Path, rel: str) -> Path | None:
    """The file a finding's path names, or None. A name that is not UTF-8 is listed in its shown form (`caf\\xe9.jpg`,
    `shown_name`), which is not its name on disk: each such part is matched to the one entry of its folder shown so."""
    path = root / rel
    if os.path.lexists(path):
        return path
    here = root
    for part in rel.split("/"):
        candidate = here / part
        if not os.path.lexists(candidate):
            try:
                matches = [here / name for name in os.listdir(here) if shown_name(name) == part]
            except OSError:
                return None
            if len(matches) != 1:
                return None
            candidate = matches[0]
        here = candidate
    return here


def quarantine(root: str | Path, findings: Sequence[Finding], records: Sequence[ImageRecord], *,
               stayed: list[dict] | None = None) -> list[dict]:
    """Move flagged files into ROOT/.quarantine/<relpath> (with their region files) and append to
    ROOT/.quarantine/log.jsonl. One copy of each duplicate / leakage group stays; conflicting-label groups go
    entirely (nobody knows the right label). Nothing is deleted. Returns the moves made; a flagged path that is not
    moved (a folder, gone, or the move failed) is appended to `stayed` as {"path", "kind", "reason"}."""
    root = Path(root)
    qdir = root / ".quarantine"
    splits = {r.relpath: r.split for r in records}
    stayed = [] if stayed is None else stayed
    chosen: dict[str, str] = {}
    for f in findings:
        if f.kind not in QUARANTINE_KINDS:
            continue
        paths = list(f.paths)
        if f.kind in ("exact_duplicate", "near_duplicate", "split_leakage"):
            keep = _keeper(paths, splits)
            paths = [p for p in paths if p != keep]
        for p in paths:
            chosen.setdefault(p, f.kind)
    moves = []
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    for rel, kind in sorted(chosen.items()):
        src = _on_disk(root, rel)  # a name that is not UTF-8 is flagged by its escaped form
        if src is None:
            stayed.append({"path": rel, "kind": kind, "reason": "not found under that name any more; nothing moved"})
            continue
        # Only files (and links) move: a folder the scan ignored (e.g. DATA/docs/ beside the splits) or could not
        # list is reported, never carried off wholesale.
        if not (src.is_symlink() or src.is_file()):
            stayed.append({"path": rel, "kind": kind, "reason": "a folder: only files are moved; fix or move it by hand"})
            continue
        dst = free_name(qdir / src.relative_to(root))  # an earlier audit's quarantined file keeps its name
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(src), str(dst))
        except OSError as exc:
            stayed.append({"path": rel, "kind": kind, "reason": f"could not be moved ({exc.strerror or exc}); "
                                                                   "check the permissions"})
            continue
        moves.append({"time": stamp, "path": rel, "kind": kind, "to": shown_name(dst.relative_to(root).as_posix())})
        for suffix, extra in region_files(src).items():
            shutil.move(str(extra), str(dst.with_name(dst.stem + suffix)))
    if moves:
        with open(qdir / "log.jsonl", "a", encoding="utf-8") as log:
            for m in moves:
                log.write(json.dumps(m) + "\n")
    return moves


def refuse_audit_out_in_data(out: Path, ds: Dataset) -> None:
    """Raise UserInputError for an audit folder the dataset's own scan would read: a class folder of a flat dataset
    (DATA/report), or inside one of a split's. A hidden folder (DATA/.audit, the default) and DATA/other in the split
    layout are ignored."""
    if ds.layout == "split":
        refuse_out_inside_splits(out, ds.root)
        return
    try:
        first = out.resolve().relative_to(ds.root).parts[0]
    except (ValueError, IndexError):  # outside DATA, or DATA itself (its files are not images of a class)
        return
    if not first.startswith("."):
        raise UserInputError(f"--out '{out}' is inside the dataset '{ds.root}', where '{first}' would be read as a "
                             "class folder; choose a folder outside it (or a hidden one, like the default .audit).")


def audit_dataset(
    data: str | Path,
    *,
    out: str | Path | None = None,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    move_to_quarantine: bool = False,
    html: bool = True,
    workers: int | None = None,
    progress: ProgressFn | None = None,
    dataset: Dataset | None = None,
    label_check: LabelCheck | None = None,
) -> AuditResult:
    """Audit a dataset folder (split or flat layout): write `audit.json`, `audit.html` and `manifest.csv` into
    `out` (default DATA/.audit, which scans ignore) and return the findings.

    With `move_to_quarantine`, flagged files move to DATA/.quarantine/ (see `quarantine`); audit.json lists them, and
    those that stayed (`not_quarantined`, with the reason).
    `label_check` (the label check's result, made a layer up: sightline.train.label_audit.audit_labels) adds its
    ranked `label_issue` findings, its summary under "label_check" in audit.json, and `label_issues.csv` (review
    suggestions, `write_suggestions`); label issues are never quarantined.

    Example:
        >>> result = audit_dataset("DATA")
        >>> result.counts["exact_duplicate"]
        3
    """
    ds = dataset or scan_dataset(data)
    if out is not None:
        refuse_audit_out_in_data(Path(out), ds)
    records = describe_images(ds, workers=workers, progress=progress, task="auditing images")
    findings = audit_records(records, skipped=ds.skipped, max_distance=max_distance, split_folders=ds.split_folders)
    if label_check is not None:
        findings += label_check.findings()
    counts = {k: sum(f.kind == k for f in findings) for k in KINDS}
    result = AuditResult(root=ds.root, n_images=len(records), findings=findings, counts=counts,
                         class_counts=ds.class_counts("train" if ds.layout == "split" else None),
                         label_check=label_check.summary() if label_check is not None else None)
    out_dir = Path(out) if out is not None else ds.root / ".audit"
    out_dir.mkdir(parents=True, exist_ok=True)
    write_manifest(records, out_dir / "manifest.csv")
    if label_check is not None and label_check.skipped is None:
        csv_path = write_suggestions(label_check, out_dir / "label_issues.csv",
                                     splits={r.relpath: r.split for r in records},
                                     sha256={r.relpath: r.sha256 for r in records if r.sha256})
        result.label_check["suggestions"] = csv_path.name  # type: ignore[index]
    if html:  # before any quarantine move, while the thumbnails' files are where the findings say
        from sightline.data.audit_report import write_html

        write_html(result, out_dir / "audit.html")
    if move_to_quarantine:
        result.quarantined = quarantine(ds.root, findings, records, stayed=result.not_quarantined)
    (out_dir / "audit.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    result.out = out_dir
    return result

