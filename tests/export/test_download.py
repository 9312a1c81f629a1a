"""Checkpoint resolution and downloads, against a real HTTP server on the loopback interface."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from export.download import (
    CheckpointDownloadError,
    pretrained_url,
    resolve_checkpoint,
    url_file_name,
)
from model import weights

#: Not a multiple of the download chunk size, so the last partial chunk is exercised too.
PAYLOAD = bytes(range(256)) * 4099 + b"tail"


@dataclass
class LoopbackServer:
    base_url: str
    requests: list[str] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    log: list[str]

    def do_GET(self) -> None:
        self.log.append(self.path)
        name = self.path.rsplit("/", 1)[-1]
        if name.endswith("missing.pth.tar"):
            self.send_error(404, "Not Found")
            return
        body = PAYLOAD
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if name.endswith("truncated.pth.tar"):
            body = body[: len(body) // 3]  # then close: fewer bytes than promised
            self.close_connection = True
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output quiet
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[LoopbackServer]:
    requests: list[str] = []
    handler = type("Handler", (_Handler,), {"log": requests})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield LoopbackServer(f"http://127.0.0.1:{httpd.server_address[1]}", requests)
    finally:
        httpd.shutdown()
        httpd.server_close()


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file())


def test_none_means_random_init(tmp_path: Path) -> None:
    assert resolve_checkpoint(None, variant="t", image_size=224, cache_dir=tmp_path) is None


def test_existing_local_path_is_used_in_place_and_named_by_its_file(tmp_path: Path) -> None:
    local = tmp_path / "mine.pth.tar"
    local.write_bytes(b"weights")
    resolved = resolve_checkpoint(str(local), variant="t", image_size=224)
    assert resolved is not None
    assert (resolved.path, resolved.name) == (local, "mine.pth.tar")


def test_missing_local_path_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "absent.pth.tar"
    with pytest.raises(FileNotFoundError, match=r"absent\.pth\.tar"):
        resolve_checkpoint(str(missing), variant="t", image_size=224)


def test_url_is_downloaded_with_identical_bytes(server: LoopbackServer, tmp_path: Path) -> None:
    url = f"{server.base_url}/v1/ok.pth.tar"
    resolved = resolve_checkpoint(url, variant="t", image_size=224, cache_dir=tmp_path)
    assert resolved is not None and resolved.path.is_relative_to(tmp_path)
    assert resolved.path.name.endswith("ok.pth.tar")
    assert hashlib.sha256(resolved.path.read_bytes()).digest() == hashlib.sha256(PAYLOAD).digest()
    assert _files(tmp_path) == [resolved.path]  # no temporary file left behind


def test_download_is_named_by_the_url_file_name_not_the_cache_file(
    server: LoopbackServer, tmp_path: Path
) -> None:
    # what provenance records: the published name, decoded, without the (possibly secret) query
    url = f"{server.base_url}/v1/my%20weights.pth.tar?token=secret"
    resolved = resolve_checkpoint(url, variant="t", image_size=224, cache_dir=tmp_path)
    assert resolved is not None
    assert resolved.name == "my weights.pth.tar"
    assert resolved.path.name != resolved.name  # the cache file has its URL-hash prefix
    cached = resolve_checkpoint(url, variant="t", image_size=224, cache_dir=tmp_path)
    assert cached == resolved  # a cache hit is named the same way


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("https://github.com/LMMMEng/TransXNet/releases/download/v1.0/transx-t.pth.tar", "transx-t.pth.tar"),
        ("https://example.com/w/b%C3%A4r.pth?X-Amz-Signature=abc#frag", "b\u00e4r.pth"),
        ("https://example.com/", "checkpoint"),
    ],
)
def test_url_file_name(url: str, name: str) -> None:
    assert url_file_name(url) == name


def test_second_resolution_reuses_the_cache_without_a_request(server: LoopbackServer, tmp_path: Path) -> None:
    url = f"{server.base_url}/v1/again.pth.tar"
    first = resolve_checkpoint(url, variant="t", image_size=224, cache_dir=tmp_path)
    hits = server.requests.count("/v1/again.pth.tar")
    second = resolve_checkpoint(url, variant="t", image_size=224, cache_dir=tmp_path)
    assert first == second
    assert hits == 1
    assert server.requests.count("/v1/again.pth.tar") == 1


def test_same_file_name_from_different_urls_is_cached_separately(
    server: LoopbackServer, tmp_path: Path
) -> None:
    a = resolve_checkpoint(
        f"{server.base_url}/a/same.pth.tar", variant="t", image_size=224, cache_dir=tmp_path
    )
    b = resolve_checkpoint(
        f"{server.base_url}/b/same.pth.tar", variant="t", image_size=224, cache_dir=tmp_path
    )
    assert a != b


def test_truncated_transfer_fails_and_leaves_no_file(server: LoopbackServer, tmp_path: Path) -> None:
    url = f"{server.base_url}/v1/truncated.pth.tar"
    with pytest.raises(CheckpointDownloadError, match=f"of {len(PAYLOAD)} bytes") as info:
        resolve_checkpoint(url, variant="t", image_size=224, cache_dir=tmp_path)
    assert info.value.url == url
    assert _files(tmp_path) == []
    # and a retry does not mistake anything for a cached checkpoint: it asks the server again
    before = server.requests.count("/v1/truncated.pth.tar")
    with pytest.raises(CheckpointDownloadError):
        resolve_checkpoint(url, variant="t", image_size=224, cache_dir=tmp_path)
    assert server.requests.count("/v1/truncated.pth.tar") == before + 1


def test_http_404_names_the_url_and_status(server: LoopbackServer, tmp_path: Path) -> None:
    url = f"{server.base_url}/v1/missing.pth.tar"
    with pytest.raises(CheckpointDownloadError, match="404") as info:
        resolve_checkpoint(url, variant="t", image_size=224, cache_dir=tmp_path)
    assert url in str(info.value)
    assert _files(tmp_path) == []


def test_unreachable_host_is_a_download_error(tmp_path: Path) -> None:
    # port 9 (discard) on loopback: nothing listens there, so the connection is refused at once
    url = "http://127.0.0.1:9/x.pth.tar"
    with pytest.raises(CheckpointDownloadError, match=r"127\.0\.0\.1:9"):
        resolve_checkpoint(url, variant="t", image_size=224, cache_dir=tmp_path)


def test_cache_dir_defaults_to_the_environment_variable(
    server: LoopbackServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRANSXNET_CACHE_DIR", str(tmp_path / "env-cache"))
    resolved = resolve_checkpoint(f"{server.base_url}/env.pth.tar", variant="t", image_size=224)
    assert resolved is not None and resolved.path.is_relative_to(tmp_path / "env-cache")


@pytest.mark.parametrize(
    ("variant", "size", "file_name"),
    [
        ("t", 224, "transx-t.pth.tar"),
        ("transxnet_s", 224, "transx-s.pth.tar"),
        ("B", 224, "transx-b.pth.tar"),
        ("transxnet-b", 384, "transx-b-384.pth.tar"),
    ],
)
def test_pretrained_maps_to_the_official_release(variant: str, size: int, file_name: str) -> None:
    assert pretrained_url(variant, size) == (
        f"https://github.com/LMMMEng/TransXNet/releases/download/v1.0/{file_name}"
    )


@pytest.mark.parametrize(("variant", "size"), [("t", 384), ("s", 256), ("b", 512)])
def test_pretrained_without_a_release_lists_the_existing_ones(variant: str, size: int) -> None:
    with pytest.raises(ValueError, match=r"transxnet_b at 384") as info:
        resolve_checkpoint("pretrained", variant=variant, image_size=size)
    assert "transxnet_t at 224" in str(info.value)


def test_unknown_variant_is_rejected_with_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown TransXNet variant 'xl'.*transxnet_t.*, t, s, b"):
        resolve_checkpoint("pretrained", variant="xl", image_size=224)


def test_pretrained_downloads_through_the_weight_table(
    server: LoopbackServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(weights, "RELEASE_URL", f"{server.base_url}/v1.0/")
    resolved = resolve_checkpoint("pretrained", variant="b", image_size=384, cache_dir=tmp_path)
    assert resolved is not None and resolved.path.read_bytes() == PAYLOAD
    assert resolved.name == "transx-b-384.pth.tar"  # the official release's name, for provenance
    assert resolved.path.name != resolved.name
    assert "/v1.0/transx-b-384.pth.tar" in server.requests
