"""The channel table: for each channel its GSI, its batch queue and how its addresses are written.

One table, used by stage 1 (lookup, routing), stage 2 (home queue) and both store adapters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.utils import getaddresses, parseaddr
from typing import Any

HANDOFF_QUEUE = "handoff"
TWILIO_MAX_LENGTH = 1600  # characters in a message body (error 21617 beyond)
AI_QUEUE = "ai"
WINDOW_CLOSED_CODE = "63016"  # WhatsApp: free-form outside the 24-hour window (Twilio's error code)


@dataclass(frozen=True)
class Gsi:
    """A global secondary index of ConversationsTable: company side (partition) + person (sort)."""

    name: str
    company_attr: str
    recipient_attr: str


@dataclass(frozen=True)
class Provider:
    """Who carries a channel's messages, and what follows from it. Stage 1 reads and verifies a webhook
    by the provider's `name` (`webhook/providers.py`); the runtime picks the sender by it."""

    name: str
    phone_addresses: bool  # E.164 numbers; else email addresses
    message_id_field: str  # the envelope's key of the provider's message id
    answers_with_twiml: bool  # its webhooks are answered with TwiML, and retried on 5xx only
    keywords: bool  # the carriers' STOP/START/HELP keywords apply
    threads: bool  # a reply goes in the person's thread (subject, In-Reply-To)


TWILIO = Provider("twilio", True, "message_sid", answers_with_twiml=True, keywords=True, threads=False)
EMAIL = Provider("email", False, "message_id", answers_with_twiml=False, keywords=False, threads=True)


@dataclass(frozen=True)
class Channel:
    name: str
    gsi: Gsi | None
    queue: str
    provider: Provider
    handoff_list_attr: str  # senders listed here go to the handoff queue
    max_reply_length: int | None  # longer replies are sent in parts (Twilio: 1,600, counted its way)

    def normalize_address(self, address: str) -> str:
        """The form stored in the GSI keys: E.164 without prefix, or a bare lowercased email."""
        return normalize_phone(address) if self.provider.phone_addresses else normalize_email(address)

    def addresses(self, field: str) -> list[str]:
        """Every address in a `To` field, normalized: an email may be sent to several."""
        if self.provider.phone_addresses:
            return [number] if (number := normalize_phone(field)) else []
        return [address.lower() for _, address in getaddresses([field]) if address]


WHATSAPP_GSI = Gsi("gsi-company-whatsapp", "gsi_company_whatsapp_number", "gsi_recipient_tel")
SMS_GSI = Gsi("gsi-company-sms", "gsi_company_sms_number", "gsi_recipient_tel")
EMAIL_GSI = Gsi("gsi-company-email", "gsi_company_email", "gsi_recipient_email")
# WhatsApp's business-scoped user ID: who wrote, when the phone number is withheld (a username). Sparse:
# only conversations that know the person's BSUID are in it.
BSUID_GSI = Gsi("gsi-company-whatsapp-bsuid", "gsi_company_whatsapp_number", "recipient_bsuid")
_BSUID = re.compile(r"[A-Z]{2}\.(?:ENT\.)?[A-Za-z0-9]{1,128}")

CHANNELS: dict[str, Channel] = {
    "whatsapp": Channel(
        "whatsapp",
        WHATSAPP_GSI,
        "whatsapp",
        TWILIO,
        "auto_queue_reply_message_from_number",
        TWILIO_MAX_LENGTH,
    ),
    "sms": Channel("sms", SMS_GSI, "sms", TWILIO, "auto_queue_reply_message_from_number", TWILIO_MAX_LENGTH),
    "email": Channel("email", EMAIL_GSI, "email", EMAIL, "auto_queue_reply_message_from_email", None),
}
GSIS = (WHATSAPP_GSI, SMS_GSI, EMAIL_GSI, BSUID_GSI)
BATCH_QUEUES = tuple(channel.queue for channel in CHANNELS.values())
QUEUES = (*BATCH_QUEUES, HANDOFF_QUEUE, AI_QUEUE)


def normalize_phone(address: str) -> str:
    """`whatsapp:+49 151 1234` → `+491511234`: the channel prefix and spacing removed."""
    _, _, number = address.strip().rpartition(":")
    return "".join(number.split()).replace("-", "")


def bsuid(address: str | None) -> str | None:
    """`whatsapp:US.13491208655302741918` → `US.13491208655302741918` (a parent, `US.ENT.…`, too); None
    for anything that is not a BSUID (a phone number)."""
    value = (address or "").strip().rpartition(":")[2]
    return value if _BSUID.fullmatch(value) else None


def normalize_email(address: str) -> str:
    """`Zoë <Zoe@Example.org>` → `zoe@example.org`."""
    return parseaddr(address.strip())[1].lower()


def normalize_record_keys(record: dict[str, Any]) -> dict[str, Any]:
    """The record with its GSI keys in stored form, so a hand-written `whatsapp:+1…` still matches.
    ValueError for a `recipient_bsuid` that is not one."""
    normalized = dict(record)
    if record.get("recipient_bsuid") is not None and not bsuid(str(record["recipient_bsuid"])):
        raise ValueError(f"recipient_bsuid {record['recipient_bsuid']!r} is not a WhatsApp BSUID (CC.digits)")
    for gsi in GSIS:
        normalize = normalize_email if gsi is EMAIL_GSI else normalize_phone
        for attr in (gsi.company_attr, gsi.recipient_attr):
            if isinstance(normalized.get(attr), str):
                normalized[attr] = normalize(normalized[attr])
    return normalized
