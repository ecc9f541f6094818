"""What each term of the service's per-prediction monitoring costs, in microseconds per image, single-threaded, in
one process (issue 11 section 3: serving throughput with monitoring on must stay >= 0.9x off at 16 clients).

`benchmarks/monitor_overhead.py` measures the whole service (HTTP, 16 clients, two server processes); this script
splits the difference into its terms, each timed on its own with the functions the server calls:

  decode thread     image statistics of the decoded image (`monitor.stats.image_stats(image, blob)`, as
                    `monitor.observe.load_observed` calls it), and its primitive parts
  inference thread  the profile's chosen open-set score, once per micro-batch (`Observer.score`), for each score
  batcher           the scored rows handed out and joined again (`Scored.take` / `concat` vs `Output`'s)
  store thread      softmax + PCA projection + the signal rows (`Observer.observe`), and the database write with vs
                    without the signal rows (`Store.add_predictions`, SQLite file, one request of 1 image)
  background        `Monitor.run_once` after 500 new predictions (recent + block window), per prediction

The decode and the crop the server does anyway are timed too, for scale. Images: real photos (default the
hymenoptera val split); the reference profile is synthetic with the shapes of a Lite0 bundle (D = 1,280 features,
C <= 32 components, a k-NN bank of --bank rows) unless --bundle names one with reference.npz.

    python benchmarks/monitor_terms.py                       # about 30 s on one core
    python benchmarks/monitor_terms.py --bank 5000 --batch 16
    python benchmarks/monitor_terms.py --bundle runs/hym --json /tmp/terms.json

Figures depend on the machine's load: run it on an idle machine when the figures matter, and say the load.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # single-threaded, as the server's
    os.environ[_var] = "1"  # numpy (serve/app.py limits BLAS to one thread)

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HYM_VAL = ROOT.parent / "shared" / "data" / "hymenoptera" / "val"


def timed(fn: Callable[[], Any], *, count: int, repeat: int) -> float:
    """Microseconds per item: the fastest of `repeat` calls of `fn` (which handles `count` items), after one warm-up.
    The fastest, not the median: on a shared machine the slower calls measure the other work, not this term."""
    fn()
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return min(runs) * 1e6 / count


def synthetic_profile(stats: list[dict[str, Any]], *, dim: int, bank: int, classes: int, seed: int = 0):
    """A reference profile with a Lite0 bundle's shapes: class-clustered, non-negative pooled features."""
    from sightline.monitor.reference import build_reference

    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 1.0, (classes, dim)).astype(np.float32)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        labels = rng.integers(0, classes, n)
        feats = np.abs(centres[labels] + rng.normal(0.0, 1.5, (n, dim))).astype(np.float32)
        logits = (feats @ rng.normal(0, 0.02, (dim, classes))).astype(np.float32) + 3.0 * np.eye(classes)[labels]
        return logits.astype(np.float32), feats, labels

    n_val = len(stats)
    val_logits, val_feats, _ = draw(n_val)
    _, bank_feats, bank_labels = draw(bank)
    profile = build_reference(val_logits, val_feats, classes=[f"c{i}" for i in range(classes)], image_stats=stats,
                              bank_features=bank_feats, bank_labels=bank_labels)
    out_logits, out_feats, _ = draw(64)
    profile.fit_ood(val_logits, val_feats, out_logits * 0.3, out_feats[:, ::-1].copy())
    return profile, draw


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, default=HYM_VAL, help="folder of photos (default hymenoptera val)")
    ap.add_argument("--limit", type=int, default=60, help="photos used at most")
    ap.add_argument("--bundle", type=Path, help="a bundle (or RUN) with reference.npz: its profile and preprocessing")
    ap.add_argument("--bank", type=int, default=250, help="k-NN bank rows of the synthetic profile (hymenoptera "
                                                           "train: about 245; the cap: 5,000)")
    ap.add_argument("--dim", type=int, default=1280, help="feature dimension of the synthetic profile")
    ap.add_argument("--batch", type=int, default=4, help="images per micro-batch for the per-batch terms (at 16 "
                                                          "clients of 1 image the server's batches hold 2-8)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)

    from PIL import Image

    from sightline.data.inputs import expand_inputs
    from sightline.data.transforms import decode_for, normalize, resize_center_crop
    from sightline.inference import Output
    from sightline.monitor.ood import OODChoice
    from sightline.monitor.stats import ANALYSIS_SIDE, image_stats, jpeg_quality, laplacian_variance
    from sightline.preprocessing import Preprocessing
    from sightline.serve.monitoring import Observer, Scored

    files = expand_inputs([str(args.images)])[: args.limit]
    if not files:
        ap.error(f"{args.images} holds no images")
    blobs = [f.read_bytes() for f in files]
    if args.bundle:
        from sightline.bundle import load_bundle
        from sightline.monitor.reference import load_reference

        bundle = load_bundle(args.bundle)
        pre = bundle.preprocessing
        profile = load_reference(bundle.path)
        if profile is None:
            ap.error(f"{bundle.path} has no reference.npz")
        draw = None
        what = f"bundle {bundle.path}"
    else:
        pre = Preprocessing(input_size=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic",
                            crop_pct=0.875)  # tf_efficientnet_lite0's
        profile = None
        what = f"synthetic: D={args.dim}, bank {args.bank}, 2 classes"
    images = [decode_for(b, pre) for b in blobs]
    stats = [image_stats(im, b) for im, b in zip(images, blobs)]
    if profile is None:
        profile, draw = synthetic_profile(stats, dim=args.dim, bank=args.bank, classes=2)
    n, rep = len(blobs), args.repeat
    rows: list[tuple[str, str, float]] = []

    def add(group: str, name: str, us: float) -> None:
        rows.append((group, name, us))
        print(f"{group:<11} {name:<58} {us:10.1f}", file=sys.stderr)

    # --- decode thread -------------------------------------------------------------------------------------
    add("context", "decode (draft-mode JPEG, what the server does anyway)",
        timed(lambda: [decode_for(b, pre) for b in blobs], count=n, repeat=rep))
    add("context", "crop + normalize (what the server does anyway)",
        timed(lambda: [normalize(np.asarray(resize_center_crop(im, pre), dtype=np.uint8), pre) for im in images],
              count=n, repeat=rep))
    add("decode", "image_stats(image, blob): total", timed(lambda: [image_stats(im, b) for im, b in zip(images, blobs)],
                                                           count=n, repeat=rep))

    def header(b: bytes) -> Any:
        with Image.open(io.BytesIO(b)) as im:
            return im.format, im.mode, getattr(im, "quantization", None)

    add("decode", "  part: header parsed again from the bytes", timed(lambda: [header(b) for b in blobs], count=n,
                                                                         repeat=rep))
    greys = [im.convert("L") for im in images]
    add("decode", "  part: greyscale conversion", timed(lambda: [im.convert("L") for im in images], count=n,
                                                        repeat=rep))

    def down(g: Image.Image) -> Image.Image:
        short = min(g.size)
        if short <= ANALYSIS_SIDE:
            return g
        s = ANALYSIS_SIDE / short
        return g.resize((max(1, round(g.width * s)), max(1, round(g.height * s))), Image.Resampling.BOX)

    smalls = [down(g) for g in greys]
    add("decode", "  part: box downscale to the analysis side", timed(lambda: [down(g) for g in greys], count=n,
                                                                       repeat=rep))
    arrays = [np.asarray(g, dtype=np.float32) for g in smalls]
    add("decode", "  part: to float32, mean, std", timed(lambda: [(a := np.asarray(g, dtype=np.float32)).mean()
                                                                 + a.std() for g in smalls], count=n, repeat=rep))
    add("decode", "  part: Laplacian variance", timed(lambda: [laplacian_variance(a) for a in arrays], count=n,
                                                      repeat=rep))
    quants = [header(b)[2] for b in blobs]
    add("decode", "  part: JPEG quality from the tables", timed(lambda: [jpeg_quality(q) for q in quants], count=n,
                                                                repeat=rep))

    # --- inference thread: open-set scores per micro-batch -----------------------------------------------------
    rng = np.random.default_rng(1)
    b = args.batch
    if draw is not None:
        logits, feats, _ = draw(b)
    else:
        k, d = len(profile.classes), profile.pca_mean.shape[0]
        logits = rng.normal(0, 2, (b, k)).astype(np.float32)
        feats = np.abs(rng.normal(0, 1, (b, d))).astype(np.float32)
    out = Output(logits, feats, rng.normal(0, 1, (b, 7, 7)).astype(np.float32))
    chosen = profile.ood_choice
    for name in ("msp", "energy", "knn", "mahalanobis"):
        if name == "knn" and profile.bank is None or name == "mahalanobis" and profile.mahalanobis is None:
            continue
        profile.ood_choice = OODChoice(score=name, threshold=0.0, quantile=0.99, chosen_by="benchmark", n_in=0,
                                       n_out=0)
        obs = Observer(profile, "0" * 16)
        add("inference", f"open-set score '{name}', batch of {b} (per image)",
            timed(lambda: obs.score(out), count=b, repeat=rep * 20))
    profile.ood_choice = chosen
    observer = Observer(profile, "0" * 16)
    scored = observer.score(out)

    # --- batcher: rows handed out, joined per request ---------------------------------------------------------
    add("batcher", f"Output take + concat, batch of {b} (off; per image)",
        timed(lambda: [Output.concat([out.take(slice(i, i + 1))]) for i in range(b)], count=b, repeat=rep * 20))
    add("batcher", f"Scored take + concat, batch of {b} (on; per image)",
        timed(lambda: [Scored.concat([scored.take(slice(i, i + 1))]) for i in range(b)], count=b, repeat=rep * 20))

    # --- store thread ---------------------------------------------------------------------------------------
    one = scored.take(slice(0, 1))
    add("store", "observe: softmax + projection + signal row, request of 1",
        timed(lambda: observer.observe(one, stats[:1]), count=1, repeat=rep * 40))
    from sightline.storage.store import Store

    work = Path(tempfile.mkdtemp(prefix="sightline-monitor-terms-"))
    store = Store(f"sqlite:///{work / 'db.sqlite'}")
    pred = {"request_id": "r" * 32, "filename": "x.jpg", "input_sha256": "0" * 64, "model_name": "m",
            "model_version": "1", "label": profile.classes[0], "confidence": 0.9,
            "top_k": [{"label": profile.classes[0], "confidence": 0.9}], "decision": "accept", "latency_ms": 12.0,
            "api_key_id": None}
    signal = observer.observe(one, stats[:1])[2]
    writes = 200
    add("store", "database: prediction row only (off), request of 1",
        timed(lambda: [store.add_predictions([pred]) for _ in range(writes)], count=writes, repeat=3))
    add("store", "database: prediction + signal row (on), request of 1",
        timed(lambda: [store.add_predictions([pred], signal) for _ in range(writes)], count=writes, repeat=3))
    group = observer.observe(scored, [stats[i % n] for i in range(b)])[2]
    add("store", f"database: {b} requests' prediction rows in one transaction (off)",
        timed(lambda: [store.add_predictions([pred] * b) for _ in range(writes // b)], count=writes // b * b,
              repeat=3))
    add("store", f"database: {b} requests' prediction + signal rows in one transaction (on)",
        timed(lambda: [store.add_predictions([pred] * b, group) for _ in range(writes // b)],
              count=writes // b * b, repeat=3))

    # --- background monitor -------------------------------------------------------------------------------------
    from sightline.serve.metrics import ServiceMetrics
    from sightline.serve.monitoring import Monitor
    from sightline.serve.settings import Settings

    settings = Settings(bundle=work)  # hour and day windows too, as served
    monitor = Monitor(store=store, observer=observer, settings=settings, metrics=ServiceMetrics(),
                      model={"name": "m", "version": "1"})
    size = settings.monitor_window
    monitor.run_once()  # restores state, tests what the timing writes left
    per_run = []
    for r in range(2):
        if draw is not None:
            lg, ft, _ = draw(size)
        else:
            lg, ft = np.repeat(logits, size // b + 1, 0)[:size], np.repeat(feats, size // b + 1, 0)[:size]
        sc = observer.score(Output(lg, ft))
        sigs = observer.observe(sc, [stats[i % n] for i in range(size)])[2]
        store.add_predictions([pred] * size, sigs)
        t0 = time.perf_counter()
        monitor.run_once()
        per_run.append(time.perf_counter() - t0)
    add("background", f"Monitor.run_once per {size} predictions (recent + block), per prediction",
        min(per_run) * 1e6 / size)
    store.close()
    shutil.rmtree(work, ignore_errors=True)

    us = {name.strip(): v for _, name, v in rows}
    import sightline.serve.batching as batching

    coalesced = hasattr(batching, "Coalescer")  # the service writes a micro-batch's requests in one transaction
    score = chosen.score if chosen else "msp"
    terms = {  # monitoring on minus off, per image
        "image statistics": us["image_stats(image, blob): total"],
        f"open-set score ({score}, chosen)": next(v for k, v in us.items()
                                                  if k.startswith(f"open-set score '{score}'")),
        "Scored instead of Output": us[f"Scored take + concat, batch of {b} (on; per image)"]
        - us[f"Output take + concat, batch of {b} (off; per image)"],
        "observe": us["observe: softmax + projection + signal row, request of 1"],
        "signal row in the database": us[f"database: {b} requests' prediction + signal rows in one transaction (on)"]
        - us[f"database: {b} requests' prediction rows in one transaction (off)"] if coalesced
        else us["database: prediction + signal row (on), request of 1"]
        - us["database: prediction row only (off), request of 1"],
        "background monitor": next(v for k, v in us.items() if k.startswith("Monitor.run_once")),
    }
    print(f"\nprofile: {what}; chosen score {score}; {n} photos from {args.images}; database writes "
          f"{'coalesced per micro-batch' if coalesced else 'one transaction per request'}; load average "
          f"{os.getloadavg()[0]:.2f}", file=sys.stderr)
    for name, v in terms.items():
        print(f"{'on - off':<11} {name:<58} {v:10.1f}", file=sys.stderr)
    print(f"{'on - off':<11} {'total per image':<58} {sum(terms.values()):10.1f}", file=sys.stderr)
    result = {"profile": what, "chosen_score": score, "photos": n, "database_writes_coalesced": coalesced,
              "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()], "batch": b,
              "us_per_image": {f"{g}: {name.strip()}": round(v, 1) for g, name, v in rows},
              "on_minus_off_us_per_image": {k: round(v, 1) for k, v in terms.items()},
              "on_minus_off_total_us_per_image": round(sum(terms.values()), 1)}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
