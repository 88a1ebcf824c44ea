"""Running the `replies-engine` command and a live `serve` as a person would, in subprocesses."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

EXE = shutil.which("replies-engine", path=os.path.dirname(sys.executable)) or "replies-engine"


def cli(
    env: dict[str, str], *args: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    result = subprocess.run([EXE, *args], capture_output=True, text=True, env=env, input=stdin, timeout=60)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def cli_json(env: dict[str, str], *args: str):
    return json.loads(cli(env, *args).stdout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen | None = None, log=None) -> None:
    """Until `serve` listens on `port` (20 s at most; a process that died fails at once, with its log)."""
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            assert process is None or process.poll() is None, log and (log.seek(0) or log.read())
            assert time.monotonic() < deadline, "serve did not start within 20 s"
            time.sleep(0.05)


@contextlib.contextmanager
def serving(env: dict[str, str]) -> Iterator[tuple[str, subprocess.Popen]]:
    """`replies-engine serve` on a free loopback port; yields (base URL, process); stops it after."""
    port = free_port()
    # a file, not a pipe: a busy engine's logs never fill it and block the engine
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(
            [EXE, "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=log, text=True
        )
        try:
            wait_for_port(port, process, log)
            yield f"http://127.0.0.1:{port}", process
        finally:
            if process.poll() is None:
                process.terminate()
            process.wait(timeout=30)


def post_signed(url: str, params: dict[str, str], channel: str = "whatsapp", signature: str | None = None):
    """POST a Twilio webhook to a running engine, signed for the URL it is posted to."""
    from urllib.parse import urlencode

    import httpx2 as httpx

    from .payloads import sign

    return httpx.post(
        f"{url}/{channel}",
        content=urlencode(params),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": signature or sign(f"{url}/{channel}", params),
        },
    )
