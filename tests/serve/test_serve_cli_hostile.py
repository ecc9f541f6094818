"""`sightline serve` with what would fail inside uvicorn: a damaged model.onnx (a traceback from the app's
startup, exit 3), a host that does not resolve (exit 3) or a port already taken (exit 1). Now one line, exit 2,
before the server starts."""
from __future__ import annotations

import socket

import pytest
from serve_tiny import make_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("serve_cli"))


def _last_error(out) -> str:
    assert "Traceback" not in out.err, out.err
    lines = [line for line in out.err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), out.err
    return " ".join(lines[-1].split())


def test_damaged_onnx_is_one_line(run_cli, bundle, tmp_path):
    import shutil

    broken = shutil.copytree(bundle, tmp_path / "broken")
    data = (broken / "model.onnx").read_bytes()
    (broken / "model.onnx").write_bytes(data[: len(data) // 3])  # a copy that stopped part way
    code, out = run_cli(["serve", str(broken), "--database", str(tmp_path / "db.sqlite")])
    assert code == 2 and "model.onnx cannot be loaded by ONNX Runtime" in _last_error(out)


def test_host_that_does_not_resolve(run_cli, bundle, tmp_path):
    code, out = run_cli(["serve", str(bundle), "--host", "no-such-host.invalid",
                         "--database", str(tmp_path / "db.sqlite")])
    assert code == 2 and "--host 'no-such-host.invalid' cannot be resolved" in _last_error(out)


def test_port_in_use(run_cli, bundle, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out = run_cli(["serve", str(bundle), "--port", str(port), "--database", str(tmp_path / "db.sqlite")])
    assert code == 2 and f"cannot listen on 127.0.0.1:{port}" in _last_error(out)


@pytest.mark.parametrize("field, value", [("version", 3), ("name", None)])
def test_a_model_json_name_or_version_that_is_not_text_is_one_line(run_cli, bundle, tmp_path, field, value,
                                                                    monkeypatch):
    """`"version": 3` in model.json: the service said it was serving, then answered every request, /readyz
    included, with a 500 (the answers name the version as text)."""
    import json
    import shutil

    import uvicorn

    def started(*args, **kwargs):
        raise AssertionError("the server started")

    monkeypatch.setattr(uvicorn, "run", started)  # without the check this test fails instead of serving forever

    edited = shutil.copytree(bundle, tmp_path / "edited")
    meta = json.loads((edited / "model.json").read_text())
    meta[field] = value
    (edited / "model.json").write_text(json.dumps(meta))
    code, out = run_cli(["serve", str(edited), "--database", str(tmp_path / "db.sqlite")])
    assert code == 2 and f"model.json: {field}={value!r} must be non-empty text" in _last_error(out)


def test_the_app_refuses_it_too(tmp_path, bundle):
    """Started without the CLI (create_app under another server): the lifespan refuses, nothing is served."""
    import asyncio
    import json
    import shutil

    from sightline.errors import BundleError
    from sightline.serve.app import create_app
    from sightline.serve.settings import Settings

    edited = shutil.copytree(bundle, tmp_path / "edited")
    meta = json.loads((edited / "model.json").read_text())
    meta["version"] = 3
    (edited / "model.json").write_text(json.dumps(meta))
    app = create_app(Settings(bundle=edited, database_url=f"sqlite:///{tmp_path / 'db.sqlite'}", monitor=False))

    async def start() -> None:
        async with app.router.lifespan_context(app):
            pass

    with pytest.raises(BundleError, match="version=3 must be non-empty text"):
        asyncio.run(start())


def test_an_image_store_that_is_a_file_is_one_line(run_cli, bundle, tmp_path, monkeypatch):
    """SIGHTLINE_IMAGE_STORE naming a file: the service started, answered, and kept no image of the review queue
    (one log line per request: 'not kept: Not a directory')."""
    import uvicorn

    def started(*args, **kwargs):
        raise AssertionError("the server started")

    monkeypatch.setattr(uvicorn, "run", started)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a folder")
    monkeypatch.setenv("SIGHTLINE_IMAGE_STORE", str(notes))
    code, out = run_cli(["serve", str(bundle), "--database", str(tmp_path / "db.sqlite")])
    assert code == 2 and f"image store '{notes}' is a file, not a folder" in _last_error(out)
    assert notes.read_text() == "not a folder"


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite:///:memory:",
                                 "sqlite:///file:k?mode=memory&uri=true"])
def test_keys_refuse_an_in_memory_database(run_cli, url):
    """`keys create --database-url sqlite:///` printed a key that was gone when the command ended."""
    code, out = run_cli(["keys", "create", "ann", "--database-url", url])
    assert code == 2 and "is an in-memory database: the key would be lost" in _last_error(out)
    assert "sl_" not in out.out


def test_keys_take_a_sqlite_file_path_as_serve_does(run_cli, tmp_path, monkeypatch):
    """`serve --database state/db.sqlite` takes a path; `keys create --database-url state/db.sqlite` answered
    "database URL '<unparseable>' cannot be used", naming neither the value nor the fix."""
    monkeypatch.chdir(tmp_path)
    code, out = run_cli(["keys", "create", "ann", "--database-url", "db.sqlite", "--json"])
    assert code == 0, out.err
    assert (tmp_path / "db.sqlite").is_file()
    code, out = run_cli(["keys", "list", "--database-url", str(tmp_path / "db.sqlite"), "--json"])
    assert code == 0 and "ann" in out.out
    for command in (["list"], ["revoke", "ann"]):  # reading a typo made an empty database there
        code, out = run_cli(["keys", *command, "--database-url", "typo.sqlite"])
        assert code == 2 and "database file 'typo.sqlite' does not exist" in _last_error(out)
        assert not (tmp_path / "typo.sqlite").exists()


def test_key_names_that_look_like_markup_are_printed_as_given(run_cli, tmp_path):
    """`keys create "[/x]"` stored the key, then failed printing its name (a rich MarkupError traceback): the key
    was never shown, and every `keys list` after failed the same way; "[red]ann" lost its first five characters."""
    db = str(tmp_path / "db.sqlite")
    for name in ("[/x]", "[red]ann"):
        code, out = run_cli(["keys", "create", name, "--database-url", db])
        assert code == 0 and out.out.startswith("sl_") and f"API key for {name}," in out.err, out.err
    code, out = run_cli(["keys", "list", "--database-url", db])
    assert code == 0 and "[/x]" in out.out and "[red]ann" in out.out, out.err
    code, out = run_cli(["keys", "revoke", "[/x]", "--database-url", db])
    assert code == 0 and "revoked 1 key(s) for [/x]" in out.out


def test_the_start_lines_name_the_database_and_an_ipv6_address_as_a_url(run_cli, bundle, tmp_path, monkeypatch):
    """Given --database, the advice was `keys create NAME --bundle BUNDLE`, which puts the key in the bundle's own
    database, one this service never reads (every request then 401); and http://::1:8000 is no URL."""
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: None)  # the start lines only, no server
    db = tmp_path / "elsewhere.sqlite"
    code, out = run_cli(["serve", str(bundle), "--database", str(db), "--host", "::1", "--port", "0"])
    assert code == 0, out.err
    text = " ".join(out.err.split())
    assert f"`sightline keys create NAME --database-url sqlite:///{db.resolve()}`" in text, text
    assert "on http://[::1]:0 " in text
