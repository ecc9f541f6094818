"""The registry's tables (SQLAlchemy Core), in the service database beside the service's own tables.

versions    one row per bundle content: immutable
challenges  every recorded `challenge` verdict, by the challenger's content hash: append-only
aliases     where `champion` and `challenger` point now (the only table whose rows change)
alias_log   every alias move: who, when, why, forced or not, the challenge consulted: append-only

Append-only is enforced by the database, not only by the code: BEFORE UPDATE / DELETE triggers raise (SQLite:
RAISE(ABORT); PostgreSQL: a plpgsql function), so a mistaken script or a hand-typed SQL statement cannot rewrite
history either.
"""
from __future__ import annotations

from sqlalchemy import DDL, JSON, Boolean, Column, DateTime, ForeignKey, Integer, MetaData, String, Table, Text, event

__all__ = ["registry_tables"]


def registry_tables(prefix: str = "registry_") -> tuple[MetaData, dict[str, Table]]:
    """The registry's tables, named `<prefix>versions`, `<prefix>challenges`, `<prefix>aliases` and
    `<prefix>alias_log` (keys "versions", "challenges", "aliases", "log"), with the triggers that make versions,
    challenges and the log append-only created right after their tables (SQLite and PostgreSQL)."""
    md = MetaData()
    versions = Table(
        f"{prefix}versions", md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("bundle_hash", String(64), nullable=False, unique=True),
        Column("name", String(200), nullable=False),
        Column("model_version", String(100), nullable=False),
        Column("architecture", String(200), nullable=False),
        Column("classes", JSON, nullable=False),
        Column("dataset_version", String(64), nullable=True),
        Column("test_metrics", JSON, nullable=True),
        Column("path", String(2000), nullable=False),
        Column("source", String(2000), nullable=False),
        Column("added_at", DateTime(timezone=True), nullable=False),
        Column("added_by", String(200), nullable=False),
        Column("reason", Text, nullable=True),
    )
    challenges = Table(
        f"{prefix}challenges", md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("challenger_hash", String(64), nullable=False, index=True),
        Column("champion_hash", String(64), nullable=False),
        Column("promote", Boolean, nullable=False),
        Column("reasons", JSON, nullable=False),
        Column("summary", JSON, nullable=False),  # rule, per-split accuracy difference and McNemar p, files
        Column("at", DateTime(timezone=True), nullable=False),
        Column("by", String(200), nullable=False),
    )
    aliases = Table(
        f"{prefix}aliases", md,  # the current state; every change is also a row of the log
        Column("alias", String(50), primary_key=True),
        Column("version_id", Integer, ForeignKey(versions.c.id), nullable=False),
        Column("updated_at", DateTime(timezone=True), nullable=False),
    )
    log = Table(
        f"{prefix}alias_log", md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("alias", String(50), nullable=False, index=True),
        Column("action", String(16), nullable=False),
        Column("from_version_id", Integer, ForeignKey(versions.c.id), nullable=True),
        Column("to_version_id", Integer, ForeignKey(versions.c.id), nullable=False),
        Column("by", String(200), nullable=False),
        Column("at", DateTime(timezone=True), nullable=False),
        Column("reason", Text, nullable=True),
        Column("forced", Boolean, nullable=False, default=False),
        Column("challenge_id", Integer, ForeignKey(challenges.c.id), nullable=True),
    )
    function = f"{prefix}append_only"
    for table in (versions, challenges, log):  # immutable rows, enforced by the database
        name = table.name
        event.listen(table, "after_create", DDL(
            f"CREATE TRIGGER {name}_no_update BEFORE UPDATE ON {name} "
            f"BEGIN SELECT RAISE(ABORT, '{name} is append-only'); END").execute_if(dialect="sqlite"))
        event.listen(table, "after_create", DDL(
            f"CREATE TRIGGER {name}_no_delete BEFORE DELETE ON {name} "
            f"BEGIN SELECT RAISE(ABORT, '{name} is append-only'); END").execute_if(dialect="sqlite"))
        event.listen(table, "after_create", DDL(
            f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN RAISE EXCEPTION '%% is append-only', TG_TABLE_NAME; END $$").execute_if(dialect="postgresql"))
        event.listen(table, "after_create", DDL(
            f"CREATE TRIGGER {name}_append_only BEFORE UPDATE OR DELETE ON {name} "
            f"FOR EACH ROW EXECUTE FUNCTION {function}()").execute_if(dialect="postgresql"))
    return md, {"versions": versions, "challenges": challenges, "aliases": aliases, "log": log}
