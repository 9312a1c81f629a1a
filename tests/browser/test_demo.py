"""GET /demo in a real browser against a real service: what the page shows must be what the public
API answers for the same file, the feature maps must be drawn, errors must carry the service's own
message, and the page must not talk to anything but the service."""

from __future__ import annotations

import base64
import contextlib
import io
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect

from tests.browser.conftest import MAX_IMAGE_BYTES, PHOTOS, RecordedPage
from tests.browser.demo_checks import (
    MIME,
    RESULT_TIMEOUT_MS,
    assert_feature_maps_drawn,
    assert_matches_the_api,
    assert_stayed_on_the_service,
    card_for,
    classify,
)
from tests.support.processes import ServiceProcess, service_process

pytestmark = pytest.mark.slow


def test_demo_shows_what_classify_and_features_answer_for_uploaded_photos(
    fake_service: ServiceProcess, open_page: Callable[[ServiceProcess, str], RecordedPage]
) -> None:
    recorded = open_page(fake_service, "/demo")
    page = recorded.page
    expect(page.locator("#model-info")).to_contain_text("transxnet_fake")
    expect(page.locator("#model-info")).to_contain_text("CPUExecutionProvider")
    # The fake model's weights are a random initialisation: the warning is on screen.
    expect(page.locator("#weights-warning")).to_be_visible()
    expect(page.locator("#weights-warning")).to_contain_text("random-init seed 0")

    photos = [PHOTOS / "chelsea.png", PHOTOS / "rocket.jpg"]
    page.locator("#file-input").set_input_files([str(p) for p in photos])
    expect(page.locator('.result[data-state="done"]')).to_have_count(2, timeout=RESULT_TIMEOUT_MS)

    for photo in photos:
        card = card_for(recorded, photo.name)
        assert_matches_the_api(fake_service, card, photo)
        assert_feature_maps_drawn(card)
        expect(card.locator(".weights")).to_have_text("random-init seed 0")
        expect(card.locator(".provider")).to_have_text("CPUExecutionProvider")
        expect(card.locator(".latency")).to_have_text(re.compile(r"^classify \d+ ms · features \d+ ms$"))

    assert recorded.console_errors == []
    assert_stayed_on_the_service(recorded)
    # The page used the public API: one /classify and one npz /features per photo.
    paths = recorded.paths()
    assert paths.count("/classify?top_k=5") == 2
    assert paths.count("/features?outputs=pooled,stage1,stage2,stage3,stage4&format=npz") == 2


def _hand_over(recorded: RecordedPage, photo: Path, how: str) -> None:
    """Drop `photo` on the drop zone or paste it into the page, as the browser would deliver it."""
    recorded.page.evaluate(
        """([name, type, data, how]) => {
            const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type }));
            const init = { bubbles: true, cancelable: true };
            if (how === "drop") {
                const drop = new DragEvent("drop", { ...init, dataTransfer: transfer });
                document.querySelector("#drop-zone").dispatchEvent(drop);
            } else {
                document.dispatchEvent(new ClipboardEvent("paste", { ...init, clipboardData: transfer }));
            }
        }""",
        [photo.name, MIME[photo.suffix], base64.b64encode(photo.read_bytes()).decode(), how],
    )


def test_demo_takes_dropped_and_pasted_images(
    fake_service: ServiceProcess, open_page: Callable[[ServiceProcess, str], RecordedPage]
) -> None:
    recorded = open_page(fake_service, "/demo")
    dropped, pasted = PHOTOS / "coffee.png", PHOTOS / "camera.png"
    _hand_over(recorded, dropped, "drop")
    _hand_over(recorded, pasted, "paste")
    expect(recorded.page.locator('.result[data-state="done"]')).to_have_count(2, timeout=RESULT_TIMEOUT_MS)
    for photo in (dropped, pasted):
        assert_matches_the_api(fake_service, card_for(recorded, photo.name), photo)
    assert recorded.console_errors == []
    assert_stayed_on_the_service(recorded)


def _too_large_png() -> bytes:
    """A real PNG of noise (noise does not compress) just over the service's byte limit."""
    side = int(np.sqrt(MAX_IMAGE_BYTES / 3)) + 40
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    assert len(buffer.getvalue()) > MAX_IMAGE_BYTES
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "mime", "make"),
    [
        pytest.param("notes.txt", "text/plain", lambda: b"not an image, just words\n", id="text-415"),
        pytest.param("broken.jpg", "image/jpeg", lambda: b"\xff\xd8\xff\xe0" + bytes(200), id="corrupt-400"),
        pytest.param("huge.png", "image/png", _too_large_png, id="too-large-413"),
    ],
)
def test_demo_shows_the_service_error_message(
    fake_service: ServiceProcess,
    open_page: Callable[[ServiceProcess, str], RecordedPage],
    name: str,
    mime: str,
    make: Callable[[], bytes],
) -> None:
    content = make()
    answer = classify(fake_service, name, content, mime)
    assert answer.status_code >= 400
    error = answer.json()["error"]

    recorded = open_page(fake_service, "/demo")
    recorded.page.locator("#file-input").set_input_files(
        files=[{"name": name, "mimeType": mime, "buffer": content}]
    )
    card = card_for(recorded, name)
    expect(card).to_have_attribute("data-state", "error", timeout=RESULT_TIMEOUT_MS)
    box = card.locator(".error")
    expect(box).to_be_visible()
    expect(box).to_contain_text(f"{answer.status_code} ({error['code']}): {error['message']}")
    # /classify and /features fail alike: the message is shown once, and no empty result beside it.
    expect(box.locator("p")).to_have_count(1)
    expect(card.locator(".summary")).to_be_hidden()
    expect(card.locator(".stages-block")).to_be_hidden()
    # Chromium logs each failed response on the console; nothing else may be there.
    failed = f"Failed to load resource: the server responded with a status of {answer.status_code}"
    assert recorded.console_errors and all(text.startswith(failed) for text in recorded.console_errors)
    assert_stayed_on_the_service(recorded)


#: How long the slowed model holds each batch in the queue-full test: far longer than the page needs.
HOLD_S = 30.0


def _fill_the_queue(service: ServiceProcess, pool: ThreadPoolExecutor, photo: bytes) -> None:
    """One image in the (slowed) model and one queued behind it, the whole queue of one image.

    The second image must arrive after the first has left the queue for the model; if it arrives
    while the first is still queued it is refused, so it is sent again (the first holds the model
    for `HOLD_S`)."""

    def post() -> int:
        with contextlib.suppress(httpx.TransportError):  # the service is stopped with these in flight
            return classify(service, "hold.png", photo, "image/png").status_code
        return 0

    pool.submit(post)
    service.wait_until(lambda: service.metric("transxnet_requests_in_progress") >= 2, 30, "the first upload")
    for _ in range(3):
        queued = pool.submit(post)
        service.wait_until(
            lambda queued=queued: queued.done() or service.metric("transxnet_queue_depth") == 1,
            30,
            "one image queued",
        )
        if not queued.done():
            return
        assert queued.result() == 503, queued.result()
    raise AssertionError("the second image never queued behind the first")


def test_demo_shows_queue_full_with_the_retry_hint(
    fake_model: Path, open_page: Callable[[ServiceProcess, str], RecordedPage]
) -> None:
    photo = PHOTOS / "chelsea.png"
    content = photo.read_bytes()
    one_deep = {"max_batch_size": "1", "max_batch_delay_ms": "0", "max_queue_size": "1"}
    slowed = ["--slow-s", str(HOLD_S)]
    # The service stops first, so the held uploads end with it instead of running out their time.
    with (
        ThreadPoolExecutor(2) as pool,
        service_process(fake_model, helper_args=slowed, max_images_per_request="1", **one_deep) as service,
    ):
        _fill_the_queue(service, pool, content)
        answer = classify(service, photo.name, content, "image/png")
        assert answer.status_code == 503, answer.text
        error, retry_after = answer.json()["error"], answer.headers["retry-after"]
        assert error["code"] == "queue_full"

        recorded = open_page(service, "/demo")
        recorded.page.locator("#file-input").set_input_files(str(photo))
        card = card_for(recorded, photo.name)
        expect(card).to_have_attribute("data-state", "error", timeout=RESULT_TIMEOUT_MS)
        expect(card.locator(".error")).to_have_text(
            f"The service answered 503 (queue_full): {error['message']}. Retry in {retry_after} s."
        )
        expect(card.locator(".summary")).to_be_hidden()
        # Both of the page's requests were refused at once, while the model was still busy.
        assert service.metric("transxnet_queue_depth") == 1
        assert service.labelled_metric("transxnet_requests_total", route="/classify", status="503") >= 2
        assert service.labelled_metric("transxnet_requests_total", route="/features", status="503") == 1
        assert_stayed_on_the_service(recorded)


def test_npz_reader_reads_what_numpy_writes(
    fake_service: ServiceProcess, open_page: Callable[[ServiceProcess, str], RecordedPage]
) -> None:
    """The page's .npz reader against numpy itself: stored (savez, what the service sends) and
    deflated (savez_compressed) archives, several dtypes and shapes, a 0-d array."""
    rng = np.random.default_rng(1)
    arrays = {
        "maps": rng.normal(size=(2, 3, 5, 7)).astype(np.float32),
        "wide": rng.normal(size=(4,)).astype(np.float64),
        "counts": rng.integers(-1000, 1000, size=(3, 2)).astype(np.int32),
        "bytes": rng.integers(0, 255, size=(9,)).astype(np.uint8),
        "scalar": np.array(3.5, dtype=np.float32),
    }
    recorded = open_page(fake_service, "/demo")
    for save in (np.savez, np.savez_compressed):
        buffer = io.BytesIO()
        save(buffer, **arrays)
        parsed = recorded.page.evaluate(
            """async (data) => {
                const { parseNpz } = await import("./demo/static/npz.js");
                const arrays = await parseNpz(Uint8Array.from(atob(data), c => c.charCodeAt(0)));
                return Object.fromEntries(Object.entries(arrays).map(
                    ([name, a]) => [name, { shape: a.shape, dtype: a.dtype, data: Array.from(a.data) }]));
            }""",
            base64.b64encode(buffer.getvalue()).decode(),
        )
        assert set(parsed) == set(arrays), save.__name__
        for name, array in arrays.items():
            assert parsed[name]["shape"] == list(array.shape), (save.__name__, name)
            assert parsed[name]["dtype"] == array.dtype.str, (save.__name__, name)
            # Exact: float32 values come back as the same binary numbers.
            np.testing.assert_array_equal(np.asarray(parsed[name]["data"], dtype=array.dtype), array.ravel())
    assert recorded.page_errors == []
