"""Server time of the /ui/review page with N predictions in SQLite: the queue query (uncertainty, k-center
diversity on the stored projected features) plus the Jinja2 render of 50 items, timed the way the route runs them.

    python benchmarks/web_queue.py --rows 100000 --repeats 20

Rows go in with executemany (a third of them in the review queue, each with its monitoring signals and a kept
image row); the figure is the median and worst of `--repeats` page builds after one warm-up.
"""
from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np


def fill(path: Path, rows: int, dim: int, classes: int) -> None:
    from sightline.storage.store import Store

    Store(f"sqlite:///{path}").close()  # the schema
    rng = np.random.default_rng(0)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    logits = rng.normal(size=(rows, classes)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    feats = rng.normal(size=(rows, dim)).astype(np.float16)
    preds, sigs, kept = [], [], []
    for i in range(rows):
        order = np.argsort(-probs[i])[:3]
        decision = "review" if i % 3 == 0 else "accept"
        created = (t0 + timedelta(seconds=i)).isoformat(sep=" ")
        top = [{"label": f"c{j}", "confidence": float(probs[i, j])} for j in order]
        preds.append((i + 1, created, "r", f"{i}.jpg", "0" * 64, "m", "1", f"c{order[0]}", float(probs[i, order[0]]),
                      json.dumps(top), decision, 10.0))
        sigs.append((i + 1, created, "p", feats[i].tobytes(), probs[i].astype(np.float32).tobytes(), 0.5, 0, "{}"))
        if decision == "review":
            kept.append((i + 1, created, f"{i:064x}", "review", "image/jpeg", 1000))
    with sqlite3.connect(path) as conn:
        conn.executemany("INSERT INTO predictions (id, created, request_id, filename, input_sha256, model_name, "
                         "model_version, label, confidence, top_k, decision, latency_ms) "
                         "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", preds)
        conn.executemany("INSERT INTO prediction_signals (prediction_id, created, profile, projected, probabilities, "
                         "ood_score, unknown, image_stats) VALUES (?,?,?,?,?,?,?,?)", sigs)
        conn.executemany("INSERT INTO kept_images (prediction_id, created, sha256, reason, content_type, size) "
                         "VALUES (?,?,?,?,?,?)", kept)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--dim", type=int, default=64, help="projected feature size stored per prediction")
    ap.add_argument("--classes", type=int, default=10)
    args = ap.parse_args()

    from sightline.storage.store import Store
    from sightline.serve.web.queue import ordered_queue
    from sightline.serve.web.routes import templates

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.sqlite"
        t0 = time.perf_counter()
        fill(db, args.rows, args.dim, args.classes)
        print(f"filled {args.rows:,} predictions (+ signals, kept rows) in {time.perf_counter() - t0:.1f} s")
        store = Store(f"sqlite:///{db}")
        classes = [f"c{j}" for j in range(args.classes)]
        session = {"name": "bench", "csrf": "x" * 32}

        def page() -> int:
            items = ordered_queue(store, limit=50)
            html = templates().get_template("review.html").render(
                session=session, items=items, classes=classes, keyed=classes[:9], unknown="unknown",
                slice="queue", model="bench 1")
            return len(items) + 0 * len(html)

        page()
        times, query = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            n = page()
            times.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            ordered_queue(store, limit=50)
            query.append((time.perf_counter() - t) * 1000)
        store.close()
    print(f"{n} items; page build median {statistics.median(times):.1f} ms, worst {max(times):.1f} ms "
          f"(query + ordering alone: median {statistics.median(query):.1f} ms) over {args.repeats} runs")


if __name__ == "__main__":
    main()
