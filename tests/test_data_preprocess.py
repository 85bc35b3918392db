"""Reading and preprocessing images: decoding edge cases, 16-bit precision, CLAHE, fundus crop, resize."""

import cv2
import numpy as np
import pytest

from kd_keras.data.preprocess import (
    ImageReadError,
    PreprocessConfig,
    apply_clahe,
    crop_fundus,
    fundus_circle_box,
    load_image,
    preprocess,
    read_image,
)


def _write(path, array):
    """Writes an RGB(A)/grey array with OpenCV (which wants BGR[A])."""
    if array.ndim == 3 and array.shape[-1] == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    elif array.ndim == 3 and array.shape[-1] == 4:
        array = cv2.cvtColor(array, cv2.COLOR_RGBA2BGRA)
    ok, encoded = cv2.imencode(path.suffix, array)
    assert ok
    path.write_bytes(encoded.tobytes())
    return path


def _rgb(height=40, width=50, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_read_rgb_png_roundtrip_in_rgb_order(tmp_path):
    image = _rgb()
    image[0, 0] = (255, 0, 0)  # pure red stays in channel 0
    out = read_image(_write(tmp_path / "a.png", image))
    assert out.dtype == np.uint8 and out.shape == (40, 50, 3)
    np.testing.assert_array_equal(out, image)
    assert tuple(out[0, 0]) == (255, 0, 0)


def test_read_grey_and_non_ascii_path(tmp_path):
    grey = _rgb()[:, :, 0]
    path = tmp_path / "réti_网膜_ü.png"
    out = read_image(_write(path, grey))
    assert out.shape == (40, 50, 1)
    np.testing.assert_array_equal(out[:, :, 0], grey)


def test_rgba_drops_alpha(tmp_path):
    rgba = np.concatenate([_rgb(), np.full((40, 50, 1), 7, np.uint8)], axis=-1)
    out = read_image(_write(tmp_path / "a.png", rgba))
    np.testing.assert_array_equal(out, rgba[:, :, :3])


def test_grey_alpha_png_drops_alpha(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    grey = _rgb()[:, :, 0]
    pil.fromarray(grey).convert("LA").save(tmp_path / "la.png")
    out = read_image(tmp_path / "la.png")
    # OpenCV expands grey+alpha to BGRA; after dropping alpha every channel equals the grey level.
    for channel in range(out.shape[-1]):
        np.testing.assert_array_equal(out[:, :, channel], grey)


def test_16bit_ramp_keeps_full_precision(tmp_path):
    ramp = np.arange(0, 65536, 16, dtype=np.uint16).reshape(64, 64)  # 4096 distinct levels
    raw = read_image(_write(tmp_path / "ramp.png", ramp))
    assert raw.dtype == np.uint16
    np.testing.assert_array_equal(raw[:, :, 0], ramp)
    out = preprocess(raw, PreprocessConfig(image_size=(64, 64), channels=1))
    expected = ramp.astype(np.float64) * 255.0 / 65535.0
    np.testing.assert_allclose(out[:, :, 0], expected, atol=1e-3)
    assert np.unique(out).size == 4096  # an 8-bit step would have collapsed to <= 256 levels
    assert out.max() == pytest.approx(expected.max(), abs=1e-3) and out.min() == 0


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[:, :16] = (200, 30, 30)
    rgb[:, 16:] = (20, 40, 220)
    pil.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    assert pil.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    out = read_image(tmp_path / "cmyk.jpg")
    assert out.shape == (32, 32, 3)
    reference = np.asarray(pil.open(tmp_path / "cmyk.jpg").convert("RGB")).astype(int)
    assert np.abs(out.astype(int) - reference).mean() < 3
    assert np.abs(out[4:28, 2:12].astype(int).mean((0, 1)) - (200, 30, 30)).max() < 12
    assert np.abs(out[4:28, 20:30].astype(int).mean((0, 1)) - (20, 40, 220)).max() < 12


@pytest.mark.parametrize(
    "name, content, problem",
    [
        ("empty.png", b"", "empty file"),
        ("text.png", b"hello, this is not an image\n" * 5, "not an image"),
        ("cut.png", "png-half", "truncated or corrupt PNG"),
        ("cut.jpg", "jpg-half", "truncated"),
        ("cut_tail.jpg", "jpg-tail", "truncated"),
    ],
)
def test_bad_files_raise_one_line_error_naming_file(tmp_path, name, content, problem):
    image = _rgb(64, 64)
    if content == "png-half":
        content = cv2.imencode(".png", image)[1].tobytes()[:300]
    elif content == "jpg-half":
        content = cv2.imencode(".jpg", image)[1].tobytes()[:1000]
    elif content == "jpg-tail":
        content = cv2.imencode(".jpg", image)[1].tobytes()[:-40]  # rows missing at the end only
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and problem in message
    assert isinstance(info.value, ValueError)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageReadError, match="cannot read file"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(ImageReadError, match="cannot read file"):
        read_image(tmp_path)


def test_unsupported_pixel_type(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    pil.fromarray(np.zeros((8, 8), np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(ImageReadError, match="unsupported pixel type float32"):
        read_image(tmp_path / "f.tif")


def test_clahe_matches_opencv_per_channel():
    rng = np.random.default_rng(1)
    # Low-contrast image with structure so CLAHE has work to do.
    yy, xx = np.mgrid[0:96, 0:96]
    base = np.stack([60 + 30 * np.sin(xx / 9.0), 90 + 20 * np.cos(yy / 7.0), 120 + 10 * np.sin((xx + yy) / 5)], -1)
    image = np.clip(base + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8)
    clahe = cv2.createCLAHE(clipLimit=3.0, tileGridSize=(4, 4))
    expected = np.stack([clahe.apply(np.ascontiguousarray(image[:, :, c])) for c in range(3)], -1)
    np.testing.assert_array_equal(apply_clahe(image, clip=3.0, grid=4), expected)
    out = preprocess(image, PreprocessConfig(image_size=(96, 96), clahe=True, clahe_clip=3.0, clahe_grid=4))
    np.testing.assert_array_equal(out, expected.astype(np.float32))
    assert out[:, :, 2].std() > 2 * image[:, :, 2].std()  # contrast was stretched


def test_clahe_on_16bit_stays_16bit():
    ramp = (np.linspace(20000, 30000, 64 * 64).reshape(64, 64, 1)).astype(np.uint16)
    out = apply_clahe(ramp, clip=2.0, grid=2)
    assert out.dtype == np.uint16 and out.shape == ramp.shape
    assert out.max() - out.min() > ramp.max() - ramp.min()


def _synthetic_fundus(height, width, centre, radius):
    image = np.zeros((height, width, 3), np.uint8)
    cv2.circle(image, (centre[1], centre[0]), radius, (180, 90, 40), thickness=-1)
    cv2.circle(image, (centre[1] + radius // 3, centre[0]), radius // 6, (250, 220, 150), thickness=-1)
    return image


def test_fundus_circle_box_and_crop_centres_disc():
    image = _synthetic_fundus(200, 300, centre=(90, 200), radius=60)
    row, col, radius = fundus_circle_box(image)
    assert abs(row - 90) <= 1 and abs(col - 200) <= 1 and abs(radius - 60) <= 1
    square = crop_fundus(image)
    assert square.shape[0] == square.shape[1] and abs(square.shape[0] - 120) <= 2
    mask = square.max(-1) > 10
    rows, cols = np.nonzero(mask)
    side = square.shape[0]
    assert abs(rows.mean() - side / 2) < 1.5 and abs(cols.mean() - side / 2) < 3  # optic disc shifts cols a bit
    assert mask[0].sum() <= 3 and mask[:, 0].sum() <= 3 and mask[side // 2].sum() > 0.95 * side


def test_fundus_crop_of_clipped_circle_pads_to_square():
    # Disc wider than the frame is tall (top/bottom clipped by the sensor), as in many EyePACS photos.
    image = _synthetic_fundus(120, 260, centre=(60, 130), radius=90)
    square = crop_fundus(image)
    assert square.shape[:2] == (180, 180)
    assert square[:20].max() == 0 and square[-20:].max() == 0  # padding above and below
    assert square[90, 5:175].min() > 0  # full width of the disc kept


def test_fundus_crop_blank_image_unchanged():
    blank = np.zeros((30, 40, 3), np.uint8)
    assert crop_fundus(blank).shape == (30, 40, 3)


def test_preprocess_fundus_crop_then_resize():
    image = _synthetic_fundus(200, 300, centre=(100, 150), radius=80)
    out = preprocess(image, PreprocessConfig(image_size=(64, 64), fundus_crop=True))
    assert out.shape == (64, 64, 3) and out.dtype == np.float32
    assert out[32, 1:63, 0].min() > 100 and out[0, 0].max() == 0


def test_resize_uses_area_when_shrinking():
    checker = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)
    out = preprocess(checker, PreprocessConfig(image_size=(16, 16), channels=1))
    np.testing.assert_allclose(out, 127.5, atol=0.6)  # area averaging; nearest/linear would alias to 0 or 255
    up = preprocess(checker[:8, :8], PreprocessConfig(image_size=(32, 32), channels=1))
    assert up.shape == (32, 32, 1) and 0 <= up.min() and up.max() <= 255


def test_channel_conversion():
    grey = np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) % 256
    grey = grey.astype(np.uint8)
    three = preprocess(grey, PreprocessConfig(image_size=(64, 64), channels=3))
    assert three.shape == (64, 64, 3)
    for channel in range(3):
        np.testing.assert_array_equal(three[:, :, channel], grey)
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 100, 200, 50
    one = preprocess(rgb, PreprocessConfig(image_size=(8, 8), channels=1))
    assert one.shape == (8, 8, 1)
    np.testing.assert_allclose(one, 0.299 * 100 + 0.587 * 200 + 0.114 * 50, atol=0.01)


def test_load_image_end_to_end(tmp_path):
    path = _write(tmp_path / "x.jpg", _rgb(100, 120))
    out = load_image(path, PreprocessConfig(image_size=(32, 48)))
    assert out.shape == (32, 48, 3) and out.dtype == np.float32
    assert 0 <= out.min() and out.max() <= 255


def test_config_validation():
    with pytest.raises(ValueError, match="channels"):
        PreprocessConfig(image_size=(32, 32), channels=2)
    with pytest.raises(ValueError, match="image_size"):
        PreprocessConfig(image_size=(0, 32))
