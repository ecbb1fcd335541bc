"""S3-compatible object storage as an image host (AWS S3, R2, B2, Spaces, Ceph, Garage, ...).

One object per distinct image, named by its bytes: the key is ``prefix`` + the SHA-256
(hex) of the bytes stored + "." + the sniffed extension, and the link is
``s3.link_base`` + "/" + key. A retried upload, or two instances uploading one image,
write the same key with the same bytes: harmless. So a key never names other bytes, and
every object is sent as immutable (``Cache-Control``), with its sniffed Content-Type.

The client is boto3's, one per process (thread-safe), configured for what the rest of
the service expects:
- no checksum headers unless an operation requires one (``when_required``): since boto3
  1.36 every upload carries CRC headers by default, which many S3-compatible stores
  reject (the body stays signed: SigV4's payload hash);
- botocore's own retries off: the upload policy (``hosts.citizen``) retries, so every
  attempt is counted, shown and paced with the rest of the pool;
- short connect and read timeouts.

Every failure becomes a ``HostError`` whose reason names the bucket and the cause; no
secret ever reaches one (nor a log line).
"""
import hashlib
import logging
import os
import re
import secrets
import threading
import urllib.parse

import boto3
from botocore.config import Config
from botocore.exceptions import (BotoCoreError, ClientError, ConnectTimeoutError,
                                 HTTPClientError, NoCredentialsError, PartialCredentialsError,
                                 ReadTimeoutError)
from botocore.exceptions import ConnectionError as BotoConnectionError

from ..errors import AuthRejectedError, PermanentHostError, RetryableHostError
from . import Uploaded, retry_after_seconds

log = logging.getLogger(__name__)

CACHE_CONTROL = "public, max-age=31536000, immutable"
CONNECT_TIMEOUT_SECONDS = 5.0
READ_TIMEOUT_SECONDS = 30.0
MAX_ATTEMPTS = 5  # tries of one upload, by the upload policy
BACKOFF_SECONDS = (1.0, 20.0)  # first retry's jitter window, longest wait (as AWS's SDKs)
KEY = re.compile(r"[0-9a-f]{64}\.[a-z0-9]{1,5}")  # what follows the prefix in our keys

# Codes that say our credentials are refused: no retry can help.
REFUSED = {
    "AccessDenied": "access denied: check the key's permissions and the bucket policy",
    "InvalidAccessKeyId": "the access key id is unknown to the store: check s3.access_key_id",
    "SignatureDoesNotMatch": "the request signature does not match: check s3.secret_access_key",
    "InvalidToken": "the session token is invalid",
    "ExpiredToken": "the session token has expired",
    "AllAccessDisabled": "all access to the bucket is disabled",
}
EXPLAINED = {
    "NoSuchBucket": "no such bucket: create it, or check s3.bucket and s3.endpoint_url",
    "PermanentRedirect": "the bucket lives elsewhere: check s3.region and s3.endpoint_url",
    "AuthorizationHeaderMalformed": "the request names the wrong region: check s3.region",
    **REFUSED,
}
SLOW_DOWN = {"SlowDown", "TooManyRequests", "RequestLimitExceeded"}  # the whole pool waits
TRANSIENT_4XX = {"RequestTimeout"}  # S3 answers 400 when the body came too slowly
MAX_REASON_CHARS = 200


_session = None
_session_lock = threading.Lock()


def new_client(**settings):
    """A boto3 S3 client (thread-safe). Every client of a process comes from one session
    (not thread-safe itself: made and used under a lock), so the first costs a few tenths
    of a second (loading the service's model) and the next a few hundredths."""
    global _session
    with _session_lock:
        if _session is None:
            _session = boto3.session.Session()
        return _session.client("s3", **settings)


def client_config(*, addressing_style: str = "auto", pool_size: int = 10,
                  connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
                  read_timeout: float = READ_TIMEOUT_SECONDS) -> Config:
    """botocore's settings for every client of the service (see the module docstring)."""
    return Config(request_checksum_calculation="when_required",
                  response_checksum_validation="when_required",
                  s3={"addressing_style": addressing_style},
                  retries={"total_max_attempts": 1, "mode": "standard"},
                  connect_timeout=connect_timeout, read_timeout=read_timeout,
                  max_pool_connections=pool_size)


class S3Host:
    """Uploads images as objects of one bucket; ``delete`` removes them again."""

    name = "s3"
    label = "S3"

    def __init__(self, *, bucket: str, link_base: str, region: str = "us-east-1",
                 endpoint_url: str = "", prefix: str = "", addressing_style: str = "auto",
                 access_key_id: str = "", secret_access_key: str = "", pool_size: int = 10,
                 connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
                 read_timeout: float = READ_TIMEOUT_SECONDS):
        self.bucket = bucket
        self.prefix = prefix
        self.link_base = link_base.rstrip("/")
        self.where = endpoint_url or f"AWS S3 ({region})"
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self._secrets = tuple(s for s in (access_key_id, secret_access_key) if len(s) >= 4)
        credentials = {}
        if access_key_id:  # else boto3's chain: its environment variables, files, a role
            credentials = {"aws_access_key_id": access_key_id,
                           "aws_secret_access_key": secret_access_key}
        self.client = new_client(
            region_name=region, endpoint_url=endpoint_url or None,
            config=client_config(addressing_style=addressing_style, pool_size=pool_size,
                                 connect_timeout=connect_timeout, read_timeout=read_timeout),
            **credentials)

    @classmethod
    def from_config(cls, s3, **settings) -> "S3Host":
        """The host an ``S3Config`` describes; ``settings``: pool size, timeouts."""
        return cls(bucket=s3.bucket, link_base=s3.link_base, region=s3.region,
                   endpoint_url=s3.endpoint_url, prefix=s3.prefix,
                   addressing_style=s3.addressing_style, access_key_id=s3.access_key_id,
                   secret_access_key=s3.secret_access_key, **settings)

    def key_for(self, data: bytes, filename: str) -> str:
        ext = os.path.splitext(filename)[1].lstrip(".").lower() or "bin"
        return f"{self.prefix}{hashlib.sha256(data).hexdigest()}.{ext}"

    def upload(self, data: bytes, *, filename: str, mime: str) -> Uploaded:
        """PUT the bytes under their own key; the link is where the key is served."""
        key = self.key_for(data, filename)
        self._call("put_object", Bucket=self.bucket, Key=key, Body=data, ContentType=mime,
                   CacheControl=CACHE_CONTROL)
        return Uploaded(link=f"{self.link_base}/{urllib.parse.quote(key, safe='/~')}",
                        deletehash=key)

    def delete(self, deletehash: str) -> bool:
        """Remove an object this host stored (``deletehash`` is its key). S3 answers the
        same whether or not it was there, so this is True for any key of ours; False for
        a name that is not one (never sent)."""
        if not (deletehash.startswith(self.prefix)
                and KEY.fullmatch(deletehash[len(self.prefix):])):
            return False
        self._call("delete_object", Bucket=self.bucket, Key=deletehash)
        return True

    def probe(self) -> None:
        """Write a small object and delete it again: the bucket exists and we may write
        and delete there. Raises a ``HostError`` saying which step failed and why."""
        key = f"{self.prefix}.image-service-probe-{secrets.token_hex(8)}"
        self._call("put_object", Bucket=self.bucket, Key=key, Body=b"probe",
                   ContentType="text/plain", doing="cannot write a probe object")
        self._call("delete_object", Bucket=self.bucket, Key=key,
                   doing=f"wrote a probe object but cannot delete it ({key}: remove it by hand)")

    def _call(self, operation: str, *, doing: str = "", **params):
        """One request; every failure becomes a ``HostError`` naming the bucket."""
        try:
            return getattr(self.client, operation)(**params)
        except ClientError as exc:
            raise self._refusal(exc, doing) from None
        except (ConnectTimeoutError, ReadTimeoutError) as exc:  # its text names the URL
            seconds = self.connect_timeout if isinstance(exc, ConnectTimeoutError) \
                else self.read_timeout
            raise RetryableHostError(self._reason(
                doing, f"timed out after {seconds:g} s: {self._scrub(str(exc))}")) from None
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise AuthRejectedError(self._reason(
                doing, f"no credentials: set s3.access_key_id and s3.secret_access_key, or "
                       f"give boto3 some (env AWS_ACCESS_KEY_ID, ...) ({type(exc).__name__})")) \
                from None
        except (HTTPClientError, BotoConnectionError) as exc:  # refused, reset, closed, DNS
            raise RetryableHostError(self._reason(
                doing, f"unreachable: {self._scrub(str(exc))}")) from None
        except BotoCoreError as exc:
            raise PermanentHostError(self._reason(
                doing, f"{type(exc).__name__}: {self._scrub(str(exc))}")) from None

    def _refusal(self, exc: ClientError, doing: str):
        """The store's error answer as a host error: refused credentials and a missing
        bucket fail at once, a SlowDown pauses everyone, 5xx are tried again."""
        error = exc.response.get("Error", {})
        meta = exc.response.get("ResponseMetadata", {})
        code = str(error.get("Code") or "")
        status = meta.get("HTTPStatusCode") or 0
        said = EXPLAINED.get(code) or " ".join(str(error.get("Message") or "").split()) \
            or "no reason given"
        reason = self._reason(doing, f"{said} ({code + ', ' if code else ''}HTTP {status})")
        if code in REFUSED:
            return AuthRejectedError(reason)
        if code in SLOW_DOWN or status == 429:
            return RetryableHostError(reason, retry_after=retry_after_seconds(
                (meta.get("HTTPHeaders") or {}).get("retry-after")),
                                      pool_wide=True)
        if status >= 500 or code in TRANSIENT_4XX:
            return RetryableHostError(reason)
        return PermanentHostError(reason)

    def _reason(self, doing: str, said: str) -> str:
        """What failed: the bucket (and, for a step other than an image's, where and which
        step), and why."""
        where = f" at {self.where}: {doing}" if doing else ""
        return self._scrub(f"S3 bucket '{self.bucket}'{where}: {said[:MAX_REASON_CHARS]}")

    def _scrub(self, text: str) -> str:
        """Blank out a credential a store (or a library message) might echo back."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

