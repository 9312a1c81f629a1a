"""/demo on a real TransXNet-T export: real stage shapes (48x56x56 ... 448x7x7), ImageNet labels, and
the screenshot in the README, taken here.

The model is the session's export with the reference checkpoint (built once for the export and
service tests, so this costs no extra export). With TRANSXNET_UPDATE_SCREENSHOTS=1 it is instead
a seeded random initialisation of T, which is what an offline `scripts/serve.sh` serves: the page
then shows its warning, which the README's picture should show rather than confident-looking
classes from seeded test weights; the screenshot is then copied to docs/images/demo.png.

    TRANSXNET_UPDATE_SCREENSHOTS=1 .venv/bin/python -m pytest tests/browser/test_transxnet_t.py
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from playwright.sync_api import expect

from tests.browser.conftest import PHOTOS, RecordedPage
from tests.browser.demo_checks import (
    RESULT_TIMEOUT_MS,
    assert_feature_maps_drawn,
    assert_matches_the_api,
    assert_stayed_on_the_service,
    card_for,
)
from tests.support.processes import ROOT, ServiceProcess, service_process

pytestmark = pytest.mark.slow

UPDATE_SCREENSHOTS = os.environ.get("TRANSXNET_UPDATE_SCREENSHOTS") == "1"
SCREENSHOT = ROOT / "docs" / "images" / "demo.png"
PHOTO = PHOTOS / "chelsea.png"


@pytest.fixture(scope="module")
def transxnet_t(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """The service on TransXNet-T (see the module's docstring for which weights)."""
    if UPDATE_SCREENSHOTS:
        from export.pipeline import export_model

        output = tmp_path_factory.mktemp("random-t") / "transxnet_t.onnx"
        model = export_model("t", output=output, verify=False).path
    else:
        model = request.getfixturevalue("exported_t_path")
    with service_process(model) as service:
        yield service


def test_demo_on_transxnet_t_and_the_readme_screenshot(
    transxnet_t: ServiceProcess, open_page: Callable[[ServiceProcess, str], RecordedPage], tmp_path: Path
) -> None:
    info = httpx.get(transxnet_t.url("/v1/models"), timeout=10).json()
    recorded = open_page(transxnet_t, "/demo")
    page = recorded.page
    expect(page.locator("#model-info")).to_contain_text(f"weights {info['weights']}")
    page.locator("#file-input").set_input_files(str(PHOTO))
    card = card_for(recorded, PHOTO.name)
    expect(card).to_have_attribute("data-state", "done", timeout=RESULT_TIMEOUT_MS)

    assert_matches_the_api(transxnet_t, card, PHOTO)
    assert_feature_maps_drawn(card)
    for number, stride in enumerate((4, 8, 16, 32), start=1):
        expect(card.locator(f'.stage[data-stage="stage{number}"] .stage-title')).to_contain_text(
            f"(stride {stride})"
        )
    warning = page.locator("#weights-warning")
    if info["pretrained"]:
        expect(warning).to_be_hidden()
    else:
        expect(warning).to_be_visible()
        expect(warning).to_contain_text(info["weights"])
    assert recorded.console_errors == []
    assert_stayed_on_the_service(recorded)

    shot = tmp_path / "demo.png"
    page.screenshot(path=str(shot), full_page=True)
    with Image.open(shot) as image:
        assert image.width == page.viewport_size["width"] and image.height > 800
    if UPDATE_SCREENSHOTS:
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)
