"""The whole engine as a person runs it: `replies-engine serve` on loopback, signed POSTs in, the reply
in `replies-engine outbox list`; Ctrl-C stops it without losing what was in flight."""

from __future__ import annotations

import json
import signal
import time

import pytest

from .conftest import conversation
from .payloads import COMPANY, PERSON, whatsapp_text
from .processes import cli, cli_json, post_signed, serving

BATCH_DELAY = 1

pytestmark = pytest.mark.sqlite_only  # the one-machine engine


@pytest.fixture
def env(engine_env):
    env = {
        **engine_env,
        "PUBLIC_BASE_URL": "",
        "BATCH_DELAY_SECONDS": str(BATCH_DELAY),
        "BATCH_WINDOW_SECONDS": "0.5",
        "SWEEP_INTERVAL_SECONDS": "1",
    }
    cli(env, "conversations", "import", "-", stdin=json.dumps([conversation()]))
    return env


def post_text(url, text):
    params = whatsapp_text(text)
    response = post_signed(url, params)
    assert response.status_code == 200, response.text
    return params["MessageSid"]


def wait_for(predicate, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        time.sleep(0.1)
    return predicate()


def test_a_burst_gets_one_reply_within_the_batch_delay_plus_two_seconds(env):
    with serving(env) as (url, _):
        sids = [post_text(url, text) for text in ("hi", "I wanted to ask", "can I move my appointment?")]
        sent = time.monotonic()

        replies = wait_for(lambda: cli_json(env, "outbox", "list"), BATCH_DELAY + 2)
        answered_after = time.monotonic() - sent

    assert [r["body"] for r in replies] == ["Thanks, we received your 3 messages."]
    assert answered_after <= BATCH_DELAY + 2
    assert replies[0]["to"] == f"whatsapp:{PERSON}" and replies[0]["from"] == f"whatsapp:{COMPANY}"
    record = cli_json(env, "conversations", "show", "c1")
    assert record["conversation_status"] == "ai_response_sent"
    assert [m["message_id"] for m in record["messages"] if m["role"] == "user"] == sids
    assert all(sum(q.values()) == 0 for q in cli_json(env, "queues", "stats").values())


def test_replies_engine_send_posts_a_signed_message_by_hand(env):
    env = {k: v for k, v in env.items() if k != "TWILIO_AUTH_TOKEN"}  # the engine's own token, on both sides
    with serving(env) as (url, _):
        sent = cli_json(env, "send", "--url", url, "--from", PERSON, "--to", COMPANY, "Hello from the shell")
        replies = wait_for(lambda: cli_json(env, "outbox", "list"), BATCH_DELAY + 2)

    assert sent["status"] == 200 and sent["body"].endswith("<Response/>")
    assert [r["body"] for r in replies] == ["Thanks, we received your 1 message."]
    messages = cli_json(env, "conversations", "show", "c1")["messages"]
    assert (
        messages[1]["message_id"] == sent["message_id"] and messages[1]["content"] == "Hello from the shell"
    )


def test_send_posts_a_burst_that_gets_one_reply(env):
    with serving(env) as (url, _):
        sent = cli_json(
            env, "send", "--url", url, "--from", PERSON, "--to", COMPANY, "hi", "one question", "thanks"
        )
        replies = wait_for(lambda: cli_json(env, "outbox", "list"), BATCH_DELAY + 2)

    assert [s["status"] for s in sent] == [200, 200, 200]
    assert [r["body"] for r in replies] == ["Thanks, we received your 3 messages."]


def test_send_reports_a_refusal(env):
    with serving(env) as (url, _):
        result = cli(
            env, "send", "--url", url, "--from", "+10000000000", "--to", COMPANY, "who?", check=False
        )

    assert result.returncode == 1  # said, although Twilio's channels answer 200 TwiML when nobody is found
    [refused] = json.loads(result.stdout)
    assert refused["status"] == 200 and refused["error_code"] == "CONVERSATION_NOT_FOUND"
    assert cli_json(env, "queues", "peek", "whatsapp") == []


def test_ctrl_c_finishes_the_batch_in_hand_and_keeps_what_is_queued(env):
    env = {**env, "BATCH_DELAY_SECONDS": "0", "LOCAL_RESPONDER_DELAY_SECONDS": "1.5"}
    with serving(env) as (url, process):
        post_text(url, "one")
        assert wait_for(lambda: cli_json(env, "queues", "stats")["ai"]["in_flight"] == 1, 5)
        process.send_signal(signal.SIGINT)  # while the responder is thinking
        assert process.wait(timeout=30) == 0

    # the reply in hand was finished and the lock released
    assert [r["body"] for r in cli_json(env, "outbox", "list")] == ["Thanks, we received your 1 message."]
    assert cli_json(env, "conversations", "show", "c1")["conversation_status"] == "ai_response_sent"

    env = {**env, "BATCH_DELAY_SECONDS": "30"}
    with serving(env) as (url, process):
        sid = post_text(url, "two")
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    [kept] = cli_json(env, "queues", "peek", "whatsapp")
    assert kept["body"]["message_sid"] == sid


def test_dlq_and_outbox_commands(env):
    cli(
        env,
        "conversations",
        "import",
        "-",
        stdin=json.dumps(
            [
                conversation(
                    conversation_status="processing_reply",
                    lock_owner="someone",
                    processing_started_at="2026-01-01T00:00:00.000000Z",
                )
            ]
        ),
    )

    assert cli_json(env, "sweep") == {"checked": 1, "reset": 1, "redriven": 0}
    assert cli_json(env, "conversations", "show", "c1")["conversation_status"] == "processing_timeout"
    assert cli_json(env, "dlq", "list", "whatsapp") == []
    assert cli_json(env, "dlq", "redrive", "whatsapp") == {"queue": "whatsapp", "redriven": 0}
    assert cli_json(env, "outbox", "list") == []
    bad = cli(env, "dlq", "list", "fax", check=False)
    assert bad.returncode == 2 and "no queue named 'fax'" in bad.stderr


def test_the_default_debounce_mode_answers_a_burst_once_soon_after_the_pause(env):
    env = {k: v for k, v in env.items() if k not in ("BATCHING_MODE", "BATCH_DELAY_SECONDS")}  # the defaults
    env["QUIET_SECONDS"] = "1"
    with serving(env) as (url, _):
        sent = cli_json(
            env, "send", "--url", url, "--from", PERSON, "--to", COMPANY, "hi", "one question", "thanks"
        )
        after_last = time.monotonic()
        replies = wait_for(lambda: cli_json(env, "outbox", "list"), 1 + 2)
        waited = time.monotonic() - after_last

    assert [s["status"] for s in sent] == [200, 200, 200]
    assert [r["body"] for r in replies] == ["Thanks, we received your 3 messages."]
    assert waited <= 1 + 2  # QUIET_SECONDS + 2 s


def test_a_live_serve_records_stop_and_delivery_status_callbacks(env):
    with serving(env) as (url, _):
        post_text(url, "hello")
        [reply] = wait_for(lambda: cli_json(env, "outbox", "list"), BATCH_DELAY + 2)
        callback = {"MessageSid": reply["message_id"], "MessageStatus": "delivered"}
        recorded = post_signed(url, callback, channel="twilio/status")
        forged = post_signed(url, {**callback, "MessageStatus": "failed"}, "twilio/status", "Zm9yZ2Vk")
        assert post_signed(url, whatsapp_text("STOP")).status_code == 200
        post_text(url, "one more thing")
        time.sleep(BATCH_DELAY + 1)  # time enough for a reply, were one to come
        outbox = cli_json(env, "outbox", "list")

    assert (recorded.status_code, recorded.json()["status"]) == (200, "recorded")
    assert forged.status_code == 403
    assert len(outbox) == 1  # nothing after STOP
    record = cli_json(env, "conversations", "show", "c1")
    assert record["opted_out"] is True
    assert [m.get("delivery_status") for m in record["messages"] if m["role"] == "assistant"][
        -1
    ] == "delivered"
    assert [m.get("no_reply") for m in record["messages"][-2:]] == ["stop", "opted_out"]
