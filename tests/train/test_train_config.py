"""TrainConfig: text from YAML and the command line becomes typed values; every bad value or unknown key is one
line naming the file (or "training config"), the field and what it must be; RUN/config.yaml round-trips."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from sightline._cli.common import run_command
from sightline.cli import app
from sightline.errors import UserInputError
from sightline.train.config import TrainConfig, load_config


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lr: abc\n", "lr='abc' must be"),  # lr and input_size also take 'auto': only the start is fixed
        ("lr: 0\n", "lr=0 must be"),
        ("epochs: 2.5\n", "epochs=2.5 must be a whole number."),
        ("epochs: 0\n", "epochs=0 must be >= 1."),
        ("epochs: true\n", "epochs=True must be a number, not true or false."),
        ("devices: foo\n", "devices='foo' must be 'auto', a count of 1 or more such as 2, or a list of GPU ids such as 0,1."),
        ("devices: 0\n", "devices=0 must be 'auto', a count of 1 or more"),
        ("vflip: maybe\n", "vflip='maybe' must be true or false."),
        ("schedule: linear\n", "schedule='linear' must be 'cosine' or 'plateau'."),
        ("crop_pct: 0.0\n", "crop_pct=0.0 must be >= 0.1."),
        # Optional[int] / Optional[float]: the message says null is also fine
        ("input_size: big\n", "input_size='big' must be"),
        ("input_size: 8\n", "input_size=8 must be"),
        ("num_workers: 1.5\n", "num_workers=1.5 must be a whole number or null."),
        ("max_time_s: soon\n", "max_time_s='soon' must be a number or null."),
        ("channels_last: sometimes\n", "channels_last='sometimes' must be true or false or null."),
        # unknown keys: the closest known name when there is one, else the known names
        ("batchsize: 8\n", "batchsize is an unknown key; did you mean 'batch_size'?"),
        ("workers: 2\n", "workers is an unknown key; did you mean 'num_workers'?"),
        ("learning_rate: 0.1\n", "learning_rate is an unknown key; known keys: model, weights, input_size,"),
    ],
)
def test_bad_config_file_is_one_line_naming_file_and_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(UserInputError, match=re.escape(f"{path}: {message}")) as info:
        load_config(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [("lr: [1e-3\n", "is not valid YAML at line 2; fix the syntax."),
     ("- lr: 1e-3\n", "must be a mapping of option: value.")],
)
def test_unreadable_config_file_is_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(UserInputError, match=re.escape(f"config '{path}' {message}")) as info:
        load_config(path)
    assert "\n" not in str(info.value)
    with pytest.raises(UserInputError, match="cannot be read .*; check the path"):
        load_config(tmp_path / "missing.yaml")


def test_several_bad_values_are_all_named_on_one_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 0\nlr: -1\nseed: x\naugment: wild\nbatch_size: 0\n")
    with pytest.raises(UserInputError) as info:
        load_config(path)
    text = str(info.value)
    assert text.startswith(f"{path}: epochs=0 must be >= 1; batch_size=0 must be >= 1; lr=-1 must be")
    assert text.endswith("and 2 more.") and "\n" not in text


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"schedule": "linear"}, "training config: schedule='linear' must be 'cosine' or 'plateau'."),
        ({"crop_pct": 0.0}, "training config: crop_pct=0.0 must be >= 0.1."),
        ({"input_size": "x"}, "training config: input_size='x' must be"),
        ({"num_workers": "x"}, "training config: num_workers='x' must be a whole number or null."),
        ({"prec": "bf16-mixed"}, "training config: prec is an unknown key; did you mean 'precision'?"),
    ],
)
def test_bad_keyword_options_are_one_line(options: dict, message: str) -> None:
    with pytest.raises(UserInputError, match=re.escape(message)):
        TrainConfig(**options)
    with pytest.raises(UserInputError, match=re.escape(message)):
        TrainConfig().with_overrides(**options)


def test_text_values_become_their_types(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"  # 1e-3 is a str to YAML 1.1; the CLI hands over devices as text, YAML as a number
    path.write_text("lr: 1e-3\nepochs: '4'\nvflip: 'yes'\ninput_size: '64'\nnum_workers: 2\nmax_time_s: '90'\n"
                    "channels_last: 'no'\ncrop_pct: null\ndevices: 2\n")
    cfg = load_config(path)
    assert (cfg.lr, cfg.epochs, cfg.vflip, cfg.devices) == (0.001, 4, True, "2")
    assert (cfg.input_size, cfg.num_workers, cfg.max_time_s, cfg.channels_last, cfg.crop_pct) == (64, 2, 90.0, False, None)
    assert type(cfg.input_size) is int and type(cfg.max_time_s) is float


def test_optional_fields_take_null_and_values() -> None:
    cfg = TrainConfig(input_size=None, num_workers=None, channels_last=None, max_time_s=None, crop_pct=None)
    assert (cfg.input_size, cfg.num_workers, cfg.channels_last, cfg.max_time_s, cfg.crop_pct) == (None,) * 5
    cfg = cfg.with_overrides(input_size=48, num_workers=0, channels_last=True, max_time_s=1.5, crop_pct=1)
    assert (cfg.input_size, cfg.num_workers, cfg.channels_last, cfg.max_time_s, cfg.crop_pct) == (48, 0, True, 1.5, 1.0)
    assert cfg.with_overrides(num_workers=None).num_workers is None and cfg.num_workers == 0  # copies


def test_config_yaml_round_trips_in_field_order(tmp_path: Path) -> None:
    cfg = TrainConfig(model="test_efficientnet", input_size=32, epochs=3, lr=3e-4, schedule="plateau",
                      crop_pct=1.0, vflip=True, num_workers=0, max_time_s=60, precision="bf16-mixed", devices="0,1")
    cfg.save_yaml(tmp_path / "config.yaml")
    data = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert list(data) == list(TrainConfig.model_fields) and data["input_size"] == 32 and data["crop_pct"] == 1.0
    assert load_config(tmp_path / "config.yaml") == cfg
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left nothing behind


def test_cli_config_file_error_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "c.yaml").write_text("epochz: 3\n")
    code = run_command(app, ["train", str(tmp_path / "data"), "--out", str(tmp_path / "run"),
                             "--config", str(tmp_path / "c.yaml")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "c.yaml: epochz is an unknown key; did you mean 'epochs'?" in err
