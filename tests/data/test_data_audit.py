"""The audit: planted issues found with precision and recall >= 0.9, pure checks, quarantine, CLI and bad input."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sightline.cli import main
from sightline.data.audit import Finding, aspect_mask, audit_dataset, blurry_mask, imbalance, quarantine, small_mask
from sightline.data.synth import synthesize

DUPLICATE_KINDS = ("exact_duplicate", "near_duplicate", "conflicting_labels", "split_leakage")


def _precision_recall(found: set[str], planted: set[str]) -> tuple[float, float]:
    hits = len(found & planted)
    return hits / max(1, len(found)), hits / max(1, len(planted))


@pytest.fixture(scope="module")
def planted_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("audit") / "data"
    synthesize(out, n=250, size=96, seed=4, plant_issues=True)
    return out


def test_audit_finds_planted_duplicates_corrupt_and_blurry(planted_data: Path, tmp_path: Path) -> None:
    result = audit_dataset(planted_data, out=tmp_path / "report")
    planted = json.loads((planted_data / "planted_issues.json").read_text())
    by_kind: dict[str, set[str]] = {}
    for f in result.findings:
        by_kind.setdefault(f.kind, set()).update(f.paths)

    dup_planted = {p for k in ("exact_duplicates", "near_duplicates", "conflicting_labels", "cross_split_duplicates")
                   for pair in planted[k] for p in pair}
    dup_found = set().union(*(by_kind.get(k, set()) for k in DUPLICATE_KINDS))
    checks = {
        "duplicates": _precision_recall(dup_found, dup_planted),
        "corrupt": _precision_recall(by_kind.get("corrupt", set()), set(planted["corrupt"])),
        "blurry": _precision_recall(by_kind.get("blurry", set()), set(planted["blurry"])),
        "leakage": _precision_recall(by_kind.get("split_leakage", set()), {p for pair in planted["cross_split_duplicates"] for p in pair}),
        "conflicts": _precision_recall(by_kind.get("conflicting_labels", set()), {p for pair in planted["conflicting_labels"] for p in pair}),
    }
    for name, (precision, recall) in checks.items():
        assert precision >= 0.9 and recall >= 0.9, (name, precision, recall)
    assert set(planted["too_small"]) <= by_kind["too_small"]
    assert set(planted["extreme_aspect"]) <= by_kind["extreme_aspect"]
    assert by_kind["mixed_color_modes"] == set(planted["greyscale"])
    imbalance_finding = next(f for f in result.findings if f.kind == "class_imbalance")
    assert imbalance_finding.detail["ratio"] > 3 and "training" in imbalance_finding.detail

    saved = json.loads((tmp_path / "report" / "audit.json").read_text())
    assert len(saved["findings"]) == len(result.findings)
    assert all(set(f) == {"kind", "paths", "detail"} for f in saved["findings"])
    page = (tmp_path / "report" / "audit.html").read_text()
    assert "data:image/jpeg;base64," in page and "http" not in page.replace("http-equiv", "")
    assert (tmp_path / "report" / "manifest.csv").is_file()


def test_blurry_mask_uses_the_datasets_own_distribution() -> None:
    rng = np.random.default_rng(0)
    sharp = np.exp(rng.normal(np.log(200), 0.3, 200))
    soft = np.exp(rng.normal(np.log(20), 0.3, 200))  # a softer dataset: its images are not "blurry"
    blur = np.concatenate([sharp[:198], [2.0, 1.5]])
    flags, rule = blurry_mask(blur)
    assert flags[-2:].all() and not flags[:-2].any() and rule["threshold"] < 200
    flags_soft, _ = blurry_mask(soft)
    assert not flags_soft.any()
    flags_nan, _ = blurry_mask(np.array([np.nan, 1.0, 2.0]))
    assert not flags_nan.any()  # too few to judge


def test_size_aspect_and_imbalance_rules() -> None:
    w = np.array([224, 224, 20, 224, 300])
    h = np.array([224, 200, 20, 40, 224])  # shorter sides 224, 200, 20, 40, 224: median 200
    small, minimum = small_mask(w, h)
    assert minimum == 50 and small.tolist() == [False, False, True, True, False]
    assert aspect_mask(w, h).tolist() == [False, False, False, True, False]
    assert imbalance({"a": 100, "b": 10})["ratio"] == 10.0
    assert "sampler" in imbalance({"a": 110, "b": 10})["training"]
    assert imbalance({"a": 10, "b": 9})["training"] == "none needed"


def test_quarantine_moves_flagged_files_and_deletes_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    synthesize(data, n=120, size=64, seed=9, plant_issues=True)
    before = {p.name for p in data.rglob("*") if p.is_file()}
    planted = json.loads((data / "planted_issues.json").read_text())
    result = audit_dataset(data, out=tmp_path / "report", move_to_quarantine=True)
    after = {p.name for p in data.rglob("*") if p.is_file()}
    assert before <= after  # every file still exists somewhere (moved, not deleted)
    moved = {m["path"] for m in result.quarantined}
    assert set(planted["corrupt"]) <= moved and set(planted["blurry"]) <= moved
    for a, b in planted["exact_duplicates"]:
        assert (a in moved) != (b in moved)  # one copy stays
    for a, b in planted["cross_split_duplicates"]:
        assert a not in moved and b in moved  # the training copy stays, the test copy leaves
    assert all((data / m["to"]).is_file() and not (data / m["path"]).exists() for m in result.quarantined)
    log = [json.loads(line) for line in (data / ".quarantine" / "log.jsonl").read_text().splitlines()]
    assert len(log) == len(result.quarantined)
    # the quarantine is hidden: a second audit no longer sees corrupt files
    again = audit_dataset(data, out=tmp_path / "report2", html=False)
    assert again.counts["corrupt"] == 0 and again.counts["exact_duplicate"] == 0


def test_quarantine_takes_an_images_region_files_along(tmp_path: Path) -> None:
    folder = tmp_path / "train" / "crack"
    folder.mkdir(parents=True)
    for name in ("c1.png", "c1.mask.png", "c1.xml", "c2.png", "c2.xml"):
        (folder / name).write_bytes(name.encode())
    moves = quarantine(tmp_path, [Finding("blurry", ["train/crack/c1.png"])], [])
    assert [m["path"] for m in moves] == ["train/crack/c1.png"]
    moved = tmp_path / ".quarantine" / "train" / "crack"
    assert sorted(p.name for p in moved.iterdir()) == ["c1.mask.png", "c1.png", "c1.xml"]
    assert sorted(p.name for p in folder.iterdir()) == ["c2.png", "c2.xml"]  # another image's region stays


def test_a_second_quarantine_of_the_same_name_keeps_the_first(tmp_path: Path) -> None:
    """A later audit quarantining a new file under a name already in .quarantine/ moved it onto the first one: the
    file quarantined first was replaced, lost, while the log listed both at the same place."""
    folder = tmp_path / "a"
    folder.mkdir()
    (folder / "x.png").write_bytes(b"first")
    (folder / "x.mask.png").write_bytes(b"first mask")
    quarantine(tmp_path, [Finding("corrupt", ["a/x.png"])], [])
    (folder / "x.png").write_bytes(b"second")
    (folder / "x.xml").write_bytes(b"second boxes")
    (folder / "y.png").write_bytes(b"another")
    (folder / "y.xml").write_bytes(b"its boxes")
    (tmp_path / ".quarantine" / "a" / "y.xml").write_bytes(b"an older image's boxes")
    moves = quarantine(tmp_path, [Finding("corrupt", ["a/x.png", "a/y.png"])], [])
    assert [m["to"] for m in moves] == [".quarantine/a/x-1.png", ".quarantine/a/y-1.png"]
    held = {p.name: p.read_bytes() for p in (tmp_path / ".quarantine" / "a").iterdir()}
    assert held == {"x.png": b"first", "x.mask.png": b"first mask", "x-1.png": b"second", "x-1.xml": b"second boxes",
                    "y.xml": b"an older image's boxes", "y-1.png": b"another", "y-1.xml": b"its boxes"}


# --- command line and bad input -------------------------------------------------------------------------------

def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return int(exit_info.value.code), captured.out, captured.err


def _tiny(root: Path, classes: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    for label, n in classes.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((40, 40)).save(root / label / f"{i}.png")
    return root


def test_cli_audit_json_reports_non_images_and_escaping_symlinks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _tiny(tmp_path / "data", {"a": 6, "b": 6})
    (data / "a" / "readme.jpg").write_text("not a picture")
    secret = tmp_path / "secret.png"
    Image.new("RGB", (40, 40)).save(secret)
    os.symlink(secret, data / "b" / "escape.png")
    code, out, err = _run(["data", "audit", str(data), "--json", "--out", str(tmp_path / "r")], capsys)
    assert code == 0, err
    report = json.loads(out)
    unreadable = {f["paths"][0]: f["detail"]["reason"] for f in report["findings"] if f["kind"] == "unreadable"}
    assert "not a supported image" in unreadable["a/readme.jpg"]
    assert "outside the dataset root" in unreadable["b/escape.png"]
    assert report["n_images"] == 12

    code, out, _ = _run(["data", "audit", str(data), "--out", str(tmp_path / "r2")], capsys)
    assert code == 0 and "unreadable" in out and "audit.html" in out


@pytest.mark.parametrize("command", ["audit", "split"])
@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda r: None, "does not exist"),
        (lambda r: _tiny(r, {"only": 3}), "at least two class folders"),
        (lambda r: (_tiny(r, {"a": 3}), (r / "b").mkdir()), "holds no usable image"),
    ],
    ids=["missing-folder", "single-class", "empty-class"],
)
def test_cli_bad_datasets_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, make, message: str) -> None:
    data = tmp_path / "data"
    make(data)
    argv = ["data", command, str(data)] + ([str(tmp_path / "out")] if command == "split" else [])
    code, _, err = _run(argv, capsys)
    assert code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 2  # one line (rich may wrap a long path)


def test_quarantine_never_moves_a_folder_the_scan_ignored(tmp_path: Path) -> None:
    from sightline.data.audit import audit_dataset

    data = tmp_path / "data"
    for split in ("train", "val"):
        _tiny(data / split, {"a": 4, "b": 4})
    (data / "docs").mkdir()
    (data / "docs" / "notes.txt").write_text("keep me where I am")  # not a split: reported, not carried off
    (data / "train" / "a" / "broken.png").write_text("not a picture")
    result = audit_dataset(data, move_to_quarantine=True, html=False)
    assert any(f.paths == ["docs"] for f in result.findings)
    assert (data / "docs" / "notes.txt").is_file()
    moved = [m["path"] for m in result.quarantined]
    assert "train/a/broken.png" in moved and not any(p.startswith("docs") for p in moved)


@pytest.mark.parametrize("inside", ["report", "a/report", "train/report"])
def test_an_audit_out_folder_the_dataset_would_read_is_refused(tmp_path: Path, inside: str) -> None:
    """--out DATA/report in a flat dataset made 'report' a class of one manifest and one HTML file; every later
    scan of DATA listed or refused it. A hidden folder (the default DATA/.audit) is left out of scans, so it is fine."""
    from sightline.errors import UserInputError

    data = _tiny(tmp_path / "data", {"a": 3, "b": 3})
    if inside.startswith("train"):
        (tmp_path / "data" / "train").mkdir()
        for c in ("a", "b"):
            (tmp_path / "data" / c).rename(tmp_path / "data" / "train" / c)
    with pytest.raises(UserInputError, match="inside the dataset"):
        audit_dataset(data, out=data / inside, html=False)
    assert not (data / inside).exists()
    assert audit_dataset(data, out=data / ".reports", html=False).n_images == 6


def test_class_names_that_differ_only_in_case_or_encoding_are_flagged(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """'Ants' beside 'ants', or 'café' typed beside 'café' as a Mac's file system stores it (e + combining accent),
    trained as two classes without a word: the model split one class in two."""
    from sightline.data.audit import similar_class_names

    found = similar_class_names(["Ants", "ants", "bees", "cafe\u0301", "caf\u00e9", "wasps"])
    assert [f.detail["classes"] for f in found] == [["Ants", "ants"], ["cafe\u0301", "caf\u00e9"]]
    assert similar_class_names(["ants", "bees"]) == []

    rng = np.random.default_rng(0)
    for label in ("Ants", "ants", "bees"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "data" / label / f"{i}.png")
    with pytest.raises(SystemExit) as exc:
        main(["data", "audit", str(tmp_path / "data"), "--no-labels", "--json"])
    assert exc.value.code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["counts"]["similar_class_names"] == 1


def test_production_and_other_unused_folders_are_ignored_not_unreadable(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """`sightline feedback export` writes DATA/production/<class>/ beside the splits; the audit of that dataset
    reported 'unreadable: production' (a red finding, as for a broken image). A folder the layout does not use is
    `ignored`, with its reason; only a file that is no readable image is `unreadable`."""
    data = tmp_path / "data"
    for split in ("train", "val", "production"):
        _tiny(data / split, {"a": 3, "b": 3})
    (data / "docs").mkdir()
    (data / "train" / "a" / "broken.png").write_text("not a picture")
    code, out, err = _run(["data", "audit", str(data), "--json", "--no-labels", "--out", str(tmp_path / "r")], capsys)
    assert code == 0, err
    report = json.loads(out)
    by_kind = {k: {f["paths"][0]: f["detail"]["reason"] for f in report["findings"] if f["kind"] == k}
               for k in ("unreadable", "ignored")}
    assert list(by_kind["unreadable"]) == ["train/a/broken.png"]
    assert set(by_kind["ignored"]) == {"production", "docs"}
    assert "sightline challenge" in by_kind["ignored"]["production"]
    assert report["counts"]["unreadable"] == 1 and report["counts"]["ignored"] == 2
    assert report["n_images"] == 12  # production/ is not read as part of the splits


def test_training_does_not_warn_about_the_production_folder(tmp_path: Path) -> None:
    """production/ is left out of training by design; a folder beside the splits still gets the warning."""
    from sightline.train.config import TrainConfig
    from sightline.train.prepare import prepare

    data = tmp_path / "data"
    for split in ("train", "val", "production"):
        _tiny(data / split, {"a": 3, "b": 3})
    cfg = TrainConfig(model="test_efficientnet", weights="none", input_size=32, batch_size=4, num_workers=0)
    said: list[str] = []
    prepare(data, cfg, say=said.append, probe=False)
    assert not [line for line in said if "not used" in line], said
    (data / "docs").mkdir()
    said.clear()
    prepare(data, cfg, say=said.append, probe=False)
    assert [line for line in said if "1 file(s) or folder(s)" in line and "docs" in line], said
