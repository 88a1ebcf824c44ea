"""What people send besides text, made readable for the AI (issue 12).

The reply stage runs `prepare` before it asks the AI, inside its heartbeat (the lease renewed, "typing…"
shown), so no burst is answered before its voice notes are transcribed:
- a voice note is fetched and transcribed, its `transcript` stored on its message: a retry, a
  regeneration and every later turn read it, nobody pays for it twice;
- an image is fetched and given to a model that sees (`VISION=on`) as a data URL, for this answer only;
- anything else is described ("a PDF"), and so is whatever could not be read (too large, not what its
  content type claims, a failed transcription, out of time): the AI is told, nothing is dropped.
All of it within MAX_WAIT_SECONDS, at most MAX_MEDIA_ITEMS files of at most MAX_MEDIA_BYTES each.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .http import ResponderError, RetryingHttpClient

if TYPE_CHECKING:
    from ..bootstrap import Runtime

logger = logging.getLogger(__name__)

RETRY_404_SECONDS = (0.25, 0.75, 1.5)  # Twilio's media URL can answer 404 just after the webhook
FETCH_TIMEOUT_SECONDS = 10.0
AUDIO, IMAGE = "audio", "image"
NAMES = {  # how a file is named to the AI, by content type (else by its family)
    "application/pdf": "a PDF",
    "text/vcard": "a contact card",
    "text/x-vcard": "a contact card",
    "text/calendar": "a calendar invitation",
    "application/msword": "a Word document",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "a Word document",
    "application/vnd.ms-excel": "a spreadsheet",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "a spreadsheet",
}
FAMILY_NAMES = {AUDIO: "a voice note", IMAGE: "an image", "video": "a video", "text": "a text file"}


class MediaError(Exception):
    """A file that could not be read; its message completes "…, which …" for the AI."""


def family(content_type: str | None) -> str:
    """`audio` for `audio/ogg; codecs=opus`: the part before the slash, lower case."""
    return (content_type or "").split("/")[0].strip().lower()


def sniffed(data: bytes) -> set[str]:
    """The families the first bytes show (a container such as MP4 or Ogg can hold sound or film):
    empty when they show none we know."""
    head = data[:16]
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        return {AUDIO}
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return {IMAGE}
    if head[4:8] == b"ftyp":  # ISO media: M4A, MP4, 3GP; HEIC and AVIF are images
        return {IMAGE} if head[8:12] in (b"heic", b"heix", b"mif1", b"avif") else {AUDIO, "video"}
    for signature, families in _SIGNATURES:
        if head.startswith(signature):
            return families
    return set()


_SIGNATURES = (
    (b"OggS", {AUDIO, "video"}),
    (b"\x1aE\xdf\xa3", {AUDIO, "video"}),  # WebM, Matroska
    (b"ID3", {AUDIO}),  # MP3 with a tag
    (b"\xff\xfb", {AUDIO}),  # MP3 frames
    (b"\xff\xf3", {AUDIO}),
    (b"\xff\xf2", {AUDIO}),
    (b"\xff\xf1", {AUDIO}),  # AAC (ADTS)
    (b"\xff\xf9", {AUDIO}),
    (b"#!AMR", {AUDIO}),
    (b"fLaC", {AUDIO}),
    (b"\xff\xd8\xff", {IMAGE}),  # JPEG
    (b"\x89PNG\r\n\x1a\n", {IMAGE}),
    (b"GIF87a", {IMAGE}),
    (b"GIF89a", {IMAGE}),
    (b"%PDF-", {"application"}),
)


def is_twilio(url: str) -> bool:
    """Twilio's own API hosts, the only ones the account's credentials go to."""
    host = (urlsplit(url).hostname or "").lower()
    return urlsplit(url).scheme == "https" and (host == "twilio.com" or host.endswith(".twilio.com"))


class MediaFetcher:
    """GETs a file: Twilio's media URLs with the account's credentials (a redirect to its storage drops
    them), at most `max_bytes` (streamed: a larger file is not read to its end), a 404 retried."""

    def __init__(
        self,
        credentials: Callable[[], tuple[str, str] | None],
        max_bytes: int,
        timeout_seconds: float = FETCH_TIMEOUT_SECONDS,
        authenticates: Callable[[str], bool] = is_twilio,
    ) -> None:
        import httpx2

        self.credentials = credentials
        self.max_bytes = max_bytes
        self.timeout_seconds = timeout_seconds
        self.authenticates = authenticates
        self._http = httpx2.Client(follow_redirects=True)

    def fetch(self, url: str, deadline: float) -> tuple[bytes, str | None]:
        """(the file, the content type its server gives); MediaError when it cannot be had."""
        import httpx2

        auth = self.credentials() if self.authenticates(url) else None
        for wait in (*RETRY_404_SECONDS, None):
            left = deadline - time.monotonic()
            if left <= 0:
                raise MediaError("could not be fetched in time")
            try:
                with self._http.stream(
                    "GET", url, auth=auth, timeout=min(self.timeout_seconds, left)
                ) as response:
                    if response.status_code == 404 and wait is not None:
                        pass  # not there yet: below, after a wait
                    elif not response.is_success:
                        raise MediaError(f"could not be fetched (HTTP {response.status_code})")
                    else:
                        return self._body(response, deadline), response.headers.get("Content-Type")
            except httpx2.TimeoutException as exc:
                raise MediaError("could not be fetched in time") from exc
            except httpx2.HTTPError as exc:
                raise MediaError(f"could not be fetched ({type(exc).__name__})") from exc
            time.sleep(min(wait, max(0.0, deadline - time.monotonic())))
        raise AssertionError("unreachable")  # the last round returns or raises

    def _body(self, response: Any, deadline: float) -> bytes:
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            raise MediaError(f"is too large ({_size(int(declared))}, the limit is {_size(self.max_bytes)})")
        data = bytearray()
        for chunk in response.iter_bytes():
            data += chunk
            if len(data) > self.max_bytes:
                raise MediaError(f"is too large (over the limit of {_size(self.max_bytes)})")
            if time.monotonic() > deadline:  # a server that trickles: each read is quick, the whole not
                raise MediaError("could not be fetched in time")
        return bytes(data)


class Transcriber(RetryingHttpClient):
    """An OpenAI-compatible `/audio/transcriptions` endpoint (OpenAI's, or any server with its API)."""

    def __init__(self, base_url: str, api_key: str | None, model: str, **client: Any) -> None:
        super().__init__(**client)
        self.url = f"{base_url}/audio/transcriptions"
        self.api_key = api_key
        self.model = model

    def transcribe(self, audio: bytes, content_type: str, deadline: float) -> str:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        subtype = content_type.split("/")[-1].split(";")[0].strip() or "ogg"
        response = self.post(
            self.url,
            deadline=deadline,
            headers=headers,
            data={"model": self.model},
            files={"file": (f"voice-note.{subtype}", audio, content_type)},
        )
        try:
            text = response.json()["text"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ResponderError(f"{self.url}: malformed answer: {exc!r}") from exc
        if not isinstance(text, str):
            raise ResponderError(f"{self.url}: malformed answer: text is {type(text).__name__}")
        return text.strip()


def prepare(runtime: Runtime, context: dict[str, Any]) -> dict[str, Any]:
    """The AI context with what the batch's files say. Transcripts are stored on their messages (and
    set on `context`'s, which go on to a regeneration); images' data URLs are in the copy returned."""
    settings = runtime.settings
    wanted = [
        m for m in context["messages"] if m.get("role") == "user" and m.get("media") and "transcript" not in m
    ]
    if not wanted or not (runtime.transcriber or settings.vision):
        return context
    deadline = time.monotonic() + settings.max_wait_seconds
    known = _stored_transcripts(runtime, context["conversation_id"], wanted)
    budget = settings.max_media_items
    messages = []
    for message in context["messages"]:
        if not any(message is w for w in wanted):
            messages.append(message)
            continue
        if message.get("message_id") in known:
            message["transcript"] = known[message["message_id"]]
        items, transcripts = [], []
        for item in message["media"]:
            item = dict(item)
            kind = family(item.get("content_type"))
            if kind not in (AUDIO, IMAGE) or (kind == IMAGE and not settings.vision):
                pass  # described, not read
            elif kind == AUDIO and ("transcript" in message or not runtime.transcriber):
                pass
            elif budget <= 0:
                item["unread"] = "was not read (more files than MAX_MEDIA_ITEMS)"
            else:
                budget -= 1
                try:
                    data = _fetch(runtime, item, kind, deadline)
                    if kind == AUDIO:
                        transcripts.append(
                            runtime.transcriber.transcribe(data, item["content_type"], deadline)
                        )
                    else:
                        item["data_url"] = (
                            f"data:{item['content_type']};base64,{base64.b64encode(data).decode()}"
                        )
                except (MediaError, ResponderError) as exc:
                    item["unread"] = str(exc) if isinstance(exc, MediaError) else "could not be transcribed"
                    runtime.metrics.add("MediaUnread")
                    logger.warning(
                        "a file could not be read: the AI is told",
                        extra={"conversation_id": context["conversation_id"], "error": str(exc)},
                    )
            items.append(item)
        if transcripts:
            message["transcript"] = "\n".join(t for t in transcripts if t)
            runtime.store.annotate_message(
                context["conversation_id"], message["message_id"], {"transcript": message["transcript"]}
            )
            runtime.metrics.add("VoiceNoteTranscribed", len(transcripts))
        messages.append({**message, "media": items})
    return {**context, "messages": messages}


def _fetch(runtime: Runtime, item: dict[str, Any], kind: str, deadline: float) -> bytes:
    data, served_as = runtime.media_fetcher.fetch(item["url"], deadline)
    if kind not in sniffed(data):
        runtime.metrics.add("MediaContentTypeMismatch")
        claimed = served_as or item["content_type"]
        raise MediaError(f"is not {FAMILY_NAMES[kind]}, whatever its type ({claimed}) says")
    return data


def _stored_transcripts(runtime: Runtime, conversation_id: str, messages: list[dict]) -> dict[str, str]:
    """Transcripts an earlier attempt at this batch stored: a retry does not pay for them again."""
    audio = any(family(item.get("content_type")) == AUDIO for m in messages for item in m["media"])
    if not runtime.transcriber or not audio:
        return {}
    ids = {m.get("message_id") for m in messages}
    stored = runtime.store.messages(conversation_id, last=len(messages) + 50)
    return {
        m["message_id"]: m["transcript"] for m in stored if m.get("message_id") in ids and "transcript" in m
    }


def describe(message: dict[str, Any]) -> str:
    """A message as the AI reads it: its text, then a line for each file it carries ("[a voice note:
    …]", "[an image]", "[a PDF]", "[an attachment: invoice.pdf, a PDF, 120 KB]")."""
    lines = [message["content"]] if message.get("content") else []
    transcript = message.get("transcript")
    for item in message.get("media") or []:
        content_type = (item.get("content_type") or "").split(";")[0].strip().lower()
        name = NAMES.get(content_type) or FAMILY_NAMES.get(family(content_type), "a file")
        if item.get("unread"):
            lines.append(f"[{name} ({content_type or 'no type'}), which {item['unread']}]")
        elif family(content_type) == AUDIO and transcript is not None:
            lines.append(f"[{name}, transcribed: {transcript}]")
            transcript = None  # once: a message's voice notes share one transcript
        elif family(content_type) == AUDIO:
            lines.append(f"[{name}, not transcribed]")
        elif family(content_type) == IMAGE and not item.get("data_url"):
            lines.append(f"[{name} ({content_type}), which you cannot see]")
        else:
            lines.append(f"[{name} ({content_type or 'no type'})]")
    for attachment in message.get("attachments") or []:
        content_type = (attachment.get("type") or "").split(";")[0].strip().lower()
        name = NAMES.get(content_type) or FAMILY_NAMES.get(family(content_type), "a file")
        size = f", {_size(attachment['size'])}" if isinstance(attachment.get("size"), int) else ""
        filename = attachment.get("name") or "unnamed"
        lines.append(f"[an attachment: {filename}, {name}{size}, which you cannot open]")
    return "\n".join(lines)


def images(message: dict[str, Any]) -> list[str]:
    """The data URLs of the images a model that sees gets with the message."""
    return [item["data_url"] for item in message.get("media") or [] if item.get("data_url")]


def _size(count: int) -> str:
    return f"{count / 1_000_000:.1f} MB" if count >= 1_000_000 else f"{max(1, round(count / 1000))} KB"
