"""explain on image files as they arrive from the field."""
from __future__ import annotations

import json
import os

from PIL import Image

from sightline.bundle import Bundle, Preprocessing
from sightline.models.factory import create_model


def test_explain_an_image_whose_name_is_not_utf8(tmp_path, run_cli):
    """'caf\\xe9.jpg' (Latin-1 bytes in the name) ended in UnicodeEncodeError while naming its overlay; the overlay
    and the printed rows carry the name with a \\x escape."""
    Bundle("test_efficientnet", ["a", "b"], Preprocessing(32)).save(
        tmp_path / "bundle", create_model("test_efficientnet", 2, weights="none").state_dict())
    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("RGB", (40, 40), (200, 30, 30)).save(os.path.join(os.fsencode(folder), b"caf\xe9.jpg"), "JPEG")
    with open(os.path.join(os.fsencode(folder), b"th\xe9.jpg"), "wb") as fh:
        fh.write(b"not an image")
    code, out = run_cli(["explain", str(tmp_path / "bundle"), str(folder), "--out", str(tmp_path / "ex"), "--json"])
    assert code == 0 and "Traceback" not in out.err
    rows = {os.path.basename(r["path"]): r for r in json.loads(out.out)}
    assert set(rows) == {"caf\\xe9.jpg", "th\\xe9.jpg"}
    assert os.path.basename(rows["caf\\xe9.jpg"]["overlay"]) == "caf\\xe9.gradcam.png"
    assert (tmp_path / "ex" / "caf\\xe9.gradcam.png").is_file()
    assert "error" in rows["th\\xe9.jpg"]
