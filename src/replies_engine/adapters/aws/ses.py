"""Email replies through Amazon SES (v2 `SendEmail` with the raw message, so that it threads: see
`adapters/senders.reply_email`). The sender's address (or its domain) must be a verified SES identity."""

from __future__ import annotations

from typing import Any

from ...ports import AmbiguousSendError, PermanentSendError, TransientSendError
from ..senders import reply_email
from .clients import TRANSIENT_ERROR_CODES, client, error_code

_TRANSIENT = TRANSIENT_ERROR_CODES | {"TooManyRequestsException", "LimitExceededException"}


class SesSender:
    """`configuration_set`: the stack's, whose event destination tells `feedback.py` of bounces and
    complaints."""

    def __init__(self, configuration_set: str | None = None) -> None:
        self.configuration_set = configuration_set

    def send(self, note: dict[str, Any], part: int) -> str:
        """SES's message id of the part sent."""
        from email.utils import parseaddr

        from botocore.exceptions import ClientError, ConnectionError, ReadTimeoutError

        message = reply_email(note, part)
        try:
            # one attempt: botocore's own retry of a read timeout could send the reply twice
            return client("sesv2", attempts=1).send_email(
                FromEmailAddress=note["from"],
                Destination={
                    "ToAddresses": [parseaddr(note["to"])[1]],
                    **({"CcAddresses": [parseaddr(a)[1] for a in note["cc"]]} if note.get("cc") else {}),
                },
                Content={"Raw": {"Data": message.as_bytes()}},
                **({"ConfigurationSetName": self.configuration_set} if self.configuration_set else {}),
            )["MessageId"]
        except ClientError as exc:
            code = error_code(exc) or "unknown"
            kind = TransientSendError if code in _TRANSIENT else PermanentSendError
            raise kind(f"SES refused the reply: {code}: {exc}", code) from exc
        except ReadTimeoutError as exc:
            raise AmbiguousSendError(f"no answer from SES after the request: {exc}") from exc
        except ConnectionError as exc:  # connect timeouts and refused connections: nothing was sent
            raise TransientSendError(f"SES unreachable: {exc}") from exc

    def went_out(self, note: dict[str, Any], part: int) -> None:
        return None  # SES cannot be asked afterwards: a send in doubt is recorded, never resent
