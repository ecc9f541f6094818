"""The paths `predict` is given. (That export and predict print a bracketed path as it is is checked on the export
test_optimize_export.py makes anyway: test_export_and_predict_print_a_bracketed_path_as_it_is.)"""
from __future__ import annotations

from sightline.bundle import Bundle, Preprocessing
from sightline.models.factory import create_model

# `from conftest import CLASSES` imported whichever conftest module Python met first: run with tests/loop, the
# file failed at collection (tests/loop/conftest.py has no CLASSES)
CLASSES = ["dark", "light"]


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
