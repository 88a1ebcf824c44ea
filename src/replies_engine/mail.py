"""Where an email reply goes, from whom, and in which thread: decided once for the AI's replies and the
operators'.

From: exactly the company address the conversation matched (`gsi_company_email`), with the display
name the person's mail gave it, else the record's `email_from_name`; never another recipient of theirs.
To: their `Reply-To`, else their `From`. Cc: the others they wrote to, only when the record says
`email_reply_all`. Thread: `In-Reply-To` their mail's RFC 5322 Message-ID (never a provider's own id),
`References` the chain it carried with that id last, bounded.
"""

from __future__ import annotations

from email.utils import formataddr, getaddresses
from typing import Any

from .conversation import flag

MAX_REFERENCES = 20


def reply_address(record: dict[str, Any], latest: dict[str, Any]) -> dict[str, Any]:
    """`{"from", "to"}` (and `"cc"`, a list) of a reply to the person's message `latest`."""
    if latest.get("channel_type") != "email":
        return {"from": latest.get("to"), "to": latest.get("from")}
    written_to = [
        (name, address.lower())
        for name, address in getaddresses([_text(latest, "to"), _text(latest, "cc")])
        if address
    ]
    ours = (record.get("gsi_company_email") or (written_to[0][1] if written_to else "")).lower()
    name = next((n for n, a in written_to if a == ours and n), None) or record.get("email_from_name")
    person = _text(latest, "reply_to") or _text(latest, "from")
    address = {"from": formataddr((name, ours)) if name else ours, "to": person}
    if flag(record.get("email_reply_all")):
        theirs = {a.lower() for _, a in getaddresses([person, _text(latest, "from")])}
        others = [formataddr((n, a)) if n else a for n, a in written_to if a != ours and a not in theirs]
        if others:
            address["cc"] = list(dict.fromkeys(others))
    return address


def thread(latest: dict[str, Any]) -> dict[str, Any]:
    """`subject`, `in_reply_to` and `references` of a reply to the email `latest`."""
    own = latest.get("email_message_id") if isinstance(latest.get("email_message_id"), str) else None
    chain = [r for r in latest.get("references") or [] if isinstance(r, str)]
    if own:
        chain = [r for r in chain if r != own] + [own]
    return {"subject": latest.get("subject"), "in_reply_to": own, "references": chain[-MAX_REFERENCES:]}


def _text(message: dict[str, Any], name: str) -> str:
    value = message.get(name)
    return value if isinstance(value, str) else ""
