"""API keys: who is calling. Keys are compared in constant time and never logged or stored.

With ``server.api_keys`` empty the API is open and every caller is the account ''. With
keys, every ``/v1`` request names one (``Authorization: Bearer <key>``); the account is a
digest of the key, so jobs and links belong to the key that made them and the store
never holds a key.
"""
import hashlib
import hmac
from typing import Optional, Sequence

from .errors import UploaderError

OPEN = ""  # the account of every caller when no keys are configured


class Unauthorized(UploaderError):
    """No API key, or one the service does not know."""


def account_of(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def account_for(authorization: Optional[str], keys: Sequence[str]) -> str:
    """The account an ``Authorization`` header proves, or ``Unauthorized``."""
    if not keys:
        return OPEN
    scheme, _, given = (authorization or "").partition(" ")
    given = given.strip()
    if scheme.lower() != "bearer" or not given:
        raise Unauthorized("this service needs an API key: send Authorization: Bearer <key>")
    matched = False
    for key in keys:  # every key is compared, so the time says nothing about which matched
        matched |= hmac.compare_digest(key.encode(), given.encode())
    if not matched:
        raise Unauthorized("this API key is not valid")
    return account_of(given)
