"""Where and under which names `explain` writes: overlays never land inside the model's own training data, where
each PNG would become an image of a class (an 'explain' folder under DATA/val/ was a new class; one beside the
images, more images of it); an image's long name still gives a file name the file system takes."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from sightline.bundle import Bundle, Preprocessing
from sightline.errors import UserInputError
from sightline.models.factory import create_model


@pytest.mark.parametrize("inside", ["val/a", "train/explain"])
def test_overlays_inside_the_training_data_are_refused(tmp_path, inside):
    from sightline.explain.run import explain_files

    data = tmp_path / "data"
    for split in ("train", "val"):
        for c in ("a", "b"):
            (data / split / c).mkdir(parents=True)
            Image.new("RGB", (24, 24), (200, 30, 30)).save(data / split / c / "0.png")
    Bundle("test_efficientnet", ["a", "b"], Preprocessing(32), extra={"train": {"data_dir": str(data)}}).save(
        tmp_path / "bundle", create_model("test_efficientnet", 2, weights="none").state_dict())
    out = data / inside
    with pytest.raises(UserInputError, match="inside the dataset's (val|train)/ folder"):
        explain_files(tmp_path / "bundle", [data / "val" / "a" / "0.png"], out=out)
    assert sorted(p.name for p in (data / "val" / "a").iterdir()) == ["0.png"]
    assert not (data / "train" / "explain").exists()


@pytest.mark.parametrize("name", ["d[/]s", "data [v2]"])
def test_explain_prints_bracketed_paths_as_they_are(tmp_path, run_cli, name):
    """Paths went through rich markup: 'data [v2]' lost its '[v2]', 'd[/]s' ended in a MarkupError traceback."""
    folder = tmp_path / name
    folder.mkdir(parents=True)
    Image.new("RGB", (24, 24), (200, 30, 30)).save(folder / "x.png")
    (folder / "bad.png").write_text("not an image")
    Bundle("test_efficientnet", ["a", "b"], Preprocessing(32)).save(
        tmp_path / "bundle", create_model("test_efficientnet", 2, weights="none").state_dict())
    code, out = run_cli(["explain", str(tmp_path / "bundle"), str(folder / "x.png"), str(folder / "bad.png"),
                         "--out", str(folder / "ex")])
    assert code == 0 and "Traceback" not in out.err
    assert f"-> {folder / 'ex' / 'x.gradcam.png'}" in out.out
    assert f"skipped {folder / 'bad.png'}: not a supported image" in out.out  # the path said once


def test_an_image_name_near_the_file_system_limit_still_gets_its_overlay(tmp_path):
    """A 250-byte file name (a downloaded photo) plus '.gradcam.png' passed the 255-byte limit: OSError traceback."""
    from sightline.explain.run import explain_files

    name = "é" * 120 + "x" * 6 + ".png"  # 246 bytes in UTF-8
    Image.new("RGB", (24, 24), (200, 30, 30)).save(tmp_path / name)
    Image.new("RGB", (24, 24), (20, 30, 200)).save(tmp_path / ("é" * 120 + "y" * 6 + ".png"))
    Bundle("test_efficientnet", ["a", "b"], Preprocessing(32)).save(
        tmp_path / "bundle", create_model("test_efficientnet", 2, weights="none").state_dict())
    rows = explain_files(tmp_path / "bundle", [tmp_path / name, tmp_path / ("é" * 120 + "y" * 6 + ".png")],
                         out=tmp_path / "ex")
    overlays = [r["overlay"] for r in rows]
    assert len(set(overlays)) == 2 and all(len(Path(o).name.encode()) <= 255 and Path(o).is_file() for o in overlays)


def test_a_folder_is_searched_for_its_images_and_an_empty_one_is_refused(tmp_path, run_cli):
    """`explain RUN FOLDER` (as `predict` takes) skipped the folder itself: 'cannot read the file (Is a directory)',
    then 'no image could be read'; an empty folder got the same, and the images inside never got an overlay."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.new("RGB", (24, 24), (200, 30, 30)).save(folder / "x.png")
    (folder / "bad.jpg").write_text("not an image")
    (folder / "notes.txt").write_text("hi")
    (tmp_path / "empty").mkdir()
    Bundle("test_efficientnet", ["a", "b"], Preprocessing(32)).save(
        tmp_path / "bundle", create_model("test_efficientnet", 2, weights="none").state_dict())
    code, out = run_cli(["explain", str(tmp_path / "bundle"), str(folder), "--out", str(tmp_path / "ex")])
    assert code == 0 and "Traceback" not in out.err
    assert f"-> {tmp_path / 'ex' / 'x.gradcam.png'}" in out.out
    assert f"skipped {folder / 'bad.jpg'}" in out.out and "notes.txt" not in out.out
    code, out = run_cli(["explain", str(tmp_path / "bundle"), str(tmp_path / "empty"), "--out", str(tmp_path / "ex")])
    assert code == 2 and "Traceback" not in out.err
    assert f"no image in '{tmp_path / 'empty'}'" in out.err and len(out.err.strip().splitlines()) == 1


def test_an_empty_input_is_refused_not_read_as_the_current_folder(tmp_path, run_cli, monkeypatch):
    """`explain RUN "$IMAGES"` with IMAGES unset: typer made '' the path '.', and every image under the current
    folder got an overlay."""
    from sightline.explain import run as explain_run

    monkeypatch.setattr(explain_run, "explain_files", lambda *a, **k: pytest.fail("explained anyway"))
    code, out = run_cli(["explain", str(tmp_path), ""])
    assert code == 2 and "an input is empty" in out.err and "Traceback" not in out.err
