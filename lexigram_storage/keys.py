"""The key rule: the single gate every object key and listing prefix passes, on every driver.

Keys are ``/``-separated relative names. Rejected (``InvalidPathError``), never repaired:
empty, absolute (``/x``), ``.`` or ``..`` segments, empty segments (``a//b``), a trailing ``/``,
backslashes, NUL and other control characters, lone surrogates (``"a\\ud800b"``: a ``str``
that is not valid Unicode has no UTF-8 form, so no backend can store it), more than 1024 UTF-8
bytes.
"""

from __future__ import annotations

import re

from lexigram_storage.errors import InvalidPathError

__all__ = ["MAX_KEY_BYTES", "validate_key", "validate_prefix"]

MAX_KEY_BYTES = 1024

# C0 controls, DEL and C1 controls.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Fast path: printable ASCII segments, none empty, none "." or "..", no edge slashes.
_SEGMENT = r"(?!\.\.?(?:/|$))[A-Za-z0-9_\-.+=@,:~!$&'()*;% ]+"
_SIMPLE = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT})*")
_simple = _SIMPLE.fullmatch


def _problem(key: str, *, prefix: bool) -> str | None:
    if not isinstance(key, str):
        return f"must be a str, not {type(key).__name__}"
    if not key:
        return None if prefix else "must not be empty"
    if len(key) > MAX_KEY_BYTES:
        return f"is longer than {MAX_KEY_BYTES} UTF-8 bytes"
    try:
        encoded = key.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode (no lone surrogates such as '\\ud800')"
    if len(encoded) > MAX_KEY_BYTES:
        return f"is longer than {MAX_KEY_BYTES} UTF-8 bytes"
    if key.startswith("/"):
        return "must be relative (no leading '/')"
    if "\\" in key:
        return "must not contain a backslash"
    if _CONTROL.search(key):
        return "must not contain NUL or control characters"
    segments = key.split("/")
    if prefix:
        segments = segments[:-1]  # the last segment of a prefix may be partial or empty
    for segment in segments:
        if segment == "":
            return "must not have empty segments ('//') or a trailing '/'"
        if segment in (".", ".."):
            return "must not contain '.' or '..' segments"
    return None


def validate_key(key: str, backend: str | None = None) -> str:
    """Return *key* unchanged if it is a valid object key, else raise ``InvalidPathError``."""
    if type(key) is str and len(key) <= MAX_KEY_BYTES and _simple(key):
        return key  # ASCII only, so characters are bytes
    problem = _problem(key, prefix=False)
    if problem is not None:
        raise InvalidPathError(f"invalid key: {problem}", backend=backend, key=str(key))
    return key


def validate_prefix(prefix: str, backend: str | None = None) -> str:
    """Validate a listing prefix: plain string-prefix semantics, so it may be empty, end in ``/``
    or end in the middle of a segment; otherwise the key rule applies."""
    problem = _problem(prefix, prefix=True)
    if problem is not None:
        raise InvalidPathError(f"invalid prefix: {problem}", backend=backend, key=str(prefix))
    return prefix
