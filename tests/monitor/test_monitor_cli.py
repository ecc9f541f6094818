"""`sightline monitor BUNDLE --database URL`: monitor.json and a self-contained monitor.html from a database the
server's own code filled (decode with statistics, forward pass, open-set score, signals row), checked against
independent computations; and the bad inputs: an empty database, a bundle without a profile, windows below the
minimum, a --since that is not a date."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import shutil
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
import torch
from PIL import Image
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))
from serve_tiny import CLASSES, make_bundle, noise, pg_options, postgres_url

from sightline.bundle import load_bundle

BLOCK = 30


def calm(seed: int) -> bytes:
    """serve_tiny.calm's kind of image, but drawing the gradient before the colour: the figures asserted below
    (e.g. how many windows are significant) were fixed on these very images."""
    rng = np.random.default_rng(seed)
    h, w = 48, 64
    ramp = np.linspace(-1, 1, w)[None, :, None] * rng.uniform(-30, 30, 3)
    pixels = np.clip(rng.uniform(60, 200, 3) + ramp + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A tiny bundle with a reference profile (calm images; open-set score chosen against noise) and a SQLite
    database filled the way the server fills it: 2 blocks of calm images, then 2 of noise, 5 of them labelled
    by a reviewer."""
    from sightline.inference import open_engine
    from sightline.monitor.observe import load_observed
    from sightline.monitor.reference import build_reference
    from sightline.serve.monitoring import Observer, profile_fingerprint
    from sightline.storage.store import Store

    root = tmp_path_factory.mktemp("monitor-cli")
    folder = make_bundle(root / "run", seed=0, version="7")  # "pets" cat/dog/fox, review_confidence 0.99, ONNX
    bundle = load_bundle(folder)
    engine = open_engine(bundle, backend="onnx", threads=1)

    def forward(blobs):
        loaded = [load_observed(engine, b) for b in blobs]
        return engine.run(engine.to_batch(np.stack([c for c, _ in loaded]))), [s for _, s in loaded]

    val, val_stats = forward([calm(1000 + i) for i in range(60)])
    bank, _ = forward([calm(2000 + i) for i in range(60)])
    outliers, _ = forward([noise(5000 + i) for i in range(30)])
    profile = build_reference(val.logits, val.features, classes=CLASSES, image_stats=val_stats,
                              bank_features=bank.features, bank_labels=bank.logits.argmax(axis=1))
    profile.fit_ood(val.logits, val.features, outliers.logits, outliers.features)
    profile.save(folder)
    observer = Observer(profile, profile_fingerprint(folder))

    url = f"sqlite:///{root / 'sightline.db'}"
    store = Store(url)
    # fixed seeds: a clean window is a false alarm about alpha = 5 % of the time (measured 7 % on 100 windows of
    # this generator), so the seeds are chosen to give 2 clean windows
    blobs = [calm(100 + i) for i in range(2 * BLOCK)] + [noise(i) for i in range(2 * BLOCK)]
    ids, logits = [], []
    for start in range(0, len(blobs), 10):  # as the server: 10 images a request
        chunk = blobs[start:start + 10]
        out, image_stats = forward(chunk)
        preds = engine.decide(out, [f"{start + i}.jpg" for i in range(len(chunk))])
        _, unknown, signals = observer.observe(out, image_stats)
        rows = [{"request_id": f"r{start}", "filename": p.filename, "input_sha256": hashlib.sha256(b).hexdigest(),
                 "model_name": "pets", "model_version": "7", "label": p.label, "confidence": p.confidence,
                 "top_k": p.top_k, "decision": "unknown" if u else p.decision, "latency_ms": 1.0}
                for p, b, u in zip(preds, chunk, unknown)]
        ids += store.add_predictions(rows, signals)
        logits.append(out.logits)
    logits = np.concatenate(logits)
    predicted = logits.argmax(axis=1)
    labelled = ids[-5:]  # the last block: 3 reviewer labels agree with the model, 2 do not
    for i, pid in enumerate(labelled):
        truth = predicted[-5 + i] if i < 3 else (predicted[-5 + i] + 1) % len(CLASSES)
        store.record_label(pid, CLASSES[truth], reviewer="tester")
    store.close()
    engine.close()
    return {"run": folder.parent, "bundle": folder, "url": url, "profile": profile, "logits": logits, "ids": ids,
            "root": root}


@pytest.fixture
def no_plots(monkeypatch):
    """The page without its six matplotlib plots (about 2 s a report): for tests that read monitor.json or the
    page's text. The plots themselves are checked in test_report_on_a_filled_database and the thumbnails test."""
    from sightline.monitor import report

    monkeypatch.setattr(report, "plots", lambda r: {})


def test_report_on_a_filled_database(served, run_cli, tmp_path):
    out = tmp_path / "report"
    code, cap = run_cli(["monitor", str(served["run"]), "--database", served["url"], "--out", str(out),
                      "--size", str(BLOCK), "--min-window", str(BLOCK)])
    assert code == 0, cap.err
    assert "120 monitored predictions, 4 windows, 4 tested, 2 significant" in cap.out
    report = json.loads((out / "monitor.json").read_text())
    windows = report["windows"]
    assert report["n_predictions"] == report["n_monitored"] == 120 and report["messages"] == []
    assert [w["n"] for w in windows] == [BLOCK] * 4
    assert [w["last_id"] for w in windows] == served["ids"][BLOCK - 1::BLOCK]
    assert [w["significant"] for w in windows] == [False, False, True, True]
    assert [w["alert_event"] for w in windows] == [None, None, None, "fired"]  # 2 consecutive windows
    assert windows[2]["unknown_rate"] == windows[3]["unknown_rate"] == 1.0
    assert windows[0]["unknown_rate"] <= 0.1  # the threshold is the 99 % quantile of only 60 validation images
    # the BBSD p-value of a drifted window, recomputed from the logits with scipy: KS per class, Bonferroni x 3
    profile = served["profile"]
    ref = torch.softmax(torch.from_numpy(profile.logits).double(), 1).numpy()
    win = torch.softmax(torch.from_numpy(served["logits"][2 * BLOCK:3 * BLOCK]).double(), 1).numpy()
    p = min(1.0, 3 * min(stats.ks_2samp(win[:, c], ref[:, c]).pvalue for c in range(3)))
    assert windows[2]["tests"]["softmax_ks"]["p_value"] == pytest.approx(p, rel=1e-3)
    assert windows[2]["tests"]["softmax_ks"]["correction"] == "bonferroni"
    # label-free accuracy is the mean top-1 probability; measured accuracy only where reviewers labelled
    assert windows[0]["expected_accuracy"]["expected_accuracy"] == pytest.approx(
        torch.softmax(torch.from_numpy(served["logits"][:BLOCK]).double(), 1).numpy().max(1).mean(), rel=1e-4)
    assert [w["measured_accuracy"] is None for w in windows] == [True, True, True, False]
    measured = windows[3]["measured_accuracy"]
    assert measured["n"] == 5 and measured["accuracy"] == pytest.approx(0.6)
    assert measured["low"] < 0.6 < measured["high"]

    page = (out / "monitor.html").read_text()
    assert len(re.findall(r"src='data:image/png;base64,", page)) == 6  # every plot inline
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page) and "<script" not in page  # nothing external
    for title in ("Drift tests over time", "Confidence histograms", "Class mix over time", "Unknown rate",
                  "Image-statistic shifts", "Label-free and measured accuracy"):
        assert title in page


def test_calendar_windows_and_windows_below_the_minimum(served, run_cli, tmp_path, no_plots):
    """40 predictions moved to yesterday: two day windows; with a minimum of 50 yesterday's is shown, not tested,
    and the report says so."""
    from sightline.storage.store import PredictionSignal

    url = f"sqlite:///{tmp_path / 'copy.db'}"
    shutil.copy(served["url"].removeprefix("sqlite:///"), tmp_path / "copy.db")
    engine = sa.create_engine(url)
    yesterday = datetime.now(timezone.utc) - timedelta(days=1)
    with engine.begin() as conn:
        conn.execute(sa.update(PredictionSignal).where(PredictionSignal.prediction_id.in_(served["ids"][:40]))
                     .values(created=yesterday))
    engine.dispose()
    code, cap = run_cli(["monitor", str(served["bundle"]), "--database", url, "--out", str(tmp_path / "r"),
                      "--window", "day", "--min-window", "50", "--json"])
    assert code == 0, cap.err
    report = json.loads(cap.out)
    days = report["windows"]
    assert [w["n"] for w in days] == [40, 80] and [w["tested"] for w in days] == [False, True]
    assert days[0]["reason"] == "not tested: window has 40 predictions; tests need at least 50"
    assert days[0]["significant"] is None and days[1]["partial"] is True  # today is still open
    assert days[0]["start"] == yesterday.strftime("%Y-%m-%dT00:00:00+00:00")
    assert "1 of 2 windows have fewer than 50 predictions and were not tested." in report["messages"]
    page = (tmp_path / "r" / "monitor.html").read_text()
    assert "not tested: window has 40 predictions" in page
    # --since keeps today's predictions only
    code, cap = run_cli(["monitor", str(served["bundle"]), "--database", url, "--out", str(tmp_path / "s"),
                      "--window", "day", "--since", "12h", "--json"])
    assert code == 0 and [w["n"] for w in json.loads(cap.out)["windows"]] == [80]


def test_empty_database_says_so(served, run_cli, tmp_path):
    from sightline.storage.store import Store

    url = f"sqlite:///{tmp_path / 'empty.db'}"
    Store(url).close()
    code, cap = run_cli(["monitor", str(served["bundle"]), "--database", url, "--out", str(tmp_path / "r")])
    assert code == 0, cap.err
    assert "the database holds no predictions yet" in cap.out
    report = json.loads((tmp_path / "r" / "monitor.json").read_text())
    assert report["n_predictions"] == 0 and report["windows"] == []
    page = (tmp_path / "r" / "monitor.html").read_text()
    assert "the database holds no predictions yet" in page and "base64" not in page


def test_predictions_served_without_a_profile_are_named(served, run_cli, tmp_path):
    from sightline.storage.store import Store

    url = f"sqlite:///{tmp_path / 'plain.db'}"
    store = Store(url)
    store.add_predictions([{"request_id": "r", "filename": "a.jpg", "input_sha256": "0" * 64, "model_name": "pets",
                            "model_version": "7", "label": "cat", "confidence": 0.5, "top_k": [],
                            "decision": "review", "latency_ms": 1.0}])
    store.close()
    code, cap = run_cli(["monitor", str(served["bundle"]), "--database", url, "--out", str(tmp_path / "r")])
    assert code == 0 and "none of the 1 predictions was monitored" in cap.out
    assert "SIGHTLINE_MONITOR=false" in cap.out


def test_bad_input_is_one_line_and_exit_2(served, run_cli, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(served["bundle"], bare, ignore=shutil.ignore_patterns("reference.npz"))
    code, cap = run_cli(["monitor", str(bare), "--database", served["url"], "--out", str(tmp_path / "r")])
    assert code == 2 and "sightline evaluate RUN --data DATA" in cap.err and "reference.npz" in cap.err
    assert len(cap.err.strip().splitlines()) == 1 and not (tmp_path / "r").exists()
    code, cap = run_cli(["monitor", str(served["bundle"]), "--database", served["url"], "--since", "last tuesday"])
    assert code == 2 and "--since 'last tuesday'" in cap.err
    code, cap = run_cli(["monitor", str(served["bundle"]), "--database", served["url"], "--window", "week"])
    assert code == 2 and "--window 'week'" in cap.err
    code, cap = run_cli(["monitor", str(served["bundle"]), "--database", served["url"], "--since", "99999999999d"])
    assert code == 2 and "--since '99999999999d' reaches before year 1" in cap.err  # OverflowError traceback before
    assert len(cap.err.strip().splitlines()) == 1


def test_since_after_every_prediction_says_so(served, run_cli, tmp_path):
    """It said none of ALL the predictions 'since 2099' was monitored and blamed a missing profile."""
    code, cap = run_cli(["monitor", str(served["bundle"]), "--database", served["url"], "--since", "2099-01-01",
                         "--out", str(tmp_path / "r")])
    assert code == 0, cap.err
    out = " ".join(cap.out.split())
    assert "no predictions since 2099-01-01T00:00:00+00:00: all " in out and "pass an earlier --since" in out
    assert "SIGHTLINE_MONITOR=false" not in out


def test_window_settings_come_from_the_spec_beneath_variables_and_options(served, run_cli, tmp_path, no_plots,
                                                                          monkeypatch):
    """`--spec` (or SIGHTLINE_SPEC, a file or the data folder holding it) sets the windows as it does for the
    service: the monitor: section, a SIGHTLINE_MONITOR_* variable above it, an option above both; a missing or bad
    file is one line and exit code 2."""
    for name in ("SIGHTLINE_SPEC", "SIGHTLINE_MONITOR_WINDOW", "SIGHTLINE_MONITOR_MIN_WINDOW",
                 "SIGHTLINE_MONITOR_ALPHA", "SIGHTLINE_MONITOR_CONSECUTIVE", "SIGHTLINE_MONITOR_PERMUTATIONS"):
        monkeypatch.delenv(name, raising=False)
    data = tmp_path / "data"
    data.mkdir()
    spec = data / "sightline.yaml"
    spec.write_text(f"monitor:\n  window: {BLOCK}\n  min_window: {BLOCK}\n  consecutive: 1\n  alpha: 0.01\n")
    base = ["monitor", str(served["bundle"]), "--database", served["url"], "--out", str(tmp_path / "r"), "--json"]

    def report(*args: str) -> dict:
        code, cap = run_cli(base + list(args))
        assert code == 0, cap.err
        return json.loads(cap.out)

    r = report("--spec", str(spec))
    assert r["window"] == {"kind": "block", "size": BLOCK, "min_window": BLOCK, "alpha": 0.01, "consecutive": 1,
                           "permutations": 200}
    assert r["spec"] == str(spec) and [w["n"] for w in r["windows"]] == [BLOCK] * 4
    assert [w["alert_event"] for w in r["windows"]] == [None, None, "fired", None]  # K = 1: the first drifted window
    monkeypatch.setenv("SIGHTLINE_SPEC", str(data))
    assert report()["window"]["size"] == BLOCK
    monkeypatch.setenv("SIGHTLINE_MONITOR_WINDOW", str(2 * BLOCK))  # a variable wins over the file
    r = report()
    assert r["window"]["size"] == 2 * BLOCK and [w["n"] for w in r["windows"]] == [2 * BLOCK] * 2
    r = report("--size", str(4 * BLOCK), "--consecutive", "2")  # an option wins over both
    assert (r["window"]["size"], r["window"]["consecutive"], r["window"]["min_window"]) == (4 * BLOCK, 2, BLOCK)
    monkeypatch.delenv("SIGHTLINE_SPEC")
    monkeypatch.delenv("SIGHTLINE_MONITOR_WINDOW")
    assert report()["window"]["size"] == 500 and report()["spec"] is None
    spec.write_text("monitor:\n  alpha: 2\n")
    for path, says in ((tmp_path / "missing.yaml", "missing.yaml cannot be read"), (data, "monitor.alpha=2 must be")):
        code, cap = run_cli(base + ["--spec", str(path)])
        assert code == 2 and says in cap.err and len(cap.err.strip().splitlines()) == 1, cap.err


def test_the_report_reads_postgresql_as_it_reads_sqlite(served, run_cli, tmp_path, no_plots):
    """The same predictions and signals copied into PostgreSQL (a schema of its own in
    SIGHTLINE_TEST_DATABASE_URL's database) give the same windows, p-values and measured accuracy."""
    import uuid

    from sightline.storage.store import Store

    base = postgres_url()
    admin = sa.create_engine(base)
    schema = f"sl_{uuid.uuid4().hex[:12]}"
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    url = pg_options(base, schema)
    from sightline.serve.monitoring import profile_fingerprint

    fingerprint = profile_fingerprint(served["bundle"])
    keep = ("request_id", "filename", "input_sha256", "model_name", "model_version", "label", "confidence",
            "top_k", "decision", "latency_ms")
    try:
        source, target = Store(served["url"]), Store(url)
        try:
            signals = source.signal_rows(fingerprint)
            for start in range(0, len(signals), 10):  # 10 a request, as the server stored them (not one by one)
                chunk = signals[start:start + 10]
                rows = [source.get_prediction(sig["prediction_id"]) for sig in chunk]
                extra = [{k: sig[k] for k in ("projected", "probabilities", "ood_score", "unknown", "image_stats")}
                         for sig in chunk]
                ids = target.add_predictions([{k: row[k] for k in keep} for row in rows],
                                             [{**e, "profile": fingerprint} for e in extra])
                assert ids == [sig["prediction_id"] for sig in chunk]
                for pid, row in zip(ids, rows):
                    if row["reviewed_label"]:
                        target.record_label(pid, row["reviewed_label"], reviewer=row["reviewer"])
        finally:
            source.close()
            target.close()
        reports = []
        for db in (served["url"], url):
            code, cap = run_cli(["monitor", str(served["bundle"]), "--database", db, "--out", str(tmp_path / "r"),
                              "--size", str(BLOCK), "--min-window", str(BLOCK), "--json"])
            assert code == 0, cap.err
            reports.append(json.loads(cap.out))
        keys = ("n", "first_id", "last_id", "significant", "p_value", "unknown_rate", "measured_accuracy")
        assert [{k: w[k] for k in keys} for w in reports[1]["windows"]] == \
            [{k: w[k] for k in keys} for w in reports[0]["windows"]]
        assert reports[1]["database"].startswith("postgresql")
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def test_thumbnails_of_shifted_statistics_come_from_kept_images(served, run_cli, tmp_path, monkeypatch):
    """Some of the noise predictions' images kept (one of them a damaged file): each window with a significant
    image-statistic shift lists its most shifted predictions (checked against the stored statistics), and the page
    shows small inline JPEGs of kept ones only, at most 4 per statistic and window; without the image store it says
    why there are none."""
    from sightline.serve.monitoring import profile_fingerprint
    from sightline.storage.images import LocalImageStore
    from sightline.storage.store import Store

    url = f"sqlite:///{tmp_path / 'copy.db'}"
    shutil.copy(served["url"].removeprefix("sqlite:///"), tmp_path / "copy.db")
    images = LocalImageStore(tmp_path / "images")
    noisy = served["ids"][2 * BLOCK:]
    kept = {pid: noise(i) for i, pid in enumerate(noisy) if i % 3 == 0}
    damaged = noisy[3]
    kept[damaged] = b"\xff\xd8\xff not really a JPEG"
    store = Store(url)
    store.add_kept_images([{"prediction_id": pid, "sha256": images.put(data), "reason": "unknown",
                            "content_type": "image/jpeg", "size": len(data)} for pid, data in kept.items()])
    stored = {r["prediction_id"]: r["image_stats"] for r in store.signal_rows(profile_fingerprint(served["bundle"]))}
    store.close()

    out = tmp_path / "r"
    code, cap = run_cli(["monitor", str(served["bundle"]), "--database", url, "--out", str(out), "--size", str(BLOCK),
                         "--min-window", str(BLOCK), "--images", str(tmp_path / "images")])
    assert code == 0, cap.err
    windows = json.loads((out / "monitor.json").read_text())["windows"]
    shifted = {(i, name): s["examples"] for i, w in enumerate(windows) for name, s in w["image_stats"].items()
               if "examples" in s}
    assert {i for i, _ in shifted} >= {2, 3}  # the noise blocks
    for (i, name), examples in shifted.items():
        w = windows[i]
        part = next(pt for pt in w["tests"]["image_stats"]["parts"] if pt["name"] == name)
        assert part["significant"] and 0 < len(examples) <= 12
        ids = [pid for pid in served["ids"] if w["first_id"] <= pid <= w["last_id"]]
        if "window_median" in w["image_stats"][name]:  # the most shifted first, recomputed from the stored rows
            up = w["image_stats"][name]["window_median"] >= w["image_stats"][name]["reference_median"]
            values = {pid: stored[pid][name] for pid in ids if stored[pid].get(name) is not None}
            ranked = sorted(values, key=lambda pid: (-values[pid] if up else values[pid], ids.index(pid)))
            assert examples == ranked[:len(examples)]
    page = (out / "monitor.html").read_text()
    shown = [int(pid) for pid in re.findall(r'<img alt="prediction (\d+)" src="data:image/jpeg;base64,', page)]
    assert shown and set(shown) <= set(kept) - {damaged}
    assert damaged not in shown
    for block in re.split(r"<h3>", page)[1:]:
        assert len(re.findall(r"data:image/jpeg;base64,", block)) <= 4
    for data in re.findall(r'src="data:image/jpeg;base64,([^"]+)"', page):
        with Image.open(io.BytesIO(base64.b64decode(data))) as im:
            assert im.format == "JPEG" and max(im.size) <= 96
    assert len(re.findall(r"src='data:image/png;base64,", page)) == 6
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page) and "<script" not in page

    # the two pages below are read for their thumbnails only, which sit under the image-statistics plot: that plot
    # left empty and the other five not drawn (about 1 s a page)
    from sightline.monitor import report

    monkeypatch.setattr(report, "plots", lambda r: {"image_stats": ""})
    code, cap = run_cli(["monitor", str(served["bundle"]), "--database", url, "--out", str(tmp_path / "bare"),
                         "--size", str(BLOCK), "--min-window", str(BLOCK), "--images", str(tmp_path / "nowhere")])
    assert code == 0, cap.err
    page = (tmp_path / "bare" / "monitor.html").read_text()
    assert "data:image/jpeg" not in page and "made without the service&#39;s image store" in page
    # without --images, and no BUNDLE/images: the store beside the SQLite database (where `serve --registry` keeps
    # it and `feedback export` looks); the page had no thumbnails and said it was made without the store
    assert not (served["bundle"] / "images").exists()
    code, cap = run_cli(["monitor", str(served["bundle"]), "--database", url, "--out", str(tmp_path / "beside"),
                         "--size", str(BLOCK), "--min-window", str(BLOCK)])
    assert code == 0, cap.err
    page = (tmp_path / "beside" / "monitor.html").read_text()
    assert set(int(pid) for pid in re.findall(r'<img alt="prediction (\d+)"', page)) == set(shown)


def test_a_window_still_filling_is_shown_but_not_counted_toward_the_alert(served, run_cli, tmp_path, no_plots):
    """Blocks of 50: 1-50 calm, 51-100 mostly noise, and 101-120 (20 of 50, noise) still filling. The replay fired
    the alert on that trailing block (2 significant in a row), which the service never counts until it is full, and
    the verdict then said the alert's rule was met and described only that partial block."""
    code, cap = run_cli(["monitor", str(served["bundle"]), "--database", served["url"], "--out", str(tmp_path / "r"),
                         "--size", "50", "--min-window", "20", "--json"])
    assert code == 0, cap.err
    report = json.loads(cap.out)
    windows = report["windows"]
    assert [(w["n"], w["partial"], w["significant"]) for w in windows] == [
        (50, False, False), (50, False, True), (20, True, True)]
    assert [w["alert_event"] for w in windows] == [None, None, None] and not windows[-1]["alert_active"]
    lines = report["verdict"]
    assert lines[0].startswith("No alert: 1 of 2 tested windows differ from the reference, never 2 in a row")
    assert lines[1].startswith("In window ") and "(50 predictions" in lines[1]
    filling = [line for line in lines if line.startswith("The newest window, ")]
    assert filling == [next(line for line in lines if "still filling (20 of 50 predictions): it already differs"
                            in line and "not yet counted toward an alert" in line)]
    code, cap = run_cli(["monitor", str(served["bundle"]), "--database", served["url"], "--out", str(tmp_path / "s"),
                         "--size", "50", "--min-window", "20"])
    assert code == 0, cap.err
    assert ("120 monitored predictions, 3 windows, 2 tested, 1 significant; the newest window, still filling, is not "
            "counted until complete") in cap.out


def test_a_registry_copy_is_monitored_from_the_service_database_only(served, run_cli, tmp_path, no_plots,
                                                                      monkeypatch):
    # with no database it opened (and created, empty) ROOT/<hash>/sightline.db inside the registered version and
    # said "the database holds no predictions yet"; the report went to ROOT/monitor, shared by every version
    from sightline.loop.registry import Registry

    monkeypatch.delenv("SIGHTLINE_DATABASE_URL", raising=False)
    shutil.copy(served["url"].removeprefix("sqlite:///"), tmp_path / "sightline.db")
    url = f"sqlite:///{tmp_path / 'sightline.db'}"
    with Registry(url) as reg:
        copy = Path(reg.add(served["bundle"], alias="champion").version.path)
    before = sorted(p.name for p in copy.iterdir())
    code, cap = run_cli(["monitor", str(copy)])
    assert code == 2 and "is a registry copy, which holds no database; pass --database" in cap.err
    code, cap = run_cli(["monitor", str(copy), "--database", url])
    assert code == 2 and "is a registry copy, which stays as it was added; pass --out DIR" in cap.err
    assert sorted(p.name for p in copy.iterdir()) == before and sorted(p.name for p in copy.parent.iterdir()) == [
        copy.name]
    code, cap = run_cli(["monitor", str(copy), "--database", url, "--out", str(tmp_path / "r"), "--size",
                         str(BLOCK), "--min-window", str(BLOCK), "--json"])
    assert code == 0, cap.err
    assert json.loads(cap.out)["n_monitored"] == 120 and sorted(p.name for p in copy.iterdir()) == before
    # the version the service follows, by its alias (it answered "'champion' does not exist")
    code, cap = run_cli(["monitor", "champion", "--database", url, "--out", str(tmp_path / "c"), "--size",
                         str(BLOCK), "--min-window", str(BLOCK), "--json"])
    assert code == 0, cap.err
    assert json.loads(cap.out)["bundle"]["path"] == str(copy) and "bundle: v1 (champion)" in cap.err
