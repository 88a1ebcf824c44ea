"""The operators' inbox in a real headless browser (Debian's Chromium, driven by Playwright's Python
API) against a live `replies-engine serve`: log in, see a handed-off conversation, reply, hand it
back, and see the AI answer the next message; who writes, on which channel, how long they wait; the
figures in words; search and the empty states; delivery statuses and what a failure means; WhatsApp's
window, and the template once it closed; a phone's two screens and a desktop's two panes; a stranger's
HTML shows as text; no console errors. Screenshots are kept (`docs/inbox.png`, `docs/inbox-phone.png`,
and copies in `test-artifacts/`)."""

from __future__ import annotations

import json
import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import expect

from .conftest import conversation
from .payloads import ACCOUNT, COMPANY, PERSON, sid, whatsapp_text
from .processes import cli, cli_json, post_signed, serving

pytestmark = pytest.mark.sqlite_only  # the page of the one-machine engine

TOKEN = "inbox-test-token"
CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
DOCS = ROOT / "docs"
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
DESKTOP = {"width": 1280, "height": 720}
PHONE = {"width": 390, "height": 844}
TEMPLATE_SID = "HX" + "a" * 32


@pytest.fixture
def env(engine_env):
    env = {
        **engine_env,
        "PUBLIC_BASE_URL": "",
        "BATCH_DELAY_SECONDS": "0",
        "BATCH_WINDOW_SECONDS": "0.2",
        "OPERATOR_TOKEN": TOKEN,
    }
    imported(env, conversation(auto_queue_reply_message=True))
    return env


@pytest.fixture
def tokens(env):
    """Two operators' accounts: their personal tokens by name."""
    return {name: cli_json(env, "operators", "add", name)["token"] for name in ("sam", "kim")}


def imported(env, *records) -> None:
    """Records as `replies-engine conversations import` takes them (each replaces its namesake)."""
    cli(env, "conversations", "import", "-", stdin=json.dumps(list(records)))


def ago(**delta: float) -> str:
    """An ISO-8601 UTC time that long ago, as the engine writes them."""
    return (datetime.now(UTC) - timedelta(**delta)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def said(content: str, when: str, channel: str = "whatsapp", person: str = PERSON, **fields) -> dict:
    """The person's message as the thread keeps it."""
    prefix = "whatsapp:" if channel == "whatsapp" else ""
    return {
        "message_id": sid(),
        "role": "user",
        "content": content,
        "timestamp": when,
        "channel_type": channel,
        "from": f"{prefix}{person}",
        "to": f"{prefix}{COMPANY}",
        **fields,
    }


def answered(content: str, when: str) -> dict:
    """The AI's answer as the thread keeps it."""
    return {"message_id": sid(), "role": "assistant", "content": content, "timestamp": when}


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


def new_page(browser, viewport=DESKTOP):
    """A page in British English (24-hour times, "3 Dec") whose console errors are collected in
    `page.problems`."""
    page = browser.new_page(viewport=viewport, locale="en-GB", timezone_id="Europe/Berlin")
    page.problems = []
    page.on("console", lambda m: page.problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.problems.append(str(e)))
    return page


def row(page, conversation_id: str):
    return page.locator(f"#conversations li[data-id={conversation_id}]")


def on_screen(page, selector: str) -> bool:
    """Is the element visible and wholly inside the viewport?"""
    box = page.locator(selector).bounding_box()
    size = page.viewport_size
    return (
        box is not None
        and box["width"] > 0
        and box["x"] >= 0
        and box["y"] >= 0
        and box["x"] + box["width"] <= size["width"]
        and box["y"] + box["height"] <= size["height"]
    )


def screenshot(page, name: str, docs: bool = False) -> None:
    """Kept in test-artifacts/, and in docs/ for the README when `docs`."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name))
    if docs:
        shutil.copyfile(ARTIFACTS / name, DOCS / name)


def status_callback(url: str, message_sid: str, status: str, **extra: str):
    """Twilio's delivery status callback for one of our replies."""
    params = {"MessageSid": message_sid, "MessageStatus": status, "AccountSid": ACCOUNT, **extra}
    return post_signed(url, params, channel="twilio/status")


def test_an_operator_logs_in_answers_hands_back_and_the_ai_answers_the_next_message(env, tokens, browser):
    # another person, whom the AI answered by SMS, so that the list is not alone
    ali = said("Can I move my appointment to Friday?", ago(hours=3), "sms", "+15551230000")
    imported(
        env,
        conversation(
            "c2",
            profile_name="Ali",
            gsi_recipient_tel="+15551230000",
            messages=[ali, answered("Sure, Friday at 10:00 works.", ago(hours=3))],
        ),
    )
    with serving(env) as (url, _):
        assert post_signed(url, whatsapp_text(f"I need help {HOSTILE}")).status_code == 200
        page = new_page(browser)

        log_in(page, url, "sam", tokens["sam"])
        zoe = row(page, "c1")
        zoe.wait_for()
        assert zoe.locator(".label").inner_text() == "waiting for human"
        assert (
            zoe.locator(".name").inner_text() == "Zoë" and zoe.locator(".channel").inner_text() == "WhatsApp"
        )
        zoe.click()
        page.locator(".thread li.user", has_text="I need help").wait_for()
        assert page.locator(".head h2").inner_text() == "Zoë"
        assert (
            page.locator(".head .reason")
            .inner_text()
            .startswith("Handed to a human by a rule · a routing rule")
        )

        assert HOSTILE in page.locator(".thread li.user").last.inner_text()  # shown, not run
        assert page.locator(".thread img").count() == 0 and page.title() != "pwned"

        page.fill(".reply textarea", "Hi, Sam here. Let me sort this out.")
        page.click(".reply button[type=submit]")
        page.locator(".thread li.agent", has_text="Sam here").wait_for()
        page.locator(".thread li.agent .delivery", has_text="queued").wait_for()
        page.locator(".head .assigned", has_text="claimed by you").wait_for()
        zoe.locator(".label", has_text="agent").wait_for()
        assert zoe.locator(".waiting").count() == 0  # answered: nobody waits
        assert page.locator("#conversation").is_visible() and page.locator("nav").is_visible()
        screenshot(page, "inbox.png", docs=True)

        page.click("button.handback")
        page.locator(".thread li.event", has_text="Handed back to the AI by sam").wait_for()
        assert post_signed(url, whatsapp_text("thanks! and one more thing")).status_code == 200
        page.locator(".thread li.assistant", has_text="Thanks, we received your 1 message.").wait_for(
            timeout=10_000
        )
        assert zoe.locator(".label").inner_text() == "AI"

    outbox = [entry["body"] for entry in cli_json(env, "outbox", "list")]
    assert outbox == ["Hi, Sam here. Let me sort this out.", "Thanks, we received your 1 message."]
    assert page.problems == []


def test_two_operators_see_each_others_claim_and_nobody_answers_twice(env, tokens, browser):
    with serving(env) as (url, _):
        assert post_signed(url, whatsapp_text("Is anyone there?")).status_code == 200
        sam, kim = new_page(browser), new_page(browser, PHONE)
        log_in(sam, url, "sam", tokens["sam"])
        log_in(kim, url, "kim", tokens["kim"])
        for page in (sam, kim):
            row(page, "c1").click()

        sam.click("button.assign")
        sam.locator(".head .assigned", has_text="claimed by you").wait_for()
        kim.locator(".head .assigned", has_text="claimed by sam").wait_for()
        kim.click("button.back")  # on a phone the list is the other screen
        row(kim, "c1").locator(".assigned", has_text="claimed by sam").wait_for()
        row(kim, "c1").click()
        kim.once("dialog", lambda dialog: dialog.dismiss())  # "Take it over and send?": no
        kim.fill(".reply textarea", "Kim here!")
        kim.click(".reply button[type=submit]")
        kim.locator(".reply .error", has_text="sam has claimed this conversation").wait_for()
        screenshot(kim, "inbox-claimed-390.png")

        sam.fill(".reply textarea", "Sam here, on it.")
        sam.click(".reply button[type=submit]")
        kim.locator(".thread li.agent", has_text="Sam here").wait_for()

    record = cli_json(env, "conversations", "show", "c1")
    assert [m["operator"] for m in record["messages"] if m["role"] == "agent"] == ["sam"]
    assert record["assigned_to"] == "sam"
    assert [entry["body"] for entry in cli_json(env, "outbox", "list")] == ["Sam here, on it."]
    refused = "Failed to load resource: the server responded with a status of 409 (Conflict)"
    assert sam.problems == [] and kim.problems == [refused]  # the browser's note of kim's refused reply


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


def test_the_list_says_who_waits_on_which_channel_for_how_long_and_searches_on_the_server(
    env, tokens, browser
):
    invoice = said("Where is my invoice?", ago(minutes=4, seconds=10))
    imported(
        env,
        conversation(messages=[invoice]),
        conversation(
            "c2",
            profile_name="Ali",
            gsi_recipient_tel="+15551230000",
            gsi_recipient_email="ali@example.com",
            messages=[
                said("Can I move my appointment?", ago(minutes=30), "sms", "+15551230000"),
                answered("Sure: which day?", ago(minutes=29)),
                said("Friday, please", ago(seconds=20), "sms", "+15551230000"),
            ],
        ),
        conversation(
            "c3", profile_name=None, gsi_recipient_tel=None, gsi_recipient_email="nobody@example.net"
        ),
        conversation(
            "c4",
            profile_name=HOSTILE,
            gsi_recipient_tel="+4915199999999",
            messages=[said(HOSTILE, ago(minutes=1), person="+4915199999999")],
        ),
    )
    with serving(env) as (url, _):
        page = new_page(browser)
        log_in(page, url, "sam", tokens["sam"])
        zoe, ali, nobody, hostile = (row(page, f"c{i}") for i in range(1, 5))
        nobody.wait_for()

        assert zoe.locator(".name").inner_text() == "Zoë"
        assert zoe.locator(".channel").inner_text() == "WhatsApp"
        assert zoe.locator(".waiting").inner_text() == "waiting 4 min"
        assert zoe.locator(".badge").inner_text() == "1"
        assert zoe.locator(".last").inner_text() == "Where is my invoice?"
        assert re.fullmatch(r"(yesterday )?\d\d:\d\d", zoe.locator(".when").inner_text())  # 24-hour time
        assert re.search(r"20\d\d", zoe.locator(".when").get_attribute("title"))  # the full time
        assert "c1" not in zoe.inner_text()
        assert ali.locator(".name").inner_text() == "Ali" and ali.locator(".channel").inner_text() == "SMS"
        assert nobody.locator(".name").inner_text() == "nobody@example.net"  # no name, no number: the email
        assert nobody.locator(".waiting").count() == 0 and nobody.locator(".badge").count() == 0
        assert (
            hostile.locator(".name").inner_text() == HOSTILE
            and hostile.locator(".last").inner_text() == HOSTILE
        )
        assert page.locator("img").count() == 0 and page.title() != "pwned"

        # the waiting time counts on between the API's reads
        first = ali.locator(".waiting").inner_text()
        assert re.fullmatch(r"waiting \d+ s", first)
        expect(ali.locator(".waiting")).not_to_have_text(first, timeout=3000)

        figures = page.locator("#stats")
        figures.locator(".figure", has_text="Received: 4").wait_for()
        assert "Waiting for a human: 0" in figures.inner_text()
        assert "Failed messages to look at: 0" in figures.inner_text()
        assert (
            "Answered by the AI: 0" in figures.inner_text()
        )  # only the AI's own (with "answers"): not imported ones
        assert re.search(r"First reply\s*median 1 min", figures.inner_text())

        screenshot(page, "inbox-list.png")
        page.click(".filters button[data-owner=human]")
        page.locator("#list-empty", has_text="Nobody is waiting for a human.").wait_for()
        assert page.locator("#conversations li").count() == 0
        page.click(".filters button[data-owner='']")
        nobody.wait_for()

        page.keyboard.press("/")  # the keyboard's way to the search
        expect(page.locator("#search")).to_be_focused()
        page.fill("#search", "ali")  # the name, and the email address
        expect(page.locator("#conversations li")).to_have_count(1)
        assert ali.is_visible()
        page.fill("#search", "invoice")  # words of the messages
        zoe.wait_for()
        expect(page.locator("#conversations li")).to_have_count(1)
        page.fill("#search", "zzz")
        page.locator("#list-empty", has_text="Nobody matches “zzz”.").wait_for()
        assert page.locator("#conversations li").count() == 0
        page.fill("#search", "")
        expect(page.locator("#conversations li")).to_have_count(4)

        expect(page.locator("#conversation .empty")).to_contain_text("Choose one from the list")
        hostile.locator("a").focus()  # the keyboard opens a conversation, and closes it
        page.keyboard.press("Enter")
        page.locator(".thread li.user").wait_for()
        assert page.locator(".head h2").inner_text() == HOSTILE
        assert page.locator("img").count() == 0 and page.title() != "pwned"
        page.keyboard.press("Escape")
        expect(page.locator("#conversation .empty")).to_contain_text("No conversation open.")

        # a reply that quotes an earlier message shows the quoted words above its own
        quoting = whatsapp_text("I mean this one", OriginalRepliedMessageSid=invoice["message_id"])
        assert post_signed(url, quoting).status_code == 200
        zoe.click()
        quoted = page.locator(".thread li.user", has_text="I mean this one").locator(".quote")
        expect(quoted).to_have_text("Where is my invoice?")
    assert page.problems == []


def test_on_a_phone_the_list_and_the_thread_are_two_screens_with_the_reply_box_on_screen(
    env, tokens, browser
):
    talk = [
        "Hi! I booked a table for Saturday, 4 people.",
        "Hi Zoë! I see your booking: Saturday at 19:30 for 4. How can I help?",
        "Can we make it 6? My parents are coming too.",
        "Saturday at 19:30 is full for 6, but 20:15 is free. Would that work?",
        "20:15 is late for my dad. Anything earlier?",
        "18:00 has a table for 6 on the terrace. Shall I move you there?",
        "The terrace in December? 😅 Is it heated?",
        "It is covered and heated, and there are blankets.",
        "My mum uses a wheelchair: is the terrace step-free?",
        "I am not sure about that: let me ask a colleague who knows the building.",
    ]
    thread = [
        said(text, ago(minutes=40 - i)) if i % 2 == 0 else answered(text, ago(minutes=40 - i))
        for i, text in enumerate(talk)
    ]
    handed = {
        "message_id": "event-1",
        "role": "event",
        "event": "handed_off",
        "by": "ai",
        "content": "Handed to a human by ai: step-free access",
        "timestamp": ago(minutes=30),
    }
    latest = said("Hello? Are you still there?", ago(minutes=3))
    imported(
        env,
        conversation(
            owner="human",
            handed_off_at=handed["timestamp"],
            handed_off_by="ai",
            handoff_reason="step-free access",
            last_inbound_at=latest["timestamp"],
            messages=[*thread, handed, latest],
        ),
    )
    with serving(env) as (url, _):
        page = new_page(browser, PHONE)
        log_in(page, url, "sam", tokens["sam"])
        row(page, "c1").wait_for()
        assert on_screen(page, "#conversations li[data-id=c1]")
        assert not page.locator("#conversation").is_visible()  # the list's screen

        row(page, "c1").click()
        page.locator(".thread li.user", has_text="Are you still there?").wait_for()
        assert not page.locator("nav").is_visible()  # the thread's screen
        assert page.locator(".thread").evaluate(
            "t => t.scrollHeight > t.clientHeight"
        )  # longer than the screen
        for part in (".head h2", "button.back", ".reply textarea", ".reply button[type=submit]"):
            assert on_screen(page, part), part
        assert (
            page.locator(".head .reason")
            .inner_text()
            .startswith("Handed to a human by the AI · step-free access · ")
        )
        assert re.fullmatch(r"window closes in 23 h 5\d min", page.locator(".head .window").inner_text())
        assert re.fullmatch(
            r"Handed to a human by the AI · step-free access · (yesterday )?\d\d:\d\d",
            page.locator(".thread li.event").inner_text(),
        )

        page.fill(
            ".reply textarea",
            "Hi Zoë, Sam here: yes, the terrace is step-free from the street. I moved you to 18:00 for 6.",
        )
        page.press(".reply textarea", "Control+Enter")  # sends, as the placeholder says
        page.locator(".thread li.agent .delivery", has_text="queued").wait_for()
        assert on_screen(page, ".thread li.agent")  # the thread follows its newest message
        assert on_screen(page, ".reply textarea")
        screenshot(page, "inbox-phone.png", docs=True)

        [sent] = [m for m in cli_json(env, "conversations", "show", "c1")["messages"] if m["role"] == "agent"]
        assert status_callback(url, sent["message_id"], "failed", ErrorCode="30003").status_code == 200
        page.locator(".thread li.agent .delivery.failed", has_text="the phone is unreachable").wait_for()

        page.click("button.back")
        row(page, "c1").wait_for()
        assert not page.locator("#conversation").is_visible()

        page.set_viewport_size(DESKTOP)  # side by side
        row(page, "c1").click()
        page.locator(".thread li.agent").wait_for()
        nav, thread_pane = page.locator("nav").bounding_box(), page.locator("#conversation").bounding_box()
        assert nav["x"] + nav["width"] <= thread_pane["x"] and thread_pane["width"] > 600
        assert on_screen(page, ".reply textarea") and not page.locator("button.back").is_visible()
    assert page.problems == []


def test_once_whatsapps_window_closed_only_the_approved_template_may_go(env, tokens, browser):
    env = {**env, "WHATSAPP_TEMPLATE_CONTENT_SID": TEMPLATE_SID}
    long_ago = ago(days=2)
    imported(env, conversation(last_inbound_at=long_ago, messages=[said("Are you still open?", long_ago)]))
    with serving(env) as (url, _):
        page = new_page(browser)
        log_in(page, url, "sam", tokens["sam"])
        row(page, "c1").click()
        page.locator(".thread li.user", has_text="Are you still open?").wait_for()
        assert re.fullmatch(
            r"\d{1,2} [A-Z][a-z]{2}( \d{4})? \d\d:\d\d", page.locator(".thread li.user .when").inner_text()
        )

        page.locator(".head .window", has_text="window closed").wait_for()
        assert not page.locator(".reply").is_visible()
        screenshot(page, "inbox-window-closed.png")
        assert (
            "WhatsApp's 24-hour window closed: only an approved template may go"
            in page.locator(".closed").inner_text()
        )
        page.once("dialog", lambda dialog: dialog.accept("VIP"))  # "Why?": the reason others see
        page.click("button.handoff")
        page.locator(".thread li.event", has_text="Handed to a human by sam · VIP").wait_for()
        assert page.locator(".head .reason").inner_text().startswith("Handed to a human by sam · VIP · ")
        page.click("button.template")
        page.locator(".thread li.agent", has_text="the approved template").wait_for()
        page.locator(".thread li.agent .delivery", has_text="queued").wait_for()
        assert page.locator(".closed .error").inner_text() == ""
        page.locator("button.template", has_text="Send the template again").wait_for()  # not twice unawares
        assert "It went" in page.locator(".closed .why").inner_text()

    [sent] = [m for m in cli_json(env, "conversations", "show", "c1")["messages"] if m["role"] == "agent"]
    assert sent["template"] == TEMPLATE_SID and sent["operator"] == "sam"
    assert page.problems == []
