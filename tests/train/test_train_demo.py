"""run_demo wires every stage into one folder and says where everything is."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from sightline.bundle import load_bundle
from sightline.errors import UserInputError
from sightline.train import demo


def test_quick_demo_runs_every_stage_with_a_tiny_model(tmp_path: Path) -> None:
    artifacts = demo.run_demo(tmp_path / "demo", quick=True, model="test_efficientnet", weights="none")
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
    with pytest.raises(UserInputError, match="not empty"):
        demo.run_demo(tmp_path / "demo", quick=True)
