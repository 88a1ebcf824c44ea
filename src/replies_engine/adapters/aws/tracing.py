"""X-Ray subsegments for every DynamoDB, SQS and Secrets Manager call, from botocore's own events.

With `Tracing: Active`, Lambda opens the function's segment and names it in `_X_AMZN_TRACE_ID`
(`Root=…;Parent=…;Sampled=1`). Each AWS call then becomes one subsegment under it, sent as a UDP
document to the X-Ray daemon at `AWS_XRAY_DAEMON_ADDRESS`. The X-Ray SDK does the same at about
150 ms of extra cold start per container (measured); this is the part of it we use.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import time
from typing import Any

_HEADER = b'{"format": "json", "version": 1}\n'
_RESOURCE_PARAMS = {"TableName": "table_name", "QueueUrl": "queue_url", "SecretId": "secret_id"}


def trace(client: Any) -> None:
    """Send a subsegment per call of `client` when running under X-Ray (a no-op elsewhere)."""
    address = os.environ.get("AWS_XRAY_DAEMON_ADDRESS")
    if not address:
        return
    host, _, port = address.rpartition(":")
    daemon = (host or "127.0.0.1", int(port))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    service = client.meta.service_model.service_id.hyphenize()

    def start(model: Any, params: dict[str, Any], context: dict[str, Any], **kwargs: Any) -> None:
        context["xray"] = (time.time(), {v: params[k] for k, v in _RESOURCE_PARAMS.items() if k in params})

    def end(
        http_response: Any, parsed: dict[str, Any], model: Any, context: dict[str, Any], **kwargs: Any
    ) -> None:
        if "xray" not in context:
            return
        trace_id, parent_id, sampled = _trace_header()
        if not (trace_id and parent_id and sampled):
            return
        started, resource = context.pop("xray")
        status = http_response.status_code if http_response is not None else 0
        document = {
            "name": client.meta.service_model.service_id,
            "id": secrets.token_hex(8),
            "trace_id": trace_id,
            "parent_id": parent_id,
            "type": "subsegment",
            "namespace": "aws",
            "start_time": started,
            "end_time": time.time(),
            "aws": {
                "operation": model.name,
                "region": client.meta.region_name,
                "request_id": (parsed.get("ResponseMetadata") or {}).get("RequestId"),
                **resource,
            },
            "http": {"response": {"status": status}},
            "fault": status >= 500,
            "error": 400 <= status < 500,
            "throttle": status == 429 or (parsed.get("Error") or {}).get("Code", "").endswith("Throttling"),
        }
        with contextlib.suppress(OSError):  # tracing never fails a request
            sock.sendto(_HEADER + json.dumps(document).encode(), daemon)

    client.meta.events.register(f"before-parameter-build.{service}", start)
    client.meta.events.register(f"after-call.{service}", end)


def _trace_header() -> tuple[str | None, str | None, bool]:
    """(Root, Parent, Sampled) of the current invocation; Lambda sets the variable per invocation."""
    fields = dict(
        part.split("=", 1) for part in os.environ.get("_X_AMZN_TRACE_ID", "").split(";") if "=" in part
    )
    return fields.get("Root"), fields.get("Parent"), fields.get("Sampled") == "1"
