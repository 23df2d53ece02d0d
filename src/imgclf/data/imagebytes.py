"""Where an encoded image ends: the bytes after it (junk appended to a valid file) are never kept.

``encoded_length`` walks the container of each format the pipeline decodes (PNG chunks to
``IEND``; JPEG segments and entropy-coded data to ``EOI``, the first image of an MPO; BMP's and
WebP's declared sizes; GIF blocks to the trailer) and returns the length of the image itself.
"""

from __future__ import annotations

import struct


class Malformed(ValueError):
    """The container does not parse (the image is not kept)."""


def encoded_length(payload: bytes, image_format: str | None) -> int:
    """Length of the image at the start of ``payload`` (the rest is not part of it).

    Raises:
        Malformed: the container does not parse, or the format is not one handled here.
    """
    walkers = {"PNG": _png, "JPEG": _jpeg, "MPO": _jpeg, "BMP": _bmp, "WEBP": _webp, "GIF": _gif}
    walker = walkers.get((image_format or "").upper())
    if walker is None:
        raise Malformed(f"format {image_format!r}: its end cannot be found")
    try:
        end = walker(payload)
    except Malformed:
        raise
    except (IndexError, ValueError, struct.error):
        raise Malformed(f"{image_format}: truncated container") from None
    if not 0 < end <= len(payload):
        raise Malformed(f"{image_format}: declared size {end} outside the {len(payload)} bytes")
    return end


def trimmed(payload: bytes, image_format: str | None) -> bytes:
    """The image without anything after its end (``Malformed`` when its end is not found)."""
    return payload[: encoded_length(payload, image_format)]


def _png(data: bytes) -> int:
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise Malformed("PNG: no signature")
    offset = 8
    while True:
        (length,) = struct.unpack_from(">I", data, offset)
        kind = data[offset + 4 : offset + 8]
        offset += 12 + length
        if kind == b"IEND":
            return offset
        if offset > len(data):
            raise Malformed("PNG: no IEND chunk")


_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # markers without a length (TEM, RST0-7)


def _jpeg(data: bytes) -> int:
    if data[:2] != b"\xff\xd8":
        raise Malformed("JPEG: no SOI marker")
    offset = 2
    while offset < len(data):
        if data[offset] != 0xFF:
            raise Malformed(f"JPEG: no marker at byte {offset}")
        marker = data[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if marker == 0xD9:  # EOI
            return offset + 2
        if marker in _STANDALONE:
            offset += 2
            continue
        (length,) = struct.unpack_from(">H", data, offset + 2)
        offset += 2 + length
        if marker == 0xDA:  # SOS: entropy-coded data up to the next marker that is not RST
            offset = _scan_end(data, offset)
    raise Malformed("JPEG: no EOI marker")


def _scan_end(data: bytes, offset: int) -> int:
    while True:
        offset = data.index(b"\xff", offset)
        following = data[offset + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7 or following == 0xFF:
            offset += 1 if following == 0xFF else 2
            continue
        return offset


def _bmp(data: bytes) -> int:
    if data[:2] != b"BM":
        raise Malformed("BMP: no signature")
    return struct.unpack_from("<I", data, 2)[0]


def _webp(data: bytes) -> int:
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise Malformed("WebP: no RIFF header")
    size = struct.unpack_from("<I", data, 4)[0] + 8
    return size + (size & 1)  # RIFF pads to an even length


def _gif(data: bytes) -> int:
    if data[:3] != b"GIF":
        raise Malformed("GIF: no signature")
    flags = data[10]
    offset = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
    while True:
        block = data[offset]
        if block == 0x3B:  # trailer
            return offset + 1
        if block == 0x21:  # extension: label, then sub-blocks
            offset = _sub_blocks(data, offset + 2)
        elif block == 0x2C:  # image: descriptor, local colour table, LZW size, sub-blocks
            local = data[offset + 9]
            offset += 10 + (3 * 2 ** ((local & 7) + 1) if local & 0x80 else 0)
            offset = _sub_blocks(data, offset + 1)
        else:
            raise Malformed(f"GIF: unknown block 0x{block:02x} at byte {offset}")


def _sub_blocks(data: bytes, offset: int) -> int:
    while (size := data[offset]) != 0:
        offset += 1 + size
    return offset + 1
