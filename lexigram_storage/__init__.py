"""lexigram_storage: blob storage for the lexigram framework.

One API (``BlobStoreProtocol`` plus copy/move/batch operations) over memory, local disk,
Amazon S3, Cloudflare R2, Google Cloud Storage and Azure Blob Storage, bound into the
DI container by ``StorageModule``, with domain events and a conformance suite every driver
passes. Key-value storage (``StorageBackendProtocol``) is in ``lexigram_storage.kv``.

The drivers are imported on first use (``from lexigram_storage import S3Driver``), so an
optional SDK is needed only by the code that uses its driver: without aioboto3 that import
raises an ``ImportError`` naming ``pip install "lexigram_storage[s3]"`` (``[gcs]`` for
``GCSDriver``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lexigram.contracts.infra.storage import BlobStoreProtocol, FileInfo, UploadOptions

from lexigram_storage.capabilities import Capability
from lexigram_storage.config import (
    EncryptionConfig,
    NamedStorageConfig,
    StorageAzureConfig,
    StorageConfig,
    StorageDriversConfig,
    StorageEventsConfig,
    StorageGCSConfig,
    StorageKVConfig,
    StorageLocalConfig,
    StorageMemoryConfig,
    StorageOperationConfig,
    StorageR2Config,
    StorageS3Config,
)
from lexigram_storage.drivers.base import BaseDriver
from lexigram_storage.drivers.memory import MemoryDriver
from lexigram_storage.errors import (
    ChecksumMismatchError,
    InvalidPathError,
    InvalidPayloadError,
    InvalidUploadOptionError,
    PreconditionFailedError,
    QuotaExceededError,
    StorageBootError,
    StorageBucketNotFoundError,
    StorageConfigurationError,
    StorageError,
    StorageFileNotFoundError,
    StoragePartialDeleteError,
    StoragePermissionError,
    StorageRequestRejectedError,
    StorageUnavailableError,
    StorageUnsupportedOperationError,
)
from lexigram_storage.events import (
    HOOK_OBJECT_DELETED,
    HOOK_OBJECT_STORED,
    FileDeletedEvent,
    FileDownloadedEvent,
    FileUploadedEvent,
    ObjectDeletedHook,
    ObjectStoredHook,
    StorageEvents,
)
from lexigram_storage.models import DirListing, ObjectInfo
from lexigram_storage.provider import StorageProvider
from lexigram_storage.registry import DriverContext, DriverRegistry

if TYPE_CHECKING:
    from lexigram_storage.drivers.azure import AzureDriver as AzureDriver
    from lexigram_storage.drivers.gcs import GCSDriver as GCSDriver
    from lexigram_storage.drivers.local import LocalDriver as LocalDriver
    from lexigram_storage.drivers.s3 import R2Driver as R2Driver
    from lexigram_storage.drivers.s3 import S3Driver as S3Driver
    from lexigram_storage.module import StorageModule as StorageModule

# Loaded on first access: name -> module holding it. The drivers, so that an optional SDK is
# needed only by the code that uses its driver; and StorageModule, because lexigram's @module
# decorator logs a DEBUG "module_decorated" line when it is applied, and at import time no
# logging is configured yet, so structlog's default prints that line to stdout: importing
# lexigram_storage (the command line, a script) must not print anything. An application that
# imports StorageModule gets the line like every lexigram module's (configure_logging first).
_LAZY = {
    "AzureDriver": "lexigram_storage.drivers.azure",
    "LocalDriver": "lexigram_storage.drivers.local",
    "S3Driver": "lexigram_storage.drivers.s3",
    "R2Driver": "lexigram_storage.drivers.s3",
    "GCSDriver": "lexigram_storage.drivers.gcs",
    "StorageModule": "lexigram_storage.module",
}

__all__ = [
    "HOOK_OBJECT_DELETED",
    "HOOK_OBJECT_STORED",
    "BaseDriver",
    "BlobStoreProtocol",
    "Capability",
    "ChecksumMismatchError",
    "DirListing",
    "DriverContext",
    "DriverRegistry",
    "EncryptionConfig",
    "FileDeletedEvent",
    "FileDownloadedEvent",
    "FileInfo",
    "FileUploadedEvent",
    "InvalidPathError",
    "InvalidPayloadError",
    "InvalidUploadOptionError",
    "LocalDriver",
    "MemoryDriver",
    "NamedStorageConfig",
    "ObjectDeletedHook",
    "ObjectInfo",
    "ObjectStoredHook",
    "PreconditionFailedError",
    "QuotaExceededError",
    "StorageAzureConfig",
    "StorageBootError",
    "StorageBucketNotFoundError",
    "StorageConfig",
    "StorageConfigurationError",
    "StorageDriversConfig",
    "StorageError",
    "StorageEvents",
    "StorageEventsConfig",
    "StorageFileNotFoundError",
    "StorageGCSConfig",
    "StorageKVConfig",
    "StorageLocalConfig",
    "StorageMemoryConfig",
    "StorageModule",
    "StorageOperationConfig",
    "StoragePartialDeleteError",
    "StoragePermissionError",
    "StorageProvider",
    "StorageR2Config",
    "StorageRequestRejectedError",
    "StorageS3Config",
    "StorageUnavailableError",
    "StorageUnsupportedOperationError",
    "UploadOptions",
]
# S3Driver, R2Driver, GCSDriver and AzureDriver are exported too, but left out of __all__ so
# that a star import needs no optional SDK.


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
