"""`sightline data split`: a leak-free, stratified, seeded train/val/test split.

Exact duplicates (same sha256) and near duplicates (perceptual hashes within `max_distance` bits, a mirrored copy's
hash against the other's mirror-image hash included) are joined into groups with union-find, and a whole group goes to
one split, so the same picture, or its horizontally flipped copy, never sits in train and test.
Groups are assigned class by class (a group counts for its majority label), largest first, each to the split
that is furthest below its target share: the class proportions follow `ratios` as closely as whole groups allow.
A tie between splits goes to the one furthest below its share of the whole dataset, so small classes that each
round the same way do not leave a split empty.
"""
from __future__ import annotations

import errno
import math
import os
import shutil
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sightline.data.datasets import SPLITS, Dataset, Sample, free_name, region_files, scan_dataset
from sightline.data.hashing import near_duplicate_pairs
from sightline.data.manifest import ImageRecord, describe_images, write_manifest
from sightline.errors import UserInputError
from sightline.progress import ProgressFn

__all__ = ["SplitResult", "split_dataset", "duplicate_groups", "assign_groups", "place_file", "mirror_distance"]

DEFAULT_RATIOS = (0.7, 0.15, 0.15)
DEFAULT_MAX_DISTANCE = 8  # pHash bits; distinct photos differ in >= 12 of 64, re-encoded/resized copies in <= 6
# A mirrored copy is matched this many bits tighter: every image is compared twice (with the other, and with its mirror
# image), and chance comes closer. On hymenoptera (396 photos, 160 px) one pair of different ants was 8 bits from the
# other's mirror image (none nearer than 12 unmirrored), while flipped copies resized to 0.8 and saved at JPEG quality
# 70 were all within 4.
MIRROR_MARGIN = 2


@dataclass
class SplitResult:
    out: Path
    counts: dict[str, dict[str, int]]  # {split: {class: images}}
    n_images: int
    groups_merged: int  # duplicate groups of 2+ images kept together
    images_in_merged_groups: int
    excluded: list[dict] = field(default_factory=list)  # {"path", "reason"}: not copied (unreadable, corrupt)
    linked: int = 0  # hard links made
    copied: int = 0  # copies made where a hard link was not possible
    manifest: Path | None = None


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)


def mirror_distance(max_distance: int) -> int:
    """The pHash bits within which an image and another's mirror image count as a flipped copy (-1: none)."""
    return max_distance - MIRROR_MARGIN if max_distance >= 0 else -1


def duplicate_groups(sha256: list[str], phashes: np.ndarray, *, max_distance: int = DEFAULT_MAX_DISTANCE,
                     mirrored: np.ndarray | None = None) -> list[list[int]]:
    """Indices grouped by exact (equal sha256) or near (pHash distance <= max_distance) duplication.

    sha256: N hex digests ("" = unknown, never matched); phashes: (N,) uint64, with `max_distance < 0` turning
    near-duplicate matching off; mirrored: (N,) uint64 hashes of the mirror images (ImageRecord.phash_mirror), so
    that horizontally flipped copies join too (within `mirror_distance(max_distance)` bits). Returns every group (singletons too), each sorted, ordered by first
    index."""
    n = len(sha256)
    uf = _UnionFind(n)
    first: dict[str, int] = {}
    for i, digest in enumerate(sha256):
        if digest:
            if digest in first:
                uf.union(first[digest], i)
            else:
                first[digest] = i
    if max_distance >= 0 and n > 1:
        valid = np.nonzero(np.asarray([bool(d) for d in sha256]))[0]  # no pHash without decodable pixels
        flipped = None if mirrored is None else np.asarray(mirrored, dtype=np.uint64)[valid]
        for a, b in near_duplicate_pairs(np.asarray(phashes, dtype=np.uint64)[valid], max_distance=max_distance,
                                         mirrored=flipped, mirror_distance=mirror_distance(max_distance)):
            uf.union(int(valid[a]), int(valid[b]))
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        groups[uf.find(i)].append(i)
    return sorted(groups.values(), key=lambda g: g[0])


def assign_groups(
    groups: list[list[int]], labels: list[str], *, ratios: tuple[float, ...] = DEFAULT_RATIOS, seed: int = 0
) -> list[int]:
    """Split index (0..len(ratios)-1) for every item, whole groups at a time, stratified by majority label."""
    ratios_arr = np.asarray(ratios, dtype=float) / float(sum(ratios))
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[list[int]]] = defaultdict(list)
    for g in groups:
        majority = Counter(labels[i] for i in g).most_common()
        top = min(lab for lab, c in majority if c == majority[0][1])  # ties broken by name: deterministic
        by_class[top].append(g)
    out = [-1] * len(labels)
    placed = np.zeros(len(ratios_arr))  # items of every class so far, per split
    for label in sorted(by_class):
        class_groups = by_class[label]
        order = rng.permutation(len(class_groups))
        shuffled = [class_groups[k] for k in order]
        shuffled.sort(key=len, reverse=True)  # stable: big groups placed first, ties keep the random order
        total = sum(len(g) for g in shuffled)
        assigned = np.zeros(len(ratios_arr))
        for g in shuffled:
            need = ratios_arr * total - assigned
            # Among the splits with the class's largest shortfall, the one furthest below its share of the whole
            # dataset, then train before val before test. A tie broken within the class alone always went the
            # same way: 15 classes of 4 images (70/15/15) each went 3/1/0, so test had none of the 60 images.
            tied = np.flatnonzero(need >= need.max() - 1e-9)
            overall = ratios_arr * (placed.sum() + len(g)) - placed
            k = int(tied[np.argmax(overall[tied])])
            assigned[k] += len(g)
            placed[k] += len(g)
            for i in g:
                out[i] = k
    return out


PARTIAL = ".partial"  # OUT/.partial: where a split writes until it is complete


def place_file(src: Path, dst: Path, *, link: bool = True) -> bool:
    """Hard-link src to dst (when `link`), or copy when linking is impossible or not wanted. True when linked.
    A symlinked src is placed as the file it points to: os.link on Linux links the symlink itself, which pointed
    back into the source (refused by training as outside its root) or dangled when relative."""
    if dst.exists() or dst.is_symlink():  # os.link would fail and copy2 write through dst: into a hard-linked source
        raise FileExistsError(errno.EEXIST, "already placed; not replaced", str(dst))
    dst.parent.mkdir(parents=True, exist_ok=True)
    if link:
        try:
            os.link(src.resolve(), dst)
            return True
        except OSError:  # another file system, or links not supported
            pass
    shutil.copy2(src, dst)
    return False


def split_dataset(
    src: str | Path,
    out: str | Path,
    *,
    ratios: tuple[float, float, float] = DEFAULT_RATIOS,
    seed: int = 0,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    link: bool = True,
    workers: int | None = None,
    progress: ProgressFn | None = None,
    dataset: Dataset | None = None,
) -> SplitResult:
    """Write `out/{train,val,test}/<class>/...` from the images of `src` and a `manifest.csv`; src is only read.

    Args:
        src: a flat-layout dataset (a split-layout one is re-split from all its images).
        out: a new or empty folder, not inside src.
        ratios: train/val/test shares (normalised), 70/15/15 by default.
        seed: the same seed and data give the same split.
        max_distance: pHash bits within which two images count as near duplicates (-1: exact duplicates only).
        link: hard-link files (copies where not possible); False always copies.
        progress: hears the task 'hashing images' advance by one per image.
        dataset: `scan_dataset(src)` when the caller has it already (saves a second scan).

    Files that cannot be decoded are not placed; they are listed in `excluded` with the reason (see
    `sightline data audit`). Region files (`<stem>.mask.png`, `<stem>.xml`) and `sightline.yaml` travel along.

    Example:
        >>> result = split_dataset("raw", "data", seed=0)
        >>> result.counts["test"]
        {'crack': 6, 'ok': 105, ...}
    """
    # nan passed `r < 0` and sent every image to train; 1e308 twice made the sum inf and every share 0 (an even split)
    if len(ratios) != 3 or not all(0 <= r < math.inf for r in ratios) or not 0 < sum(ratios) < math.inf:
        raise UserInputError(f"ratios must be three non-negative, finite train/val/test shares, got {ratios}")
    if seed < 0:  # numpy's generators take 0 .. any size; a negative one was a ValueError traceback
        raise UserInputError(f"--seed {seed} must be 0 or more.")
    src_root = Path(src)
    out = Path(out)
    dataset = dataset or scan_dataset(src_root)
    out_abs = out.resolve()
    if out_abs == dataset.root or dataset.root in out_abs.parents:
        raise UserInputError(f"output '{out}' is inside the source dataset '{src}'; choose a folder outside it")
    if out.exists() and (not out.is_dir() or any(p.name != PARTIAL for p in out.iterdir())):
        raise UserInputError(f"output '{out}' already exists and is not empty; choose a new folder")

    records: list[ImageRecord] = describe_images(dataset, workers=workers, progress=progress,
                                                     task="hashing images")
    excluded = list(dataset.skipped)
    usable: list[tuple[Sample, ImageRecord]] = []
    for sample, rec in zip(dataset.samples, records):
        if rec.error:
            excluded.append({"path": sample.relpath, "reason": rec.error})
        else:
            usable.append((sample, rec))
    sha = [r.sha256 for _, r in usable]
    hashes = np.asarray([r.phash_int for _, r in usable], dtype=np.uint64)
    mirrored = np.asarray([r.phash_mirror_int for _, r in usable], dtype=np.uint64)
    groups = duplicate_groups(sha, hashes, max_distance=max_distance, mirrored=mirrored)
    labels = [s.label for s, _ in usable]
    where = assign_groups(groups, labels, ratios=tuple(ratios), seed=seed)

    counts = {s: {c: 0 for c in dataset.classes} for s in SPLITS}
    linked = copied = 0
    placed: list[ImageRecord] = []
    # Written into OUT/.partial (hidden: no scan sees it), moved up at the end: an interrupted or failed split leaves
    # no OUT with part of the images (a layout that trains without a word on what is missing, and that a second
    # split refuses as not empty). Inside OUT, not beside it, so a move never crosses file systems (OUT a mount).
    created = not out.exists()
    work = out / PARTIAL
    if work.exists():
        shutil.rmtree(work)  # left by an earlier split that was killed before it could clean up
    work.mkdir(parents=True)
    moved: list[Path] = []
    try:
        for (sample, rec), k in zip(usable, where):
            split = SPLITS[k]
            parts = Path(sample.relpath).parts  # [split/]class/inner...
            inner = Path(*parts[1 if sample.split is None else 2 :])
            rel = Path(split) / sample.label / inner
            dst = work / rel
            if dst.exists():  # the same file name under one class in two source splits
                stem = dst.stem.encode()[:200].decode(errors="ignore")  # within the 255-byte name limit
                # a free name: train/a/x.jpg, val/a/x.jpg and train/a/x__val.jpg all exist in some datasets. Placing
                # val's x.jpg onto the x__val.jpg just linked overwrote it, and through the hard link the source
                # file: one image lost from OUT, another replaced in SRC.
                dst = free_name(dst.with_name(f"{stem}__{sample.split}{dst.suffix}"))
                rel = dst.relative_to(work)
            did_link = place_file(sample.path, dst, link=link)
            linked += int(did_link)
            copied += int(not did_link)
            for suffix, extra in region_files(sample.path).items():
                shutil.copy2(extra, dst.with_name(dst.stem + suffix))
            counts[split][sample.label] += 1
            placed.append(ImageRecord(**{**rec.__dict__, "relpath": rel.as_posix(), "split": split}))
        spec = dataset.root / "sightline.yaml"
        if spec.is_file():
            shutil.copy2(spec, work / "sightline.yaml")
        write_manifest(placed, work / "manifest.csv")
        for child in sorted(work.iterdir()):
            moved.append(child.rename(out / child.name))
        work.rmdir()
    except BaseException:
        for path in [out] if created else [work, *moved]:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        raise
    manifest = out / "manifest.csv"
    merged = [g for g in groups if len(g) > 1]
    return SplitResult(
        out=out, counts=counts, n_images=len(placed), groups_merged=len(merged),
        images_in_merged_groups=sum(len(g) for g in merged), excluded=excluded, linked=linked, copied=copied,
        manifest=manifest,
    )

