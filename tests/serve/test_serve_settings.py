"""Server settings and database URLs (sightline/serve/settings.py, store.py): bad values are one-line errors."""
from __future__ import annotations

import pytest

from sightline.cli import main
from sightline.errors import UserInputError
from sightline.serve.settings import load_settings
from sightline.storage.store import Store


def test_bad_settings_and_database_urls_are_one_line_errors(tmp_path, capsys) -> None:
    with pytest.raises(UserInputError, match="SIGHTLINE_PORT"):
        load_settings(port=70000)
    with pytest.raises(UserInputError, match="cannot be used"):
        Store("nonsense")
    with pytest.raises(UserInputError, match="cannot be opened"):
        Store(f"sqlite:///{tmp_path}/missing/dir/x.db")
    with pytest.raises(UserInputError, match=r"\*\*\*"):  # the password never reaches the message
        Store("postgresql+nosuchdriver://u:secret@localhost/db")
    with pytest.raises(SystemExit) as exc:
        main(["keys", "list", "--database-url", "nonsense"])
    assert exc.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
