"""compare(): same stratified sample and budget for every model; the table's numbers are consistent."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score

from sightline._cli.common import run_command
from sightline.bundle import load_bundle
from sightline.cli import app
from sightline.data.datasets import dataset_version, scan_dataset
from sightline.data.images import load_image
from sightline.data.transforms import eval_preprocess, stack
from sightline.train.compare import SAMPLE_MARK, recommend, stratified_sample
from sightline.train.config import load_config

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


def _without_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """compare's trainings without the monitor's reference profile (stand-in images and val scored again once a
    model is trained; compare's table does not read it): a third of a tiny training's CPU."""
    import functools

    import sightline.train.fit as fit

    monkeypatch.setattr(fit, "train", functools.partial(fit.train, reference=False))


def test_compare_cli_two_tiny_models(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _without_reference(monkeypatch)
    data = make_data(tmp_path / "data", splits={"train": 10, "val": 4})
    code = run_command(app, ["compare", str(data), "--models", "test_efficientnet,test_resnet", "--sample", "8",
                             "--epochs", "1", "--input-size", "32", "--batch-size", "8", "--weights", "none",
                             "--out", str(tmp_path / "cmp"), "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["n_train"], result["n_val"]) == (8, 8)
    assert [r["model"] for r in result["rows"]] == ["test_efficientnet", "test_resnet"]
    val = scan_dataset(data).split("val")
    sample_version = dataset_version(scan_dataset(tmp_path / "cmp" / "sample"))
    for row in result["rows"]:
        # each row's figures against its own bundle, recomputed here: fp32 predictions on the whole val split
        bundle = load_bundle(row["run"])
        model = bundle.load_model()
        x = torch.from_numpy(stack([eval_preprocess(load_image(s.path), bundle.preprocessing) for s in val]))
        with torch.no_grad():
            pred = model(x).argmax(1).numpy()
        truth = [bundle.classes.index(s.label) for s in val]
        assert bundle.architecture == row["model"]
        assert row["val_accuracy"] == pytest.approx(accuracy_score(truth, pred), abs=1e-6)
        assert row["val_macro_f1"] == pytest.approx(f1_score(truth, pred, average="macro", zero_division=0), abs=1e-6)
        assert row["params_m"] == pytest.approx(sum(p.numel() for p in model.parameters()) / 1e6)
        assert row["size_mb"] == pytest.approx(bundle.weights_path.stat().st_size / 1e6)
        assert row["cpu_ms_per_image"] > 0
        # same sample and budget for every model
        cfg = load_config(Path(row["run"]) / "config.yaml")
        assert (cfg.epochs, cfg.seed, bundle.dataset_version) == (1, 0, sample_version)
        assert json.loads((Path(row["run"]) / "metrics.json").read_text())["train_images"] == 8
    # the recommendation: the fastest model whose val macro-F1 is within 0.01 of the best
    best = max(r["val_macro_f1"] for r in result["rows"])
    fastest = min((r for r in result["rows"] if r["val_macro_f1"] >= best - 0.01), key=lambda r: r["cpu_ms_per_image"])
    assert result["recommendation"].split(":")[0] == fastest["model"]
    assert len(list((tmp_path / "cmp" / "sample" / "train").rglob("*.png"))) == 8


def test_compare_rejects_unknown_model_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_data(tmp_path / "data", splits={"train": 2, "val": 1})
    assert run_command(app, ["compare", str(data), "--models", "lite0,resnet_50"]) == 2
    assert "unknown model 'resnet_50'" in capsys.readouterr().err


def test_compare_keeps_a_sample_folder_it_did_not_write(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """`--out PROJECT` where PROJECT/sample is the user's own folder: compare deleted it without a word, to put its
    stratified sample there. Its own sample from an earlier compare is still replaced."""
    import sightline.train.fit as fit

    _without_reference(monkeypatch)
    trains = fit.train
    data = make_data(tmp_path / "data", splits={"train": 2, "val": 1})
    mine = tmp_path / "project" / "sample"
    mine.mkdir(parents=True)
    (mine / "keep.txt").write_text("mine")
    args = ["compare", str(data), "--models", "test_efficientnet", "--weights", "none", "--epochs", "1",
            "--input-size", "32", "--out", str(tmp_path / "project")]
    assert run_command(app, args) == 2
    err = capsys.readouterr().err
    assert f"'{mine}'" in err and "--out" in err and len(err.strip().splitlines()) == 1
    assert (mine / "keep.txt").read_text() == "mine"
    (mine / "keep.txt").unlink()
    mine.rmdir()
    # its own sample: replaced. The earlier compare is interrupted once its sample is written (what it trains is not
    # what this is about), the next one trains.
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(fit, "train", interrupted)
    assert run_command(app, args) == 130 and (mine / SAMPLE_MARK).is_file()
    monkeypatch.setattr(fit, "train", trains)
    assert run_command(app, args) == 0 and (tmp_path / "project" / "test_efficientnet" / "bundle").is_dir()
