"""Bytes or path -> model input. One function, used by training, evaluation and serving alike.

Keeping a single decoder is what prevents train/serve skew: the API feeds uploaded bytes through
exactly the code that fed the training images through.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from imgclf.config import COLOR_MODES, MAX_IMAGE_PIXELS

#: Formats Pillow may open. Anything else (EPS, PDF, ...) is refused before any decoding.
ALLOWED_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "MPO")


class ImageDecodeError(ValueError):
    """The bytes or file are not an image this pipeline can read; the message says why."""


def _open(source: bytes | str | Path, name: str) -> Image.Image:
    stream = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    if isinstance(source, bytes | bytearray) and not source:
        raise ImageDecodeError(f"{name}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(stream, formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageDecodeError(f"{name}: image too large ({error})") from None
    except FileNotFoundError:
        raise ImageDecodeError(f"{name}: no such file") from None
    except Exception:
        raise ImageDecodeError(
            f"{name}: not a readable image (allowed formats: {', '.join(ALLOWED_FORMATS[:5])})"
        ) from None


def _to_mode(image: Image.Image, color_mode: str) -> Image.Image:
    if image.mode in ("I", "I;16", "I;16B", "F"):  # 16-bit or float grayscale: rescale to 8 bits
        array = np.asarray(image, dtype=np.float64)
        top = array.max() or 1.0
        image = Image.fromarray(np.uint8(np.clip(array / top, 0, 1) * 255))
    return image.convert("L" if color_mode == "grayscale" else "RGB")


@dataclass(frozen=True)
class DecodedImage:
    """A decoded model input and what the file's header said about the original."""

    array: np.ndarray
    width: int
    height: int
    format: str


def decode(
    source: bytes | str | Path,
    image_size: int | Sequence[int],
    color_mode: str = "grayscale",
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> DecodedImage:
    """Decode one image into the model's input, keeping the original's size and format.

    Steps: refuse formats outside ``ALLOWED_FORMATS`` and images over ``max_pixels``; let JPEG
    decode at a reduced scale when the target is much smaller (Pillow's draft mode); apply the
    EXIF orientation; convert to the colour mode; resize (bilinear); scale to [0, 1].

    Args:
        source: encoded bytes or a file path.
        image_size: side of the square output, or ``(height, width)``.
        color_mode: ``"grayscale"`` (1 channel) or ``"rgb"`` (3 channels).
        max_pixels: largest width * height accepted.

    Returns:
        The input (float32, ``(height, width, channels)``, values in [0, 1]) with the original
        width, height and format.

    Raises:
        ImageDecodeError: empty, truncated, corrupt, disallowed or oversized image.
        ValueError: an unknown ``color_mode``.
    """
    if color_mode not in COLOR_MODES:
        raise ValueError(f"color_mode={color_mode!r}: expected one of {', '.join(COLOR_MODES)}")
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    name = str(source) if isinstance(source, str | Path) else "image"
    original = _open(source, name)
    size, image_format = original.size, original.format or ""
    try:
        if original.width * original.height > max_pixels:
            raise ImageDecodeError(
                f"{name}: {original.width}x{original.height} pixels is more than the limit of "
                f"{max_pixels:,} pixels"
            )
        if original.format in ("JPEG", "MPO"):
            original.draft("L" if color_mode == "grayscale" else "RGB", (width, height))
        image = ImageOps.exif_transpose(original)
        image = _to_mode(image, color_mode).resize((width, height), Image.Resampling.BILINEAR)
        array = np.asarray(image, dtype=np.float32) / 255.0
    except ImageDecodeError:
        raise
    except Exception as error:  # truncated data surfaces only when pixels are read
        raise ImageDecodeError(f"{name}: corrupt or truncated image ({error})") from None
    finally:
        original.close()
    array = array[..., None] if array.ndim == 2 else array
    return DecodedImage(array, size[0], size[1], image_format)


def load_image(
    source: bytes | str | Path,
    image_size: int | Sequence[int],
    color_mode: str = "grayscale",
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> np.ndarray:
    """Decode one image into the model's input (see ``decode``); returns only the array.

    Raises:
        ImageDecodeError: empty, truncated, corrupt, disallowed or oversized image.
        ValueError: an unknown ``color_mode``.
    """
    return decode(source, image_size, color_mode, max_pixels).array
