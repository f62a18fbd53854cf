"""lexigram_storage: blob storage for the lexigram framework.

One API (``BlobStoreProtocol`` plus copy/move/batch operations) over memory, local disk,
Amazon S3, Cloudflare R2, Google Cloud Storage and Azure Blob, bound into the DI container by
``StorageModule``, with domain events and a conformance suite every driver passes.
"""

from lexigram.contracts.infra.storage import BlobStoreProtocol, FileInfo, UploadOptions

from lexigram_storage.config import (
    EncryptionConfig,
    NamedStorageConfig,
    StorageAzureConfig,
    StorageConfig,
    StorageDriversConfig,
    StorageGCSConfig,
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
    PreconditionFailedError,
    QuotaExceededError,
    StorageBootError,
    StorageBucketNotFoundError,
    StorageConfigurationError,
    StorageError,
    StorageFileNotFoundError,
    StoragePartialDeleteError,
    StoragePermissionError,
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
from lexigram_storage.module import StorageModule
from lexigram_storage.provider import StorageProvider
from lexigram_storage.registry import DriverContext, DriverRegistry

__all__ = [
    "HOOK_OBJECT_DELETED",
    "HOOK_OBJECT_STORED",
    "BaseDriver",
    "BlobStoreProtocol",
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
    "StorageFileNotFoundError",
    "StorageGCSConfig",
    "StorageLocalConfig",
    "StorageMemoryConfig",
    "StorageModule",
    "StorageOperationConfig",
    "StoragePartialDeleteError",
    "StoragePermissionError",
    "StorageProvider",
    "StorageR2Config",
    "StorageS3Config",
    "StorageUnavailableError",
    "StorageUnsupportedOperationError",
    "UploadOptions",
]
