"""Where an email reply goes, from whom, and in which thread: decided once for the AI's replies and the
operators'.

From: exactly the company address the conversation matched (`gsi_company_email`), with the display
name the person's mail gave it, else the record's `email_from_name`; never another recipient of theirs.
To: their `Reply-To` when it is on their `From`'s domain (or the record says `email_trust_reply_to`),
else their `From`: a forged `From` with a `Reply-To` of the forger's would otherwise receive what the
conversation holds. Cc: the others they wrote to, only when the record says `email_reply_all`. Thread: `In-Reply-To` their mail's RFC 5322 Message-ID (never a provider's own id),
`References` the chain it carried with that id last, bounded.
"""

from __future__ import annotations

from email.utils import formataddr, getaddresses, parseaddr
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
    person = _answered(record, latest)
    address = {"from": formataddr((name, ours)) if name else ours, "to": person}
    if flag(record.get("email_reply_all")):
        theirs = {a.lower() for _, a in getaddresses([person, _text(latest, "from")])}
        others = [formataddr((n, a)) if n else a for n, a in written_to if a != ours and a not in theirs]
        if others:
            address["cc"] = list(dict.fromkeys(others))
    return address


def _answered(record: dict[str, Any], latest: dict[str, Any]) -> str:
    """Their `Reply-To` when it is on the domain of their `From` (or the record trusts any,
    `email_trust_reply_to`), else their `From`: anyone can write a `From` and a `Reply-To` of their
    own, and the reply carries what the conversation holds."""
    sender, reply_to = _text(latest, "from"), _text(latest, "reply_to")
    if not reply_to:
        return sender
    domain = parseaddr(sender)[1].rpartition("@")[2].lower()
    addresses = [a for _, a in getaddresses([reply_to]) if a]
    same = bool(addresses) and all(a.rpartition("@")[2].lower() == domain for a in addresses)
    return reply_to if same or flag(record.get("email_trust_reply_to")) else sender


def thread(latest: dict[str, Any]) -> dict[str, Any]:
    """`subject`, `in_reply_to` and `references` of a reply to the email `latest`."""
    own = latest.get("email_message_id") if isinstance(latest.get("email_message_id"), str) else None
    chain = [r for r in latest.get("references") or [] if isinstance(r, str)]
    if own:
        chain = [r for r in chain if r != own] + [own]
    return {"subject": latest.get("subject"), "in_reply_to": own, "references": chain[-MAX_REFERENCES:]}


def reply_subject(subject: str | None) -> str:
    """Theirs with "Re: " in front, once (never "Re: Re: …" of our making)."""
    subject = subject or ""
    return subject if subject.lower().startswith("re:") else f"Re: {subject}".rstrip()


def _text(message: dict[str, Any], name: str) -> str:
    value = message.get(name)
    return value if isinstance(value, str) else ""
