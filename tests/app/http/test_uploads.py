"""The HTTP content-type policy for image bodies and parts: what is accepted, and a 415 that lists it."""

from __future__ import annotations

import pytest

from app.errors import UnsupportedMediaTypeError
from app.http.uploads import SUPPORTED_CONTENT_TYPES, check_content_type


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "",
        "image/png",
        "image/jpeg; charset=binary",
        "IMAGE/JPEG",
        "image/webp",
        "image/bmp",
        "image/x-ms-bmp",
        "image/gif",
        "image/tiff",
        "application/octet-stream",
    ],
)
def test_image_content_types_are_accepted(content_type: str | None) -> None:
    check_content_type(content_type)


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/json", "image/svg+xml", "image/avif", "video/mp4"]
)
def test_other_content_types_are_unsupported_and_the_message_lists_what_is_accepted(
    content_type: str,
) -> None:
    with pytest.raises(UnsupportedMediaTypeError) as raised:
        check_content_type(content_type)
    assert "image/jpeg" in raised.value.message and "image/png" in raised.value.message


def test_every_decoded_format_has_an_accepted_content_type() -> None:
    for content_type in ("image/jpeg", "image/png", "image/webp", "image/bmp", "image/gif", "image/tiff"):
        assert content_type in SUPPORTED_CONTENT_TYPES
