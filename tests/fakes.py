"""Fakes only for what has no real counterpart here: Twilio's REST API."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from email.utils import format_datetime

from twilio.http import HttpClient
from twilio.http.response import Response


class TwilioApi(HttpClient):
    """twilio's own Client talks to this instead of api.twilio.com: it records each request and answers
    like Twilio (a created message; the typing indicator with `typing_status`)."""

    def __init__(self, typing_status: int = 200, list_status: int = 200) -> None:
        super().__init__(logging.getLogger("twilio-test"), False)
        self.typing_status = typing_status
        self.list_status = list_status
        self.requests: list[dict] = []
        self.created: list[dict] = []  # the messages "sent", newest first, as Twilio lists them

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
        if method == "GET":  # the list of messages, filtered by To and From
            found = [
                m for m in self.created if m["to"] == params.get("To") and m["from"] == params.get("From")
            ]
            page = {"messages": found, "next_page_uri": None, "page": 0, "page_size": 20}
            return Response(self.list_status, json.dumps(page if self.list_status == 200 else {}))
        message = {
            "sid": f"SM{len(self.created) + 1:032x}",
            "status": "queued",
            "body": data["Body"],
            "to": data["To"],
            "from": data["From"],
            "date_created": format_datetime(datetime.now(UTC)),
            "date_sent": None,  # queued: not sent yet
        }
        self.created.insert(0, message)
        return Response(201, json.dumps(message))
