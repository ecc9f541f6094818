"""Datasets as they arrive from the field: names that are not UTF-8, link loops, tiny classes, odd files and formats."""
from __future__ import annotations

import json
import os

import pytest
from PIL import Image

from sightline.data.audit import audit_dataset
from sightline.data.datasets import UNREADABLE, IGNORED, scan_dataset
from sightline.data.inputs import shown_name


def _image(path, colour=(120, 40, 40)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 24), colour).save(path)


def _latin1_dataset(root):
    """Flat layout; 'ants/caf\\xe9.jpg' and the class folder 'b\\xe9es' named in Latin-1 (as a zip made on Windows
    or an old camera leaves them on Linux)."""
    for i in range(3):
        _image(root / "ants" / f"{i}.png", (30 * i, 40, 40))
        _image(root / "bees" / f"{i}.png", (40, 30 * i, 200))
    Image.new("RGB", (24, 24), (1, 2, 3)).save(os.path.join(os.fsencode(root / "ants"), b"caf\xe9.png"))
    os.makedirs(os.path.join(os.fsencode(root), b"b\xe9es"))
    Image.new("RGB", (24, 24), (9, 9, 9)).save(os.path.join(os.fsencode(root), b"b\xe9es", b"x.png"))
    return root


def test_shown_name_escapes_only_bytes_that_are_not_utf8():
    assert shown_name(os.fsdecode(b"ants/caf\xe9.jpg")) == "ants/caf\\xe9.jpg"
    assert shown_name("wespe ü/ä b.jpg") == "wespe ü/ä b.jpg"


def test_scan_lists_names_that_are_not_utf8_with_what_to_do(tmp_path):
    """They reached manifest.csv (audit, split) as lone surrogates: UnicodeEncodeError, a traceback after the whole
    decoding pass. They are listed as not used, named with \\x escapes, with the advice to rename them."""
    ds = scan_dataset(_latin1_dataset(tmp_path / "data"))
    assert ds.classes == ["ants", "bees"]
    assert len(ds.samples) == 6
    by_path = {s["path"]: s for s in ds.skipped}
    assert by_path["ants/caf\\xe9.png"]["kind"] == UNREADABLE
    assert by_path["b\\xe9es"]["kind"] == IGNORED
    assert all("not valid UTF-8" in by_path[p]["reason"] and "rename" in by_path[p]["reason"] for p in by_path)
    for entry in ds.skipped:
        entry["path"].encode("utf-8")  # no lone surrogate left


def test_audit_of_names_that_are_not_utf8_writes_its_files(tmp_path):
    data = _latin1_dataset(tmp_path / "data")
    result = audit_dataset(data, out=tmp_path / "audit", label_check=None)
    assert (tmp_path / "audit" / "manifest.csv").read_text(encoding="utf-8").count("\n") == 7  # header + 6
    report = json.loads((tmp_path / "audit" / "audit.json").read_text(encoding="utf-8"))
    paths = [p for f in report["findings"] for p in f["paths"]]
    assert "ants/caf\\xe9.png" in paths and "b\\xe9es" in paths
    assert result.root is not None


def test_many_small_classes_still_give_every_split_its_share():
    """15 classes of 4 images, 70/15/15: each class went 3/1/0 (the val/test tie was broken the same way in every
    class), so the test split of the 60 images was empty and `evaluate` had nothing to measure. Ties now go to the
    split furthest below its share of the whole dataset."""
    from collections import Counter

    from sightline.data.split import assign_groups

    labels = [f"class{c:02d}" for c in range(15) for _ in range(4)]
    where = assign_groups([[i] for i in range(len(labels))], labels, seed=0)
    per_split = Counter(where)
    assert per_split[0] == 45 and per_split[1] + per_split[2] == 15
    assert abs(per_split[1] - per_split[2]) <= 1
    for c in range(15):  # within a class the proportions still follow the ratios as closely as 4 images allow
        assert Counter(k for k, lab in zip(where, labels) if lab == f"class{c:02d}")[0] == 3


def test_a_link_back_to_a_parent_folder_does_not_widen_the_inputs(tmp_path):
    """DATA/ants/loop -> .. (a link loop, as a backup tool or a careless `ln -s` leaves): `predict DATA/ants` walked
    the link up to DATA and predicted the bees too. The dataset scan calls it a loop and ignores it; so do inputs.
    A link to a folder elsewhere is still followed."""
    from sightline.data.inputs import expand_inputs

    _image(tmp_path / "data" / "ants" / "a.png")
    _image(tmp_path / "data" / "bees" / "b.png")
    _image(tmp_path / "more" / "m.png")
    os.symlink("..", tmp_path / "data" / "ants" / "loop")
    os.symlink(tmp_path / "data" / "ants", tmp_path / "data" / "ants" / "self")
    os.symlink(tmp_path / "more", tmp_path / "data" / "ants" / "more")
    ants = tmp_path / "data" / "ants"
    found = sorted(p.relative_to(ants).as_posix() for p in expand_inputs([ants]))
    assert found == ["a.png", "more/m.png"]


def test_a_region_file_no_image_uses_is_listed(tmp_path):
    """Annotations are left out of the images by their suffix in any case, but read only as '<stem>.xml' or
    '<stem>.mask.png' beside the image: 'IMG_2.XML' from a Windows tool or 'IMG_3.jpg.xml' was dropped without a
    word and the image had no region. They are listed as ignored with how to name them."""
    from sightline.data.datasets import IGNORED

    root = tmp_path / "data"
    for i in range(1, 4):
        _image(root / "a" / f"IMG_{i}.JPG")
        _image(root / "b" / f"{i}.png")
    voc = ("<annotation><object><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>"
           "</annotation>")
    (root / "a" / "IMG_1.xml").write_text(voc)
    (root / "a" / "IMG_2.XML").write_text(voc)
    (root / "a" / "IMG_3.jpg.xml").write_text(voc)
    _image(root / "b" / "1.mask.png", (255, 255, 255))
    _image(root / "b" / "9.mask.png", (255, 255, 255))
    ds = scan_dataset(root)
    regions = {s.relpath: s.region for s in ds.samples}
    assert regions["a/IMG_1.JPG"] is not None and regions["b/1.png"] is not None
    listed = {s["path"]: s for s in ds.skipped}
    assert set(listed) == {"a/IMG_2.XML", "a/IMG_3.jpg.xml", "b/9.mask.png"}
    assert all(s["kind"] == IGNORED and "no image uses it" in s["reason"] for s in listed.values())


def test_class_names_that_differ_only_in_spacing_are_found():
    """'bees  ' (trailing spaces, invisible in every listing and in the split table) beside 'bees', and
    'golden_retriever' from one source beside 'golden retriever' from another: two classes where one was meant,
    trained as two, and the audit's similar_class_names check said nothing."""
    from sightline.data.audit import similar_class_names

    found = [f.detail["classes"] for f in similar_class_names(
        ["bees", "bees  ", "golden retriever", "Golden_Retriever", "ants", "ant", "t-rex", "trex"])]
    assert sorted(found) == [["Golden_Retriever", "golden retriever"], ["bees", "bees  "]]


def test_a_named_pipe_in_a_class_folder_is_listed_not_waited_on(tmp_path):
    """A FIFO named like an image (left by a capture tool): opening it to read a header waited for a writer forever,
    so the scan, the audit report's thumbnails and predict hung without a word. It is refused before it is opened."""
    import pytest

    from sightline.data.images import load_image
    from sightline.errors import NotAnImageError

    root = tmp_path / "data"
    for c in ("a", "b"):
        _image(root / c / "1.png")
    os.mkfifo(root / "a" / "pipe.jpg")
    ds = scan_dataset(root)
    assert len(ds.samples) == 2
    assert [(s["path"], s["kind"]) for s in ds.skipped] == [("a/pipe.jpg", UNREADABLE)]
    assert "named pipe" in ds.skipped[0]["reason"]
    with pytest.raises(NotAnImageError, match="pipe.jpg: not a regular file"):
        load_image(root / "a" / "pipe.jpg")
    audit_dataset(root, out=tmp_path / "audit", dataset=ds)  # the report draws a thumbnail of each finding
    assert "pipe.jpg" in (tmp_path / "audit" / "audit.html").read_text(encoding="utf-8")


def test_an_image_above_the_pixel_cap_is_listed_with_what_to_do(tmp_path, monkeypatch):
    """A 10000x10000 scan was listed as '10000x10000 is above the 50 megapixel cap' and nothing more."""
    from sightline.data import datasets

    monkeypatch.setattr(datasets, "DEFAULT_MAX_PIXELS", 1000)  # a small file stands in for a huge one
    root = tmp_path / "data"
    for c in ("a", "b"):
        _image(root / c / "1.png")
    Image.new("L", (40, 30), 128).save(root / "a" / "big.png")
    ds = scan_dataset(root)
    assert [s["path"] for s in ds.skipped] == ["a/big.png"]
    assert "40x30 is above" in ds.skipped[0]["reason"] and "downscale it" in ds.skipped[0]["reason"]


# a 2x2 float32 RGB TIFF (tifffile.imwrite(np.zeros((2, 2, 3), np.float32), photometric="rgb")): Pillow cannot read it
FLOAT_RGB_TIFF = (
    "49492a00080000000f000001040001000000020000000101040001000000020000000201030003000000c2000000030103000100000001"
    "0000000601030001000000020000001101040001000000f000000015010300010000000300000016010400010000000200000017010400"
    "01000000300000001a01050001000000c80000001b01050001000000d00000001c01030001000000010000002801030001000000010000"
    "00310102000c000000d80000005301030003000000e4000000000000002000200020000100000001000000010000000100000074696666"
    "66696c652e7079000300030003" + "00" * 55)


def test_a_file_that_starts_like_an_image_but_does_not_decode_says_so(tmp_path):
    """A float RGB TIFF from a scientific camera (Pillow cannot read it) or a PNG cut after its signature was
    'not a supported image (the content is not JPEG, PNG, BMP, TIFF or WebP)', wrong about the file and no help;
    it is a corrupt or unreadable TIFF/PNG, with what to do (CorruptImageError: the API's 422, not 415)."""
    import pytest

    from sightline.data.images import load_image
    from sightline.errors import CorruptImageError, NotAnImageError

    (tmp_path / "float.tif").write_bytes(bytes.fromhex(FLOAT_RGB_TIFF))
    (tmp_path / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    (tmp_path / "notes.tif").write_text("lab notes, not a scan")
    with pytest.raises(CorruptImageError, match=r"float.tif: starts like a TIFF file .* re-save it as an 8-bit"):
        load_image(tmp_path / "float.tif")
    with pytest.raises(CorruptImageError, match="cut.png: starts like a PNG file"):
        load_image(tmp_path / "cut.png")
    with pytest.raises(NotAnImageError, match="notes.tif: not a supported image"):
        load_image(tmp_path / "notes.tif")


def test_a_subfolder_that_cannot_be_read_is_listed(tmp_path, monkeypatch):
    """A sub-folder of a class without read permission (copied from another user's share): os.walk skips a folder
    it cannot list without a word, so its images were left out of every stage unsaid; a whole class folder so was
    'holds no usable image; add images'. (Permissions are simulated: the tests may run as root.)"""
    import pytest

    from sightline.errors import DatasetError

    root = tmp_path / "data"
    for c in ("a", "b"):
        _image(root / c / "1.png")
    _image(root / "a" / "locked" / "2.png")
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    ds = scan_dataset(root)
    assert len(ds.samples) == 2
    assert [(s["path"], s["kind"]) for s in ds.skipped] == [("a/locked", UNREADABLE)]
    assert "Permission denied" in ds.skipped[0]["reason"] and "permissions" in ds.skipped[0]["reason"]

    locked_class = tmp_path / "data2"
    for c in ("a", "locked"):
        _image(locked_class / c / "1.png")
    with pytest.raises(DatasetError, match=r"'locked' holds no usable image \(1 file\(s\) there not used, e.g. "
                                           r"locked: folder cannot be read \(Permission denied\)"):
        scan_dataset(locked_class)


def test_a_folder_predict_cannot_list_gets_its_error_row(tmp_path, monkeypatch):
    """`predict RUN in/` with in/locked/ unreadable: os.walk left it and its images out without a word. The folder
    is returned as an input, and decoding it says it cannot be read (permissions simulated: tests may run as
    root). A folder given where a file is read says it is a folder, not 'Is a directory; check the path'."""
    import pytest

    from sightline.data.images import load_image
    from sightline.data.inputs import expand_inputs
    from sightline.errors import ImageError

    _image(tmp_path / "in" / "1.png")
    _image(tmp_path / "in" / "locked" / "2.png")
    with pytest.raises(ImageError, match="locked: a folder, not an image file"):
        load_image(tmp_path / "in" / "locked")
    real_scandir, real_access = os.scandir, os.access
    locked = os.fspath(tmp_path / "in" / "locked")

    def scandir(path="."):
        if os.fspath(path) == locked:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(os, "access", lambda path, mode: os.fspath(path) != locked and real_access(path, mode))
    found = expand_inputs([tmp_path / "in"])
    assert [p.relative_to(tmp_path / "in").as_posix() for p in found] == ["1.png", "locked"]
    with pytest.raises(ImageError, match="locked: a folder that cannot be read .* check its permissions"):
        load_image(found[1])


def test_an_audit_of_a_dataset_in_a_folder_named_in_latin1_writes_its_report(tmp_path):
    """DATA itself named in Latin-1 ('r\\xe9sultats/'): every reason names the file by its full path, and the
    report's heading names DATA; audit.html could not be written (UnicodeEncodeError) after the whole audit."""
    root = tmp_path / os.fsdecode(b"r\xe9sultats")
    for c in ("a", "b"):
        _image(root / c / "1.png")
    (root / "a" / "zero.png").write_bytes(b"")
    result = audit_dataset(root, out=tmp_path / "audit", label_check=None)
    page = (tmp_path / "audit" / "audit.html").read_text(encoding="utf-8")
    assert "r\\xe9sultats" in page and "zero.png" in page
    report = json.loads((tmp_path / "audit" / "audit.json").read_text(encoding="utf-8"))
    assert report["root"].endswith("r\\xe9sultats") and result.n_images == 2


def test_pillows_bomb_warning_is_not_printed_before_our_cap_decides(tmp_path, monkeypatch):
    """A 100-megapixel scan made `sightline data audit` print Pillow's 'DecompressionBombWarning: ... could be
    decompression bomb DOS attack' (no file named) before the pixel cap refused it in one line. Outside pytest's
    error filter the warning is silenced; the cap (and Pillow's hard error at twice its limit) still decide.
    Pillow's limit is lowered here so a small image stands in for a huge one."""
    import warnings

    import pytest
    from PIL import Image as PILImage

    from sightline.data import images
    from sightline.errors import ImageTooLargeError

    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 1000)
    Image.new("L", (40, 30), 128).save(tmp_path / "scan.png")  # 1200 px: above Pillow's limit, below twice it
    with warnings.catch_warnings(record=True) as seen:
        warnings.resetwarnings()  # as a command line run has them, not as pytest's "error"
        warnings.simplefilter("always")
        images._quiet_pillow_bomb_warning()
        assert images.load_image(tmp_path / "scan.png").size == (40, 30)  # our cap (50 Mpx) lets it through
        with pytest.raises(ImageTooLargeError, match="scan.png: 40x30 = 0.0 megapixels is above the cap"):
            images.load_image(tmp_path / "scan.png", max_pixels=1000)
    assert not [w for w in seen if issubclass(w.category, PILImage.DecompressionBombWarning)]


@pytest.mark.parametrize("name, content, kind, advice", [
    ("IMG_0001.HEIC", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "HEIC/HEIF", "Most Compatible"),
    ("cat.jpg", b"<!DOCTYPE html>\n<html><body>404 Not Found</body></html>", "an HTML page", "download the image again"),
    ("photos.jpg", b"PK\x03\x04\x14\x00\x00\x00", "a ZIP archive", "extract the images"),
    ("anim.gif", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", "a GIF image", "convert it to PNG or JPEG"),
])
def test_a_file_of_another_format_says_which_and_what_to_do(tmp_path, name, content, kind, advice):
    """An iPhone's HEIC, the HTML error page a failed download saved as cat.jpg, a zip of photos: each was 'not a
    supported image (the content is not JPEG, PNG, BMP, TIFF or WebP)', leaving the user to find out what it is."""
    from sightline.data.images import load_image
    from sightline.errors import NotAnImageError

    (tmp_path / name).write_bytes(content)
    with pytest.raises(NotAnImageError) as info:
        load_image(tmp_path / name)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / name}: not a supported image: ") and kind in message and advice in message


def test_an_empty_test_folder_is_flagged_as_lacking_every_class(tmp_path):
    """DATA/test/ made but never filled: the audit found nothing (only splits holding images were checked), and
    evaluate later stopped on 'no images in test/'."""
    root = tmp_path / "data"
    for split in ("train", "val"):
        for c in ("a", "b"):
            _image(root / split / c / "1.png")
    (root / "test").mkdir()
    result = audit_dataset(root, out=tmp_path / "audit", html=False)
    missing = [f.detail for f in result.findings if f.kind == "split_missing_class"]
    assert missing == [{"split": "test", "classes": ["a", "b"],
                        "advice": "add test images of a, b or re-split the data (`sightline data split`)"}]
    assert scan_dataset(root).split_folders == ["train", "val", "test"]
