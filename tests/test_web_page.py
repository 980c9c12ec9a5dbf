"""The web page in a real headless browser (Debian's chromium driven by Playwright), against the real
endpoint and the local TF-Serving-compatible server. Saves a screenshot under test-artifacts/."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import uvicorn
from playwright.sync_api import expect, sync_playwright

from serving.client import ServingClient
from serving.web_app import create_app, upload_limits
from tests.helpers import CONFIG, DATA_ROOTS, free_port, real_files

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
# Headless in a closed network: no background connections to Google's services.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def web_url(model_server):
    client = ServingClient(model_server.target, CONFIG.model_name)
    app = create_app(client, CONFIG.critical_class, upload_limits(CONFIG))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{server.config.port}/"
    server.should_exit = True
    thread.join()


def test_upload_shows_class_probabilities_and_myeloblast_alert(web_url, model_server, model_exports, tmp_path):
    assert CHROMIUM.exists(), "Debian's chromium is needed: apt-get install chromium (make test installs it)"
    (model_server.base / "2").symlink_to(model_exports["myeloblast"], target_is_directory=True)
    model_server.manager.poll()
    cell = real_files("myeloblast", 1)[0]
    with ServingClient(model_server.target, CONFIG.model_name) as client:
        served = client.predict([cell.read_bytes()])[0].probabilities["myeloblast"]
    not_image = tmp_path / "notes.png"
    not_image.write_text("not an image")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1000, "height": 800})
        page.goto(web_url)
        expect(page.locator("h1")).to_have_text("Blood-cell screening")
        page.fill("#site", "paris")  # a site never adapted: the base model answers, and the page says which
        page.dispatch_event("#site", "change")
        page.set_input_files("#files", [str(cell), str(not_image)])
        card = page.locator(f'.result[data-filename="{cell.name}"]')
        expect(card.locator(".predicted")).to_have_text("myeloblast")
        expect(card.locator(".alert-banner")).to_contain_text("MYELOBLAST ALERT")
        expect(card.locator(".bar")).to_have_count(len(CONFIG.classes))
        expect(card.locator(".bar").first.locator(".label")).to_have_text("myeloblast")
        expect(card.locator(".bar").first.locator(".value")).to_have_text(f"{100 * served:.1f}%")
        failed = page.locator('.result[data-filename="notes.png"]')
        expect(failed.locator(".error-text")).to_contain_text("not an image")
        expect(page.locator("#status")).to_have_text(
            "2 image(s): 1 myeloblast alert(s), 1 not classified. Answered by bloodcell version 2."
        )
        assert page.evaluate("localStorage.getItem('site')") == "paris"  # kept for the next visit
        card.locator(".explain-button").click()  # Grad-CAM overlay from the model's explain signature
        overlay = card.locator("img.gradcam")
        expect(overlay).to_have_attribute("alt", f"Grad-CAM heat map of {cell.name}")
        page.wait_for_function("document.querySelector('img.gradcam').naturalWidth > 0")
        assert overlay.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [400, 400]  # the image's size
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "web_page.png"), full_page=True)
        browser.close()
    assert (ARTIFACTS / "web_page.png").stat().st_size > 10_000


def test_a_cell_out_of_scope_is_shown_as_such_without_an_alert(web_url, model_server, model_exports):
    """A real lymphocyte, served by a model that calls every cell out of scope: the card says so, shows no
    alert and keeps the five probabilities (of the classes, given it were one); the status line counts it."""
    (model_server.base / "2").symlink_to(model_exports["out_of_scope"], target_is_directory=True)
    model_server.manager.poll()
    others = next(r for r in DATA_ROOTS if r.out_of_scope)
    cell = real_files("lymphocyte", 1, Path(others.path))[0]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1000, "height": 600})
        page.goto(web_url)
        page.set_input_files("#files", [str(cell)])
        card = page.locator(f'.result[data-filename="{cell.name}"]')
        expect(card.locator(".predicted")).to_have_text("Out of scope")
        expect(card.locator(".out-of-scope-text")).to_contain_text("no myeloblast alert")
        expect(card).to_have_class("card result out-of-scope")
        expect(card.locator(".alert-banner")).to_have_count(0)
        expect(card.locator(".bar")).to_have_count(len(CONFIG.classes))
        expect(page.locator("#status")).to_have_text(
            "1 image(s): 0 myeloblast alert(s), 1 out of scope. Answered by bloodcell version 2."
        )
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "web_page_out_of_scope.png"), full_page=True)
        browser.close()
