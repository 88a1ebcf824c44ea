"""The DynamoDB toolkit the store is written with: conditional requests and transactions in the ports'
terms (a refused condition is `ConditionFailed`, throttling transient), condition expressions on
counters, and JSON-like values to and from DynamoDB's."""

from __future__ import annotations

import functools
import random
import time
import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from ...ports import Record, StoreError, TransientStoreError
from .clients import client, error_code, translated_errors

ATTEMPTS = 5  # conditional writes lost to concurrent ones before giving up (transient)
_RETRYABLE = frozenset({"None", "ConditionalCheckFailed", "TransactionConflict"})


def errors():
    return translated_errors(StoreError, TransientStoreError)


class ConditionFailed(Exception):
    """A conditional write did not apply; `reasons` has one code per item of a transaction."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__(", ".join(reasons))
        self.reasons = reasons

    @property
    def conflict(self) -> bool:
        """Another transaction held the item: no condition was even evaluated."""
        return "TransactionConflict" in self.reasons


def drain(operation: str, request: dict[str, Any], unprocessed: str) -> list[dict[str, Any]]:
    """A batch request, again with what DynamoDB left unprocessed (throttled) until nothing is left."""
    responses = []
    with errors():
        for attempt in range(ATTEMPTS):
            response = getattr(client("dynamodb"), operation)(RequestItems=request)
            responses.append(response)
            request = response.get(unprocessed)
            if not request:
                return responses
            time.sleep(0.05 * 2**attempt)
    raise TransientStoreError(f"{operation}: items still unprocessed after {ATTEMPTS} attempts")


def commit(update: dict[str, Any], others: list[dict[str, Any]]) -> None:
    """The record's Update with the message items' operations, all or nothing; ConditionFailed when
    a condition does not hold. Alone, the Update is a plain UpdateItem (half the cost)."""
    if not others:
        conditional("update_item", **update)
        return
    conditional(
        "transact_write_items",
        TransactItems=[{"Update": update}, *others],
        # botocore's retry of a request that did commit commits nothing twice
        ClientRequestToken=uuid.uuid4().hex,
    )


def conditional(operation: str, **kwargs: Any) -> dict[str, Any]:
    """One conditional request; its refusals as ConditionFailed, the rest in the ports' terms."""
    from botocore.exceptions import ClientError

    with errors():
        try:
            return getattr(client("dynamodb"), operation)(**kwargs)
        except ClientError as exc:
            code = error_code(exc)
            reasons = {
                "ConditionalCheckFailedException": ["ConditionalCheckFailed"],
                "TransactionConflictException": ["TransactionConflict"],
            }.get(code or "") or [
                r.get("Code") or "None" for r in exc.response.get("CancellationReasons", [])
            ]
            if code == "TransactionCanceledException" and "ThrottlingError" in reasons:
                raise TransientStoreError(f"{code}: {exc}") from exc
            if not reasons or not set(reasons) <= _RETRYABLE:
                raise
            if "TransactionConflict" in reasons:
                time.sleep(random.uniform(0.01, 0.05))  # the other transaction is done in milliseconds
            raise ConditionFailed(reasons) from exc


def contended(conversation_id: str) -> TransientStoreError:
    return TransientStoreError(f"conversation {conversation_id}: too many concurrent writes")


def counter_unchanged(attribute: str, value: int) -> tuple[str, dict[str, Any]]:
    """A condition that the counter `attribute` is still `value` (absent counts as 0)."""
    placeholder = f":was_{attribute}"
    if value == 0:
        return f"(attribute_not_exists({attribute}) OR {attribute} = {placeholder})", {placeholder: 0}
    return f"{attribute} = {placeholder}", {placeholder: value}


def length_unchanged(attribute: str, length: int) -> tuple[str, dict[str, Any]]:
    """A condition that `attribute` (a list) still has the `length` that was read."""
    placeholder = f":length_of_{attribute}"
    condition = f"size({attribute}) = {placeholder}"
    if length == 0:
        condition = f"(attribute_not_exists({attribute}) OR {condition})"
    return condition, {placeholder: length}


def after(record: Record, fields: Record, removed: Sequence[str] = ()) -> Record:
    """The record a committed write left: what was read, `fields` set, `removed` gone (a transaction
    returns no attributes)."""
    after = {k: v for k, v in {**record, **fields}.items() if k not in removed}
    after.pop("gsi_locked", None)
    return after


def without(name: str, record: Record) -> Record:
    return {k: v for k, v in record.items() if k != name}


def chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def to_dynamo(value: Any) -> Any:
    """JSON-like values → what DynamoDB stores: floats become Decimals."""
    if isinstance(value, float):
        return Decimal(str(value))
    if isinstance(value, dict):
        return {k: to_dynamo(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_dynamo(v) for v in value]
    return value


def from_dynamo(value: Any) -> Any:
    """DynamoDB values → JSON-like ones: Decimals become ints or floats, sets sorted lists."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: from_dynamo(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_dynamo(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted(from_dynamo(v) for v in value)
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return value


@functools.cache
def _codec() -> tuple[Any, Any]:
    from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

    return TypeSerializer().serialize, TypeDeserializer().deserialize


def encode(values: Record) -> dict[str, Any]:
    """A record, or an expression's values, in DynamoDB's typed form."""
    serialize = _codec()[0]
    return {name: serialize(to_dynamo(value)) for name, value in values.items()}


def decode(item: dict[str, Any]) -> Record:
    deserialize = _codec()[1]
    return {name: from_dynamo(deserialize(value)) for name, value in item.items()}


def pages(operation: str, kwargs: dict[str, Any], pagination: dict[str, int] | None = None) -> list[Record]:
    """Every item of a paginated Query or Scan, decoded."""
    items: list[Record] = []
    with errors():
        paginator = client("dynamodb").get_paginator(operation)
        for page in paginator.paginate(**kwargs, PaginationConfig=pagination or {}):
            items.extend(decode(item) for item in page["Items"])
    return items
