"""``InMemoryKVStorage``: key-value storage in a dict of the process (tests, caches)."""

from __future__ import annotations

import json
import time
from typing import Any

from lexigram.contracts.core.health import HealthCheckResult
from lexigram.contracts.infra.storage import StorageType

from lexigram_storage.kv.base import Clock, KVStoreBase, Pattern

__all__ = ["InMemoryKVStorage"]

#: sets between two sweeps of the expired keys
_SWEEP_EVERY = 1000


class InMemoryKVStorage(KVStoreBase):
    """``StorageBackendProtocol`` in memory: nothing survives the process.

    Works without ``connect()``; use it from one event loop (it has no lock). Values are kept as
    JSON text, so every ``get`` returns a new object and a non-JSON value fails at ``set``, as
    with ``LocalStorage``.

    Args:
        default_ttl: seconds a key lives when ``set`` gets no ``ttl``; ``None``: forever.
        clock: the time in seconds since the epoch (``time.time``); tests may pass their own.
    """

    def __init__(self, *, default_ttl: float | None = None, clock: Clock = time.time) -> None:
        super().__init__(default_ttl=default_ttl, clock=clock)
        # namespace -> key -> (JSON text, expiry time or None)
        self._data: dict[str, dict[str, tuple[str, float | None]]] = {}
        self._expiring: dict[tuple[str, str], float] = {}
        self._sets = 0

    @property
    def storage_type(self) -> StorageType:
        return StorageType.MEMORY

    async def connect(self) -> None:
        return None

    async def disconnect(self) -> None:
        return None

    async def get(self, key: str, namespace: str | None = None) -> Any | None:
        entry = self._live(self._namespace(namespace), self._key(key))
        return None if entry is None else json.loads(entry[0])

    async def set(self, key: str, value: Any, namespace: str | None = None,
                  ttl: float | None = None) -> bool:
        ns, key = self._namespace(namespace), self._key(key)
        text = self._encode(key, value)
        expires_at = self._expires_at(ttl)
        self._data.setdefault(ns, {})[key] = (text, expires_at)
        if expires_at is None:
            self._expiring.pop((ns, key), None)
        else:
            self._expiring[(ns, key)] = expires_at
        self._sets += 1
        if self._sets % _SWEEP_EVERY == 0:
            self._sweep()
        return True

    async def delete(self, key: str, namespace: str | None = None) -> bool:
        ns, key = self._namespace(namespace), self._key(key)
        alive = self._live(ns, key) is not None
        if alive:
            del self._data[ns][key]
            self._expiring.pop((ns, key), None)
        return alive

    async def exists(self, key: str, namespace: str | None = None) -> bool:
        return self._live(self._namespace(namespace), self._key(key)) is not None

    async def list_keys(self, pattern: str | None = None,
                        namespace: str | None = None) -> list[str]:
        keys = self._data.get(self._namespace(namespace), {})
        glob = Pattern(pattern)
        now = self.clock()
        return sorted(k for k, (_, expires_at) in keys.items()
                      if (expires_at is None or expires_at > now) and glob.accepts(k))

    async def clear(self, namespace: str | None = None) -> bool:
        ns = self._namespace(namespace)
        for key in self._data.pop(ns, {}):
            self._expiring.pop((ns, key), None)
        return True

    async def health_check(self, timeout: float = 5.0) -> HealthCheckResult:
        started = time.perf_counter()
        return self._health(started, None, {"keys": sum(map(len, self._data.values()))})

    def _live(self, ns: str, key: str) -> tuple[str, float | None] | None:
        """The entry of *key*, or ``None`` if it is absent or expired (then it is dropped)."""
        entry = self._data.get(ns, {}).get(key)
        if entry is None or entry[1] is None or entry[1] > self.clock():
            return entry
        del self._data[ns][key]
        del self._expiring[(ns, key)]
        return None

    def _sweep(self) -> None:
        now = self.clock()
        for ns, key in [nk for nk, expires_at in self._expiring.items() if expires_at <= now]:
            del self._data[ns][key]
            del self._expiring[(ns, key)]
