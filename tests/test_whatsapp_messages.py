"""What people send over WhatsApp besides text reaches the conversation and the AI: a shared location,
a quick-reply button, a reply to an earlier message, a click-to-WhatsApp ad's referral, a forward, a
sticker, a message with nothing in it. Each is Twilio's documented parameters, signed, through the
public handlers; the stored message keeps the structured fields, and the exact request an
OpenAI-compatible server on loopback receives has the person's turn, rendered."""

from __future__ import annotations

import pytest

from replies_engine.replies.media import describe

from .conftest import conversation
from .fakes import Loopback
from .payloads import twilio_event, whatsapp_location, whatsapp_media, whatsapp_text
from .test_ai_input import chat_requests, stored


def through(engine, model, params: dict[str, str]) -> tuple[dict, dict]:
    """Stages 1 to 3 on one message: (the message as stored, the person's last turn the model got)."""
    assert engine.handle(twilio_event("whatsapp", params))["statusCode"] == 200
    assert engine.deliver("whatsapp") == 1
    assert engine.deliver("ai") == 1
    [request] = chat_requests(model)
    turn = request["messages"][-1]
    assert turn["role"] == "user"  # never a request without the person's turn
    return stored(engine, params["MessageSid"]), turn


def test_a_shared_location_is_kept_and_read_out(reader, ai):
    message, turn = through(reader, ai, whatsapp_location())

    assert message["content"] == "" and message["location"] == {
        "latitude": "52.520008",
        "longitude": "13.404954",
        "address": "Alexanderplatz, Berlin",
        "label": "Büro",
    }
    assert turn["content"] == "[shared a location: 52.5200, 13.4050 — Alexanderplatz, Berlin (Büro)]"


def test_a_quick_reply_button_is_kept_with_its_payload(reader, ai):
    params = whatsapp_text("Ja, Freitag passt", MessageType="button", ButtonText="Ja, Freitag passt")
    params["ButtonPayload"] = "confirm-friday"

    message, turn = through(reader, ai, params)

    assert message["button"] == {"text": "Ja, Freitag passt", "payload": "confirm-friday"}
    assert (
        turn["content"]
        == "Ja, Freitag passt\n[pressed the button «Ja, Freitag passt» (payload: confirm-friday)]"
    )


def test_a_reply_to_our_message_quotes_it(reader, ai):
    outreach_sid = "SM" + "e" * 32
    reader.put(
        conversation(
            messages=[{"message_id": outreach_sid, "role": "assistant", "content": "Passt Freitag um 10?"}]
        )
    )
    params = whatsapp_text("Lieber um 11")
    params.update(
        OriginalRepliedMessageSid=outreach_sid, OriginalRepliedMessageSender="whatsapp:+14155238886"
    )

    message, turn = through(reader, ai, params)

    assert message["in_reply_to"] == outreach_sid
    assert turn["content"] == "Lieber um 11\n[in reply to your message: «Passt Freitag um 10?»]"


def test_a_click_to_whatsapp_referral_is_kept_click_id_and_all(reader, ai):
    params = whatsapp_text("Hi, is this still available?")
    params.update(
        ReferralBody="Winter sale: 30% off",
        ReferralHeadline="Winter sale",
        ReferralSourceId="120208750000000000",
        ReferralSourceType="ad",
        ReferralSourceUrl="https://fb.me/abc",
        ReferralCtwaClid="ARAkLkA8rmlFeiCktEJQ-QTwRiyYHAFDLMNDBH0CD3qpjd0HR4irJ6LEkR7JwFF4XvnO2E4Nx0-eM-GABDLOPaOdRMv-_zfUQ2a",
    )

    message, turn = through(reader, ai, params)

    assert (
        message["referral"]["ctwa_clid"].startswith("ARAkLkA8") and message["referral"]["source_type"] == "ad"
    )
    assert (
        turn["content"]
        == "Hi, is this still available?\n[came from the ad «Winter sale»: Winter sale: 30% off]"
    )


def test_a_forwarded_sticker_is_described_not_answered_as_nothing(reader, ai):
    params = whatsapp_media("image/webp")
    params.update(MessageType="sticker", Forwarded="true")

    message, turn = through(reader, ai, params)

    assert message["forwarded"] is True and message["media"][0]["content_type"] == "image/webp"
    assert turn["content"] == "[forwarded]\n[an image (image/webp), which you cannot see]"


def test_a_message_with_nothing_in_it_is_described_as_empty(reader, ai):
    _, turn = through(reader, ai, whatsapp_text(""))

    assert turn["content"] == "[an empty message]"


@pytest.mark.parametrize(
    ("latitude", "longitude"), [("123.0", "13.4"), ("52.5", "-181"), ("north", "13.4"), ("nan", "13.4")]
)
def test_a_location_that_cannot_be_read_is_described_as_such(latitude, longitude):
    text = describe(
        {"role": "user", "content": "", "location": {"latitude": latitude, "longitude": longitude}}
    )

    assert text == f"[shared a location that cannot be read ({latitude}, {longitude})]"


def test_a_reply_to_a_message_the_engine_does_not_have_says_so():
    text = describe({"role": "user", "content": "ok", "in_reply_to": "SM" + "0" * 32}, thread=[])

    assert text == "ok\n[in reply to an earlier message]"


# A contact shared from a phone's address book (vCard 3.0, as WhatsApp forwards them), folded line included
VCARD = (
    "BEGIN:VCARD\r\nVERSION:3.0\r\nN:Mustermann;Max;;;\r\nFN:Max Mustermann\r\n"
    "item1.TEL;waid=4915123456789:+49 151 23456789\r\nitem1.X-ABLabel:Mobil\r\n"
    "NOTE:ruft gern\r\n  abends an\r\nEND:VCARD\r\n"
)


@pytest.fixture
def cards():
    server = Loopback(
        {
            "/max.vcf": [(200, VCARD.encode(), {"Content-Type": "text/vcard"})],
            "/not-a-card.vcf": [(200, b"<html>error</html>", {"Content-Type": "text/vcard"})],
        }
    )
    yield server
    server.close()


def test_a_shared_contact_card_is_read_for_its_name_and_number_and_kept(reader, ai, cards):
    params = whatsapp_media("text/vcard", url=f"{cards.url}/max.vcf")

    message, turn = through(reader, ai, params)

    assert message["media"][0]["contacts"] == [{"name": "Max Mustermann", "phones": ["+49 151 23456789"]}]
    assert turn["content"] == "[a contact card: Max Mustermann, +49 151 23456789]"


def test_a_contact_card_that_is_not_one_is_described_as_such(reader, ai, cards):
    params = whatsapp_media("text/vcard", url=f"{cards.url}/not-a-card.vcf")

    message, turn = through(reader, ai, params)

    assert "contacts" not in message["media"][0]
    assert (
        turn["content"]
        == "[a contact card (text/vcard), which is not a contact card, whatever its type says]"
    )
