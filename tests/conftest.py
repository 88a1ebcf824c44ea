from __future__ import annotations

import contextlib
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from replies_engine.bootstrap import get_runtime, reset_runtime
from replies_engine.handlers import batch_processor, handoff_notifier, reply_sender, webhook_handler
from replies_engine.local.workers import QueueWorker
from replies_engine.observability import JsonFormatter
from replies_engine.ports import Runtime

from . import iam
from .aws import Stack, start_moto
from .fakes import Loopback
from .payloads import BASE, COMPANY, EMAIL_TOKEN, PERSON, TOKEN

# Variables a developer's shell may hold that would change what the tests see.
_FOREIGN = (
    "REPLIES_",
    "TWILIO_",
    "AWS_",
    "BATCH_",
    "VERIFY_",
    "PUBLIC_BASE_URL",
    "EMAIL_",
    "LOCKED_",
    "HONOR_",
    "RESPONDER",
    "OPENAI_",
    "AGENT_",
    "TRANSCRIBE_",
    "VISION",
    "MAX_",
    "PROJECTS_FILE",
)


def conversation(conversation_id: str = "c1", **fields: Any) -> dict[str, Any]:
    """A §4.1 record reachable on whatsapp, sms and email from the test person."""
    record = {
        "conversation_id": conversation_id,
        "created_at": "2026-01-01T00:00:00.000000Z",
        "gsi_company_whatsapp_number": COMPANY,
        "gsi_company_sms_number": COMPANY,
        "gsi_company_email": "support@company.example",
        "gsi_recipient_tel": PERSON,
        "gsi_recipient_email": "zoe@example.org",
        "profile_name": "Zoë",  # as WhatsApp names her: a message that says so writes nothing
        "task_complete": 0,
        "project_status": "active",
        "allowed_channels": ["whatsapp", "sms", "email"],
        "conversation_status": "initial_message_sent",
        "messages": [{"message_id": "SMold", "role": "assistant", "content": "Hi Zoë, how can we help?"}],
    }
    record.update(fields)
    return record


class Engine:
    """The engine on one backend (the embedded one in a temporary directory, or AWS on moto), driven
    through the public entry points."""

    def __init__(self, path: Path, monkeypatch: pytest.MonkeyPatch, stack: Stack | None = None) -> None:
        self.path = path
        self.monkeypatch = monkeypatch
        self.stack = stack
        self.backend = "aws" if stack else "sqlite"

    def env(self, **values: str) -> None:
        """Change the environment and rebuild the runtime from it, as a new Lambda container would."""
        for name, value in values.items():
            self.monkeypatch.setenv(name, value)
        reset_runtime()

    @property
    def runtime(self) -> Runtime:
        return get_runtime()

    def put(self, *records: dict[str, Any]) -> None:
        for record in records:
            self.runtime.store.put(record)

    def get(self, conversation_id: str = "c1") -> dict[str, Any] | None:
        """The record with its messages, as `replies-engine conversations show` prints it."""
        record = self.runtime.store.get(conversation_id)
        if record is not None:
            record["messages"] = self.runtime.store.messages(conversation_id)
        return record

    def queued(self, queue: str) -> list[dict[str, Any]]:
        """The messages in `queue`, delayed and in flight included, bodies parsed."""
        if self.stack:
            return self.stack.peek(queue)
        return [
            {"body": json.loads(m.body), "attributes": m.attributes, "delay": round(m.visible_at - m.sent_at)}
            for m in self.runtime.queue.peek(queue)
        ]

    def all_queued(self) -> int:
        return sum(len(self.queued(q)) for q in ("whatsapp", "sms", "email", "handoff", "ai"))

    def handle(self, event: dict[str, Any]) -> dict[str, Any]:
        return webhook_handler(event, None)

    def worker(self, queue: str) -> QueueWorker:
        """The local engine's worker for `queue`, wired to the same handler as in Lambda."""
        if queue == "ai":
            return QueueWorker(self.runtime, queue, reply_sender)
        if queue == "handoff":
            return QueueWorker(self.runtime, queue, handoff_notifier)
        return QueueWorker(self.runtime, queue, batch_processor, self.runtime.settings.batch_window_seconds)

    def deliver(self, queue: str, wait_seconds: float = 5) -> int:
        """Wait for visible messages on `queue` and run one batch of them through its handler, as the
        local engine's worker does; in debounce mode a batch queue's messages and then the flush tokens
        they scheduled. How many people's messages it handed over (flush tokens are not counted)."""
        if queue in ("ai", "handoff") or self.runtime.settings.batching_mode != "debounce":
            return self.worker(queue).poll_once(wait_seconds=wait_seconds)
        handed = Counter()

        def counting(event: dict[str, Any], context: Any) -> dict[str, Any]:
            handed.update(json.loads(r["body"]).get("kind", "message") for r in event["Records"])
            return batch_processor(event, context)

        worker = QueueWorker(self.runtime, queue, counting, self.runtime.settings.batch_window_seconds)
        while worker.poll_once(wait_seconds=wait_seconds) and handed["message"] > handed["flush"]:
            wait_seconds = 0  # the tokens the messages scheduled: visible at once with QUIET_SECONDS=0
        return handed["message"]

    def outbox(self) -> list[dict[str, Any]]:
        if self.stack:
            return [m["body"] for m in self.stack.peek("outbox")]
        return self.runtime.outbox.list()

    def metric(self, name: str) -> float:
        return self.runtime.metrics.snapshot().get(name, 0)


@pytest.fixture
def engine_env(tmp_path: Path) -> dict[str, str]:
    """An environment for a fresh engine in tmp_path (also for subprocesses)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN)}
    env.update(
        REPLIES_BACKEND="sqlite",
        REPLIES_SQLITE_PATH=str(tmp_path / "engine.db"),
        REPLIES_SQLITE_BUSY_TIMEOUT_MS="200",
        TWILIO_AUTH_TOKEN=TOKEN,
        PUBLIC_BASE_URL=BASE,
        VERIFY_SIGNATURES="enforce",
        EMAIL_WEBHOOK_TOKEN=EMAIL_TOKEN,
        BATCH_DELAY_SECONDS="10",
        BATCHING_MODE="debounce",  # the shipped default
        QUIET_SECONDS="0",  # a burst ends at once: tests that wait for a pause set their own
        BATCH_WINDOW_SECONDS="0",  # a worker hands over what is visible at once: tests of the window set it
    )
    return env


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test that drives the engine runs on both backends, unless it is marked sqlite_only."""
    if "backend" in metafunc.fixturenames:
        backends = ["sqlite", "aws"]
        if metafunc.definition.get_closest_marker("sqlite_only"):
            backends = ["sqlite"]
        elif metafunc.definition.get_closest_marker("aws_only"):
            backends = ["aws"]
        metafunc.parametrize("backend", backends, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def moto_endpoint():
    """One moto server for the session (starting one costs ~0.5 s)."""
    server, endpoint = start_moto()
    yield endpoint
    server.shutdown()


# What the fixtures say about the test person: none of it may reach a log line (LOG_PERSONAL_DATA=off).
PERSONAL = (
    PERSON,
    PERSON.lstrip("+"),  # WhatsApp's WaId
    "zoe@example.org",
    "Habt ihr morgen Zeit",  # the default WhatsApp text, the SMS one, the email one
    "Can I move my appointment",
    "can we talk tomorrow",
)


@pytest.fixture(autouse=True)
def no_personal_data_in_logs(monkeypatch: pytest.MonkeyPatch):
    """Every line the engine logs during the test is scanned for the test person's data."""
    leaks: list[str] = []
    original = JsonFormatter.format

    def scanned(self: JsonFormatter, record: Any) -> str:
        line = original(self, record)
        if not self.personal_data and any(n.lower() in line.lower() for n in PERSONAL):
            leaks.append(line)
        return line

    monkeypatch.setattr(JsonFormatter, "format", scanned)
    yield
    assert leaks == [], "personal data in the logs"


@pytest.fixture(scope="session", autouse=True)
def iam_hooks():
    """IAM checks on every boto3 client the session makes (inert unless an aws engine enforces them)."""
    with iam.hooks():
        yield


@pytest.fixture
def engine(
    backend: str, engine_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request
):
    for name in os.environ:
        if name.startswith(_FOREIGN):
            monkeypatch.delenv(name)
    stack = Stack(request.getfixturevalue("moto_endpoint")) if backend == "aws" else None
    environment = {**stack.environment(), **engine_env, "REPLIES_BACKEND": "aws"} if stack else engine_env
    if request.node.get_closest_marker("delay_mode"):
        environment = {**environment, "BATCHING_MODE": "delay"}
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    reset_runtime()
    engine = Engine(tmp_path, monkeypatch, stack)
    engine.put(conversation())
    # each function with its role, the stack deployed with SES sending from and receiving for the test
    # company's domain
    ses = {"SesIdentities": "company.example", "SesReceivingDomain": "company.example"}
    enforce = iam.enforced(stack, parameters=ses) if stack else None
    with enforce or contextlib.nullcontext() as enforcement:
        yield engine
        reset_runtime()
    if enforcement and (enforcement.denials or enforcement.errors):
        pytest.fail(enforcement.report(), pytrace=False)


@pytest.fixture
def secret_reads():
    """How often each secret was read from Secrets Manager meanwhile."""
    from collections import Counter

    from replies_engine.adapters.aws.secrets import secrets_client

    calls: Counter = Counter()

    def count(params, **kwargs):
        calls.update([params["SecretId"]])

    event = "before-parameter-build.secrets-manager.GetSecretValue"
    secrets_client().meta.events.register(event, count)
    yield calls
    secrets_client().meta.events.unregister(event, count)


# --- an OpenAI-compatible API on loopback, for what the AI reads (test_ai_input, test_whatsapp_messages)

USAGE = {"prompt_tokens": 120, "completion_tokens": 14, "total_tokens": 134}


def chat_answer(text: str = "Sure, Friday works.") -> tuple:
    return (200, {"choices": [{"message": {"role": "assistant", "content": text}}], "usage": USAGE})


@pytest.fixture
def ai():
    """The OpenAI-compatible API: transcriptions and chat completions."""
    server = Loopback(
        {
            "/v1/audio/transcriptions": [(200, {"text": "Can we move it to Friday?"})],
            "/v1/chat/completions": [chat_answer()],
        }
    )
    yield server
    server.close()


@pytest.fixture
def reader(engine, ai):
    engine.env(
        BATCH_DELAY_SECONDS="0",
        BATCH_WINDOW_SECONDS="0.3",
        RESPONDER="openai",
        OPENAI_BASE_URL=f"{ai.url}/v1",
        OPENAI_API_KEY="sk-test",
        TRANSCRIBE_MODEL="whisper-1",
        RESPONDER_TIMEOUT_SECONDS="2",
        RESPONDER_ATTEMPTS="1",
    )
    engine.put(conversation())
    return engine


@pytest.fixture
def smtp_server():
    """A real SMTP server on loopback (aiosmtpd) that keeps what it receives."""
    from aiosmtpd.controller import Controller

    from .processes import free_port

    class Keep:
        def __init__(self):
            self.messages = []

        async def handle_DATA(self, server, session, envelope):
            self.messages.append(envelope)
            return "250 OK"

    handler = Keep()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller, handler
    controller.stop()
