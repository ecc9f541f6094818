"""Leak-free split: library and `sightline data split` on a dataset built in the test."""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sightline.data.datasets import scan_dataset
from sightline.data.manifest import read_manifest
from sightline.data.split import assign_groups, duplicate_groups, split_dataset


def _img(seed: int, size: int = 48) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).resize((size, size), Image.Resampling.BICUBIC)


def _make(root: Path, per_class: dict[str, int]) -> Path:
    seed = 0
    for label, n in per_class.items():
        (root / label).mkdir(parents=True)
        for i in range(n):
            _img(seed).save(root / label / f"{label}_{i:02d}.png")
            seed += 1
    return root


def _snapshot(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


def _where(out: Path) -> dict[str, str]:
    """file name -> split, from the written layout."""
    return {p.name: p.relative_to(out).parts[0] for p in out.rglob("*.*") if p.parts[-1] != "manifest.csv" and p.is_file()}


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Made once for the module: splitting only reads it (the tests that split it check so)."""
    root = _make(tmp_path_factory.mktemp("split") / "raw", {"ok": 40, "scratch": 20, "crack": 7})
    # an exact duplicate within a class, and a re-encoded smaller copy filed under another class
    (root / "ok" / "ok_dup.png").write_bytes((root / "ok" / "ok_00.png").read_bytes())
    buf = io.BytesIO()
    Image.open(root / "ok" / "ok_01.png").resize((40, 40)).save(buf, "JPEG", quality=80)
    (root / "scratch" / "looks_like_ok_01.jpg").write_bytes(buf.getvalue())
    # a region file travels with its image; a corrupt file is not placed
    Image.new("L", (48, 48), 0).save(root / "crack" / "crack_00.mask.png")
    (root / "crack" / "crack_01.xml").write_text("<annotation><object><bndbox><xmin>1</xmin><ymin>1</ymin>"
                                                 "<xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>")
    cut = io.BytesIO()
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(cut, "JPEG")
    (root / "crack" / "broken.jpg").write_bytes(cut.getvalue()[:700])
    return root


def test_split_keeps_duplicates_together_and_is_stratified(raw: Path, tmp_path: Path) -> None:
    before = _snapshot(raw)
    out = tmp_path / "out"
    result = split_dataset(raw, out, seed=3)
    assert _snapshot(raw) == before  # the source is only read

    where = _where(out)
    assert where["ok_00.png"] == where["ok_dup.png"]
    assert where["ok_01.png"] == where["looks_like_ok_01.jpg"]
    assert result.groups_merged == 2 and result.images_in_merged_groups == 4
    assert [e["path"] for e in result.excluded] == ["crack/broken.jpg"]
    assert result.n_images == 69

    ds = scan_dataset(out, require_splits=("train", "val", "test"))
    assert sum(len(ds.split(s)) for s in ("train", "val", "test")) == 69
    for label, n in (("ok", 41), ("scratch", 21), ("crack", 7)):
        got = [ds.class_counts(s)[label] for s in ("train", "val", "test")]
        assert sum(got) == n
        expected = np.array([0.7, 0.15, 0.15]) * n
        assert np.abs(np.array(got) - expected).max() <= 1.5, (label, got)
        assert min(got) >= 1
    assert (out / "test" / "crack").exists() or (out / "val" / "crack").exists()
    mask_owner = next(s for s in ds.samples if s.path.name == "crack_00.png")
    assert mask_owner.region is not None and mask_owner.region.name == "crack_00.mask.png"
    assert where["crack_00.mask.png"] == where["crack_00.png"] and where["crack_01.xml"] == where["crack_01.png"]

    # hard links by default: same inode as the source
    placed = next(out.rglob("ok_05.png"))
    assert placed.stat().st_ino == (raw / "ok" / "ok_05.png").stat().st_ino and result.linked == 69

    rows = read_manifest(out / "manifest.csv")
    assert len(rows) == 69 and {r.split for r in rows} == {"train", "val", "test"}
    assert all((out / r.relpath).is_file() for r in rows)


def test_split_is_deterministic_per_seed(raw: Path, tmp_path: Path) -> None:
    a = _where(split_dataset(raw, tmp_path / "a", seed=1).out)
    b = _where(split_dataset(raw, tmp_path / "b", seed=1, link=False).out)
    c = _where(split_dataset(raw, tmp_path / "c", seed=2).out)
    assert a == b and a != c
    assert (tmp_path / "b" / "train" / "ok").exists()
    copied = next((tmp_path / "b").rglob("ok_05.png"))
    assert copied.stat().st_ino != (raw / "ok" / "ok_05.png").stat().st_ino


def test_split_reports_progress_through_the_one_interface(raw: Path, tmp_path: Path) -> None:
    from sightline.progress import ProgressEvent

    events: list[ProgressEvent] = []
    result = split_dataset(raw, tmp_path / "p", seed=0, progress=events.append, workers=3)
    n = len(scan_dataset(raw).samples)
    assert {e.task for e in events} == {"hashing images"} and all(e.total == n for e in events)
    assert [e.done for e in events] == list(range(n + 1)) + [n]  # opened at 0, one per image, then finished
    assert events[-1].finished and not any(e.finished for e in events[:-1]) and result.n_images <= n


def test_duplicate_groups_union_find_is_transitive() -> None:
    sha = ["a", "b", "a", "c", "d", ""]
    hashes = np.array([0b0, 0xFFFF, 0b0, 0b111, 0xFFFF_0000_0000, 0b0], dtype=np.uint64)
    # 0~2 exact; 0~3 near (3 bits); 1 alone; 4 alone; 5 has no hash (undecodable): alone
    assert duplicate_groups(sha, hashes, max_distance=3) == [[0, 2, 3], [1], [4], [5]]
    assert duplicate_groups(sha, hashes, max_distance=-1) == [[0, 2], [1], [3], [4], [5]]


def test_assign_groups_never_splits_a_group() -> None:
    rng = np.random.default_rng(0)
    labels = [str(x) for x in rng.integers(0, 3, 300)]
    cuts = np.cumsum(rng.integers(1, 5, 300))
    groups = [g.tolist() for g in np.split(np.arange(300), cuts[cuts < 300]) if len(g)]  # a partition, sizes 1..4
    where = assign_groups(groups, labels, seed=0)
    assert sorted(i for g in groups for i in g) == list(range(300)) and min(where) == 0
    for g in groups:
        assert len({where[i] for i in g}) == 1
    shares = np.bincount(where, minlength=3) / 300
    np.testing.assert_allclose(shares, [0.7, 0.15, 0.15], atol=0.03)


def test_split_cli_writes_the_layout_and_reports_json(raw: Path, tmp_path: Path, capsys) -> None:
    import json

    from sightline.cli import main

    before = _snapshot(raw)
    with pytest.raises(SystemExit) as exc:
        main(["data", "split", str(raw), str(tmp_path / "out"), "--json"])
    assert exc.value.code == 0
    report = json.loads(capsys.readouterr().out)
    placed = scan_dataset(tmp_path / "out")
    assert placed.layout == "split" and report["n_images"] == len(placed.samples)
    assert (tmp_path / "out" / "manifest.csv").is_file()
    assert _snapshot(raw) == before  # the source is never modified


def test_a_symlinked_image_is_placed_as_its_content_not_as_the_link(tmp_path: Path) -> None:
    """A symlink in the source (absolute, or relative to a sibling) is placed as the image it points to:
    hard-linking the link itself left a link in the new layout that pointed back into the source (training refused
    it: outside its root) or dangled (a relative target that was not placed beside it)."""
    raw = _make(tmp_path / "raw", {"a": 6, "b": 6})
    (raw / "a" / "absolute.png").symlink_to(raw / "a" / "a_00.png")
    (raw / "b" / "relative.png").symlink_to("b_00.png")
    out = tmp_path / "out"
    split_dataset(raw, out, max_distance=-1)
    placed = {p.name: p for p in out.rglob("*.png")}
    for name in ("absolute.png", "relative.png"):
        assert placed[name].is_file() and not placed[name].is_symlink()
    assert not scan_dataset(out).skipped


@pytest.mark.parametrize("existing", [False, True])
def test_an_interrupted_split_leaves_no_partial_layout(tmp_path: Path, monkeypatch, existing: bool) -> None:
    """Ctrl-C while files were placed left OUT/{train,val,test} with part of the images and no manifest: a layout
    that trained without a word on what was missing, and that a second split refused ('not empty')."""
    import sightline.data.split as split_mod

    raw = _make(tmp_path / "raw", {"a": 8, "b": 8})
    out = tmp_path / "out"
    if existing:
        out.mkdir()  # an empty folder is a valid OUT; it stays, empty
    placed = []
    real = split_mod.place_file

    def place_then_ctrl_c(src, dst, *, link=True):
        if len(placed) == 5:
            raise KeyboardInterrupt
        placed.append(dst)
        return real(src, dst, link=link)

    monkeypatch.setattr(split_mod, "place_file", place_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        split_dataset(raw, out, max_distance=-1)
    assert (list(out.iterdir()) == []) if existing else not out.exists()
    (out / ".partial" / "train").mkdir(parents=True)  # what a killed split (no chance to clean up) leaves
    monkeypatch.setattr(split_mod, "place_file", real)
    result = split_dataset(raw, out, max_distance=-1)  # the same OUT works again
    assert result.n_images == 16 and (out / "manifest.csv").is_file()


@pytest.mark.parametrize("name", ["d[/]s", "data [v2]"])
def test_split_and_audit_print_a_bracketed_path_as_it_is(tmp_path: Path, run_cli, name: str) -> None:
    """Paths were printed as rich markup: 'data [v2]' came out as 'data ' (a path the user could not copy) and
    'd[/]s' (a folder 'd[' holding ']s') ended in a MarkupError traceback."""
    raw = _make(tmp_path / name / "raw", {"a": 6, "b": 6})
    code, out = run_cli(["data", "split", str(raw), str(tmp_path / name / "out"), "--max-distance", "-1"])
    assert code == 0 and "Traceback" not in out.err
    assert f"manifest: {tmp_path / name / 'out' / 'manifest.csv'}" in out.out.replace("\n", "")
    code, out = run_cli(["data", "audit", str(raw), "--no-labels"])
    assert code == 0 and f"report: {raw / '.audit' / 'audit.html'}" in out.out.replace("\n", "")


def test_a_long_name_in_two_source_splits_is_placed_under_a_name_that_fits(tmp_path: Path) -> None:
    """Re-splitting a split dataset renames a file found under one class in two splits to '<stem>__<split>': with a
    stem near the 255-byte limit that name was too long (OSError traceback)."""
    long = "c" * 248 + ".png"
    for split in ("train", "val"):
        root = _make(tmp_path / "raw" / split, {"a": 4, "b": 4})
        _img(100).save(root / "a" / long)  # the same image: duplicates are kept in one split, so the names meet
    result = split_dataset(tmp_path / "raw", tmp_path / "out", max_distance=-1)
    assert result.n_images == 18
    assert all(len(p.name.encode()) <= 255 for p in (tmp_path / "out").rglob("*"))


def test_a_renamed_name_taken_by_another_image_never_replaces_it(tmp_path: Path) -> None:
    """train/a/x.png, val/a/x.png and train/a/x__val.png: val's x.png, renamed x__val.png, was placed onto the
    x__val.png just hard-linked, so the copy wrote through the link into the source: one image missing from OUT and
    another source file replaced."""
    for split in ("train", "val"):
        _make(tmp_path / "raw" / split, {"a": 2, "b": 2})
    _img(100).save(tmp_path / "raw" / "train" / "a" / "x.png")
    _img(101).save(tmp_path / "raw" / "val" / "a" / "x.png")
    _img(102).save(tmp_path / "raw" / "train" / "a" / "x__val.png")
    before = _snapshot(tmp_path / "raw")
    result = split_dataset(tmp_path / "raw", tmp_path / "out", ratios=(1, 0, 0), max_distance=-1)
    assert _snapshot(tmp_path / "raw") == before  # the source is never modified
    placed = sorted(_snapshot(tmp_path / "out" / "train").values())
    assert result.n_images == 11 and placed == sorted(before.values())


@pytest.mark.parametrize("ratios", ["nan,1,1", "inf,1,1", "1e308,1e308,1"])
def test_ratios_that_are_not_finite_are_refused(tmp_path: Path, run_cli, ratios: str) -> None:
    """nan passed the non-negative check and sent every image to train; 1e308 twice made the total inf, every share 0,
    and the split came out even."""
    code, out = run_cli(["data", "split", str(_make(tmp_path / "raw", {"a": 3, "b": 3})), str(tmp_path / "out"),
                         "--ratios", ratios])
    assert code == 2 and "non-negative, finite train/val/test shares" in out.err and not (tmp_path / "out").exists()


def test_a_class_too_small_for_every_split_is_named(tmp_path: Path, run_cli) -> None:
    """Two images of 'rare' cannot fill train, val and test: the split said nothing, and the class's val and test
    figures were simply missing from every later report."""
    raw = _make(tmp_path / "raw", {"common": 20, "rare": 2})
    code, out = run_cli(["data", "split", str(raw), str(tmp_path / "out"), "--max-distance", "-1"])
    assert code == 0
    warnings = [line for line in out.out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "class 'rare' has no image in " in warnings[0] and "(2 in all)" in warnings[0]
    code, out = run_cli(["data", "split", str(raw), str(tmp_path / "out2"), "--max-distance", "-1", "--json"])
    import json

    assert [w.startswith("class 'rare'") for w in json.loads(out.out)["warnings"]] == [True]
