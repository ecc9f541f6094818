"""A damaged model.json: one line naming it and what to do (bytes that are not UTF-8 were a UnicodeDecodeError
traceback)."""
from __future__ import annotations

import pytest

from sightline.bundle import load_bundle
from sightline.errors import BundleError


@pytest.mark.parametrize("content, words", [
    (b"\xff\xfe\x00\x01", "cannot be read"),  # not text at all
    (b'{"format_version": ', "cannot be read"),  # cut short
    (b"[1, 2]", "is not a JSON object"),
])
def test_damaged_model_json(tmp_path, content, words):
    (tmp_path / "model.json").write_bytes(content)
    with pytest.raises(BundleError, match="model.json") as caught:
        load_bundle(tmp_path)
    message = str(caught.value)
    assert words in message and "copy the bundle folder again" in message and "\n" not in message


def test_damaged_model_json_through_the_cli(run_cli, tmp_path):
    (tmp_path / "model.json").write_bytes(b"\xff\xfe")
    code, out = run_cli(["export", str(tmp_path)])
    assert code == 2 and "Traceback" not in out.err and "model.json cannot be read" in " ".join(out.err.split())
