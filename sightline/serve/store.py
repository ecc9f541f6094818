"""What the service keeps: every answered prediction, API keys (hashed), reviewers' labels.

SQLAlchemy 2.0; SQLite by default (one file, WAL mode), PostgreSQL through `SIGHTLINE_DATABASE_URL`
(`postgresql+psycopg://...`, extra `sightline[postgres]`). Low-confidence predictions (decision "review")
form the review queue; a reviewer's label is stored beside the prediction as ground truth for monitoring
and retraining.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Integer, String, create_engine, event, func, insert, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.exc import ArgumentError, OperationalError

from sightline.errors import UserInputError, one_line

__all__ = ["Store", "PredictionRecord", "ApiKey", "ApiKeyInfo", "hash_key", "KEY_PREFIX"]

KEY_PREFIX = "sl_"
_LOOKUP_CHARS = 8  # characters after KEY_PREFIX stored in clear to find the row; the rest is only hashed


def _now() -> datetime:
    return datetime.now(timezone.utc)


def hash_key(key: str) -> str:
    """sha256 hex of an API key: keys are random 256-bit tokens, so a fast hash is enough (no password)."""
    return hashlib.sha256(key.encode()).hexdigest()


class Base(DeclarativeBase):
    pass


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    lookup: Mapped[str] = mapped_column(String(32), unique=True, index=True)  # "sl_" + first 8 chars
    key_hash: Mapped[str] = mapped_column(String(64))
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    revoked: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class PredictionRecord(Base):
    __tablename__ = "predictions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now, index=True)
    request_id: Mapped[str] = mapped_column(String(32), index=True)
    filename: Mapped[str] = mapped_column(String(500))
    input_sha256: Mapped[str] = mapped_column(String(64), index=True)
    model_name: Mapped[str] = mapped_column(String(200))
    model_version: Mapped[str] = mapped_column(String(100))
    label: Mapped[str] = mapped_column(String(200))
    confidence: Mapped[float] = mapped_column(Float)
    top_k: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    decision: Mapped[str] = mapped_column(String(16), index=True)  # "accept" | "review"
    latency_ms: Mapped[float] = mapped_column(Float)  # whole request, receive to answer
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id"), nullable=True)
    reviewed_label: Mapped[str | None] = mapped_column(String(200), nullable=True)  # ground truth
    reviewer: Mapped[str | None] = mapped_column(String(200), nullable=True)
    reviewed: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    def to_dict(self) -> dict[str, Any]:
        return {c.name: getattr(self, c.name) for c in self.__table__.columns}


@dataclass(frozen=True)
class ApiKeyInfo:
    id: int
    name: str


class Store:
    """Database access for the service and the `keys` commands. Thread-safe; methods are blocking (call
    them from a worker thread in async code)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {}
        if self.is_sqlite:
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        try:
            self.engine = create_engine(url, **kwargs)
        except (ArgumentError, ImportError) as exc:  # malformed URL, or a driver that is not installed
            raise UserInputError(
                f"database URL {_safe(url)} cannot be used ({one_line(exc)}); check SIGHTLINE_DATABASE_URL or "
                "--database-url (PostgreSQL needs `pip install 'sightline[postgres]'`)."
            ) from None
        if self.is_sqlite:

            @event.listens_for(self.engine, "connect")
            def _sqlite_pragmas(dbapi_conn, _record) -> None:  # WAL: readers do not block the writer
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.close()

        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite allows one writer at a time; serialising writes here avoids "database is locked" under load.
        self._write_lock = threading.Lock() if self.is_sqlite else None
        try:
            Base.metadata.create_all(self.engine)
        except OperationalError as exc:  # unreachable server, or a SQLite path in a missing folder
            raise UserInputError(f"database {_safe(url)} cannot be opened ({one_line(exc.orig or exc)}).") from None

    def _write(self) -> Any:
        return self._write_lock if self._write_lock is not None else _NullLock()

    def close(self) -> None:
        self.engine.dispose()

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except Exception:  # noqa: BLE001 - readiness reports any database failure as "not ready"
            return False

    # --- API keys ---------------------------------------------------------------------------------------
    def create_key(self, name: str) -> str:
        """Create a key for `name`; returns the key, which is stored only as a hash (show it once)."""
        if not name.strip():
            raise UserInputError("the key name is empty; give it the name of the client or person.")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        with self._write(), Session(self.engine) as session, session.begin():
            session.add(ApiKey(name=name, lookup=key[: len(KEY_PREFIX) + _LOOKUP_CHARS], key_hash=hash_key(key)))
        return key

    def verify_key(self, key: str) -> ApiKeyInfo | None:
        """The key's owner when the key exists and is not revoked, else None (constant-time hash compare)."""
        if not key.startswith(KEY_PREFIX) or len(key) < len(KEY_PREFIX) + _LOOKUP_CHARS + 8:
            return None
        with self._sessions() as session:
            row = session.scalars(
                select(ApiKey).where(ApiKey.lookup == key[: len(KEY_PREFIX) + _LOOKUP_CHARS])
            ).first()
        if row is None or row.revoked is not None:
            return None
        if not hmac.compare_digest(row.key_hash, hash_key(key)):
            return None
        return ApiKeyInfo(id=row.id, name=row.name)

    def list_keys(self) -> list[dict[str, Any]]:
        with self._sessions() as session:
            rows = session.scalars(select(ApiKey).order_by(ApiKey.id)).all()
        return [
            {"id": r.id, "name": r.name, "prefix": r.lookup, "created": r.created, "revoked": r.revoked}
            for r in rows
        ]

    def revoke_key(self, name_or_prefix: str) -> int:
        """Revoke every active key with this name (or this key prefix); returns how many were revoked."""
        with self._write(), Session(self.engine) as session, session.begin():
            rows = session.scalars(
                select(ApiKey).where(
                    ((ApiKey.name == name_or_prefix) | (ApiKey.lookup == name_or_prefix)) & ApiKey.revoked.is_(None)
                )
            ).all()
            for row in rows:
                row.revoked = _now()
        return len(rows)

    # --- predictions -----------------------------------------------------------------------------------
    def add_predictions(self, rows: Iterable[dict[str, Any]]) -> list[int]:
        """Insert prediction rows (PredictionRecord columns as dict keys); returns their ids, in order.

        One Core INSERT ... RETURNING for all rows (no ORM objects): this runs once per request on the hot path."""
        rows = list(rows)
        if not rows:
            return []
        created = _now()
        params = [{"created": created, **row} for row in rows]
        stmt = insert(PredictionRecord).returning(PredictionRecord.id, sort_by_parameter_order=True)
        with self._write(), self.engine.begin() as conn:
            return list(conn.scalars(stmt, params))

    def count_predictions(self) -> int:
        with self._sessions() as session:
            return int(session.scalar(select(func.count()).select_from(PredictionRecord)) or 0)

    def get_prediction(self, prediction_id: int) -> dict[str, Any] | None:
        with self._sessions() as session:
            row = session.get(PredictionRecord, prediction_id)
            return row.to_dict() if row is not None else None

    def review_queue(self, *, limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
        """Predictions with decision "review" that no reviewer has labelled yet, oldest first."""
        with self._sessions() as session:
            rows = session.scalars(
                select(PredictionRecord)
                .where(PredictionRecord.decision == "review", PredictionRecord.reviewed_label.is_(None))
                .order_by(PredictionRecord.id)
                .limit(limit)
                .offset(offset)
            ).all()
        return [r.to_dict() for r in rows]

    def record_label(self, prediction_id: int, label: str, *, reviewer: str | None = None) -> dict[str, Any] | None:
        """Store a reviewer's label as ground truth; None when the prediction does not exist."""
        with self._write(), Session(self.engine, expire_on_commit=False) as session, session.begin():
            row = session.get(PredictionRecord, prediction_id)
            if row is None:
                return None
            row.reviewed_label = label
            row.reviewer = reviewer
            row.reviewed = _now()
            return row.to_dict()


def _safe(url: str) -> str:
    """The URL with any password hidden, for error messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "'<unparseable>'"


class _NullLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
