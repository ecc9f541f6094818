"""SIGHTLINE_SESSION_SECRET too short or too repetitive to be safe is refused at start-up: one line, exit code 2."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))
from serve_tiny import make_bundle


@pytest.mark.parametrize("secret, words", [
    ("changeme", "is 8 characters long"),
    ("x" * 31, "is 31 characters long"),
    ("ab" * 40, "repeats 2 distinct characters"),
])
def test_a_session_secret_too_short_to_be_safe_is_refused_at_start_up(run_cli, tmp_path, monkeypatch, secret, words):
    """SIGHTLINE_SESSION_SECRET=changeme was taken: anyone who guessed it could sign a cookie for any reviewer."""
    from sightline.serve.app import create_app
    from sightline.serve.settings import Settings
    from sightline.errors import UserInputError

    bundle = make_bundle(tmp_path)
    monkeypatch.setenv("SIGHTLINE_SESSION_SECRET", secret)
    # a host that does not resolve: a server that took the secret stops there instead of serving
    code, out = run_cli(["serve", str(bundle), "--database", str(tmp_path / "db.sqlite"), "--host", "no-such.invalid"])
    lines = [line for line in out.err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in out.err, out.err
    assert "SIGHTLINE_SESSION_SECRET " + words in lines[0] and "at least 32 random characters" in lines[0]
    assert "secrets.token_hex(32)" in lines[0]
    assert not (tmp_path / "db.sqlite").exists()  # refused before anything was opened
    with pytest.raises(UserInputError, match=words):  # the app itself refuses it too, however it is started
        create_app(Settings(bundle=bundle))
    monkeypatch.setenv("SIGHTLINE_SESSION_SECRET", "0123456789abcdef" * 2)  # 32 characters: taken
    create_app(Settings(bundle=bundle))
