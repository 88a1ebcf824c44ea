"""A JSON body read within bounds (a webhook's, a queue record's): its size is bounded by whoever
received it (`webhook/parsing.MAX_BODY_BYTES`, SQS's 256 KiB), its depth here, before Python's parser
recurses into it (a few thousand levels raise RecursionError)."""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

MAX_DEPTH = 32  # the providers' payloads are 3 levels deep
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


def json_object(text: str, what: str = "the body") -> dict[str, Any]:
    """The JSON object in `text`; ValueError saying why it is not one."""
    depth = max(
        accumulate(1 if b in "[{" else -1 for b in _BRACKET.findall(_STRING.sub("", text))), default=0
    )
    if depth > MAX_DEPTH:
        raise ValueError(f"{what} is JSON nested {depth} levels deep, more than the {MAX_DEPTH} allowed")
    try:
        value = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, and an integer of more than 4,300 digits
        raise ValueError(f"{what} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what} is not a JSON object")
    return value
