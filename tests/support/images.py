"""Test images, encoded in memory: distinct, deterministic and small, plus hand-built files whose
headers lie (a decompression bomb's shape)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encoded_image(seed: int, *, size: tuple[int, int] = (64, 48), fmt: str = "PNG") -> bytes:
    """Coarse random colour blocks (8x6) upscaled: different seeds give clearly different images."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    image = Image.fromarray(blocks).resize(size, Image.Resampling.NEAREST)
    return encode(image, fmt)


def solid_png(width: int, height: int) -> bytes:
    return encode(Image.new("RGB", (width, height), (120, 30, 200)), "PNG")


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def gradient_rgb(width: int = 40, height: int = 30) -> np.ndarray:
    """A deterministic image with distinct values along both axes and in every channel."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([(x * 6) % 256, (y * 8) % 256, (x * 3 + y * 5) % 256], axis=-1).astype(np.uint8)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_declaring(width: int, height: int) -> bytes:
    """A ~60-byte PNG whose header claims width x height RGB pixels: a decompression bomb's shape."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + png_chunk(b"IEND", b"")
    )
