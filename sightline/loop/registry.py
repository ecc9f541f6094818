"""The model registry (DESIGN.md, "The loop"): immutable model versions, the aliases `champion` and `challenger`,
an append-only log of every alias move, and the challenge verdicts that gate a promotion.

Stored in the service database (SQLAlchemy Core; SQLite by default, PostgreSQL at scale) in tables of its own,
created when missing. A version is a bundle's content hash (sightline.loop.content) with its dataset version and
its metrics on the frozen test split (model.json's `metrics.test`, written by `sightline evaluate`); its files are
copied into the registry folder and made read-only, so a version cannot change after it is added. The version and
log tables refuse UPDATE and DELETE in the database itself (triggers), not only in this code.

`promote` moves an alias to a version; moving `champion` to a version whose last challenge failed its rule is
refused unless `force` (then logged as forced); the challenge consulted is its last one against the champion it would
replace, when there is one. `rollback` moves an alias back to the version it pointed to before
its last promotion (promotions stack; a rollback pops one). Bad input (unknown version, unknown alias, nothing to
roll back to) is a one-line UserInputError and changes nothing.

Example:
    >>> reg = Registry("sqlite:///state/sightline.db")            # copies go to state/registry/
    >>> v = reg.add("runs/r2/bundle").version
    >>> reg.promote(v.ref, reason="wins on production, p=0.003")
    >>> reg.resolve("champion").path                                # the read-only copy to serve
"""
from __future__ import annotations

import getpass
import hashlib
import logging
import os
import shutil
import stat
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, insert, select, text, update
from sqlalchemy.engine import Connection, Engine, Row, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError

from sightline.errors import SightlineError, UserInputError, one_line
from sightline.loop.schema import registry_tables
from sightline.storage.images import is_url
from sightline.storage.store import url_problem

__all__ = ["ALIASES", "DATABASE_ENV", "CACHE_ENV", "Registry", "Version", "Move", "Added", "database_url",
           "default_root", "cache_root", "current_user"]

ALIASES = ("champion", "challenger")
DATABASE_ENV = "SIGHTLINE_DATABASE_URL"  # the service's database, as `sightline serve` reads it
CACHE_ENV = "SIGHTLINE_REGISTRY_CACHE"  # local copies of a registry kept at an fsspec URL (default ~/.cache/...)
_DB_FILES = (".db", ".db-wal", ".db-shm", ".db-journal", ".sqlite", ".sqlite3")  # never copied with a bundle
# what an fsspec listing may say of a file's version beside its size (object stores ETag, local mtime, memory created)
_VERSION_KEYS = ("ETag", "etag", "LastModified", "last_modified", "mtime", "created", "md5", "crc32c", "generation")

log = logging.getLogger("sightline.registry")


def database_url(url: str | None) -> str:
    """The database to use: `url` (a SQLAlchemy URL, or a path to a SQLite file), else $SIGHTLINE_DATABASE_URL.
    `sightline serve` keeps its database at <bundle>/sightline.db unless that variable is set; the registry has no
    bundle to default to, so one of the two must be given."""
    url = url or os.environ.get(DATABASE_ENV)
    if not url:
        raise UserInputError(f"no database: pass --database URL (e.g. sqlite:///state/sightline.db, the service's "
                             f"database) or set {DATABASE_ENV}.")
    from sightline.storage.store import as_database_url

    return as_database_url(url)


def default_root(url: str) -> Path | None:
    """Where the registry keeps its copies by default: a `registry/` folder beside a SQLite file; None for a
    server database (PostgreSQL), which has no folder beside it."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number; the engine says so
        return None
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database).expanduser().resolve().parent / "registry"


def cache_root(url: str) -> Path:
    """Where the local copies of a registry kept at the fsspec URL `url` go: $SIGHTLINE_REGISTRY_CACHE (default
    ~/.cache/sightline/registry) / <16 hex characters of the URL's sha256>. ONNX Runtime and `load_bundle` read
    local files, so a version is fetched there (hash checked) before it is served."""
    base = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "sightline" / "registry"
    return Path(base).expanduser().resolve() / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]


def current_user() -> str:
    """Who is acting, for the log: the OS user name."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no USER variable and no passwd entry (some containers)
        return f"uid {os.getuid()}" if hasattr(os, "getuid") else "unknown"


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite hands back naive datetimes; they were written in UTC
        value = value.replace(tzinfo=timezone.utc)
    return value.isoformat(timespec="seconds")


@dataclass(frozen=True)
class Version:
    """One registered model version; `ref` ("v3") is how commands name it."""

    id: int
    bundle_hash: str  # sightline.loop.content.bundle_hash of the bundle
    name: str
    model_version: str  # the bundle's own version string (what the server reports)
    architecture: str
    classes: list[str]
    dataset_version: str | None
    test_metrics: dict[str, Any] | None  # model.json metrics["test"]; None when never evaluated on test
    path: str  # the registry's read-only copy
    source: str  # the folder it was added from
    added_at: str
    added_by: str
    reason: str | None
    # The registry's copy at an fsspec URL (s3://...) when the registry lives there; `path` is then the local copy,
    # present once `Registry.fetch` (called by `aliases` and `resolve`) has run. None for a registry folder.
    artifact: str | None = None

    @property
    def ref(self) -> str:
        return f"v{self.id}"

    def to_dict(self) -> dict[str, Any]:
        fields = [k for k in self.__dataclass_fields__ if k != "artifact" or self.artifact is not None]
        return {"ref": self.ref, **{k: getattr(self, k) for k in fields}}


@dataclass(frozen=True)
class Move:
    """One entry of the alias log: `alias` moved from `from_ref` (None: it was unset) to `to_ref`."""

    id: int
    alias: str
    action: str  # "promote" | "rollback"
    from_ref: str | None
    to_ref: str
    by: str
    at: str
    reason: str | None
    forced: bool  # a promotion past a failed challenge
    challenge: dict[str, Any] | None  # the challenge consulted {"id", "promote", "at", "reasons"}; None: none

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class _BadCopy:
    """A remote copy that failed its check: the listing it had (to skip downloading the same files again), what
    was found ("missing" or the content hash) and the one-line error; `reported` once `aliases` raised it."""

    listing: tuple[tuple[str, ...], ...]
    found: str
    message: str
    reported: bool = False


@dataclass(frozen=True)
class Added:
    version: Version
    created: bool  # False: this content was registered before; nothing was copied
    move: Move | None = None  # the alias move `add(alias=...)` made
    restored: bool = False  # registered before, and its copy (missing or changed) was copied again from the bundle


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "(malformed URL)"


class Registry:
    """Model versions, aliases and their log in the database at `url`; copies of the bundles under `root` (default:
    `registry/` beside a SQLite file; required for a server database when adding). `root` may be an fsspec URL
    (`s3://bucket/registry`): a bundle is then uploaded there when added, and fetched into a local cache
    (`cache_root`, hash checked) when `aliases` or `resolve` hands out its version, since models load from local
    files; `self.root` is that cache and `self.remote` the URL. `prefix` names the tables (`<prefix>versions`,
    `<prefix>aliases`, `<prefix>alias_log`, `<prefix>challenges`)."""

    def __init__(self, url: str, *, root: str | Path | None = None, prefix: str = "registry_") -> None:
        if not prefix.replace("_", "").isalnum():
            raise ValueError(f"table prefix {prefix!r} must be letters, digits and underscores")
        self.url = url
        self.remote: str | None = None
        if root is not None and is_url(root):
            from sightline.storage.images import check_url

            self.remote = os.fspath(root).rstrip("/")
            check_url(self.remote, what="registry")
            self.root: Path | None = cache_root(self.remote)
        else:
            self.root = Path(root).expanduser().resolve() if root is not None else default_root(url)
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30}
        try:
            self.engine: Engine = create_engine(url, **kwargs)
        except (ArgumentError, ValueError, ImportError) as exc:  # malformed URL (a port that is not a number: a
            # traceback before), or a driver that is not installed
            raise UserInputError(f"database URL {_safe(url)} cannot be used ({url_problem(exc)}); check --database or "
                                 f"{DATABASE_ENV} (PostgreSQL needs `pip install 'sightline[postgres]'`).") from None
        if url.startswith("sqlite"):
            from sightline.storage.store import check_sqlite_file

            check_sqlite_file(self.engine)

            @event.listens_for(self.engine, "connect")
            def _foreign_keys(dbapi_conn: Any, _record: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA foreign_keys=ON")
                cur.close()

        self._bad: dict[str, _BadCopy] = {}  # remote copy URL -> the bad content last seen there
        self._bad_lock = threading.Lock()
        self.metadata, self.tables = registry_tables(prefix)
        self._lock_key = f"sightline {prefix}aliases"
        try:
            self.metadata.create_all(self.engine)
        except OperationalError as exc:  # unreachable server, or a SQLite path in a missing folder
            raise UserInputError(f"database {_safe(url)} cannot be opened ({one_line(exc.orig or exc)}).") from None

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reading ----------------------------------------------------------------------------------------------
    def versions(self) -> list[Version]:
        """Every version, oldest first."""
        t = self.tables["versions"]
        with self.engine.connect() as conn:
            return [self._version(r) for r in conn.execute(select(t).order_by(t.c.id))]

    def aliases(self) -> dict[str, Version]:
        """alias -> the version it points to now (only aliases that are set), each one's local copy fetched.

        A remote copy that cannot be fetched (missing, or not matching its hash) raises UserInputError the first
        time this Registry meets that bad content; while the same bad content stays there, later calls leave that
        alias out instead of raising again (and download nothing), so a poller such as the service's registry
        watcher reports it once, keeps serving, and follows the other alias. New content at the copy is tried
        again: fetched when good, raised (reported once more) when bad in another way."""
        a, v = self.tables["aliases"], self.tables["versions"]
        with self.engine.connect() as conn:
            rows = conn.execute(select(a.c.alias, v).join(v, a.c.version_id == v.c.id).order_by(a.c.alias))
            found = {r.alias: self._version(r) for r in rows}
        for alias, version in list(found.items()):
            try:
                self.fetch(version)
            except UserInputError:
                with self._bad_lock:
                    bad = self._bad.get(version.artifact or "")
                    if bad is None or not bad.reported:
                        if bad is not None:
                            bad.reported = True
                        raise
                del found[alias]  # reported already: left out until its content changes
        return found

    def resolve(self, ref: str) -> Version:
        """A version by "v3" (or "3"), by alias ("champion"), or by a unique prefix (>= 6 hex characters) of its
        bundle hash. UserInputError naming what exists when nothing matches."""
        with self.engine.connect() as conn:
            version = self._resolve(conn, ref)
        self.fetch(version)
        return version

    def fetch(self, version: Version) -> Path:
        """The local folder of `version`: its `path`; for a registry at an fsspec URL, first copied from
        `version.artifact` into the cache (once; its hash checked, then made read-only). UserInputError when the
        remote copy is missing or does not match its hash."""
        local = Path(version.path)
        if version.artifact is None or local.is_dir():
            return local
        from fsspec.core import url_to_fs

        from sightline.loop.content import bundle_hash

        fs, base = url_to_fs(version.artifact)
        listing = _listing(fs, base)
        with self._bad_lock:
            bad = self._bad.get(version.artifact)
        if bad is not None and bad.listing == listing:  # the same files as last time: the same bad content
            raise UserInputError(bad.message)
        names = [entry[0] for entry in listing]
        if not names:
            self._remember_bad(version.artifact, listing, "missing",
                               f"{version.ref}'s copy {version.artifact} is missing or empty; add the bundle again.")
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.parent / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            for name in names:
                fs.get_file(f"{base.rstrip('/')}/{name}", str(tmp / name))
            got = bundle_hash(tmp)
            if got != version.bundle_hash:
                self._remember_bad(version.artifact, listing, got,
                                   f"{version.ref}'s copy {version.artifact} does not match its hash (registered "
                                   f"{version.bundle_hash[:12]}, found {got[:12]}); add the bundle again.")
            for path in tmp.iterdir():
                path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
            try:
                tmp.rename(local)
            except OSError:  # another process fetched it meanwhile: theirs stands
                if not local.is_dir():
                    raise
        finally:
            if tmp.exists():
                _make_writable(tmp)
                shutil.rmtree(tmp, ignore_errors=True)
        with self._bad_lock:
            self._bad.pop(version.artifact, None)
        return local

    def _remember_bad(self, artifact: str, listing: tuple[tuple[str, ...], ...], found: str, message: str) -> None:
        """Keep what was found at a bad copy (see `aliases`) and raise its one-line UserInputError. The same bad
        content under a new listing (files rewritten with the same bytes) stays reported."""
        with self._bad_lock:
            bad = self._bad.get(artifact)
            if bad is not None and bad.found == found:
                bad.listing = listing
            else:
                self._bad[artifact] = _BadCopy(listing, found, message)
                log.debug("registry copy %s is bad: %s", artifact, message)
        raise UserInputError(message)

    def history(self, alias: str | None = None) -> list[Move]:
        """The alias log, oldest first (one alias, or all)."""
        if alias is not None:
            _check_alias(alias)
        log = self.tables["log"]
        query = select(log).order_by(log.c.id)
        if alias is not None:
            query = query.where(log.c.alias == alias)
        with self.engine.connect() as conn:
            return [self._move(conn, r) for r in conn.execute(query).all()]

    def last_challenge(self, bundle_hash: str) -> dict[str, Any] | None:
        """The latest recorded challenge of a bundle (as challenger): {"id", "promote", "at", "reasons",
        "champion_hash", "summary"}; None when it was never challenged."""
        with self.engine.connect() as conn:
            return self._last_challenge(conn, bundle_hash)

    def gate_challenge(self, bundle_hash: str) -> dict[str, Any] | None:
        """The challenge that gates making the bundle the champion (see `promote`); None when it was never
        challenged."""
        with self.engine.connect() as conn:
            return self._gate_challenge(conn, bundle_hash)

    def intact(self, version: Version) -> bool:
        """Whether the registry's copy of `version` still has its hash (nobody changed the files); for a registry at
        an fsspec URL, the local copy (fetched first when missing)."""
        if version.artifact is not None:
            try:
                self.fetch(version)
            except (SightlineError, OSError):
                return False
        return _hash_or_none(Path(version.path)) == version.bundle_hash

    def restore_hint(self, version: Version) -> str:
        """How to restore a version whose copy is missing or changed, for messages: `registry add SOURCE` while the
        folder it was added from still has its content hash; otherwise that command would register a new version
        (after `sightline evaluate` or `export` rewrote the source) and restore nothing, so it is not advised."""
        source = Path(version.source)
        if _hash_or_none(source) == version.bundle_hash:
            return f"`sightline registry add {version.source}` restores them, or promote another version"
        state = "is gone" if not source.exists() else "has changed since it was added (evaluate or export rewrites it)"
        return (f"the folder it was added from, {version.source}, {state}, so adding it would register a new version, "
                f"not restore {version.ref}: promote another version, or add a bundle with the same files")

    # --- writing ----------------------------------------------------------------------------------------------
    def add(self, bundle: str | Path, *, by: str | None = None, reason: str | None = None, alias: str | None = None,
            force: bool = False) -> Added:
        """Register a bundle (RUN or bundle folder): copy its files into ROOT/<bundle hash>/ (read-only), check
        the copy's hash, insert the version. The same content added again returns the existing version. With
        `alias`, also `promote` it there (unless the alias already points to it); a promotion `promote` would refuse
        is refused before anything is copied."""
        from sightline.bundle import load_bundle
        from sightline.loop.content import bundle_hash

        if alias is not None:
            _check_alias(alias)
        b = load_bundle(bundle)
        assert b.path is not None
        v = self.tables["versions"]
        for column, value in (("name", b.name), ("model_version", str(b.version)), ("architecture", b.architecture),
                              ("dataset_version", b.dataset_version), ("added_by", by)):
            _check_width(v.c[column], value, "--by" if column == "added_by" else f"{b.path}/model.json {column}")
        _check_readable(b.path)
        digest = bundle_hash(b.path)
        if alias == "champion" and not force:
            with self.engine.connect() as conn:
                _refuse_failed(self._gate_challenge(conn, digest), f"{b.path}")
        with self.engine.connect() as conn:
            found = conn.execute(select(v).where(v.c.bundle_hash == digest)).first()
            current_id = self._alias_version(conn, alias) if alias is not None else None
            if current_id is not None and not force:
                _refuse_other_classes(b.classes, self._version_by_id(conn, current_id), alias, f"{b.path}")
        if found is not None:
            added = Added(self._version(found), created=False)
            if self.remote is None and not self.intact(added.version):  # its copy was damaged: restore it
                self._copy(b.path, digest)
                added = Added(self._version(found), created=False, restored=True)  # ROOT/<hash> now
        else:
            added = self._insert(b, digest, by=by, reason=reason)
        current = self.aliases().get(alias) if alias is not None else None
        if alias is None or (current is not None and current.id == added.version.id):
            return added
        move = self.promote(added.version.ref, alias=alias, by=by, reason=reason, force=force)
        return Added(added.version, added.created, move, added.restored)

    def record_challenge(self, result: dict[str, Any], *, by: str | None = None) -> int:
        """Keep a challenge's verdict (what sightline.loop.challenge.challenge returns) against the challenger's
        bundle hash; the latest one gates `promote`. Returns its id."""
        summary = {"rule": result["rule"], "data": result["data"], "files": result.get("files", {}),
                   "splits": {name: {"n_images": s["n_images"], "accuracy": s["accuracy"],
                                     "mcnemar_p": s["mcnemar"]["p_value"]} for name, s in result["splits"].items()}}
        row = {"challenger_hash": result["challenger"]["bundle_hash"],
               "champion_hash": result["champion"]["bundle_hash"], "promote": bool(result["verdict"]["promote"]),
               "reasons": list(result["verdict"]["reasons"]), "summary": summary, "at": _now(),
               "by": by or current_user()}
        with self.engine.begin() as conn:
            return int(conn.execute(insert(self.tables["challenges"]).values(**row)).inserted_primary_key[0])

    def promote(self, ref: str, *, alias: str = "champion", by: str | None = None, reason: str | None = None,
                force: bool = False) -> Move:
        """Point `alias` at version `ref` and log it. For `champion`, a version whose last challenge failed its rule
        is refused (UserInputError naming why) unless `force`, which is logged as forced."""
        _check_alias(alias)
        _check_width(self.tables["log"].c.by, by, "--by")
        with self._transaction() as conn:
            version = self._resolve(conn, ref)
            current = self._alias_version(conn, alias)
            if current == version.id:
                raise UserInputError(f"{version.ref} is already the {alias}; nothing changed.")
            last = self._gate_challenge(conn, version.bundle_hash) if alias == "champion" else None
            if not force:
                _refuse_failed(last, version.ref)
                if current is not None:
                    _refuse_other_classes(version.classes, self._version_by_id(conn, current), alias, version.ref)
            self._refuse_damaged(version)
            forced = bool(force and last is not None and not last["promote"])
            return self._move_alias(conn, alias, "promote", current, version.id, by=by, reason=reason, forced=forced,
                                    challenge_id=last["id"] if last else None)

    def rollback(self, *, alias: str = "champion", by: str | None = None, reason: str | None = None) -> Move:
        """Move `alias` back to the version it pointed to before its last promotion (promotions stack: a second
        rollback goes one further back). UserInputError when there is nothing to go back to."""
        _check_alias(alias)
        _check_width(self.tables["log"].c.by, by, "--by")
        with self._transaction() as conn:
            chain = self._chain(conn, alias)
            if len(chain) < 2:
                state = f"points to v{chain[-1]} and was never promoted from another version" if chain else "is not set"
                raise UserInputError(f"cannot roll back {alias}: it {state}; nothing changed.")
            self._refuse_damaged(self._version_by_id(conn, chain[-2]))
            return self._move_alias(conn, alias, "rollback", chain[-1], chain[-2], by=by, reason=reason, forced=False,
                                    challenge_id=None)

    # --- internals --------------------------------------------------------------------------------------------
    def _refuse_damaged(self, version: Version) -> None:
        """UserInputError when the registry's copy of `version` is missing or changed: an alias pointing there
        could not be served (a running service would keep its model; a restarted one would not start)."""
        if not self.intact(version):
            raise UserInputError(f"{version.ref}'s files at {version.artifact or version.path} are missing or changed; "
                                 f"nothing changed. {self.restore_hint(version)}.")

    def _insert(self, b: Any, digest: str, *, by: str | None, reason: str | None) -> Added:
        v = self.tables["versions"]
        if self.root is None:
            raise UserInputError(f"pass --root DIR: the folder where the registry keeps its copies of bundles (the "
                                 f"database {_safe(self.url)} has no folder beside it).")
        copy = self._copy(b.path, digest)
        stored = self._upload(copy, digest) if self.remote is not None else str(copy)
        test = b.metrics.get("test") if isinstance(b.metrics, dict) else None
        row = {"bundle_hash": digest, "name": b.name, "model_version": str(b.version), "architecture": b.architecture,
               "classes": list(b.classes), "dataset_version": b.dataset_version,
               "test_metrics": test if isinstance(test, dict) else None, "path": stored,
               "source": str(b.path.resolve()), "added_at": _now(), "added_by": by or current_user(),
               "reason": reason}
        try:
            with self.engine.begin() as conn:
                new_id = conn.execute(insert(v).values(**row)).inserted_primary_key[0]
        except IntegrityError:  # added by someone else between our check and our insert: theirs stands
            with self.engine.connect() as conn:
                return Added(self._version(conn.execute(select(v).where(v.c.bundle_hash == digest)).one()), False)
        return Added(self.resolve(f"v{new_id}"), created=True)

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """One write transaction in which alias moves run one at a time (SQLite: BEGIN IMMEDIATE; PostgreSQL: a
        transaction-level advisory lock), so two promotions cannot both start from the same state."""
        with self.engine.connect() as conn:
            if self.engine.dialect.name == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    conn.rollback()
                    raise
                conn.commit()
            else:
                with conn.begin():
                    if self.engine.dialect.name == "postgresql":
                        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": self._lock_key})
                    yield conn

    def _copy(self, source: Path, digest: str) -> Path:
        """ROOT/<digest>/ holding the bundle's files (not databases, not sub-folders), read-only, its hash checked."""
        from sightline.loop.content import bundle_hash

        assert self.root is not None
        dest = self.root / digest
        if dest.is_dir() and _hash_or_none(dest) == digest:
            return dest  # left by an earlier add whose insert did not happen; the same content
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            for path in sorted(source.iterdir()):
                if path.is_file() and not path.name.startswith(".") and not path.name.endswith(_DB_FILES):
                    shutil.copy2(path, tmp / path.name)
            got = bundle_hash(tmp)
            if got != digest:
                raise UserInputError(f"{source} changed while it was being added (hash {digest[:12]} -> {got[:12]}); "
                                     "add it again when nothing writes to it.")
            for path in tmp.iterdir():
                path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
            if dest.exists():  # a damaged leftover copy: replace it
                _make_writable(dest)
                shutil.rmtree(dest)
            tmp.rename(dest)
        except BaseException:
            if tmp.exists():
                _make_writable(tmp)
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        return dest

    def _resolve(self, conn: Connection, ref: str) -> Version:
        v = self.tables["versions"]
        text = ref.strip()
        row: Row | None = None
        if text in ALIASES:
            vid = self._alias_version(conn, text)
            if vid is None:
                raise UserInputError(f"alias '{text}' points to no version yet; `sightline registry promote VERSION "
                                     f"--alias {text}` sets it.")
            row = conn.execute(select(v).where(v.c.id == vid)).first()
        elif (number := text.lower().lstrip("v")).isascii() and number.isdigit() and int(number) < 2**31:
            # ASCII only ("v²" is a digit to str.isdigit, not to int) and within the id column (an Integer: 32-bit on
            # PostgreSQL, where v2147483648 overflowed in the driver): anything else is looked up as a hash prefix,
            # then named as unknown
            row = conn.execute(select(v).where(v.c.id == int(number))).first()
        if row is None and text not in ALIASES and len(text) >= 6 and \
                all(ch in "0123456789abcdef" for ch in text.lower()):
            # also a hash prefix that happens to be all digits (about 2 % of 8-character prefixes)
            rows = conn.execute(select(v).where(v.c.bundle_hash.startswith(text.lower()))).all()
            if len(rows) > 1:
                raise UserInputError(f"hash prefix '{text}' matches {len(rows)} versions; give more characters.")
            row = rows[0] if rows else None
        if row is None:
            ids = [r.id for r in conn.execute(select(v.c.id).order_by(v.c.id))]
            known = f"v{ids[0]}..v{ids[-1]}" if len(ids) > 1 else (f"v{ids[0]}" if ids else "none yet")
            raise UserInputError(f"unknown version '{ref}' (registered: {known}); `sightline registry list` shows "
                                 f"them, or name an alias: {', '.join(ALIASES)}.")
        return self._version(row)

    def _alias_version(self, conn: Connection, alias: str) -> int | None:
        a = self.tables["aliases"]
        return conn.execute(select(a.c.version_id).where(a.c.alias == alias)).scalar()

    def _chain(self, conn: Connection, alias: str) -> list[int]:
        """The alias's promotion stack replayed from the log: each promote pushes, each rollback pops."""
        log = self.tables["log"]
        stack: list[int] = []
        for action, to in conn.execute(select(log.c.action, log.c.to_version_id).where(log.c.alias == alias)
                                       .order_by(log.c.id)):
            if action == "rollback":
                stack.pop()
                assert stack and stack[-1] == to, "the alias log is inconsistent"
            else:
                stack.append(to)
        return stack

    def _move_alias(self, conn: Connection, alias: str, action: str, current: int | None, target: int, *,
                    by: str | None, reason: str | None, forced: bool, challenge_id: int | None) -> Move:
        a, log = self.tables["aliases"], self.tables["log"]
        now = _now()
        if current is None:
            conn.execute(insert(a).values(alias=alias, version_id=target, updated_at=now))
        else:
            conn.execute(update(a).where(a.c.alias == alias).values(version_id=target, updated_at=now))
        new_id = conn.execute(insert(log).values(
            alias=alias, action=action, from_version_id=current, to_version_id=target, by=by or current_user(), at=now,
            reason=reason, forced=forced, challenge_id=challenge_id)).inserted_primary_key[0]
        return self._move(conn, conn.execute(select(log).where(log.c.id == new_id)).one())

    def _gate_challenge(self, conn: Connection, bundle_hash: str) -> dict[str, Any] | None:
        """The challenge that gates making `bundle_hash` the champion: its latest one against the champion now, else
        its latest one against any model. The latest alone let a pass against another, weaker model (any RUN folder
        given as the champion) supersede a failed challenge against the champion it would replace."""
        champion = self._alias_version(conn, "champion")
        if champion is not None:
            against = self._last_challenge(conn, bundle_hash, champion=self._version_by_id(conn, champion).bundle_hash)
            if against is not None:
                return against
        return self._last_challenge(conn, bundle_hash)

    def _last_challenge(self, conn: Connection, bundle_hash: str, *, champion: str | None = None
                        ) -> dict[str, Any] | None:
        c = self.tables["challenges"]
        query = select(c).where(c.c.challenger_hash == bundle_hash)
        if champion is not None:
            query = query.where(c.c.champion_hash == champion)
        row = conn.execute(query.order_by(c.c.id.desc()).limit(1)).first()
        if row is None:
            return None
        return {"id": row.id, "promote": bool(row.promote), "at": _iso(row.at), "reasons": list(row.reasons),
                "champion_hash": row.champion_hash, "summary": row.summary}

    def _move(self, conn: Connection, row: Row) -> Move:
        challenge = None
        if row.challenge_id is not None:
            c = self.tables["challenges"]
            found = conn.execute(select(c).where(c.c.id == row.challenge_id)).one()
            challenge = {"id": found.id, "promote": bool(found.promote), "at": _iso(found.at),
                         "reasons": list(found.reasons)}
        return Move(id=row.id, alias=row.alias, action=row.action,
                    from_ref=f"v{row.from_version_id}" if row.from_version_id is not None else None,
                    to_ref=f"v{row.to_version_id}", by=row.by, at=_iso(row.at) or "", reason=row.reason,
                    forced=bool(row.forced), challenge=challenge)

    def _upload(self, copy: Path, digest: str) -> str:
        """Put the files of the local copy at <remote>/<digest>/ (before the version row exists, so no reader can
        look for them earlier); returns that URL."""
        from fsspec.core import url_to_fs

        assert self.remote is not None
        fs, base = url_to_fs(self.remote)
        target = f"{base.rstrip('/')}/{digest}"
        fs.makedirs(target, exist_ok=True)
        for path in sorted(copy.iterdir()):
            fs.put_file(str(path), f"{target}/{path.name}")
        return f"{self.remote}/{digest}"

    def _version_by_id(self, conn: Any, version_id: int) -> Version:
        v = self.tables["versions"]
        return self._version(conn.execute(select(v).where(v.c.id == version_id)).one())

    def _version(self, row: Row) -> Version:
        path, artifact = row.path, None
        if is_url(path):  # the registry lives at an fsspec URL: `path` is where the local copy goes
            artifact = path
            path = str(cache_root(path.rstrip("/").rsplit("/", 1)[0]) / row.bundle_hash)
        elif self.remote is None and self.root is not None and (self.root / row.bundle_hash).is_dir():
            # the copy is ROOT/<hash>; `row.path` is where ROOT was when the version was added, so a registry folder
            # moved or copied with its database (to another disk or machine) still serves its own copies
            path = str(self.root / row.bundle_hash)
        return Version(id=row.id, bundle_hash=row.bundle_hash, name=row.name, model_version=row.model_version,
                       architecture=row.architecture, classes=list(row.classes), dataset_version=row.dataset_version,
                       test_metrics=row.test_metrics, path=path, source=row.source,
                       added_at=_iso(row.added_at) or "",
                       added_by=row.added_by, reason=row.reason, artifact=artifact)


def _refuse_failed(last: dict[str, Any] | None, what: str) -> None:
    """UserInputError when `last` (a challenge record) is a failed verdict: the champion gate."""
    if last is not None and not last["promote"]:
        reasons = last["reasons"]
        extra = len(reasons) - 1
        more = f" (+{extra} more reason{'s' if extra > 1 else ''}: `sightline registry show`)" if extra else ""
        raise UserInputError(
            f"{what} failed its last challenge on {last['at']} ({reasons[0] if reasons else 'no reason recorded'}"
            f"{more}); nothing changed. Pass --force to promote it anyway (the log records it as forced).")


def _refuse_other_classes(classes: list[str], current: Version, alias: str, what: str) -> None:
    """UserInputError when `classes` are not the classes of the version `alias` points to now: a server following
    the alias would swap to it and answer with other labels, the review queue's labels and the monitor's reference
    no longer fitting (`sightline challenge` refuses such a pair for the same reason)."""
    if set(classes) != set(current.classes):  # the order may differ, as for `sightline challenge`
        raise UserInputError(
            f"{what} has classes {list(classes)}, the {alias} {current.ref} has {list(current.classes)}: a server "
            f"following {alias} would answer with other labels; nothing changed. Pass --force to move it anyway "
            "(a new set of classes is a new service: serve it from its own database).")


def _check_readable(folder: Path) -> None:
    """UserInputError when the weights or an ONNX graph of the bundle at `folder` cannot be parsed (a truncated copy,
    a failed download): registered, it became an immutable version that no server could load and that
    `challenge` and `retrain` refused. Headers and protobuf only; a few tens of milliseconds."""
    import onnx
    from safetensors import SafetensorError, safe_open

    from sightline.bundle import ONNX, ONNX_INT8, WEIGHTS

    try:
        with safe_open(str(folder / WEIGHTS), "np"):
            pass
    except (SafetensorError, OSError) as exc:
        raise UserInputError(f"{folder / WEIGHTS} is damaged ({one_line(exc)}); copy the bundle again from its run "
                             "(or train again). Nothing was added.") from None
    for name in (ONNX, ONNX_INT8):
        if (folder / name).is_file():
            try:
                if not onnx.load(str(folder / name), load_external_data=False).graph.node:
                    raise ValueError("no graph in it")  # an empty file parses as an empty model
            except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends: any of them is damage
                raise UserInputError(f"{folder / name} is damaged ({one_line(exc)}); run `sightline export` "
                                     f"{'--int8 ' if name == ONNX_INT8 else ''}on the bundle again. Nothing was "
                                     "added.") from None


def _check_width(column: Any, value: Any, what: str) -> None:
    """UserInputError when `value` (as text) is longer than its String column holds (PostgreSQL refused the row
    with a DataError traceback; SQLite kept it)."""
    width = getattr(column.type, "length", None)
    if value is not None and width is not None and len(str(value)) > width:
        raise UserInputError(f"{what} is {len(str(value))} characters long; the registry keeps at most {width}; "
                             "shorten it. Nothing changed.")


def _check_alias(alias: str) -> None:
    if alias not in ALIASES:
        raise UserInputError(f"unknown alias '{alias}'; use {' or '.join(ALIASES)}.")


def _hash_or_none(folder: Path) -> str | None:
    from sightline.loop.content import bundle_hash

    try:
        return bundle_hash(folder)
    except (SightlineError, OSError):
        return None


def _listing(fs: Any, base: str) -> tuple[tuple[str, ...], ...]:
    """(name, size, version fields...) of each file at `base`, sorted; () when it is missing or empty. Tells
    whether the files of a remote copy changed without downloading them."""
    try:
        entries = fs.ls(base, detail=True)
    except FileNotFoundError:
        return ()
    out = []
    for entry in entries:
        name = str(entry["name"]).rstrip("/").rsplit("/", 1)[-1]
        out.append((name, str(entry.get("size")), *(f"{k}={entry[k]}" for k in _VERSION_KEYS if k in entry)))
    return tuple(sorted(out))


def _make_writable(folder: Path) -> None:
    """What a copy holds made removable by its owner before it is deleted: files read-write, folders (someone put
    one there) traversable as well; a symlink is left alone, since chmod follows it (a link planted in a copy would
    have had its target, anywhere on the machine, made owner-only)."""
    for path in folder.iterdir():
        if path.is_symlink():
            continue
        path.chmod(stat.S_IRWXU if path.is_dir() else stat.S_IRUSR | stat.S_IWUSR)

