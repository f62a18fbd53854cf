"""Key-value storage (``StorageBackendProtocol`` from lexigram-contracts): small JSON records
under string keys, with namespaces and TTLs.

``InMemoryKVStorage()`` keeps them in the process; ``LocalStorage(base_path)`` in a SQLite
database under *base_path*, safe for several processes and against crashes.
"""

from __future__ import annotations

from lexigram.contracts.infra.storage import StorageBackendProtocol, StorageType

from lexigram_storage.kv.local import LocalStorage
from lexigram_storage.kv.memory import InMemoryKVStorage

__all__ = ["InMemoryKVStorage", "LocalStorage", "StorageBackendProtocol", "StorageType"]
