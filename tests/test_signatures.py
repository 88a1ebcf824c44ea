"""Signatures as Twilio computes them: the URL as configured in Twilio, query string and all, however it
is written and whichever front door passes it on; JSON bodies signed with bodySHA256; repeated form
fields; shared-key (SHA-256) signing with a key being rotated. Each request is signed with twilio's own
RequestValidator, as Twilio signs it."""

from __future__ import annotations

import copy
import hashlib
import http.client
import json
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
from twilio.request_validator import RequestValidator

from .payloads import BASE, TOKEN, api_event, whatsapp_text
from .processes import serving
from .test_event_shapes import ALB, FUNCTION_URL, HTTP_API

pytestmark = pytest.mark.sqlite_only  # stage 1's check comes before any backend is asked

# As a person may write them in Twilio's console: each signed by Twilio exactly as written.
QUERIES = ["tenant=a%20b", "tenant=a+b", "x=%7Ey", "x=~y", "tenant=a%2fb", "debug", "debug=", "a=1;b=2", ""]


def signed(query: str, params: dict[str, str], key: str = TOKEN, algorithm: str | None = None):
    url = f"{BASE}/whatsapp" + (f"?{query}" if query else "")
    return RequestValidator(key).compute_signature(url, params, algorithm)


def rest(query: str, params: dict[str, str], signature: str) -> dict:
    """API Gateway REST: the parameters decoded, the query string itself gone."""
    event = api_event("/whatsapp", urlencode(params), {"X-Twilio-Signature": signature})
    decoded = parse_qsl(query, keep_blank_values=True)
    event["queryStringParameters"] = dict(decoded) or None
    event["multiValueQueryStringParameters"] = {k: [v] for k, v in decoded} or None
    return event


def http_api(query: str, params: dict[str, str], signature: str, sample: dict = HTTP_API) -> dict:
    event = copy.deepcopy(sample)
    event["rawPath"] = event["requestContext"]["http"]["path"] = "/prod/whatsapp"
    event["rawQueryString"] = query  # exactly as sent
    event["queryStringParameters"] = dict(parse_qsl(query, keep_blank_values=True)) or None
    event["headers"] = {"content-type": "application/x-www-form-urlencoded", "x-twilio-signature": signature}
    event["body"] = urlencode(params)
    return event


def function_url(query: str, params: dict[str, str], signature: str) -> dict:
    return http_api(query, params, signature, FUNCTION_URL)


def alb(query: str, params: dict[str, str], signature: str) -> dict:
    """An ALB: the parameters as sent, still percent-encoded; `debug` and `debug=` both as ""."""
    event = copy.deepcopy(ALB)
    pairs = [part.partition("=")[::2] for part in query.split("&") if part]
    event.update(httpMethod="POST", path="/whatsapp", body=urlencode(params))
    event["queryStringParameters"] = dict(pairs) or None
    event["headers"].update(
        {"content-type": "application/x-www-form-urlencoded", "x-twilio-signature": signature}
    )
    return event


@pytest.mark.parametrize("query", QUERIES)
@pytest.mark.parametrize(
    "door", [rest, http_api, function_url, alb], ids=["rest", "http-api", "function-url", "alb"]
)
def test_a_query_string_is_verified_as_twilio_signed_it_through_every_front_door(engine, door, query):
    params = whatsapp_text()

    answer = engine.handle(door(query, params, signed(query, params)))

    assert answer["statusCode"] == 200, answer["body"]
    assert [m["body"]["message_sid"] for m in engine.queued("whatsapp")] == [params["MessageSid"]]


@pytest.mark.parametrize("door", [rest, http_api, alb], ids=["rest", "http-api", "alb"])
def test_a_signature_for_another_query_is_refused_and_says_no_more(engine, door):
    params = whatsapp_text()

    answer = engine.handle(door("tenant=b", params, signed("tenant=a", params)))

    assert answer["statusCode"] == 403
    assert json.loads(answer["body"]) == {"error_code": "INVALID_SIGNATURE", "message": "invalid signature"}
    assert engine.all_queued() == 0


@pytest.mark.sqlite_only
def test_serve_passes_the_query_string_as_sent(engine_env, engine):
    """Through a live `serve`, over a raw HTTP connection (an HTTP client library would normalise the
    URL): every spelling verified, one refused."""
    with serving({**engine_env, "PUBLIC_BASE_URL": BASE}) as (url, _):
        host = urlsplit(url)
        statuses = []
        for query in [*QUERIES, "forged"]:
            params = whatsapp_text()
            connection = http.client.HTTPConnection(host.hostname, host.port, timeout=10)
            connection.request(
                "POST",
                "/whatsapp" + (f"?{query}" if query else ""),
                body=urlencode(params),
                headers={
                    "Content-Type": "application/x-www-form-urlencoded",
                    "X-Twilio-Signature": signed("not-this" if query == "forged" else query, params),
                },
            )
            statuses.append(connection.getresponse().status)
            connection.close()

    assert statuses == [200] * len(QUERIES) + [403]


def json_event(body: str, query: str, signature: str) -> dict:
    return api_event(
        "/whatsapp",
        body,
        {"Content-Type": "application/json", "X-Twilio-Signature": signature},
    ) | {"queryStringParameters": dict(parse_qsl(query))}


def test_a_json_body_signed_with_its_sha256_is_verified_and_read(engine):
    params = whatsapp_text("Hallo aus JSON")
    body = json.dumps(params)
    query = "bodySHA256=" + hashlib.sha256(body.encode()).hexdigest()
    signature = RequestValidator(TOKEN).compute_signature(f"{BASE}/whatsapp?{query}", {})

    answer = engine.handle(json_event(body, query, signature))

    assert answer["statusCode"] == 200, answer["body"]
    [queued] = engine.queued("whatsapp")
    assert (
        queued["body"]["body"] == "Hallo aus JSON" and queued["body"]["message_sid"] == params["MessageSid"]
    )


@pytest.mark.parametrize("tamper", ["body", "hash", "no hash"])
def test_a_json_body_that_is_not_the_one_signed_is_refused(engine, tamper):
    params = whatsapp_text()
    body = json.dumps(params)
    digest = hashlib.sha256(body.encode()).hexdigest()
    query = "" if tamper == "no hash" else f"bodySHA256={'0' * 64 if tamper == 'hash' else digest}"
    signature = RequestValidator(TOKEN).compute_signature(
        f"{BASE}/whatsapp" + (f"?{query}" if query else ""), {}
    )
    if tamper == "body":
        body = json.dumps({**params, "Body": "changed"})

    answer = engine.handle(json_event(body, query, signature))

    assert answer["statusCode"] == 403 and engine.all_queued() == 0


def test_a_repeated_form_field_is_signed_with_every_value_and_read_as_its_first(engine):
    params = whatsapp_text("first")
    pairs = [*params.items(), ("Body", "second")]
    fields: dict[str, list[str]] = {}
    for name, value in pairs:
        fields.setdefault(name, []).append(value)

    class MultiDict(dict):  # how a web framework hands twilio's validator a repeated field
        def getall(self, name):
            return self[name]

    signature = RequestValidator(TOKEN).compute_signature(f"{BASE}/whatsapp", MultiDict(fields))
    event = api_event("/whatsapp", urlencode(pairs), {"X-Twilio-Signature": signature})

    assert engine.handle(event)["statusCode"] == 200
    [queued] = engine.queued("whatsapp")
    assert queued["body"]["body"] == "first"


SETTINGS = "key=webhooks_sharedkey_0123,algorithm=HMAC_SHA256"


def shared_key_event(params: dict[str, str], key: str) -> dict:
    signature = signed("", params, key, "HMAC_SHA256")
    return api_event(
        "/whatsapp",
        urlencode(params),
        {"X-Twilio-Signature": signature, "X-Twilio-Webhooks-Signature-Settings": SETTINGS},
    )


def test_shared_key_signatures_are_verified_with_either_key_while_one_is_rotated(engine):
    engine.env(TWILIO_WEBHOOK_SIGNING_KEYS="new-shared-key, old-shared-key")

    answers = [
        engine.handle(shared_key_event(whatsapp_text(), key)) for key in ("old-shared-key", "new-shared-key")
    ]
    forged = engine.handle(shared_key_event(whatsapp_text(), "another-key"))
    by_token = engine.handle(shared_key_event(whatsapp_text(), TOKEN))  # keys configured: they decide

    assert [a["statusCode"] for a in answers] == [200, 200]
    assert forged["statusCode"] == by_token["statusCode"] == 403
    assert len(engine.queued("whatsapp")) == 2


def test_without_shared_keys_a_sha256_signature_is_checked_with_the_auth_token(engine):
    assert engine.handle(shared_key_event(whatsapp_text(), TOKEN))["statusCode"] == 200
    assert engine.handle(shared_key_event(whatsapp_text(), "not-the-token"))["statusCode"] == 403


@pytest.mark.parametrize("path", ["/whatsapp", "/twilio/status"])
@pytest.mark.parametrize("query", ["bodySHA256=", "xbodySHA256=1"])
def test_a_json_body_without_a_body_hash_is_refused_not_an_error(engine, path, query):
    event = api_event(path, "{}", {"Content-Type": "application/json", "X-Twilio-Signature": "forged"})
    event["queryStringParameters"] = dict(parse_qsl(query, keep_blank_values=True))

    answer = engine.handle(event)

    assert answer["statusCode"] == 403 and engine.all_queued() == 0
    assert engine.metric("InvalidSignature") == 1


def test_a_signature_algorithm_twilio_does_not_use_is_refused(engine):
    params = whatsapp_text()
    event = shared_key_event(params, TOKEN)
    event["headers"]["X-Twilio-Webhooks-Signature-Settings"] = (
        "key=webhooks_sharedkey_0123,algorithm=HMAC_MD5"
    )

    assert engine.handle(event)["statusCode"] == 403
