"""`sightline feedback export`: reviewers' labels -> a new dataset version.

NEWDATA = the parent dataset, hard-linked file by file (its `test` split is frozen: the same files, byte for
byte), plus the images reviewers labelled in the service (kept in its content-addressed image store):
  - labelled review/unknown items go to train or val by a stratified hash: within each class, items ordered by
    sha256 and every k-th to val (val_ratio of each class), so the same images always land in the same split;
  - labelled items of the random slice (kept_images.in_slice: drawn from all predictions, whatever their decision,
    so a review/unknown item can be in it too) go to `production/<class>/`, for an unbiased measurement of
    production accuracy (`sightline challenge` reads it) and never into training.
Not placed, and counted in feedback.json: the label `unknown` (not a valid item), items whose image was not kept
or was evicted, exact copies of a parent image (the parent's label stands; a differing label is reported), and
images that reviewers labelled differently (conflicts, listed for a decision).

`manifest.csv` holds the usual columns plus lineage: origin (parent | feedback), parent_version,
prediction_ids and reviewers (";"-joined). `sightline data audit` runs on NEWDATA (its report in NEWDATA/.audit):
duplicates and near duplicates between the parent and the new images, conflicting labels, split leakage.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import tempfile
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sightline.data.datasets import PRODUCTION
from sightline.decision import UNKNOWN_LABEL
from sightline.errors import DatasetError, UserInputError
from sightline.progress import ProgressFn

__all__ = ["export_feedback", "LINEAGE_COLUMNS", "PRODUCTION"]

LINEAGE_COLUMNS = ("origin", "parent_version", "prediction_ids", "reviewers")
_EXT = {"image/jpeg": ".jpg", "image/png": ".png", "image/bmp": ".bmp", "image/tiff": ".tif", "image/webp": ".webp",
        "image/gif": ".gif"}


def _default_images(url: str) -> Path | None:
    """The service keeps images in <bundle>/images beside <bundle>/sightline.db: beside a SQLite file."""
    from sightline.storage.store import parse_database_url

    parsed = parse_database_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    return Path(parsed.database).expanduser().resolve().parent / "images"


def _sqlite_file(url: str) -> Path | None:
    from sightline.storage.store import parse_database_url

    parsed = parse_database_url(url)  # a malformed URL (a port that is not a number) is one line, not a traceback
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        return Path(parsed.database).expanduser()
    return None


def _val_positions(n: int, val_ratio: float) -> set[int]:
    """Indices (of n items in sha256 order) that go to val: round(n * val_ratio), spread evenly."""
    k = round(n * val_ratio)
    if k <= 0:
        return set()
    return {int((i + 0.5) * n / k) for i in range(k)}


def export_feedback(
    database: str,
    data: str | Path,
    out: str | Path,
    *,
    images: str | Path | None = None,
    val_ratio: float = 0.15,
    audit: bool = True,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Write NEWDATA from DATA (split layout with train/val/test) and the reviewed labels in `database` (see the
    module docstring); returns the summary also written to NEWDATA/feedback.json.

    Refused with a one-line error and nothing written: DATA without train/val/test, OUT not new/empty or inside
    DATA, a missing database or image folder, no usable reviewed label, labels that are not DATA's classes.

    Example:
        >>> export_feedback("sqlite:///runs/demo/bundle/sightline.db", "data", "data-v2")["added"]
        {'train': {'ants': 41, 'bees': 38}, 'val': {...}, 'production': {...}}
    """
    from sightline.data.datasets import dataset_version, scan_dataset
    from sightline.storage.images import LocalImageStore, is_url, open_image_store
    from sightline.storage.store import Store

    if not 0 <= val_ratio < 1:
        raise UserInputError(f"--val-ratio must be in [0, 1), got {val_ratio}.")
    data, out = Path(data), Path(out)
    from sightline.loop.retrain import refuse_run_folder

    refuse_run_folder(data, "the dataset the champion was trained on (split layout: train/val/test). Nothing was "
                            "written.")
    parent = scan_dataset(data, require_splits=("train", "val", "test"))
    out_abs = out.resolve()
    if out_abs == parent.root or parent.root in out_abs.parents:
        raise UserInputError(f"--out '{out}' is inside the parent dataset '{data}'; choose a folder outside it.")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserInputError(f"--out '{out}' already exists and is not empty; choose a new folder.")
    sqlite = _sqlite_file(database)
    if sqlite is not None and not sqlite.is_file():
        raise UserInputError(f"database file '{sqlite}' does not exist; pass the service's database "
                             "(<bundle>/sightline.db, or SIGHTLINE_DATABASE_URL).")
    image_root = images if images is not None else _default_images(database)
    if image_root is None:
        raise UserInputError("--images DIR is needed with a server database: the folder or URL of the service's "
                             "image store (SIGHTLINE_IMAGE_STORE).")
    if not is_url(image_root) and not Path(image_root).is_dir():
        raise UserInputError(f"image folder '{image_root}' does not exist; pass --images DIR (the service's "
                             "SIGHTLINE_IMAGE_STORE, by default <bundle>/images).")

    store = Store(database)
    try:
        rows = [r for r in store.kept_images() if r["reviewed_label"] is not None]
        never_kept = store.labelled_without_kept_image()  # labelled, but the service kept no image to export
    finally:
        store.close()
    classes = set(parent.classes)
    bad = sorted({r["reviewed_label"] for r in rows} - classes - {UNKNOWN_LABEL})
    if bad:
        raise DatasetError(f"reviewed labels {bad} are not classes of '{data}' ({parent.classes}); a new class needs "
                           "a new model (`sightline train`). Nothing was written.")
    store_images = open_image_store(image_root)  # a folder, or an fsspec URL such as s3://bucket/images
    skipped: dict[str, list[int]] = {"unknown_label": [], "image_missing": []}
    by_sha: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in never_kept:
        skipped["unknown_label" if r["reviewed_label"] == UNKNOWN_LABEL else "image_missing"].append(r["prediction_id"])
    for r in rows:
        if r["reviewed_label"] == UNKNOWN_LABEL:
            skipped["unknown_label"].append(r["prediction_id"])
        elif r["evicted"] is not None or not store_images.exists(r["sha256"]):
            skipped["image_missing"].append(r["prediction_id"])
        else:
            by_sha[r["sha256"]].append(r)
    if not by_sha:
        # labels whose images are all gone want the right image store, not more labelling
        todo = (f"{image_root} does not hold their images: pass --images the service's image store "
                "(SIGHTLINE_IMAGE_STORE)" if skipped["image_missing"] else "label items in the review queue first")
        raise UserInputError(
            f"no reviewed labels to export from {_safe(database)}: {len(rows) + len(never_kept)} labelled "
            "prediction(s), "
            f"{len(skipped['unknown_label'])} labelled 'unknown', {len(skipped['image_missing'])} without their "
            f"image; {todo}. Nothing was written."
        )

    # exact copies of parent images: the parent's file (and label) stands
    from sightline.data.hashing import sha256_file
    from sightline.loop.challenge import production_files

    parent_sha = {sha256_file(s.path): s.relpath for s in parent.samples}  # production/ too: an earlier export's
    parent_sha.update({sha256_file(p): p.relative_to(parent.root).as_posix() for p, _ in production_files(parent.root)})
    parent_label = {s.relpath: s.label for s in parent.samples}
    parent_label.update({p.relative_to(parent.root).as_posix(): c for p, c in production_files(parent.root)})
    conflicts, duplicates, items = [], [], []
    for sha, group in sorted(by_sha.items()):
        labels = sorted({r["reviewed_label"] for r in group})
        ids = [r["prediction_id"] for r in group]
        reviewers = sorted({r["reviewer"] or "" for r in group})
        if len(labels) > 1:
            conflicts.append({"sha256": sha, "labels": {str(r["prediction_id"]): r["reviewed_label"] for r in group},
                              "reviewers": {str(r["prediction_id"]): r["reviewer"] for r in group}})
            continue
        if sha in parent_sha:
            rel = parent_sha[sha]
            duplicates.append({"sha256": sha, "prediction_ids": ids, "label": labels[0], "parent": rel,
                               "parent_label": parent_label[rel], "agrees": parent_label[rel] == labels[0]})
            continue
        split = PRODUCTION if any(r["in_slice"] for r in group) else None
        items.append({"sha256": sha, "label": labels[0], "split": split, "prediction_ids": ids,
                      "reviewers": reviewers, "content_type": group[0]["content_type"]})
    # stratified hash: per class, in sha256 order, every k-th training candidate to val
    by_class: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for item in items:
        if item["split"] is None:
            by_class[item["label"]].append(item)
    for group in by_class.values():
        group.sort(key=lambda it: hashlib.sha256(it["sha256"].encode()).hexdigest())
        val = _val_positions(len(group), val_ratio)
        for i, item in enumerate(group):
            item["split"] = "val" if i in val else "train"
    if not items:
        raise UserInputError(
            f"no reviewed labels to export: {len(conflicts)} labelled image(s) with conflicting labels, "
            f"{len(duplicates)} copies of parent images, {len(skipped['unknown_label'])} labelled 'unknown', "
            f"{len(skipped['image_missing'])} without their image. Nothing was written.")

    parent_version = dataset_version(parent)
    # write into a temporary folder beside OUT, renamed at the end: a failure leaves nothing half-written
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        linked = _link_parent(parent.root, tmp)
        lineage: dict[str, dict[str, str]] = {}
        added: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for item in items:
            ext = _EXT.get(item["content_type"], ".img")
            rel = Path(item["split"]) / item["label"] / f"fb-{item['prediction_ids'][0]}-{item['sha256'][:12]}{ext}"
            dst = tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(store_images, LocalImageStore):
                try:
                    os.link(store_images.path(item["sha256"]), dst)
                except OSError:
                    shutil.copyfile(store_images.path(item["sha256"]), dst)
            else:  # a remote store: the bytes as received
                data_bytes = store_images.get(item["sha256"])
                if data_bytes is None:
                    raise DatasetError(f"image {item['sha256']} vanished from {image_root} during the export; "
                                       "run it again.")
                dst.write_bytes(data_bytes)
            added[item["split"]][item["label"]] += 1
            lineage[rel.as_posix()] = {"origin": "feedback", "parent_version": parent_version,
                                       "prediction_ids": ";".join(map(str, item["prediction_ids"])),
                                       "reviewers": ";".join(item["reviewers"])}
        records = _describe(tmp, progress)
        _write_manifest(records, {**_parent_lineage(parent.root), **lineage}, parent_version, tmp / "manifest.csv")
        version = dataset_version(scan_dataset(tmp))
        summary: dict[str, Any] = {
            "out": str(out), "parent": str(parent.root), "parent_version": parent_version, "dataset_version": version,
            "classes": parent.classes, "parent_files_linked": linked,
            "added": {k: dict(v) for k, v in sorted(added.items())},
            "skipped": {"unknown_label": skipped["unknown_label"], "image_missing": skipped["image_missing"],
                        "duplicates_of_parent": duplicates},
            "conflicts": conflicts,
        }
        # written with the data, so a Ctrl-C during the audit (minutes on a large set) still leaves the summary
        (tmp / "feedback.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        if out.exists():  # an empty folder
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if audit:
        from sightline.data.audit import audit_dataset

        result = audit_dataset(out, html=True)
        summary["audit"] = {"out": str(result.out), "counts": {k: v for k, v in result.counts.items() if v}}
        (out / "feedback.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def _safe(url: str) -> str:
    from sightline.storage.store import safe_url

    return safe_url(url)


def _link_parent(root: Path, dst_root: Path) -> int:
    """Hard-link (copy where impossible) every file of the parent's train/val/test/production folders and its
    sightline.yaml; hidden folders (.audit, .quarantine) and the old manifest are left out."""
    from sightline.data.split import place_file

    n = 0
    for top in ("train", "val", "test", PRODUCTION):
        for dirpath, dirnames, filenames in os.walk(root / top):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                src = Path(dirpath) / name
                place_file(src, dst_root / src.relative_to(root), link=True)
                n += 1
    if (root / "sightline.yaml").is_file():
        shutil.copy2(root / "sightline.yaml", dst_root / "sightline.yaml")
    return n


def _parent_lineage(root: Path) -> dict[str, dict[str, str]]:
    """Lineage of files the parent itself got from an earlier export (its manifest's lineage columns)."""
    path = root / "manifest.csv"
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        return {row["relpath"]: {k: row[k] for k in LINEAGE_COLUMNS} for row in csv.DictReader(f)
                if row.get("origin") == "feedback"}


def _describe(root: Path, progress: ProgressFn | None) -> list[Any]:
    """Manifest records of the dataset's splits plus its production/ folder (which dataset scans ignore)."""
    from PIL import Image

    from sightline.data.datasets import Sample, scan_dataset
    from sightline.data.manifest import describe_images
    from sightline.loop.challenge import production_files

    ds = scan_dataset(root)
    samples = list(ds.samples)
    for path, label in production_files(root):
        with Image.open(path) as im:
            width, height, fmt, mode = im.width, im.height, im.format or "", im.mode
        samples.append(Sample(path=path, relpath=path.relative_to(root).as_posix(), label=label, split=PRODUCTION,
                              region=None, width=width, height=height, format=fmt, mode=mode))
    return describe_images(samples, progress=progress)


def _write_manifest(records: list[Any], lineage: dict[str, dict[str, str]], parent_version: str, path: Path) -> None:
    from sightline.data.manifest import MANIFEST_COLUMNS

    parent_row = {"origin": "parent", "parent_version": parent_version, "prediction_ids": "", "reviewers": ""}
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=(*MANIFEST_COLUMNS, *LINEAGE_COLUMNS), extrasaction="ignore")
        writer.writeheader()
        for rec in sorted(records, key=lambda r: r.relpath):
            row = asdict(rec)
            row["split"] = rec.split or ""
            writer.writerow({**row, **lineage.get(rec.relpath, parent_row)})
