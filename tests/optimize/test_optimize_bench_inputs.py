"""The inputs of `bench --images` and `predict` as a real folder has them. bench: a file that starts like an image
but cannot be decoded (truncated, above the pixel cap) is left out and said, naming the file, instead of ending the
whole run with '<uploaded bytes>: ...'. predict: a folder without images is named in the error."""
from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from sightline.bundle import Bundle, Preprocessing
from sightline.models.factory import create_model


def _bundle(root):
    """A tiny bundle: timed on the torch backend, so no ONNX export is needed."""
    torch.manual_seed(0)
    model = create_model("test_efficientnet", 2, weights="none")
    Bundle("test_efficientnet", ["a", "b"], Preprocessing(32)).save(root / "bundle", model.state_dict())


def test_bench_leaves_out_and_names_images_it_cannot_decode(run_cli, tmp_path):
    _bundle(tmp_path)
    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("RGB", (40, 30), (10, 20, 30)).save(folder / "a.png")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (folder / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    code, out = run_cli(["bench", str(tmp_path / "bundle"), "--images", str(folder), "--budget", "0.2",
                         "--batch-sizes", "1", "--backends", "torch"])
    assert code == 0, out.err
    assert "1 file(s) left out" in out.err and "cut.jpg" in out.err and "<uploaded bytes>" not in out.err


def test_bench_with_no_decodable_image_is_one_line(run_cli, tmp_path):
    _bundle(tmp_path)
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    code, out = run_cli(["bench", str(tmp_path / "bundle"), "--images", str(folder), "--budget", "0.2",
                         "--backends", "torch"])
    assert code == 2 and "Traceback" not in out.err
    assert "holds no image" in out.err and "cut.png" in out.err and len(out.err.strip().splitlines()) == 1


def test_predict_on_a_folder_without_images_names_it(run_cli, tmp_path):
    """The error said 'no input images found' without saying where it had looked."""
    _bundle(tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("not an image")
    code, out = run_cli(["predict", str(tmp_path / "bundle"), str(tmp_path / "docs")])
    assert code == 2 and f"'{tmp_path / 'docs'}'" in out.err and len(out.err.strip().splitlines()) == 1


def test_bench_refuses_a_batch_size_no_machine_runs_in_its_budget(run_cli, tmp_path, monkeypatch):
    """`--batch-sizes 100000` decoded and ran 100000 images a repeat, at least 4 times, whatever --budget said:
    the command ran for many minutes (or ran out of memory) without a word."""
    import sightline.optimize.bench as bench_module

    def timed(*args, **kwargs):
        raise AssertionError("a batch was timed")

    monkeypatch.setattr(bench_module, "_bench_batch", timed)
    _bundle(tmp_path)
    code, out = run_cli(["bench", str(tmp_path / "bundle"), "--batch-sizes", "1,100000", "--backends", "torch"])
    assert code == 2 and "Traceback" not in out.err and len(out.err.strip().splitlines()) == 1
    assert "100000" in out.err and "1024" in out.err


def test_bench_names_a_file_called_an_image_that_holds_none(run_cli, tmp_path):
    """A 'photo.jpg' that is text (a failed download) or empty was dropped from --images without a word; only
    files that began like an image were said to be left out."""
    _bundle(tmp_path)
    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("RGB", (40, 30), (10, 20, 30)).save(folder / "a.png")
    (folder / "bad.jpg").write_text("<html>not found</html>")
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not named as an image: not an input")
    code, out = run_cli(["bench", str(tmp_path / "bundle"), "--images", str(folder), "--budget", "0.2",
                         "--batch-sizes", "1", "--backends", "torch"])
    assert code == 0, out.err
    assert "2 file(s) left out" in out.err and "notes.txt" not in out.err
