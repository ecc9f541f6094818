"""Server time of the /ui/review page with N predictions in SQLite: the queue query (uncertainty, k-center
diversity on the stored projected features) plus the Jinja2 render of 50 items, timed the way the route runs them;
and of the /ui/dashboard page (recent predictions, newest first and filtered by a confidence band, the histogram,
the class mix per block of 500, the labelled random slice's confusion, the alerts, the render).

    python benchmarks/web_queue.py --rows 100000 --repeats 20
    python benchmarks/web_queue.py --rows 100000 --without-queue-index   # the queue as it was read before

Rows go in with executemany (a third of them in the review queue, each with its monitoring signals and a kept
image row; every 25th accepted one kept as the random slice, half of those labelled); the figures are the median
and worst of `--repeats` page builds after one warm-up, with the load average before and after.
"""
from __future__ import annotations

import argparse
import json
import os
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
    preds, sigs, kept, labels = [], [], [], []
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
        elif i % 25 == 1:
            kept.append((i + 1, created, f"{i:064x}", "sample", "image/jpeg", 1000))
            if i % 50 == 1:  # labelled: the model's answer, or a neighbour class one time in five
                truth = order[0] if i % 250 != 1 else (order[0] + 1) % classes
                labels.append((f"c{truth}", "bench", created, i + 1))
    with sqlite3.connect(path) as conn:
        conn.executemany("INSERT INTO predictions (id, created, request_id, filename, input_sha256, model_name, "
                         "model_version, label, confidence, top_k, decision, latency_ms) "
                         "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", preds)
        conn.executemany("INSERT INTO prediction_signals (prediction_id, created, profile, projected, probabilities, "
                         "ood_score, unknown, image_stats) VALUES (?,?,?,?,?,?,?,?)", sigs)
        conn.executemany("INSERT INTO kept_images (prediction_id, created, sha256, reason, content_type, size) "
                         "VALUES (?,?,?,?,?,?)", kept)
        conn.executemany("UPDATE predictions SET reviewed_label = ?, reviewer = ?, reviewed = ? WHERE id = ?", labels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--dim", type=int, default=64, help="projected feature size stored per prediction")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--without-queue-index", action="store_true",
                    help="drop ix_predictions_queue first: the figure before the index")
    args = ap.parse_args()

    from sqlalchemy import text

    from sightline.serve.monitoring import alert_views
    from sightline.serve.web.dashboard import class_mix_history, dashboard_data
    from sightline.serve.web.queue import candidates, ordered_queue
    from sightline.serve.web.routes import templates
    from sightline.storage.store import Store

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.sqlite"
        t0 = time.perf_counter()
        fill(db, args.rows, args.dim, args.classes)
        print(f"filled {args.rows:,} predictions (+ signals, kept rows) in {time.perf_counter() - t0:.1f} s")
        store = Store(f"sqlite:///{db}")
        with store.engine.begin() as conn:
            if args.without_queue_index:
                conn.execute(text("DROP INDEX ix_predictions_queue"))
            sql = str(candidates(limit=200).compile(dialect=store.engine.dialect,
                                                    compile_kwargs={"literal_binds": True}))
            plan = "; ".join(r[-1] for r in conn.execute(text(f"EXPLAIN QUERY PLAN {sql}")))
        print(f"queue query plan: {plan}")
        classes = [f"c{j}" for j in range(args.classes)]
        session = {"name": "bench", "csrf": "x" * 32}

        def page() -> int:
            items = ordered_queue(store, limit=50)
            html = templates().get_template("review.html").render(
                session=session, items=items, classes=classes, keyed=classes[:9], unknown="unknown",
                slice="queue", model="bench 1")
            return len(items) + 0 * len(html)

        def dashboard(band: tuple[float, float]) -> int:
            data = dashboard_data(store, classes=classes, low=band[0], high=band[1])
            html = templates().get_template("dashboard.html").render(
                session=session, data=data, mix=class_mix_history(store, classes, size=500), history=[],
                alerts=alert_views(store.alert_states()), monitor=None, windows=[], message="monitoring is off",
                classes=classes, filters={"decision": "", "label": "", "band": ""}, model="bench 1", alpha=0.05,
                alpha_y=67.5)
            return len(data["recent"]) + 0 * len(html)

        load_before = os.getloadavg()
        page()
        times, query = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            n = page()
            times.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            ordered_queue(store, limit=50)
            query.append((time.perf_counter() - t) * 1000)
        dash: dict[str, list[float]] = {"all": [], "band > 0.8": []}
        for name, band in (("all", (0.0, 1.0)), ("band > 0.8", (0.8, 1.0))):
            dashboard(band)
            for _ in range(args.repeats):
                t = time.perf_counter()
                dashboard(band)
                dash[name].append((time.perf_counter() - t) * 1000)
        measured = dashboard_data(store, classes=classes)["measured"]
        load_after = os.getloadavg()
        store.close()
    print(f"{n} items; page build median {statistics.median(times):.1f} ms, worst {max(times):.1f} ms "
          f"(query + ordering alone: median {statistics.median(query):.1f} ms) over {args.repeats} runs")
    for name, ts in dash.items():
        print(f"dashboard ({name}): median {statistics.median(ts):.1f} ms, worst {max(ts):.1f} ms")
    print(f"random slice: {measured['n']} labels, accuracy {measured['accuracy']:.3f}")
    print("load average (1, 5, 15 min) before {:.2f} {:.2f} {:.2f}, after {:.2f} {:.2f} {:.2f}; {} CPUs".format(
        *load_before, *load_after, os.cpu_count()))


if __name__ == "__main__":
    main()
