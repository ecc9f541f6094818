"""Files of the evaluated split that the scan refused (not images, empty) are left out of the figures and listed
in metrics.json's `unreadable` beside those that failed to decode (they were left out without a word)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def test_refused_files_of_the_split_are_listed_as_unreadable(tmp_path):
    import torch

    from sightline.bundle import Bundle, Preprocessing
    from sightline.evaluate.run import evaluate
    from sightline.models.factory import create_model

    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        for c in ("a", "b"):
            (tmp_path / "data" / split / c).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(
                    tmp_path / "data" / split / c / f"{i}.png")
    (tmp_path / "data" / "test" / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "data" / "test" / "b" / "zero.png").write_bytes(b"")
    (tmp_path / "data" / "val" / "a" / "readme.txt").write_text("another split: not this evaluation's")
    png = (tmp_path / "data" / "test" / "a" / "0.png").read_bytes()
    (tmp_path / "data" / "test" / "b" / "cut.png").write_bytes(png[: len(png) // 2])  # a header, then cut short
    torch.manual_seed(0)
    bundle = Bundle("test_efficientnet", ["a", "b"], Preprocessing(32), name="t", version="1")
    bundle.save(tmp_path / "bundle", create_model("test_efficientnet", 2, weights="none").state_dict())
    result = evaluate(tmp_path / "bundle", tmp_path / "data", robustness=False, report=False, update_bundle=False,
                      n_bootstrap=10, gallery_per_group=0, reference=False, out=tmp_path / "eval")
    listed = {row["path"]: row["reason"] for row in result.unreadable}
    # relative to the dataset, as the manifest names files, whether the scan refused them or decoding failed
    assert set(listed) == {"test/a/notes.txt", "test/b/zero.png", "test/b/cut.png"}
    assert all(set(row) == {"path", "reason"} for row in result.unreadable)
    assert "not a supported image" in listed["test/a/notes.txt"] and "empty (0 bytes)" in listed["test/b/zero.png"]
    assert result.n_images == 6


def test_an_out_folder_inside_a_split_is_refused_before_any_work(tmp_path):
    """--out DATA/val/ev wrote metrics.json and report.html into a new class folder 'val/ev': every later
    evaluate, train and audit of DATA then failed ('class folder val/ev holds no usable image')."""
    import pytest

    from sightline.bundle import Bundle, Preprocessing
    from sightline.errors import UserInputError
    from sightline.evaluate.run import evaluate
    from sightline.models.factory import create_model

    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / "data" / split / c).mkdir(parents=True)
            Image.new("RGB", (24, 24), (40, 90, 200)).save(tmp_path / "data" / split / c / "0.png")
    bundle = Bundle("test_efficientnet", ["a", "b"], Preprocessing(32), name="t", version="1")
    bundle.save(tmp_path / "bundle", create_model("test_efficientnet", 2, weights="none").state_dict())
    out = tmp_path / "data" / "val" / "ev"
    with pytest.raises(UserInputError, match="inside the dataset's val/ folder"):
        evaluate(tmp_path / "bundle", tmp_path / "data", out=out)
    assert not out.exists()


def test_a_split_folder_given_as_data_says_to_pass_the_parent(tmp_path):
    """`evaluate RUN --data DATA/val` said to run `sightline data split DATA/val`: passing DATA is the fix."""
    import pytest

    from sightline.bundle import Bundle, Preprocessing
    from sightline.errors import DatasetError
    from sightline.evaluate.run import evaluate
    from sightline.models.factory import create_model

    for c in ("a", "b"):
        (tmp_path / "data" / "val" / c).mkdir(parents=True)
        Image.new("RGB", (24, 24)).save(tmp_path / "data" / "val" / c / "0.png")
    Bundle("test_efficientnet", ["a", "b"], Preprocessing(32)).save(
        tmp_path / "bundle", create_model("test_efficientnet", 2, weights="none").state_dict())
    with pytest.raises(DatasetError, match="pass its parent folder"):
        evaluate(tmp_path / "bundle", tmp_path / "data" / "val", report=False, update_bundle=False)


def test_a_val_split_too_small_for_the_reference_profile_keeps_the_metrics(tmp_path):
    """One readable val image: evaluate computed every figure, then stopped at the monitor's reference profile (it
    needs two) with exit 2 and wrote nothing, while `train` on the same data had said "`sightline evaluate` writes
    one". The figures are now written, with a warning that the profile is missing."""
    import torch

    from sightline.bundle import Bundle, Preprocessing
    from sightline.evaluate.run import evaluate
    from sightline.models.factory import create_model

    rng = np.random.default_rng(0)
    for split, classes in (("train", "ab"), ("val", "a"), ("test", "ab")):
        for c in classes:
            (tmp_path / "data" / split / c).mkdir(parents=True)
            for i in range(1 if split == "val" else 2):
                Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(
                    tmp_path / "data" / split / c / f"{i}.png")
    torch.manual_seed(0)
    Bundle("test_efficientnet", ["a", "b"], Preprocessing(32), name="t", version="1").save(
        tmp_path / "bundle", create_model("test_efficientnet", 2, weights="none").state_dict())
    result = evaluate(tmp_path / "bundle", tmp_path / "data", robustness=False, report=False, n_bootstrap=10,
                      gallery_per_group=0, out=tmp_path / "eval")
    assert result.n_images == 4 and (tmp_path / "eval" / "metrics.json").is_file()
    assert "no reference profile written (only 1 image(s)" in result.warning
    assert not (tmp_path / "bundle" / "reference.npz").exists()


@pytest.mark.parametrize(("n_train", "n_val", "built"), [(2, 2, False), (2, 4, True)])
def test_a_dataset_too_small_for_the_reference_profile(tmp_path, n_train, n_val, built):
    """Two training images: 'relative Mahalanobis needs at least 3 training rows', then with the bank left out 'the
    reference needs at least 4 validation images', both UserInputErrors from deep inside that stopped `train` after
    training (exit 2) and `evaluate` entirely. Two training images now build a profile without a training side; too
    few val images are a DatasetError naming the dataset, which train and evaluate turn into a note."""
    import torch

    from sightline.bundle import Bundle, Preprocessing
    from sightline.data.datasets import scan_dataset
    from sightline.errors import DatasetError
    from sightline.evaluate.reference import build_bundle_reference
    from sightline.models.factory import create_model

    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for c in ("a", "b"):
            (tmp_path / "data" / split / c).mkdir(parents=True)
            for i in range(n // 2):
                Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(
                    tmp_path / "data" / split / c / f"{i}.png")
    torch.manual_seed(0)
    bundle = Bundle("test_efficientnet", ["a", "b"], Preprocessing(32), name="t", version="1")
    bundle.save(tmp_path / "bundle", create_model("test_efficientnet", 2, weights="none").state_dict())
    dataset = scan_dataset(tmp_path / "data")
    if built:
        assert build_bundle_reference(bundle, dataset, per_kind=2, photos=False, save=False) is not None
    else:
        with pytest.raises(DatasetError, match=r"reference profile cannot be built from .*needs at least .*; add images"):
            build_bundle_reference(bundle, dataset, per_kind=2, photos=False, save=False)


def test_a_bundle_that_cannot_be_written_is_refused_before_any_work(tmp_path, monkeypatch):
    """A bundle on a read-only share: every figure was computed, then writing model.json failed (PermissionError)
    and nothing was written, metrics.json included; --no-update, which would have worked, went unsaid."""
    import os

    from sightline.bundle import Bundle, Preprocessing
    from sightline.errors import UserInputError
    from sightline.evaluate import run as run_module

    Bundle("test_efficientnet", ["a", "b"], Preprocessing(32)).save(tmp_path / "bundle")
    writable = os.access
    monkeypatch.setattr(run_module.os, "access", lambda path, mode: False if Path(path) == tmp_path / "bundle"
                        else writable(path, mode))  # chmod does not stop root, who runs some test machines
    with pytest.raises(UserInputError, match=r"bundle folder .* cannot be written.*pass --no-update"):
        run_module.evaluate(tmp_path / "bundle", tmp_path / "no-data-read-yet")
