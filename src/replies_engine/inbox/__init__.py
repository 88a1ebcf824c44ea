"""The operators' inbox (`/inbox`) and its JSON API (`/api/*`): one handler of API Gateway events, run by
the stack's `OperatorInbox` function and by `replies-engine serve` alike (`app.py`)."""
