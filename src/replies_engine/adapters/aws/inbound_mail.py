"""Inbound mail as Amazon SES's receipt rule stores it: one S3 object per mail, at the rule's key prefix
followed by SES's message id."""

from __future__ import annotations

from ...ports import BackendError, MailGone, TransientBackendError
from .clients import client, error_code, translated_errors

_GONE = frozenset({"NoSuchKey"})  # (without s3:ListBucket S3 answers AccessDenied instead)


class S3InboundMail:
    def __init__(self, bucket: str, prefix: str = "") -> None:
        self.bucket = bucket
        self.prefix = prefix

    def read(self, message_id: str) -> bytes:
        from botocore.exceptions import ClientError

        key = self.prefix + message_id
        with translated_errors(BackendError, TransientBackendError):
            try:
                return client("s3").get_object(Bucket=self.bucket, Key=key)["Body"].read()
            except ClientError as exc:
                if error_code(exc) in _GONE:  # SES never wrote it, or the lifecycle rule expired it
                    raise MailGone(f"s3://{self.bucket}/{key} is gone ({error_code(exc)})") from exc
                raise
