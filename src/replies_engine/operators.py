"""Operators are accounts: each has a name, a role and a personal token, kept only as its hash.

`agent`s reply, hand off, hand back and claim conversations; `admin`s also redrive dead-letter queues
and manage accounts. A token is shown once, when the account is made or reset (`replies-engine
operators add|reset NAME`); it is sent as `Authorization: Bearer …` by scripts, or exchanged on the
inbox's login form (name and token) for a page session that expires (OPERATOR_SESSION_HOURS) and stops
working at once when the account is removed or its token reset. Failed logins are counted per account
and per address in 15-minute windows; past the limits, logins are refused (429) until the window ends.

Tokens are 256 random bits, so a fast hash (SHA-256) is what keeps them: a slow password hash (argon2,
bcrypt) protects guessable secrets, and nobody chooses these. `OPERATOR_TOKEN` stays a bootstrap admin
credential for scripts and the first login, acting as the operator `operator-token`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any

from . import clock
from .ports import Runtime

AGENT, ADMIN = "agent", "admin"
ROLES = (AGENT, ADMIN)
TOKEN_OPERATOR = "operator-token"  # who OPERATOR_TOKEN acts as
LOCAL_OPERATOR = "local"  # who a loopback-only inbox without OPERATOR_TOKEN acts as
_RESERVED = frozenset({TOKEN_OPERATOR, LOCAL_OPERATOR})
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
WINDOW_SECONDS = 900
MAX_FAILURES_PER_ACCOUNT = 10  # in a window: a guess at one account's token
MAX_FAILURES_PER_ADDRESS = 30  # in a window: guesses from one address, at any account


@dataclass(frozen=True)
class Operator:
    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN


class OperatorsError(Exception):
    """A refusal with its HTTP status (400, 401, 403, 404, 409, 429) and a reason that names no secret."""

    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


def hashed(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


# --- accounts (the command line) ---------------------------------------------------------------------


def add(runtime: Runtime, name: str, role: str = AGENT) -> dict[str, str]:
    """A new account: `{"name", "role", "token"}`, the token shown this once."""
    name, token = _checked_name(name), _new_token()
    if role not in ROLES:
        raise OperatorsError(400, f"role {role!r} is not one of {', '.join(ROLES)}")
    account = {"name": name, "role": role, "token_hash": hashed(token), "created_at": clock.iso()}
    if not runtime.operators.add_operator(account):
        raise OperatorsError(409, f"an operator named {name!r} exists: reset its token instead")
    return {"name": name, "role": role, "token": token}


def reset(runtime: Runtime, name: str) -> dict[str, str]:
    """A new token for the account; the old one and its sessions stop working at once."""
    token = _new_token()
    account = runtime.operators.replace_token(_checked_name(name), hashed(token))
    if account is None:
        raise OperatorsError(404, f"no operator named {name!r}")
    return {"name": account["name"], "role": account["role"], "token": token}


def remove(runtime: Runtime, name: str) -> dict[str, Any]:
    if not runtime.operators.remove_operator(_checked_name(name)):
        raise OperatorsError(404, f"no operator named {name!r}")
    return {"name": name, "removed": True}


def accounts(runtime: Runtime) -> list[dict[str, Any]]:
    return [
        {"name": a["name"], "role": a["role"], "created_at": a.get("created_at")}
        for a in runtime.operators.operators()
    ]


# --- who is asking (the inbox) -----------------------------------------------------------------------


def by_token(runtime: Runtime, token: str, address: str) -> Operator:
    """The operator a bearer token is; OperatorsError 401 (429 past the address's failed attempts)."""
    _not_blocked(runtime, [f"address:{address}"])
    bootstrap = runtime.settings.operator_token
    if bootstrap and hmac.compare_digest(token.encode(), bootstrap.encode()):
        return Operator(TOKEN_OPERATOR, ADMIN)
    account = runtime.operators.operator_by_token(hashed(token)) if token else None
    if account is None:
        _failed(runtime, [f"address:{address}"])
        raise OperatorsError(401, "missing or wrong operator token")
    return Operator(account["name"], account["role"])


def login(runtime: Runtime, name: str, token: str, address: str) -> tuple[str, Operator]:
    """A page session for the account whose name and token these are: its id (the cookie's value) and
    the operator. OperatorsError 401 for a wrong pair, 429 past the failed attempts' limits."""
    name = (name or "").strip().lower()
    keys = [f"address:{address}", f"account:{name[:64]}"]
    _not_blocked(runtime, keys)
    bootstrap = runtime.settings.operator_token
    if bootstrap and name in ("", TOKEN_OPERATOR) and hmac.compare_digest(token.encode(), bootstrap.encode()):
        operator, credential = Operator(TOKEN_OPERATOR, ADMIN), hashed(bootstrap)
    else:
        account = runtime.operators.operator(name) if _NAME.fullmatch(name) else None
        if account is None or not hmac.compare_digest(account["token_hash"], hashed(token)):
            _failed(runtime, keys)
            raise OperatorsError(401, "that name and token do not match an operator")
        operator, credential = Operator(account["name"], account["role"]), account["token_hash"]
    session = secrets.token_urlsafe(32)
    expires_at = clock.now() + runtime.settings.operator_session_hours * 3600
    runtime.operators.add_session(
        hashed(session),
        {"name": operator.name, "role": operator.role, "credential": credential, "expires_at": expires_at},
    )
    return session, operator


def logout(runtime: Runtime, session: str) -> None:
    runtime.operators.remove_session(hashed(session))


def by_session(runtime: Runtime, session: str) -> Operator | None:
    """The operator of a live page session; None when it expired, or its account was removed or reset."""
    found = runtime.operators.session(hashed(session)) if session else None
    if found is None or found["expires_at"] <= clock.now():
        return None
    if found["name"] == TOKEN_OPERATOR:
        bootstrap = runtime.settings.operator_token
        live = bootstrap is not None and hmac.compare_digest(found["credential"], hashed(bootstrap))
    else:
        account = runtime.operators.operator(found["name"])
        live = account is not None and hmac.compare_digest(found["credential"], account["token_hash"])
        found = {**found, "role": account["role"]} if account else found
    return Operator(found["name"], found["role"]) if live else None


def _not_blocked(runtime: Runtime, keys: list[str]) -> None:
    window = int(clock.now() // WINDOW_SECONDS)
    for key in keys:
        limit = MAX_FAILURES_PER_ADDRESS if key.startswith("address:") else MAX_FAILURES_PER_ACCOUNT
        if runtime.operators.failures(key, window) >= limit:
            retry = int((window + 1) * WINDOW_SECONDS - clock.now()) + 1
            raise OperatorsError(429, "too many failed logins: try again later", retry_after=retry)


def _failed(runtime: Runtime, keys: list[str]) -> None:
    window = int(clock.now() // WINDOW_SECONDS)
    for key in keys:
        runtime.operators.count_failure(key, window)


def _checked_name(name: str) -> str:
    name = (name or "").strip().lower()
    if not _NAME.fullmatch(name):
        raise OperatorsError(
            400, "a name is 1 to 64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit"
        )
    if name in _RESERVED:
        raise OperatorsError(400, f"{name!r} is reserved")
    return name


def _new_token() -> str:
    return "reo_" + secrets.token_urlsafe(32)
