"""run_demo wires synth -> split -> train into one folder and says where everything is."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from sightline.errors import UserInputError
from sightline.train import demo


def test_quick_demo_with_a_tiny_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "_optional", lambda module, attr: None)  # later stages are tested by their owners
    artifacts = demo.run_demo(tmp_path / "demo", quick=True, model="test_efficientnet", weights="none")
    for key in ("raw data", "split data", "run", "bundle"):
        assert Path(artifacts[key]).is_dir(), key
    for split in ("train", "val", "test"):
        assert (Path(artifacts["split data"]) / split).is_dir()
    metrics = json.loads((Path(artifacts["run"]) / "metrics.json").read_text())
    assert metrics["val"]["split"] == "val" and metrics["val"]["n_images"] > 0
    assert artifacts["serve"].startswith("sightline serve ")
    with pytest.raises(UserInputError, match="not empty"):
        demo.run_demo(tmp_path / "demo", quick=True)
