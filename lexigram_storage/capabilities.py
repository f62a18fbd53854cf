"""What a store can do beyond the API every store has.

Each driver declares its set in ``capabilities`` (``BaseDriver`` holds the default: every
capability, which every built-in driver has except the memory driver's presigned URLs; a local
driver without a ``signing_key`` drops the presigned URLs from its own set). The conformance suite reads it to decide
what to check:

- an *operation* the store lacks (``PRESIGN_GET``, ``PRESIGN_PUT``, ``CREATE_ONLY``,
  ``RANGED_READ``) must be refused with ``StorageUnsupportedOperationError``, never half done;
- a *guarantee* the store lacks (``LONG_SEGMENTS``, ``BYTE_ORDER_LISTING``, ``RACE_SAFE_ETAG``)
  skips its checks; without ``CONCURRENT_LARGE_WRITES`` the suite checks the documented
  alternative (a loser fails with ``PreconditionFailedError`` and stores nothing).
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Capability"]


class Capability(StrEnum):
    """One capability of a store (see the module docstring for what its absence means)."""

    #: ``get_presigned_url(path, method="GET")`` returns a URL granting a download
    PRESIGN_GET = "presign_get"
    #: ``get_presigned_url(path, method="PUT")`` returns a URL granting an upload
    PRESIGN_PUT = "presign_put"
    #: ``upload(..., if_none_match="*")`` stores only where no object is, atomically
    CREATE_ONLY = "create_only"
    #: ``stream(path, offset=..., length=...)`` reads a byte range
    RANGED_READ = "ranged_read"
    #: a key segment (between slashes) may be longer than 255 bytes, up to the 1024-byte key
    LONG_SEGMENTS = "long_segments"
    #: ``list()`` yields keys in byte order (S3's order: ``a b`` before ``a/a``)
    BYTE_ORDER_LISTING = "byte_order_listing"
    #: the etag stays the SHA-256 of the stored content when large uploads (above the
    #: multipart threshold) to one key race
    RACE_SAFE_ETAG = "race_safe_etag"
    #: large uploads racing to one key all succeed and the last commit wins; without it, an
    #: upload whose staged parts another upload's commit discarded (Azure block blobs) fails
    #: with ``PreconditionFailedError`` and stores nothing
    CONCURRENT_LARGE_WRITES = "concurrent_large_writes"
