"""Shadow answers: what a challenger model said about live traffic it scored in the background (`sightline serve
--shadow CHALLENGER`), kept beside the champion's answer for comparison; never returned to a client.

One table, `shadow_predictions`, on the service database's `Base` (sightline.storage.store), created when missing:
one row per shadowed prediction and challenger, holding the challenger's label, confidence and decision and the
champion's label and decision as they were answered. Agreement is the share of rows whose two labels are equal;
where a reviewer labelled a shadowed prediction (predictions.reviewed_label, not "unknown"), both models'
accuracy on those items is measured against that label.

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

from sqlalchemy import DateTime, Float, ForeignKey, Integer, String, case, func, insert, select
from sqlalchemy.orm import Mapped, mapped_column

from sightline.storage.store import UNKNOWN_LABEL, Base, PredictionRecord, Store

__all__ = ["ShadowPrediction", "ShadowLog"]


def _now() -> datetime:
    return datetime.now(timezone.utc)


class ShadowPrediction(Base):
    """The challenger's answer for one served prediction (whose champion answer is `prediction_id`)."""

    __tablename__ = "shadow_predictions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prediction_id: Mapped[int] = mapped_column(ForeignKey("predictions.id", ondelete="CASCADE"), index=True)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    challenger_name: Mapped[str] = mapped_column(String(200))
    challenger_version: Mapped[str] = mapped_column(String(100), index=True)  # bundle version + content hash
    label: Mapped[str] = mapped_column(String(200))
    confidence: Mapped[float] = mapped_column(Float)  # calibrated probability of `label`, 0..1
    decision: Mapped[str] = mapped_column(String(16))  # "accept" | "review" (no open-set score for a challenger)
    champion_version: Mapped[str] = mapped_column(String(100))
    champion_label: Mapped[str] = mapped_column(String(200))
    champion_decision: Mapped[str] = mapped_column(String(16))
    latency_ms: Mapped[float] = mapped_column(Float)  # the challenger's decode + inference for the whole request


class ShadowLog:
    """Shadow rows in `store`'s database (the table is created when missing). Blocking: call from a worker thread
    in async code."""

    def __init__(self, store: Store) -> None:
        self.store = store
        ShadowPrediction.__table__.create(store.engine, checkfirst=True)

    def add(self, rows: Sequence[dict[str, Any]]) -> None:
        """Insert ShadowPrediction rows (its columns as keys, without id / created)."""
        if rows:
            created = _now()
            with self.store.engine.begin() as conn:
                conn.execute(insert(ShadowPrediction), [{"created": created, **r} for r in rows])

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
        q = (select(ShadowPrediction.challenger_version).group_by(ShadowPrediction.challenger_version)
             .order_by(func.min(ShadowPrediction.id)))
        with self.store.engine.connect() as conn:
            return list(conn.scalars(q))

    def summary(self, challenger_version: str) -> dict[str, Any]:
        """Counts for one challenger version: `n` shadowed predictions, `agreement_rate` (same label as the
        champion; None without rows), `decisions_agree_rate` (same accept/review decision, over rows where the
        champion did not say "unknown"), and `labelled` {n, champion_accuracy, challenger_accuracy}: both models
        against reviewer labels on the shadowed items that have one (a reviewer's "unknown" is left out: no class is
        right for it). Accuracies are None when no shadowed item is labelled."""
        s = ShadowPrediction
        same = case((s.label == s.champion_label, 1), else_=0)
        comparable = case((s.champion_decision != "unknown", 1), else_=0)
        same_decision = case(((s.champion_decision != "unknown") & (s.decision == s.champion_decision), 1), else_=0)
        totals = select(func.count(), func.sum(same), func.sum(comparable), func.sum(same_decision),
                        func.min(s.created), func.max(s.created)).where(s.challenger_version == challenger_version)
        truth = PredictionRecord.reviewed_label
        labelled = (select(func.count(), func.sum(case((s.champion_label == truth, 1), else_=0)),
                           func.sum(case((s.label == truth, 1), else_=0)))
                    .select_from(s).join(PredictionRecord, PredictionRecord.id == s.prediction_id)
                    .where(s.challenger_version == challenger_version, truth.is_not(None), truth != UNKNOWN_LABEL))
        with self.store.engine.connect() as conn:
            n, agree, n_decisions, agree_decisions, first, last = conn.execute(totals).one()
            n_labelled, champion_right, challenger_right = conn.execute(labelled).one()
        n, n_decisions, n_labelled = int(n or 0), int(n_decisions or 0), int(n_labelled or 0)
        return {
            "challenger_version": challenger_version,
            "n": n,
            "agreement_rate": int(agree or 0) / n if n else None,
            "decisions_agree_rate": int(agree_decisions or 0) / n_decisions if n_decisions else None,
            "first": _aware(first),
            "last": _aware(last),
            "labelled": {
                "n": n_labelled,
                "champion_accuracy": int(champion_right or 0) / n_labelled if n_labelled else None,
                "challenger_accuracy": int(challenger_right or 0) / n_labelled if n_labelled else None,
            },
        }


def _aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes for timezone-aware columns; they were written in UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value
