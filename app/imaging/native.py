"""libtiff's own messages: silenced, because they bypass logging.

libtiff reports every problem of a corrupt TIFF ("ZIPDecode: Decoding error at scanline 0, incorrect
data check.") by printing to the process's stderr from C, past the service's log format (one JSON
object per line) and without the request's ID. Pillow does not install a handler; it reads libtiff's
return codes and raises, and the decoder turns that into the request's 400 with its own message. So
the printed line carries nothing the service needs: libtiff's process-wide handlers are set to none.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from pathlib import Path

from PIL import Image

logger = logging.getLogger(__name__)


def _loaded_library(stem: str) -> str | None:
    """The path of a shared library this process has mapped whose name starts with `stem` (Linux)."""
    maps = Path("/proc/self/maps")
    if not maps.exists():
        return None
    for line in maps.read_text().splitlines():
        path = line.split(maxsplit=5)[-1]
        if Path(path).name.startswith(stem) and ".so" in path:
            return path
    return None


@functools.cache
def silence_libtiff() -> bool:
    """Set libtiff's error and warning handlers to none, once per process (a second, concurrent
    first call does the same again, harmlessly); False if this process's Pillow has no libtiff we
    can reach, and then its messages still go to stderr."""
    assert Image.core is not None  # Pillow's C core is loaded, and libtiff with it
    path = _loaded_library("libtiff")
    if path is None:
        logger.info("libtiff is not loaded as a shared library: its messages go to stderr")
        return False
    library = ctypes.CDLL(path)
    for name in ("TIFFSetErrorHandler", "TIFFSetWarningHandler"):
        setter = getattr(library, name)
        setter.restype = ctypes.c_void_p
        setter.argtypes = [ctypes.c_void_p]
        setter(None)
    return True
