"""The AWS backend: DynamoDB, SQS and Secrets Manager through boto3."""

from .queue import SqsMessageQueue
from .secrets import twilio_credentials
from .store import DynamoConversationStore

__all__ = ["DynamoConversationStore", "SqsMessageQueue", "twilio_credentials"]
