"""Hand-off notices to an SNS topic (HANDOFF_TOPIC_ARN): email and SMS subscribers get the text."""

from __future__ import annotations

import json
from typing import Any

from .clients import client


class SnsNotifier:
    def __init__(self, topic_arn: str) -> None:
        self.topic_arn = topic_arn

    def notify(self, notice: dict[str, Any]) -> None:
        client("sns").publish(
            TopicArn=self.topic_arn,
            Subject=notice["subject"][:100],  # SNS's limit; email subscribers see it
            Message=json.dumps({"default": notice["text"], "sms": notice["text"][:140]}),
            MessageStructure="json",
            MessageAttributes={"kind": {"DataType": "String", "StringValue": notice["kind"]}},
        )
