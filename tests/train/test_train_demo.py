"""run_demo wires every stage into one folder, says where everything is and how the targets fared, in its own lines."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from sightline.bundle import load_bundle
from sightline.cli import main
from sightline.errors import UserInputError
from sightline.spec import load_spec
from sightline.train import demo

# What other libraries print unasked: ONNX Runtime's calibrators (stdout) and Lightning's Trainer (INFO log lines).
FOREIGN = ("Collecting tensor data", "Finding optimal threshold", "Number of tensors", "GPU available",
           "TPU available", "Trainer.fit` stopped", "Using bfloat16")


def test_quick_demo_runs_every_stage_with_a_tiny_model(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    artifacts = demo.run_demo(tmp_path / "demo", quick=True, seed=1, model="test_efficientnet", weights="none")
    for key in ("raw data", "split data", "run", "bundle", "heatmaps"):
        assert Path(artifacts[key]).is_dir(), key
    for key in ("audit report", "eval metrics", "report", "model card", "onnx", "int8 onnx"):
        assert Path(artifacts[key]).is_file(), key
    for split in ("train", "val", "test"):
        assert (Path(artifacts["split data"]) / split).is_dir()
    # the planted corrupt file was quarantined by the audit, so training and evaluation never met it
    assert any((Path(artifacts["raw data"]) / ".quarantine").rglob("*"))
    metrics = json.loads(Path(artifacts["eval metrics"]).read_text())
    assert metrics["split"] == "test" and metrics["n_images"] > 0
    assert "export" in load_bundle(artifacts["run"]).extra
    assert list(Path(artifacts["heatmaps"]).glob("*.png"))
    assert "sightline serve " in artifacts["serve"]

    # every target of the data's sightline.yaml is reported, with its verdict, in the demo's own lines
    out, err = capfd.readouterr()
    spec = load_spec(Path(artifacts["split data"]) / "sightline.yaml")
    assert len(spec.targets) == len(metrics["targets"]) >= 3
    for target in metrics["targets"]:
        assert target["target"] in err and f"{target['value']:.3f}" in err
    assert f"{sum(t['passed'] for t in metrics['targets'])} of {len(metrics['targets'])} met" in err
    assert "seed 1" in err
    for line in FOREIGN:
        assert line not in out + err, line
    assert out == ""  # ONNX Runtime's calibration progress used to land here

    with pytest.raises(UserInputError, match="not empty"):
        demo.run_demo(tmp_path / "demo", quick=True)


def test_the_same_seed_gives_the_same_demo_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--seed` reaches every seeded stage: stop the demo after the split and compare the data folders."""
    from sightline.data import split as split_module

    class Stop(Exception):
        pass

    real_split = split_module.split_dataset

    def split_then_stop(*args, **kwargs):
        real_split(*args, **kwargs)
        raise Stop

    monkeypatch.setattr(split_module, "split_dataset", split_then_stop)

    def files(root: Path) -> dict[str, bytes]:
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted((root / "data").rglob("*.jpg"))}

    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        with pytest.raises(Stop):
            demo.run_demo(tmp_path / name, quick=True, seed=seed)
    a, b, c = (files(tmp_path / n) for n in "abc")
    assert a and a == b and a != c


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
