"""Image bytes in, model input out: decoding and timm's evaluation transform, pixel-exact.

The service must feed the exported graph exactly what timm's eval pipeline would have fed the PyTorch
model, or every accuracy number measured in PyTorch silently stops applying. timm's pipeline is
`Image.open(f).convert('RGB')`, torchvision `Resize(floor(size / crop_pct), BICUBIC)` (shorter side),
`CenterCrop(size)`, `ToTensor()`, `Normalize(mean, std)`. The three steps live in their own modules
(`decode`, `geometry`, `normalize`); this class puts them together from the model's metadata, so a
model exported at 384 with crop_pct 0.95 is preprocessed as it was trained, with no setting to forget.
"""

from __future__ import annotations

import logging

import numpy as np
from PIL import Image, ImageFile

from app.imaging.decode import ImageDecoder, MemoryBudget
from app.imaging.geometry import Offload, ResizeCrop
from app.imaging.native import silence_libtiff
from app.imaging.normalize import Normalizer
from runtime.metadata import ModelMetadata

logger = logging.getLogger(__name__)


class ImagePreprocessor:
    """Decode untrusted image bytes and apply the model's evaluation transform, pixel-exact with timm.

    Holds no mutable state after `__init__`: call it from any number of threads (Pillow releases the
    GIL while decoding and resizing). `offload` lets a large resize borrow an idle thread
    (`DecodePool.submit_if_idle`), bit-identically; `memory` is charged each decode's peak memory
    while it runs (the service's request budget).
    """

    def __init__(
        self,
        metadata: ModelMetadata,
        *,
        max_image_bytes: int,
        max_image_pixels: int,
        jpeg_reducing_gap: float = 0.0,
        offload: Offload | None = None,
        memory: MemoryBudget | None = None,
    ) -> None:
        if metadata.interpolation != "bicubic":
            raise ValueError(
                f"model metadata asks for {metadata.interpolation!r} interpolation; this preprocessor "
                "implements timm's bicubic eval transform only: re-export with interpolation='bicubic'"
            )
        self.metadata = metadata
        self.image_size = metadata.image_size
        self.resize_size = metadata.resize_size
        self.transform = ResizeCrop(
            resize_size=self.resize_size,
            image_size=self.image_size,
            max_image_pixels=max_image_pixels,
            offload=offload,
        )
        self.decode = ImageDecoder(
            max_image_bytes=max_image_bytes,
            max_image_pixels=max_image_pixels,
            resize_size=self.resize_size,
            jpeg_reducing_gap=jpeg_reducing_gap,
            # The resize's own size limit, checked on the header: an extreme aspect ratio is refused
            # before its pixels are decoded, not after (a 1x4.9M TIFF cost 38 s and 1.3 GB first).
            check_geometry=self.transform.check,
            memory=memory,
        )
        self.normalize = Normalizer(metadata.mean, metadata.std)
        _warn_about_process_wide_pillow_settings(max_image_pixels)
        silence_libtiff()  # its C-level prints would bypass the log format; the decoder reports instead

    @property
    def jpeg_reducing_gap(self) -> float:
        return self.decode.jpeg_reducing_gap

    @property
    def pixel_exact(self) -> bool:
        """Whether every image gets exactly timm's eval transform (no reduced-scale JPEG decoding)."""
        return not self.jpeg_reducing_gap

    @property
    def offload(self) -> Offload | None:
        return self.transform.offload

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """Shape of one preprocessed image: (3, image_size, image_size)."""
        return 3, self.image_size, self.image_size

    def __call__(self, data: bytes) -> np.ndarray:
        """Image bytes to the model's input: float32 (3, S, S), C-contiguous, normalised."""
        return self.normalize(self.transform(self.decode(data)))


def _warn_about_process_wide_pillow_settings(max_image_pixels: int) -> None:
    """Pillow globals that someone in this process changed and that weaken or shadow our checks."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # We do not undo a global, but the service would then classify half-received uploads.
        logger.warning(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set in this process: truncated uploads will be "
            "served padded instead of refused with 400"
        )
    pillow_limit = Image.MAX_IMAGE_PIXELS
    if pillow_limit is not None and max_image_pixels > pillow_limit:
        # Not an error: our limit still binds, Pillow merely warns between its limit and twice it
        # and refuses (413 here too) above twice it.
        logger.warning(
            "max_image_pixels=%d exceeds Pillow's Image.MAX_IMAGE_PIXELS=%d: images between the two "
            "are served but Pillow emits DecompressionBombWarning for them, and images above %d "
            "are refused by Pillow's own check",
            max_image_pixels,
            pillow_limit,
            2 * pillow_limit,
        )
