"""What the service keeps: every answered prediction, API keys (hashed), reviewers' labels, and for the monitor
each prediction's signals, the windows it tested and its alert states.

SQLAlchemy 2.0; SQLite by default (one file, WAL mode), PostgreSQL through `SIGHTLINE_DATABASE_URL`
(`postgresql+psycopg://...`, extra `sightline[postgres]`). Low-confidence and open-set predictions (decision
"review" or "unknown") form the review queue; a reviewer's label is stored beside the prediction as ground truth
for monitoring and retraining.

Monitoring lives in tables of its own, so a database written before it needs no ALTER (`create_all` adds them):
  prediction_signals  one row per monitored prediction, keyed by its id: projected features (float16 bytes),
                      calibrated softmax (float32 bytes), open-set score, unknown flag, image statistics (JSON)
  monitor_windows     each tested window's result (JSON), so /v1/monitor answers after a restart
  monitor_alerts      each alert's `AlertState` (JSON): its outbox, and a person's acknowledgement while raised;
                      one row per alert and model: keyed by (name, profile fingerprint), with the model's name
                      and version (`alert_rows`)

Roles, label history and kept images are side tables too (no ALTER of api_keys / predictions):
  api_key_roles       (key id, role) rows; a key without any row was made before roles existed and keeps what
                      every key could do then: predict and review (LEGACY_ROLES). `create_key` always writes >= 1.
  label_history       every change of a prediction's reviewed label: who (the key's name), when, old -> new
  web_sessions        one row per sign-in to the web app (the signed cookie names it): signing out or revoking the
                      key ends it, for every replica of the database (expired rows are deleted at a sign-in)
  kept_images         the image of a prediction kept in the image store (sha256, content type, size), why
                      ("review" / "unknown" for a queued decision, "sample" for an accepted prediction kept only
                      because it is in the random slice), and `in_slice`: the prediction is in the random slice.

The random slice is drawn from every answered prediction, whatever its decision (sightline.storage.images.
ImageKeeper), so accuracy measured on its labelled items estimates the accuracy of the whole stream, not of the
accepted predictions only. `IN_SLICE` is its one SQL condition; `slice_counts` tells how much of it is labelled.

Shadow mode's rows (sightline.storage.shadow) are side tables too:
  shadow_predictions  a challenger's answer for a served prediction, beside the champion's
  shadow_totals       running totals per challenger version (rows, agreement, accuracy on reviewer labels), moved
                      with each shadow row and each label change, so the shadow summary does not grow with the rows

Columns added to a table after databases were made (`_ADDED_COLUMNS`; there is no Alembic yet): each is added when
missing as Store opens the database (ALTER TABLE ... ADD COLUMN with a default: cheap on SQLite and PostgreSQL, no
rewrite of the rows), once, with its backfill in the same transaction. kept_images.in_slice came in this way; rows of
the version before it, which sampled accepted predictions only, are slice members exactly when their reason is
"sample", which the backfill writes and `IN_SLICE` also accepts (a replica still on that version may write more).
monitor_alerts.model_name / model_version came in this way too, nullable and without a backfill, and so did
monitor_alerts.profile, which is now part of the table's key (`_key_alerts_by_model`): alert state is kept per
(name, profile), so each model counts its own windows into its own rows (replicas of one model share them and take
turns). A database whose monitor_alerts is keyed by name alone is upgraded as Store opens it, once, in one
transaction that holds the database's write lock (SQLite: BEGIN IMMEDIATE and a table rebuild; PostgreSQL: an
advisory lock and a new primary key), so two processes opening it at once upgrade it once: every row is kept, and
a row that recorded no model (written before the column, profile NULL) gets NO_PROFILE ('', "not recorded"), which
no service owns: shown, acknowledgeable, never counted into.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    Select,
    String,
    case,
    create_engine,
    event,
    false,
    func,
    inspect,
    insert,
    or_,
    select,
    text,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError, ProgrammingError

from sightline.decision import UNKNOWN_LABEL  # a reviewer's label for "not a valid item" (no class fits)
from sightline.errors import SightlineError, UserInputError, one_line

__all__ = ["Store", "PredictionRecord", "ApiKeyRole", "LabelHistory", "KeptImage", "ShadowPrediction", "ShadowTotal",
           "LabelConflictError", "ROLES", "LEGACY_ROLES", "PredictionSignal", "MonitorWindow", "MonitorAlert",
           "NO_PROFILE", "ApiKey", "WebSession", "ApiKeyInfo", "hash_key", "safe_url", "as_database_url", "KEY_PREFIX", "DECISIONS", "QUEUED_DECISIONS",
           "QUEUE_SQL", "review_conditions", "IN_SLICE", "SAMPLE_REASON", "truth_counts", "check_sqlite_file"]

KEY_PREFIX = "sl_"
_LOOKUP_CHARS = 8  # characters after KEY_PREFIX stored in clear to find the row; the rest is only hashed
_KEY_TEXT = re.compile(r"[A-Za-z0-9_-]+")  # what a key is made of (KEY_PREFIX + secrets.token_urlsafe)
DECISIONS = ("accept", "review", "unknown")  # a prediction's decision (sightline.decision, the open-set score)
QUEUED_DECISIONS = tuple(d for d in DECISIONS if d != "accept")  # decisions that put a prediction in the review queue
# The review queue (unlabelled, not accepted) as SQL text: the condition of the partial index ix_predictions_queue and
# the filter the queue page reads with, one string, since SQLite uses a partial index only for a query whose WHERE
# holds its terms as written. "<> 'accept'" rather than "IN ('review', 'unknown')": SQLite searches
# ix_predictions_decision for an IN list (then sorts every queued row by confidence), but not for an inequality,
# so it reads this index in order and stops at the LIMIT.
QUEUE_SQL = "reviewed_label IS NULL AND decision <> 'accept'"
ROLES = ("predict", "review", "admin")
LEGACY_ROLES = frozenset({"predict", "review"})  # keys made before roles: any key could predict and work the queue
SAMPLE_REASON = "sample"  # kept_images.reason of an accepted prediction kept only because it is in the random slice


class LabelConflictError(SightlineError):
    """A label for a prediction that already has one, without `override`."""

    status_code = 409


def _now() -> datetime:
    return datetime.now(timezone.utc)


def hash_key(key: str) -> str:
    """sha256 hex of an API key: keys are random 256-bit tokens, so a fast hash is enough (no password)."""
    return hashlib.sha256(key.encode()).hexdigest()


class Base(DeclarativeBase):
    pass


NAME_MAX = 200  # characters of a key's name: it is recorded as the reviewer of labels, String(200) columns


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_MAX), index=True)
    lookup: Mapped[str] = mapped_column(String(32), unique=True, index=True)  # "sl_" + first 8 chars
    key_hash: Mapped[str] = mapped_column(String(64))
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    revoked: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class WebSession(Base):
    """A sign-in to the web app (/ui). Its signed cookie names the row by `id`; signing out sets `ended`, and so
    does revoking the key, so a copy of the cookie stops working on every replica that shares the database, not
    only when its expiry passes (up to 8 h later). Rows are deleted once expired (at the next sign-in)."""

    __tablename__ = "web_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # random (secrets.token_urlsafe), in the cookie
    key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), index=True)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    expires: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    ended: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class PredictionRecord(Base):
    __tablename__ = "predictions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now, index=True)
    request_id: Mapped[str] = mapped_column(String(32), index=True)
    filename: Mapped[str] = mapped_column(String(500))
    input_sha256: Mapped[str] = mapped_column(String(64), index=True)
    model_name: Mapped[str] = mapped_column(String(200))
    model_version: Mapped[str] = mapped_column(String(100))
    label: Mapped[str] = mapped_column(String(200), index=True)  # the dashboard's filter (read newest first)
    confidence: Mapped[float] = mapped_column(Float)
    top_k: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    decision: Mapped[str] = mapped_column(String(16), index=True)  # "accept" | "review" | "unknown"
    latency_ms: Mapped[float] = mapped_column(Float)  # whole request, receive to answer
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id"), nullable=True)
    reviewed_label: Mapped[str | None] = mapped_column(String(200), nullable=True)  # ground truth
    reviewer: Mapped[str | None] = mapped_column(String(200), nullable=True)
    reviewed: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    # The queue page reads the unlabelled queued predictions least confident first: this index holds exactly those,
    # in that order, so the page reads its few hundred candidates instead of sorting every queued row (a plain
    # confidence index would also lure the planner away from newest-first scans for the dashboard's bands).
    __table_args__ = (Index("ix_predictions_queue", "confidence", "id", sqlite_where=text(QUEUE_SQL),
                            postgresql_where=text(QUEUE_SQL)),)

    def to_dict(self) -> dict[str, Any]:
        return {c.name: getattr(self, c.name) for c in self.__table__.columns}


class ApiKeyRole(Base):
    __tablename__ = "api_key_roles"

    key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True)
    role: Mapped[str] = mapped_column(String(16), primary_key=True)


class LabelHistory(Base):
    """Append-only: one row per change of a prediction's reviewed label (old None for the first label)."""

    __tablename__ = "label_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prediction_id: Mapped[int] = mapped_column(ForeignKey("predictions.id", ondelete="CASCADE"), index=True)
    changed: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    reviewer: Mapped[str | None] = mapped_column(String(200), nullable=True)
    old_label: Mapped[str | None] = mapped_column(String(200), nullable=True)
    new_label: Mapped[str] = mapped_column(String(200))
    old_reviewer: Mapped[str | None] = mapped_column(String(200), nullable=True)


class KeptImage(Base):
    """A prediction whose image is in the image store. `evicted` is set (the row stays, so slice membership and
    the sampling rate stay known) when retention removed the bytes."""

    __tablename__ = "kept_images"

    prediction_id: Mapped[int] = mapped_column(ForeignKey("predictions.id", ondelete="CASCADE"), primary_key=True)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now, index=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    reason: Mapped[str] = mapped_column(String(16), index=True)  # "review" | "unknown" | "sample" (accept, in slice)
    content_type: Mapped[str] = mapped_column(String(32))
    size: Mapped[int] = mapped_column(Integer)
    evicted: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # in the random slice (drawn for every prediction, whatever its decision); added after databases were made
    in_slice: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false(), index=True)


# The random slice as SQL (kept_images joined): `in_slice`, or a "sample" row written before the column existed (or by
# a replica still running that version: it sampled accepted predictions only, all of them flagged "sample").
IN_SLICE = or_(KeptImage.in_slice == true(), KeptImage.reason == SAMPLE_REASON)

# (table, column, backfill statement or None): columns declared after databases were made, added by Store._add_columns
_ADDED_COLUMNS: tuple[tuple[str, str, Any], ...] = (
    ("kept_images", "in_slice",
     KeptImage.__table__.update().where(KeptImage.reason == SAMPLE_REASON).values(in_slice=True)),
    ("monitor_alerts", "profile", None),  # NOT NULL DEFAULT '': NO_PROFILE says "written before the column"
    ("monitor_alerts", "model_name", None),
    ("monitor_alerts", "model_version", None),
)


class ShadowPrediction(Base):
    """The answer of a challenger in shadow mode for one served prediction (whose champion answer is
    `prediction_id`); written and read by sightline.storage.shadow.ShadowLog."""

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


class ShadowTotal(Base):
    """Running totals of one challenger's shadow rows, so its summary is one row read however many rows there are.
    Moved in the transaction that writes what they count: a shadow row (ShadowLog.add) or a reviewer's label of a
    shadowed prediction (Store.record_label / clear_label); ShadowLog.rebuild_totals recomputes them from the rows."""

    __tablename__ = "shadow_totals"

    challenger_version: Mapped[str] = mapped_column(String(100), primary_key=True)
    first_id: Mapped[int] = mapped_column(Integer)  # its first and last shadow_predictions.id
    last_id: Mapped[int] = mapped_column(Integer)
    first: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    n: Mapped[int] = mapped_column(Integer)  # rows
    agree: Mapped[int] = mapped_column(Integer)  # same label as the champion
    comparable: Mapped[int] = mapped_column(Integer)  # the champion's decision was not "unknown"
    agree_decisions: Mapped[int] = mapped_column(Integer)  # ... and both decisions are the same
    labelled: Mapped[int] = mapped_column(Integer)  # the prediction has a reviewer label other than "unknown"
    champion_right: Mapped[int] = mapped_column(Integer)  # ... equal to the champion's label
    challenger_right: Mapped[int] = mapped_column(Integer)  # ... equal to the challenger's label


class PredictionSignal(Base):
    """What the monitor needs of one prediction (only written when the bundle has a reference profile)."""

    __tablename__ = "prediction_signals"

    prediction_id: Mapped[int] = mapped_column(ForeignKey("predictions.id", ondelete="CASCADE"), primary_key=True)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)  # = the prediction's
    profile: Mapped[str] = mapped_column(String(16), index=True)  # fingerprint of the reference profile used
    projected: Mapped[bytes] = mapped_column(LargeBinary)  # (C,) float16, the profile's PCA projection
    probabilities: Mapped[bytes] = mapped_column(LargeBinary)  # (K,) float32, softmax at the profile's temperature
    ood_score: Mapped[float | None] = mapped_column(Float, nullable=True)  # None: the profile chose no score
    unknown: Mapped[bool] = mapped_column(Boolean)
    image_stats: Mapped[dict[str, Any]] = mapped_column(JSON)  # sightline.monitor.stats.image_stats


class MonitorWindow(Base):
    """One tested window: kind "recent" (the last N predictions), "block" (consecutive blocks of N, which drive
    the alert), "hour" or "day"; `key` orders windows of one kind (last prediction id, or the period's number)."""

    __tablename__ = "monitor_windows"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    kind: Mapped[str] = mapped_column(String(16), index=True)
    key: Mapped[int] = mapped_column(Integer)
    profile: Mapped[str] = mapped_column(String(16))
    n: Mapped[int] = mapped_column(Integer)
    significant: Mapped[bool | None] = mapped_column(Boolean, nullable=True)  # None: not tested (too small)
    result: Mapped[dict[str, Any]] = mapped_column(JSON)


NO_PROFILE = ""  # monitor_alerts.profile of a row that recorded no model (written before the column): no one's


class MonitorAlert(Base):
    """The persisted `sightline.monitor.alerts.AlertState` of one alert of one model, outbox (`pending`) included:
    keyed by (name, profile), the reference-profile fingerprint of the model whose windows it counts."""

    __tablename__ = "monitor_alerts"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    profile: Mapped[str] = mapped_column(String(16), primary_key=True, default=NO_PROFILE,
                                         server_default=text("''"))
    state: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    # the model's name and version as it last counted a window; NULL: a row written before these columns
    model_name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    model_version: Mapped[str | None] = mapped_column(String(100), nullable=True)


@dataclass(frozen=True)
class ApiKeyInfo:
    id: int
    name: str
    roles: frozenset[str] = LEGACY_ROLES


def parse_roles(values: Iterable[str] | None) -> tuple[str, ...]:
    """Roles from repeated and/or comma-separated values ("review,admin"); default ("predict",)."""
    roles: list[str] = []
    for value in values or ():
        for part in value.split(","):
            part = part.strip().lower()
            if part and part not in roles:
                roles.append(part)
    bad = [r for r in roles if r not in ROLES]
    if bad:
        raise UserInputError(f"role {bad[0]!r} does not exist; use {', '.join(ROLES)} (several: repeat --role or "
                             "separate them with commas).")
    return tuple(roles) or ("predict",)


def check_sqlite_file(engine: Any) -> None:
    """Refuse a SQLite URL whose file exists and is something else (a text file, an image, a folder): SQLite
    fails on it with a traceback ("file is not a database") or, for a file of a few bytes, silently writes a
    database over it. An empty or missing file is fine: SQLite makes the database."""
    import os
    import sqlite3
    from pathlib import Path

    name = engine.url.database
    if engine.url.get_backend_name() != "sqlite" or not name or name == ":memory:" or name.startswith("file:"):
        return
    path = Path(name)
    if path.is_dir():
        raise UserInputError(f"database '{path}' is a folder; pass a SQLite file such as {path / 'sightline.db'}.")
    # never open() the file: closing any descriptor of it drops every POSIX lock this process holds on it (a
    # live Store's too), and another process closing the database then deletes the WAL under it: later writes
    # were lost. SQLite's own open and close (below) leave those locks alone.
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    if not size:
        return
    if not os.access(path, os.R_OK):
        raise UserInputError(f"database '{path}' cannot be read (permission denied); check its permissions.")
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        conn.execute("PRAGMA schema_version")
    except sqlite3.DatabaseError as exc:
        if "not a database" not in str(exc):
            raise
        raise UserInputError(f"'{path}' is not a SQLite database; pass the service's database (<bundle>/sightline.db "
                             "or SIGHTLINE_DATABASE_URL), or a new file name to start one.") from None
    finally:
        conn.close()


def _foreign_tables(url: str, exc: Exception) -> str:
    """The error for a database whose tables of our names lack our columns (another program's, or a pre-release
    Sightline's): which column, and what to do."""
    why = one_line(getattr(exc, "orig", None) or exc)
    return (f"database {safe_url(url)} has tables of Sightline's names without its columns ({why}): another "
            "program's, or from an unsupported early version; pass the service's database, or a new file or schema "
            "to start one.")


def review_conditions(sample: bool = False) -> list[Any]:
    """What waits for a reviewer, as WHERE clauses over predictions (and, with `sample`, kept_images): the queue
    (QUEUE_SQL, the condition of ix_predictions_queue as written, so a database can read the index alone) or the
    unlabelled members of the random slice whose image is kept. The one definition the store's list and count and
    the review page's queries share."""
    if not sample:
        return [text(QUEUE_SQL)]
    return [PredictionRecord.reviewed_label.is_(None), IN_SLICE, KeptImage.evicted.is_(None)]


def _review_items(q: Select, sample: bool) -> Select:
    if sample:
        q = q.join(KeptImage, KeptImage.prediction_id == PredictionRecord.id)
    return q.where(*review_conditions(sample))


_SQLITE_BUSY_S = 30  # how long a SQLite statement waits for another process's write lock (the busy timeout)


class Store:
    """Database access for the service and the `keys` commands. Thread-safe; methods are blocking (call
    them from a worker thread in async code)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {}
        if self.is_sqlite:
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": _SQLITE_BUSY_S}
        try:
            self.engine = create_engine(url, **kwargs)
        except (ArgumentError, ValueError, ImportError) as exc:  # malformed URL (ValueError: a port that is not a
            # number, a traceback before), or a driver that is not installed
            raise UserInputError(
                f"database URL {safe_url(url)} cannot be used ({url_problem(exc)}); check SIGHTLINE_DATABASE_URL or "
                "--database-url (PostgreSQL needs `pip install 'sightline[postgres]'`)."
            ) from None
        if self.is_sqlite:
            check_sqlite_file(self.engine)

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
            self._set_up_schema()
        except (OperationalError, ProgrammingError, IntegrityError) as exc:  # unreachable server, a SQLite path in
            # a missing folder, PostgreSQL refusing the schema (ProgrammingError: a traceback before), tables not ours
            self.engine.dispose()  # no pooled connection left open behind the error
            why = str(exc.orig or exc)
            if "no such column" in why or ("column" in why and "does not exist" in why):
                raise UserInputError(_foreign_tables(url, exc)) from None
            raise UserInputError(f"database {safe_url(url)} cannot be opened ({one_line(exc.orig or exc)}).") from None

    def _set_up_schema(self) -> None:
        """Create the tables and indexes a database lacks and upgrade what an earlier version made; every step is
        idempotent. Processes opening one new database at once (replicas starting together, a CLI command beside
        the service) race on the same CREATE TABLE: the loser's statement fails (SQLite: "already exists" or
        "database is locked"; PostgreSQL: a duplicate pg_type row) and its transaction is rolled back, so the
        set-up runs again and finds the winner's tables. Four stores opening a new database at once had failed
        every time, on both."""
        for attempt in range(5):
            try:
                Base.metadata.create_all(self.engine)
                self._add_columns()
                self._key_alerts_by_model()
                self._add_indexes()
                return
            except (OperationalError, ProgrammingError, IntegrityError) as exc:
                why = str(exc.orig or exc).lower()
                lost = any(s in why for s in ("already exists", "database is locked", "pg_type_typname_nsp_index"))
                if not lost or attempt == 4:
                    raise
                time.sleep(0.05 * (attempt + 1))

    def _add_columns(self) -> None:
        """Add the columns of `_ADDED_COLUMNS` that a database made by an earlier version lacks (see the module
        docstring), each with its backfill in one transaction. Several replicas may open an old database at once:
        PostgreSQL adds IF NOT EXISTS; on SQLite a column that appeared meanwhile is taken as added."""
        for table, column, backfill in _ADDED_COLUMNS:
            if column in {c["name"] for c in inspect(self.engine).get_columns(table)}:
                continue
            col = Base.metadata.tables[table].c[column]
            kind = col.type.compile(dialect=self.engine.dialect)
            if col.server_default is None:  # a nullable column: old rows read NULL
                assert col.nullable, f"{table}.{column}: an added NOT NULL column needs a server default"
                rest = ""
            else:
                default = col.server_default.arg.compile(dialect=self.engine.dialect)  # type: ignore[union-attr]
                rest = f" NOT NULL DEFAULT {default}"
            exists = "IF NOT EXISTS " if self.engine.dialect.name == "postgresql" else ""
            try:
                with self._write(), self.engine.begin() as conn:
                    conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {exists}{column} {kind}{rest}"))
                    if backfill is not None:
                        conn.execute(backfill)
            except OperationalError as exc:
                if "duplicate column" not in str(exc.orig or exc).lower():
                    raise

    def _alerts_keyed_by_name(self, conn: Any) -> bool:
        return inspect(conn).get_pk_constraint("monitor_alerts")["constrained_columns"] == ["name"]

    def _key_alerts_by_model(self) -> None:
        """Upgrade a monitor_alerts keyed by name alone to the (name, profile) key (see the module docstring): in
        one transaction under the database's write lock, checked again inside it, so a second process that
        opens the database at the same moment finds it done. No row is lost: NULL profiles become NO_PROFILE."""
        with self.engine.connect() as conn:
            if not self._alerts_keyed_by_name(conn):
                return
        table = MonitorAlert.__table__
        if self.is_sqlite:
            from sqlalchemy import MetaData
            from sqlalchemy.schema import CreateTable

            new = table.to_metadata(MetaData(), name="monitor_alerts_new")
            columns = "name, profile, state, updated, model_name, model_version"
            with self._write(), self.engine.connect() as conn:
                conn.exec_driver_sql("BEGIN IMMEDIATE")  # the file's write lock, held to the commit
                try:
                    if self._alerts_keyed_by_name(conn):
                        conn.exec_driver_sql("DROP TABLE IF EXISTS monitor_alerts_new")  # left by nothing: a guard
                        conn.execute(CreateTable(new))
                        conn.exec_driver_sql(
                            f"INSERT INTO monitor_alerts_new ({columns}) SELECT name, COALESCE(profile, ''), state, "
                            "updated, model_name, model_version FROM monitor_alerts")
                        conn.exec_driver_sql("DROP TABLE monitor_alerts")
                        conn.exec_driver_sql("ALTER TABLE monitor_alerts_new RENAME TO monitor_alerts")
                except BaseException:
                    conn.rollback()
                    raise
                conn.commit()
            return
        with self.engine.begin() as conn:
            if self.engine.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('sightline.monitor_alerts'))"))
            if not self._alerts_keyed_by_name(conn):
                return
            key = inspect(conn).get_pk_constraint("monitor_alerts")["name"]
            conn.execute(table.update().where(table.c.profile.is_(None)).values(profile=NO_PROFILE))
            conn.execute(text("ALTER TABLE monitor_alerts ALTER COLUMN profile SET DEFAULT '', "
                              "ALTER COLUMN profile SET NOT NULL"))
            conn.execute(text(f'ALTER TABLE monitor_alerts DROP CONSTRAINT "{key}", '
                              "ADD PRIMARY KEY (name, profile)"))

    def _add_indexes(self) -> None:
        """Indexes of the predictions table declared after databases were made: `create_all` creates missing
        tables with their indexes but never adds an index to a table that exists (CREATE INDEX IF NOT EXISTS: a
        no-op once there; the first open of a large old database builds them once)."""
        from sqlalchemy.schema import CreateIndex

        with self._write(), self.engine.begin() as conn:
            for index in sorted(PredictionRecord.__table__.indexes, key=lambda ix: str(ix.name)):
                conn.execute(CreateIndex(index, if_not_exists=True))
            for table, column, _ in _ADDED_COLUMNS:  # an added column's index: create_all skipped it too
                for index in sorted(Base.metadata.tables[table].indexes, key=lambda ix: str(ix.name)):
                    if [c.name for c in index.columns] == [column]:
                        conn.execute(CreateIndex(index, if_not_exists=True))

    def _write(self) -> Any:
        return self._write_lock if self._write_lock is not None else _NullLock()

    def writing(self) -> Any:
        """The lock to hold around a write transaction on this database from outside Store (sightline.storage.
        shadow): SQLite takes one writer at a time, serialised here; a no-op on PostgreSQL."""
        return self._write()

    def close(self) -> None:
        self.engine.dispose()

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except Exception:  # noqa: BLE001 - readiness reports any database failure as "not ready"
            return False

    def writable(self, timeout_s: float = 0.25) -> bool:
        """Whether a write could start now, without writing anything (readiness: a replica that cannot store its
        predictions answers each with a 503). SQLite: take the file's write lock (BEGIN IMMEDIATE) and roll back,
        waiting at most `timeout_s` for another process's writer (the writes' own wait is 30 s), and at most
        `4 * timeout_s` for this process's own writers (then they hold the database that long: not ready either).
        PostgreSQL: one read of transaction_read_only (a standby, or default_transaction_read_only; its writers
        do not lock inserts out). False on any database error."""
        try:
            if not self.is_sqlite:
                with self.engine.connect() as conn:
                    return conn.execute(text("SELECT current_setting('transaction_read_only')")).scalar() != "on"
            assert self._write_lock is not None
            if not self._write_lock.acquire(timeout=4 * timeout_s):
                return False
            try:
                with self.engine.connect() as conn:
                    conn.exec_driver_sql(f"PRAGMA busy_timeout = {max(1, int(timeout_s * 1000))}")
                    try:
                        conn.exec_driver_sql("BEGIN IMMEDIATE")
                        conn.rollback()
                    finally:
                        conn.exec_driver_sql(f"PRAGMA busy_timeout = {_SQLITE_BUSY_S * 1000}")
                return True
            finally:
                self._write_lock.release()
        except Exception:  # noqa: BLE001 - readiness reports any database failure as "not ready"
            return False

    # --- API keys ---------------------------------------------------------------------------------------
    def create_key(self, name: str, roles: Iterable[str] | None = None) -> str:
        """Create a key for `name` with `roles` (default predict only); returns the key, which is stored only as
        a hash (show it once)."""
        if not name.strip():
            raise UserInputError("the key name is empty; give it the name of the client or person.")
        if len(name) > NAME_MAX:  # PostgreSQL refused the INSERT (a traceback); SQLite kept it
            raise UserInputError(f"the key name is {len(name)} characters long; use at most {NAME_MAX}.")
        if any(ch < " " or "\x7f" <= ch <= "\x9f" for ch in name):
            # the name is the reviewer in one-line answers ("already labelled 'cat' by NAME"), `keys list` and the
            # exports: a newline or a tab in it broke them (and PostgreSQL refuses a NUL)
            raise UserInputError(f"the key name {name[:40]!r} holds a control character (a newline, a tab...); use "
                                 "printable text.")
        granted = parse_roles(roles)
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        with self._write(), Session(self.engine) as session, session.begin():
            row = ApiKey(name=name, lookup=key[: len(KEY_PREFIX) + _LOOKUP_CHARS], key_hash=hash_key(key))
            session.add(row)
            session.flush()
            session.add_all([ApiKeyRole(key_id=row.id, role=r) for r in granted])
        return key

    def _roles(self, session: Session, key_ids: Sequence[int]) -> dict[int, frozenset[str]]:
        found: dict[int, set[str]] = {}
        if key_ids:
            for key_id, role in session.execute(
                select(ApiKeyRole.key_id, ApiKeyRole.role).where(ApiKeyRole.key_id.in_(key_ids))
            ):
                found.setdefault(key_id, set()).add(role)
        return {i: frozenset(found[i]) if i in found else LEGACY_ROLES for i in key_ids}

    def verify_key(self, key: str) -> ApiKeyInfo | None:
        """The key's owner when the key exists and is not revoked, else None (constant-time hash compare)."""
        if not key.startswith(KEY_PREFIX) or len(key) < len(KEY_PREFIX) + _LOOKUP_CHARS + 8:
            return None
        if not _KEY_TEXT.fullmatch(key):  # no key has other characters; PostgreSQL refused a NUL in the lookup (500)
            return None
        with self._sessions() as session:
            row = session.scalars(
                select(ApiKey).where(ApiKey.lookup == key[: len(KEY_PREFIX) + _LOOKUP_CHARS])
            ).first()
            if row is None or row.revoked is not None:
                return None
            if not hmac.compare_digest(row.key_hash, hash_key(key)):
                return None
            return ApiKeyInfo(id=row.id, name=row.name, roles=self._roles(session, [row.id])[row.id])

    def list_keys(self) -> list[dict[str, Any]]:
        with self._sessions() as session:
            rows = session.scalars(select(ApiKey).order_by(ApiKey.id)).all()
            roles = self._roles(session, [r.id for r in rows])
        return [
            {"id": r.id, "name": r.name, "prefix": r.lookup, "roles": sorted(roles[r.id]), "created": r.created,
             "revoked": r.revoked}
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
            if rows:  # its web app sessions end with it (the session check reads the key's revocation too)
                w = WebSession.__table__
                session.execute(w.update().where(w.c.key_id.in_([r.id for r in rows]), w.c.ended.is_(None))
                                .values(ended=_now()))
        return len(rows)

    # --- web app sessions --------------------------------------------------------------------------------
    def start_web_session(self, key_id: int, max_age_s: float) -> str:
        """A new web app session of key `key_id`, valid `max_age_s` seconds unless ended; returns its id (for the
        signed cookie). Sessions expired by now are deleted in the same transaction (a sign-in is rare)."""
        from datetime import timedelta

        sid = secrets.token_urlsafe(24)
        now = _now()
        w = WebSession.__table__
        with self._write(), self.engine.begin() as conn:
            conn.execute(w.delete().where(w.c.expires < now))
            conn.execute(insert(w).values(id=sid, key_id=key_id, created=now,
                                          expires=now + timedelta(seconds=max_age_s)))
        return sid

    def end_web_session(self, sid: str) -> bool:
        """Sign-out: the session ends for every process reading this database; False when it was not live."""
        w = WebSession.__table__
        with self._write(), self.engine.begin() as conn:
            done = conn.execute(w.update().where(w.c.id == sid[:64], w.c.ended.is_(None)).values(ended=_now()))
        return bool(done.rowcount)

    def web_session_live(self, sid: str, *, key_must_be_active: bool = True) -> bool:
        """The session exists, has not ended or expired and (with `key_must_be_active`) its key is not revoked:
        one primary-key read."""
        w = WebSession.__table__
        q = (select(w.c.ended, w.c.expires, ApiKey.revoked).join(ApiKey, ApiKey.id == w.c.key_id)
             .where(w.c.id == sid[:64]))
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
        if row is None or row.ended is not None or _aware(row.expires) <= _now():
            return False
        return not (key_must_be_active and row.revoked is not None)

    # --- predictions -----------------------------------------------------------------------------------
    def add_predictions(
        self, rows: Iterable[dict[str, Any]], signals: Sequence[dict[str, Any] | None] | None = None, *,
        kept: Sequence[dict[str, Any]] = (),
    ) -> list[int]:
        """Insert prediction rows (PredictionRecord columns as dict keys) and, when given, their monitoring
        signals (PredictionSignal columns without `prediction_id` / `created`; one per row, None to skip) and their
        kept-image rows (KeptImage columns, each with `row`: the index in `rows` of its prediction, instead of
        `prediction_id`), all in ONE transaction: a prediction is stored with its kept image or not at all, so a
        request answered 503 stored nothing and its retry does not store it twice. Returns the prediction ids, in
        order.

        One Core INSERT ... RETURNING for all rows (no ORM objects): this runs once per request on the hot path."""
        rows = list(rows)
        if not rows:
            return []
        if signals is not None and len(signals) != len(rows):
            raise ValueError(f"{len(signals)} signal rows for {len(rows)} predictions")
        if any(not 0 <= k["row"] < len(rows) for k in kept):
            raise ValueError(f"a kept-image row names a prediction outside the {len(rows)} rows")
        created = _now()
        params = [{"created": created, **row} for row in rows]
        stmt = insert(PredictionRecord).returning(PredictionRecord.id, sort_by_parameter_order=True)
        with self._write(), self.engine.begin() as conn:
            ids = list(conn.scalars(stmt, params))
            extra = [{"prediction_id": i, "created": created, **sig}
                     for i, sig in zip(ids, signals or []) if sig is not None]
            if extra:
                conn.execute(insert(PredictionSignal), extra)
            if kept:
                conn.execute(insert(KeptImage), [{"created": created, "prediction_id": ids[k["row"]],
                                                  **{c: v for c, v in k.items() if c != "row"}} for k in kept])
            return ids

    def count_predictions(self, since: datetime | None = None) -> int:
        """Predictions stored (since `since`, when given)."""
        q = select(func.count()).select_from(PredictionRecord)
        if since is not None:
            q = q.where(PredictionRecord.created >= since)
        with self._sessions() as session:
            return int(session.scalar(q) or 0)

    def get_prediction(self, prediction_id: int) -> dict[str, Any] | None:
        with self._sessions() as session:
            row = session.get(PredictionRecord, prediction_id)
            return row.to_dict() if row is not None else None

    def review_queue(self, *, limit: int = 50, offset: int = 0, sample: bool = False) -> list[dict[str, Any]]:
        """Predictions with decision "review" or "unknown" that no reviewer has labelled yet, oldest first; with
        `sample`, instead the unlabelled members of the random slice whose image is kept, whatever their decision
        (drawn from all predictions: labelled, it measures production accuracy without the queue's bias towards
        hard cases; a queued member is in both lists, and a label given in either counts for both)."""
        q = _review_items(select(PredictionRecord), sample)
        with self._sessions() as session:
            rows = session.scalars(q.order_by(PredictionRecord.id).limit(limit).offset(offset)).all()
        return [r.to_dict() for r in rows]

    def review_count(self, *, sample: bool = False) -> int:
        """How many items `review_queue(sample=sample)` would list without a limit, in one COUNT (the queue's from
        the partial index ix_predictions_queue alone)."""
        q = _review_items(select(func.count()).select_from(PredictionRecord), sample)
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar_one())

    def record_label(
        self, prediction_id: int, label: str, *, reviewer: str | None = None, override: bool = False
    ) -> dict[str, Any] | None:
        """Store a reviewer's label as ground truth; None when the prediction does not exist. A prediction that
        already has a label keeps it (LabelConflictError) unless `override`; every change is appended to
        label_history in the same transaction (the row is locked on PostgreSQL, so two reviewers take turns)."""
        with self._write(), Session(self.engine, expire_on_commit=False) as session, session.begin():
            row = session.get(PredictionRecord, prediction_id, with_for_update=True)
            if row is None:
                return None
            if row.reviewed_label is not None and not override:
                raise LabelConflictError(
                    f"prediction {prediction_id} is already labelled {row.reviewed_label!r} by {row.reviewer}; "
                    'send "override": true to change it (the change is kept in the label history).'
                )
            now = _now()
            old = row.reviewed_label
            session.add(LabelHistory(prediction_id=prediction_id, changed=now, reviewer=reviewer,
                                     old_label=old, new_label=label, old_reviewer=row.reviewer))
            row.reviewed_label = label
            row.reviewer = reviewer
            row.reviewed = now
            _label_changed(session, prediction_id, old, label)
            return row.to_dict()

    def clear_label(self, prediction_id: int, *, reviewer: str | None = None) -> dict[str, Any] | None:
        """Undo a first label: the prediction goes back to unlabelled, kept in label_history as a change to the
        empty label (`new_label == ""` means "label removed"). None when the prediction does not exist."""
        with self._write(), Session(self.engine, expire_on_commit=False) as session, session.begin():
            row = session.get(PredictionRecord, prediction_id, with_for_update=True)
            if row is None:
                return None
            if row.reviewed_label is not None:
                old = row.reviewed_label
                session.add(LabelHistory(prediction_id=prediction_id, changed=_now(), reviewer=reviewer,
                                         old_label=old, new_label="", old_reviewer=row.reviewer))
                row.reviewed_label = row.reviewer = row.reviewed = None
                _label_changed(session, prediction_id, old, None)
            return row.to_dict()

    def undo_label(self, prediction_id: int, *, reviewer: str | None) -> dict[str, Any] | None:
        """Undo `reviewer`'s last change of a prediction's label, in one transaction (the row locked): back to the
        label before it and to *its* reviewer and time (an override undone is the first reviewer's label again, not
        the undoer's), or to unlabelled. Kept in label_history like any change. None when the prediction does not
        exist; LabelConflictError when its last change is not this reviewer's, or is itself an undo (a label removed,
        or the change before it reversed by the same reviewer)."""
        h = LabelHistory
        with self._write(), Session(self.engine, expire_on_commit=False) as session, session.begin():
            row = session.get(PredictionRecord, prediction_id, with_for_update=True)
            if row is None:
                return None
            last, before = (session.scalars(select(h).where(h.prediction_id == prediction_id)
                                            .order_by(h.id.desc()).limit(2)).all() + [None, None])[:2]
            # an undo is not undone in turn (that would redo): it is the change before it, reversed, by its reviewer
            undo = before is not None and (last.reviewer, last.old_label, last.new_label or None) == (
                before.reviewer, before.new_label, before.old_label)
            if last is None or last.reviewer != reviewer or last.new_label == "" or undo:
                raise LabelConflictError(f"nothing of yours to undo on prediction {prediction_id}.")
            old, label = row.reviewed_label, last.old_label
            session.add(LabelHistory(prediction_id=prediction_id, changed=_now(), reviewer=reviewer,
                                     old_label=old, new_label=label or "", old_reviewer=row.reviewer))
            row.reviewed_label = label
            row.reviewer = last.old_reviewer if label is not None else None
            row.reviewed = (before.changed if before is not None and before.new_label == label else _now()) \
                if label is not None else None
            _label_changed(session, prediction_id, old, label)
            return row.to_dict()

    def label_history(self, prediction_id: int | None = None) -> list[dict[str, Any]]:
        """Label changes, oldest first (of one prediction, or all)."""
        q = select(LabelHistory).order_by(LabelHistory.id)
        if prediction_id is not None:
            q = q.where(LabelHistory.prediction_id == prediction_id)
        with self._sessions() as session:
            return [{c.name: getattr(r, c.name) for c in LabelHistory.__table__.columns}
                    for r in session.scalars(q).all()]

    def labelled_without_kept_image(self) -> list[dict[str, Any]]:
        """Labelled predictions whose image was never kept (accepted and outside the random slice): {prediction_id,
        reviewed_label}, oldest first. Their labels count for monitoring, but no export can train on them."""
        q = (select(PredictionRecord.id, PredictionRecord.reviewed_label)
             .outerjoin(KeptImage, KeptImage.prediction_id == PredictionRecord.id)
             .where(PredictionRecord.reviewed_label.is_not(None), KeptImage.prediction_id.is_(None))
             .order_by(PredictionRecord.id))
        with self.engine.connect() as conn:
            return [{"prediction_id": i, "reviewed_label": label} for i, label in conn.execute(q)]

    # --- kept images -----------------------------------------------------------------------------------
    def add_kept_images(self, rows: Sequence[dict[str, Any]]) -> None:
        """KeptImage rows (prediction_id, sha256, reason, content_type, size)."""
        if rows:
            created = _now()
            with self._write(), self.engine.begin() as conn:
                conn.execute(insert(KeptImage), [{"created": created, **r} for r in rows])

    def kept_image(self, prediction_id: int) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(KeptImage.__table__).where(KeptImage.prediction_id == prediction_id)).first()
        return dict(row._mapping) if row is not None else None

    def kept_images(self) -> list[dict[str, Any]]:
        """Every kept-image row with its prediction's decision, label and reviewer label, oldest first; `in_slice`
        is slice membership as `IN_SLICE` reads it (old "sample" rows included)."""
        columns = [c for c in KeptImage.__table__.c if c.name != "in_slice"]
        q = (select(*columns, IN_SLICE.label("in_slice"), PredictionRecord.decision, PredictionRecord.label,
                    PredictionRecord.reviewed_label, PredictionRecord.reviewer, PredictionRecord.reviewed,
                    PredictionRecord.filename, PredictionRecord.model_version)
             .join(PredictionRecord, PredictionRecord.id == KeptImage.prediction_id)
             .order_by(KeptImage.prediction_id))
        with self.engine.connect() as conn:
            return [{**r._mapping, "in_slice": bool(r.in_slice)} for r in conn.execute(q)]

    def slice_counts(self) -> dict[str, dict[str, int]]:
        """How much of the random slice is labelled, per decision: {decision: {n (members), labelled (a reviewer
        label, "unknown" included), unlabelled_evicted (image gone before anyone labelled it)}}, every decision
        present. Its accuracy is unbiased once each decision's members are labelled alike (all of them, or a share
        that does not depend on how hard they were)."""
        p, k = PredictionRecord, KeptImage
        q = (select(p.decision, func.count(),
                    func.sum(case((p.reviewed_label.is_not(None), 1), else_=0)),
                    func.sum(case((p.reviewed_label.is_(None) & k.evicted.is_not(None), 1), else_=0)))
             .select_from(k).join(p, p.id == k.prediction_id).where(IN_SLICE).group_by(p.decision))
        out = {d: {"n": 0, "labelled": 0, "unlabelled_evicted": 0} for d in DECISIONS}
        with self.engine.connect() as conn:
            for decision, n, labelled, gone in conn.execute(q):
                out[decision] = {"n": int(n), "labelled": int(labelled or 0), "unlabelled_evicted": int(gone or 0)}
        return out

    def live_image_shas(self, shas: Iterable[str]) -> set[str]:
        """Those of `shas` that a kept_images row not evicted still points to."""
        shas = list(shas)
        if not shas:
            return set()
        q = select(KeptImage.sha256).where(KeptImage.sha256.in_(shas), KeptImage.evicted.is_(None)).distinct()
        with self.engine.connect() as conn:
            return set(conn.scalars(q))

    def mark_evicted(self, prediction_ids: Sequence[int]) -> list[int]:
        """Mark the kept images of these predictions evicted (their files may go then), except those a reviewer
        has labelled or that are evicted already; returns the ids marked. Retention chooses from rows it read
        before: a label given since keeps its image, as labelled images always do (one UPDATE, so a label
        committed before it is seen on SQLite and PostgreSQL alike)."""
        if not prediction_ids:
            return []
        k, p = KeptImage, PredictionRecord
        unlabelled = select(p.id).where(p.id.in_(list(prediction_ids)), p.reviewed_label.is_(None))
        stmt = (k.__table__.update().where(k.prediction_id.in_(unlabelled), k.evicted.is_(None))
                .values(evicted=_now()).returning(k.prediction_id))
        with self._write(), self.engine.begin() as conn:
            return sorted(conn.scalars(stmt))

    # --- monitoring ------------------------------------------------------------------------------------
    _SIGNAL_COLUMNS = (
        PredictionSignal.prediction_id, PredictionSignal.created, PredictionSignal.projected,
        PredictionSignal.probabilities, PredictionSignal.ood_score, PredictionSignal.unknown,
        PredictionSignal.image_stats, PredictionRecord.label, PredictionRecord.confidence, PredictionRecord.decision,
        PredictionRecord.reviewed_label,
    )

    def signal_rows(
        self,
        profile: str,
        *,
        after_id: int | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        newest: int | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Monitored predictions recorded against reference profile `profile`, oldest first: the signal columns
        plus the prediction's label, confidence, decision and reviewed_label. `after_id` / `since` / `until`
        (created < until) narrow them; `newest` keeps only the last N; `limit` the first N."""
        q = (select(*self._SIGNAL_COLUMNS)
             .join(PredictionRecord, PredictionRecord.id == PredictionSignal.prediction_id)
             .where(PredictionSignal.profile == profile))
        if after_id is not None:
            q = q.where(PredictionSignal.prediction_id > after_id)
        if since is not None:
            q = q.where(PredictionSignal.created >= since)
        if until is not None:
            q = q.where(PredictionSignal.created < until)
        if newest is not None:
            q = q.order_by(PredictionSignal.prediction_id.desc()).limit(newest)
        else:
            q = q.order_by(PredictionSignal.prediction_id)
            if limit is not None:
                q = q.limit(limit)
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(q)]
        return rows[::-1] if newest is not None else rows

    def signal_summary(self, since: datetime | None = None) -> dict[str, dict[str, Any]]:
        """{profile fingerprint: {n, first, last, first_id, last_id}} of the monitored predictions (since)."""
        q = select(PredictionSignal.profile, func.count(), func.min(PredictionSignal.created),
                   func.max(PredictionSignal.created), func.min(PredictionSignal.prediction_id),
                   func.max(PredictionSignal.prediction_id)).group_by(PredictionSignal.profile)
        if since is not None:
            q = q.where(PredictionSignal.created >= since)
        with self.engine.connect() as conn:
            return {r[0]: {"n": int(r[1]), "first": _aware(r[2]), "last": _aware(r[3]), "first_id": r[4],
                           "last_id": r[5]} for r in conn.execute(q)}

    def add_window(self, *, kind: str, key: int, profile: str, n: int, significant: bool | None,
                   result: dict[str, Any]) -> None:
        """Keep one tested window's result (JSON-able, no NaN)."""
        with self._write(), self.engine.begin() as conn:
            conn.execute(insert(MonitorWindow), [{"created": _now(), "kind": kind, "key": int(key),
                                                  "profile": profile, "n": int(n), "significant": significant,
                                                  "result": result}])

    def latest_windows(self, profile: str) -> dict[str, dict[str, Any]]:
        """{kind: result} of the newest window of each kind tested against `profile`."""
        newest = (select(MonitorWindow.kind, func.max(MonitorWindow.id).label("id"))
                  .where(MonitorWindow.profile == profile).group_by(MonitorWindow.kind).subquery())
        q = select(MonitorWindow.kind, MonitorWindow.result).join(newest, newest.c.id == MonitorWindow.id)
        with self.engine.connect() as conn:
            return {r[0]: r[1] for r in conn.execute(q)}

    def alert_states(self, profile: str = NO_PROFILE) -> dict[str, dict[str, Any]]:
        """{alert name: persisted AlertState JSON} of the model whose reference profile is `profile` (its
        fingerprint; NO_PROFILE: the rows that recorded no model)."""
        q = select(MonitorAlert.name, MonitorAlert.state).where(MonitorAlert.profile == profile)
        with self.engine.connect() as conn:
            return {r[0]: r[1] for r in conn.execute(q)}

    def alert_rows(self) -> list[dict[str, Any]]:
        """Every alert of every model, by name then profile: [{"name", "profile" (fingerprint; None for a row that
        recorded no model), "model" ({"name", "version"} or None), "state" (AlertState JSON)}]."""
        a = MonitorAlert
        with self.engine.connect() as conn:
            rows = conn.execute(select(a.name, a.profile, a.model_name, a.model_version, a.state)
                                .order_by(a.name, a.profile)).all()
        return [{"name": r[0], "profile": r[1] or None, "model": None if r[2] is None else {"name": r[2],
                                                                                          "version": r[3]},
                 "state": r[4]} for r in rows]

    def update_alert(self, name: str, change: Callable[[dict[str, Any] | None], dict[str, Any]], *,
                     model: dict[str, str] | None = None, profile: str | None = None) -> dict[str, Any]:
        """Read alert `name`'s state (None when new), apply `change`, write the result back, in one transaction
        that locks the row (PostgreSQL: SELECT ... FOR UPDATE, so replicas of one model take turns); returns the
        new state. The row is `model`'s ({"profile", "name", "version"}: the model whose window is counted; its
        name and version are recorded), else `profile`'s (a person's acknowledgement, a delivered event: the
        row's model is left as it is), else the row that records no model (NO_PROFILE)."""
        if model is not None:
            assert model["profile"], "a model counting windows has a profile fingerprint"
            key, recorded = model["profile"], {"model_name": model["name"], "model_version": model["version"]}
        else:
            key, recorded = NO_PROFILE if profile is None else profile, {}
        row = (MonitorAlert.name == name) & (MonitorAlert.profile == key)
        for attempt in range(2):  # a replica may insert the same new alert at the same moment: read it again
            try:
                with self._write(), self.engine.begin() as conn:
                    current = conn.execute(
                        select(MonitorAlert.state).where(row).with_for_update()).scalar_one_or_none()
                    new = change(current)
                    if current is None:
                        conn.execute(insert(MonitorAlert),
                                     [{"name": name, "profile": key, "state": new, "updated": _now(), **recorded}])
                    else:
                        conn.execute(MonitorAlert.__table__.update().where(row)
                                     .values(state=new, updated=_now(), **recorded))
                    return new
            except IntegrityError:
                if attempt:
                    raise
        raise AssertionError("unreachable")


def truth_counts(truth: str | None, label: str, champion_label: str) -> tuple[int, int, int]:
    """(labelled, champion right, challenger right) of one shadow row under reviewer label `truth`: all 0 without
    a label or with "unknown" (no class is right for it)."""
    if truth is None or truth == UNKNOWN_LABEL:
        return 0, 0, 0
    return 1, int(champion_label == truth), int(label == truth)


def _label_changed(session: Session, prediction_id: int, old: str | None, new: str | None) -> None:
    """In the label's transaction (the prediction row locked): move the shadow totals of every challenger that
    scored this prediction from its `old` reviewer label to the `new` one (None: no label)."""
    s, t = ShadowPrediction, ShadowTotal
    conn = session.connection()
    deltas: dict[str, list[int]] = {}
    for version, label, champion_label in conn.execute(
            select(s.challenger_version, s.label, s.champion_label).where(s.prediction_id == prediction_id)):
        after, before = truth_counts(new, label, champion_label), truth_counts(old, label, champion_label)
        d = deltas.setdefault(version, [0, 0, 0])
        for i in range(3):
            d[i] += after[i] - before[i]
    for version in sorted(deltas):  # the order ShadowLog.add takes these rows in too
        n, champion, challenger = deltas[version]
        if n or champion or challenger:
            conn.execute(t.__table__.update().where(t.challenger_version == version).values(
                labelled=t.labelled + n, champion_right=t.champion_right + champion,
                challenger_right=t.challenger_right + challenger))


def as_database_url(text: str) -> str:
    """A SQLAlchemy URL as given, or a plain path as the SQLite file it names: what every --database option and
    SIGHTLINE_DATABASE_URL take."""
    return text if "://" in text else f"sqlite:///{Path(text).expanduser().resolve()}"


def safe_url(url: str) -> str:
    """The URL with any password hidden, for error messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):  # ValueError: SQLAlchemy's int() of a port that is not a number
        return "'<unparseable>'"


def url_problem(exc: BaseException) -> str:
    """What is wrong with a database URL that SQLAlchemy refused, in a few words."""
    if isinstance(exc, ValueError) and not isinstance(exc, ArgumentError) and "int()" in str(exc):
        return "its port is not a number"
    return one_line(exc)


def parse_database_url(url: str) -> Any:
    """`url` as a SQLAlchemy URL; UserInputError (one line, the password hidden) when it is none."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise UserInputError(f"database URL {safe_url(url)} cannot be used ({url_problem(exc)}); check --database "
                             "or SIGHTLINE_DATABASE_URL.") from None


def _aware(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes for timezone-aware columns; they were written in UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


class _NullLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
