"""Where the export's weights come from: nothing (seeded random init), a local file, a URL, or the
official release.

Downloads go through the stdlib (`urllib`) so the export needs no extra dependency, land in a cache
directory (`$TRANSXNET_CACHE_DIR`, else `~/.cache/transxnet`) and are reused without a network call.
A download is written to a temporary file in the cache directory, its byte count is checked against
Content-Length, it is fsynced and only then renamed into place (`os.replace`, atomic on one file
system): an interrupted or truncated transfer never poses as a checkpoint. The official releases'
URLs and file names come from `model.weights`, the one table of release facts.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from tqdm import tqdm

from model.transxnet import resolve_variant
from model.weights import pretrained_cfg

logger = logging.getLogger(__name__)

#: The `spec` that selects the official release for (variant, image_size).
PRETRAINED = "pretrained"
CACHE_ENV = "TRANSXNET_CACHE_DIR"

_CHUNK = 1 << 20
_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class ResolvedCheckpoint:
    """A checkpoint file on disk and the name the export's provenance records for it.

    The two differ for downloads: the cached file carries a hash of its URL (so two sources sharing a
    file name never collide), but that prefix is our cache layout, not the checkpoint's identity, so
    provenance names the file as published. A local file is named by itself.
    """

    path: Path
    name: str


class CheckpointDownloadError(RuntimeError):
    """A checkpoint could not be fetched; the message names the URL and the reason."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"could not download checkpoint {url}: {reason}")
        self.url = url
        self.reason = reason


def pretrained_url(variant: str, image_size: int) -> str:
    """The official release URL for (variant, image_size), or `ValueError` listing what exists."""
    return pretrained_cfg(resolve_variant(variant), image_size).url


def default_cache_dir() -> Path:
    """`$TRANSXNET_CACHE_DIR` if set, else `~/.cache/transxnet`."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "transxnet"


def url_file_name(url: str) -> str:
    """The file name `url` publishes, for people to read: the last segment of its percent-decoded
    path, never the query or fragment (they may carry signed tokens); "checkpoint" if there is none."""
    return PurePosixPath(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name or "checkpoint"


def cached_path(url: str, cache_dir: Path) -> Path:
    """Cache location of `url`: the URL's file name behind a short hash of the whole URL, so two
    sources that happen to share a file name never answer for each other. The name stays as it is
    in the URL, not decoded like `url_file_name`'s: decoding could put a NUL byte or a backslash
    into a file name."""
    name = Path(urllib.parse.urlparse(url).path).name or "checkpoint"
    digest = hashlib.sha256(url.encode()).hexdigest()[:10]
    return cache_dir / "checkpoints" / f"{digest}-{name}"


def resolve_checkpoint(
    spec: str | None, *, variant: str, image_size: int, cache_dir: Path | None = None
) -> ResolvedCheckpoint | None:
    """Turn the export's `--checkpoint` into a local file and the name its provenance records.

    None -> None (the caller does a seeded random init); "pretrained" -> the official release for
    (variant, image_size), downloaded; "http(s)://..." -> downloaded (or reused from the cache);
    anything else is a local path that must exist. Downloads are named by their URL's file name
    (e.g. "transx-t.pth.tar"), not by the cache file's.
    """
    if spec is None:
        return None
    if spec == PRETRAINED:
        release = pretrained_cfg(resolve_variant(variant), image_size)
        return ResolvedCheckpoint(download_checkpoint(release.url, cache_dir=cache_dir), release.file_name)
    if urllib.parse.urlparse(spec).scheme in ("http", "https"):
        return ResolvedCheckpoint(download_checkpoint(spec, cache_dir=cache_dir), url_file_name(spec))
    path = Path(spec).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint not found: {path} (give an existing file, an http(s) URL, or '{PRETRAINED}')"
        )
    return ResolvedCheckpoint(path, path.name)


def download_checkpoint(url: str, *, cache_dir: Path | None = None) -> Path:
    """Download `url` into the cache once; later calls return the cached file without a request."""
    target = cached_path(url, cache_dir or default_cache_dir())
    if target.is_file():
        logger.info("using cached checkpoint %s for %s", target, url)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("downloading %s to %s", url, target)
    _download_atomically(url, target)
    logger.info("downloaded %s (%d bytes)", target, target.stat().st_size)
    return target


def _download_atomically(url: str, target: Path) -> None:
    handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    temp = Path(temp_name)
    try:
        with os.fdopen(handle, "wb") as out:
            expected, received = _stream(url, out, label=target.name)
            if expected is not None and received != expected:
                raise CheckpointDownloadError(
                    url,
                    f"transfer ended after {received} of {expected} bytes (connection closed early); retry",
                )
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def _stream(url: str, out: BinaryIO, *, label: str) -> tuple[int | None, int]:
    """Copy the response body into `out`; returns (Content-Length or None, bytes received)."""
    request = urllib.request.Request(url, headers={"User-Agent": "transxnet-serve"})
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
            header = response.headers.get("Content-Length")
            expected = int(header) if header and header.isdigit() else None
            if expected is None:
                logger.warning(
                    "%s sent no Content-Length: the download's completeness cannot be checked", url
                )
            received = 0
            with tqdm(
                total=expected, unit="B", unit_scale=True, unit_divisor=1024, desc=label, file=sys.stderr
            ) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as exc:
        raise CheckpointDownloadError(url, f"HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise CheckpointDownloadError(url, f"{exc.reason} (check the URL and the network)") from exc
    except (http.client.HTTPException, OSError) as exc:
        raise CheckpointDownloadError(url, f"{type(exc).__name__}: {exc}") from exc
    return expected, received


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself; not every platform lets a directory be opened, which is harmless."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
