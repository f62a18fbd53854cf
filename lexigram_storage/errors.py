"""The exception hierarchy of lexigram_storage.

Every error a caller can receive is a :class:`~lexigram.contracts.infra.storage.StorageError`
with a stable ``code`` (``LEX_ERR_STORE_NNN``). Messages name the backend and the key; the
original SDK exception, when there is one, is chained as ``__cause__`` and kept in ``cause``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from lexigram.contracts.infra.storage import StorageError, StorageUnsupportedOperationError

__all__ = [
    "ChecksumMismatchError",
    "InvalidPathError",
    "InvalidPayloadError",
    "InvalidUploadOptionError",
    "PreconditionFailedError",
    "QuotaExceededError",
    "StorageBootError",
    "StorageBucketNotFoundError",
    "StorageConfigurationError",
    "StorageError",
    "StorageFileNotFoundError",
    "StoragePartialDeleteError",
    "StoragePermissionError",
    "StorageRequestRejectedError",
    "StorageUnavailableError",
    "StorageUnsupportedOperationError",
    "unsupported",
]


class _BackendError(StorageError):
    """A storage error about one backend and, usually, one key.

    Message shape: ``"<backend>: <what> (key '<key>')"``; ``details`` carries ``backend`` and
    ``key`` for structured logs.
    """

    _default = "storage operation failed"

    def __init__(
        self,
        message: str | None = None,
        *,
        backend: str | None = None,
        key: str | None = None,
        hint: str | None = None,
        details: Mapping[str, Any] | None = None,
        cause: BaseException | None = None,
    ) -> None:
        text = message or self._default
        if key is not None:
            shown = key if len(key) <= 120 else f"{key[:117]}..."
            text = f"{text} (key {shown!r})"
        if backend:
            text = f"{backend}: {text}"
        merged: dict[str, Any] = {"backend": backend, "key": key}
        if details:
            merged.update(details)
        super().__init__(text, details=merged, cause=cause, hint=hint)
        self.backend = backend
        self.key = key
        if cause is not None:
            self.__cause__ = cause


class StorageFileNotFoundError(_BackendError, FileNotFoundError):
    """No object under the key (also a builtin :class:`FileNotFoundError`)."""

    _code = "LEX_ERR_STORE_002"
    _default = "object not found"

    def __str__(self) -> str:  # OSError.__str__ would hide the lexigram format
        return StorageError.__str__(self)


class InvalidPathError(_BackendError, ValueError):
    """The key (or prefix) breaks the key rule, or would escape the backend's root."""

    _code = "LEX_ERR_STORE_004"
    _default = "invalid key"


class QuotaExceededError(_BackendError):
    """The upload breaks the size limit or the allowed MIME types; nothing was stored."""

    _code = "LEX_ERR_STORE_005"
    _default = "upload rejected by the upload policy"


class ChecksumMismatchError(_BackendError):
    """The uploaded bytes do not match the expected checksum; nothing was stored."""

    _code = "LEX_ERR_STORE_006"
    _default = "checksum mismatch"


class PreconditionFailedError(_BackendError):
    """A conditional write failed (``if_none_match="*"`` and the key exists)."""

    _code = "LEX_ERR_STORE_007"
    _default = "object already exists"


class StoragePermissionError(_BackendError, PermissionError):
    """The backend refused the operation (credentials, ACL, read-only root)."""

    _code = "LEX_ERR_STORE_008"
    _default = "permission denied"

    def __str__(self) -> str:
        return StorageError.__str__(self)


class StorageBucketNotFoundError(_BackendError):
    """The bucket or container does not exist."""

    _code = "LEX_ERR_STORE_009"
    _default = "bucket not found"


class StorageUnavailableError(_BackendError):
    """The backend could not be reached in time (connection refused, timeout, 5xx)."""

    _code = "LEX_ERR_STORE_010"
    _default = "backend unavailable"


class StoragePartialDeleteError(_BackendError):
    """Some keys of a batch delete failed; ``failed`` maps key -> reason, ``deleted`` lists the rest."""

    _code = "LEX_ERR_STORE_011"
    _default = "batch delete partially failed"

    def __init__(
        self,
        failed: Mapping[str, str],
        deleted: Iterable[str],
        *,
        backend: str | None = None,
        cause: BaseException | None = None,
    ) -> None:
        self.failed = dict(failed)
        self.deleted = list(deleted)
        first = ", ".join(f"{k!r}: {v}" for k, v in list(self.failed.items())[:3])
        more = "" if len(self.failed) <= 3 else f", ... ({len(self.failed)} in all)"
        super().__init__(
            f"{len(self.failed)} of {len(self.failed) + len(self.deleted)} keys not deleted "
            f"({first}{more})",
            backend=backend,
            details={"failed": self.failed, "deleted": self.deleted},
            cause=cause,
        )


class StorageConfigurationError(_BackendError):
    """The storage configuration cannot be used (unknown driver, missing SDK, bad values)."""

    _code = "LEX_ERR_STORE_012"
    _default = "invalid storage configuration"


class StorageBootError(_BackendError):
    """A backend failed to prepare or to pass its health check while the application booted."""

    _code = "LEX_ERR_STORE_013"
    _default = "backend failed to start"


class InvalidUploadOptionError(_BackendError, ValueError):
    """An upload option breaks the metadata and header rule (``payload.py``): a metadata name
    or value, the content type or the cache control; ``details["field"]`` names it. Nothing
    was stored."""

    _code = "LEX_ERR_STORE_014"
    _default = "invalid upload option"


class StorageRequestRejectedError(_BackendError):
    """The backend refused the request as invalid (an HTTP 4xx other than 403, 404 and 412:
    ``InvalidArgument``, ``MetadataTooLarge``, ``EntityTooLarge``...). Retrying will not help;
    the backend was reachable. ``details["status"]`` and ``details["error_code"]`` carry the
    server's answer."""

    _code = "LEX_ERR_STORE_015"
    _default = "request rejected by the backend"


class InvalidPayloadError(_BackendError, TypeError):
    """The upload data cannot be stored byte for byte: a text-mode file (open it with ``"rb"``)
    or chunks that are not bytes. Nothing was stored."""

    _code = "LEX_ERR_STORE_016"
    _default = "invalid upload data"


def unsupported(backend: str, operation: str, hint: str | None = None) -> StorageUnsupportedOperationError:
    """Build the contracts' unsupported-operation error, naming the backend and the operation."""
    return StorageUnsupportedOperationError(
        f"{backend}: {operation} is not supported by this driver",
        details={"backend": backend, "operation": operation},
        hint=hint,
    )
