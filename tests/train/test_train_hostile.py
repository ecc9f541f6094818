"""Training data with a class missing from a split: trained on, but said (it was silent: a class never seen in
val is left out of early stopping, calibration and thresholds; one never seen in train cannot be learnt)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image


def _images(folder, n, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(folder / f"{i}.png")


@pytest.mark.parametrize("layout, expected", [
    ({"train": ("a", "b"), "val": ("a",)}, "val/ has no image of b"),
    ({"train": ("a", "b"), "val": ("a", "b", "c")}, "train/ has no image of c"),
])
def test_a_class_missing_from_a_split_is_said(tmp_path, layout, expected):
    from sightline.train.config import TrainConfig
    from sightline.train.prepare import prepare

    for split, classes in layout.items():
        for i, c in enumerate(classes):
            _images(tmp_path / split / c, 2, seed=i)
    said: list[str] = []
    cfg = TrainConfig(model="test_efficientnet", weights="none", input_size=32, num_workers=0, cache_ram="off")
    prepared = prepare(tmp_path, cfg, say=said.append, probe=False)
    prepared.dm.close()
    warnings = [line for line in said if line.startswith("warning:")]
    assert len(warnings) == 1 and expected in warnings[0] and "sightline data split" in warnings[0]


def test_complete_splits_say_no_warning(tmp_path):
    from sightline.train.config import TrainConfig
    from sightline.train.prepare import prepare

    for split in ("train", "val"):
        for i, c in enumerate(("a", "b")):
            _images(tmp_path / split / c, 2, seed=i)
    said: list[str] = []
    cfg = TrainConfig(model="test_efficientnet", weights="none", input_size=32, num_workers=0, cache_ram="off")
    prepare(tmp_path, cfg, say=said.append, probe=False).dm.close()
    assert not [line for line in said if line.startswith("warning:")]


def test_files_left_out_of_training_are_said(tmp_path):
    """A text file, an empty .png: left out of training without a word before."""
    from sightline.train.config import TrainConfig
    from sightline.train.prepare import prepare

    for split in ("train", "val"):
        for i, c in enumerate(("a", "b")):
            _images(tmp_path / split / c, 2, seed=i)
    (tmp_path / "train" / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / "b" / "zero.png").write_bytes(b"")
    said: list[str] = []
    cfg = TrainConfig(model="test_efficientnet", weights="none", input_size=32, num_workers=0, cache_ram="off")
    prepare(tmp_path, cfg, say=said.append, probe=False).dm.close()
    warnings = [line for line in said if line.startswith("warning:")]
    assert len(warnings) == 1 and "2 file(s)" in warnings[0] and "sightline data audit" in warnings[0]


@pytest.mark.parametrize("inside", ["train/run", "val", "test/a/run"])
def test_a_run_folder_inside_a_split_is_refused_before_any_work(tmp_path, inside):
    """RUN inside DATA/train/ became a class folder of the dataset ('train/run holds no usable image'): every later
    train, evaluate and audit of DATA failed. Refused up front, with the folder named; DATA/run stays allowed."""
    from sightline.errors import UserInputError
    from sightline.train.fit import train

    for split in ("train", "val"):
        for i, c in enumerate(("a", "b")):
            _images(tmp_path / "data" / split / c, 2, seed=i)
    out = tmp_path / "data" / inside
    with pytest.raises(UserInputError, match=r"inside the dataset's (train|val|test)/ folder"):
        train(tmp_path / "data", out, model="test_efficientnet", weights="none", input_size=32, epochs=1,
              num_workers=0, progress=False)
    assert not (out / "config.yaml").exists()


def test_training_again_into_a_run_drops_the_old_bundles_exports(tmp_path):
    """A second `train --out RUN` wrote new weights and model.json beside the first model's model.onnx and
    model card: predict (ONNX) then answered with the old graph under the new class names, without a word."""
    from sightline.train.fit import train

    for split in ("train", "val"):
        for i, c in enumerate(("a", "b")):
            _images(tmp_path / "data" / split / c, 2, seed=i)
    run = tmp_path / "run"
    (run / "bundle").mkdir(parents=True)
    for name in ("model.onnx", "model.int8.onnx", "MODEL_CARD.md"):
        (run / "bundle" / name).write_text("from an earlier run")
    train(tmp_path / "data", run, model="test_efficientnet", weights="none", input_size=32, epochs=1,
          num_workers=0, progress=False, reference=False)
    assert sorted(p.name for p in (run / "bundle").iterdir()) == ["model.json", "weights.safetensors"]


@pytest.mark.parametrize(("hardware", "words"), [
    ({"strategy": "nonsense"}, "invalid strategy name"),
    ({"devices": "0,1", "accelerator": "cpu"}, "CPUAccelerator"),  # GPU ids on a CPU
])
def test_hardware_lightning_refuses_is_one_line(tmp_path, hardware, words):
    """--strategy nonsense, fsdp on a CPU or GPU ids on a CPU: Lightning's ValueError / TypeError /
    MisconfigurationException came out of the Trainer as a traceback (exit 1)."""
    from types import SimpleNamespace

    from sightline.errors import UserInputError
    from sightline.train.blocks import build_trainer
    from sightline.train.config import TrainConfig

    cfg = TrainConfig(model="test_efficientnet", weights="none", precision="32-true", **hardware)
    dm = SimpleNamespace(train_set=[0] * 8, classes=["a", "b"])
    with pytest.raises(UserInputError, match=rf"Lightning refused the hardware settings .*{words}.*; change them"):
        build_trainer(cfg, tmp_path, dm, progress=False)


def test_a_class_named_like_the_reviewers_unknown_label_is_refused_before_any_work(tmp_path, run_cli):
    """A class 'unknown' trained and served, but in the review queue 'unknown' is also the label for an image no
    class fits: feedback export left those images out (as not a valid item), so the class never got new examples."""
    for split in ("train", "val"):
        for i, c in enumerate(("cat", "unknown")):
            _images(tmp_path / "data" / split / c, 2, seed=i)
    code, out = run_cli(["train", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--model",
                         "test_efficientnet", "--weights", "none"])
    assert code == 2 and len(out.err.strip().splitlines()) == 1
    assert "class named 'unknown'" in out.err and "rename that folder" in out.err
    assert not (tmp_path / "run").exists()


def test_classes_spelled_two_ways_are_said(tmp_path):
    """'Ants' in val/ beside 'ants' in train/ (folders made by two people): training said 'val/ has no image of ants'
    and 'train/ has no image of Ants', each true, neither naming the cause."""
    from sightline.train.config import TrainConfig
    from sightline.train.prepare import prepare

    for split, classes in (("train", ("ants", "bees")), ("val", ("Ants", "bees"))):
        for i, c in enumerate(classes):
            _images(tmp_path / split / c, 2, seed=i)
    said: list[str] = []
    cfg = TrainConfig(model="test_efficientnet", weights="none", input_size=32, num_workers=0, cache_ram="off")
    prepare(tmp_path, cfg, say=said.append, probe=False).dm.close()
    warnings = [line for line in said if line.startswith("warning:")]
    assert len(warnings) == 3
    assert "classes 'Ants' and 'ants' differ only in case, spacing or encoding" in warnings[-1]
