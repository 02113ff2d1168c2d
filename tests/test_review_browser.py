"""A reviewer in a real browser (Debian's chromium, headless, through Playwright): sign in,
review with the keyboard only, undo, add a reason, and every decision lands in the database."""

import shutil

import pytest
from review_fixtures import PASSWORD, review_setup

from idglow.review.app import create_app
from idglow.review.load import BackgroundServer

pytestmark = pytest.mark.slow  # drives chromium against a real server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_keyboard_only_review_with_undo_and_a_reason(tmp_path):
    from playwright.sync_api import sync_playwright

    assert CHROMIUM, "Debian's chromium is missing: `make test` installs it (make browser)"
    store = review_setup(tmp_path, items=5)
    app = create_app(store, tmp_path / "storage", "browser-secret-" + "x" * 20)
    with BackgroundServer(app) as server, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(f"{server.url}/review")
        assert page.url.endswith("/login")
        page.fill('input[name="username"]', "ann")
        page.fill('input[name="password"]', PASSWORD)
        with page.expect_navigation():
            page.keyboard.press("Enter")
        assert page.url.endswith("/review"), page.content()[:2000]

        def item_on_screen() -> int:
            return int(page.locator('input[name="item_id"]').get_attribute("value"))

        def press(key: str) -> None:
            before = item_on_screen()
            with page.expect_navigation():
                page.keyboard.press(key)
            assert page.url.endswith("/review") and item_on_screen() != before or key == "Backspace"

        assert page.locator("#left img").evaluate("i => i.complete && i.naturalWidth") == 64
        assert not page.locator(".scores").first.is_visible()  # hidden until asked for
        page.keyboard.press("s")
        assert page.locator(".scores").first.is_visible()
        page.keyboard.press("?")
        assert page.locator("#help").is_visible()
        page.keyboard.press("Escape")
        page.keyboard.press("f")
        assert page.locator("#flicker").is_visible()
        page.keyboard.press("f")

        first = item_on_screen()
        press("a")  # accept as proposed
        second = item_on_screen()
        press("ArrowRight")  # the right image is better
        press("Backspace")  # undo: the second item is back
        assert item_on_screen() == second
        page.keyboard.press("4")  # reason 4: artifact
        assert page.locator('input[data-key="4"]').is_checked()
        press("x")  # reject with that reason
        press(" ")  # skip the third
        browser.close()

    log = store.decision_log()
    assert [(row["item_id"], row["decision"]) for row in log][:1] == [(first, "accept")]
    assert [row["decision"] for row in log[1:]] == [log[1]["decision"], "undo", "reject", "skip"]
    assert log[2]["undoes"] == log[1]["id"] and log[1]["item_id"] == second == log[3]["item_id"]
    assert log[3]["reasons"] == '["artifact"]'
    assert all(row["seconds"] and row["seconds"] > 0 for row in log if row["decision"] != "undo")
    assert all(row["reviewer"] == "ann" and not row["automatic"] for row in log)
