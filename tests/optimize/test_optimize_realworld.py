"""predict on folders as they arrive from the field."""
from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))
from serve_tiny import make_bundle  # noqa: E402  (a tiny exported bundle, exported once per test run)


def test_predict_writes_a_file_name_that_is_not_utf8(tmp_path, run_cli):
    """'caf\\xe9.jpg' (Latin-1, from a zip made on Windows) was predicted and then the CSV and JSON could not be
    written (UnicodeEncodeError after the whole batch); the name is written with a \\x escape, the broken twin
    (not an image) gets its error row the same way."""
    bundle = make_bundle(tmp_path)
    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("RGB", (40, 40), (200, 30, 30)).save(os.path.join(os.fsencode(folder), b"caf\xe9.jpg"), "JPEG")
    with open(os.path.join(os.fsencode(folder), b"th\xe9.jpg"), "wb") as fh:
        fh.write(b"<html>not an image</html>")
    code, out = run_cli(["predict", str(bundle), str(folder), "--out", str(tmp_path / "p.csv")])
    assert code == 0 and "Traceback" not in out.err
    with open(tmp_path / "p.csv", newline="", encoding="utf-8") as fh:
        rows = {os.path.basename(r["filename"]): r for r in csv.DictReader(fh)}
    assert set(rows) == {"caf\\xe9.jpg", "th\\xe9.jpg"}
    assert rows["caf\\xe9.jpg"]["label"] and not rows["caf\\xe9.jpg"]["error"]
    assert "th\\xe9.jpg" in rows["th\\xe9.jpg"]["error"]
    code, out = run_cli(["predict", str(bundle), str(folder), "--format", "json"])
    assert code == 0
    assert sorted(os.path.basename(r["filename"]) for r in json.loads(out.out)) == ["caf\\xe9.jpg", "th\\xe9.jpg"]
