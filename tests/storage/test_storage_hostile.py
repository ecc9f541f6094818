"""A --database that is not a SQLite database: one line naming it, the file left as it was (a file of a few
bytes was silently overwritten with a new database; a larger one failed with a traceback)."""
from __future__ import annotations

import pytest

from sightline.errors import UserInputError


@pytest.mark.parametrize("content", [b"x\n", b"notes, not a database\n" * 40, b"\x89PNG\r\n\x1a\n" + b"\0" * 600])
def test_a_file_that_is_not_a_database_is_refused_and_kept(tmp_path, content):
    from sightline.loop.registry import Registry
    from sightline.storage.store import Store

    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    for opener in (Store, Registry):
        with pytest.raises(UserInputError, match=r"notes\.txt' is not a SQLite database"):
            opener(f"sqlite:///{path}")
    assert path.read_bytes() == content


def test_a_folder_is_refused(tmp_path):
    from sightline.storage.store import Store

    with pytest.raises(UserInputError, match=r"is a folder; pass a SQLite file"):
        Store(f"sqlite:///{tmp_path}")


def test_new_empty_and_real_databases_still_open(tmp_path):
    from sightline.storage.store import Store

    Store(f"sqlite:///{tmp_path / 'new.db'}").close()  # made
    Store(f"sqlite:///{tmp_path / 'new.db'}").close()  # reopened
    (tmp_path / "empty.db").write_bytes(b"")
    Store(f"sqlite:///{tmp_path / 'empty.db'}").close()
    Store("sqlite://").close()  # in memory


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_key_name_too_long_for_its_column_is_one_line(tmp_path, kind):
    """A 300-character name: PostgreSQL refused the INSERT with a DataError traceback (`keys create`, exit 1)."""
    sys_path_serve()
    from serve_tiny import open_store

    with open_store(kind, tmp_path) as store:
        with pytest.raises(UserInputError, match="the key name is 300 characters long; use at most 200"):
            store.create_key("n" * 300, ["review"])
        assert store.list_keys() == []
        assert store.verify_key(store.create_key("n" * 200, ["review"])).name == "n" * 200
        # the reviewer's name in one-line answers ("already labelled 'cat' by NAME"): a newline split them
        for name in ("ann\nsmith", "ann\tsmith", "ann\x00", "ann\x85"):
            with pytest.raises(UserInputError, match="holds a control character"):
                store.create_key(name, ["review"])
        assert store.verify_key(store.create_key("Zoë Ö'Brien 😀", ["review"])).name == "Zoë Ö'Brien 😀"
        assert len(store.list_keys()) == 2


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_tables_of_our_names_without_our_columns_are_one_line(tmp_path, kind):
    """A predictions table that is not Sightline's (another program's, a pre-release one): SQLite said only
    'no such column'; PostgreSQL raised a ProgrammingError traceback. Now one line that says what to do."""
    import uuid

    import sqlalchemy as sa

    from sightline.storage.store import Store

    sys_path_serve()
    from serve_tiny import POSTGRES, pg_options

    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'other.db'}"
        admin, schema = sa.create_engine(url), None
    else:
        schema = f"sl_test_{uuid.uuid4().hex[:8]}"
        admin = sa.create_engine(POSTGRES, connect_args={"connect_timeout": 3})
        try:
            with admin.begin() as conn:
                conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
        except Exception as exc:  # noqa: BLE001 - any failure to reach the server is a reason to skip
            pytest.skip(f"PostgreSQL unreachable ({type(exc).__name__})")
        url = pg_options(POSTGRES, schema)
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f"CREATE TABLE {schema + '.' if schema else ''}predictions (id INTEGER PRIMARY KEY, "
                                 "note VARCHAR(20))"))
        with pytest.raises(UserInputError, match=r"has tables of Sightline's names without its columns .*pass the "
                                                 r"service's database, or a new file or schema") as info:
            Store(url)
        assert "\n" not in str(info.value)
    finally:
        if schema:
            with admin.begin() as conn:
                conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def sys_path_serve() -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))  # serve_tiny


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_presented_key_with_characters_no_key_has_is_unknown(tmp_path, kind):
    """The web app's sign-in form takes any text as the key: one with a NUL byte in its first characters reached
    PostgreSQL's lookup and was a 500 (DataError); it is an unknown key, as any other that no one was given."""
    sys_path_serve()
    from serve_tiny import open_store

    with open_store(kind, tmp_path) as store:
        key = store.create_key("ann", ["review"])
        for presented in ("sl_aaa\x00" + "a" * 30, key[:6] + "\x00" + key[7:], key + "\x00", key + " é"):
            assert store.verify_key(presented) is None
        assert store.verify_key(key).name == "ann"


@pytest.mark.parametrize("url", ["postgresql+psycopg://ann:secret@db.example:54x2/sightline",
                                 "postgresql+psycopg://ann:secret@[::1:5432/sightline"])
def test_a_database_url_whose_port_is_not_a_number_is_one_line_everywhere(url, tmp_path):
    """SQLAlchemy raises ValueError (not ArgumentError) for such a port: `keys`, `registry`, `feedback export`,
    `monitor` and `serve` ended in a traceback. The password never reaches the message."""
    from PIL import Image

    from sightline.loop.feedback import export_feedback
    from sightline.loop.registry import Registry
    from sightline.storage.store import Store

    data = tmp_path / "data"
    for split in ("train", "val", "test"):
        for label in ("cat", "dog"):
            (data / split / label).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(data / split / label / "a.png")
    for open_it in (lambda: Store(url), lambda: Registry(url, root=tmp_path / "registry"),
                    lambda: export_feedback(url, data, tmp_path / "out", images=tmp_path, audit=False)):
        with pytest.raises(UserInputError, match="its port is not a number") as info:
            open_it()
        assert "secret" not in str(info.value) and "\n" not in str(info.value)
