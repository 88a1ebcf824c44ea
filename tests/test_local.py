"""The local engine: `replies-engine serve` over real HTTP on loopback, the server's event translation,
and the operators' commands."""

from __future__ import annotations

import json
import subprocess
from urllib.parse import urlencode

import httpx2 as httpx
import pytest
from starlette.testclient import TestClient

from replies_engine.local.server import create_app

from .conftest import conversation
from .payloads import TOKEN, sign, whatsapp_text
from .processes import EXE, cli, free_port, post_signed, serving, wait_for_port

pytestmark = pytest.mark.sqlite_only  # the one-machine engine


@pytest.fixture
def imported(engine_env):
    cli(engine_env, "conversations", "import", "-", stdin=json.dumps([conversation()]))
    return engine_env


@pytest.fixture
def served(imported):
    """A running `replies-engine serve` on loopback; yields (base URL, env, process). Delay mode with
    BATCH_DELAY_SECONDS=10: what stage 1 queued stays in the queue long enough to be looked at."""
    env = {**imported, "PUBLIC_BASE_URL": "", "BATCHING_MODE": "delay"}
    with serving(env) as (url, process):
        yield url, env, process


def test_serve_answers_a_signed_twilio_post_and_the_message_shows_in_peek(served):
    url, env, _ = served
    params = whatsapp_text("Hallo 👋")

    response = post_signed(url, params)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/xml")
    assert response.text == '<?xml version="1.0" encoding="UTF-8"?><Response/>'
    [queued] = json.loads(cli(env, "queues", "peek", "whatsapp", "--json").stdout)
    assert queued["body"]["message_sid"] == params["MessageSid"] and queued["body"]["body"] == "Hallo 👋"
    assert queued["attributes"] == {"conversation_id": "c1", "RetryAttempt": 0}
    assert queued["visible_at"].endswith("Z")


def test_serve_refuses_a_forged_post(served):
    url, env, _ = served
    params = whatsapp_text()

    response = httpx.post(
        f"{url}/whatsapp",
        content=urlencode(params),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": sign(url, params),
        },
    )

    assert response.status_code == 403
    assert response.json()["error_code"] == "INVALID_SIGNATURE"
    assert json.loads(cli(env, "queues", "peek", "whatsapp").stdout) == []


def test_serve_without_credentials_of_its_own_makes_them_and_keeps_every_door_closed(imported):
    env = {k: v for k, v in imported.items() if k not in ("TWILIO_AUTH_TOKEN", "EMAIL_WEBHOOK_TOKEN")}
    port = free_port()
    process = subprocess.Popen(
        [EXE, "serve", "--port", str(port)], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        banner = process.stderr.readline()  # for the person, then the same as JSON
        startup = json.loads(process.stderr.readline())
        tokens = startup["twilio_auth_token"], startup["email_webhook_token"]
        assert startup["message"] == "replies-engine serving"
        assert f"twilio auth token {tokens[0]}" in banner and f"email webhook token {tokens[1]}" in banner
        assert [len(t) for t in tokens] == [32, 32] and TOKEN not in tokens
        wait_for_port(port)
        url = f"http://127.0.0.1:{port}/email"
        message = {
            "from": "zoe@example.org",
            "to": "support@company.example",
            "text": "Hallo",
            "message_id": "<m1@x>",
        }
        assert httpx.post(url, json=message).status_code == 403  # no credential, no entry
        answer = httpx.post(url, json=message, headers={"X-Webhook-Token": tokens[1]})
        assert answer.status_code == 200, answer.text
    finally:
        process.terminate()
        process.wait(timeout=10)
    # the same tokens next time: they live in the database
    process = subprocess.Popen(
        [EXE, "serve", "--port", str(port)], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        process.stderr.readline()  # the banner
        startup = json.loads(process.stderr.readline())
        assert (startup["twilio_auth_token"], startup["email_webhook_token"]) == tokens
    finally:
        process.terminate()
        process.wait(timeout=10)


# --- the server's translation, in process ----------------------------------------------------------


def test_proxy_event_has_the_api_gateway_shape():
    seen = []
    client = TestClient(create_app(lambda event, context: seen.append(event) or {"statusCode": 204}))

    response = client.post("/prod/whatsapp?x=1&x=2", content="Body=hi", headers={"X-Twilio-Signature": "s"})

    assert response.status_code == 204
    [event] = seen
    assert event["httpMethod"] == "POST" and event["path"] == "/prod/whatsapp"
    assert event["requestContext"]["path"] == "/prod/whatsapp"
    assert event["headers"]["x-twilio-signature"] == "s" and event["headers"]["x-forwarded-proto"] == "http"
    assert event["multiValueQueryStringParameters"] == {"x": ["1", "2"]}
    assert event["body"] == "Body=hi" and event["isBase64Encoded"] is False


def test_binary_body_reaches_the_handler_base64_encoded_and_is_refused(engine):
    client = TestClient(create_app())

    response = client.post("/whatsapp", content=b"\xff\xfe\x00garbage")

    assert response.status_code == 200 and response.text.endswith("<Response/>")
    assert engine.all_queued() == 0


def test_a_raising_handler_becomes_a_502_as_in_api_gateway():
    def transient(event, context):
        raise RuntimeError("DB_TRANSIENT_ERROR")

    response = TestClient(create_app(transient)).post("/whatsapp", content="x")

    assert response.status_code == 502


def test_oversized_request_is_413():
    client = TestClient(create_app(lambda event, context: pytest.fail("must not be called")))

    assert client.post("/whatsapp", content=b"a" * (10 * 1024 * 1024 + 1)).status_code == 413


# --- operators' commands ---------------------------------------------------------------------------------


def test_import_accepts_json_lines_and_replaces_existing_records(engine_env, tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text(
        json.dumps(conversation("a", gsi_recipient_tel="whatsapp:+49 151 12345678"))
        + "\n"
        + json.dumps(conversation("b", conversation_status="ai_response_sent"))
        + "\n"
    )

    assert json.loads(cli(engine_env, "conversations", "import", str(path)).stdout) == {"imported": 2}
    cli(
        engine_env,
        "conversations",
        "import",
        "-",
        stdin=json.dumps([conversation("a", project_status="paused")]),
    )

    shown = json.loads(cli(engine_env, "conversations", "show", "a", "--json").stdout)
    assert shown["project_status"] == "paused"
    listed = json.loads(cli(engine_env, "conversations", "list", "--status", "ai_response_sent").stdout)
    assert [r["conversation_id"] for r in listed] == ["b"]


def test_import_stores_gsi_keys_in_their_canonical_form(engine_env):
    record = conversation(
        gsi_recipient_tel="whatsapp:+49 151 12345678", gsi_recipient_email="Zoë <ZOE@Example.org>"
    )
    cli(engine_env, "conversations", "import", "-", stdin=json.dumps([record]))

    shown = json.loads(cli(engine_env, "conversations", "show", "c1").stdout)
    assert (
        shown["gsi_recipient_tel"] == "+4915112345678" and shown["gsi_recipient_email"] == "zoe@example.org"
    )


@pytest.mark.parametrize(
    ("stdin", "message"),
    [
        ("{not json", "not a JSON array or JSON lines"),
        (json.dumps([{"conversation_id": "ok"}, {"no_id": 1}]), "record 2"),
        (json.dumps([{"conversation_id": ""}]), "record 1"),
    ],
)
def test_bad_import_is_refused_whole_with_a_clear_message(engine_env, stdin, message):
    result = cli(engine_env, "conversations", "import", "-", stdin=stdin, check=False)

    assert result.returncode == 2 and message in result.stderr
    assert json.loads(cli(engine_env, "conversations", "list").stdout) == []


def test_show_unknown_and_peek_unknown_are_clear_errors(engine_env):
    shown = cli(engine_env, "conversations", "show", "nope", check=False)
    peeked = cli(engine_env, "queues", "peek", "nope", check=False)

    assert shown.returncode == 2 and "no conversation 'nope'" in shown.stderr
    assert peeked.returncode == 2 and "no queue named 'nope'" in peeked.stderr


def test_bad_configuration_is_a_clear_error(engine_env):
    result = cli({**engine_env, "REPLIES_BACKEND": "postgres"}, "queues", "stats", check=False)

    assert result.returncode == 1 and "REPLIES_BACKEND='postgres'" in result.stderr


def test_queue_stats_count_delayed_messages(served):
    url, env, _ = served
    params = whatsapp_text()
    assert post_signed(url, params).status_code == 200

    stats = json.loads(cli(env, "queues", "stats").stdout)
    assert stats["whatsapp"] == {"available": 0, "delayed": 1, "in_flight": 0}
    assert stats["whatsapp-dlq"] == {"available": 0, "delayed": 0, "in_flight": 0}


def test_the_openai_responder_without_a_key_for_api_openai_com_is_a_one_line_error(engine_env):
    from replies_engine.bootstrap import build_runtime
    from replies_engine.config import ConfigurationError, Settings

    with pytest.raises(ConfigurationError, match="needs OPENAI_API_KEY"):
        build_runtime(Settings.from_env({**engine_env, "RESPONDER": "openai"})).responder  # noqa: B018
    local = build_runtime(
        Settings.from_env(
            {**engine_env, "RESPONDER": "openai", "OPENAI_BASE_URL": "http://127.0.0.1:8000/v1"}
        )
    )
    assert local.responder.api_key is None  # a local server that needs none


def test_a_second_serve_on_the_same_database_is_refused(imported):
    with serving(imported):
        second = subprocess.run(
            [EXE, "serve", "--port", str(free_port())],
            env=imported,
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert second.returncode == 1
    assert "another replies-engine serve is running on" in second.stderr
    assert imported["REPLIES_SQLITE_PATH"] in second.stderr and "REPLIES_SQLITE_PATH" in second.stderr


def test_serve_says_where_it_serves_in_one_line_before_the_json_logs(imported):
    port = free_port()
    process = subprocess.Popen(
        [EXE, "serve", "--port", str(port)],
        env=imported,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first_line = process.stderr.readline()
    finally:
        process.terminate()
        process.wait(timeout=30)

    assert first_line.startswith(f"serving http://127.0.0.1:{port} · backend sqlite · database ")
    assert imported["REPLIES_SQLITE_PATH"] in first_line and not first_line.startswith("{")


def test_the_version_is_the_packages(engine_env):
    from importlib.metadata import version

    assert cli(engine_env, "--version").stdout.strip() == f"replies-engine {version('replies-engine')}"


def test_the_command_line_finds_the_same_database_wherever_it_runs_from(engine_env, tmp_path):
    env = {k: v for k, v in engine_env.items() if k != "REPLIES_SQLITE_PATH"}
    env.update(HOME=str(tmp_path / "home"), XDG_DATA_HOME="")
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    there.mkdir()

    def run(cwd, *args, stdin=None):
        done = subprocess.run([EXE, *args], cwd=cwd, env=env, input=stdin, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout

    run(here, "conversations", "import", "-", stdin=json.dumps([conversation()]))
    shown = json.loads(run(there, "conversations", "show", "c1"))

    assert shown["conversation_id"] == "c1"
    assert (tmp_path / "home" / ".local" / "share" / "replies-engine" / "replies-engine.db").exists()
