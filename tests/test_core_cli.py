from __future__ import annotations

import subprocess
import sys

import pytest


def test_help_and_version(run_cli):
    code, out = run_cli(["--help"])
    assert code == 0 and "sightline" in out.out.lower()
    code, out = run_cli(["--version"])
    assert code == 0 and "sightline" in out.out


def test_unknown_command_exits_2(run_cli):
    code, out = run_cli(["no-such-command"])
    assert code == 2 and out.err == "error: No such command 'no-such-command'; see 'sightline --help'.\n"


@pytest.mark.parametrize("args, said", [
    (["train", "d", "--epochs", "abc"], "Invalid value for '--epochs'"),
    (["data", "split", "a", "--out", "b"], "No such option: --out"),
    (["monitor", "b", "--alpha", "nan"], "Invalid value for '--alpha'"),
    (["keys", "create"], "Missing argument 'name'"),
    (["data", "split", "a", "b", "--max-distance", "64"], "Invalid value for '--max-distance'"),  # all one group
])
def test_a_usage_error_is_one_line_naming_the_option_and_the_help_to_read(run_cli, args, said):
    """Click printed a usage line, a hint and a boxed message (5 lines or more) for these; the mistake is the
    user's like any other, so one line, exit code 2, before any work."""
    code, out = run_cli(args)
    command = " ".join(a for a in args[:2] if a in ("train", "data", "split", "monitor", "keys", "create"))
    assert code == 2 and out.out == ""
    assert out.err.count("\n") == 1 and out.err.startswith(f"error: {said}")
    assert out.err.endswith(f"; see 'sightline {command} --help'.\n")


def test_no_command_prints_the_help(run_cli):
    code, out = run_cli([])
    assert code == 2 and "Usage: sightline" in out.out and out.err == ""


def test_help_does_not_import_torch():
    # `sightline --help` must stay instant: the CLI module tree may not import torch, timm or onnxruntime.
    code = (
        "import sys; from sightline.cli import app; import typer.main; typer.main.get_command(app); "
        "heavy = [m for m in ('torch', 'timm', 'onnxruntime', 'sklearn', 'fastapi') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_train_help_states_the_defaults_a_run_gets(run_cli, monkeypatch):
    """rich reads '[...]' in help text as markup and used to drop '[default: tf_efficientnet_lite0]' entirely."""
    from sightline.train.config import TrainConfig

    monkeypatch.setenv("COLUMNS", "200")
    code, out = run_cli(["train", "--help"])
    text = " ".join(out.out.split())
    assert code == 0
    defaults = TrainConfig()
    for shown in (f"(default {defaults.model})", f"(default {defaults.epochs})", f"(default {defaults.patience})",
                  f"(default {defaults.batch_size})", f"(default {defaults.seed})"):
        assert shown in text, shown
    assert "architecture ;" not in text
