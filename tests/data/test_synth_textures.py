"""`synthesize(textures=...)`: surfaces drawn from a chosen set of textures, the texture shift of the loop benchmark."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from sightline.data.images import load_image
from sightline.data.synth import TEXTURES, render_surface, synthesize
from sightline.errors import UserInputError


def _jpgs(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.jpg"))}


def test_all_textures_in_order_is_the_default_byte_for_byte(tmp_path: Path) -> None:
    synthesize(tmp_path / "default", n=24, size=40, seed=3)
    synthesize(tmp_path / "all", n=24, size=40, seed=3, textures=list(TEXTURES))
    synthesize(tmp_path / "two", n=24, size=40, seed=3, textures=("woven", "painted"))
    default, every, two = _jpgs(tmp_path / "default"), _jpgs(tmp_path / "all"), _jpgs(tmp_path / "two")
    assert default == every
    assert default.keys() == two.keys()  # the same names, classes and splits ...
    # ... on other surfaces, except where both draws land on the same texture (the same bits pick painted from
    # four and from two: about a quarter of the images)
    assert sum(default[k] != two[k] for k in default) >= 12


def test_render_surface_draws_only_from_the_set() -> None:
    rng = np.random.default_rng(0)
    kinds = [render_surface(rng, 32, textures=("cast", "woven"))[1] for _ in range(40)]
    assert set(kinds) == {"cast", "woven"}
    assert render_surface(rng, 32, texture="painted", textures=("cast",))[1] == "painted"  # an explicit one wins


def _brightness(root: Path) -> float:
    """Mean grey level of the `ok` images (no defect in them)."""
    return float(np.mean([np.asarray(load_image(p).convert("L"), dtype=np.float32).mean()
                          for p in sorted(root.rglob("ok/*.jpg"))]))


def test_the_set_decides_what_the_surfaces_look_like(tmp_path: Path) -> None:
    """Brushed metal (tint about 0.8) is far brighter than cast iron (about 0.5) under the same range of lighting."""
    synthesize(tmp_path / "brushed", n=30, size=48, seed=1, textures=["brushed"], layout="flat")
    synthesize(tmp_path / "cast", n=30, size=48, seed=1, textures=["cast"], layout="flat")
    assert _brightness(tmp_path / "brushed") > 1.3 * _brightness(tmp_path / "cast")


@pytest.mark.parametrize("textures, words", [
    (["woven", "velvet"], "unknown texture(s) 'velvet'"),
    ([], "one or more distinct textures"),
    (["cast", "cast"], "one or more distinct textures"),
])
def test_bad_texture_sets_are_refused_before_writing(tmp_path: Path, textures: list[str], words: str) -> None:
    with pytest.raises(UserInputError) as err:
        synthesize(tmp_path / "out", n=20, size=32, textures=textures)
    assert words in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_cli_textures_option(tmp_path: Path, run_cli) -> None:
    code, _ = run_cli(["data", "synth", str(tmp_path / "a"), "--n", "20", "--size", "32", "--textures", "woven,painted",
                       "--json"])
    assert code == 0
    synthesize(tmp_path / "b", n=20, size=32, textures=("woven", "painted"))
    assert _jpgs(tmp_path / "a") == _jpgs(tmp_path / "b")  # the option reaches synthesize
    code, out = run_cli(["data", "synth", str(tmp_path / "c"), "--n", "20", "--size", "32", "--textures", "wood"])
    assert code == 2 and "wood" in out.err and not (tmp_path / "c").exists()
