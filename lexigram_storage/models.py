"""Result types returned by every driver."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from lexigram.contracts.infra.storage import FileInfo

__all__ = ["DirListing", "ObjectInfo"]


@dataclass(frozen=True, init=False)
class ObjectInfo(FileInfo):
    """A :class:`FileInfo` that also carries the object's ``Cache-Control`` value.

    ``etag`` is the hex SHA-256 of the content; ``metadata`` is a fresh dict on every call
    (lower-cased keys, str values), never the driver's stored state.
    """

    cache_control: str | None = None

    def __init__(
        self,
        path: str,
        size: int,
        content_type: str,
        last_modified: datetime,
        created_at: datetime | None = None,
        etag: str | None = None,
        metadata: dict[str, Any] | None = None,
        cache_control: str | None = None,
    ) -> None:
        # Same fields as the generated frozen __init__, which sets each one through
        # object.__setattr__ and costs 3x more: listings build one of these per object.
        self.__dict__.update(path=path, size=size, content_type=content_type,
                             last_modified=last_modified, created_at=created_at, etag=etag,
                             metadata=metadata, cache_control=cache_control)


@dataclass(frozen=True)
class DirListing:
    """One level of a listing: the objects directly under a prefix and the sub-prefixes."""

    files: list[ObjectInfo] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)
