"""Per-image statistics: planted differences (blur, brightness, JPEG quality, mode) are measured as such."""
from __future__ import annotations

import functools
import io

import numpy as np
import pytest
from PIL import Image, ImageFilter

from sightline.errors import ImageError
from sightline.monitor.stats import image_stats, jpeg_quality, laplacian_variance, stats_columns


def _photo(size: int = 64, seed: int = 0) -> Image.Image:
    """A textured RGB image: smooth gradients plus detail, so blur and JPEG change it measurably."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.stack([xx, yy, (xx + yy) / 2], axis=-1) * 180 + 30
    noise = rng.normal(0, 25, (size, size, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("quality", [10, 30, 50, 75, 90, 95])
def test_jpeg_quality_round_trips_pillow_quality(quality):
    data = _encode(_photo(), "JPEG", quality=quality)
    stats = image_stats(Image.open(io.BytesIO(data)).convert("RGB"), data)
    assert stats["format"] == "JPEG"
    assert abs(stats["jpeg_quality"] - quality) <= 1


def test_jpeg_quality_ignores_table_order_and_ranks_custom_tables():
    luma = np.array([16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
                     14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113,
                     92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99])
    at_60 = np.clip((luma * (200 - 2 * 60) + 50) // 100, 1, 255)  # the IJG scaling, written out independently
    shuffled = np.random.default_rng(0).permutation(at_60)  # zigzag vs natural order must not matter
    assert jpeg_quality({0: at_60.tolist()}) == jpeg_quality({0: shuffled.tolist()}) == 60
    assert jpeg_quality({0: [4] * 64, 1: [4] * 64}) > jpeg_quality({0: [16] * 64, 1: [16] * 64})
    assert jpeg_quality(None) is None
    data = _encode(_photo(), "PNG")
    stats = image_stats(Image.open(io.BytesIO(data)), data)
    assert stats["format"] == "PNG" and stats["jpeg_quality"] is None


def test_blur_brightness_contrast_move_the_right_way():
    im = _photo(96)
    sharp = image_stats(im, _encode(im, "PNG"))
    blurred_im = im.filter(ImageFilter.GaussianBlur(2))
    blurred = image_stats(blurred_im, _encode(blurred_im, "PNG"))
    assert blurred["sharpness"] < sharp["sharpness"] / 4
    bright_im = Image.fromarray(np.clip(np.asarray(im, np.int16) + 60, 0, 255).astype(np.uint8))
    assert image_stats(bright_im)["brightness"] > sharp["brightness"] + 0.15
    flat_im = Image.fromarray((np.asarray(im, np.float32) * 0.3 + 90).astype(np.uint8))
    assert image_stats(flat_im)["contrast"] < sharp["contrast"] * 0.5


def test_header_fields_come_from_the_file_and_size_from_the_image(tmp_path):
    grey = _photo(80).convert("L").resize((80, 40))
    path = tmp_path / "g.png"
    grey.save(path)
    stats = image_stats(grey.convert("RGB"), path)  # the model saw RGB; the file is greyscale
    assert (stats["mode"], stats["channels"], stats["format"]) == ("L", 1, "PNG")
    assert (stats["width"], stats["height"], stats["aspect"]) == (80, 40, 2.0)
    assert stats["bytes_per_pixel"] == pytest.approx(path.stat().st_size / 3200)
    assert 0.0 <= stats["brightness"] <= 1.0


def test_sharpness_is_measured_at_the_analysis_side():
    """A large image is box-downscaled first, so the measure stays cheap and comparable across sizes."""
    small = _photo(160)
    large = small.resize((640, 640), Image.Resampling.NEAREST)  # the same content at 4x
    s_small, s_large = image_stats(small)["sharpness"], image_stats(large)["sharpness"]
    assert s_large == pytest.approx(s_small, rel=1e-6)
    assert laplacian_variance(np.zeros((2, 2))) == 0.0


def test_unreadable_source_is_a_one_line_image_error():
    with pytest.raises(ImageError, match="cannot read the image header") as err:
        image_stats(_photo(), b"not an image")
    assert "\n" not in str(err.value)


def test_stats_columns_types():
    rows = [image_stats(_photo(32, s), _encode(_photo(32, s), "JPEG", quality=80)) for s in range(3)]
    rows.append(image_stats(_photo(32), _encode(_photo(32), "PNG")))
    cols = stats_columns(rows)
    assert cols["sharpness"].dtype == np.float64 and cols["format"].tolist() == ["JPEG"] * 3 + ["PNG"]
    assert np.isnan(cols["jpeg_quality"][3]) and not np.isnan(cols["jpeg_quality"][:3]).any()


@functools.cache
def _files() -> dict[str, bytes]:
    """One file of each kind the server decodes differently: kept as opened (RGB JPEG, PNG, BMP, TIFF, WebP, large
    JPEG in draft mode) or converted / rotated (greyscale and CMYK JPEG, palette and RGBA PNG, EXIF-rotated JPEG).
    Made once per run (read, never changed): drawing and encoding them was nearly all of each test using them."""
    photo = _photo(96)
    rotated = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    photo.resize((96, 64)).save(rotated, "JPEG", quality=85, exif=exif)
    return {
        "rgb.jpg": _encode(photo, "JPEG", quality=70),
        "large.jpg": _encode(_photo(640).resize((1200, 800)), "JPEG", quality=92),
        "grey.jpg": _encode(photo.convert("L"), "JPEG", quality=60),
        "cmyk.jpg": _encode(photo.convert("CMYK"), "JPEG", quality=80),
        "rotated.jpg": rotated.getvalue(),
        "rgb.png": _encode(photo, "PNG"),
        "palette.png": _encode(photo.convert("P"), "PNG"),
        "rgba.png": _encode(photo.convert("RGBA"), "PNG"),
        "rgb.bmp": _encode(photo, "BMP"),
        "rgb.tif": _encode(photo, "TIFF"),
        "rgb.webp": _encode(photo, "WEBP", quality=80),
    }


@pytest.mark.parametrize("as_path", [False, True])
def test_statistics_of_the_decoded_file_equal_those_with_the_header_read_again(tmp_path, monkeypatch, as_path):
    """The server's decode (`load_image` in draft mode) hands `image_stats` the opened file itself for RGB files:
    the header fields are then taken from it instead of parsing the file again. Every statistic must equal the
    previous computation (the header parsed from the bytes, forced here with a copy of the image, which is no
    longer the opened file), and the header must not be parsed when it need not be."""
    from sightline.data.images import load_image
    from sightline.monitor import stats as stats_module

    kept_as_opened = {"rgb.jpg", "large.jpg", "rgb.png", "rgb.bmp", "rgb.tif", "rgb.webp"}
    parsed = []
    real_header = stats_module._header
    monkeypatch.setattr(stats_module, "_header", lambda source: parsed.append(source) or real_header(source))
    files = _files()
    for name, blob in files.items():
        source = blob
        if as_path:
            source = tmp_path / name
            source.write_bytes(blob)
        image = load_image(source, draft=(256, 256))
        parsed.clear()
        fast = image_stats(image, source)
        assert bool(parsed) == (name not in kept_as_opened), name
        assert fast == image_stats(image.copy(), source), name  # the copy: the header parsed again, as before
        assert fast["format"] == Image.open(io.BytesIO(blob)).format, name
    assert image_stats(load_image(files["grey.jpg"]), files["grey.jpg"])["mode"] == "L"
    big = load_image(files["large.jpg"], draft=(256, 256))
    assert big.size[0] < 1200 and image_stats(big, files["large.jpg"])["width"] == big.size[0]  # draft
