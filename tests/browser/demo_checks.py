"""What the browser tests check on a /demo result card, against the public API as the reference."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from playwright.sync_api import Locator, expect

from tests.browser.conftest import RecordedPage
from tests.support.processes import ServiceProcess

STAGES = ("stage1", "stage2", "stage3", "stage4")
RESULT_TIMEOUT_MS = 60_000
MIME = {".png": "image/png", ".jpg": "image/jpeg"}


def classify(service: ServiceProcess, name: str, content: bytes, mime: str) -> httpx.Response:
    return httpx.post(
        service.url("/classify"), params={"top_k": 5}, files={"file": (name, content, mime)}, timeout=60
    )


def features(service: ServiceProcess, name: str, content: bytes, mime: str) -> dict[str, np.ndarray]:
    response = httpx.post(
        service.url("/features"),
        params={"outputs": "pooled,stage1,stage2,stage3,stage4", "format": "npz"},
        files={"file": (name, content, mime)},
        timeout=60,
    )
    response.raise_for_status()
    with np.load(io.BytesIO(response.content)) as arrays:
        return {name: arrays[name] for name in arrays.files}


def strongest_channels(stage: np.ndarray, count: int = 8) -> list[int]:
    """The reference for the page's channel pick: highest spatial mean first, ties by index."""
    means = stage[0].astype(np.float64).mean(axis=(1, 2))
    return sorted(range(len(means)), key=lambda c: (-means[c], c))[:count]


def card_for(recorded: RecordedPage, name: str) -> Locator:
    return recorded.page.locator(".result").filter(has=recorded.page.locator(".file-name", has_text=name))


def shown_predictions(card: Locator) -> list[tuple[int, str, float]]:
    """(index, label, probability in %) of each prediction row, top first."""
    rows = []
    for row in card.locator(".prediction").all():
        percent = row.locator(".probability").inner_text()
        rows.append((int(row.get_attribute("data-index") or -1), row.locator(".label").inner_text(), percent))
    return [(index, label, float(percent.rstrip("%").lstrip("<"))) for index, label, percent in rows]


def canvas_pixels(card: Locator) -> list[dict]:
    """Per canvas of a card: its class, size and how many distinct colours it holds."""
    return card.evaluate(
        """card => [...card.querySelectorAll("canvas")].map(canvas => {
            const { data } = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
            const colours = new Set();
            let opaque = 0;
            for (let i = 0; i < data.length; i += 4) {
                colours.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]);
                if (data[i + 3] > 0) opaque++;
            }
            return { cls: canvas.className, width: canvas.width, height: canvas.height,
                     colours: colours.size, opaque: opaque / (data.length / 4) };
        })"""
    )


def assert_matches_the_api(service: ServiceProcess, card: Locator, photo: Path) -> None:
    """The card's classes equal /classify's and its channel picks follow /features' maps."""
    content, mime = photo.read_bytes(), MIME[photo.suffix]
    expected = classify(service, photo.name, content, mime).json()["results"][0]["predictions"]
    shown = shown_predictions(card)
    assert [(index, label) for index, label, _ in shown] == [(p["index"], p["label"]) for p in expected]
    for (_, _, percent), prediction in zip(shown, expected, strict=True):
        assert percent == pytest.approx(prediction["probability"] * 100, abs=0.051)

    arrays = features(service, photo.name, content, mime)
    for stage in STAGES:
        figure = card.locator(f'.stage[data-stage="{stage}"]')
        assert figure.get_attribute("data-channels") == ",".join(map(str, strongest_channels(arrays[stage])))
        _, channels, height, width = arrays[stage].shape
        expect(figure.locator(".stage-title")).to_contain_text(f"{channels} × {height} × {width}")
    expect(card.locator(".embedding")).to_have_text(f"{arrays['pooled'].shape[1]} values (float32)")


def assert_feature_maps_drawn(card: Locator) -> None:
    canvases = canvas_pixels(card)
    assert sorted(c["cls"] for c in canvases) == ["channels"] * 4 + ["heatmap"] * 4 + ["photo"]
    for canvas in canvases:
        # Drawn edge to edge (opaque), and a picture rather than a flat fill.
        assert canvas["opaque"] > 0.9 and canvas["colours"] >= 16, canvas


def assert_stayed_on_the_service(recorded: RecordedPage) -> None:
    assert recorded.foreign_requests() == []
    assert recorded.page_errors == []
