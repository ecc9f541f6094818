"""`sightline feedback export` (sightline/loop/feedback.py): reviewers' labels from the service's database and
image store -> a new dataset version with the parent's test split frozen, reviewed images in train/val by a
stratified hash, the random slice (drawn from every decision) in production/, lineage in manifest.csv, the audit
on it, and bad input as one line with nothing written."""
from __future__ import annotations

import csv
import io
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
from loop_tiny import LEVELS, write_images
from PIL import Image

from sightline.storage.images import ImageKeeper, LocalImageStore
from sightline.storage.store import Store


def _png(level: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(np.clip(level + rng.normal(0, 12, (36, 40, 3)), 0, 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


class _Draws(random.Random):
    """The keeper's slice draws, given: 0.0 (drawn into the slice) or 0.99 (not), one per prediction in order."""

    def __init__(self, drawn: list[bool]) -> None:
        super().__init__(0)
        self.values = [0.0 if d else 0.99 for d in drawn]

    def random(self) -> float:
        return self.values.pop(0)


def _service(folder: Path, items: list[tuple[str, bytes]],
             in_slice: list[bool] | None = None) -> tuple[Store, list[int]]:
    """A service database + image store in `folder` with predictions (decision, image bytes), images kept by the
    service's keeper; `in_slice` says which predictions the keeper draws into the random slice (default: the
    accepted ones)."""
    folder.mkdir(parents=True, exist_ok=True)
    store = Store(f"sqlite:///{folder / 'sightline.db'}")
    ids = store.add_predictions([{
        "request_id": "r", "filename": f"{i}.png", "input_sha256": "0" * 64, "model_name": "m", "model_version": "1",
        "label": "dark", "confidence": 0.5, "top_k": [], "decision": d, "latency_ms": 1.0,
    } for i, (d, _) in enumerate(items)])
    drawn = in_slice if in_slice is not None else [d == "accept" for d, _ in items]
    keeper = ImageKeeper(LocalImageStore(folder / "images"), keep_accepted=0.5, rng=_Draws(drawn))
    keeper.keep(store, ids, [d for d, _ in items], [b for _, b in items])
    return store, ids


def _run(capsys, *args):
    from sightline.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["feedback", "export", *map(str, args)])
    return exc.value.code, capsys.readouterr()


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_export_end_to_end(tmp_path, capsys):
    from sightline.data.datasets import dataset_version, scan_dataset
    from sightline.loop.challenge import production_files

    parent = write_images(tmp_path / "data", {"train": 4, "val": 2, "test": 2})
    test_before = _tree(parent / "test")
    shifted = {c: LEVELS[c] + 20 for c in LEVELS}  # production looks a little different
    new = [("review", _png(shifted[c], 100 + i)) for c in ("dark", "light") for i in range(3)]
    sample = [("accept", _png(shifted["dark"], 200)), ("accept", _png(shifted["light"], 201))]
    conflict = _png(125, 300)
    parent_copy = (parent / "test" / "dark" / "dark_0_0.png").read_bytes()  # a reviewed copy of a frozen test image
    items = new + sample + [("unknown", _png(125, 400)), ("review", conflict), ("review", conflict),
                            ("review", parent_copy), ("review", _png(125, 500))]
    store, ids = _service(tmp_path / "svc", items)
    for pid, label in zip(ids[:6], ["dark"] * 3 + ["light"] * 3):
        store.record_label(pid, label, reviewer="ann")
    store.record_label(ids[6], "dark", reviewer="bob")
    store.record_label(ids[7], "light", reviewer="bob")
    store.record_label(ids[8], "unknown", reviewer="ann")  # not a valid item
    store.record_label(ids[9], "dark", reviewer="ann")  # the same image, labelled differently by two reviewers
    store.record_label(ids[10], "light", reviewer="bob")
    store.record_label(ids[11], "dark", reviewer="ann")  # ids[12] stays unlabelled
    store.close()

    url = f"sqlite:///{tmp_path / 'svc' / 'sightline.db'}"
    code, out = _run(capsys, "--database", url, "--data", parent, "--out", tmp_path / "v2", "--val-ratio", "0.34",
                     "--json")
    assert code == 0, out.err
    summary = json.loads(out.out)
    v2 = tmp_path / "v2"
    # the frozen test split: the same files, byte for byte, hard-linked
    assert _tree(v2 / "test") == test_before
    assert all(os.path.samefile(v2 / "test" / rel, parent / "test" / rel) for rel in test_before)
    assert summary["added"] == {"production": {"dark": 1, "light": 1}, "train": {"dark": 2, "light": 2},
                                "val": {"dark": 1, "light": 1}}
    assert [label for _, label in production_files(v2)] == ["dark", "light"]
    assert summary["skipped"]["unknown_label"] == [ids[8]] and summary["skipped"]["image_missing"] == []
    dup = summary["skipped"]["duplicates_of_parent"]
    assert [(d["prediction_ids"], d["parent"], d["agrees"]) for d in dup] == [([ids[11]], "test/dark/dark_0_0.png",
                                                                                True)]
    assert [c["labels"] for c in summary["conflicts"]] == [{str(ids[9]): "dark", str(ids[10]): "light"}]
    # lineage
    with open(v2 / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    parent_version = dataset_version(scan_dataset(parent))
    assert summary["parent_version"] == parent_version and summary["dataset_version"] != parent_version
    feedback = [r for r in rows if r["origin"] == "feedback"]
    assert len(feedback) == 8 and len(rows) == 8 + 2 * (4 + 2 + 2)
    assert {r["parent_version"] for r in rows} == {parent_version}
    by_id = {int(r["prediction_ids"]): r for r in feedback}
    assert set(by_id) == set(ids[:8])
    assert [by_id[i]["reviewers"] for i in ids[:8]] == ["ann"] * 6 + ["bob"] * 2
    assert [by_id[i]["split"] for i in ids[6:8]] == ["production"] * 2
    assert all(by_id[i]["split"] in ("train", "val") and by_id[i]["label"] == lab
               for i, lab in zip(ids[:6], ["dark"] * 3 + ["light"] * 3))
    for r in feedback:  # the stored bytes, unchanged
        assert (v2 / r["relpath"]).read_bytes() == items[ids.index(int(r["prediction_ids"]))][1]
    assert all(r["origin"] == "parent" and r["prediction_ids"] == "" for r in rows if r["relpath"].startswith("test/"))
    # the audit ran on it
    audit = json.loads((v2 / ".audit" / "audit.json").read_text())
    assert summary["audit"]["out"] == str(v2 / ".audit") and "findings" in audit
    # the same labels give the same version (the stratified hash is deterministic)
    code, out = _run(capsys, "--database", url, "--data", parent, "--out", tmp_path / "v2b", "--val-ratio", "0.34",
                     "--no-audit", "--json")
    assert code == 0 and json.loads(out.out)["dataset_version"] == summary["dataset_version"]
    # a version made from v2 keeps v2's lineage rows and its production split
    store = Store(url)
    store.record_label(ids[12], "light", reviewer="cy")
    store.close()
    code, out = _run(capsys, "--database", url, "--data", v2, "--out", tmp_path / "v3", "--no-audit", "--json")
    assert code == 0, out.err
    with open(tmp_path / "v3" / "manifest.csv", newline="") as f:
        v3 = {r["relpath"]: r for r in csv.DictReader(f)}
    assert v3[feedback[0]["relpath"]]["prediction_ids"] == feedback[0]["prediction_ids"]
    assert _tree(tmp_path / "v3" / "test") == test_before and len(production_files(tmp_path / "v3")) == 2


def test_slice_members_of_every_decision_go_to_production_never_to_training(tmp_path, capsys):
    """The random slice is drawn from all predictions: a review or unknown prediction in it is measured on, not
    trained on; review items outside it are trained on; an accepted one outside it was never kept."""
    from sightline.loop.challenge import production_files

    parent = write_images(tmp_path / "data", {"train": 4, "val": 2, "test": 2})
    items = [("review", _png(LEVELS["dark"] + 20, 600)), ("unknown", _png(LEVELS["light"] + 20, 601)),
             ("accept", _png(LEVELS["dark"] + 20, 602)), ("review", _png(LEVELS["light"] + 20, 603)),
             ("review", _png(LEVELS["dark"] + 20, 604)), ("accept", _png(LEVELS["light"] + 20, 605))]
    store, ids = _service(tmp_path / "svc", items, in_slice=[True, True, True, False, False, False])
    kept = {r["prediction_id"]: r for r in store.kept_images()}
    assert set(kept) == set(ids[:5])  # the last accepted one is not in the slice: not kept
    assert [(kept[i]["reason"], kept[i]["in_slice"]) for i in ids[:5]] == [
        ("review", True), ("unknown", True), ("sample", True), ("review", False), ("review", False)]
    for pid, label in zip(ids[:5], ["dark", "light", "dark", "light", "dark"]):
        store.record_label(pid, label, reviewer="ann")
    store.close()
    url = f"sqlite:///{tmp_path / 'svc' / 'sightline.db'}"
    code, out = _run(capsys, "--database", url, "--data", parent, "--out", tmp_path / "v2", "--val-ratio", "0",
                     "--no-audit", "--json")
    assert code == 0, out.err
    summary = json.loads(out.out)
    assert summary["added"] == {"production": {"dark": 2, "light": 1}, "train": {"dark": 1, "light": 1}}
    assert sorted(p.read_bytes() for p, _ in production_files(tmp_path / "v2")) == sorted(b for _, b in items[:3])


def test_export_reads_an_fsspec_image_store(tmp_path, capsys):
    """A service that keeps its images at a URL (s3://... at scale; memory:// here): the same bytes arrive."""
    from sightline.storage.images import open_image_store

    parent = write_images(tmp_path / "data", {"train": 4, "val": 2, "test": 2})
    items = [("review", _png(LEVELS[c] + 20, 100 + i)) for c in ("dark", "light") for i in range(2)]
    store, ids = _service(tmp_path / "svc", items)
    for pid, label in zip(ids, ["dark", "dark", "light", "light"]):
        store.record_label(pid, label, reviewer="ann")
    store.close()
    remote_url = f"memory://sightline-feedback-{tmp_path.name}/images"
    remote = open_image_store(remote_url)
    for _, data in items:
        remote.put(data)
    url = f"sqlite:///{tmp_path / 'svc' / 'sightline.db'}"
    code, out = _run(capsys, "--database", url, "--data", parent, "--out", tmp_path / "v2", "--images", remote_url,
                     "--no-audit", "--json")
    assert code == 0, out.err
    with open(tmp_path / "v2" / "manifest.csv", newline="") as f:
        feedback = [r for r in csv.DictReader(f) if r["origin"] == "feedback"]
    assert sorted((tmp_path / "v2" / r["relpath"]).read_bytes() for r in feedback) == sorted(b for _, b in items)
    code, out = _run(capsys, "--database", url, "--data", parent, "--out", tmp_path / "v3", "--images",
                     tmp_path / "nowhere", "--json")
    assert code == 2 and "does not exist" in out.err and not (tmp_path / "v3").exists()


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    parent = write_images(tmp_path / "data", {"train": 2, "val": 1, "test": 1})
    store, ids = _service(tmp_path / "svc", [("review", _png(45, 1)), ("review", _png(205, 2))])
    url = f"sqlite:///{tmp_path / 'svc' / 'sightline.db'}"
    out = tmp_path / "new"

    def refused(*extra, match: str) -> None:
        code, res = _run(capsys, "--database", url, "--data", parent, "--out", out, *extra)
        assert code == 2 and match in res.err and len(res.err.strip().splitlines()) == 1, res.err
        assert not out.exists() or not any(out.iterdir())
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".new-")]  # no temporary folder left

    refused(match="no reviewed labels to export")
    store.record_label(ids[0], "unknown", reviewer="ann")
    refused(match="1 labelled 'unknown'")
    store.record_label(ids[1], "wolf", reviewer="ann")  # the store takes any string; the service checks classes
    refused(match="reviewed labels ['wolf'] are not classes of")
    store.record_label(ids[1], "light", reviewer="ann", override=True)
    store.close()
    out.mkdir()
    (out / "x.txt").write_text("x")
    code, res = _run(capsys, "--database", url, "--data", parent, "--out", out)
    assert code == 2 and "already exists and is not empty" in res.err
    code, res = _run(capsys, "--database", f"sqlite:///{tmp_path / 'missing.db'}", "--data", parent, "--out",
                     tmp_path / "n2")
    assert code == 2 and "does not exist" in res.err and not (tmp_path / "missing.db").exists()
    code, res = _run(capsys, "--database", url, "--data", parent, "--out", tmp_path / "n3", "--images",
                     tmp_path / "nowhere")
    assert code == 2 and "image folder" in res.err


def test_labels_of_predictions_whose_image_was_not_kept_are_counted(tmp_path, capsys):
    # an accepted prediction outside the random slice keeps no image; a reviewer may still label it (by id)
    parent = write_images(tmp_path / "data", {"train": 2, "val": 1, "test": 1})
    items = [("review", _png(LEVELS["dark"] + 20, 1)), ("accept", _png(LEVELS["light"] + 20, 2)),
             ("accept", _png(LEVELS["dark"] + 20, 3))]
    store, ids = _service(tmp_path / "svc", items, in_slice=[False, False, False])
    store.record_label(ids[0], "dark")
    store.record_label(ids[1], "light")
    store.record_label(ids[2], "unknown")
    store.close()
    url = f"sqlite:///{tmp_path / 'svc' / 'sightline.db'}"
    code, out = _run(capsys, "--database", url, "--data", parent, "--out", tmp_path / "v2", "--no-audit")
    assert code == 0, out.err
    # before: "0 without their image", and the unknown label went uncounted: 3 labels, 1 accounted for
    assert "1 labelled unknown, 1 without their image" in " ".join(out.out.split())
    summary = json.loads((tmp_path / "v2" / "feedback.json").read_text())
    assert summary["skipped"]["image_missing"] == [ids[1]] and summary["skipped"]["unknown_label"] == [ids[2]]
    assert summary["added"] == {"train": {"dark": 1}}


def test_labels_whose_images_are_all_gone_point_to_the_image_store(tmp_path, capsys):
    # every labelled image deleted from the store (or the wrong --images): the error said "label items in the review
    # queue first" to a reviewer who had labelled them all
    parent = write_images(tmp_path / "data", {"train": 2, "val": 1, "test": 1})
    store, ids = _service(tmp_path / "svc", [("review", _png(45, 1)), ("review", _png(205, 2))])
    store.record_label(ids[0], "dark", reviewer="ann")
    store.record_label(ids[1], "unknown", reviewer="ann")
    store.close()
    for path in (tmp_path / "svc" / "images").rglob("*"):
        if path.is_file():
            path.unlink()
    code, res = _run(capsys, "--database", f"sqlite:///{tmp_path / 'svc' / 'sightline.db'}", "--data", parent,
                     "--out", tmp_path / "new", "--no-audit")
    assert code == 2 and len(res.err.strip().splitlines()) == 1, res.err
    assert "1 without their image" in res.err and "pass --images" in res.err and "review queue" not in res.err



def test_a_run_folder_as_data_is_named_as_such(tmp_path, capsys):
    # before: "has no train/val/test split (flat layout); run `sightline data split RUN NEW`"
    run = tmp_path / "run"
    (run / "bundle").mkdir(parents=True)
    (run / "bundle" / "model.json").write_text("{}")
    for wrong in (run, run / "bundle"):
        code, res = _run(capsys, "--database", f"sqlite:///{tmp_path / 'db.sqlite'}", "--data", wrong, "--out",
                         tmp_path / "new")
        assert code == 2 and "is a RUN or bundle folder, not a dataset" in res.err and "data split" not in res.err
    assert not (tmp_path / "new").exists()


def test_an_export_interrupted_during_its_audit_keeps_its_summary(tmp_path, capsys, monkeypatch):
    # feedback.json was written after the audit: a Ctrl-C there left the new dataset without its summary (which
    # labels went where, what was skipped), and a second run was refused since --out was no longer empty
    from sightline.data import audit

    parent = write_images(tmp_path / "data", {"train": 2, "val": 1, "test": 1})
    store, ids = _service(tmp_path / "svc", [("review", _png(45, 1)), ("review", _png(205, 2))])
    store.record_label(ids[0], "dark", reviewer="ann")
    store.record_label(ids[1], "unknown", reviewer="ann")
    store.close()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(audit, "audit_dataset", interrupted)
    code, _ = _run(capsys, "--database", f"sqlite:///{tmp_path / 'svc' / 'sightline.db'}", "--data", parent, "--out",
                   tmp_path / "new")
    assert code == 130  # as a Ctrl-C ends a command
    summary = json.loads((tmp_path / "new" / "feedback.json").read_text())
    assert summary["added"] == {"train": {"dark": 1}} and summary["skipped"]["unknown_label"] == [ids[1]]
