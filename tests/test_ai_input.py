"""What the AI reads: voice notes transcribed before the burst is answered, images shown to a
model that sees, other files described, a company's own instructions, daily caps on AI turns, and the
tokens each reply cost. Real HTTP throughout: a media host and an OpenAI-compatible API on loopback,
reached by the engine's own clients. What the stores keep (transcripts, counters) runs on both
backends; the reading itself, the same code on both, on the embedded one."""

from __future__ import annotations

import base64
import json
import threading

import pytest

from replies_engine.config import ConfigurationError
from replies_engine.replies import media, pipeline
from replies_engine.replies.media import MediaFetcher
from replies_engine.replies.responders import SYSTEM_PROMPT

from .conftest import USAGE, chat_answer, conversation
from .fakes import Loopback, slowly
from .payloads import twilio_event, whatsapp_media, whatsapp_text

VOICE = b"OggS\x00\x02" + bytes(range(256)) * 8  # an Ogg page's start, then anything
PHOTO = b"\xff\xd8\xff\xe0" + b"\x00\x10JFIF" + bytes(200)


@pytest.fixture
def files():
    """The media host: `/voice.ogg`, `/photo.jpg`."""
    server = Loopback(
        {
            "/voice.ogg": [(200, VOICE, {"Content-Type": "audio/ogg"})],
            "/photo.jpg": [(200, PHOTO, {"Content-Type": "image/jpeg"})],
        }
    )
    yield server
    server.close()


def send(engine, *messages: dict[str, str]) -> None:
    for params in messages:
        assert engine.handle(twilio_event("whatsapp", params))["statusCode"] == 200
    assert engine.deliver("whatsapp") >= 1


def answer(engine) -> None:
    assert engine.deliver("ai") == 1


def chat_requests(ai) -> list[dict]:
    return [json.loads(r["body"]) for r in ai.to("/v1/chat/completions")]


def user_text(request: dict) -> str:
    """What the model was given of the person's messages, all content parts' texts."""
    texts = []
    for message in request["messages"]:
        if message["role"] == "user":
            content = message["content"]
            parts = content if isinstance(content, list) else [{"type": "text", "text": content}]
            texts += [p["text"] for p in parts if p["type"] == "text"]
    return "\n".join(texts)


def stored(engine, message_id: str) -> dict:
    return next(m for m in engine.get()["messages"] if m["message_id"] == message_id)


def test_a_voice_note_is_transcribed_and_the_transcript_reaches_the_model_and_the_thread(reader, ai, files):
    note = whatsapp_media("audio/ogg", url=f"{files.url}/voice.ogg")

    send(reader, note)
    answer(reader)

    (transcription,) = ai.to("/v1/audio/transcriptions")
    assert VOICE in transcription["body"] and b'name="model"\r\n\r\nwhisper-1' in transcription["body"]
    assert transcription["headers"]["Authorization"] == "Bearer sk-test"
    (chat,) = chat_requests(ai)
    assert "[a voice note, transcribed: Can we move it to Friday?]" in user_text(chat)
    assert stored(reader, note["MessageSid"])["transcript"] == "Can we move it to Friday?"
    reply = reader.get()["messages"][-1]
    assert reply["role"] == "assistant" and reply["content"] == "Sure, Friday works."
    assert reply["usage"] == USAGE  # what the reply cost, on the reply
    assert reader.metric("VoiceNoteTranscribed") == 1


@pytest.mark.sqlite_only  # the same reading on both backends
def test_a_burst_of_text_and_a_voice_note_is_answered_once_after_the_transcript(reader, ai, files):
    ai.routes["/v1/audio/transcriptions"] = [slowly(0.5, (200, {"text": "at three, if possible"}))]
    text = whatsapp_text("Hi, about tomorrow")
    note = whatsapp_media("audio/ogg", url=f"{files.url}/voice.ogg")

    send(reader, text, note)
    answer(reader)

    (chat,) = chat_requests(ai)  # one answer to both
    said = user_text(chat)
    assert "Hi, about tomorrow" in said and "transcribed: at three, if possible" in said
    (transcription,) = ai.to("/v1/audio/transcriptions")
    (chat_request,) = ai.to("/v1/chat/completions")
    assert chat_request["at"] > transcription["at"] + 0.4  # asked once the transcript had come


@pytest.mark.sqlite_only  # the same reading on both backends
def test_speculating_a_message_written_while_a_voice_note_is_transcribed_is_answered_with_it(
    reader, ai, files
):
    reader.env(SPECULATE="on", QUIET_SECONDS="1")
    ai.routes["/v1/audio/transcriptions"] = [slowly(1.5, (200, {"text": "at three, if possible"}))]
    note = whatsapp_media("audio/ogg", url=f"{files.url}/voice.ogg")
    send(reader, note)  # the batch goes to the AI at once: its voice note is transcribed first
    first = threading.Thread(target=answer, args=(reader,))
    first.start()
    send(reader, whatsapp_text("or at four"))  # while it is transcribed
    first.join()

    while not reader.outbox() and reader.deliver("ai", wait_seconds=2):
        pass

    (chat,) = chat_requests(ai)  # the model was not asked before the second message was in
    said = user_text(chat)
    assert "transcribed: at three, if possible" in said and "or at four" in said
    assert len(ai.to("/v1/audio/transcriptions")) == 1  # the transcript kept, not made again
    assert len(reader.outbox()) == 1
    sent = reader.get()["messages"][-1]
    assert sent["role"] == "assistant" and "discarded_usage" not in sent  # no call was given up
    assert reader.metric("AiCallCancelled") == 0


@pytest.mark.sqlite_only  # the same reading on both backends
def test_a_media_url_that_answers_404_at_first_is_fetched_again(reader, ai, files):
    files.routes["/voice.ogg"] = [(404, b""), (404, b""), (200, VOICE, {"Content-Type": "audio/ogg"})]

    send(reader, whatsapp_media("audio/ogg", url=f"{files.url}/voice.ogg"))
    answer(reader)

    assert len(files.to("/voice.ogg")) == 3
    assert "transcribed: Can we move it to Friday?" in user_text(chat_requests(ai)[0])


@pytest.mark.sqlite_only  # the same reading on both backends
def test_an_image_goes_to_a_model_that_sees_as_a_content_part(reader, ai, files):
    reader.env(VISION="on")

    send(
        reader, whatsapp_media("image/jpeg", caption="is this the right form?", url=f"{files.url}/photo.jpg")
    )
    answer(reader)

    (chat,) = chat_requests(ai)
    (person,) = [m for m in chat["messages"] if m["role"] == "user" and isinstance(m["content"], list)]
    text, image = person["content"]
    assert text["type"] == "text" and text["text"].startswith("is this the right form?")
    assert image == {
        "type": "image_url",
        "image_url": {"url": "data:image/jpeg;base64," + base64.b64encode(PHOTO).decode()},
    }


@pytest.mark.sqlite_only  # the same reading on both backends
def test_a_model_that_refuses_the_images_is_asked_again_without_them(reader, ai, files):
    reader.env(VISION="on")
    ai.routes["/v1/chat/completions"] = [
        (400, {"error": {"message": "image input is not supported"}}),
        chat_answer(),
    ]

    send(reader, whatsapp_media("image/jpeg", caption="look", url=f"{files.url}/photo.jpg"))
    answer(reader)

    refused, described = chat_requests(ai)
    assert "image_url" in json.dumps(refused) and "image_url" not in json.dumps(described)
    assert "[an image (image/jpeg), which could not be shown to the model]" in user_text(described)
    assert reader.get()["messages"][-1]["content"] == "Sure, Friday works."
    assert reader.metric("ImagesRefused") == 1


@pytest.mark.sqlite_only  # the same reading on both backends
def test_without_vision_the_ai_is_told_an_image_came_and_nothing_is_fetched(reader, ai, files):
    send(reader, whatsapp_media("image/jpeg", url=f"{files.url}/photo.jpg"))
    answer(reader)

    assert "[an image (image/jpeg), which you cannot see]" in user_text(chat_requests(ai)[0])
    assert files.requests == []


@pytest.mark.sqlite_only  # the same reading on both backends
def test_a_pdf_is_described_to_the_ai(reader, ai, files):
    send(reader, whatsapp_media("application/pdf", url=f"{files.url}/form.pdf"))
    answer(reader)

    assert "[a PDF (application/pdf)]" in user_text(chat_requests(ai)[0])
    assert files.requests == []


@pytest.mark.sqlite_only  # the same reading on both backends
def test_a_file_over_the_size_limit_is_not_read_and_the_ai_is_told(reader, ai, files):
    reader.env(MAX_MEDIA_BYTES="1000")
    note = whatsapp_media("audio/ogg", url=f"{files.url}/voice.ogg")

    send(reader, note)
    answer(reader)

    assert "which is too large (2 KB, the limit is 1 KB)" in user_text(chat_requests(ai)[0])
    assert ai.to("/v1/audio/transcriptions") == []
    assert stored(reader, note["MessageSid"])["role"] == "user"  # kept, untranscribed
    assert reader.get()["messages"][-1]["role"] == "assistant"
    assert reader.metric("MediaUnread") == 1


@pytest.mark.sqlite_only  # the same reading on both backends
def test_a_file_that_is_not_what_its_content_type_says_is_not_transcribed(reader, ai, files):
    files.routes["/voice.ogg"] = [(200, b"<!DOCTYPE html><html>login</html>", {"Content-Type": "audio/ogg"})]

    send(reader, whatsapp_media("audio/ogg", url=f"{files.url}/voice.ogg"))
    answer(reader)

    assert "is not a voice note, whatever its type (audio/ogg) says" in user_text(chat_requests(ai)[0])
    assert ai.to("/v1/audio/transcriptions") == []
    assert reader.metric("MediaContentTypeMismatch") == 1


@pytest.mark.sqlite_only  # the same reading on both backends
def test_a_failed_transcription_is_told_to_the_ai_and_the_message_is_kept(reader, ai, files):
    ai.routes["/v1/audio/transcriptions"] = [(500, {"error": "overloaded"})]
    note = whatsapp_media("audio/ogg", url=f"{files.url}/voice.ogg")

    send(reader, note)
    answer(reader)

    assert len(ai.to("/v1/audio/transcriptions")) == 2  # retried once
    assert "[a voice note (audio/ogg), which could not be transcribed]" in user_text(chat_requests(ai)[0])
    assert "transcript" not in stored(reader, note["MessageSid"])
    assert reader.get()["messages"][-1]["content"] == "Sure, Friday works."


@pytest.mark.sqlite_only  # the same reading on both backends
def test_files_are_read_within_media_wait_seconds(reader, ai, files):
    reader.env(MEDIA_WAIT_SECONDS="1")
    files.routes["/voice.ogg"] = [slowly(3, (200, VOICE, {"Content-Type": "audio/ogg"}))]

    send(reader, whatsapp_media("audio/ogg", url=f"{files.url}/voice.ogg"))
    answer(reader)

    (chat_request,) = ai.to("/v1/chat/completions")
    (fetch,) = files.requests
    assert chat_request["at"] - fetch["at"] < 2.5  # the AI was asked without waiting for the file
    assert "which could not be fetched" in user_text(json.loads(chat_request["body"]))


def test_a_retried_reply_does_not_transcribe_again(reader, ai, files, monkeypatch):
    monkeypatch.setattr(pipeline, "RETRY_BACKOFF_SECONDS", 0)  # the retry comes back at once
    ai.routes["/v1/chat/completions"] = [(400, {"error": "bad request"}), chat_answer()]

    send(reader, whatsapp_media("audio/ogg", url=f"{files.url}/voice.ogg"))
    reader.deliver("ai")  # the model refuses: retried
    answer(reader)

    assert len(ai.to("/v1/audio/transcriptions")) == 1
    assert [("transcribed: Can we move it to Friday?" in user_text(c)) for c in chat_requests(ai)] == [
        True,
        True,
    ]
    assert reader.get()["messages"][-1]["content"] == "Sure, Friday works."


@pytest.mark.sqlite_only  # the same reading on both backends
def test_a_conversations_own_instructions_are_the_system_prompt(reader, ai):
    reader.put(conversation(ai_instructions="You are Acme's assistant. Never promise refunds."))

    send(reader, whatsapp_text("Can I get my money back?"))
    answer(reader)

    assert chat_requests(ai)[0]["messages"][0] == {
        "role": "system",
        "content": "You are Acme's assistant. Never promise refunds.",
    }


@pytest.mark.sqlite_only  # the same reading on both backends
def test_a_projects_instructions_apply_and_ours_are_the_fallback(reader, ai, tmp_path):
    projects = tmp_path / "projects.json"
    projects.write_text(json.dumps({"acme": {"ai_instructions": "Speak as Acme. Be brief."}}))
    reader.env(PROJECTS_FILE=str(projects))
    reader.put(conversation(project_id="acme"))

    send(reader, whatsapp_text("Hello"))
    answer(reader)
    reader.put(conversation(project_id="elsewhere"))
    send(reader, whatsapp_text("Hello again"))
    answer(reader)

    assert [c["messages"][0]["content"] for c in chat_requests(ai)] == [
        "Speak as Acme. Be brief.",
        SYSTEM_PROMPT,
    ]


@pytest.mark.sqlite_only
@pytest.mark.parametrize(
    "content, error",
    [
        ("{not json", "cannot be read as JSON"),
        ('["acme"]', "must hold an object of projects by id"),
        ('{"acme": {"ai_instruction": "typo"}}', "has 'ai_instruction'; known: ai_instructions"),
        ('{"acme": {"max_ai_turns_per_day": -1}}', "max_ai_turns_per_day must be a whole number"),
    ],
)
def test_a_bad_projects_file_is_a_configuration_error_saying_what_is_wrong(engine, tmp_path, content, error):
    projects = tmp_path / "projects.json"
    projects.write_text(content)
    engine.env(PROJECTS_FILE=str(projects))

    with pytest.raises(ConfigurationError, match=error):
        _ = engine.runtime.projects
    engine.put(conversation())  # the webhook's intake does not depend on it: nothing is lost
    assert engine.handle(twilio_event("whatsapp", whatsapp_text()))["statusCode"] == 200
    assert len(engine.queued("whatsapp")) == 1


def test_past_the_daily_cap_a_human_gets_the_conversation_and_no_ai_is_asked(reader, ai):
    reader.env(MAX_AI_TURNS_PER_DAY="2")

    for text in ("one", "two", "three"):
        send(reader, whatsapp_text(text))
        answer(reader)

    assert len(chat_requests(ai)) == 2
    record = reader.get()
    assert record["owner"] == "human"
    assert "MAX_AI_TURNS_PER_DAY" in record["handoff_reason"]
    (handed,) = reader.queued("handoff")
    assert "MAX_AI_TURNS_PER_DAY" in json.dumps(handed["body"])
    assert reader.metric("AiTurnCapReached") == 1


def test_a_projects_daily_cap_counts_all_its_conversations(reader, ai, tmp_path):
    projects = tmp_path / "projects.json"
    projects.write_text(json.dumps({"acme": {"max_ai_turns_per_day": 1}}))
    reader.env(PROJECTS_FILE=str(projects))
    reader.put(conversation(project_id="acme"))
    send(reader, whatsapp_text("first"))
    answer(reader)

    # the same person, now in another of the project's conversations (the newest wins)
    reader.put(conversation("c2", project_id="acme", created_at="2026-06-01T00:00:00.000000Z"))
    send(reader, whatsapp_text("second"))
    answer(reader)

    assert len(chat_requests(ai)) == 1
    assert reader.get("c2")["owner"] == "human" and "project acme" in reader.get("c2")["handoff_reason"]


def test_past_the_cap_the_person_is_told_a_human_will_answer_in_the_projects_words(reader, ai, tmp_path):
    projects = tmp_path / "projects.json"
    told = "Danke! Jemand von Acme antwortet Ihnen heute hier."
    projects.write_text(json.dumps({"acme": {"max_ai_turns_per_day": 1, "handoff_reply_text": told}}))
    reader.env(PROJECTS_FILE=str(projects))
    reader.put(conversation(project_id="acme"))
    for text in ("first", "second"):
        send(reader, whatsapp_text(text))
        answer(reader)

    record = reader.get()
    assert (record["messages"][-1]["role"], record["messages"][-1]["content"]) == ("assistant", told)
    assert record["owner"] == "human" and "project acme" in record["handoff_reason"]
    assert [entry["body"] for entry in reader.outbox()][-1] == told
    assert record["ai_replies"] == 1  # the hand-off's word is not an AI turn


def test_a_failed_attempt_costs_no_turn(reader, ai, monkeypatch):
    monkeypatch.setattr(pipeline, "RETRY_BACKOFF_SECONDS", 0)
    reader.env(MAX_AI_TURNS_PER_DAY="1")
    ai.routes["/v1/chat/completions"] = [(500, {"error": "overloaded"}), chat_answer()]

    send(reader, whatsapp_text("hello?"))
    reader.deliver("ai")  # the model fails: retried
    answer(reader)

    record = reader.get()
    assert record.get("owner") != "human" and record["messages"][-1]["content"] == "Sure, Friday works."
    assert record["ai_replies"] == 1


def test_turns_counted_at_once_each_count(engine):
    store = engine.runtime.store
    counts = []

    def count() -> None:
        for _ in range(5):
            counts.append(store.count_turn("project#acme", "2026-12-01"))

    threads = [threading.Thread(target=count) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(counts) == list(range(1, 21))
    assert store.turns("project#acme", "2026-12-01") == 20
    assert store.turns("project#acme", "2026-12-02") == 0  # a new day starts afresh
    assert store.count_turn("project#acme", "2026-12-02") == 1


def test_each_voice_note_of_a_message_has_its_own_transcript(reader, ai, files):
    answers = iter(["first note", "second note"])
    ai.routes["/v1/audio/transcriptions"] = [lambda request: (200, {"text": next(answers)})]
    mms = whatsapp_media("audio/ogg", url=f"{files.url}/voice.ogg")
    mms.update(NumMedia="2", MediaContentType1="audio/mpeg", MediaUrl1=f"{files.url}/voice.mp3")
    files.routes["/voice.mp3"] = [(200, b"ID3\x04" + bytes(300), {"Content-Type": "audio/mpeg"})]

    send(reader, mms)
    answer(reader)

    said = user_text(chat_requests(ai)[0])
    assert "[a voice note, transcribed: first note]\n[a voice note, transcribed: second note]" in said
    kept = stored(reader, mms["MessageSid"])
    assert [m["transcript"] for m in kept["media"]] == ["first note", "second note"]
    assert kept["transcript"] == "first note\nsecond note"
    assert ai.to("/v1/audio/transcriptions")[1]["body"].count(b'filename="voice-note.mp3"') == 1


def test_a_regeneration_shows_the_images_again_and_transcribes_nothing_twice(reader, ai, files):
    reader.env(VISION="on")
    mms = whatsapp_media("audio/ogg", url=f"{files.url}/voice.ogg")
    mms.update(NumMedia="2", MediaContentType1="image/jpeg", MediaUrl1=f"{files.url}/photo.jpg")
    send(reader, mms)
    (queued,) = reader.queued("ai")
    context = queued["body"]

    first = media.prepare(reader.runtime, context)
    again = media.prepare(reader.runtime, context)  # a regeneration re-queues `context`

    assert media.images(first["messages"][0]) == media.images(again["messages"][0]) != []
    assert len(ai.to("/v1/audio/transcriptions")) == 1
    assert "data_url" not in json.dumps(context)  # never queued or stored
    assert "data_url" not in json.dumps(stored(reader, mms["MessageSid"]))


@pytest.mark.sqlite_only  # the same reading on both backends
def test_an_image_in_a_format_models_do_not_take_is_described_not_sent(reader, ai, files):
    reader.env(VISION="on")

    send(reader, whatsapp_media("image/heic", url=f"{files.url}/photo.heic"))
    answer(reader)

    assert "[an image (image/heic), which is in a format the model cannot be shown]" in user_text(
        chat_requests(ai)[0]
    )
    assert files.requests == []


@pytest.mark.sqlite_only  # the same reading on both backends
def test_a_media_item_without_a_url_is_told_and_the_reply_goes_on(reader, ai):
    params = whatsapp_media("audio/ogg")
    del params["MediaUrl0"]

    send(reader, params)
    answer(reader)

    assert "[a voice note (audio/ogg), which could not be transcribed]" in user_text(chat_requests(ai)[0])
    assert reader.get()["messages"][-1]["role"] == "assistant"


@pytest.mark.sqlite_only  # the same reading on both backends
def test_the_chat_servers_key_is_not_sent_to_another_transcription_server(reader, ai, files):
    other = Loopback({"/v1/audio/transcriptions": [(200, {"text": "hello"})]})
    try:
        reader.env(TRANSCRIBE_BASE_URL=other.url.replace("127.0.0.1", "localhost") + "/v1")

        send(reader, whatsapp_media("audio/ogg", url=f"{files.url}/voice.ogg"))
        answer(reader)

        (transcription,) = other.requests
        assert "Authorization" not in transcription["headers"]
        reader.env(TRANSCRIBE_API_KEY="whisper-key")
        send(reader, whatsapp_media("audio/ogg", url=f"{files.url}/voice.ogg"))
        answer(reader)
        assert other.requests[1]["headers"]["Authorization"] == "Bearer whisper-key"
    finally:
        other.close()


def test_the_accounts_credentials_go_to_twilio_only_and_never_through_a_redirect():
    storage = Loopback({"/stored.ogg": [(200, VOICE, {"Content-Type": "audio/ogg"})]})
    # Twilio's media URL redirects to its storage, on another host (here: localhost, not 127.0.0.1)
    port = storage.url.rsplit(":", 1)[1]
    twilio = Loopback({"/Media/ME1": [(307, b"", {"Location": f"http://localhost:{port}/stored.ogg"})]})
    try:
        fetcher = MediaFetcher(
            lambda: ("AC123", "secret"), 10_000, authenticates=lambda url: "127.0.0.1" in url
        )

        data, content_type = fetcher.fetch(f"{twilio.url}/Media/ME1", deadline=float("inf"))

        assert (data, content_type) == (VOICE, "audio/ogg")
        expected = "Basic " + base64.b64encode(b"AC123:secret").decode()
        assert twilio.requests[0]["headers"]["Authorization"] == expected
        assert "Authorization" not in storage.requests[0]["headers"]
    finally:
        storage.close()
        twilio.close()
    assert media.is_twilio("https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1")
    assert not media.is_twilio("https://api.twilio.com.evil.example/Media/ME1")
    assert not media.is_twilio("http://api.twilio.com/Media/ME1")  # never in the clear


def test_email_attachments_are_described():
    message = {
        "role": "user",
        "content": "Please see the invoice.",
        "attachments": [{"name": "invoice.pdf", "type": "application/pdf", "size": 120_000}],
    }

    assert media.describe(message) == (
        "Please see the invoice.\n[an attachment: invoice.pdf, a PDF, 120 KB, which you cannot open]"
    )
