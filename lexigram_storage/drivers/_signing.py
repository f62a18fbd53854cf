"""URLs signed with a shared secret, for any driver that serves its objects itself.

A signed URL is ``<base_url>/<quoted key>?method=<GET|PUT>&expires=<unix>&signature=<hex>``, the
signature the HMAC-SHA256 of ``"<method>\\n<key>\\n<expires>"`` under the secret. The expiry is
rounded up to the second, so a URL is valid for at least the time asked for.

``verify`` is the other half: a web app mounts a route on ``base_url``'s path and passes it the
full request URL and method; it returns the key, or raises ``StoragePermissionError`` for every
URL that was not signed with the secret for that method or has expired, however malformed
(bad percent-encoding, non-ASCII or huge numbers, missing or repeated parameters, a signature of
the wrong form, a key that is no longer valid). Signatures are compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import time
from datetime import timedelta
from urllib.parse import parse_qs, quote, unquote, urlsplit

from pydantic import SecretStr

from lexigram_storage.errors import InvalidPathError, StoragePermissionError
from lexigram_storage.keys import validate_key

__all__ = ["object_url", "presign", "secret_bytes", "verify"]

_METHODS = ("GET", "PUT")
_EXPIRES = re.compile(r"[1-9][0-9]{0,15}")  # ASCII digits: a unix time, no sign, no padding
_SIGNATURE = re.compile(r"[0-9a-f]{64}")  # hex HMAC-SHA256, as signed


def secret_bytes(secret: str | SecretStr | None) -> bytes | None:
    """The signing secret as bytes; ``None`` when none is set (empty counts as none)."""
    if isinstance(secret, SecretStr):
        secret = secret.get_secret_value()
    return secret.encode() if secret else None


def object_url(base_url: str, key: str) -> str:
    """The URL of *key* under *base_url* (no trailing slash): the key percent-quoted, its
    slashes kept."""
    return f"{base_url}/{quote(key, safe='/')}"


def _signature(secret: bytes, method: str, key: str, expires: int) -> str:
    message = f"{method}\n{key}\n{expires}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def presign(secret: bytes, base_url: str, key: str, method: str, expires_in: timedelta) -> str:
    """A URL granting *method* on *key* for at least *expires_in* (< 1 s more)."""
    expires = math.ceil(time.time() + expires_in.total_seconds())
    signature = _signature(secret, method, key, expires)
    return f"{object_url(base_url, key)}?method={method}&expires={expires}&signature={signature}"


def verify(secret: bytes, base_url: str, url: str, method: str, backend: str) -> str:
    """The key of *url* if it was signed with *secret* for *method* under *base_url* and has
    not expired; else ``StoragePermissionError`` (naming *backend*)."""
    key: str | None = None

    def refused(reason: str) -> StoragePermissionError:
        return StoragePermissionError(f"presigned URL {reason}", backend=backend, key=key)

    try:
        parts = urlsplit(url)
        base_path = urlsplit(base_url).path.rstrip("/") + "/"
        if not parts.path.startswith(base_path):
            raise refused("is not under this backend's base_url")
        key = unquote(parts.path[len(base_path):], errors="strict")
        query = parse_qs(parts.query, keep_blank_values=True, errors="strict")
    except (ValueError, UnicodeError) as exc:  # bad percent-encoding, bad netloc, ...
        raise refused("is malformed") from exc

    def one(name: str) -> str:
        values = query.get(name)
        if not values or len(values) != 1:
            raise refused(f"without a single {name!r}")
        return values[0]

    signed_method, expires_text, signature = one("method"), one("expires"), one("signature")
    if (signed_method not in _METHODS or not _EXPIRES.fullmatch(expires_text)
            or not _SIGNATURE.fullmatch(signature)):
        raise refused("is malformed")
    try:
        expected = _signature(secret, signed_method, key, int(expires_text))
    except UnicodeError as exc:  # a key that is no text (lone surrogates)
        raise refused("is malformed") from exc
    if not hmac.compare_digest(expected, signature):
        raise refused("signature does not match")
    if signed_method != method.upper():
        raise refused(f"was signed for {signed_method}, not {method.upper()}")
    if int(expires_text) < time.time():
        raise refused("has expired")
    try:  # (a key signed before the key rule changed)
        validate_key(key, backend)
    except InvalidPathError as exc:
        raise refused("names a key this driver no longer accepts") from exc
    return key
