"""Reading a dataset folder (DESIGN.md layouts) into samples, and its region annotations.

Split layout: DATA/{train,val,test}/<class>/<image>.  Flat layout: DATA/<class>/<image>.
Images may sit in sub-folders of a class folder. Beside an image, `<stem>.xml` (Pascal VOC boxes) or
`<stem>.mask.png` (binary mask) is its ground-truth region. Hidden files and folders (".name") are ignored.
Nothing is dropped silently: a file that is not used is listed in `Dataset.skipped` with the reason.
"""
from __future__ import annotations

import hashlib
import os
import xml.etree.ElementTree as ET
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from sightline.data.images import DEFAULT_MAX_PIXELS, image_info
from sightline.data.inputs import IMAGE_SUFFIXES, MASK_SUFFIX, looks_like_image, shown_name
from sightline.errors import DatasetError, ImageError, UserInputError

__all__ = ["SPLITS", "REGION_SUFFIXES", "Sample", "Dataset", "scan_dataset", "load_regions", "dataset_version",
           "region_path", "region_files", "free_name", "refuse_out_inside_splits", "split_hint", "is_region_file",
           "unnamed"]

SPLITS = ("train", "val", "test")
# DATA/production/<class>/: labelled production images `sightline feedback export` holds out for `sightline
# challenge` to measure on; beside the splits, never trained on
PRODUCTION = "production"
PRODUCTION_REASON = ("held-out production images (from `sightline feedback export`) that `sightline challenge` "
                     "measures on; not a split, never trained on")
# Dataset.skipped kinds: a file that is not a readable image, or a file or folder the layout does not use
UNREADABLE, IGNORED = "unreadable", "ignored"
VOC_SUFFIX = ".xml"  # Pascal VOC boxes beside the image: <stem>.xml
REGION_SUFFIXES = (MASK_SUFFIX, VOC_SUFFIX)  # the order region_path prefers


@dataclass(frozen=True)
class Sample:
    path: Path  # absolute path of the image
    relpath: str  # posix path relative to the dataset root
    label: str  # class name
    split: str | None  # "train" | "val" | "test", None in the flat layout
    region: Path | None  # <stem>.xml (Pascal VOC) or <stem>.mask.png beside the image, if present
    width: int = 0  # pixels after EXIF orientation, from the header
    height: int = 0
    format: str = ""  # JPEG | PNG | BMP | TIFF | WEBP, by content
    mode: str = ""  # Pillow's stored colour mode, before conversion to RGB
    frames: int = 1  # frames of an animated PNG/WebP, pages of a TIFF: only the first is ever decoded


@dataclass
class Dataset:
    root: Path
    layout: str  # "split" | "flat"
    classes: list[str]  # sorted class names
    samples: list[Sample]  # only files whose header is a supported image (no full decode)
    skipped: list[dict] = field(default_factory=list)  # {"path", "kind", "reason"}: what is not used, and why
    split_folders: list[str] = field(default_factory=list)  # the split layout's train/val/test folders present

    def split(self, name: str) -> list[Sample]:
        """Samples of one split ("train" | "val" | "test"); in the flat layout, every sample for name=None."""
        return [s for s in self.samples if s.split == name]

    def class_counts(self, split: str | None = None) -> dict[str, int]:
        """{class: number of images}, every class listed (0 when absent); split=None counts all samples."""
        counts = Counter(s.label for s in self.samples if split is None or s.split == split)
        return {c: counts.get(c, 0) for c in self.classes}


# Folders of file-system or archive metadata, never images of the dataset: __MACOSX/ holds the AppleDouble `._name`
# files a zip made on a Mac carries; unzipped beside the class folders it was read as a class whose every file is
# hidden, and the whole dataset was refused ("class folder '__MACOSX' holds no usable image"). The same for a
# Synology share's @eaDir/ (its thumbnails would even have been read as images) or a USB drive's Windows folders.
# Listed in `skipped` as ignored.
METADATA_DIRS = {
    "__MACOSX": "macOS archive metadata (made when zipping on a Mac), not images; ignored",
    "@eaDir": "Synology NAS thumbnails and metadata, not images of the dataset; ignored",
    "$RECYCLE.BIN": "Windows recycle bin; ignored",
    "System Volume Information": "Windows file-system metadata; ignored",
    "lost+found": "file-system recovery folder; ignored",
}


# Files Windows writes into any folder of pictures it has shown (thumbnail caches, folder settings): never images,
# skipped like a dot-file (Thumbs.db was listed as an unreadable image in every class folder a Windows user opened)
_SYSTEM_FILES = frozenset({"thumbs.db", "ehthumbs.db", "ehthumbs_vista.db", "desktop.ini"})


def _hidden(name: str) -> bool:
    return name.startswith(".") or name.lower() in _SYSTEM_FILES


def _undecodable(name: str) -> bool:
    """True when a file or folder name is not valid UTF-8 (os.fsdecode left surrogates in it)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


_RENAME = "its name is not valid UTF-8 ({}); rename it, e.g. `convmv -f latin1 -t utf8 -r --notest DATA`"


def _refuse_name(path: Path, root: Path, kind: str, skipped: list[dict]) -> bool:
    """True (and the path listed in `skipped` under `kind`) for a file or folder whose name is not UTF-8: it could
    not be written into the manifest, the audit or a bundle's class names."""
    if not _undecodable(path.name):
        return False
    rel = shown_name(path.relative_to(root).as_posix())
    what = "folder" if kind == IGNORED else "file"
    skipped.append({"path": rel, "kind": kind, "reason": f"{what} not used: " + _RENAME.format(shown_name(path.name))})
    return True


def _metadata_dir(path: Path, root: Path, skipped: list[dict]) -> bool:
    """True (and the folder listed in `skipped`) for a metadata folder such as __MACOSX."""
    reason = METADATA_DIRS.get(path.name)
    if reason is not None:
        skipped.append({"path": path.relative_to(root).as_posix(), "kind": IGNORED, "reason": reason})
    return reason is not None


def _is_annotation(name: str) -> bool:
    return name.lower().endswith(REGION_SUFFIXES)


def is_region_file(path: str) -> bool:
    """True for a `Dataset.skipped` path that is a region file (listed because no image uses it), not an image:
    what a stage counts as its split's unreadable images leaves it out."""
    return _is_annotation(path.rsplit("/", 1)[-1])


def region_files(image: Path) -> dict[str, Path]:
    """{suffix: file} for each region annotation present beside an image (`<stem>.mask.png`, `<stem>.xml`), in
    REGION_SUFFIXES order. What travels with an image when it is copied or moved."""
    candidates = ((suffix, image.with_name(image.stem + suffix)) for suffix in REGION_SUFFIXES)
    return {suffix: path for suffix, path in candidates if _is_file(path)}


def free_name(dst: Path) -> Path:
    """`dst`, or `<stem>-1<suffix>`, `-2`, ... when the name is taken, by a file or by a region file of that stem
    (<stem>.mask.png, <stem>.xml): the image's region files follow its new stem, so they must be free too."""
    def taken(path: Path) -> bool:  # lexists: a dangling link takes the name too; a name too long is no error
        return any(os.path.lexists(p) for p in (path, *(path.with_name(path.stem + s) for s in REGION_SUFFIXES)))

    candidate, n = dst, 0
    while taken(candidate):
        n += 1
        candidate = dst.with_name(f"{dst.stem}-{n}{dst.suffix}")
    return candidate


def _is_file(path: Path) -> bool:
    """Path.is_file, False for a name the file system cannot hold (an image named near the 255-byte limit plus
    '.mask.png'), which raised OSError (File name too long) in every stage that looks for regions."""
    try:
        return path.is_file()
    except OSError:
        return False


def region_path(image: Path) -> Path | None:
    """The region annotation beside an image (`<stem>.mask.png` first, then `<stem>.xml`), or None."""
    return next(iter(region_files(image).values()), None)


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root)
    except ValueError:
        return False
    return True


_ORPHAN_REGION = ("region file with no image of its stem beside it, so no image uses it; name it <stem>.mask.png or "
                  "<stem>.xml (suffix in lower case) after its image, e.g. IMG_1.xml for IMG_1.JPG")


def _claimed(name: str, stems: set[str]) -> bool:
    """True when region_path finds the annotation `name` for an image whose stem is in `stems` (the names of the
    files beside it): `IMG_1.XML` or `IMG_1.Mask.png` were left out as annotations but never read as one, and
    `IMG_1.jpg.xml` matched no image; each was dropped without a word."""
    return any(name.endswith(suffix) and name[: -len(suffix)] in stems for suffix in REGION_SUFFIXES)


def _walk_files(folder: Path, root: Path, skipped: list[dict], trail: frozenset[Path] = frozenset()) -> list[Path]:
    """Every non-hidden file under `folder`, without following symlinks that leave `root` or lead back to a folder
    this walk is inside (`trail`: the real paths of the folders it came through to reach `folder`)."""
    top = folder.resolve()
    out: list[Path] = []

    def unreadable(exc: OSError) -> None:  # os.walk skipped a folder it could not list without a word
        where = Path(exc.filename) if exc.filename else folder
        skipped.append({"path": where.relative_to(root).as_posix() if _inside(where, root) else str(where),
                        "kind": UNREADABLE, "reason": f"folder cannot be read ({exc.strerror or exc}), so its images "
                                                      "are not used; check its permissions"})

    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False, onerror=unreadable):
        base = Path(dirpath)
        keep = []
        for d in sorted(dirnames):
            if _hidden(d):
                continue
            sub = base / d
            if _metadata_dir(sub, root, skipped) or _refuse_name(sub, root, IGNORED, skipped):
                continue
            if sub.is_symlink():
                if not _inside(sub, root):
                    skipped.append({"path": sub.relative_to(root).as_posix(), "kind": IGNORED,
                                    "reason": "symlinked folder points outside the dataset root; refused"})
                    continue
                target, here = sub.resolve(), base.resolve()
                inside = trail | {here} | {p for p in here.parents if p == top or top in p.parents}
                if any(target == d or target in d.parents for d in inside):  # walking it would never end
                    skipped.append({"path": sub.relative_to(root).as_posix(), "kind": IGNORED,
                                    "reason": "symlinked folder points back to a folder that holds it (a loop); ignored"})
                    continue
                out.extend(_walk_files(sub, root, skipped, inside))  # os.walk does not descend into symlinked dirs
                continue
            keep.append(d)
        dirnames[:] = keep
        stems = {Path(name).stem for name in filenames if not _hidden(name) and not _is_annotation(name)}
        for name in sorted(filenames):
            if _hidden(name):
                continue
            if _is_annotation(name):
                if not _claimed(name, stems):
                    skipped.append({"path": (base / name).relative_to(root).as_posix(), "kind": IGNORED,
                                    "reason": _ORPHAN_REGION})
                continue
            p = base / name
            if _refuse_name(p, root, UNREADABLE, skipped):
                continue
            if p.is_symlink() and not _inside(p, root):
                skipped.append({"path": p.relative_to(root).as_posix(), "kind": UNREADABLE,  # a sample's file
                                "reason": "symlink points outside the dataset root; refused (copy the file in, "
                                          "e.g. cp -L)"})
                continue
            out.append(p)
    return out


def _class_dirs(parent: Path, root: Path, skipped: list[dict]) -> list[Path]:
    dirs = []
    for d in sorted(parent.iterdir()):
        if (_hidden(d.name) or not d.is_dir() or _metadata_dir(d, root, skipped)
                or _refuse_name(d, root, IGNORED, skipped)):
            continue
        if d.is_symlink() and not _inside(d, root):
            skipped.append({"path": d.relative_to(root).as_posix(), "kind": IGNORED,
                            "reason": "symlinked class folder points outside the dataset root; refused"})
            continue
        dirs.append(d)
    return dirs


def _classes_named_like_splits(root: Path, present: list[str]) -> bool:
    """True when the folders named train/val/test are classes of a flat layout: none holds a folder, at least one
    holds files, and DATA has other (class) folders beside them. A vehicle dataset with a class "train" was read as
    the split layout and refused with "needs at least two class folders in train/val/test, found none"."""
    def entries(folder: Path) -> list[Path]:
        return [p for p in folder.iterdir() if not _hidden(p.name)]

    inside = [entries(root / s) for s in present]
    if any(p.is_dir() for found in inside for p in found) or not any(inside):
        return False
    others = [d for d in entries(root) if d.is_dir() and d.name not in SPLITS and d.name not in METADATA_DIRS]
    return bool(others)


def unnamed(message: str, name: str) -> str:
    """An image error's message without the leading `name: ` it names the file by: a reason listed beside its path
    (Dataset.skipped, an audit finding, a split's excluded) names the file once."""
    return message[len(name) + 2 :] if message.startswith(f"{name}: ") else message


def _probe(path: Path) -> tuple[Path, object]:
    try:
        info = image_info(path)
    except ImageError as exc:  # the message names the file by its full path; `skipped` lists it beside its path
        return path, unnamed(str(exc), str(path))
    except OSError as exc:  # e.g. a broken symlink or an I/O error
        return path, f"unreadable ({exc.strerror or exc})"
    if info.width * info.height > DEFAULT_MAX_PIXELS:  # load_image would refuse it
        return path, (f"{info.width}x{info.height} is above the {DEFAULT_MAX_PIXELS / 1e6:.0f} megapixel cap; "
                      "downscale it (e.g. `mogrify -resize 7000x7000 FILE`) or remove it")
    return path, info


def split_hint(root: Path) -> str:
    """What to do with a flat-layout folder where the split layout is needed: DATA/val given for DATA is a slip
    (splitting it again would be wrong), anything else wants `sightline data split`."""
    if root.name in SPLITS:
        return f"it looks like the {root.name}/ split of a dataset: pass its parent folder '{root.parent}'"
    return f"run `sightline data split {root} NEW` to make one"


def refuse_out_inside_splits(out: str | Path, data_dir: str | Path, *, option: str = "--out") -> None:
    """Raise UserInputError when `out` is DATA/train/ (val/, test/) or inside one: what a command writes there
    becomes a class folder of the dataset, and every later train, evaluate or audit of DATA fails on it. DATA/run
    itself is left out of the split layout, so it is allowed."""
    target = Path(out).resolve()
    for split in SPLITS:
        folder = Path(data_dir).resolve() / split
        if target == folder or folder in target.parents:
            raise UserInputError(f"{option} '{out}' is inside the dataset's {split}/ folder, where its files would "
                                 f"become part of the data; choose a folder outside '{data_dir}' (or beside its splits).")


def scan_dataset(
    root: str | Path,
    *,
    require_splits: tuple[str, ...] = (),
) -> Dataset:
    """Read a dataset folder: layout, classes, samples (header-checked images) and skipped files.

    The layout is "split" when DATA has a train/, val/ or test/ folder, else "flat". Only headers are read, so
    a file with a valid header but corrupt pixels is a sample here and a finding of `sightline data audit`.

    Raises DatasetError when the folder is missing, has fewer than two classes, a class folder holds no image,
    or one of `require_splits` is absent.

    Example:
        >>> ds = scan_dataset("DATA", require_splits=("train", "val"))
        >>> ds.class_counts("train")
        {'crack': 40, 'ok': 700, ...}
    """
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"dataset folder '{root}' does not exist; check the path")
    if not root.is_dir():
        raise DatasetError(f"dataset '{root}' is a file, not a folder of class folders")
    root = root.resolve()
    skipped: list[dict] = []
    present = [s for s in SPLITS if (root / s).is_dir()]
    if present and _classes_named_like_splits(root, present):
        present = []  # DATA/{train,car,bus}/ of images: a class named "train", not the split layout
    layout = "split" if present else "flat"
    # (split, class folder) pairs
    groups: list[tuple[str | None, Path]] = []
    if layout == "split":
        for d in sorted(root.iterdir()):
            if d.is_dir() and not _hidden(d.name) and d.name not in SPLITS:
                reason = (PRODUCTION_REASON if d.name == PRODUCTION else METADATA_DIRS.get(d.name)
                          or "folder is not a split (train/val/test) in the split layout; ignored")
                skipped.append({"path": d.name, "kind": IGNORED, "reason": reason})
        for s in present:
            groups.extend((s, d) for d in _class_dirs(root / s, root, skipped))
            # an image straight in train/ has no class: it was left out without a word
            skipped.extend({"path": f.relative_to(root).as_posix(), "kind": IGNORED,
                            "reason": f"file directly in {s}/, outside any class folder; move it into {s}/<class>/"}
                           for f in sorted((root / s).iterdir()) if not _hidden(f.name) and _is_file(f))
    else:
        groups.extend((None, d) for d in _class_dirs(root, root, skipped))
    # an image beside the class folders has no class (sightline.yaml, manifest.csv and notes are not images)
    skipped.extend({"path": f.name, "kind": IGNORED, "reason": "image at the top level, outside any class folder; "
                    f"move it into {'train/' if layout == 'split' else ''}<class>/"}
                   for f in sorted(root.iterdir()) if not _hidden(f.name) and _is_file(f)
                   and (f.suffix.lower() in IMAGE_SUFFIXES or looks_like_image(f)))
    missing = [s for s in require_splits if s not in present]
    if missing:
        hint = split_hint(root) if layout == "flat" else "add the folder or re-split the data"
        raise DatasetError(f"dataset '{root}' has no {'/'.join(missing)} split ({layout} layout); {hint}")

    files: list[tuple[str | None, str, Path]] = []
    for split, d in groups:
        for p in _walk_files(d, root, skipped):
            files.append((split, d.name, p))
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 2)) as pool:
        probed = list(pool.map(lambda f: _probe(f[2]), files))

    samples: list[Sample] = []
    for (split, label, p), (_, info) in zip(files, probed):
        rel = p.relative_to(root).as_posix()
        if isinstance(info, str):
            skipped.append({"path": rel, "kind": UNREADABLE, "reason": info})
            continue
        samples.append(
            Sample(
                path=p, relpath=rel, label=label, split=split, region=region_path(p),
                width=info.width, height=info.height, format=info.format, mode=info.mode, frames=info.frames,
            )
        )

    for entry in skipped:  # a stray file or folder beside the classes may carry a non-UTF-8 name too, and a reason
        entry["path"] = shown_name(entry["path"])  # names the file by its full path, the dataset's folder included
        entry["reason"] = shown_name(entry["reason"])
    per_folder = Counter((s.split, s.label) for s in samples)
    for split, d in groups:
        if per_folder[(split, d.name)] == 0:
            where = d.relative_to(root).as_posix()
            # what the folder does hold, and why none of it is used: a folder of symlinks to images elsewhere (each
            # refused) was told to "add images", though it held nothing else
            refused = [s for s in skipped if s["path"] == where or s["path"].startswith(f"{where}/")]
            held = (f" ({len(refused)} file(s) there not used, e.g. {refused[0]['path']}: {refused[0]['reason']})"
                    if refused else "")
            raise DatasetError(f"class folder '{where}' holds no usable image{held}; add images or remove the folder")
    classes = sorted({d.name for _, d in groups})
    if len(classes) < 2:
        found = f"only '{classes[0]}'" if classes else "none"
        where = "in train/val/test" if layout == "split" else "at the top level"
        raise DatasetError(f"dataset '{root}' needs at least two class folders {where}, found {found}")
    return Dataset(root=root, layout=layout, classes=classes, samples=samples, skipped=skipped, split_folders=present)


def _voc_boxes(path: Path) -> tuple[list[tuple[float, float, float, float]], tuple[int, int] | None]:
    """Pascal VOC boxes (xmin, ymin, xmax, ymax; 1-based inclusive pixels) and the annotated (width, height)."""
    try:
        tree = ET.parse(path)
    except ET.ParseError as exc:
        raise DatasetError(f"region file '{path}': invalid XML ({exc}); fix or remove it") from None
    root = tree.getroot()
    boxes = []
    for box in root.iter("bndbox"):
        try:
            boxes.append(tuple(float(box.findtext(k, "")) for k in ("xmin", "ymin", "xmax", "ymax")))
        except ValueError:
            raise DatasetError(f"region file '{path}': a bndbox lacks numeric xmin/ymin/xmax/ymax") from None
    size = root.find("size")
    annotated = None
    if size is not None:
        try:
            annotated = (int(float(size.findtext("width", ""))), int(float(size.findtext("height", ""))))
        except ValueError:
            annotated = None
    return boxes, annotated  # type: ignore[return-value]


def load_regions(sample: Sample, size: tuple[int, int]) -> np.ndarray | None:
    """The ground-truth region of a sample as an (H, W) bool mask for an image of `size` = (width, height),
    i.e. PIL's `image.size` of the loaded image. Boxes are rasterised (filled); a mask PNG is any non-zero pixel,
    resized with nearest neighbour if its size differs. VOC boxes are rescaled when the XML's <size> differs.
    Returns None when the sample has no region file. Raises DatasetError on an unreadable region file."""
    w, h = int(size[0]), int(size[1])
    files = region_files(sample.path)
    mask_file, xml_file = files.get(MASK_SUFFIX), files.get(VOC_SUFFIX)
    mask: np.ndarray | None = None
    if mask_file is not None:
        try:
            with Image.open(mask_file) as m:
                m = m.convert("L")
                if m.size != (w, h):
                    m = m.resize((w, h), Image.Resampling.NEAREST)
                mask = np.asarray(m) > 0
        except (OSError, SyntaxError, ValueError) as exc:
            raise DatasetError(f"region mask '{mask_file}' cannot be read ({exc}); fix or remove it") from None
    if xml_file is not None:
        boxes, annotated = _voc_boxes(xml_file)
        sx, sy = (w / annotated[0], h / annotated[1]) if annotated and annotated[0] > 0 and annotated[1] > 0 else (1.0, 1.0)
        box_mask = np.zeros((h, w), dtype=bool)
        for xmin, ymin, xmax, ymax in boxes:
            x0 = max(0, int(np.floor((xmin - 1) * sx)))
            y0 = max(0, int(np.floor((ymin - 1) * sy)))
            x1 = min(w, int(np.ceil(xmax * sx)))
            y1 = min(h, int(np.ceil(ymax * sy)))
            box_mask[y0:y1, x0:x1] = True
        mask = box_mask if mask is None else (mask | box_mask)
    return mask


def dataset_version(dataset: Dataset) -> str:
    """Hash of the manifest (relpath, label, split, sha256 of the bytes), sorted: 16 hex characters.

    Any change of content, label or split changes it; the order of files on disk does not."""
    from sightline.data.hashing import sha256_file

    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 2)) as pool:
        digests = list(pool.map(lambda s: sha256_file(s.path), dataset.samples))
    rows = sorted(f"{s.relpath}\t{s.label}\t{s.split or ''}\t{d}" for s, d in zip(dataset.samples, digests))
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16]
