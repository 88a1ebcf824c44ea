"""Every front door AWS has for a webhook: API Gateway REST (payload 1.0), HTTP API (payload
2.0), Lambda Function URL and Application Load Balancer events, each holding a Twilio body signed
for the URL Twilio called, through `webhook_handler`. The events are AWS's published samples with the
body, path and host replaced: the sources are named at each."""

from __future__ import annotations

import base64
import copy
from urllib.parse import urlencode

import pytest

from .payloads import sign, whatsapp_text

# `sam local generate-event apigateway http-api-proxy` (aws-sam-cli, samcli/lib/generated_sample_events/
# events/apigateway/HttpApiProxy.json), the format of payload version 2.0
HTTP_API = {
    "version": "2.0",
    "routeKey": "$default",
    "rawPath": "/my/path",
    "rawQueryString": "parameter1=value1&parameter1=value2&parameter2=value",
    "cookies": ["cookie1", "cookie2"],
    "headers": {"header1": "value1", "header2": "value1,value2"},
    "queryStringParameters": {"parameter1": "value1,value2", "parameter2": "value"},
    "requestContext": {
        "accountId": "123456789012",
        "apiId": "api-id",
        "domainName": "id.execute-api.us-east-1.amazonaws.com",
        "domainPrefix": "id",
        "http": {
            "method": "POST",
            "path": "/my/path",
            "protocol": "HTTP/1.1",
            "sourceIp": "192.0.2.1",
            "userAgent": "agent",
        },
        "requestId": "id",
        "routeKey": "$default",
        "stage": "$default",
        "time": "12/Mar/2020:19:03:58 +0000",
        "timeEpoch": 1583348638390,
    },
    "body": "Hello from Lambda",
    "pathParameters": {"parameter1": "value1"},
    "isBase64Encoded": False,
    "stageVariables": {"stageVariable1": "value1", "stageVariable2": "value2"},
}

# AWS Lambda Developer Guide, "Lambda function URLs", "Request payload format" (the example event)
FUNCTION_URL = {
    "version": "2.0",
    "routeKey": "$default",
    "rawPath": "/my/path",
    "rawQueryString": "parameter1=value1&parameter1=value2&parameter2=value",
    "cookies": ["cookie1", "cookie2"],
    "headers": {"header1": "value1", "header2": "value1,value2"},
    "queryStringParameters": {"parameter1": "value1,value2", "parameter2": "value"},
    "requestContext": {
        "accountId": "123456789012",
        "apiId": "<urlid>",
        "authentication": None,
        "authorizer": {"iam": {"accessKey": "AKIA...", "accountId": "111122223333"}},
        "domainName": "<url-id>.lambda-url.us-west-2.on.aws",
        "domainPrefix": "<url-id>",
        "http": {
            "method": "POST",
            "path": "/my/path",
            "protocol": "HTTP/1.1",
            "sourceIp": "123.123.123.123",
            "userAgent": "agent",
        },
        "requestId": "id",
        "routeKey": "$default",
        "stage": "$default",
        "time": "12/Mar/2020:19:03:58 +0000",
        "timeEpoch": 1583348638390,
    },
    "body": "Hello from client!",
    "pathParameters": None,
    "isBase64Encoded": False,
    "stageVariables": None,
}

# Elastic Load Balancing User Guide, "Lambda functions as targets", "Receive events from the load
# balancer" (the example event)
ALB = {
    "requestContext": {
        "elb": {
            "targetGroupArn": "arn:aws:elasticloadbalancing:us-east-2:123456789012:targetgroup/lambda-279XGJDqGZ5rsrHC2Fjr/49e9d65c45c6791a"
        }
    },
    "httpMethod": "GET",
    "path": "/lambda",
    "queryStringParameters": {"query": "1234ABCD"},
    "headers": {
        "accept": "text/html,application/xhtml+xml,application/xml;q=0.9,image/webp,image/apng,*/*;q=0.8",
        "accept-encoding": "gzip",
        "accept-language": "en-US,en;q=0.9",
        "connection": "keep-alive",
        "host": "lambda-alb-123578498.us-east-2.elb.amazonaws.com",
        "upgrade-insecure-requests": "1",
        "user-agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36",
        "x-amzn-trace-id": "Root=1-5c536348-3d683b8b04734faae651f476",
        "x-forwarded-for": "72.12.164.125",
        "x-forwarded-port": "80",
        "x-forwarded-proto": "http",
        "x-imforwards": "20",
    },
    "body": "",
    "isBase64Encoded": False,
}


def v2_event(sample: dict, path: str, params: dict, url: str, query: str = "") -> dict:
    """`sample` with a Twilio body signed for `url`, posted to `path` (rawPath, as AWS passes it)."""
    event = copy.deepcopy(sample)
    event["rawPath"] = event["requestContext"]["http"]["path"] = path
    event["rawQueryString"] = query
    event["queryStringParameters"] = None
    event["headers"] = {
        "content-type": "application/x-www-form-urlencoded",
        "x-twilio-signature": sign(url, params),
        "x-forwarded-proto": "https",
        "host": event["requestContext"]["domainName"],
    }
    event["body"] = base64.b64encode(urlencode(params).encode()).decode()  # HTTP APIs encode form bodies
    event["isBase64Encoded"] = True
    return event


@pytest.fixture
def unset_base(engine):
    engine.env(PUBLIC_BASE_URL="")  # the URL is rebuilt from the event, the hard case
    return engine


def test_an_http_api_event_on_the_default_stage_is_verified_and_queued(unset_base):
    params = whatsapp_text()
    url = "https://id.execute-api.us-east-1.amazonaws.com/whatsapp"  # $default: no stage in the path

    answer = unset_base.handle(v2_event(HTTP_API, "/whatsapp", params, url))

    assert answer["statusCode"] == 200 and answer["body"].endswith("<Response/>")
    assert [m["body"]["message_sid"] for m in unset_base.queued("whatsapp")] == [params["MessageSid"]]


def test_an_http_api_event_on_a_named_stage_keeps_the_stage_in_the_signed_url(unset_base):
    params = whatsapp_text()
    event = v2_event(
        HTTP_API, "/prod/whatsapp", params, "https://id.execute-api.us-east-1.amazonaws.com/prod/whatsapp"
    )
    event["requestContext"]["stage"] = "prod"

    assert unset_base.handle(event)["statusCode"] == 200
    assert len(unset_base.queued("whatsapp")) == 1


def test_a_function_url_event_is_verified_for_its_own_host(unset_base):
    params = whatsapp_text()
    url = "https://<url-id>.lambda-url.us-west-2.on.aws/whatsapp"

    assert unset_base.handle(v2_event(FUNCTION_URL, "/whatsapp", params, url))["statusCode"] == 200
    forged = v2_event(FUNCTION_URL, "/whatsapp", whatsapp_text(), "https://elsewhere.example/whatsapp")
    assert unset_base.handle(forged)["statusCode"] == 403
    assert len(unset_base.queued("whatsapp")) == 1


def test_a_v2_event_with_a_query_string_is_signed_with_it(unset_base):
    params = whatsapp_text()
    url = "https://id.execute-api.us-east-1.amazonaws.com/whatsapp?tenant=a%20b&x=1"

    event = v2_event(HTTP_API, "/whatsapp", params, url, query="tenant=a%20b&x=1")

    assert unset_base.handle(event)["statusCode"] == 200


def test_an_alb_event_is_verified_and_answered_as_alb_expects(unset_base):
    params = whatsapp_text()
    url = "http://lambda-alb-123578498.us-east-2.elb.amazonaws.com/whatsapp?tenant=a%2Fb"
    event = copy.deepcopy(ALB)
    event.update(
        httpMethod="POST",
        path="/whatsapp",
        queryStringParameters={"tenant": "a%2Fb"},  # ALB passes them as sent, not decoded
        body=urlencode(params),
    )
    event["headers"].update(
        {"content-type": "application/x-www-form-urlencoded", "x-twilio-signature": sign(url, params)}
    )

    answer = unset_base.handle(event)

    assert answer["statusCode"] == 200 and answer["statusDescription"] == "200 OK"
    assert answer["isBase64Encoded"] is False and len(unset_base.queued("whatsapp")) == 1


def test_a_v2_event_that_is_not_a_post_is_refused_with_the_method_named(unset_base):
    event = v2_event(HTTP_API, "/whatsapp", whatsapp_text(), "https://x/whatsapp")
    event["requestContext"]["http"]["method"] = "GET"

    answer = unset_base.handle(event)

    assert answer["statusCode"] == 200 and unset_base.queued("whatsapp") == []  # Twilio: 200 TwiML
    assert unset_base.metric("WebhookRefused") == 1
