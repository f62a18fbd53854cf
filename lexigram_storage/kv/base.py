"""What both key-value stores share: the key and namespace rule, JSON values, TTLs, glob
patterns and the health result."""

from __future__ import annotations

import fnmatch
import json
import math
import re
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from lexigram.contracts.core.health import HealthCheckResult, HealthStatus
from lexigram.contracts.infra.storage import StorageType

from lexigram_storage.errors import InvalidPathError, InvalidPayloadError

__all__ = ["Clock", "KVStoreBase", "Pattern"]

#: seconds since the epoch; expiry times are stored in this clock, so they survive a restart
Clock = Callable[[], float]

_GLOB_SPECIALS = re.compile(r"[*?\[]")


class Pattern:
    """A ``list_keys`` glob (``fnmatch`` rules, always case-sensitive): ``*`` any run, ``?`` one
    character, ``[abc]`` / ``[!abc]`` a set; ``[*]``, ``[?]`` and ``[[]`` match the character
    itself. ``prefix`` is the literal text before the first special character, so a store can
    narrow its scan to one key range; ``match`` is ``None`` when the prefix alone decides."""

    __slots__ = ("match", "prefix")

    prefix: str
    match: Callable[[str], Any] | None

    def __init__(self, pattern: str | None) -> None:
        if pattern is None:
            self.prefix, self.match = "", None
            return
        if not isinstance(pattern, str):
            raise TypeError(f"list_keys pattern must be a str, not {type(pattern).__name__}")
        if "\x00" in pattern or not _encodable(pattern):
            raise InvalidPathError(f"invalid list_keys pattern {pattern!r}: NUL characters and "
                                   "unpaired surrogates are not allowed", backend=KVStoreBase.backend)
        special = _GLOB_SPECIALS.search(pattern)
        self.prefix = pattern if special is None else pattern[:special.start()]
        rest = pattern[len(self.prefix):]
        self.match = None if rest == "*" else _compiled(pattern)

    def accepts(self, key: str) -> bool:
        return key.startswith(self.prefix) and (self.match is None or self.match(key) is not None)


@lru_cache(maxsize=256)
def _compiled(pattern: str) -> Callable[[str], Any]:
    return re.compile(fnmatch.translate(pattern)).match


class KVStoreBase:
    """Checks and conversions done the same way by ``InMemoryKVStorage`` and ``LocalStorage``.

    Keys are non-empty strings without NUL characters; ``namespace=None`` (or ``""``) is the
    default namespace, separate from every named one. Values are stored as JSON text, so what
    ``get`` returns is a fresh copy of the JSON round trip (tuples come back as lists)."""

    backend = "kv"

    def __init__(self, *, default_ttl: float | None = None, clock: Clock = time.time) -> None:
        if default_ttl is not None:
            _check_ttl(default_ttl, "default_ttl")
        self.default_ttl = default_ttl
        self.clock = clock

    @property
    def storage_type(self) -> StorageType:
        raise NotImplementedError

    def _key(self, key: str) -> str:
        if not isinstance(key, str):
            raise TypeError(f"{self.backend}: a key must be a str, not {type(key).__name__}")
        if not key or "\x00" in key or not _encodable(key):
            raise InvalidPathError("a key must be non-empty text without NUL characters or "
                                   "unpaired surrogates", backend=self.backend, key=key)
        return key

    def _namespace(self, namespace: str | None) -> str:
        if namespace is None:
            return ""
        if not isinstance(namespace, str):
            raise TypeError(f"{self.backend}: a namespace must be a str or None, "
                            f"not {type(namespace).__name__}")
        if "\x00" in namespace or not _encodable(namespace):
            raise InvalidPathError(f"invalid namespace {namespace!r}: NUL characters and "
                                   "unpaired surrogates are not allowed", backend=self.backend)
        return namespace

    def _encode(self, key: str, value: Any) -> str:
        try:
            _check_object_keys(value)
            return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError, RecursionError) as exc:  # type, NaN, key, cycle
            raise InvalidPayloadError(f"value is not JSON ({exc})", backend=self.backend,
                                      key=key, cause=exc) from exc

    def _expires_at(self, ttl: float | None) -> float | None:
        """The expiry time of a key set now with *ttl* seconds (``None``: ``default_ttl``)."""
        if ttl is None:
            ttl = self.default_ttl
            if ttl is None:
                return None
        else:
            _check_ttl(ttl, "ttl")
        return self.clock() + ttl

    def _health(self, started: float, error: str | None, details: dict[str, Any]) -> HealthCheckResult:
        elapsed = (time.perf_counter() - started) * 1000
        return HealthCheckResult(
            component=f"storage.{self.backend}",
            status=HealthStatus.UNHEALTHY if error else HealthStatus.HEALTHY,
            message=None if error else f"{self.storage_type.value} key-value store ready",
            error=error,
            duration_ms=elapsed,
            details={"storage_type": self.storage_type.value, **details},
        )


def _check_object_keys(value: Any) -> None:
    """Refuse a dict key that is not a ``str``: ``json.dumps`` would turn ``1`` into ``"1"``
    (so ``{1: "a", "1": "b"}`` would silently lose an entry, and no value would read back as
    it was set)."""
    if isinstance(value, dict):
        for name, item in value.items():
            if not isinstance(name, str):
                raise TypeError(f"object keys must be str, not {type(name).__name__} ({name!r})")
            _check_object_keys(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_object_keys(item)


def _check_ttl(ttl: float, name: str) -> None:
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise TypeError(f"{name} must be a number of seconds, not {type(ttl).__name__}")
    try:
        finite = math.isfinite(ttl)
    except OverflowError:  # an int too big for a float
        finite = False
    if not ttl > 0 or not finite:  # also rejects NaN
        raise ValueError(f"{name} must be a finite number of seconds above 0, not {ttl!r}")


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
