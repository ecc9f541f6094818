"""`evaluate` end to end on a tiny dataset made here, checked against an independent recomputation."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import accuracy_score, f1_score, recall_score

from sightline.bundle import Bundle, Preprocessing, load_bundle
from sightline.cli import main
from sightline.decision import decide
from sightline.errors import DatasetError
from sightline.evaluate.run import evaluate
from sightline.models.factory import create_model

CLASSES = ["blue", "red", "spot"]
# reference=False: the monitor's profile (stand-in outliers scored, ~0.2 s a bundle) is test_eval_reference*'s subject
FAST = dict(n_bootstrap=50, robustness_images=6, severities=(2,), progress=False, gallery_per_group=1, reference=False)


def _image(rng: np.random.Generator, label: str) -> tuple[np.ndarray, np.ndarray | None]:
    a = (rng.random((32, 32, 3)) * 60 + 80).astype(np.uint8)
    mask = None
    if label == "red":
        a[..., 0] += 90
    elif label == "blue":
        a[..., 2] += 90
    else:
        y, x = rng.integers(2, 20, 2)
        a[y : y + 10, x : x + 10] = 250
        mask = np.zeros((32, 32), dtype=bool)
        mask[y : y + 10, x : x + 10] = True
    return a, mask


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalrun")
    data = root / "data"
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 8), ("test", 8)):
        for c in CLASSES:
            folder = data / split / c
            folder.mkdir(parents=True)
            for i in range(n):
                a, mask = _image(rng, c)
                Image.fromarray(a).save(folder / f"{c}{i}.png")
                if mask is not None:
                    Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"{c}{i}.mask.png")
    (data / "sightline.yaml").write_text(
        "task: Tell colours and spots apart.\n"
        "costs:\n  spot: {false_positive: 1, false_negative: 10}\n"
        "targets:\n  - {metric: recall, class: spot, min: 0.9}\n  - {metric: accuracy, min: 0.5}\n"
    )
    torch.manual_seed(0)
    pre = Preprocessing(input_size=32, crop_pct=1.0)
    model = create_model("test_efficientnet", len(CLASSES), weights="none")
    from sightline.data.transforms import eval_preprocess, stack

    files = [(p, CLASSES.index(p.parent.name)) for p in sorted((data / "train").glob("*/*.png"))
             if not p.name.endswith(".mask.png")]
    x = torch.from_numpy(stack([eval_preprocess(Image.open(p).convert("RGB"), pre) for p, _ in files]))
    y = torch.tensor([c for _, c in files])
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    model.train()
    for _ in range(8):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    run = root / "run"
    Bundle("test_efficientnet", CLASSES, preprocessing=pre).save(run / "bundle", model.state_dict())
    metrics = evaluate(run, data, **FAST)
    return root, data, run, metrics


@pytest.fixture
def no_pictures(monkeypatch):
    """report.html without its pictures, for tests that read the page's text or none of it: no matplotlib plots
    (about a second a page; every image left empty) and each gallery image one white pixel (the heatmaps are still
    computed; what is skipped is their optimized PNG encoding, ~10 ms an image, two a gallery row, made even when no
    report is written). test_metrics_json_contract_and_files checks the real pictures of the setup's page."""
    from collections import defaultdict

    from sightline.evaluate import report
    from sightline.explain import gallery

    pixel = gallery.png_base64(np.full((1, 1, 3), 255, dtype=np.uint8))
    monkeypatch.setattr(report, "plots", lambda r: defaultdict(str))
    monkeypatch.setattr(gallery, "png_base64", lambda array, *, size=None: pixel)


def test_metrics_json_contract_and_files(setup):
    root, data, run, m = setup
    on_disk = json.loads((run / "eval" / "metrics.json").read_text())
    for key in ("split", "n_images", "accuracy", "balanced_accuracy", "macro_f1", "per_class", "confusion_matrix",
                "ece", "ece_uncalibrated", "pointing_game", "ci", "targets", "review", "robustness"):
        assert key in on_disk, key
    assert on_disk["split"] == "test" and on_disk["n_images"] == 24
    assert set(on_disk["per_class"]) == set(CLASSES)
    assert set(on_disk["per_class"]["spot"]) >= {"precision", "recall", "f1", "support"}
    assert on_disk["confusion_matrix"]["labels"] == CLASSES
    assert np.asarray(on_disk["confusion_matrix"]["matrix"]).sum() == 24
    pg = on_disk["pointing_game"]  # its value: test_metrics_match_an_independent_recomputation
    assert set(pg["per_class"]) == {"spot"} and pg["n_images"] == pg["per_class"]["spot"]["n_images"] == 8
    # the two targets of sightline.yaml, each judged on the test figure it names
    recall, accuracy = on_disk["targets"]
    assert (recall["metric"], recall["class"], recall["min"]) == ("recall", "spot", 0.9)
    assert (accuracy["metric"], accuracy["class"], accuracy["min"]) == ("accuracy", None, 0.5)
    assert recall["value"] == pytest.approx(on_disk["per_class"]["spot"]["recall"])
    assert accuracy["value"] == pytest.approx(on_disk["accuracy"])
    assert recall["passed"] is (recall["value"] >= 0.9) and accuracy["passed"] is (accuracy["value"] >= 0.5)
    html = (run / "eval" / "report.html").read_text()
    assert "data:image/png;base64," in html and "http://" not in html and "https://" not in html
    assert "Targets:" in html and "Gallery" in html
    card = (run / "bundle" / "MODEL_CARD.md").read_text()
    assert "Failure modes" in card and "recall of spot >= 0.9" in card


def _images(data: Path, split: str) -> list[Path]:
    return [p for p in sorted((data / split).glob("*/*.png")) if not p.name.endswith(".mask.png")]


def _inputs(files: list[Path], pre: Preprocessing) -> torch.Tensor:
    from sightline.data.transforms import eval_preprocess, stack

    return torch.from_numpy(stack([eval_preprocess(Image.open(p).convert("RGB"), pre) for p in files]))


def test_metrics_match_an_independent_recomputation(setup):
    root, data, run, m = setup
    bundle = load_bundle(run)  # evaluation stored the val-fitted temperature and thresholds here
    assert bundle.thresholds["chosen_on"] == "val" and bundle.temperature == pytest.approx(m["temperature"])
    assert bundle.metrics["test"]["n_images"] == 24
    model = bundle.load_model()
    files = _images(data, "test")
    with torch.no_grad():
        logits = model(_inputs(files, bundle.preprocessing)).numpy()
    y = np.array([CLASSES.index(p.parent.name) for p in files])
    pred = decide(logits, CLASSES, temperature=bundle.temperature, thresholds=bundle.thresholds).labels
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro", labels=[0, 1, 2], zero_division=0))
    assert m["argmax_accuracy"] == pytest.approx(accuracy_score(y, logits.argmax(1)))
    assert m["targets"][0]["value"] == pytest.approx(recall_score(y, pred, labels=[2], average=None)[0])


def test_spot_threshold_minimises_the_expected_cost_on_val(setup):
    """sightline.yaml makes a missed spot cost 10 and asks for spot recall >= 0.9: among all thresholds on spot's
    calibrated probability (or none: arg-max alone), the one chosen must reach that recall on val at the lowest
    cost per image. Recomputed here from the bundle's own val logits, temperature and the costs of the yaml."""
    root, data, run, m = setup
    bundle = load_bundle(run)
    files = _images(data, "val")
    with torch.no_grad():
        z = bundle.load_model()(_inputs(files, bundle.preprocessing)).numpy().astype(np.float64) / bundle.temperature
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = np.array([CLASSES.index(f.parent.name) for f in files])
    spot = CLASSES.index("spot")
    fn, fp = np.array([1.0, 1.0, 10.0]), np.ones(3)

    def outcome(t: float | None, slack: float = 0.0) -> tuple[float, float]:
        """(val recall of spot, mean cost) when spot is predicted wherever p(spot) >= t, else the arg-max."""
        pred = p.argmax(1) if t is None else np.where(p[:, spot] >= t - slack, spot, p.argmax(1))
        wrong = pred != y
        return float((pred[y == spot] == spot).mean()), float((fn[y[wrong]].sum() + fp[pred[wrong]].sum()) / len(y))

    feasible = [cost for recall, cost in map(outcome, [None, *np.unique(p[:, spot])]) if recall >= 0.9]
    details = bundle.thresholds["details"]["spot"]
    chosen = details["threshold"]
    assert details["rule"] == "minimum expected cost" and details["reachable"] is True
    assert bundle.thresholds["class_thresholds"].get("spot") == chosen  # absent when arg-max alone was cheapest
    recall, cost = outcome(chosen, slack=1e-5)  # chosen a hair below an observed probability; ours differ by ~1e-7
    assert recall >= 0.9 and cost == pytest.approx(min(feasible))
    assert details["val"]["recall"] == pytest.approx(recall, abs=1e-4)


def test_pointing_game_is_the_share_of_heatmap_peaks_on_the_spot(setup):
    """The share of test spot images whose Grad-CAM peak for "spot" (on the layer evaluate explains) lies within
    15 px at 224 px, i.e. 2 px here, of the spot; scored here from pytorch-grad-cam's maps and the mask files."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from scipy.ndimage import distance_transform_edt

    from sightline.explain.cam import find_target_layer

    root, data, run, m = setup
    bundle = load_bundle(run)
    spot = CLASSES.index("spot")
    spots = [f for f in _images(data, "test") if f.parent.name == "spot"]
    model = bundle.load_model().eval()
    with GradCAM(model=model, target_layers=[find_target_layer(model, input_size=32)]) as cam:
        maps = cam(input_tensor=_inputs(spots, bundle.preprocessing), targets=[ClassifierOutputTarget(spot)] * 8)
    hits = []
    for heat, f in zip(maps, spots):
        near = distance_transform_edt(np.asarray(Image.open(f.with_name(f.stem + ".mask.png"))) <= 127) <= 2
        hits.append(bool((near & (heat >= heat.max() - 1e-6)).any()))
    pg = m["pointing_game"]
    assert pg["tolerance_px"] == 2 and pg["overall"] == pytest.approx(np.mean(hits))
    assert pg["per_class"]["spot"]["pointing_game"] == pytest.approx(np.mean(hits))


def test_no_report_makes_no_gallery_and_the_same_region_scores(setup, tmp_path, monkeypatch):
    """The gallery's heatmaps and pictures only show in report.html: without a report (report=False, and every seed
    but the first of a multi-seed run) they were made and thrown away. The region scores, which metrics.json holds,
    are still made from the true class's heatmaps of the 8 test spot images."""
    import sightline.explain.orchestrate as orchestrate

    root, data, run, m = setup
    made: list[int] = []
    real = orchestrate.crop_cams
    monkeypatch.setattr(orchestrate, "crop_cams", lambda model, crops, labels, **kw: (
        made.append(len(labels)), real(model, crops, labels, **kw))[1])
    settings = {**FAST, "robustness": False, "update_bundle": False}
    quiet = evaluate(run, data, out=tmp_path / "quiet", **settings, report=False)
    assert sum(made) == 8 and not (tmp_path / "quiet" / "report.html").exists()
    assert quiet["pointing_game"] == m["pointing_game"]
    made.clear()
    evaluate(run, data, out=tmp_path / "full", **settings)  # the report's gallery: one image per class and group
    assert sum(made) > 8 and "<img" in (tmp_path / "full" / "report.html").read_text()


def test_class_mismatch_is_one_line(setup, tmp_path):
    root, data, run, m = setup
    other = tmp_path / "other"
    shutil.copytree(data / "test", other / "test")
    (other / "test" / "red").rename(other / "test" / "green")
    with pytest.raises(DatasetError, match=r"dataset has \['green'\].*model has \['red'\]"):
        evaluate(run, other, **FAST)
    assert main_rc(["evaluate", str(run), "--data", str(other)]) == 2


def main_rc(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code


def test_multi_seed_mean_std(setup, tmp_path, no_pictures):
    root, data, run, m = setup
    seeds = tmp_path / "seeds"
    for s in (0, 1):
        shutil.copytree(run / "bundle", seeds / f"seed-{s}" / "bundle")
    b = load_bundle(seeds / "seed-1")  # make the second seed a different model
    from safetensors.torch import load_file, save_file

    state = load_file(str(b.weights_path))
    state = {k: (v + 0.3 * torch.randn_like(v) if v.is_floating_point() and v.ndim > 1 else v) for k, v in state.items()}
    save_file(state, str(b.weights_path))
    out = evaluate(seeds, data, **{**FAST, "robustness": False})
    per = out["seeds"]["per_seed"]
    assert out["seeds"]["n_seeds"] == 2 and [p["seed"] for p in per] == ["0", "1"]
    acc = [p["accuracy"] for p in per]
    assert out["seeds"]["mean"]["accuracy"] == pytest.approx(np.mean(acc))
    assert out["seeds"]["std"]["accuracy"] == pytest.approx(np.std(acc, ddof=1))
    assert (seeds / "eval" / "metrics.json").is_file() and (seeds / "seed-1" / "eval" / "metrics.json").is_file()
    assert "seeds" in (seeds / "eval" / "report.html").read_text()


def test_multi_seed_scans_once_and_decodes_each_image_once(setup, tmp_path, monkeypatch, no_pictures):
    """Two seeds cost one scan and no more decodes than a single run (not twice its 48+), and give that run's
    figures."""
    import sightline.data.datasets as datasets
    import sightline.data.images as images

    root, data, run, m = setup
    seeds = tmp_path / "seeds"
    for s in (0, 1):
        shutil.copytree(run / "bundle", seeds / f"seed-{s}" / "bundle")
    calls = {"scan": 0, "decode": 0}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(datasets, "scan_dataset", counted("scan", datasets.scan_dataset))
    monkeypatch.setattr(images, "load_image", counted("decode", images.load_image))
    settings = {**FAST, "update_bundle": False, "report": False}
    single = evaluate(run, data, out=tmp_path / "single", **settings)
    one_run = dict(calls)
    assert one_run["scan"] == 1 and one_run["decode"] >= 48  # 24 val + 24 test images, then a few reloads
    calls.update(scan=0, decode=0)
    out = evaluate(seeds, data, **settings)
    assert calls["scan"] == 1
    assert calls["decode"] <= one_run["decode"]  # not once per seed
    assert [p["accuracy"] for p in out["seeds"]["per_seed"]] == [single["accuracy"]] * 2  # same weights
    for key in ("confusion_matrix", "ece", "thresholds", "pointing_game", "robustness"):
        assert out[key] == single[key], key


def test_cli_evaluate_json_and_init(setup, tmp_path, capsys, no_pictures):
    root, data, run, m = setup
    rc = main_rc(["evaluate", str(run), "--data", str(data), "--json", "--no-robustness", "--bootstrap", "20",
                  "--out", str(tmp_path / "ev"), "--no-update"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["n_images"] == 24 and (tmp_path / "ev" / "report.html").is_file()
    fresh = tmp_path / "fresh"
    shutil.copytree(data / "val", fresh / "val")
    assert main_rc(["init", str(fresh)]) == 0
    assert "class: spot" in (fresh / "sightline.yaml").read_text()
    assert main_rc(["init", str(fresh)]) == 2


def test_unreadable_image_is_reported_not_fatal(setup, tmp_path, no_pictures):
    root, data, run, m = setup
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    good = (copy / "test" / "red" / "red0.png").read_bytes()
    (copy / "test" / "red" / "truncated.png").write_bytes(good[: len(good) // 2])  # valid header, cut data
    out = evaluate(run, copy, **{**FAST, "robustness": False, "report": False, "update_bundle": False},
                   out=tmp_path / "ev")
    assert out["n_images"] == 24
    assert [Path(u["path"]).name for u in out["unreadable"]] == ["truncated.png"]


def test_unknown_heatmap_method_fails_before_any_work(tmp_path):
    from sightline.errors import SightlineError
    from sightline.evaluate.run import evaluate

    with pytest.raises(SightlineError, match="nope"):  # raised before the (missing) bundle is even looked at
        evaluate(tmp_path / "no-run", tmp_path / "no-data", method="nope")


def test_report_says_where_thresholds_came_from(setup, tmp_path, no_pictures):
    root, data, run, m = setup
    assert m["review"]["chosen_on"] == "val"
    assert "thresholds and temperature chosen on val" in (run / "eval" / "report.html").read_text()
    no_val = tmp_path / "data"  # without a val split the bundle's thresholds are kept, and the report says so
    shutil.copytree(data / "test", no_val / "test")
    out = evaluate(run, no_val, **{**FAST, "robustness": False, "update_bundle": False}, out=tmp_path / "ev")
    html = (tmp_path / "ev" / "report.html").read_text()
    assert out["review"]["chosen_on"] == "bundle" and out["temperature"] == pytest.approx(m["temperature"])
    assert "thresholds and temperature kept from the bundle" in html and "chosen on val" not in html
