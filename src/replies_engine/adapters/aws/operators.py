"""OperatorStore on DynamoDB: one table (OperatorsTable), partition key `pk`, an item per thing:

- `operator#<name>`: the account (`name`, `role`, `token_hash`, `created_at`);
- `token#<hash>`: which account a token is (written and deleted with the account, in one transaction);
- `session#<hash>`: a page session, expiring with the table's TTL (`expires_at`);
- `failures#<key>#<window>`: failed logins counted in a time window, expiring with it.
"""

from __future__ import annotations

import time
from typing import Any

from ...ports import Record
from .clients import client
from .dynamo import ConditionFailed, conditional, decode, encode, errors, pages

_ABSENT = "attribute_not_exists(pk)"
_KEEP_FAILURES_SECONDS = 86_400


class DynamoOperators:
    def __init__(self, table: str) -> None:
        self.table = table

    def add_operator(self, account: Record) -> bool:
        try:
            self._transact(
                {
                    "Put": {
                        "Item": encode({"pk": f"operator#{account['name']}", **account}),
                        "ConditionExpression": _ABSENT,
                    }
                },
                {
                    "Put": {
                        "Item": encode({"pk": f"token#{account['token_hash']}", "name": account["name"]}),
                        "ConditionExpression": _ABSENT,
                    }
                },
            )
        except ConditionFailed:
            return False
        return True

    def replace_token(self, name: str, token_hash: str) -> Record | None:
        for _ in range(3):
            account = self.operator(name)
            if account is None:
                return None
            try:
                self._transact(
                    {
                        "Update": {
                            "Key": self._key(f"operator#{name}"),
                            "UpdateExpression": "SET token_hash = :new",
                            "ConditionExpression": "token_hash = :old",
                            "ExpressionAttributeValues": encode(
                                {":new": token_hash, ":old": account["token_hash"]}
                            ),
                        }
                    },
                    {"Delete": {"Key": self._key(f"token#{account['token_hash']}")}},
                    {
                        "Put": {
                            "Item": encode({"pk": f"token#{token_hash}", "name": name}),
                            "ConditionExpression": _ABSENT,
                        }
                    },
                )
            except ConditionFailed:
                continue  # reset or removed meanwhile: read again
            return {**account, "token_hash": token_hash}
        return None

    def remove_operator(self, name: str) -> bool:
        for _ in range(3):
            account = self.operator(name)
            if account is None:
                return False
            try:
                self._transact(
                    {
                        "Delete": {
                            "Key": self._key(f"operator#{name}"),
                            "ConditionExpression": "token_hash = :old",
                            "ExpressionAttributeValues": encode({":old": account["token_hash"]}),
                        }
                    },
                    {"Delete": {"Key": self._key(f"token#{account['token_hash']}")}},
                )
            except ConditionFailed:
                continue
            return True
        return False

    def operator(self, name: str) -> Record | None:
        return self._get(f"operator#{name}")

    def operators(self) -> list[Record]:
        items = pages(
            "scan",
            {
                "TableName": self.table,
                "FilterExpression": "begins_with(pk, :prefix)",
                "ExpressionAttributeValues": encode({":prefix": "operator#"}),
                "ConsistentRead": True,
            },
        )
        return sorted((_without_key(item) for item in items), key=lambda a: a["name"])

    def operator_by_token(self, token_hash: str) -> Record | None:
        pointer = self._get(f"token#{token_hash}")
        account = self.operator(pointer["name"]) if pointer else None
        return account if account and account["token_hash"] == token_hash else None

    def add_session(self, session_hash: str, session: Record) -> None:
        with errors():
            client("dynamodb").put_item(
                TableName=self.table,
                Item=encode(
                    {"pk": f"session#{session_hash}", **session, "expires_at": int(session["expires_at"]) + 1}
                ),
            )

    def session(self, session_hash: str) -> Record | None:
        return self._get(f"session#{session_hash}")  # TTL deletes late: the caller checks `expires_at`

    def remove_session(self, session_hash: str) -> None:
        with errors():
            client("dynamodb").delete_item(TableName=self.table, Key=self._key(f"session#{session_hash}"))

    def count_failure(self, key: str, window: int) -> int:
        with errors():
            answer = client("dynamodb").update_item(
                TableName=self.table,
                Key=self._key(f"failures#{key}#{window}"),
                UpdateExpression="ADD failures :one SET expires_at = if_not_exists(expires_at, :expires)",
                ExpressionAttributeValues=encode(
                    {":one": 1, ":expires": int(time.time()) + _KEEP_FAILURES_SECONDS}
                ),
                ReturnValues="UPDATED_NEW",
            )
        return int(answer["Attributes"]["failures"]["N"])

    def failures(self, key: str, window: int) -> int:
        item = self._get(f"failures#{key}#{window}")
        return int(item["failures"]) if item else 0

    def _get(self, pk: str) -> Record | None:
        with errors():
            item = (
                client("dynamodb")
                .get_item(TableName=self.table, Key=self._key(pk), ConsistentRead=True)
                .get("Item")
            )
        return _without_key(decode(item)) if item else None

    def _transact(self, *operations: dict[str, Any]) -> None:
        items = [
            {kind: {"TableName": self.table, **op}}
            for operation in operations
            for kind, op in operation.items()
        ]
        conditional("transact_write_items", TransactItems=items)

    def _key(self, pk: str) -> dict[str, Any]:
        return {"pk": {"S": pk}}


def _without_key(item: Record) -> Record:
    return {k: v for k, v in item.items() if k != "pk"}
