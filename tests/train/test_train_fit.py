"""train(): a RUN folder whose bundle reproduces its own validation numbers, reproducible seeds, one-line errors."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from sightline.bundle import load_bundle
from sightline.data.datasets import dataset_version, scan_dataset
from sightline.data.images import load_image
from sightline.data.transforms import eval_preprocess, stack
from sightline.errors import DatasetError, ModelError, UserInputError
from sightline.train.config import TrainConfig, load_config
from sightline.train.fit import sanity_check, train

TINY = {"model": "test_efficientnet", "weights": "none", "epochs": 2, "input_size": 32, "batch_size": 8,
        "num_workers": 0}


def make_data(root: Path, *, splits: dict[str, int] | None = None, classes: dict[str, tuple[int, int, int]] | None = None,
              seed: int = 0) -> Path:
    """Noisy colour patches (40 px PNG): the class is the colour, learnable in a few steps."""
    rng = np.random.default_rng(seed)
    classes = classes or {"blue": (30, 30, 200), "red": (200, 30, 30)}
    for split, n in (splits or {"train": 12, "val": 6}).items():
        for name, colour in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = (rng.normal(0, 25, (40, 40, 3)) + colour).clip(0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{name}_{i}.png")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_data(tmp_path_factory.mktemp("data"))


# bf16 everywhere (emulated where the CPU has no bf16 units): the bundle's val figures must still be fp32 ones.
# Contiguous as set, not timed: on a busy CPU the hardware probe measures at every training, and the same-seed
# run below could be given the other memory format.
BF16 = {**TINY, "precision": "bf16-mixed", "channels_last": False}


@pytest.fixture(scope="module")
def run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(data, tmp_path_factory.mktemp("run"), progress=False, **BF16)


def _val_logits(bundle: Any, data: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 logits (N, K) of the bundle's weights on DATA/val through the shared eval preprocessing, and labels."""
    model = bundle.load_model()
    samples = scan_dataset(data).split("val")
    x = torch.from_numpy(stack([eval_preprocess(load_image(s.path), bundle.preprocessing) for s in samples]))
    with torch.no_grad():
        logits = model(x).float()
    return logits, torch.tensor([bundle.classes.index(s.label) for s in samples])


def test_bf16_run_reports_fp32_val_figures(run: Path, data: Path) -> None:
    """Trained in bf16, but the val loss and accuracy in the bundle are those of fp32 inference with its weights,
    recomputed here outside Lightning (a bf16 forward pass moves the loss by far more than the tolerance)."""
    bundle = load_bundle(run)
    logits, truth = _val_logits(bundle, data)
    cfg = load_config(run / "config.yaml")
    loss = torch.nn.functional.cross_entropy(logits, truth, label_smoothing=cfg.label_smoothing)
    assert bundle.metrics["val"]["loss"] == pytest.approx(float(loss), rel=1e-5)
    assert bundle.metrics["val"]["accuracy"] == pytest.approx(float((logits.argmax(1) == truth).float().mean()))
    assert json.loads((run / "metrics.json").read_text())["precision"] == "bf16-mixed"


def test_run_folder_has_config_logs_checkpoint_and_bundle(run: Path, data: Path) -> None:
    for rel in ("config.yaml", "metrics.json", "checkpoints/best.ckpt", "logs/csv/metrics.csv",
                "bundle/model.json", "bundle/weights.safetensors"):
        assert (run / rel).is_file(), rel
    assert list((run / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    assert load_config(run / "config.yaml") == TrainConfig(**BF16)
    bundle = load_bundle(run)
    assert bundle.architecture == "test_efficientnet" and bundle.classes == ["blue", "red"]
    assert bundle.preprocessing.input_size == 32
    assert bundle.dataset_version == dataset_version(scan_dataset(data))
    assert bundle.code_version and bundle.extra["train"]["seed"] == 0
    assert bundle.metrics["val"]["split"] == "val" and bundle.metrics["val"]["n_images"] == 12


def test_bundle_reproduces_the_reported_val_accuracy(run: Path, data: Path) -> None:
    """Independent check: the bundle's weights through the shared eval path give the accuracy train() reported
    (so the best checkpoint, not the last, went into the bundle, and train/eval preprocessing agree)."""
    bundle = load_bundle(run)
    logits, truth = _val_logits(bundle, data)
    assert float((logits.argmax(1) == truth).float().mean()) == pytest.approx(bundle.metrics["val"]["accuracy"],
                                                                             abs=1e-6)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["val"] == bundle.metrics["val"]


def test_best_epoch_is_the_first_epoch_with_the_best_monitored_value(run: Path) -> None:
    """metrics.json's best_epoch against the per-epoch validation log (logs/csv/metrics.csv): the checkpoint kept
    is the first epoch that reached the best value of the monitored metric."""
    import csv

    cfg = load_config(run / "config.yaml")
    rows = list(csv.DictReader((run / "logs" / "csv" / "metrics.csv").read_text().splitlines()))
    per_epoch = {int(r["epoch"]): float(r[cfg.monitor]) for r in rows if r.get(cfg.monitor)}
    assert sorted(per_epoch) == list(range(TINY["epochs"]))
    best = (min if cfg.monitor == "val_loss" else max)(per_epoch.values())
    expected = min(e for e, v in per_epoch.items() if v == best)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["best_epoch"] == expected and load_bundle(run).extra["train"]["best_epoch"] == expected


def test_same_seed_reproduces_val_metrics(run: Path, data: Path, tmp_path: Path) -> None:
    # the monitor's reference profile is written after the val figures compared here: not built again
    again = train(data, tmp_path / "again", progress=False, **BF16, reference=False)
    first = json.loads((run / "metrics.json").read_text())["val"]
    second = json.loads((again / "metrics.json").read_text())["val"]
    assert second["accuracy"] == pytest.approx(first["accuracy"], abs=1e-6)
    assert second["loss"] == pytest.approx(first["loss"], rel=1e-4)


def test_sanity_check_overfits_two_batches(data: Path) -> None:
    result = sanity_check(data, **TINY)
    assert result["passed"] and result["accuracy"] == 1.0
    assert result["loss_end"] < result["loss_start"]


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    no_val = make_data(tmp_path / "noval", splits={"train": 4})
    with pytest.raises(DatasetError, match="no val split"):
        train(no_val, tmp_path / "r1", progress=False, **TINY)
    one_class = make_data(tmp_path / "one", classes={"ok": (0, 0, 0)})
    with pytest.raises(DatasetError, match="at least two class"):
        train(one_class, tmp_path / "r2", progress=False, **TINY)
    with pytest.raises(ModelError, match="unknown model 'resnet_18'.*resnet18"):
        train(no_val, tmp_path / "r3", progress=False, **{**TINY, "model": "resnet_18"})
    with pytest.raises(UserInputError, match="learning_rate is an unknown key"):
        train(no_val, tmp_path / "r4", progress=False, learning_rate=0.1)


def test_corrupt_pixels_met_in_a_loader_worker_give_one_line_with_what_to_do(tmp_path: Path, capsys) -> None:
    """A truncated JPEG has a valid header, so the scan keeps it; the DataLoader worker meets it mid-epoch and
    re-raises with its traceback in the message. The user must still get one line that names the file."""
    import numpy as np
    from PIL import Image

    from sightline.cli import main

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c, base in (("a", 40), ("b", 200)):
            folder = tmp_path / "data" / split / c
            folder.mkdir(parents=True)
            for i in range(4):
                img = np.clip(base + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"{i}.jpg", quality=95)
    bad = tmp_path / "data" / "train" / "a" / "1.jpg"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    with pytest.raises(SystemExit) as exc:
        main(["train", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--model", "test_efficientnet",
              "--weights", "none", "--epochs", "1", "--input-size", "32", "--workers", "1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "1.jpg" in err and "truncated" in err and "--quarantine" in err and "Traceback" not in err


def test_crop_pct_setting_reaches_the_bundle(data: Path, tmp_path: Path) -> None:
    # without the monitor's reference profile (two thirds of this training's CPU; the bundle's preprocessing is
    # written before it)
    run = train(data, tmp_path / "run", model="test_efficientnet", weights="none", epochs=1, input_size=32,
                batch_size=8, progress=False, num_workers=0, crop_pct=1.0, reference=False)
    pre = load_bundle(run).preprocessing
    assert pre.crop_pct == 1.0 and pre.resize_size == 32  # the whole frame, no border cropped
