"""uint8 pixels to the model's float32 input: torchvision's ToTensor + Normalize, bit for bit."""

from __future__ import annotations

import numpy as np


def normalisation_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(3, 256) float32: every uint8 value of every channel after ToTensor + Normalize.

    Computed with torch's float32 operation order, `(v / 255 - mean) / std`, each step rounded to
    float32, so the table lookup is bit-identical to torch and costs one gather per output value.
    """
    values = np.arange(256, dtype=np.float32) / np.float32(255.0)
    mean32 = np.asarray(mean, dtype=np.float32)[:, None]
    std32 = np.asarray(std, dtype=np.float32)[:, None]
    table = (values[None, :] - mean32) / std32
    return np.ascontiguousarray(table, dtype=np.float32)


class Normalizer:
    """uint8 (H, W, 3) to float32 (3, H, W), C-contiguous, through one table gather per channel."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.table = normalisation_table(mean, std)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        height, width, channels = pixels.shape
        if channels != 3 or pixels.dtype != np.uint8:
            raise ValueError(f"normalize expects uint8 HxWx3, got {pixels.dtype} {pixels.shape}")
        out = np.empty((3, height, width), dtype=np.float32)
        for channel in range(3):
            np.take(self.table[channel], pixels[:, :, channel], out=out[channel])
        return out
