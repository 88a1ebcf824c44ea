"""The operators' inbox in a real headless browser (Debian's Chromium, driven by Playwright's Python
API) against a live `replies-engine serve`: log in, see a handed-off conversation, reply, hand it
back, and see the AI answer the next message; a stranger's HTML shows as text; no console errors. A
screenshot is kept as an artefact (`test-artifacts/inbox.png`)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from .conftest import conversation
from .payloads import whatsapp_text
from .processes import cli, cli_json, post_signed, serving

pytestmark = pytest.mark.sqlite_only  # the page of the one-machine engine

TOKEN = "inbox-test-token"
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
# as the machine's notes say: without these, Chromium reaches for Google's hosts at every start
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
HOSTILE = '<img src=x onerror="document.title=\'pwned\'"><script>document.title="pwned"</script>'


@pytest.fixture
def env(engine_env):
    env = {
        **engine_env,
        "PUBLIC_BASE_URL": "",
        "BATCH_DELAY_SECONDS": "0",
        "BATCH_WINDOW_SECONDS": "0.2",
        "OPERATOR_TOKEN": TOKEN,
    }
    cli(env, "conversations", "import", "-", stdin=json.dumps([conversation(auto_queue_reply_message=True)]))
    return env


@pytest.fixture
def tokens(env):
    """Two operators' accounts: their personal tokens by name."""
    return {name: cli_json(env, "operators", "add", name)["token"] for name in ("sam", "kim")}


def log_in(page, url: str, name: str, token: str) -> None:
    page.goto(f"{url}/inbox")
    page.fill("input[name=name]", name)
    page.fill("input[name=token]", token)
    page.click("button[type=submit]")
    page.locator("#me", has_text=name).wait_for()


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Debian's chromium is needed: `make test` installs it"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield browser
        browser.close()


def wait_for(predicate, seconds=10):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        time.sleep(0.1)
    return predicate()


def test_an_operator_logs_in_answers_hands_back_and_the_ai_answers_the_next_message(env, tokens, browser):
    with serving(env) as (url, _):
        assert post_signed(url, whatsapp_text(f"I need help {HOSTILE}")).status_code == 200
        page = browser.new_page(viewport={"width": 1200, "height": 720})
        problems = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))

        log_in(page, url, "sam", tokens["sam"])
        row = page.locator("#conversations li", has_text="c1")
        row.wait_for()
        assert row.locator(".label").inner_text() == "waiting for human"
        row.click()
        page.locator(".thread li.user", has_text="I need help").wait_for()

        assert HOSTILE in page.locator(".thread li.user").last.inner_text()  # shown, not run
        assert page.locator(".thread img").count() == 0 and page.title() != "pwned"

        page.fill(".reply textarea", "Hi, Sam here. Let me sort this out.")
        page.click(".reply button[type=submit]")
        page.locator(".thread li.agent", has_text="Sam here").wait_for()
        assert row.locator(".label").inner_text() == "agent"
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "inbox.png"))

        page.click("button.handback")
        page.locator(".thread li.event", has_text="Handed back to the AI by sam").wait_for()
        assert post_signed(url, whatsapp_text("thanks! and one more thing")).status_code == 200
        page.locator(".thread li.assistant", has_text="Thanks, we received your 1 message.").wait_for(
            timeout=10_000
        )
        assert row.locator(".label").inner_text() == "AI"

    outbox = [entry["body"] for entry in cli_json(env, "outbox", "list")]
    assert outbox == ["Hi, Sam here. Let me sort this out.", "Thanks, we received your 1 message."]
    assert problems == []


def test_two_operators_see_each_others_claim_and_nobody_answers_twice(env, tokens, browser):
    with serving(env) as (url, _):
        assert post_signed(url, whatsapp_text("Is anyone there?")).status_code == 200
        sam, kim = browser.new_page(), browser.new_page(viewport={"width": 390, "height": 844})
        log_in(sam, url, "sam", tokens["sam"])
        log_in(kim, url, "kim", tokens["kim"])
        for page in (sam, kim):
            page.locator("#conversations li", has_text="c1").click()

        sam.click("button.assign")
        sam.locator(".head .assigned", has_text="claimed by you").wait_for()
        kim.locator(".head .assigned", has_text="claimed by sam").wait_for()
        kim.locator("#conversations li .assigned", has_text="claimed by sam").wait_for()
        kim.once("dialog", lambda dialog: dialog.dismiss())  # "Take it over and send?": no
        kim.fill(".reply textarea", "Kim here!")
        kim.click(".reply button[type=submit]")
        kim.locator(".reply .error", has_text="sam has claimed this conversation").wait_for()
        ARTIFACTS.mkdir(exist_ok=True)
        kim.screenshot(path=str(ARTIFACTS / "inbox-claimed-390.png"))

        sam.fill(".reply textarea", "Sam here, on it.")
        sam.click(".reply button[type=submit]")
        kim.locator(".thread li.agent", has_text="Sam here").wait_for()

    record = cli_json(env, "conversations", "show", "c1")
    assert [m["operator"] for m in record["messages"] if m["role"] == "agent"] == ["sam"]
    assert record["assigned_to"] == "sam"
    assert [entry["body"] for entry in cli_json(env, "outbox", "list")] == ["Sam here, on it."]


def test_the_inbox_asks_for_the_token_and_refuses_a_wrong_one(env, browser):
    with serving(env) as (url, _):
        page = browser.new_page()
        page.goto(f"{url}/inbox")
        page.fill("input[name=name]", "sam")
        page.fill("input[name=token]", "not-the-token")
        page.click("button[type=submit]")

        assert "that name and token do not match an operator" in page.content()
        assert page.locator("#conversations").count() == 0
        api = page.request.get(f"{url}/api/conversations")
        assert api.status == 401
