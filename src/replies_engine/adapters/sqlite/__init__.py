"""The embedded backend: conversations and queues in one SQLite file."""

from .database import Database
from .outbox import SqliteOutbox
from .queue import SqliteMessageQueue
from .store import SqliteConversationStore

__all__ = ["Database", "SqliteConversationStore", "SqliteMessageQueue", "SqliteOutbox"]
