"""Fakes only for what has no real counterpart here: Twilio's REST API."""

from __future__ import annotations

import json
import logging

from twilio.http import HttpClient
from twilio.http.response import Response


class TwilioApi(HttpClient):
    """twilio's own Client talks to this instead of api.twilio.com: it records each request and answers
    like Twilio (a created message; the typing indicator with `typing_status`)."""

    def __init__(self, typing_status: int = 200) -> None:
        super().__init__(logging.getLogger("twilio-test"), False)
        self.typing_status = typing_status
        self.requests: list[dict] = []

    def request(
        self,
        method,
        uri,
        params=None,
        data=None,
        headers=None,
        auth=None,
        timeout=None,
        allow_redirects=False,
    ):
        self.requests.append({"method": method, "uri": uri, "data": data, "auth": auth})
        if "Indicators/Typing" in uri:
            return Response(self.typing_status, json.dumps({"success": self.typing_status == 200}))
        return Response(
            201, json.dumps({"sid": "SM" + "f" * 32, "status": "queued", "body": (data or {}).get("Body")})
        )
