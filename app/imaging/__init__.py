"""Imaging: untrusted bytes to the model's input. Leaf modules that know nothing of HTTP or batching:
`sniff` (the format from the first bytes), `inspect` (header-only structure caps), `decode` (bytes to
RGB within limits), `geometry` (timm's resize and crop), `normalize`, `pool` (the decode threads),
composed by `ImagePreprocessor`."""

from app.imaging.decode import SUPPORTED_FORMATS, ImageDecoder
from app.imaging.geometry import SPLIT_RESIZE_MIN_PIXELS, ResizeCrop, center_crop_box, resized_size
from app.imaging.inspect import ImageHeader, inspect_image
from app.imaging.normalize import Normalizer, normalisation_table
from app.imaging.pool import DecodePool
from app.imaging.preprocessor import ImagePreprocessor
from app.imaging.sniff import ACCEPTED_FORMATS_TEXT, sniff_format

__all__ = [
    "ACCEPTED_FORMATS_TEXT",
    "SPLIT_RESIZE_MIN_PIXELS",
    "SUPPORTED_FORMATS",
    "DecodePool",
    "ImageDecoder",
    "ImageHeader",
    "ImagePreprocessor",
    "Normalizer",
    "ResizeCrop",
    "center_crop_box",
    "inspect_image",
    "normalisation_table",
    "resized_size",
    "sniff_format",
]
