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


@pytest.mark.parametrize("name, value", [("threads", 100_000), ("decode_threads", 100_000),
                                         ("shadow_threads", 5_000), ("batch_max_wait_ms", 1e9)])
def test_thread_counts_and_the_batching_wait_have_an_upper_bound(monkeypatch, name, value) -> None:
    """SIGHTLINE_THREADS=100000 started 100,000 ONNX Runtime threads and the service was killed for memory (exit
    137); a wait of 1e9 ms held every request's answer for 11 days. Both are typos to name at start."""
    monkeypatch.setenv(f"SIGHTLINE_{name.upper()}", str(value))
    with pytest.raises(UserInputError, match=f"SIGHTLINE_{name.upper()}.*less than or equal"):
        load_settings()


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
