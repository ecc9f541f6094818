"""Shadow answers: what a challenger model said about live traffic it scored in the background (`sightline serve
--shadow CHALLENGER`), kept beside the champion's answer for comparison; never returned to a client.

Two tables on the service database's `Base` (declared in sightline.storage.store, created when missing):
`shadow_predictions`, one row per shadowed prediction and challenger, holding the challenger's label, confidence and
decision and the champion's label and decision as they were answered; and `shadow_totals`, one row per challenger
version with running totals of those rows. Agreement is the share of rows whose two labels are equal; where a
reviewer labelled a shadowed prediction (predictions.reviewed_label, not "unknown"), both models' accuracy on those
items is measured against that label.

The summary reads one row of `shadow_totals`, however many shadow rows there are. The totals move in the same
transaction as what they count: `add` inserts rows and adds them in (reading the predictions' labels under a share
lock on PostgreSQL, so a label recorded at the same moment is counted once, by whichever transaction sees the other);
`Store.record_label` / `clear_label` move the labelled counts of the predictions' shadow rows. A database whose
totals lag its rows (made before the totals existed, or written by an older version) is rebuilt from the rows once
when `ShadowLog` opens it; `rebuild_totals` does the same on demand.

Example:
    >>> log = ShadowLog(store)
    >>> log.add([{"prediction_id": 7, "challenger_name": "pets", "challenger_version": "2+ab12cd34ef56",
    ...           "label": "dog", "confidence": 0.81, "decision": "accept", "champion_label": "cat",
    ...           "champion_decision": "review", "champion_version": "1", "latency_ms": 12.0}])
    >>> log.summary("2+ab12cd34ef56")["agreement_rate"]
    0.0
"""
from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import case, delete, func, insert, select, text
from sqlalchemy.engine import Connection

from sightline.storage.store import (
    UNKNOWN_LABEL,
    PredictionRecord,
    ShadowPrediction,
    ShadowTotal,
    Store,
    truth_counts,
)

__all__ = ["ShadowPrediction", "ShadowTotal", "ShadowLog"]

_COUNTS = ("n", "agree", "comparable", "agree_decisions", "labelled", "champion_right", "challenger_right")


def _now() -> datetime:
    return datetime.now(timezone.utc)


class ShadowLog:
    """Shadow rows and their totals in `store`'s database (tables created when missing; totals rebuilt when they
    lag the rows). Blocking: call from a worker thread in async code."""

    def __init__(self, store: Store) -> None:
        self.store = store  # Store created both tables with the others (sightline.storage.store)
        if self._totals_lag():
            self.rebuild_totals()

    def add(self, rows: Sequence[dict[str, Any]]) -> None:
        """Insert ShadowPrediction rows (its columns as keys, without id / created) and add them to their
        challenger's totals, in one transaction."""
        if not rows:
            return
        created = _now()
        s, p = ShadowPrediction, PredictionRecord
        with self.store.writing(), self.store.engine.begin() as conn:
            ids = list(conn.scalars(insert(s).returning(s.id, sort_by_parameter_order=True),
                                    [{"created": created, **r} for r in rows]))
            # after the insert: a label committed from here on sees these rows and moves the totals itself
            wanted = sorted({int(r["prediction_id"]) for r in rows})
            truth = dict(conn.execute(select(p.id, p.reviewed_label).where(p.id.in_(wanted))
                                      .with_for_update(read=True)).all())
            deltas: dict[str, dict[str, Any]] = {}
            for row_id, r in zip(ids, rows):
                d = deltas.setdefault(r["challenger_version"], {"first_id": row_id, "last_id": row_id,
                                                                **dict.fromkeys(_COUNTS, 0)})
                d["last_id"] = max(d["last_id"], row_id)
                d["first_id"] = min(d["first_id"], row_id)
                comparable = r["champion_decision"] != "unknown"
                labelled, champion, challenger = truth_counts(truth.get(int(r["prediction_id"])), r["label"],
                                                               r["champion_label"])
                for name, value in (("n", 1), ("agree", r["label"] == r["champion_label"]),
                                    ("comparable", comparable),
                                    ("agree_decisions", comparable and r["decision"] == r["champion_decision"]),
                                    ("labelled", labelled), ("champion_right", champion),
                                    ("challenger_right", challenger)):
                    d[name] += int(value)
            for version in sorted(deltas):  # in one order, so two writers never wait on each other's rows
                self._upsert(conn, {"challenger_version": version, "first": created, "last": created,
                                    **deltas[version]})

    def _upsert(self, conn: Connection, values: dict[str, Any]) -> None:
        """Add `values` (one version's counts) to its totals row, creating it when missing (INSERT ... ON CONFLICT
        DO UPDATE: atomic on PostgreSQL when replicas add rows of the same challenger at once)."""
        t = ShadowTotal.__table__
        if conn.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as upsert
        else:
            from sqlalchemy.dialects.sqlite import insert as upsert
        stmt = upsert(t).values(**values)
        new = stmt.excluded
        changes = {name: t.c[name] + new[name] for name in _COUNTS}
        for name, earlier in (("first_id", True), ("last_id", False), ("first", True), ("last", False)):
            wins = new[name] < t.c[name] if earlier else new[name] > t.c[name]
            changes[name] = case((wins, new[name]), else_=t.c[name])
        conn.execute(stmt.on_conflict_do_update(index_elements=[t.c.challenger_version], set_=changes))

    def _totals_lag(self) -> bool:
        """Whether shadow rows exist beyond what the totals have counted (two indexed lookups)."""
        with self.store.engine.connect() as conn:
            last_row = conn.execute(select(func.max(ShadowPrediction.id))).scalar()
            counted = conn.execute(select(func.max(ShadowTotal.last_id))).scalar()
        return last_row is not None and (counted is None or counted < last_row)

    def rebuild_totals(self) -> None:
        """Recompute every challenger's totals from the shadow rows and the predictions' labels (reads every row:
        for an old database, or after rows or labels were written by something that does not keep the totals).
        Writers wait meanwhile (PostgreSQL: both tables locked against writes; SQLite: one writer at a time)."""
        s, t = ShadowPrediction, ShadowTotal
        truth = PredictionRecord.reviewed_label
        known = truth.is_not(None) & (truth != UNKNOWN_LABEL)
        comparable = s.champion_decision != "unknown"
        query = (select(s.challenger_version, func.min(s.id), func.max(s.id), func.min(s.created), func.max(s.created),
                        func.count(), func.sum(case((s.label == s.champion_label, 1), else_=0)),
                        func.sum(case((comparable, 1), else_=0)),
                        func.sum(case((comparable & (s.decision == s.champion_decision), 1), else_=0)),
                        func.sum(case((known, 1), else_=0)),
                        func.sum(case((known & (s.champion_label == truth), 1), else_=0)),
                        func.sum(case((known & (s.label == truth), 1), else_=0)))
                 .select_from(s).outerjoin(PredictionRecord, PredictionRecord.id == s.prediction_id)
                 .group_by(s.challenger_version))
        columns = ["challenger_version", "first_id", "last_id", "first", "last", *_COUNTS]
        with self.store.writing(), self.store.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text(f"LOCK TABLE {s.__tablename__}, {t.__tablename__} IN SHARE ROW EXCLUSIVE MODE"))
            conn.execute(delete(t))  # on SQLite the first write: from here no other writer until the commit
            conn.execute(insert(t).from_select(columns, query))

    def rows(self, challenger_version: str | None = None, *, limit: int | None = None) -> list[dict[str, Any]]:
        """Shadow rows, oldest first (of one challenger version, or all), with the prediction's reviewed label."""
        q = (select(ShadowPrediction.__table__, PredictionRecord.reviewed_label).select_from(ShadowPrediction)
             .join(PredictionRecord, PredictionRecord.id == ShadowPrediction.prediction_id)
             .order_by(ShadowPrediction.id))
        if challenger_version is not None:
            q = q.where(ShadowPrediction.challenger_version == challenger_version)
        if limit is not None:
            q = q.limit(limit)
        with self.store.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def versions(self) -> list[str]:
        """Every challenger version with rows, first shadowed first."""
        q = select(ShadowTotal.challenger_version).where(ShadowTotal.n > 0).order_by(ShadowTotal.first_id)
        with self.store.engine.connect() as conn:
            return list(conn.scalars(q))

    def summary(self, challenger_version: str) -> dict[str, Any]:
        """Counts for one challenger version: `n` shadowed predictions, `agreement_rate` (same label as the
        champion; None without rows), `decisions_agree_rate` (same accept/review decision, over rows where the
        champion did not say "unknown"), and `labelled` {n, champion_accuracy, challenger_accuracy}: both models
        against reviewer labels on the shadowed items that have one (a reviewer's "unknown" is left out: no class is
        right for it). Accuracies are None when no shadowed item is labelled. One row read (`shadow_totals`)."""
        with self.store.engine.connect() as conn:
            row = conn.execute(select(ShadowTotal.__table__)
                               .where(ShadowTotal.challenger_version == challenger_version)).first()
        t = row._mapping if row is not None else {}
        n, n_decisions, n_labelled = (int(t.get(k) or 0) for k in ("n", "comparable", "labelled"))
        return {
            "challenger_version": challenger_version,
            "n": n,
            "agreement_rate": int(t["agree"]) / n if n else None,
            "decisions_agree_rate": int(t["agree_decisions"]) / n_decisions if n_decisions else None,
            "first": _aware(t.get("first")),
            "last": _aware(t.get("last")),
            "labelled": {
                "n": n_labelled,
                "champion_accuracy": int(t["champion_right"]) / n_labelled if n_labelled else None,
                "challenger_accuracy": int(t["challenger_right"]) / n_labelled if n_labelled else None,
            },
        }


def _aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes for timezone-aware columns; they were written in UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value
