import io

import numpy as np
import pytest
from conftest import write_image
from PIL import Image

from imgclf.data.preprocessing import ImageDecodeError, load_image


@pytest.mark.parametrize(
    "fmt, mode", [("PNG", "L"), ("JPEG", "RGB"), ("BMP", "RGB"), ("GIF", "P"), ("WEBP", "RGB")]
)
def test_load_image_gives_scaled_array_of_requested_shape(tmp_path, fmt, mode):
    path = tmp_path / f"x.{fmt.lower()}"
    Image.new(mode, (40, 30), color=200 if mode != "RGB" else (200, 100, 50)).save(path, fmt)
    gray = load_image(path, 16, "grayscale")
    rgb = load_image(path.read_bytes(), (8, 12), "rgb")
    assert gray.shape == (16, 16, 1) and rgb.shape == (8, 12, 3)
    assert gray.dtype == np.float32 and 0.0 <= gray.min() <= gray.max() <= 1.0


def test_path_and_bytes_give_identical_input(tmp_path):
    path = write_image(tmp_path / "a.png", size=(50, 37), mode="RGB")
    assert np.array_equal(load_image(path, 32, "rgb"), load_image(path.read_bytes(), 32, "rgb"))


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"", "empty file"),
        (b"hello, I am text", "not a readable image"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n", "not a readable image"),
    ],
)
def test_load_image_rejects_non_images(payload, message):
    with pytest.raises(ImageDecodeError, match=message):
        load_image(payload, 16)


def test_truncated_jpeg_is_rejected(tmp_path):
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, "JPEG")
    payload = buffer.getvalue()
    with pytest.raises(ImageDecodeError, match="corrupt or truncated"):
        load_image(payload[: len(payload) // 2], 16)


def test_oversized_image_is_rejected_before_decoding():
    buffer = io.BytesIO()
    Image.new("L", (3000, 3000)).save(buffer, "PNG")
    with pytest.raises(ImageDecodeError, match="more than the limit"):
        load_image(buffer.getvalue(), 16, max_pixels=1_000_000)


def test_unknown_color_mode_is_a_value_error():
    with pytest.raises(ValueError, match="color_mode"):
        load_image(b"x", 16, "cmyk")
