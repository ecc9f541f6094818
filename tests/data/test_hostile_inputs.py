"""Hostile dataset folders and files: each is reported with its path and what to do, never followed forever,
never dropped in silence."""
from __future__ import annotations

import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sightline.data.audit import audit_dataset, missing_classes
from sightline.data.datasets import scan_dataset
from sightline.data.images import image_info, load_image
from sightline.errors import ImageTooLargeError, NotAnImageError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))  # serve_tiny


def _images(folder, n, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(folder / f"{i}.png")


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_a_symlink_loop_is_reported_once_not_walked_forever(tmp_path):
    """A class folder holding `loop -> .` was walked ~40 levels deep (until the path got too long), listing every
    image once per level: duplicates in every split and a manifest of thousands of rows."""
    _images(tmp_path / "cat", 3)
    _images(tmp_path / "dog", 3, seed=1)
    os.symlink(".", tmp_path / "cat" / "loop")
    os.symlink("..", tmp_path / "dog" / "up")  # back to the dataset root: just as endless
    ds = scan_dataset(tmp_path)
    assert sorted(s.relpath for s in ds.samples) == [f"{c}/{i}.png" for c in ("cat", "dog") for i in range(3)]
    reasons = {s["path"]: s["reason"] for s in ds.skipped}
    assert set(reasons) == {"cat/loop", "dog/up"} and all("loop" in r for r in reasons.values())


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_two_folders_linking_to_each_other_end(tmp_path):
    """cat/alias -> ../dog/sub and dog/sub/back -> ../../cat: neither is an ancestor of the other, yet walking one
    leads back into the other."""
    _images(tmp_path / "cat", 2)
    _images(tmp_path / "dog" / "sub", 2, seed=1)
    os.symlink("../dog/sub", tmp_path / "cat" / "alias")
    os.symlink("../../cat", tmp_path / "dog" / "sub" / "back")
    ds = scan_dataset(tmp_path)
    assert max(len(s.relpath.split("/")) for s in ds.samples) <= 4
    assert all("loop" in s["reason"] for s in ds.skipped) and len(ds.skipped) == 2


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_a_symlink_to_a_sibling_folder_is_still_followed(tmp_path):
    _images(tmp_path / "cat" / "shared", 2)
    _images(tmp_path / "dog", 3, seed=1)
    os.symlink("shared", tmp_path / "cat" / "alias")  # not a loop: kept, as before
    ds = scan_dataset(tmp_path)
    assert sum(s.relpath.startswith("cat/alias/") for s in ds.samples) == 2


def test_an_empty_file_says_it_is_empty(tmp_path):
    (tmp_path / "zero.png").write_bytes(b"")
    for source in (tmp_path / "zero.png", b""):
        with pytest.raises(NotAnImageError, match=r"empty \(0 bytes\)"):
            load_image(source)
    with pytest.raises(NotAnImageError, match=r"zero\.png: the content is empty"):
        image_info(tmp_path / "zero.png")


def test_a_bomb_beyond_pillows_limit_says_what_to_do(tmp_path):
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)  # 10 gigapixels declared in 69 bytes
    path = tmp_path / "bomb.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 100))
                     + chunk(b"IEND", b""))
    with pytest.raises(ImageTooLargeError, match=r"bomb\.png: .*downscale the image"):
        load_image(path)


def test_missing_classes_per_split():
    pairs = [("train", "a"), ("train", "b"), ("val", "a"), ("test", "b")]
    found = {f.detail["split"]: f.detail["classes"] for f in missing_classes(pairs)}
    assert found == {"val": ["b"], "test": ["a"]}
    assert missing_classes([(None, "a"), (None, "b")]) == []  # flat layout: nothing to compare
    assert missing_classes([("train", "a"), ("val", "a"), ("train", "b"), ("val", "b")]) == []


def test_audit_flags_a_class_missing_from_val(tmp_path, run_cli):
    """Training and evaluation ran without a word when val lacked a class: early stopping, temperature and
    thresholds were fitted without it."""
    for split, classes in (("train", ("a", "b")), ("val", ("a",)), ("test", ("a", "b"))):
        for i, c in enumerate(classes):
            _images(tmp_path / split / c, 2, seed=i)
    result = audit_dataset(tmp_path, html=False)
    flagged = [f for f in result.findings if f.kind == "split_missing_class"]
    assert [(f.detail["split"], f.detail["classes"]) for f in flagged] == [("val", ["b"])]
    assert result.counts["split_missing_class"] == 1
    code, out = run_cli(["data", "audit", str(tmp_path), "--no-labels"])
    assert code == 0 and "val lacks b" in " ".join(out.out.split())


@pytest.mark.parametrize("command", [
    ["data", "split", "{src}", "{out}", "--seed", "-1"],
    ["data", "synth", "{out}", "--n", "20", "--seed", "-1"],
])
def test_a_negative_seed_is_one_line(tmp_path, run_cli, command):
    """numpy refused it with a ValueError traceback (exit 1)."""
    _images(tmp_path / "src" / "a", 2)
    _images(tmp_path / "src" / "b", 2, seed=1)
    args = [part.format(src=tmp_path / "src", out=tmp_path / "out") for part in command]
    code, out = run_cli(args)
    assert code == 2 and "Traceback" not in out.err and "--seed -1 must be 0 or more" in out.err


def test_label_check_refuses_a_negative_seed(tmp_path):
    from sightline.errors import UserInputError
    from sightline.train.label_audit import audit_labels

    _images(tmp_path / "a", 2)
    _images(tmp_path / "b", 2, seed=1)
    with pytest.raises(UserInputError, match="--seed -1 must be 0 or more"):
        audit_labels(scan_dataset(tmp_path), seed=-1)


def test_a_jpeg_cut_inside_its_header_says_what_to_do():
    import io

    from sightline.errors import CorruptImageError

    buf = io.BytesIO()
    Image.new("RGB", (20, 20)).save(buf, "JPEG")
    with pytest.raises(CorruptImageError, match=r"corrupt image header .*re-export or remove the file"):
        load_image(buf.getvalue()[:200])


def test_a_folder_file_named_like_an_image_is_listed_whatever_it_holds(tmp_path):
    """`photo.jpg` holding an HTML page (a failed download) or a GIF vanished from `predict`'s output; now it is
    listed, so its row says why it could not be read. A text file is still left out; content still counts."""
    from sightline.data.inputs import expand_inputs

    _images(tmp_path / "in", 1)
    (tmp_path / "in" / "photo.jpg").write_text("<html>404</html>")
    Image.new("RGB", (8, 8)).save(tmp_path / "in" / "anim.GIF")
    (tmp_path / "in" / "notes.txt").write_text("hello")
    (tmp_path / "in" / "camera.JPG.bak").write_bytes((tmp_path / "in" / "0.png").read_bytes())
    names = sorted(p.name for p in expand_inputs([tmp_path / "in"]))
    assert names == ["0.png", "anim.GIF", "camera.JPG.bak", "photo.jpg"]


def test_predict_gives_such_files_an_error_row(tmp_path, run_cli):
    import json

    from serve_tiny import make_bundle  # a tiny exported bundle, exported once per test run and copied

    make_bundle(tmp_path)
    _images(tmp_path / "in", 1)
    (tmp_path / "in" / "photo.jpg").write_text("<html>404</html>")
    code, out = run_cli(["predict", str(tmp_path / "bundle"), str(tmp_path / "in"), "--format", "json"])
    rows = {row["filename"].rsplit("/", 1)[-1]: row for row in json.loads(out.out)}
    assert code == 0 and set(rows) == {"0.png", "photo.jpg"}
    assert rows["photo.jpg"]["error"] and "not a supported image" in rows["photo.jpg"]["error"]


def test_predict_inputs_follow_a_symlinked_folder_once_and_end_on_a_loop(tmp_path):
    """A folder given to predict that holds a symlinked folder of images: those images were left out without a
    word (pathlib's rglob does not follow links), while the dataset scan of the same folder used them."""
    from sightline.data.inputs import expand_inputs

    _images(tmp_path / "elsewhere", 2)
    _images(tmp_path / "in", 1)
    (tmp_path / "in" / "linked").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "in" / "loop").symlink_to(tmp_path / "in")
    (tmp_path / "in" / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")  # kept: its row will say why
    found = expand_inputs([tmp_path / "in"])
    assert sorted(p.relative_to(tmp_path / "in").as_posix() for p in found) == [
        "0.png", "gone.jpg", "linked/0.png", "linked/1.png"]


@pytest.mark.parametrize("where", ["", "train/", "train/cat/"])
def test_a_metadata_folder_like_macosx_or_eadir_is_ignored_and_listed(tmp_path, where):
    """A dataset zipped on a Mac unzips with __MACOSX/ (AppleDouble `._name` files) beside the class folders: it was
    read as a class with no usable image and the whole dataset refused; inside a class its files were hidden anyway."""
    for split in ("train/", "val/") if where else ("",):
        _images(tmp_path / f"{split}cat", 2)
        _images(tmp_path / f"{split}dog", 2, seed=1)
    junk = tmp_path / where / "__MACOSX" / "cat"
    junk.mkdir(parents=True)
    (junk / "._0.png").write_bytes(b"\0\x05\x16\x07" + b"\0" * 60)
    _images(tmp_path / where / "@eaDir" / "0.png", 1)  # a Synology share's thumbnails: real images, not data
    ds = scan_dataset(tmp_path)
    assert ds.classes == ["cat", "dog"] and len(ds.samples) == (8 if where else 4)
    listed = {s["path"]: s for s in ds.skipped}
    assert listed[f"{where}__MACOSX"]["kind"] == "ignored" and "macOS" in listed[f"{where}__MACOSX"]["reason"]
    assert "Synology" in listed[f"{where}@eaDir"]["reason"]


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_a_class_folder_with_nothing_usable_says_what_it_holds(tmp_path):
    """A class folder of symlinks to photos elsewhere (each refused), or of HEIC photos, was told "holds no usable
    image; add images", as if it were empty: now the count and the first file's reason come with it."""
    from sightline.errors import DatasetError

    _images(tmp_path / "elsewhere", 2)
    _images(tmp_path / "data" / "cat", 2)
    (tmp_path / "data" / "dog").mkdir()
    for i in range(2):
        os.symlink(tmp_path / "elsewhere" / f"{i}.png", tmp_path / "data" / "dog" / f"{i}.png")
    with pytest.raises(DatasetError, match=r"class folder 'dog' holds no usable image \(2 file\(s\) there not used, "
                                           r"e\.g\. dog/0\.png: symlink points outside the dataset root; .*cp -L"):
        scan_dataset(tmp_path / "data")


def test_a_class_named_train_in_the_flat_layout_is_a_class(tmp_path):
    """DATA/{train,car,bus}/ of images (vehicles): the train/ folder made it the split layout, car/ and bus/ were
    ignored as "not a split", and the dataset refused: "needs at least two class folders in train/val/test"."""
    for i, c in enumerate(("train", "car", "bus")):
        _images(tmp_path / c, 2, seed=i)
    ds = scan_dataset(tmp_path)
    assert ds.layout == "flat" and ds.classes == ["bus", "car", "train"] and len(ds.samples) == 6


def test_an_image_straight_in_a_split_folder_is_listed(tmp_path):
    """DATA/train/x.png (no class folder) was left out of every stage without a word."""
    for split in ("train", "val"):
        _images(tmp_path / split / "cat", 2)
        _images(tmp_path / split / "dog", 2, seed=1)
    _images(tmp_path / "train" / "stray", 1)
    (tmp_path / "train" / "stray" / "0.png").rename(tmp_path / "train" / "x.png")
    (tmp_path / "train" / "stray").rmdir()
    ds = scan_dataset(tmp_path)
    assert ds.layout == "split" and len(ds.samples) == 8
    listed = {s["path"]: s["reason"] for s in ds.skipped}
    assert "outside any class folder; move it into train/<class>/" in listed["train/x.png"]


@pytest.mark.parametrize("split", ["", "train/"])
def test_an_image_beside_the_class_folders_is_listed(tmp_path, split):
    """DATA/x.jpg (no class folder) was left out without a word; notes and sightline.yaml beside it are not images."""
    for s in (split, "val/") if split else ("",):
        _images(tmp_path / s / "cat", 2)
        _images(tmp_path / s / "dog", 2, seed=1)
    Image.new("RGB", (24, 24), (200, 30, 30)).save(tmp_path / "x.jpg")
    (tmp_path / "sightline.yaml").write_text("task: x\n")
    (tmp_path / "README.md").write_text("notes")
    listed = {s["path"]: s["reason"] for s in scan_dataset(tmp_path).skipped}
    assert set(listed) == {"x.jpg"} and f"move it into {split}<class>/" in listed["x.jpg"]
