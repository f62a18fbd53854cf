"""Result types returned by every driver."""

from __future__ import annotations

from dataclasses import dataclass, field

from lexigram.contracts.infra.storage import FileInfo

__all__ = ["DirListing", "ObjectInfo"]


@dataclass(frozen=True)
class ObjectInfo(FileInfo):
    """A :class:`FileInfo` that also carries the object's ``Cache-Control`` value.

    ``etag`` is the hex SHA-256 of the content; ``metadata`` is a fresh dict on every call
    (lower-cased keys, str values), never the driver's stored state.
    """

    cache_control: str | None = None


@dataclass(frozen=True)
class DirListing:
    """One level of a listing: the objects directly under a prefix and the sub-prefixes."""

    files: list[ObjectInfo] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)
