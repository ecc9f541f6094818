"""compare(): same stratified sample and budget for every model; the table's numbers are consistent."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from sightline._cli.common import run_command
from sightline.cli import app
from sightline.data.datasets import scan_dataset
from sightline.train.compare import recommend, stratified_sample

from test_train_fit import make_data


def test_stratified_sample_keeps_class_shares(tmp_path: Path) -> None:
    data = make_data(tmp_path / "d", splits={"train": 2}, classes={"a": (0, 0, 0), "b": (255, 255, 255)})
    samples = scan_dataset(data).split("train")
    # 30 of class a, 10 of class b (duplicated entries are fine for counting)
    pool = [s for s in samples if s.label == "a"] * 15 + [s for s in samples if s.label == "b"] * 5
    chosen = stratified_sample(pool, 8, seed=1)
    assert Counter(s.label for s in chosen) == {"a": 6, "b": 2}
    assert stratified_sample(pool, 8, seed=1) == chosen
    assert stratified_sample(pool, None) == pool


def test_recommend_prefers_the_faster_of_equals() -> None:
    rows = [{"model": "big", "val_macro_f1": 0.95, "cpu_ms_per_image": 30.0},
            {"model": "small", "val_macro_f1": 0.945, "cpu_ms_per_image": 10.0},
            {"model": "bad", "val_macro_f1": 0.80, "cpu_ms_per_image": 1.0}]
    assert recommend(rows).startswith("small:")


def test_compare_cli_two_tiny_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_data(tmp_path / "data", splits={"train": 10, "val": 4})
    code = run_command(app, ["compare", str(data), "--models", "test_efficientnet,test_resnet", "--sample", "8",
                             "--epochs", "1", "--input-size", "32", "--batch-size", "8", "--weights", "none",
                             "--out", str(tmp_path / "cmp"), "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["n_train"], result["n_val"]) == (8, 8)
    assert [r["model"] for r in result["rows"]] == ["test_efficientnet", "test_resnet"]
    for row in result["rows"]:
        assert 0.0 <= row["val_accuracy"] <= 1.0 and row["params_m"] > 0 and row["cpu_ms_per_image"] > 0
        weights = Path(row["run"]) / "bundle" / "weights.safetensors"
        assert row["size_mb"] == pytest.approx(weights.stat().st_size / 1e6)
    assert result["recommendation"].split(":")[0] in {"test_efficientnet", "test_resnet"}
    assert len(list((tmp_path / "cmp" / "sample" / "train").rglob("*.png"))) == 8


def test_compare_rejects_unknown_model_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_data(tmp_path / "data", splits={"train": 2, "val": 1})
    assert run_command(app, ["compare", str(data), "--models", "lite0,resnet_50"]) == 2
    assert "unknown model 'resnet_50'" in capsys.readouterr().err
