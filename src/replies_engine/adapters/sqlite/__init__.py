"""The embedded backend: conversations and queues in one SQLite file."""

from .database import Database
from .outbox import SqliteOutbox
from .queue import SqliteMessageQueue
from .secrets import LocalSecrets
from .store import SqliteConversationStore

__all__ = ["Database", "LocalSecrets", "SqliteConversationStore", "SqliteMessageQueue", "SqliteOutbox"]
