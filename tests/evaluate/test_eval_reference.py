"""The bundle's reference profile (sightline.evaluate.reference) and `evaluate --ood` (sightline.evaluate.openset),
on a tiny untrained bundle and a dataset made here; figures checked against an independent forward pass and
scikit-learn."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from sightline.bundle import Bundle, Preprocessing, load_bundle
from sightline._cli.common import run_command
from sightline.cli import app
from sightline.data.transforms import decode_for, eval_preprocess, stack
from sightline.errors import DatasetError
from sightline.evaluate.outliers import CORRUPTION_SEVERITY, SYNTHETIC, photo_files
from sightline.evaluate.reference import build_bundle_reference, describe_reference
from sightline.evaluate.run import evaluate
from sightline.models.factory import create_model
from sightline.monitor.reference import REFERENCE_FILE, load_reference
from sightline.monitor.stats import image_stats

CLASSES = ["dark", "light"]
PER_SPLIT = {"train": 6, "val": 6, "test": 5}
FAST = dict(n_bootstrap=20, robustness=False, gallery_per_group=0, max_region_images=0, progress=False)


def _write_dataset(root: Path) -> Path:
    """Split layout, 2 classes told apart by brightness, JPEG and PNG, 40 x 48 px."""
    rng = np.random.default_rng(0)
    for split, n in PER_SPLIT.items():
        for c, base in zip(CLASSES, (50, 200)):
            folder = root / split / c
            folder.mkdir(parents=True)
            for i in range(n):
                img = np.clip(base + rng.normal(0, 25, (40, 48, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"{c}{i}.{'jpg' if i % 2 else 'png'}")
    return root


def _write_outliers(folder: Path) -> Path:
    """Images nothing like the classes: stripes, checkerboards, coloured noise; plus a file that is not an image."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(6):
        yy, xx = np.mgrid[0:50, 0:50]
        pattern = ((xx // (3 + i)) % 2 if i % 2 else (yy // 4 + xx // 4) % 2).astype(np.float64)
        img = np.stack([pattern * 255, rng.random((50, 50)) * 255, 255 - pattern * 200], axis=-1).astype(np.uint8)
        Image.fromarray(img).save(folder / f"odd{i}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(root, data, run): a train-free bundle (random test_efficientnet weights, 32 px)."""
    root = tmp_path_factory.mktemp("reference")
    data = _write_dataset(root / "data")
    torch.manual_seed(0)
    model = create_model("test_efficientnet", len(CLASSES), weights="none")
    bundle = Bundle("test_efficientnet", CLASSES, preprocessing=Preprocessing(32), temperature=1.7)
    bundle.save(root / "run" / "bundle", model.state_dict())
    return root, data, root / "run"


def _files(data: Path, split: str) -> list[Path]:
    return sorted((data / split).glob("*/*.*"), key=lambda p: (p.parent.name, p.name))


def _forward(bundle: Bundle, files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Logits and pooled features outside the inference core: timm's forward_features + forward_head."""
    model = bundle.load_model()
    x = torch.from_numpy(stack([eval_preprocess(Image.open(p).convert("RGB"), bundle.preprocessing) for p in files]))
    with torch.no_grad():
        feats = model.forward_head(model.forward_features(x), pre_logits=True)
        return model(x).numpy(), feats.numpy()


def _copy_run(tiny, name: str) -> Path:
    root, _, run = tiny
    dst = root / name
    shutil.copytree(run, dst)
    return dst


def test_profile_written_into_the_bundle_and_loadable(tiny):
    root, data, _ = tiny
    run = _copy_run(tiny, "built")
    profile = build_bundle_reference(run, data, per_kind=2, corrupt_images=3, bank_images=8)
    bundle = load_bundle(run)
    loaded = load_reference(bundle.path)
    assert (bundle.path / REFERENCE_FILE).is_file() and loaded is not None
    val = _files(data, "val")
    # the val rows are the model's own outputs on val, in the dataset's order, at the bundle's temperature
    logits, feats = _forward(bundle, val)
    np.testing.assert_allclose(loaded.logits, logits, atol=1e-4)
    assert loaded.temperature == 1.7 and loaded.classes == CLASSES
    # image statistics of each val file, measured on the image the core decodes
    expected = [image_stats(decode_for(p, bundle.preprocessing), p) for p in val]
    np.testing.assert_allclose(loaded.image_stats["sharpness"], [s["sharpness"] for s in expected], rtol=1e-6)
    assert loaded.image_stats["format"].tolist() == [s["format"] for s in expected]
    # the bank: 8 of the 12 training images, 4 per class (stratified), unit rows
    assert loaded.bank.shape == (8, feats.shape[1]) and np.bincount(loaded.bank_labels).tolist() == [4, 4]
    # the open-set threshold flags 1 % of val: the 0.99 quantile of the chosen score on val
    choice = loaded.ood_choice
    val_scores = loaded.ood_scores(logits, feats)[choice.score]
    assert choice.threshold == pytest.approx(np.quantile(val_scores, 0.99), rel=1e-5)
    assert choice.chosen_by == "auroc" and set(choice.table) == {"msp", "energy", "knn", "mahalanobis"}
    assert max(choice.table.values(), key=lambda r: r["auroc"])["auroc"] == choice.table[choice.score]["auroc"]
    # model.json: summary, every score's figures, the stand-in report
    ref = bundle.extra["reference"]
    assert ref["n_images"] == 12 and ref["bank_size"] == 8 and ref["ood"]["score"] == choice.score
    assert ref["temperature"] == 1.7 and set(ref["ood_table"]) == set(choice.table)
    families = ref["stand_ins"]["families"]
    n_photos = 5 * len(photo_files()[0])
    assert families["synthetic"]["n"] == 2 * len(SYNTHETIC) and families["corruption"]["n"] == 3 * 8
    assert families.get("photo", {"n": 0})["n"] == n_photos
    assert ref["stand_ins"]["n"] == choice.n_out == 2 * len(SYNTHETIC) + 24 + n_photos
    # each family's rejection rate is the share of its stand-ins above the threshold
    assert all(0.0 <= f["rejection_rate"] <= 1.0 for f in families.values())
    assert profile.meta["stand_ins"] == ref["stand_ins"]
    lines = describe_reference(ref)
    assert lines[0].startswith("reference profile: 12 val images") and choice.score in lines[1]


def test_stand_in_rejection_rates_match_a_recount(tiny):
    """The synthetic family's rejection rate equals a recount from the model's outputs on the same images."""
    from sightline.evaluate.outliers import synthetic_crops

    root, data, _ = tiny
    run = _copy_run(tiny, "recount")
    profile = build_bundle_reference(run, data, per_kind=3, corrupt_images=2, photos=False)
    bundle = load_bundle(run)
    crops = synthetic_crops(32, per_kind=3, seed=0).crops
    model = bundle.load_model()
    from sightline.data.transforms import normalize

    x = torch.from_numpy(stack([normalize(c, bundle.preprocessing) for c in crops]))
    with torch.no_grad():
        feats = model.forward_head(model.forward_features(x), pre_logits=True).numpy()
        logits = model(x).numpy()
    score = profile.ood_scores(logits, feats)[profile.ood_choice.score]
    rate = float(np.mean(score > profile.ood_choice.threshold))
    assert bundle.extra["reference"]["stand_ins"]["families"]["synthetic"]["rejection_rate"] == pytest.approx(rate)
    assert "photo" not in bundle.extra["reference"]["stand_ins"]["families"]
    assert CORRUPTION_SEVERITY == 5


def test_no_val_split_is_one_line(tiny, tmp_path):
    root, data, _ = tiny
    flat = tmp_path / "noval"
    shutil.copytree(data / "train", flat / "train")
    with pytest.raises(DatasetError, match="no val/ split"):
        build_bundle_reference(_copy_run(tiny, "noval-run"), flat, per_kind=1)


def test_evaluate_refreshes_the_profile_and_reports_ood(tiny, capsys, monkeypatch):
    from collections import defaultdict

    from sightline.evaluate import report
    from sightline.explain import gallery

    # The page's text is read here, not its pictures: no matplotlib plots (~1 s) and every gallery image and outlier
    # thumbnail one pixel (the CLI's default gallery is ~50 PNGs encoded with optimize=True, ~10 ms each).
    pixel = gallery.png_base64(np.full((1, 1, 3), 255, dtype=np.uint8))
    monkeypatch.setattr(report, "plots", lambda r: defaultdict(str))
    monkeypatch.setattr(gallery, "png_base64", lambda array, *, size=None: pixel)
    root, data, _ = tiny
    run = _copy_run(tiny, "evaluated")
    ood_dir = _write_outliers(root / "outliers")
    code = run_command(app, ["evaluate", str(run), "--data", str(data), "--ood", str(ood_dir), "--no-robustness",
                 "--bootstrap", "20"])
    out = capsys.readouterr().out
    assert code == 0, out
    m = json.loads((run / "eval" / "metrics.json").read_text())
    bundle = load_bundle(run)
    profile = load_reference(bundle.path)
    # refreshed at the val-fitted temperature, which evaluate also stored in the bundle
    assert m["reference"]["temperature"] == pytest.approx(bundle.temperature) == pytest.approx(profile.temperature)
    assert bundle.extra["reference"]["ood"] == m["reference"]["ood"]
    assert "reference profile:" in out and "open-set score:" in out
    # --ood: computed on the 6 images of the folder (the text file is not an image) against the 10 test images
    o = m["ood"]
    assert o["n_images"] == 6 and o["in_distribution"] == {"split": "test", "n_images": 10}
    test_logits, test_feats = _forward(bundle, _files(data, "test"))
    ood_logits, ood_feats = _forward(bundle, sorted(ood_dir.glob("*.png")))
    inside, outside = profile.ood_scores(test_logits, test_feats), profile.ood_scores(ood_logits, ood_feats)
    assert set(o["scores"]) == {"msp", "energy", "knn", "mahalanobis"}
    assert [n for n, r in o["scores"].items() if r["chosen"]] == [profile.ood_choice.score] == [o["chosen"]]
    for name, row in o["scores"].items():
        y = np.r_[np.zeros(10), np.ones(6)]
        assert row["auroc"] == pytest.approx(roc_auc_score(y, np.r_[inside[name], outside[name]]), abs=1e-6), name
        threshold = profile.ood_choice.table[name]["threshold"]
        assert row["threshold"] == pytest.approx(threshold)
        assert row["rejection_rate"] == pytest.approx(np.mean(outside[name] > threshold), abs=1e-9), name
        assert row["in_flag_rate"] == pytest.approx(np.mean(inside[name] > threshold), abs=1e-9), name
        assert 0.0 <= row["fpr_at_95_tpr"] <= 1.0
    assert sum(o["histogram"]["out"]) == 6 and sum(o["histogram"]["in"]) == 10
    assert {e["path"] for e in o["examples"]} <= {str(p) for p in ood_dir.glob("*.png")}
    html = (run / "eval" / "report.html").read_text()
    assert "Unknown images (open-set rejection)" in html and "On your outliers (6 images" in html
    assert html.count('alt="outlier"') == len(o["examples"]) > 0
    assert "AUROC" in out and "(chosen)" in out


def test_old_bundle_without_a_profile_still_evaluates(tiny, capsys):
    root, data, _ = tiny
    run = _copy_run(tiny, "old")
    assert not (run / "bundle" / REFERENCE_FILE).exists()
    m = evaluate(run, data, reference=False, report=False, **FAST)  # no page: the profile is the subject
    assert "reference" not in m and "ood" not in m
    assert not (run / "bundle" / REFERENCE_FILE).exists() and "reference" not in load_bundle(run).extra
    # --ood on it without touching the bundle: a profile is built from val in memory, nothing written
    ood_dir = root / "outliers-old"
    _write_outliers(ood_dir)
    m = evaluate(run, data, update_bundle=False, ood=ood_dir, report=False, **FAST)
    assert m["ood"]["n_images"] == 6 and m["reference"]["n_images"] == 12
    assert not (run / "bundle" / REFERENCE_FILE).exists()


def test_bad_ood_folder_is_one_line(tiny, capsys):
    root, data, run = tiny
    code = run_command(app, ["evaluate", str(run), "--data", str(data), "--ood", str(root / "nowhere")])
    err = capsys.readouterr().err
    assert code == 2 and "nowhere" in err and "Traceback" not in err
    empty = root / "empty-ood"
    empty.mkdir()
    with pytest.raises(Exception, match="holds no image"):
        evaluate(_copy_run(tiny, "empty"), data, ood=empty, reference=False, **FAST)


def test_train_writes_the_profile_for_every_new_bundle(tmp_path, capsys):
    from sightline.train.fit import train

    data = _write_dataset(tmp_path / "data")
    run = train(data, tmp_path / "run", model="test_efficientnet", weights="none", epochs=1, input_size=32,
                batch_size=8, num_workers=0, progress=True)
    bundle = load_bundle(run)
    profile = load_reference(bundle.path)
    assert profile is not None and profile.logits.shape == (12, 2) and profile.bank.shape[0] == 12
    assert profile.temperature == bundle.temperature == 1.0  # not calibrated yet: evaluate refreshes it
    assert bundle.extra["reference"]["ood"]["score"] == profile.ood_choice.score
    assert "open-set score:" in capsys.readouterr().err  # the choice and the stand-ins' rejection, said
    quiet = train(data, tmp_path / "quiet", model="test_efficientnet", weights="none", epochs=1, input_size=32,
                  batch_size=8, num_workers=0, progress=False, reference=False)
    assert not (quiet / "bundle" / REFERENCE_FILE).exists() and "reference" not in load_bundle(quiet).extra
