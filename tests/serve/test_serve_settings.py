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


def test_serve_spec_names_a_file_or_its_data_folder_and_a_bad_one_is_one_line(tmp_path, capsys, monkeypatch) -> None:
    """`sightline serve --spec PATH`: a missing file, a data folder without sightline.yaml or an invalid section is
    one line and exit code 2, before anything is loaded."""
    for name in ("SIGHTLINE_SPEC", "SIGHTLINE_MONITOR_WINDOW", "SIGHTLINE_MONITOR_MIN_WINDOW"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "data").mkdir()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "sightline.yaml").write_text("monitor:\n  window: 1\n")
    for spec, says in ((tmp_path / "missing.yaml", "missing.yaml cannot be read"),
                       (tmp_path / "data", "sightline.yaml cannot be read"),
                       (bad, "monitor.window=1 must be >= 2.")):
        with pytest.raises(SystemExit) as exc:
            main(["serve", str(tmp_path), "--spec", str(spec)])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and says in err and len(err.strip().splitlines()) == 1, err
    (bad / "sightline.yaml").write_text("monitor:\n  window: 40\n  min_window: 10\n")
    assert (load_settings(bundle=tmp_path, spec=bad).monitor_window, load_settings(bundle=tmp_path).monitor_window) \
        == (40, 500)
