"""What people send besides text, made readable for the AI.

The reply stage runs `prepare` before it asks the AI, inside its heartbeat (the lease renewed, "typing…"
shown), so no burst is answered before its voice notes are transcribed:
- a voice note is fetched and transcribed, its `transcript` stored on its media item (all of a
  message's on the message too): a retry, a regeneration and every later turn read it, nobody pays
  for it twice;
- an image is fetched and given to a model that sees (`VISION=on`) as a data URL, for this answer only;
- anything else is described ("a PDF"), and so is whatever could not be read (too large, not what its
  content type claims, a failed transcription, out of time): the AI is told, nothing is dropped.
All of it within MEDIA_WAIT_SECONDS, at most MAX_MEDIA_ITEMS files and MAX_MEDIA_BYTES in all.
"""

from __future__ import annotations

import base64
import logging
import re
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .http import OpenAICompatibleClient, ResponderError

if TYPE_CHECKING:
    from ..ports import Runtime

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
SHOWN_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/webp", "image/gif"})  # what chat models take
CONTACT_TYPES = frozenset({"text/vcard", "text/x-vcard"})  # WhatsApp's shared contacts
MAX_CONTACT_BYTES = (
    65_536  # a name and numbers fit many times over; a larger card (a photo inline) is told as too large
)
EXTENSIONS = {"audio/mpeg": "mp3", "audio/x-m4a": "m4a", "audio/mp4": "m4a", "audio/x-wav": "wav"}


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
    *((bytes([0xFF, second]), {AUDIO}) for second in (0xFB, 0xFA, 0xF3, 0xF2, 0xE3, 0xE2)),  # MP3 frames
    *((bytes([0xFF, second]), {AUDIO}) for second in (0xF1, 0xF0, 0xF9, 0xF8)),  # AAC (ADTS)
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

    def fetch(self, url: str, deadline: float, max_bytes: int | None = None) -> tuple[bytes, str | None]:
        """(the file, the content type its server gives); MediaError when it cannot be had or is over
        `max_bytes` (default and at most: the fetcher's own)."""
        import httpx2

        limit = min(self.max_bytes, max_bytes) if max_bytes is not None else self.max_bytes
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
                        return self._body(response, deadline, limit), response.headers.get("Content-Type")
            except httpx2.TimeoutException as exc:
                raise MediaError("could not be fetched in time") from exc
            except httpx2.HTTPError as exc:
                raise MediaError(f"could not be fetched ({type(exc).__name__})") from exc
            time.sleep(min(wait, max(0.0, deadline - time.monotonic())))
        raise AssertionError("unreachable")  # the last round returns or raises

    def _body(self, response: Any, deadline: float, limit: int) -> bytes:
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise MediaError(f"is too large ({_size(int(declared))}, the limit is {_size(limit)})")
        data = bytearray()
        for chunk in response.iter_bytes():
            data += chunk
            if len(data) > limit:
                raise MediaError(f"is too large (over the limit of {_size(limit)})")
            if time.monotonic() > deadline:  # a server that trickles: each read is quick, the whole not
                raise MediaError("could not be fetched in time")
        return bytes(data)


class Transcriber(OpenAICompatibleClient):
    """An OpenAI-compatible `/audio/transcriptions` endpoint (OpenAI's, or any server with its API)."""

    path = "/audio/transcriptions"

    def transcribe(self, audio: bytes, content_type: str, deadline: float) -> str:
        extension = EXTENSIONS.get(content_type) or content_type.split("/")[-1] or "ogg"  # named by it
        response = self.post(
            self.url,
            deadline=deadline,
            headers=self.headers,
            data={"model": self.model},
            files={"file": (f"voice-note.{extension}", audio, content_type)},
        )
        try:
            text = response.json()["text"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ResponderError(f"{self.url}: malformed answer: {exc!r}") from exc
        if not isinstance(text, str):
            raise ResponderError(f"{self.url}: malformed answer: text is {type(text).__name__}")
        return text.strip()


def prepare(runtime: Runtime, context: dict[str, Any]) -> dict[str, Any]:
    """The AI context with what the batch's files say. Each voice note's `transcript` is stored on its
    media item (and its message's `transcript` is all of them), also in `context`, which goes on to a
    regeneration; images' data URLs are only in the copy returned."""
    settings = runtime.settings
    cards = any(
        _base_type(i) in CONTACT_TYPES for m in context["messages"] if _with_media(m) for i in m["media"]
    )
    if not (runtime.transcriber or settings.vision or cards) or not any(
        _with_media(m) for m in context["messages"]
    ):
        return context
    reading = _Reading(runtime, context)
    messages = []
    for message in context["messages"]:
        if _with_media(message):
            items = [reading.read(message, i, item) for i, item in enumerate(message["media"])]
            reading.keep(message, items)
            message = {**message, "media": items}
        messages.append(message)
    return {**context, "messages": messages}


def _with_media(message: dict[str, Any]) -> bool:
    return message.get("role") == "user" and bool(message.get("media"))


class _Reading:
    """One batch's files, read within MEDIA_WAIT_SECONDS, MAX_MEDIA_ITEMS and MAX_MEDIA_BYTES in all."""

    def __init__(self, runtime: Runtime, context: dict[str, Any]) -> None:
        self.runtime, self.context = runtime, context
        self.deadline = time.monotonic() + runtime.settings.media_wait_seconds
        self.items_left = runtime.settings.max_media_items
        self.bytes_left = runtime.settings.max_media_bytes
        self.stored: dict[str | None, list[dict[str, Any]]] | None = None  # read when first needed

    def read(self, message: dict[str, Any], index: int, item: dict[str, Any]) -> dict[str, Any]:
        """The item, with its `transcript` or `data_url`, or why it is `unread`."""
        item = dict(item)
        kind = family(item.get("content_type"))
        if _base_type(item) in CONTACT_TYPES:
            if "contacts" not in item:
                self._contacts(item)
            return item
        if kind == AUDIO and self.runtime.transcriber and "transcript" not in item:
            if (known := self._stored_transcript(message, index)) is not None:
                item["transcript"] = known  # an earlier attempt at this batch paid for it
                return item
        elif not (kind == IMAGE and self.runtime.settings.vision):
            return item  # described, not read
        if kind == IMAGE and _base_type(item) not in SHOWN_IMAGE_TYPES:
            item["unread"] = "is in a format the model cannot be shown"
            return item
        if self.items_left <= 0:
            item["unread"] = "was not read (more files than MAX_MEDIA_ITEMS)"
            return item
        self.items_left -= 1
        try:
            data = self._fetch(item, kind)
            self.bytes_left -= len(data)
            if kind == AUDIO:
                item["transcript"] = self.runtime.transcriber.transcribe(
                    data, _base_type(item), self.deadline
                )
                self.runtime.metrics.add("VoiceNoteTranscribed")
            else:
                item["data_url"] = f"data:{_base_type(item)};base64,{base64.b64encode(data).decode()}"
        except Exception as exc:  # whatever went wrong, the AI is told and the reply goes on
            if isinstance(exc, MediaError):
                item["unread"] = str(exc)
            else:
                item["unread"] = "could not be transcribed" if kind == AUDIO else "could not be read"
            self.runtime.metrics.add("MediaUnread")
            logger.warning(
                "a file could not be read: the AI is told",
                extra={
                    "conversation_id": self.context["conversation_id"],
                    "error": f"{type(exc).__name__}: {exc}",
                },
            )
        return item

    def keep(self, message: dict[str, Any], items: list[dict[str, Any]]) -> None:
        """Store the message's new transcripts and contact cards (best effort: this reply has them
        either way)."""
        if not any(
            key in item and key not in old
            for item, old in zip(items, message["media"], strict=True)
            for key in ("transcript", "contacts")
        ):
            return
        message["media"] = [
            {k: v for k, v in item.items() if k not in ("data_url", "unread")} for item in items
        ]
        fields: dict[str, Any] = {"media": message["media"]}
        if any(i.get("transcript") for i in message["media"]):
            message["transcript"] = fields["transcript"] = "\n".join(
                i["transcript"] for i in message["media"] if i.get("transcript")
            )
        try:
            self.runtime.store.annotate_message(
                self.context["conversation_id"], message["message_id"], fields
            )
        except Exception as exc:
            logger.warning(
                "a transcript could not be stored: a retry pays for it again",
                extra={"conversation_id": self.context["conversation_id"], "error": str(exc)},
            )

    def _contacts(self, item: dict[str, Any]) -> None:
        """A shared contact's `contacts` (name and numbers of each card), or why it is `unread`."""
        if self.items_left <= 0:
            item["unread"] = "was not read (more files than MAX_MEDIA_ITEMS)"
            return
        self.items_left -= 1
        try:
            data, _ = self.runtime.media_fetcher.fetch(
                item["url"], self.deadline, min(self.bytes_left, MAX_CONTACT_BYTES)
            )
        except Exception as exc:
            item["unread"] = str(exc) if isinstance(exc, MediaError) else "could not be read"
            self.runtime.metrics.add("MediaUnread")
            return
        self.bytes_left -= len(data)
        contacts = vcard_contacts(data)
        if contacts:
            item["contacts"] = contacts
        else:
            item["unread"] = "is not a contact card, whatever its type says"
            self.runtime.metrics.add("MediaContentTypeMismatch")

    def _fetch(self, item: dict[str, Any], kind: str) -> bytes:
        if self.bytes_left <= 0:
            raise MediaError("was not read (the batch's files are over MAX_MEDIA_BYTES together)")
        data, served_as = self.runtime.media_fetcher.fetch(item["url"], self.deadline, self.bytes_left)
        if kind not in sniffed(data):
            self.runtime.metrics.add("MediaContentTypeMismatch")
            claimed = served_as or item["content_type"]
            raise MediaError(f"is not {FAMILY_NAMES[kind]}, whatever its type ({claimed}) says")
        return data

    def _stored_transcript(self, message: dict[str, Any], index: int) -> str | None:
        if self.stored is None:
            ids = {m.get("message_id") for m in self.context["messages"]}
            recent = self.runtime.store.messages(self.context["conversation_id"], last=len(ids) + 50)
            self.stored = {
                m["message_id"]: m.get("media") or [] for m in recent if m.get("message_id") in ids
            }
        stored = self.stored.get(message.get("message_id")) or []
        return stored[index].get("transcript") if index < len(stored) else None


def vcard_contacts(data: bytes) -> list[dict[str, Any]]:
    """Each vCard's name (FN, else N) and telephone numbers; [] when `data` holds no vCard."""
    text = data.decode("utf-8", "replace").replace("\r\n", "\n")
    lines = re.sub(r"\n[ \t]", "", text).split("\n")  # unfold (RFC 6350 3.2)
    contacts: list[dict[str, Any]] = []
    card: dict[str, Any] | None = None
    for line in lines:
        name, _, value = line.partition(":")
        prop = name.split(";")[0].split(".")[-1].upper()  # `item1.TEL;type=CELL` → TEL
        if prop == "BEGIN" and value.strip().upper() == "VCARD":
            card = {"name": "", "phones": []}
        elif card is None:
            continue
        elif prop == "END":
            contacts.append(card)
            card = None
        elif prop == "FN" or (prop == "N" and not card["name"]):
            parts = [p.strip() for p in value.split(";")]
            card["name"] = value.strip() if prop == "FN" else " ".join(filter(None, [*parts[1:3], parts[0]]))
        elif prop == "TEL" and value.strip():
            card["phones"].append(value.strip().removeprefix("tel:"))
    return [c for c in contacts if c["name"] or c["phones"]]


def _base_type(item: dict[str, Any]) -> str:
    """`audio/ogg` of `audio/ogg; codecs=opus`."""
    return (item.get("content_type") or "").split(";")[0].strip().lower()


def describe(message: dict[str, Any], thread: Sequence[dict[str, Any]] = ()) -> str:
    """A message as the AI reads it, never empty: its text, what else it carries ("[shared a location:
    52.5200, 13.4050 — Alexanderplatz, Berlin]", "[pressed the button «Yes» (payload: confirm)]", "[in
    reply to your message: «…»]" when `thread` holds it, "[came from the ad «…»]"), then a line for each
    file ("[a voice note, transcribed: …]", "[an image (image/jpeg), which you cannot see]", "[an
    attachment: invoice.pdf, a PDF, 120 KB, which you cannot open]"); "[an empty message]" for none."""
    lines = _structured(message, thread)
    if message.get("content"):
        lines.insert(1 if message.get("forwarded") else 0, message["content"])
    for item in message.get("media") or []:
        content_type = _base_type(item)
        name = NAMES.get(content_type) or FAMILY_NAMES.get(family(content_type), "a file")
        if item.get("unread"):
            lines.append(f"[{name} ({content_type or 'no type'}), which {item['unread']}]")
        elif item.get("contacts"):
            cards = "; ".join(", ".join(filter(None, [c["name"], *c["phones"]])) for c in item["contacts"])
            lines.append(f"[{name}: {cards}]")
        elif item.get("transcript") is not None:
            lines.append(f"[{name}, transcribed: {item['transcript']}]")
        elif family(content_type) == AUDIO:
            lines.append(f"[{name}, not transcribed]")
        elif family(content_type) == IMAGE and not item.get("data_url"):
            lines.append(f"[{name} ({content_type}), which you cannot see]")
        else:
            lines.append(f"[{name} ({content_type or 'no type'})]")
    for attachment in message.get("attachments") or []:
        content_type = _base_type({"content_type": attachment.get("content_type") or attachment.get("type")})
        name = NAMES.get(content_type) or FAMILY_NAMES.get(family(content_type), "a file")
        size = f", {_size(attachment['size'])}" if isinstance(attachment.get("size"), int) else ""
        filename = attachment.get("name") or "unnamed"
        lines.append(f"[an attachment: {filename}, {name}{size}, which you cannot open]")
    return "\n".join(lines) or "[an empty message]"


def _structured(message: dict[str, Any], thread: Sequence[dict[str, Any]]) -> list[str]:
    lines = ["[forwarded]"] if message.get("forwarded") else []
    if location := message.get("location"):
        lines.append(_location(location))
    if button := message.get("button"):
        payload = f" (payload: {button['payload']})" if button.get("payload") else ""
        lines.append(f"[pressed the button «{button.get('text') or button.get('payload')}»{payload}]")
    if sid := message.get("in_reply_to"):
        quoted = next(
            (m for m in thread if sid == m.get("message_id") or sid in (m.get("parts") or ())), None
        )
        if quoted and quoted.get("content"):
            whose = "your" if quoted.get("role") in ("assistant", "agent") else "their own"
            text = quoted["content"] if len(quoted["content"]) <= 300 else quoted["content"][:299] + "…"
            lines.append(f"[in reply to {whose} message: «{text}»]")
        else:
            lines.append("[in reply to an earlier message]")
    if referral := message.get("referral"):
        ad = (
            f"«{referral['headline']}»"
            if referral.get("headline")
            else referral.get("source_type") or "an ad"
        )
        body = f": {referral['body']}" if referral.get("body") else ""
        lines.append(f"[came from the ad {ad}{body}]")
    return lines


def _location(location: dict[str, Any]) -> str:
    """ "[shared a location: 52.5200, 13.4050 — Alexanderplatz, Berlin (Büro)]", or why it cannot be read."""
    try:
        latitude, longitude = float(location["latitude"]), float(location["longitude"])
    except (KeyError, TypeError, ValueError):
        latitude = longitude = float("nan")
    if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):  # NaN fails both
        return f"[shared a location that cannot be read ({location.get('latitude')}, {location.get('longitude')})]"
    place = location.get("address") or ""
    label = f" ({location['label']})" if location.get("label") else ""
    where = f" — {place}{label}" if place else label
    return f"[shared a location: {latitude:.4f}, {longitude:.4f}{where}]"


def without_images(context: dict[str, Any]) -> dict[str, Any] | None:
    """The context with its images described instead of shown; None when it shows none."""
    if not any(images(m) for m in context["messages"]):
        return None

    def described(item: dict[str, Any]) -> dict[str, Any]:
        shown = {k: v for k, v in item.items() if k != "data_url"}
        return {**shown, "unread": "could not be shown to the model"} if "data_url" in item else item

    messages = [
        {**m, "media": list(map(described, m["media"]))} if images(m) else m for m in context["messages"]
    ]
    return {**context, "messages": messages}


def images(message: dict[str, Any]) -> list[str]:
    """The data URLs of the images a model that sees gets with the message."""
    return [item["data_url"] for item in message.get("media") or [] if item.get("data_url")]


def _size(count: int) -> str:
    return f"{count / 1_000_000:.1f} MB" if count >= 1_000_000 else f"{max(1, round(count / 1000))} KB"
