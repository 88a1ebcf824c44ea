"""A reply cut to its channel's length: Twilio refuses a body longer than 1,600 characters (error
21617), and the person then gets nothing. The parts are consecutive slices of the reply (joined, they
are the reply), cut at the last paragraph break that fits, else the last sentence end, else the last
space, else anywhere: whatever the person reads in one part is whole."""

from __future__ import annotations

import re
import unicodedata

ELLIPSIS = "…"
# GSM-7's escaped characters take two of its septets; outside GSM-7 a message is UCS-2, where a
# character beyond the Basic Multilingual Plane (most emoji) is a surrogate pair.
_GSM_EXTENDED = frozenset("^{}\\[]~|€\f")
_PARAGRAPH = re.compile(r"\n[ \t]*\n\s*")
_SENTENCE = re.compile(r"[.!?…。！？][\"'”’)\]]*\s+")
_SPACE = re.compile(r"\s+")


def twilio_length(text: str) -> int:
    """The length Twilio holds against its 1,600-character limit, counted on the safe side: an emoji or
    another character outside the BMP counts 2, and so do GSM-7's escaped characters (`€`, `[`, …)."""
    return sum(2 if ord(ch) > 0xFFFF or ch in _GSM_EXTENDED else 1 for ch in text)


def split_reply(text: str, max_length: int | None, max_parts: int) -> tuple[list[str], bool]:
    """(the parts, in order, each at most `max_length` as Twilio counts; truncated?) At most
    `max_parts`: past that the last part ends in an ellipsis and the rest is not sent."""
    if max_length is None or twilio_length(text) <= max_length:
        return [text], False
    parts: list[str] = []
    rest = text
    while rest and len(parts) < max_parts:
        if twilio_length(rest) <= max_length:
            parts.append(rest)
            return parts, False
        cut = _cut(rest, _fits(rest, max_length))
        parts.append(rest[:cut])
        rest = rest[cut:]
    if not rest:
        return parts, False
    last = parts[-1]
    parts[-1] = last[: _fits(last, max_length - twilio_length(ELLIPSIS))].rstrip() + ELLIPSIS
    return parts, True


def _fits(text: str, max_length: int) -> int:
    """How many characters of `text` fit in `max_length`, a character and its combining marks kept
    together."""
    used = end = 0
    for i, ch in enumerate(text):
        used += twilio_length(ch)
        if used > max_length:
            break
        end = i + 1
    while 0 < end < len(text) and unicodedata.combining(text[end]):
        end -= 1
    return end or 1


def _cut(text: str, window: int) -> int:
    """Where to end the next part within its first `window` characters: after the last paragraph
    break, else the last sentence, else the last space, in the window's second half so that no part
    is needlessly short (the whitespace stays with the part before); else where the window ends."""
    head = text[:window]
    for boundary in (_PARAGRAPH, _SENTENCE, _SPACE):
        ends = [m.end() for m in boundary.finditer(head) if m.end() >= window // 2]
        if ends:
            return ends[-1]
    return window
