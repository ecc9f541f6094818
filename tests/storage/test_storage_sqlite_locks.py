"""Opening a second Store (or Registry) on a SQLite file in a process that already writes to it must not lose later
writes when another process (a CLI command) opens and closes the same database."""
from __future__ import annotations

import sqlite3
import subprocess
import sys

from sightline.storage.store import Store, check_sqlite_file


def test_check_sqlite_file_keeps_the_writers_locks(tmp_path):
    url = f"sqlite:///{tmp_path / 'service.db'}"
    service = Store(url)
    try:
        with service.engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
            conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        check_sqlite_file(service.engine)  # as a second Store or the Registry in `serve` does
        # a CLI command in another process opens and closes the database (feedback export, keys list)
        subprocess.run([sys.executable, "-c", f"from sightline.storage.store import Store; Store({url!r}).close()"],
                       check=True)
        with service.engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO t VALUES (2)")
        # before: the other process had deleted the WAL under the service, so no other reader saw the second row
        # (a disk I/O error); the service went on answering as if it were kept
        reader = sqlite3.connect(tmp_path / "service.db")
        try:
            assert reader.execute("SELECT count(*) FROM t").fetchone() == (2,)
        finally:
            reader.close()
    finally:
        service.close()
