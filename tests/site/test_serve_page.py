"""The demo page of `tfx-course serve` in headless Chromium: a translation, then a refused input.

Run by `make test-book` with the website's test, which drives the same Chromium.
"""

from pathlib import Path

import pytest
from test_site import CHROMIUM, CHROMIUM_FLAGS

from tfx_course import serve
from tfx_course.pretrained import load_course_model


@pytest.fixture(scope="module")
def server_url():
    model, tokenizer = load_course_model()
    batcher = serve.BatchingTranslator(serve.translator_for(model, tokenizer), 8, 0.01)
    with serve.running_server(serve.create_app(batcher, tokenizer, model.config.max_len)) as url:
        yield url


def test_the_demo_page_translates_and_shows_errors(server_url):
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"no Chromium at {CHROMIUM}: install Debian's (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(server_url + "/")
            expect(page.locator("h1")).to_have_text("German → English")
            page.fill("#text", "Ein Hund läuft.")
            page.click("#go")
            expect(page.locator("#translation")).not_to_be_empty(timeout=30_000)
            assert page.locator("#translation").inner_text()[:1].isupper()
            assert page.locator("#error").inner_text() == ""
            page.fill("#text", "   ")
            page.click("#go")
            expect(page.locator("#error")).to_contain_text("the text is empty", timeout=30_000)
            assert page.locator("#translation").inner_text() == ""
            assert errors == []
        finally:
            browser.close()
