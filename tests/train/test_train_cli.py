"""`sightline train` through the real CLI: JSON result, --sanity, one-line errors with exit code 2, DDP on CPU."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sightline.cli import app
from sightline._cli.common import run_command

from test_train_fit import make_data

TINY_ARGS = ["--model", "test_efficientnet", "--weights", "none", "--input-size", "32", "--batch-size", "8",
             "--workers", "0"]


def _plain(folder: Path) -> list[str]:
    """--config FILE for a training whose test is not about what train adds around the fit: no monitor's reference
    profile (stand-ins and val scored after training; half of a tiny training's CPU) and fp32 contiguous as set
    instead of timed on this CPU (the suite's busy cores make the probe run at every training). The CLI has no
    switch for either; a config file is how a user says so."""
    path = folder / "plain.yaml"
    path.write_text("reference: false\nprecision: 32-true\nchannels_last: false\n")
    return ["--config", str(path)]


def test_train_json_and_sanity(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_data(tmp_path / "data")
    assert run_command(app, ["train", str(data), "--out", str(tmp_path / "run"), "--epochs", "1", "--json",
                             *TINY_ARGS, *_plain(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["val"]["n_images"] == 12 and Path(result["bundle"], "model.json").is_file()
    assert result["precision"] == "32-true" and not Path(result["bundle"], "reference.npz").exists()
    assert run_command(app, ["train", str(data), "--out", str(tmp_path / "s"), "--sanity", "--json",
                             *TINY_ARGS]) == 0
    assert json.loads(capsys.readouterr().out)["passed"] is True


def test_train_prints_its_own_lines_not_lightnings(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Lightning's INFO lines (hardware, precision, why fitting stopped) repeated what train says itself."""
    data = make_data(tmp_path / "data", splits={"train": 4, "val": 2})
    assert run_command(app, ["train", str(data), "--out", str(tmp_path / "run"), "--epochs", "1", *TINY_ARGS]) == 0
    out, err = capfd.readouterr()
    assert "stopped: max epochs" in out + err
    for line in ("GPU available", "TPU available", "`Trainer.fit` stopped"):
        assert line not in out + err, line
    assert run_command(app, ["train", str(data), "--out", str(tmp_path / "s"), "--sanity", *TINY_ARGS]) == 0
    out, err = capfd.readouterr()
    assert "sanity check passed" in out + err
    for line in ("GPU available", "fast_dev_run"):
        assert line not in out + err, line


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "efficientnet_lite7"], "unknown model 'efficientnet_lite7'"),
        (["--augment", "wild"], "augment='wild' must be 'light', 'strong' or 'none'"),
        (["--weights", "missing.pth"], "neither 'auto', 'none' nor an existing file"),
        (["--input-size", "100000"], "input_size=100000 must be <= 2048"),  # was run until the kernel killed it
    ],
)
def test_bad_options_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str],
                                          message: str) -> None:
    data = make_data(tmp_path / "data", splits={"train": 2, "val": 1})
    code = run_command(app, ["train", str(data), "--out", str(tmp_path / "run"), *TINY_ARGS, *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_missing_val_split_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_data(tmp_path / "data", splits={"train": 2})
    assert run_command(app, ["train", str(data), "--out", str(tmp_path / "run"), *TINY_ARGS]) == 2
    assert "no val split" in capsys.readouterr().err


@pytest.mark.slow
def test_two_process_ddp_on_cpu(tmp_path: Path) -> None:
    """Lightning DDP (gloo) with 2 CPU processes: both ranks train, rank 0 writes one bundle."""
    data = make_data(tmp_path / "data")
    # No monitor's reference profile (rank 0 scores stand-ins and val after training): not what this is about, ~0.3 s
    # of rank 0's ~4.9 s of CPU (rank 1 ~4.3 s; most of both is importing torch, Lightning and timm). The CLI has no
    # switch for it; a config file is how a user says so.
    (tmp_path / "config.yaml").write_text("reference: false\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "sightline.cli", "train", str(data), "--out", str(tmp_path / "run"), "--epochs", "1",
         "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", "--json", "--config",
         str(tmp_path / "config.yaml"), *TINY_ARGS],
        capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Initializing distributed" in proc.stderr  # several processes keep Lightning's lines: set-up debugging
    result = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert result["val"]["n_images"] == 12
    assert (tmp_path / "run" / "bundle" / "weights.safetensors").is_file()
    assert not (tmp_path / "run" / "bundle" / "reference.npz").exists()  # the config file was read
    # Two ranks share the 24 training images: 12 each, so the epoch ends after 2 optimizer steps of 8 (the log's
    # `step` counts from 0; one process takes 3 steps).
    rows = list(csv.DictReader((tmp_path / "run" / "logs" / "csv" / "metrics.csv").read_text().splitlines()))
    assert [int(r["step"]) + 1 for r in rows if r.get("train_loss_epoch")] == [2]


def test_ctrl_c_mid_epoch_is_one_line_and_exit_130(tmp_path: Path, monkeypatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C mid-epoch: Lightning's graceful shutdown ends in sys.exit(1), so train said nothing and exited 1 as if it
    had failed. Now one line says what is left (no bundle; RUN/config.yaml to start again) and the exit code is 130;
    Ctrl-C still works afterwards (Lightning ignores SIGINT while it shuts down)."""
    import functools
    import signal

    import lightning as L

    import sightline.train.fit as fit

    class CtrlC(L.Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            if trainer.current_epoch == 1:
                raise KeyboardInterrupt

    monkeypatch.setattr(fit, "train", functools.partial(fit.train, callbacks=[CtrlC()]))
    data = make_data(tmp_path / "data", splits={"train": 4, "val": 2})
    before = signal.getsignal(signal.SIGINT)
    code = run_command(app, ["train", str(data), "--out", str(tmp_path / "run"), "--epochs", "3", "--patience", "3",
                             *TINY_ARGS])
    err = capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is before
    assert code == 130 and "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "interrupted" in lines[-1] and "config.yaml" in lines[-1]
    assert (tmp_path / "run" / "config.yaml").is_file() and not (tmp_path / "run" / "bundle").exists()


@pytest.mark.parametrize("name", ["d[/]s", "data [v2]"])
def test_train_prints_a_bracketed_path_as_it_is(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    """'data [v2]-run/bundle' was printed as 'data -run/bundle'; 'd[/]s' ended in a rich MarkupError traceback."""
    data = make_data(tmp_path / name / "data", splits={"train": 2, "val": 1})
    run = tmp_path / name / "run"
    assert run_command(app, ["train", str(data), "--out", str(run), "--epochs", "1", *TINY_ARGS,
                             *_plain(tmp_path)]) == 0
    assert f"bundle: {run / 'bundle'}" in capsys.readouterr().out


def test_ctrl_c_before_fitting_does_not_point_at_files_not_written(tmp_path: Path, monkeypatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C while the images were still being scanned: no config.yaml or checkpoint exists yet to point at."""
    import sightline.train.fit as fit

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fit, "train", interrupted)
    data = make_data(tmp_path / "data", splits={"train": 2, "val": 1})
    code = run_command(app, ["train", str(data), "--out", str(tmp_path / "run"), *TINY_ARGS])
    err = capsys.readouterr().err.strip()
    assert code == 130 and err.startswith("interrupted: nothing trained yet; run the same command")
    assert "config.yaml" not in err and len(err.splitlines()) == 1
