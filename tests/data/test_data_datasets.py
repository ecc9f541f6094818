"""Dataset scanning, regions, manifest and dataset version on folders built in the test."""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from sightline.data.datasets import dataset_version, load_regions, scan_dataset
from sightline.data.hashing import hamming_matrix, near_duplicate_pairs, phash
from sightline.data.manifest import describe_images, laplacian_variance, read_manifest, write_manifest
from sightline.errors import DatasetError


def _img(seed: int, size: int = 32, detail: int = 4) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (detail, detail, 3), dtype=np.uint8)  # smooth, distinct structure per seed
    return Image.fromarray(base).resize((size, size), Image.Resampling.BICUBIC)


def _save(path: Path, im: Image.Image, fmt: str = "PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, fmt)
    return path


def _flat(root: Path, per_class: dict[str, int]) -> Path:
    seed = 0
    for label, n in per_class.items():
        for i in range(n):
            _save(root / label / f"{label}_{i}.png", _img(seed))
            seed += 1
    return root


def test_flat_layout_skips_hidden_refuses_escaping_symlinks_and_reports_non_images(tmp_path: Path) -> None:
    root = _flat(tmp_path / "data", {"ants": 3, "bees": 2})
    (root / "ants" / ".DS_Store").write_bytes(b"junk")
    (root / "ants" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0junk")  # Windows' thumbnail cache: skipped alike
    (root / "bees" / "desktop.ini").write_text("[.ShellClassInfo]\n")
    _save(root / ".quarantine" / "x" / "q.png", _img(99))  # hidden folder: not a class
    (root / "bees" / "notes.jpg").write_text("not an image")
    outside = _save(tmp_path / "elsewhere" / "secret.png", _img(100))
    os.symlink(outside, root / "bees" / "link.png")
    os.symlink(root / "ants" / "ants_0.png", root / "bees" / "inside_link.png")  # inside the root: allowed
    _save(root / "ants" / "ants_0.mask.png", Image.new("L", (32, 32), 0))  # annotation, not a sample
    (root / "sightline.yaml").write_text("task: x\n")

    ds = scan_dataset(root)
    assert ds.layout == "flat" and ds.classes == ["ants", "bees"]
    assert ds.class_counts() == {"ants": 3, "bees": 3}
    rels = sorted(s.relpath for s in ds.samples)
    assert "bees/inside_link.png" in rels and "bees/link.png" not in rels
    reasons = {d["path"]: d["reason"] for d in ds.skipped}
    assert "outside the dataset root" in reasons["bees/link.png"]
    assert "not a supported image" in reasons["bees/notes.jpg"]
    assert not any(p.endswith(("Thumbs.db", "desktop.ini")) for p in reasons)
    assert all(not s.relpath.split("/")[-1].startswith(".") for s in ds.samples)
    ant0 = next(s for s in ds.samples if s.relpath == "ants/ants_0.png")
    assert ant0.region == root / "ants" / "ants_0.mask.png" and ant0.split is None
    assert (ant0.width, ant0.height, ant0.format, ant0.mode) == (32, 32, "PNG", "RGB")
    assert ds.split(None) == ds.samples


def test_split_layout_and_required_splits(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for split, n in (("train", 3), ("val", 1), ("test", 1)):
        for label in ("ok", "bad"):
            for i in range(n):
                _save(root / split / label / f"{i}.png", _img(hash((split, label, i)) % 1000))
    ds = scan_dataset(root, require_splits=("train", "val", "test"))
    assert ds.layout == "split" and ds.classes == ["bad", "ok"]
    assert ds.class_counts("train") == {"bad": 3, "ok": 3} and len(ds.split("val")) == 2
    assert {s.split for s in ds.samples} == {"train", "val", "test"}

    flat = _flat(tmp_path / "flat", {"a": 2, "b": 2})
    with pytest.raises(DatasetError, match="no train/val split.*sightline data split"):
        scan_dataset(flat, require_splits=("train", "val"))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda r: None, "does not exist"),
        (lambda r: _flat(r, {"only": 2}), "at least two class folders.*only 'only'"),
        (lambda r: (_flat(r, {"a": 2, "b": 1}), (r / "c").mkdir()), "class folder 'c' holds no usable image"),
        (lambda r: (_flat(r, {"a": 2}), (r / "b").mkdir(), (r / "b" / "x.txt").write_text("hi")), "'b' holds no usable image"),
    ],
    ids=["missing", "single-class", "empty-class", "class-without-images"],
)
def test_bad_datasets_raise_one_clear_error(tmp_path: Path, make, message: str) -> None:
    root = tmp_path / "data"
    make(root)
    with pytest.raises(DatasetError, match=message):
        scan_dataset(root)


def test_voc_boxes_and_mask_regions(tmp_path: Path) -> None:
    root = _flat(tmp_path / "data", {"a": 2, "b": 1})
    (root / "a" / "a_0.xml").write_text(
        "<annotation><size><width>32</width><height>32</height></size>"
        "<object><bndbox><xmin>3</xmin><ymin>5</ymin><xmax>10</xmax><ymax>8</ymax></bndbox></object>"
        "<object><bndbox><xmin>20</xmin><ymin>20</ymin><xmax>32</xmax><ymax>32</ymax></bndbox></object>"
        "</annotation>"
    )
    m = np.zeros((32, 32), dtype=np.uint8)
    m[4:12, 6:9] = 1  # 0/1 masks count too
    _save(root / "a" / "a_1.mask.png", Image.fromarray(m, "L"))
    ds = scan_dataset(root)
    by = {s.relpath: s for s in ds.samples}

    expected = np.zeros((32, 32), dtype=bool)
    expected[4:8, 2:10] = True  # VOC pixels are 1-based and inclusive
    expected[19:32, 19:32] = True
    np.testing.assert_array_equal(load_regions(by["a/a_0.png"], (32, 32)), expected)
    # the same boxes on an image shown at twice the size scale with it
    big = load_regions(by["a/a_0.png"], (64, 64))
    assert big.shape == (64, 64) and big.sum() == expected.sum() * 4

    np.testing.assert_array_equal(load_regions(by["a/a_1.png"], (32, 32)), m.astype(bool))
    assert load_regions(by["a/a_1.png"], (16, 8)).shape == (8, 16)
    assert load_regions(by["b/b_0.png"], (32, 32)) is None

    (root / "a" / "a_0.xml").write_text("<annotation><object>")
    with pytest.raises(DatasetError, match="a_0.xml"):
        load_regions(by["a/a_0.png"], (32, 32))


def test_dataset_version_tracks_content_labels_and_splits(tmp_path: Path) -> None:
    root = _flat(tmp_path / "data", {"a": 2, "b": 2})
    v1 = dataset_version(scan_dataset(root))
    assert v1 == dataset_version(scan_dataset(root)) and len(v1) == 16
    os.rename(root / "a" / "a_0.png", root / "b" / "a_0.png")  # relabel one image
    v2 = dataset_version(scan_dataset(root))
    assert v2 != v1
    _save(root / "a" / "a_1.png", _img(500))  # change content
    assert dataset_version(scan_dataset(root)) not in (v1, v2)


def test_manifest_records_and_round_trip(tmp_path: Path) -> None:
    root = _flat(tmp_path / "data", {"a": 2, "b": 1})
    good = root / "b" / "cut.jpg"
    full = io.BytesIO()
    _img(7, 128, detail=64).save(full, "JPEG")
    good.write_bytes(full.getvalue()[: len(full.getvalue()) // 2])  # valid header, truncated data
    ds = scan_dataset(root)
    records = describe_images(ds, workers=2)
    by = {r.relpath: r for r in records}
    assert by["a/a_0.png"].sha256 == hashlib.sha256((root / "a" / "a_0.png").read_bytes()).hexdigest()
    assert by["a/a_0.png"].phash == f"{phash(Image.open(root / 'a' / 'a_0.png')):016x}"
    assert by["b/cut.jpg"].error and "truncated" in by["b/cut.jpg"].error and by["b/cut.jpg"].phash == ""
    assert "cut.jpg" not in by["b/cut.jpg"].error  # it is listed beside its path: named once
    path = write_manifest(records, tmp_path / "manifest.csv")
    header = path.read_text().splitlines()[0]
    assert header == "relpath,label,split,sha256,width,height,phash,format,mode"
    back = {r.relpath: r for r in read_manifest(path)}
    assert back["a/a_1.png"].sha256 == by["a/a_1.png"].sha256 and back["a/a_1.png"].width == 32
    assert back["a/a_1.png"].split is None


def test_phash_tolerates_resize_and_recompression_but_separates_images() -> None:
    images = [_img(s, 96, detail=12) for s in range(12)]
    hashes = np.array([phash(im) for im in images], dtype=np.uint64)
    d = hamming_matrix(hashes, hashes)
    assert d[np.triu_indices(12, 1)].min() > 10
    for im, h in zip(images, hashes):
        buf = io.BytesIO()
        im.resize((48, 48)).save(buf, "JPEG", quality=70)
        variant = Image.open(io.BytesIO(buf.getvalue()))
        assert bin(phash(variant) ^ int(h)).count("1") <= 6


def test_near_duplicate_pairs_match_brute_force() -> None:
    rng = np.random.default_rng(1)
    hashes = rng.integers(0, 2**63, size=300, dtype=np.uint64)
    hashes[50] = hashes[7] ^ np.uint64(0b1011)  # 3 bits away
    hashes[200] = hashes[7]
    pairs = near_duplicate_pairs(hashes, max_distance=8, block=64)
    brute = {(i, j) for i in range(300) for j in range(i + 1, 300) if bin(int(hashes[i]) ^ int(hashes[j])).count("1") <= 8}
    assert {tuple(p) for p in pairs.tolist()} == brute and {(7, 50), (7, 200), (50, 200)} <= brute


def test_laplacian_variance_falls_with_blur() -> None:
    sharp = _img(3, 128).convert("L").filter(ImageFilter.DETAIL)
    noisy = np.asarray(sharp, dtype=np.float32) + np.random.default_rng(0).normal(0, 20, (128, 128))
    sharp = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    blurred = sharp.filter(ImageFilter.GaussianBlur(3))
    assert laplacian_variance(np.asarray(blurred)) < 0.1 * laplacian_variance(np.asarray(sharp))
    flat = np.full((10, 10), 7.0)
    assert laplacian_variance(flat) == 0.0


def test_a_split_folder_given_for_its_dataset_says_to_pass_the_parent(tmp_path: Path) -> None:
    """`train DATA/train` said to run `sightline data split` on it: splitting one split again is not the fix."""
    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / "data" / split / c).mkdir(parents=True)
            Image.new("RGB", (16, 16)).save(tmp_path / "data" / split / c / "0.png")
    with pytest.raises(DatasetError, match=r"val/ split of a dataset: pass its parent folder '.*data'"):
        scan_dataset(tmp_path / "data" / "val", require_splits=("train", "val"))


def test_an_image_named_near_the_file_name_limit_has_no_region_and_no_error(tmp_path: Path) -> None:
    """'<250-byte stem>.mask.png' is longer than a file name can be: looking for it raised OSError (File name too
    long) in audit, split and evaluate."""
    from sightline.data.datasets import region_files

    image = tmp_path / ("b" * 250 + ".jpg")
    Image.new("RGB", (16, 16)).save(image)
    assert region_files(image) == {}
