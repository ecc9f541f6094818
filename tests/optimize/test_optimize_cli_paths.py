"""export and predict print the paths they were given as they are: they went through rich markup, so a folder 'd['
holding ']s' (a path with '[/]') ended in a MarkupError traceback, and 'data [v2]' lost its '[v2]'."""
from __future__ import annotations

import torch

from sightline.bundle import Bundle, Preprocessing
from sightline.models.factory import create_model

from conftest import CLASSES


def test_export_and_predict_print_a_bracketed_path_as_it_is(tmp_path, run_cli, make_dataset):
    root = tmp_path / "d[" / "]s [v2]"
    data = make_dataset(root / "data")
    torch.manual_seed(0)
    model = create_model("test_efficientnet", len(CLASSES), weights="none")
    Bundle("test_efficientnet", CLASSES, Preprocessing(32)).save(root / "bundle", model.state_dict())
    code, out = run_cli(["export", str(root / "bundle"), "--data", str(data)])
    assert code == 0 and "Traceback" not in out.err
    assert f"images from {data / 'val'}" in out.out
    code, out = run_cli(["predict", str(root / "bundle"), str(data / "test"), "--out", str(root / "p.csv")])
    assert code == 0 and f"written to {root / 'p.csv'}" in out.err


def test_predict_refuses_an_empty_input(tmp_path, run_cli, monkeypatch):
    """`predict RUN "$IMAGES"` with the variable unset: '' became the current folder, and every image under it,
    however deep, was predicted."""
    from PIL import Image

    Bundle("test_efficientnet", CLASSES, Preprocessing(32)).save(
        tmp_path / "bundle", create_model("test_efficientnet", len(CLASSES), weights="none").state_dict())
    Image.new("RGB", (24, 24), (200, 30, 30)).save(tmp_path / "x.png")  # refused before the model is opened
    monkeypatch.chdir(tmp_path)
    code, out = run_cli(["predict", str(tmp_path / "bundle"), ""])
    assert code == 2 and "Traceback" not in out.err and len(out.err.strip().splitlines()) == 1
    assert "an input is empty" in out.err and "x.png" not in out.out + out.err
