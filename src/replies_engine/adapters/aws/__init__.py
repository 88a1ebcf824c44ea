"""The AWS backend: DynamoDB, SQS and Secrets Manager through boto3."""

from .queue import SqsMessageQueue
from .secrets import SecretsManagerSecrets
from .store import DynamoConversationStore

__all__ = ["DynamoConversationStore", "SecretsManagerSecrets", "SqsMessageQueue"]
