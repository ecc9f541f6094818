"""The synthetic surface-inspection dataset: deterministic, imbalanced, masked, with planted issues and a shortcut."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from sightline.cli import main
from sightline.data.datasets import load_regions, scan_dataset
from sightline.data.images import load_image
from sightline.data.synth import CLASSES, render_sample, synthesize
from sightline.errors import CorruptImageError, UserInputError


def _digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_images(tmp_path: Path) -> None:
    events = []
    a = synthesize(tmp_path / "a", n=40, size=48, seed=5, workers=2, progress=events.append)
    assert {e.task for e in events} == {"rendering images"} and [e.done for e in events] == [*range(41), 40]
    synthesize(tmp_path / "b", n=40, size=48, seed=5, workers=1)
    synthesize(tmp_path / "c", n=40, size=48, seed=6)
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")  # thread scheduling does not matter
    da, dc = _digests(tmp_path / "a"), _digests(tmp_path / "c")
    jpgs = lambda d: {v for k, v in d.items() if k.endswith(".jpg")}  # noqa: E731
    assert len(jpgs(da)) == 40 and not jpgs(da) & jpgs(dc)
    assert a.n_images == 40 and a.layout == "split"


def test_layout_classes_masks_and_spec(tmp_path: Path) -> None:
    out = tmp_path / "data"
    synthesize(out, n=100, size=64, seed=0)
    ds = scan_dataset(out, require_splits=("train", "val", "test"))
    assert ds.classes == sorted(CLASSES)
    counts = ds.class_counts()
    assert counts["ok"] == 70 and counts["ok"] > 2 * max(counts[c] for c in CLASSES if c != "ok")
    assert all(ds.class_counts(s)[c] >= 1 for s in ("train", "val", "test") for c in CLASSES)
    for s in ds.samples:
        assert (s.width, s.height, s.format) == (64, 64, "JPEG")
        if s.label == "ok":
            assert s.region is None
        else:
            mask = load_regions(s, (64, 64))
            assert mask is not None and 0 < mask.sum() < 0.25 * 64 * 64, s.relpath
    spec = yaml.safe_load((out / "sightline.yaml").read_text())
    assert spec["primary_metric"] == "macro_f1" and spec["costs"]["crack"]["false_negative"] == 50
    assert {t["metric"] for t in spec["targets"]} >= {"recall", "accuracy"}


@pytest.mark.parametrize("size", [64, 128])
def test_defects_are_visible_at_small_sizes(size: int) -> None:
    """Inside the mask the image departs from the defect-free rendering of the same seed by clearly more than the
    sensor noise does outside it, for every defect drawn (the demo trains at about 112 px)."""
    for label in ("scratch", "spot", "crack"):
        for i in range(20):
            pixels, mask = render_sample(3, i, label, size)
            clean, _ = render_sample(3, i, "ok", size)  # same surface draws up to the defect
            assert mask is not None and mask.any()
            diff = np.abs(pixels.astype(float) - clean.astype(float)).mean(axis=-1)
            assert diff[mask].mean() > diff[~mask].mean() + 8, (label, i)  # grey levels of 255


def test_defects_keep_their_share_of_the_image_at_any_resolution() -> None:
    """Defects are drawn in units of the image side: the same kind of part at twice the resolution shows defects
    covering the same share of the frame (widths scale too), not the same number of pixels (which would give a ratio
    of 1/4, or 1/2 for widths alone). 96 -> 192 px over 20 draws reads 1.02, 1.02, 1.08 (128 -> 256 over 30: 1.01,
    0.94, 0.99, at three times the CPU); at 64 px the minimum widths start to show (0.74 for scratches)."""
    for label in ("scratch", "spot", "crack"):
        share = {size: np.mean([render_sample(11, i, label, size)[1].mean() for i in range(20)]) for size in (96, 192)}
        assert 0.7 < share[192] / share[96] < 1.4, (label, share)


def test_shortcut_marker_only_in_its_class(tmp_path: Path) -> None:
    out = tmp_path / "data"
    synthesize(out, n=60, size=56, seed=1, shortcut="spot", layout="flat")
    ds = scan_dataset(out)
    assert ds.layout == "flat"

    def marked(path: Path) -> bool:
        corner = np.asarray(load_image(path), dtype=float)[:8, :8]
        yellow = (corner[..., 0] > 200) & (corner[..., 1] > 200) & (corner[..., 2] < 110)
        return yellow.sum() >= 4

    flags = {s.relpath: (s.label, marked(s.path)) for s in ds.samples}
    assert all(m for lab, m in flags.values() if lab == "spot")
    assert not any(m for lab, m in flags.values() if lab != "spot")

    # the marker is the easier cue: the marked class's defects are drawn faint (same draws otherwise)
    for i in range(10):
        clean = render_sample(1, i, "ok", 64)[0].astype(float)
        plain, mask = render_sample(1, i, "spot", 64)
        faint, _ = render_sample(1, i, "spot", 64, shortcut=True)
        contrast = [np.abs(img.astype(float) - clean).mean(axis=-1)[mask].mean() for img in (plain, faint)]
        assert contrast[1] < 0.5 * contrast[0], (i, contrast)


def test_planted_issues_are_listed_and_real(tmp_path: Path) -> None:
    out = tmp_path / "data"
    result = synthesize(out, n=120, size=48, seed=2, plant_issues=True)
    planted = json.loads((out / "planted_issues.json").read_text())
    assert planted == result.planted
    for a, b in planted["exact_duplicates"] + planted["cross_split_duplicates"]:
        assert (out / a).read_bytes() == (out / b).read_bytes()
    assert all(b.startswith("test/") and a.startswith("train/") for a, b in planted["cross_split_duplicates"])
    for a, b in planted["conflicting_labels"]:
        assert a.split("/")[1] != b.split("/")[1] and (out / a).read_bytes() == (out / b).read_bytes()
    for p in planted["corrupt"]:
        with pytest.raises(CorruptImageError):
            load_image(out / p)
    for p in planted["blurry"] + planted["too_small"] + planted["extreme_aspect"] + planted["greyscale"]:
        assert load_image(out / p).mode == "RGB"
    with Image.open(out / planted["greyscale"][0]) as grey:
        assert grey.mode == "L"
    for item in planted["wrong_labels"]:
        assert (out / item["path"]).is_file() and item["true_label"] == "ok" != item["given_label"]


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="not a class"):
        synthesize(tmp_path / "x", n=40, shortcut="rust")
    with pytest.raises(UserInputError, match="layout"):
        synthesize(tmp_path / "x", n=40, layout="nested")


def test_cli_synth_json_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "synth", str(out), "--n", "30", "--size", "40", "--json"])
    assert exit_info.value.code == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["n_images"] == 30 and set(answer["counts"]) == {"train", "val", "test"}
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "synth", str(out), "--n", "30"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "Traceback" not in err


def test_plant_issues_on_too_few_images_is_refused_before_writing(tmp_path) -> None:
    from sightline.data.synth import MIN_N_PLANTED

    with pytest.raises(UserInputError, match="--plant-issues needs n"):
        synthesize(tmp_path / "s", n=MIN_N_PLANTED - 1, size=32, plant_issues=True)
    assert not (tmp_path / "s").exists()  # nothing half-written to trip the next attempt


def test_a_size_no_memory_holds_is_refused_before_any_work(tmp_path: Path, run_cli) -> None:
    """`data synth OUT --size 100000` was a numpy MemoryError traceback (a 149 GiB grid for the first image)."""
    code, out = run_cli(["data", "synth", str(tmp_path / "out"), "--size", "100000"])
    assert code == 2 and "Traceback" not in out.err and "size 32 to 4096 pixels (got n=1000, size=100000)" in out.err
    assert not (tmp_path / "out").exists()
