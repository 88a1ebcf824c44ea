"""The reply stage's HTTP client: what the AI responders and the transcriber share."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..ports import CallCancelled

if TYPE_CHECKING:
    import httpx2

BACKOFF_SECONDS = 0.5  # before the 2nd attempt; doubled before each next one, with jitter
MAX_BACKOFF_SECONDS = 20.0  # cap on any wait between attempts, a server's Retry-After included


class ResponderError(RuntimeError):
    """The responder could not produce a reply (the batch is retried). `status`: the server's HTTP
    status when it refused the request for good (a 4xx other than 429)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class IncompleteAnswer(Exception):
    """A streamed answer that broke off, or carried an error mid-way: a failed attempt, asked again."""


class RetryingHttpClient:
    """POSTs over one pooled httpx2 client (connections reused, safe to share between threads). An
    attempt that fails on a connection error, a timeout, 429 or 5xx is retried after a backoff (the
    server's Retry-After when it sends one), up to `attempts` in all; other errors are not retried."""

    def __init__(
        self,
        timeout_seconds: float = 30,
        attempts: int = 3,
        connect_timeout_seconds: float = 5,
        max_connections: int = 64,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.timeout_seconds = timeout_seconds
        self.attempts = attempts
        self.connect_timeout_seconds = connect_timeout_seconds
        self.max_connections = max_connections  # one per reply in flight: none waits for a connection
        self._http: httpx2.Client | None = None  # made on first use: importing httpx2 slows a cold start
        self._lock = threading.Lock()

    @property
    def max_seconds(self) -> float:
        """Worst-case duration of a `post`: every attempt connecting and waiting for the answer up to
        its timeouts, and the longest wait between attempts (with at most `max_connections` calls at
        once on this instance: more would also wait for a free connection)."""
        attempt = self.connect_timeout_seconds + self.timeout_seconds
        return self.attempts * attempt + (self.attempts - 1) * MAX_BACKOFF_SECONDS

    def post(
        self,
        url: str,
        *,
        deadline: float | None = None,
        stream: Callable[[httpx2.Response, float], Any] | None = None,
        cancelled: threading.Event | None = None,
        **request: Any,
    ) -> Any:
        """The first successful answer to `request` (httpx2's `headers`, `json`, `content`, `files`…);
        ResponderError when every attempt failed or one failed for good. With a `deadline`
        (`time.monotonic()`), no attempt waits past it. With `stream`, what it makes of the answer
        while it arrives, given when the attempt's time is up (the request is closed when it returns
        or raises; a failure to read it is a failed attempt). Once `cancelled` is set, no attempt
        begins: CallCancelled."""
        import httpx2

        for attempt in range(1, self.attempts + 1):
            if cancelled is not None and cancelled.is_set():
                raise CallCancelled(asked=attempt > 1)
            # an attempt's time as `max_seconds` counts it (a streamed answer's whole, not each chunk's)
            ends = time.monotonic() + self.connect_timeout_seconds + self.timeout_seconds
            retry_after = None
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ResponderError(f"{url}: no time left (after {attempt - 1} attempts)")
                request["timeout"] = httpx2.Timeout(
                    min(self.timeout_seconds, left), connect=min(self.connect_timeout_seconds, left)
                )
            try:
                if stream is None:
                    response = self._client().post(url, **request)
                else:
                    with self._client().stream("POST", url, **request) as response:
                        if response.is_success:
                            return stream(response, ends if deadline is None else min(ends, deadline))
                        response.read()  # the error's text, below
            except (
                httpx2.TimeoutException,
                httpx2.NetworkError,
                httpx2.RemoteProtocolError,
                IncompleteAnswer,
            ) as exc:
                failure = f"{type(exc).__name__}: {exc}"
            except httpx2.HTTPError as exc:
                raise ResponderError(f"{url}: {type(exc).__name__}: {exc}") from exc
            else:
                if response.is_success:
                    return response
                failure = f"HTTP {response.status_code} {response.text[:200]!r}"
                if response.status_code != 429 and response.status_code < 500:
                    raise ResponderError(f"{url}: {failure}", status=response.status_code)
                retry_after = _retry_after(response.headers.get("Retry-After"))
            if attempt == self.attempts:
                break
            if retry_after is None:
                retry_after = BACKOFF_SECONDS * 2 ** (attempt - 1) * random.uniform(0.5, 1)
            wait = min(retry_after, MAX_BACKOFF_SECONDS)
            if deadline is not None and time.monotonic() + wait >= deadline:
                break
            if cancelled is not None and cancelled.wait(wait):
                raise CallCancelled()
            if cancelled is None:
                time.sleep(wait)
        raise ResponderError(f"{url}: {failure} (after {attempt} attempts)")

    def _client(self) -> httpx2.Client:
        with self._lock:
            if self._http is None:
                import httpx2

                self._http = httpx2.Client(
                    timeout=httpx2.Timeout(self.timeout_seconds, connect=self.connect_timeout_seconds),
                    limits=httpx2.Limits(
                        max_connections=self.max_connections, max_keepalive_connections=self.max_connections
                    ),
                )
            return self._http


class OpenAICompatibleClient(RetryingHttpClient):
    """One endpoint (`path`) of an OpenAI-compatible API at `base_url`, for `model`, the key sent as a
    bearer token."""

    path = ""

    def __init__(self, base_url: str, api_key: str | None, model: str, **client: Any) -> None:
        super().__init__(**client)
        self.url = f"{base_url}{self.path}"
        self.api_key = api_key
        self.model = model

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


def _retry_after(value: str | None) -> float | None:
    """The seconds a Retry-After header asks to wait (a number or an HTTP date); None if absent or bad."""
    from email.utils import parsedate_to_datetime

    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
