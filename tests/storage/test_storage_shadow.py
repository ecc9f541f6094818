"""Shadow rows and their running totals (sightline/storage/shadow.py): the summary equals a brute-force count over
the rows and the predictions' labels after rows of several challengers, labels given before and after the rows,
overrides, undone labels and "unknown" labels; it reads one totals row, never the shadow rows; a database whose
totals lag its rows (made before they existed) is rebuilt on open. SQLite and PostgreSQL (a schema of its own,
skipped with the reason when unreachable)."""
from __future__ import annotations

import random
import sys
from datetime import timezone
from pathlib import Path

import pytest
from sqlalchemy import delete, event

from sightline.storage.shadow import ShadowLog
from sightline.storage.store import ShadowTotal, Store

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))  # serve_tiny
from serve_tiny import open_store  # noqa: E402

CLASSES = ["cat", "dog", "fox"]
VERSIONS = ["2+aaa", "3+bbb", "4+ccc"]


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    with open_store(request.param, tmp_path) as s:
        yield s


def _predictions(store: Store, rng: random.Random, n: int) -> list[dict]:
    rows = [{"request_id": "r", "filename": f"{i}.jpg", "input_sha256": "0" * 64, "model_name": "pets",
             "model_version": "1", "label": rng.choice(CLASSES), "confidence": 0.5, "top_k": [],
             "decision": rng.choice(["accept", "review", "unknown"]), "latency_ms": 1.0} for i in range(n)]
    for pid, row in zip(store.add_predictions(rows), rows):
        row["id"] = pid
    return rows


def _shadow_rows(rng: random.Random, predictions: list[dict], version: str) -> list[dict]:
    return [{"prediction_id": p["id"], "challenger_name": "pets", "challenger_version": version,
             "label": p["label"] if rng.random() < 0.6 else rng.choice(CLASSES), "confidence": rng.random(),
             "decision": rng.choice(["accept", "review"]), "champion_version": "1", "champion_label": p["label"],
             "champion_decision": p["decision"], "latency_ms": 1.0} for p in predictions]


def _label_some(store: Store, rng: random.Random, predictions: list[dict], share: float) -> None:
    """Labels, overrides and undos as reviewers make them. Each prediction's current label is the store's own answer
    to the last change, kept on its dict (a get_prediction before each change was 1.2 ms, ~700 a run)."""
    for p in predictions:
        if rng.random() >= share:
            continue
        current = p.get("reviewed_label")
        if current is not None and rng.random() < 0.3:
            row = store.clear_label(p["id"], reviewer="ann")
        else:
            row = store.record_label(p["id"], rng.choice([*CLASSES, "unknown"]), reviewer="ann", override=True)
        p["reviewed_label"] = row["reviewed_label"]


def _brute(log: ShadowLog, version: str) -> dict:
    """The summary counted row by row from the stored rows and the predictions' labels."""
    rows = log.rows(version)
    n = len(rows)
    comparable = [r for r in rows if r["champion_decision"] != "unknown"]
    labelled = [r for r in rows if r["reviewed_label"] is not None and r["reviewed_label"] != "unknown"]
    return {
        "challenger_version": version,
        "n": n,
        "agreement_rate": sum(r["label"] == r["champion_label"] for r in rows) / n if n else None,
        "decisions_agree_rate": (sum(r["decision"] == r["champion_decision"] for r in comparable) / len(comparable)
                                 if comparable else None),
        "first": min((r["created"] for r in rows), default=None),
        "last": max((r["created"] for r in rows), default=None),
        "labelled": {
            "n": len(labelled),
            "champion_accuracy": (sum(r["champion_label"] == r["reviewed_label"] for r in labelled) / len(labelled)
                                  if labelled else None),
            "challenger_accuracy": (sum(r["label"] == r["reviewed_label"] for r in labelled) / len(labelled)
                                    if labelled else None),
        },
    }


def _same(summary: dict, brute: dict) -> None:
    times = ("first", "last")
    assert {k: v for k, v in summary.items() if k not in times} == {k: v for k, v in brute.items() if k not in times}
    for k in times:  # the rows' own datetimes (naive UTC on SQLite) against the summary's (aware)
        assert (summary[k] is None) == (brute[k] is None)
        if brute[k] is not None:
            assert summary[k] == (brute[k] if brute[k].tzinfo else brute[k].replace(tzinfo=timezone.utc))


def test_summary_equals_a_brute_force_count(store):
    rng = random.Random(0)
    log = ShadowLog(store)
    assert log.versions() == [] and log.summary(VERSIONS[0])["n"] == 0
    # 120 predictions, about half of them shadowed: 300 (and 20 labelled a batch, not 10) gave most of the ~340
    # label changes (1.2 ms each, 2 on PostgreSQL) to predictions no challenger scored
    predictions = _predictions(store, rng, 120)
    _label_some(store, rng, predictions, 0.3)  # some labels before any shadow row
    for batch in range(12):  # batches as requests come, the challengers interleaved
        chosen = rng.sample(predictions, rng.randint(1, 12))
        log.add(_shadow_rows(rng, chosen, VERSIONS[batch % 2]))
        _label_some(store, rng, rng.sample(predictions, 10), 0.5)
    log.add(_shadow_rows(rng, predictions[:5], VERSIONS[0]) + _shadow_rows(rng, predictions[5:9], VERSIONS[2]))
    _label_some(store, rng, predictions, 0.4)
    assert log.versions() == VERSIONS
    for version in VERSIONS:
        summary, brute = log.summary(version), _brute(log, version)
        assert brute["labelled"]["n"] > 0 or version == VERSIONS[2]
        _same(summary, brute)
    _same(log.summary("never"), _brute(log, "never"))


def test_summary_reads_the_totals_not_the_rows(store):
    rng = random.Random(1)
    log = ShadowLog(store)
    predictions = _predictions(store, rng, 50)
    log.add(_shadow_rows(rng, predictions, VERSIONS[0]))
    statements: list[str] = []

    def seen(conn, cursor, statement, *args):
        statements.append(statement)

    event.listen(store.engine, "before_cursor_execute", seen)
    try:
        summary = log.summary(VERSIONS[0])
        versions = log.versions()
    finally:
        event.remove(store.engine, "before_cursor_execute", seen)
    assert summary["n"] == 50 and versions == [VERSIONS[0]]
    shadow = [s for s in statements if "shadow" in s]  # (PostgreSQL may also ask about the connection)
    assert len(shadow) == 2 and all("shadow_predictions" not in s and "shadow_totals" in s for s in shadow)


def test_lagging_totals_are_rebuilt_on_open(store):
    rng = random.Random(2)
    log = ShadowLog(store)
    predictions = _predictions(store, rng, 80)
    log.add(_shadow_rows(rng, predictions[:40], VERSIONS[0]))
    log.add(_shadow_rows(rng, predictions[40:], VERSIONS[1]))
    _label_some(store, rng, predictions, 0.5)
    expected = {v: log.summary(v) for v in VERSIONS[:2]}
    with store.engine.begin() as conn:  # a database whose rows were written before the totals existed
        conn.execute(delete(ShadowTotal))
    assert log.summary(VERSIONS[0])["n"] == 0
    reopened = ShadowLog(store)
    assert {v: reopened.summary(v) for v in VERSIONS[:2]} == expected
    assert reopened.versions() == VERSIONS[:2]
    for version in VERSIONS[:2]:
        _same(reopened.summary(version), _brute(reopened, version))
