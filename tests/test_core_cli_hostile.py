"""Command-line mistakes: each one is one line on stderr naming the path or file and exit code 2, never a
traceback."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent / "serve"))  # serve_tiny


def _flat(root, n=3):
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def _error_line(out) -> str:
    lines = [line for line in out.err.splitlines() if line.strip()]
    assert lines and "Traceback" not in out.err, out.err
    assert lines[-1].startswith("error: "), out.err
    return " ".join(lines[-1].split())


def test_predict_a_path_that_does_not_exist(run_cli, tmp_path):
    """Was exit 0 with a CSV row holding the error: a typo in the only path looked like a successful run."""
    code, out = run_cli(["predict", str(tmp_path), str(tmp_path / "nope.jpg")])
    assert code == 2 and "nope.jpg' does not exist" in _error_line(out)


@pytest.mark.parametrize("command", [["train"], ["lr-find"], ["compare", "--models", "test_efficientnet"]])
def test_out_is_a_file_before_any_work(run_cli, tmp_path, command):
    """lr-find ran its whole sweep, then failed writing (FileExistsError traceback before the safety net)."""
    (tmp_path / "data").mkdir()
    (tmp_path / "run.txt").write_text("x")
    code, out = run_cli([command[0], str(tmp_path / "data"), *command[1:], "--out", str(tmp_path / "run.txt")])
    assert code == 2 and "--out" in _error_line(out) and "run.txt' is a file" in _error_line(out)


def test_an_output_folder_that_is_a_file(run_cli, tmp_path):
    """evaluate/explain/lr-find/audit --out FILE raised FileExistsError from mkdir with a traceback (exit 1)."""
    data = _flat(tmp_path / "data")
    (tmp_path / "taken").write_text("x")
    code, out = run_cli(["data", "audit", str(data), "--out", str(tmp_path / "taken"), "--no-labels"])
    assert code == 2 and "taken' exists and is not a folder" in _error_line(out)


def test_spec_that_is_not_text(tmp_path):
    from sightline.errors import SpecError
    from sightline.spec import load_spec

    path = tmp_path / "sightline.yaml"
    path.write_bytes(b"\xff\xfe\x00task: x")
    with pytest.raises(SpecError, match=r"sightline\.yaml is not UTF-8 text.*save it as UTF-8"):
        load_spec(path)  # was a UnicodeDecodeError traceback out of `evaluate --spec`


def test_path_error_lines():
    from sightline._cli.common import path_error

    assert "'x' exists and is not a folder" in path_error(FileExistsError(17, "File exists", "x"))
    assert "'x/y': part of this path is a file" in path_error(NotADirectoryError(20, "Not a directory", "x/y"))
    assert "'d' is a folder where a file is needed" in path_error(IsADirectoryError(21, "Is a directory", "d"))
    assert "'f' cannot be read or written" in path_error(PermissionError(13, "Permission denied", "f"))


def test_monitor_refuses_a_database_file_that_does_not_exist(run_cli, tmp_path):
    """It made an empty database there and reported "no predictions yet": a typo looked like a quiet service."""
    import json

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.json").write_text(json.dumps({}))
    for given in (str(tmp_path / "typo.db"), f"sqlite:///{tmp_path / 'typo.db'}"):
        code, out = run_cli(["monitor", str(bundle), "--database", given])
        assert code == 2 and "typo.db' does not exist" in _error_line(out)
    assert not (tmp_path / "typo.db").exists()


@pytest.mark.parametrize("sample", ["-1", "0"])
def test_compare_refuses_a_sample_below_two_before_training(run_cli, tmp_path, sample):
    """--sample -1 trained every model, then failed in the reference profile with an unrelated message."""
    code, out = run_cli(["compare", str(tmp_path), "--models", "test_efficientnet", "--sample", sample])
    assert code == 2 and f"--sample {sample} must be at least 2" in _error_line(out)


def test_bench_refuses_a_budget_that_is_not_positive(run_cli, tmp_path):
    code, out = run_cli(["bench", str(tmp_path), "--budget", "-1"])
    assert code == 2 and "--budget -1 must be a positive number" in _error_line(out)


def test_challenge_refuses_a_negative_seed(run_cli, tmp_path):
    code, out = run_cli(["challenge", str(tmp_path), str(tmp_path), "--data", str(tmp_path), "--seed", "-1"])
    assert code == 2 and "--seed -1 must be 0 or more" in _error_line(out)


def test_bench_times_only_the_images_of_its_folder(run_cli, tmp_path):
    """A folder's photo.jpg that is not an image is listed by expand_inputs (for predict's error rows); bench, which
    only times images, leaves it out instead of failing on it."""
    from serve_tiny import make_bundle  # a tiny exported bundle, exported once per test run and copied

    make_bundle(tmp_path)
    (tmp_path / "in").mkdir()
    Image.new("RGB", (40, 30), (10, 20, 30)).save(tmp_path / "in" / "a.png")
    (tmp_path / "in" / "photo.jpg").write_text("<html>404</html>")
    code, out = run_cli(["bench", str(tmp_path / "bundle"), "--images", str(tmp_path / "in"), "--budget", "0.2",
                         "--batch-sizes", "1", "--backends", "onnx"])
    assert code == 0, out.err


def test_a_name_too_long_for_the_file_system_is_one_line(run_cli, tmp_path):
    """Was an OSError traceback (ENAMETOOLONG) from audit, split and every command writing under --out."""
    data = _flat(tmp_path / "raw")
    code, out = run_cli(["data", "split", str(data), str(tmp_path / ("x" * 300))])
    line = _error_line(out)
    assert code == 2 and "x" * 300 in line and "too long for the file system" in line


@pytest.mark.parametrize(("errno_name", "words"), [("ENOSPC", "no space left"), ("EROFS", "read-only file system")])
def test_a_full_or_read_only_disk_is_one_line(run_cli, tmp_path, monkeypatch, errno_name, words):
    """A disk that fills up or is mounted read-only while a command writes: the path and what to do, no traceback."""
    import errno
    import os

    from sightline.data import split as split_module

    target = tmp_path / "out" / "train"

    def cannot_write(*args, **kwargs):
        code = getattr(errno, errno_name)
        raise OSError(code, os.strerror(code), str(target))

    monkeypatch.setattr(split_module, "split_dataset", cannot_write)
    code, out = run_cli(["data", "split", str(_flat(tmp_path / "raw")), str(tmp_path / "out")])
    line = _error_line(out)
    assert code == 2 and str(target) in line and words in line


def test_an_os_error_about_no_path_keeps_its_traceback(run_cli, tmp_path, monkeypatch):
    """Only errors about a path are the user's to fix; anything else is a bug to report, with its traceback."""
    from sightline.data import split as split_module

    def broken(*args, **kwargs):
        raise ConnectionResetError(104, "Connection reset by peer")

    monkeypatch.setattr(split_module, "split_dataset", broken)
    with pytest.raises(ConnectionResetError):
        run_cli(["data", "split", str(_flat(tmp_path / "raw")), str(tmp_path / "out")])


def test_export_format_without_int8_is_refused_before_the_export(run_cli, tmp_path, monkeypatch):
    """`--format qoperator` without --int8 was ignored: the user got a float graph and no word on it."""
    from sightline.optimize import export as export_module

    monkeypatch.setattr(export_module, "export", lambda *a, **k: pytest.fail("exported anyway"))
    code, out = run_cli(["export", str(tmp_path), "--format", "qoperator"])
    assert code == 2 and "--format qoperator is the int8 graph's format; add --int8" in _error_line(out)
