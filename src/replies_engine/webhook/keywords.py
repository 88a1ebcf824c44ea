"""Stage 1, step 3: the opt-out keywords of SMS and WhatsApp (Twilio's defaults).

A keyword is the whole message, one word, in any case, whitespace and punctuation around it ignored
("Stop!" is STOP, "stop it" is not); Twilio's Advanced Opt-Out names it in `OptOutType` instead.
"""

from __future__ import annotations

import unicodedata
from typing import Any

STOP, START, HELP = "stop", "start", "help"
_WORDS = {
    **dict.fromkeys(("stop", "stopall", "unsubscribe", "cancel", "end", "quit"), STOP),
    **dict.fromkeys(("start", "yes", "unstop"), START),
    **dict.fromkeys(("help", "info"), HELP),
}


def keyword(context_object: dict[str, Any]) -> str | None:
    """STOP, START or HELP when the message is that keyword, else None."""
    named = str((context_object.get("provider_fields") or {}).get("opt_out_type") or "").strip().lower()
    if named in (STOP, START, HELP):
        return named
    return _WORDS.get(_bare(str(context_object.get("body") or "")).casefold())


def _bare(text: str) -> str:
    """`text` without the whitespace and punctuation around it."""
    start, end = 0, len(text)
    while start < end and _edge(text[start]):
        start += 1
    while end > start and _edge(text[end - 1]):
        end -= 1
    return text[start:end]


def _edge(ch: str) -> bool:
    return ch.isspace() or unicodedata.category(ch).startswith("P")
