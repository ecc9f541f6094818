"""ONNX export + parity, int8 quantization, the predictor, `sightline predict` and `bench` on a tiny bundle."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from sightline.bundle import Bundle, Preprocessing, load_bundle
from sightline.cli import main
from sightline.models.factory import create_model

CLASSES = ["dark", "light"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, make_dataset):
    """(run, data, (exit code, stdout, stderr)): `sightline export RUN --int8 --data DATA` once for the module, in a
    folder whose name is rich markup ('d[' / ']s [v2]'), so the same export also shows that the command prints the
    paths it was given as they are (test_export_and_predict_print_a_bracketed_path_as_it_is)."""
    import contextlib
    import io

    root = tmp_path_factory.mktemp("export") / "d[" / "]s [v2]"
    data = make_dataset(root / "data")
    torch.manual_seed(0)
    model = create_model("test_efficientnet", len(CLASSES), weights="none")
    Bundle("test_efficientnet", CLASSES, Preprocessing(32)).save(root / "run" / "bundle", model.state_dict())
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exc:
        main(["export", str(root / "run"), "--int8", "--data", str(data)])
    assert exc.value.code == 0, err.getvalue()
    return root / "run", data, (exc.value.code, out.getvalue(), err.getvalue())


def test_export_and_predict_print_a_bracketed_path_as_it_is(exported, tmp_path, run_cli):
    """export and predict print the paths they were given as they are: they went through rich markup, so a folder 'd['
    holding ']s' (a path with '[/]') ended in a MarkupError traceback, and 'data [v2]' lost its '[v2]'."""
    run, data, (code, out, err) = exported
    assert code == 0 and "Traceback" not in err
    assert f"images from {data / 'val'}" in out
    csv = tmp_path / "d[" / "]s [v2]" / "p.csv"
    code, captured = run_cli(["predict", str(run), str(data / "test"), "--out", str(csv)])
    assert code == 0 and f"written to {csv}" in captured.err


def test_export_parity_recorded_and_dynamic_batch(exported):
    import onnxruntime as ort

    run, data, _ = exported
    bundle = load_bundle(run)
    stored = bundle.extra["export"]
    assert stored["parity"]["ok"] and stored["parity"]["split"] == "val"
    assert stored["parity"]["n_images"] == 8 and stored["parity"]["top1_agreement"] == 1.0
    assert stored["parity"]["max_abs_diff"] < 1e-4
    # independent check at a batch size the export never saw (dynamic axis)
    x = np.random.default_rng(1).standard_normal((5, 3, 32, 32)).astype(np.float32)
    session = ort.InferenceSession(str(bundle.onnx_path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "features", "cam"]
    logits, features, cam = session.run(None, {session.get_inputs()[0].name: x})
    model = bundle.load_model()
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
        fmap = model.forward_features(torch.from_numpy(x))
        pooled = fmap.mean(dim=(2, 3)).numpy()  # the penultimate vector: global average pool of the last map
        top = ref.argmax(1)
        ref_cam = torch.einsum("nchw,nc->nhw", fmap, model.get_classifier().weight[top]).numpy()
    np.testing.assert_allclose(logits, ref, atol=1e-4)
    np.testing.assert_allclose(features, pooled, atol=1e-4)
    np.testing.assert_allclose(cam, ref_cam, atol=1e-3)
    assert stored["parity"]["features"]["max_abs_diff"] < 1e-4 and stored["parity"]["cam"]["max_abs_diff"] < 1e-3


def test_parity_check_catches_a_wrong_graph(exported):
    from sightline.optimize.export import check_parity

    run, _, _ = exported
    bundle = load_bundle(run)
    other = bundle.load_model()
    with torch.no_grad():
        other.get_classifier().bias += 1.0  # a graph that is off by a constant: must fail
    x = np.random.default_rng(2).standard_normal((4, 3, 32, 32)).astype(np.float32)
    result = check_parity(other, bundle.onnx_path, x)
    assert not result["ok"] and result["max_abs_diff"] == pytest.approx(1.0, abs=1e-3)


def test_int8_model_runs_and_is_recorded(exported):
    import onnxruntime as ort

    from sightline.optimize.quantize import accuracy_and_ece

    run, data, _ = exported
    bundle = load_bundle(run)
    q = bundle.extra["export"]["int8"]
    assert bundle.int8_path.is_file() and q["format"] == "qdq"
    assert q["calibration"] == {"split": "val", "n_images": 8, "method": "percentile 99.999"}
    assert q["test"]["split"] == "test" and q["test"]["n_images"] == 8
    assert q["size_bytes"]["int8"] < q["size_bytes"]["fp32"]
    ops = {n.op_type for n in __import__("onnx").load(str(bundle.int8_path)).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    # int8 against fp32 on the same real inputs (every image of the dataset, eval preprocessing): the same top-1
    # class for at least 95 % of them (24 images: one flip allowed), margins that move together, and the agreement
    # export recorded on the test split is the one found here.
    from sightline.data.images import load_image
    from sightline.data.transforms import eval_preprocess, stack

    files = {s: sorted((data / s).rglob("*.*")) for s in ("train", "val", "test")}
    x = {s: stack([eval_preprocess(load_image(f), bundle.preprocessing) for f in fs]) for s, fs in files.items()}
    fp32 = ort.InferenceSession(str(bundle.onnx_path), providers=["CPUExecutionProvider"])
    int8 = ort.InferenceSession(str(bundle.int8_path), providers=["CPUExecutionProvider"])
    ref = {s: fp32.run(["logits"], {fp32.get_inputs()[0].name: v})[0] for s, v in x.items()}
    got = {s: int8.run(["logits"], {int8.get_inputs()[0].name: v})[0] for s, v in x.items()}
    ref_all, got_all = np.concatenate(list(ref.values())), np.concatenate(list(got.values()))
    assert got_all.shape == ref_all.shape == (24, 2)
    assert set(ref_all.argmax(1)) == {0, 1}  # the fp32 model predicts both classes: agreement is not a given
    assert (got_all.argmax(1) == ref_all.argmax(1)).mean() >= 0.95
    margins = np.corrcoef(ref_all[:, 1] - ref_all[:, 0], got_all[:, 1] - got_all[:, 0])[0, 1]
    assert margins >= 0.98
    assert q["test"]["top1_agreement"] == pytest.approx((got["test"].argmax(1) == ref["test"].argmax(1)).mean())
    # accuracy/ECE helper vs a hand computation on a case with a known answer
    logits = np.array([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    labels = np.array([0, 1, 1])
    m = accuracy_and_ece(logits, labels)
    p = 1 / (1 + np.exp(-2.0))  # every prediction has confidence p; 2 of 3 correct
    assert m["accuracy"] == pytest.approx(2 / 3) and m["ece"] == pytest.approx(abs(p - 2 / 3), abs=1e-6)


def test_predictors_agree_and_bad_files_become_rows(exported, tmp_path):
    from sightline.inference import open_engine

    run, data, _ = exported
    bundle = load_bundle(run)
    files = sorted((data / "test").rglob("*.*"))
    (tmp_path / "notes.jpg").write_text("not an image")
    good = files[0].read_bytes()
    (tmp_path / "cut.png").write_bytes((files[0] if files[0].suffix == ".png" else files[1]).read_bytes()[:60])
    sources = files + [tmp_path / "notes.jpg", tmp_path / "cut.png", tmp_path / "missing.jpg", good]
    with open_engine(bundle, backend="onnx") as onnx, open_engine(bundle, backend="torch") as eager:
        onnx_rows = onnx.predict_files(sources, batch_size=3, keep_outputs=True)
        torch_rows = eager.predict_files(sources, batch_size=5, keep_outputs=True)
    assert [r.filename for r in onnx_rows][: len(files)] == [str(f) for f in files]
    assert [r.error is not None for r in onnx_rows] == [False] * len(files) + [True, True, True, False]
    assert "NotAnImageError" in onnx_rows[len(files)].error
    for a, b in zip(onnx_rows, torch_rows):
        assert a.label == b.label
        if a.confidence is not None:
            assert a.confidence == pytest.approx(b.confidence, abs=1e-4)
            # the features and CAM come from the same pass, and agree between the backends
            np.testing.assert_allclose(a.output.features, b.output.features, atol=1e-4)
            np.testing.assert_allclose(a.output.cams, b.output.cams, atol=1e-3)
        else:
            assert a.output is None


def test_predict_cli_csv_and_json(exported, tmp_path, capsys):
    run, data, _ = exported
    folder = tmp_path / "in"
    folder.mkdir()
    for f in sorted((data / "val" / "dark").iterdir())[:2]:
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 20)
    out = tmp_path / "preds.csv"
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(run), str(folder), "--out", str(out), "--batch-size", "2"])
    assert exc.value.code == 0
    import csv

    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert len(rows) == 3
    broken = [r for r in rows if r["filename"].endswith("broken.jpg")][0]
    assert broken["error"] and not broken["label"]
    assert all(r["label"] in CLASSES and not r["error"] for r in rows if r is not broken)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(run), str(folder / "*.png"), "--format", "json", "--int8"])
    assert exc.value.code == 0
    got = json.loads(capsys.readouterr().out)
    assert len(got) == 1 and got[0]["decision"] in ("accept", "review") and len(got[0]["top_k"]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(run), str(tmp_path / "nothing*.jpg")])
    assert exc.value.code == 2
    # --features: the readable images' pooled features from the same pass, in the order of their rows; with no
    # readable image still (0, D) (it was (0, 0))
    session = ort.InferenceSession(str(run / "bundle" / "model.onnx"))
    width = next(o.shape[1] for o in session.get_outputs() if o.name == "features")
    for inputs, n in ((folder, 2), (folder / "broken.jpg", 0)):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            main(["predict", str(run), str(inputs), "--out", str(tmp_path / "p.csv"), "--features",
                  str(tmp_path / "f.npz")])
        assert exc.value.code == 0
        with np.load(tmp_path / "f.npz") as saved:
            assert saved["features"].shape == (n, width) and saved["features"].dtype == np.float32
            assert [Path(f).name for f in saved["filenames"]] == sorted(p.name for p in folder.iterdir()
                                                                        if p.name != "broken.jpg")[:n]


def test_bench_reports_every_backend(exported, monkeypatch):
    import time

    import onnxruntime as ort

    from sightline.optimize.bench import bench, synthetic_jpegs

    # A known cost: every ONNX Runtime call sleeps `delay_ms` first. Both ONNX backends must then report at least
    # that much inference time per batch (and not several batches' worth), at most the throughput it allows, and
    # speed-ups that are the ratios of the reported throughputs.
    delay_ms = 50.0
    ort_run = ort.InferenceSession.run

    def slow_run(self, *args, **kwargs):
        time.sleep(delay_ms / 1000)
        return ort_run(self, *args, **kwargs)

    monkeypatch.setattr(ort.InferenceSession, "run", slow_run)
    run, _, _ = exported
    bundle = load_bundle(run)
    report = bench(run, images=synthetic_jpegs(4, size=(64, 48)), batch_sizes=(1, 4), time_budget_s=0.05,
                   max_repeats=3)
    files = {"torch": bundle.weights_path, "onnx": bundle.onnx_path, "onnx-int8": bundle.int8_path}
    for backend, path in files.items():
        entry = report["results"][backend]
        assert entry["model_bytes"] == path.stat().st_size
        for b in (1, 4):
            r = entry[str(b)]
            stages = r["stages_p50_ms"]
            assert set(stages) == {"decode", "preprocess", "inference", "postprocess"}
            assert r["p95_ms"] >= r["p50_ms"] >= stages["inference"]
            if backend == "torch":
                continue
            assert delay_ms <= stages["inference"] < 3 * delay_ms
            assert r["images_per_s"] <= b * 1000 / delay_ms
            torch_ips = report["results"]["torch"][str(b)]["images_per_s"]
            assert report["speedup"][f"{backend}_vs_torch_batch{b}"] == pytest.approx(r["images_per_s"] / torch_ips,
                                                                                      abs=0.01)
    # each side states what it ran: the eager baseline as PyTorch's tuning guide has it, threads, the int8 format
    assert "channels-last" in report["results"]["torch"]["settings"]
    assert "inference_mode" in report["results"]["torch"]["settings"]
    assert "QDQ" in report["results"]["onnx-int8"]["settings"]
    assert all("intra-op threads" in report["results"][b]["settings"] for b in ("torch", "onnx", "onnx-int8"))
    assert "threads" in report["pipeline"]


def test_int8_without_data_is_refused_before_anything_is_written(tmp_path):
    from sightline.errors import DatasetError
    from sightline.optimize.export import export

    model = create_model("test_efficientnet", 2, weights="none")
    folder = Bundle("test_efficientnet", CLASSES, Preprocessing(32)).save(tmp_path / "b", model.state_dict())
    with pytest.raises(DatasetError, match="no dataset given or recorded.*--data"):
        export(folder, int8=True)
    assert not (folder / "model.onnx").exists() and "export" not in load_bundle(folder).extra
    # a run whose dataset has moved since training: said so, not "no dataset" (export and distill alike)
    (tmp_path / "config.yaml").write_text(f"data_dir: {tmp_path / 'moved'}\n")
    with pytest.raises(DatasetError, match=f"the run's dataset '{tmp_path / 'moved'}' is not there any more"):
        export(folder, int8=True)


def test_distill_names_a_recorded_dataset_that_has_moved(tmp_path, run_cli):
    model = create_model("test_efficientnet", 2, weights="none")
    Bundle("test_efficientnet", CLASSES, Preprocessing(32)).save(tmp_path / "bundle", model.state_dict())
    (tmp_path / "config.yaml").write_text(f"data_dir: {tmp_path / 'moved'}\n")
    code, out = run_cli(["distill", str(tmp_path), "--student", "test_efficientnet"])
    assert code == 2 and f"the run's dataset '{tmp_path / 'moved'}' is not there any more" in out.err


def test_bench_refuses_batch_sizes_below_one(exported):
    from sightline.errors import SightlineError
    from sightline.optimize.bench import bench

    run, _, _ = exported
    with pytest.raises(SightlineError, match="batch sizes"):
        bench(run, batch_sizes=(0,))


def test_export_with_unusable_data_leaves_the_previous_onnx_untouched(exported, tmp_path):
    import shutil

    from sightline.errors import DatasetError
    from sightline.optimize.export import export

    run, _, _ = exported
    copy = shutil.copytree(load_bundle(run).path, tmp_path / "bundle")
    (copy / "model.onnx").write_bytes(b"previous export")  # a sentinel a new export would overwrite
    (tmp_path / "empty" / "val").mkdir(parents=True)
    with pytest.raises(DatasetError):
        export(copy, data_dir=tmp_path / "empty")
    assert (copy / "model.onnx").read_bytes() == b"previous export"


def test_split_arrays_decode_like_the_server_and_report_unreadable_files(exported, tmp_path):
    # export's parity / int8 figures must come from the same pixels `predict` and `serve` see: a JPEG much larger
    # than the input decodes in draft mode there, so it must here too. A broken file is reported, not dropped.
    from PIL import Image

    from sightline.data.splits import load_split
    from sightline.inference import open_engine

    run, _, _ = exported
    bundle = load_bundle(run)
    rng = np.random.default_rng(1)
    for c in CLASSES:
        (tmp_path / "val" / c).mkdir(parents=True)
        big = np.clip(rng.normal(128, 60, (300, 400, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(big).save(tmp_path / "val" / c / "big.jpg", quality=90)
    (tmp_path / "val" / "dark" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    arrays = load_split(tmp_path, "val", classes=bundle.classes, preprocessing=bundle.preprocessing)
    assert arrays.names == ["val/dark/big.jpg", "val/light/big.jpg"]
    assert arrays.y.tolist() == [0, 1]
    assert [Path(s["path"]).name for s in arrays.skipped] == ["broken.jpg"]
    with open_engine(bundle, backend="onnx") as engine:
        served = engine.prepare((tmp_path / "val" / "dark" / "big.jpg").read_bytes())
    np.testing.assert_array_equal(engine.to_batch(arrays.crops)[0], served)


@pytest.mark.parametrize("name", ["model.onnx", "model.onnx.tmp", "model.int8.onnx"])
def test_a_folder_where_the_graph_goes_is_refused_before_the_export(tmp_path, run_cli, name):
    """A folder named model.onnx was found only after the export, reported as 'model.onnx.tmp is a folder', and the
    13 MB .tmp graph stayed beside the bundle."""
    model = create_model("test_efficientnet", 2, weights="none")
    folder = Bundle("test_efficientnet", CLASSES, Preprocessing(32)).save(tmp_path / "b", model.state_dict())
    (folder / name).mkdir()
    code, out = run_cli(["export", str(folder), "--int8", "--data", str(tmp_path)])
    assert code == 2 and f"'{folder / name}' is a folder where the exported model file goes" in out.err, out
    assert "Nothing was exported" in out.err and len(out.err.strip().splitlines()) == 1
    assert sorted(p.name for p in folder.iterdir()) == sorted(["model.json", "weights.safetensors", name])
