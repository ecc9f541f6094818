"""run_demo's parts: the seed reaches every seeded stage, the CLI passes its options on, and the stand-in reviewer
of the label check's suggestions moves only the files planted_issues.json lists as wrong. A whole quick demo run,
then served: tests/test_demo.py."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from sightline.cli import main
from sightline.data.label_issues import LabelCheck, LabelIssue
from sightline.data.synth import synthesize
from sightline.train import demo

def test_the_same_seed_gives_the_same_demo_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--seed` reaches every seeded stage: stop the demo after the split and compare the data folders, and the
    label check's suggestions. A demo of 100 images instead of QUICK's 160: every stage still runs on it (the label
    check flags 20 images, a planted wrong label among them, which the stand-in reviewer moves before the split).
    Another seed is stopped after the synthesis: its images differ from the first stage on, which is what it shows."""
    from sightline.data import split as split_module
    from sightline.data import synth as synth_module

    class Stop(Exception):
        pass

    def then_stop(real):
        def run_then_stop(*args, **kwargs):
            real(*args, **kwargs)
            raise Stop

        return run_then_stop

    monkeypatch.setattr(demo, "QUICK", demo.DemoScale(n=100, size=64, input_size=64, epochs=2, label_input_size=32))
    monkeypatch.setattr(split_module, "split_dataset", then_stop(split_module.split_dataset))

    def files(root: Path) -> dict[str, bytes]:
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted((root / "data").rglob("*.jpg"))}

    def images(root: Path) -> list[bytes]:
        """Every JPEG under root/raw (the audit and the reviewer move files there, but change none)."""
        return sorted(p.read_bytes() for p in (root / "raw").rglob("*.jpg"))

    for name in "ab":
        with pytest.raises(Stop):
            demo.run_demo(tmp_path / name, quick=True, seed=3, model="test_efficientnet", weights="none")
    a, b = (files(tmp_path / n) for n in "ab")
    assert a and a == b
    # the label check's suggestions too (ranks and probabilities): its folds are seeded, and only the planted wrong
    # labels among its suggestions show in the data
    review_a, review_b = (json.loads((tmp_path / n / "audit" / "label_review.json").read_text()) for n in "ab")
    assert review_a["corrected"] >= 1 and review_a["decisions"] == review_b["decisions"]

    monkeypatch.setattr(synth_module, "synthesize", then_stop(synth_module.synthesize))
    with pytest.raises(Stop):
        demo.run_demo(tmp_path / "c", quick=True, seed=4, model="test_efficientnet", weights="none")
    assert images(tmp_path / "c") and images(tmp_path / "c") != images(tmp_path / "a")


def test_cli_demo_passes_seed_and_rejects_a_used_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(demo, "run_demo", lambda out, **kw: calls.append((out, kw)) or {"report": "r.html"})
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--out", str(tmp_path / "d"), "--seed", "2", "--quick"])
    assert exit_info.value.code == 0 and calls == [(tmp_path / "d", {"quick": True, "seed": 2})]
    assert "r.html" in capsys.readouterr().out

    monkeypatch.undo()
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--out", str(tmp_path / "used")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "Traceback" not in err


def test_ctrl_c_during_the_demo_says_so_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # typer turns a KeyboardInterrupt into exit 130 without a word: Ctrl-C during `demo --serve`'s replay (or any
    # command without its own handler) ended with no line at all
    def interrupted(out: Path, **kw: object) -> dict[str, str]:
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "run_demo", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--out", str(tmp_path / "d")])
    assert exit_info.value.code == 130
    assert capsys.readouterr().err.strip() == "interrupted"


def test_the_stand_in_reviewer_confirms_only_planted_wrong_labels() -> None:
    issues = [LabelIssue(0, "crack/crack_mislabel2.jpg", "crack", "ok", 0.02, 0.9),
              LabelIssue(1, "spot/spot_0007.jpg", "spot", "ok", 0.05, 0.8),  # flagged, not planted
              LabelIssue(2, "scratch/scratch_mislabel0.jpg", "scratch", "crack", 0.1, 0.6)]  # planted, other suggestion
    wrong = [{"path": "crack/crack_mislabel2.jpg", "true_label": "ok", "given_label": "crack"},
             {"path": "scratch/scratch_mislabel0.jpg", "true_label": "ok", "given_label": "scratch"},
             {"path": "spot/spot_mislabel1.jpg", "true_label": "ok", "given_label": "spot"}]  # not flagged
    decisions = demo.review_suggestions(issues, wrong)
    assert [d["rank"] for d in decisions] == [1, 2, 3]
    assert [d["decision"] for d in decisions] == ["confirmed", "left for a reviewer", "confirmed"]
    # the person looking at the image picks the true class, even where the check suggested another
    assert [d["true_label"] for d in decisions] == ["ok", None, "ok"]
    assert {d["decision"] for d in demo.review_suggestions(issues, [])} == {"left for a reviewer"}


def test_review_moves_confirmed_files_before_the_split_and_writes_what_it_did(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    raw = tmp_path / "raw"
    planted = synthesize(raw, n=60, size=32, seed=0, layout="flat", plant_issues=True).planted
    assert planted is not None
    wrong = planted["wrong_labels"]
    assert len(wrong) >= 2
    clean = sorted(p.relative_to(raw).as_posix() for p in (raw / "spot").glob("spot_*.jpg")
                   if "mislabel" not in p.name)[0]
    gone = planted["conflicting_labels"][0][1]  # a copy the audit quarantined before the review
    (raw / gone).unlink()
    issues = [LabelIssue(0, wrong[0]["path"], wrong[0]["given_label"], "ok", 0.01, 0.95),
              LabelIssue(1, clean, "spot", "ok", 0.03, 0.9),
              LabelIssue(2, gone, gone.split("/")[0], "ok", 0.04, 0.9)]
    check = LabelCheck(issues=issues, n_checked=70, classes=["crack", "ok", "scratch", "spot"], folds=5,
                       model={"arch": "test_efficientnet", "input_size": 32})
    review = demo._review_labels(raw, check, 1.5, tmp_path / "audit")

    moved = raw / "ok" / Path(wrong[0]["path"]).name
    assert moved.is_file() and not (raw / wrong[0]["path"]).exists()
    assert (raw / clean).is_file() and not (raw / "ok" / Path(clean).name).exists()  # unconfirmed: untouched
    assert (raw / wrong[1]["path"]).is_file()  # planted but not flagged: the demo does not peek
    assert (review["flagged"], review["planted_found"], review["corrected"], review["left_for_a_reviewer"],
            review["already_quarantined"]) == (3, 1, 1, 1, 1)
    assert review["planted_not_flagged"] == [w["path"] for w in wrong[1:]]
    assert review["label_check"]["seconds"] == 1.5
    assert json.loads((tmp_path / "audit" / "label_review.json").read_text()) == review
    err = capfd.readouterr().err
    assert f"1 of the {len(wrong)} planted wrong labels" in err and "corrected 1" in err
    assert "left for a reviewer: 1" in err and "plays the reviewer" in err and "standing in for a person" in err
