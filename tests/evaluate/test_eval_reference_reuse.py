"""A rebuild of a bundle's reference profile reuses what does not change with the temperature or the quantile:
the training bank and the stand-in outliers' outputs stored with the profile (when the model, its preprocessing
and the files are those they came from), and evaluate's own validation pass. Checked against a full rebuild on
the same inputs, on a tiny untrained bundle and data made here."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import sightline.evaluate.reference as reference
from sightline._cli.common import run_command
from sightline.bundle import Bundle, Preprocessing, load_bundle
from sightline.cli import app
from sightline.evaluate.reference import build_bundle_reference
from sightline.evaluate.run import evaluate
from sightline.models.factory import create_model
from sightline.monitor.reference import REFERENCE_FILE, load_reference

from test_eval_reference import CLASSES, FAST, PER_SPLIT, _write_dataset  # the same tiny dataset (this folder is on sys.path)

SMALL = dict(per_kind=2, corrupt_images=3, photos=False)


def _save_bundle(folder: Path, *, size: int = 32, seed: int = 0, temperature: float = 1.0) -> Path:
    torch.manual_seed(seed)
    model = create_model("test_efficientnet", len(CLASSES), weights="none")
    Bundle("test_efficientnet", CLASSES, preprocessing=Preprocessing(size), temperature=temperature).save(
        folder / "bundle", model.state_dict())
    return folder


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """(root, data, run): a bundle whose profile was built in full at temperature 1 (as `train` writes it)."""
    root = tmp_path_factory.mktemp("reuse")
    data = _write_dataset(root / "data")
    run = _save_bundle(root / "run")
    build_bundle_reference(run, data, **SMALL)
    return root, data, run


def _copy(made, name: str) -> Path:
    root, _, run = made
    shutil.copytree(run, root / name)
    return root / name


def _refuse_model_beyond_val(monkeypatch) -> None:
    """Fail if the training sample or the stand-in outliers are scored (a refresh must not run the model on them)."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model ran on the training sample or the stand-ins during a refresh")

    monkeypatch.setattr(reference, "_score_bank", refuse)
    monkeypatch.setattr(reference, "_score_stand_ins", refuse)


def _count_val_passes(monkeypatch) -> list[int]:
    """Record the number of images of every `score_val` call on validation images (the training sample of the k-NN
    bank is decoded by it too, for its image statistics)."""
    calls: list[int] = []
    original = reference.score_val

    def counted(*args, **kwargs):
        if "train sample" not in kwargs.get("task", ""):
            calls.append(len(args[1]))
        return original(*args, **kwargs)

    monkeypatch.setattr(reference, "score_val", counted)
    return calls


def _same_profile(a, b) -> None:
    """The same chosen score, thresholds, figures and summary (within float16 tolerance)."""
    assert a.ood_choice.score == b.ood_choice.score and a.ood_choice.chosen_by == b.ood_choice.chosen_by
    assert a.ood_choice.threshold == pytest.approx(b.ood_choice.threshold, rel=1e-3, abs=1e-4)
    for name, row in b.ood_choice.table.items():
        other = a.ood_choice.table[name]
        assert other["threshold"] == pytest.approx(row["threshold"], rel=1e-3, abs=1e-4), name
        assert other["auroc"] == pytest.approx(row["auroc"], abs=1e-3), name
        assert other["rejection_rate"] == pytest.approx(row["rejection_rate"], abs=1e-3), name
    sa, sb = a.summary(), b.summary()
    sa["ood"].pop("threshold"), sb["ood"].pop("threshold")
    assert sa == sb
    np.testing.assert_allclose(a.logits, b.logits, atol=1e-4)
    np.testing.assert_allclose(a.projected.astype(np.float32), b.projected.astype(np.float32), atol=2e-3)
    np.testing.assert_allclose(a.bank.astype(np.float32), b.bank.astype(np.float32), atol=2e-3)
    assert a.bank_labels.tolist() == b.bank_labels.tolist()
    assert a.image_stats.keys() == b.image_stats.keys()
    for k, col in b.image_stats.items():
        np.testing.assert_array_equal(a.image_stats[k], col, err_msg=k)  # NaN (no JPEG quality) equals NaN here
    assert a.meta["stand_ins"]["families"].keys() == b.meta["stand_ins"]["families"].keys()
    for fam, row in b.meta["stand_ins"]["families"].items():
        assert a.meta["stand_ins"]["families"][fam]["rejection_rate"] == pytest.approx(row["rejection_rate"], abs=1e-3)


def test_refresh_at_a_new_temperature_equals_a_full_rebuild(made, monkeypatch):
    root, data, _ = made
    run = _copy(made, "refresh")
    _refuse_model_beyond_val(monkeypatch)
    stored = load_reference(run / "bundle")
    assert stored.outliers is not None and len(stored.outliers) == 2 * 8 + 3 * 8
    assert stored.meta["built"]["mode"] == "full" and stored.fingerprint["model"].startswith("torch:")
    refreshed = build_bundle_reference(run, data, temperature=2.5, quantile=0.9, **SMALL)
    assert refreshed.meta["built"]["mode"] == "refresh" and "bank_s" not in refreshed.meta["timings"]
    assert load_reference(run / "bundle").temperature == 2.5
    monkeypatch.undo()  # the full rebuild may score everything
    full = build_bundle_reference(run, data, temperature=2.5, quantile=0.9, reuse=False, save=False, **SMALL)
    assert full.meta["built"] == {"mode": "full", "reason": "asked for a full rebuild"}
    _same_profile(refreshed, full)
    # the temperature reached the profile: msp's threshold moved with it
    assert refreshed.ood_choice.table["msp"]["threshold"] != pytest.approx(stored.ood_choice.table["msp"]["threshold"])


@pytest.mark.parametrize("change, reason", [
    ("weights", "the model's weights changed"),
    ("input_size", "the preprocessing changed"),
    ("seed", "the stand-in outliers changed"),
    ("train_files", "the training sample changed"),
    ("old_file", "predates"),
    ("damaged", "cannot be read"),
])
def test_anything_else_rebuilds_in_full_and_says_why(made, tmp_path, change, reason):
    root, data, _ = made
    run = _copy(made, f"changed-{change}")
    seed = 0
    if change == "weights":  # retrained into the same folder: the stored profile is the old model's
        _save_bundle(run, seed=1)
    elif change == "input_size":
        _save_bundle(run, size=40)
    elif change == "seed":
        seed = 5
    elif change == "train_files":
        data = tmp_path / "data"
        shutil.copytree(made[1], data)
        (data / "train" / "dark" / "dark0.png").unlink()
    elif change == "old_file":
        old = load_reference(run / "bundle")
        old.outliers, old.fingerprint = None, {}
        old.save(run / "bundle")
    elif change == "damaged":
        (run / "bundle" / REFERENCE_FILE).write_bytes(b"not a zip")
    profile = build_bundle_reference(run, data, seed=seed, **SMALL)
    assert profile.meta["built"]["mode"] == "full" and reason in profile.meta["built"]["reason"]
    # the rebuilt file holds the new entries, so the next refresh can reuse them
    again = build_bundle_reference(run, data, seed=seed, **SMALL)
    assert again.meta["built"]["mode"] == "refresh"
    assert again.ood_choice.score == profile.ood_choice.score


def test_evaluate_scores_val_once_and_refreshes_the_stored_profile(made, monkeypatch, capsys):
    root, data, _ = made
    run = _copy(made, "evaluated")
    build_bundle_reference(run, data)  # with evaluate's settings (and train's): default stand-ins, seed 0
    _refuse_model_beyond_val(monkeypatch)
    calls = _count_val_passes(monkeypatch)
    from collections import defaultdict

    from sightline.evaluate import report
    from sightline.explain import gallery

    # report.html is not read here: no plots, and each gallery image one pixel (not ~50 optimized PNGs, ~10 ms each)
    pixel = gallery.png_base64(np.full((1, 1, 3), 255, dtype=np.uint8))
    monkeypatch.setattr(report, "plots", lambda r: defaultdict(str))
    monkeypatch.setattr(gallery, "png_base64", lambda array, *, size=None: pixel)
    code = run_command(app, ["evaluate", str(run), "--data", str(data), "--no-robustness", "--bootstrap", "20"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert calls == [12]  # one val pass: calibration and the profile
    assert "refreshed on validation only" in out
    bundle = load_bundle(run)
    refreshed = load_reference(bundle.path)
    assert refreshed.temperature == pytest.approx(bundle.temperature)
    assert bundle.extra["reference"]["meta"]["built"]["mode"] == "refresh"
    monkeypatch.undo()
    full = build_bundle_reference(run, data, temperature=bundle.temperature, reuse=False, save=False)
    _same_profile(refreshed, full)


def test_evaluate_without_a_stored_profile_builds_one_from_its_val_pass(made, monkeypatch):
    """An older bundle (no reference.npz): a full build, but val is still scored only once."""
    root, data, _ = made
    run = _copy(made, "no-profile")
    (run / "bundle" / REFERENCE_FILE).unlink()
    calls = _count_val_passes(monkeypatch)
    m = evaluate(run, data, report=False, **FAST)  # the profile is the subject, not the page
    assert calls == [12]
    assert m["reference"]["meta"]["built"] == {"mode": "full", "reason": "the bundle had no profile"}
    profile = load_reference(run / "bundle")
    assert profile.outliers is not None and profile.fingerprint["bank"]
    # equal to a profile built on its own (its own val pass), at the same temperature
    monkeypatch.undo()
    alone = build_bundle_reference(run, data, temperature=profile.temperature, reuse=False, save=False)
    _same_profile(profile, alone)


def test_a_profile_written_by_train_with_another_seed_is_refreshed_by_evaluate(tmp_path):
    """`train --seeds N` trains seed 1, 2, ...: their profiles are drawn with evaluate's default seed, so evaluate
    refreshes them instead of scoring the bank and the stand-ins again."""
    from sightline.train.fit import train

    data = _write_dataset(tmp_path / "data")
    run = train(data, tmp_path / "run", model="test_efficientnet", weights="none", epochs=1, input_size=32,
                batch_size=8, num_workers=0, progress=False, seed=3)
    assert load_bundle(run).extra["train"]["seed"] == 3
    written = load_reference(run / "bundle")
    assert written.meta["seed"] == 0 and written.meta["built"]["mode"] == "full"
    m = evaluate(run, data, report=False, **FAST)  # the profile is the subject, not the page
    assert m["reference"]["meta"]["built"]["mode"] == "refresh", m["reference"]["meta"]["built"]


def test_profile_keeps_the_training_sample_statistics_and_rebuilds_an_older_recipe(made):
    """The training sample's image statistics are stored beside the bank (one per bank row); a profile stored
    with another statistics recipe (older files: no flat_share, no training statistics) is rebuilt in full."""
    _, data, run = made
    stored = load_reference(run / "bundle")
    assert stored.bank.shape[0] == len(stored.train_image_stats["flat_share"]) == 2 * PER_SPLIT["train"]
    assert len(stored.stats_reference["brightness"]) == len(stored.image_stats["brightness"]) + stored.bank.shape[0]
    old = _copy(made, "old-recipe")
    profile = load_reference(old / "bundle")
    profile.fingerprint.pop("stats")  # as written before the recipe was recorded
    profile.save(old / "bundle")
    rebuilt = build_bundle_reference(old, data, save=False, **SMALL)
    assert rebuilt.meta["built"]["mode"] == "full"
    assert "recipe 1" in rebuilt.meta["built"]["reason"]
    assert len(rebuilt.train_image_stats["flat_share"]) == 2 * PER_SPLIT["train"]
