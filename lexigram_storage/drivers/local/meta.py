"""An object's metadata record, and where it is kept.

The record (content type, user metadata, cache control, SHA-256 etag, creation time) is given
to the temp file before it gets its name, so an object never exists without it. It is kept in
the ``user.lexigram`` extended attribute, else -- where the filesystem has no user xattrs
(macOS, the portable switch, some Linux filesystems), or for a record too big for one -- in a
sidecar file under ``.lexigram/meta/`` (``sidecar.py``). Temp files are then always named
ones: a sidecar's anchor must never be the only name of a file being written."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from lexigram_storage.drivers.local.sidecar import Sidecars
from lexigram_storage.models import ObjectInfo
from lexigram_storage.payload import guess_content_type

__all__ = ["Meta", "MetaStore", "object_info"]

_XATTR = "user.lexigram"
_IN_SIDECAR = b'{"sidecar":1}'  # the xattr of a record too big for one: it is in the sidecar
_XATTR_UNSUPPORTED = {errno.ENOTSUP, getattr(errno, "EOPNOTSUPP", errno.ENOTSUP)}

# The common record (no user metadata, no cache control) is packed: creation time (big-endian
# double, so the first byte is never the "{" of the JSON form), raw SHA-256, content type. For
# "application/octet-stream" that is 64 bytes, which ext4 (256-byte inodes) keeps inside the
# inode; the 130-byte JSON form costs every object an extra 4 KiB block and ~10 us to write.
_PACKED = struct.Struct(">d32s")


@dataclass(slots=True)
class Meta:
    content_type: str
    metadata: dict[str, str]
    cache_control: str | None
    etag: str | None
    created: float | None

    def encode(self) -> bytes:
        if (not self.metadata and self.cache_control is None and self.created is not None
                and self.etag is not None and len(self.etag) == 64):
            with contextlib.suppress(ValueError):  # (an etag that is not hex: JSON)
                return (_PACKED.pack(self.created, bytes.fromhex(self.etag))
                        + self.content_type.encode())
        record: dict[str, Any] = {"ct": self.content_type, "etag": self.etag}
        if self.metadata:
            record["md"] = self.metadata
        if self.cache_control is not None:
            record["cc"] = self.cache_control
        if self.created is not None:
            record["t"] = self.created
        return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def decode(cls, raw: bytes | None, key: str) -> Meta:
        if raw and raw[:1] != b"{" and len(raw) >= _PACKED.size:
            with contextlib.suppress(ValueError):
                created, digest = _PACKED.unpack_from(raw)
                return cls(raw[_PACKED.size:].decode(), {}, None, digest.hex(), created)
        if raw:
            try:
                record = json.loads(raw)
                return cls(str(record["ct"]), {str(k): str(v) for k, v in record.get("md", {}).items()},
                           record.get("cc"), record.get("etag"), record.get("t"))
            except (ValueError, KeyError, TypeError, AttributeError):
                pass
        return cls(guess_content_type(key), {}, None, None, None)


def object_info(key: str, st: os.stat_result, meta: Meta) -> ObjectInfo:
    modified = datetime.fromtimestamp(st.st_mtime, UTC)
    return ObjectInfo(
        path=key,
        size=st.st_size,
        content_type=meta.content_type,
        last_modified=modified,
        created_at=datetime.fromtimestamp(meta.created, UTC) if meta.created else modified,
        etag=meta.etag,
        metadata=dict(meta.metadata),
        cache_control=meta.cache_control,
    )


class MetaStore:
    """The records of one root: in xattrs (where *try_xattrs* and the filesystem has them) or
    in *sidecars*.

    ``xattrs`` is ``True`` (xattrs work), ``False`` (sidecars: the platform has no xattrs, or
    the filesystem refused one) or ``None`` (not known yet: ``probe`` tells, at prepare)."""

    def __init__(self, sidecars: Sidecars, try_xattrs: bool) -> None:
        self.sidecars = sidecars
        self.xattrs: bool | None = None if try_xattrs else False

    def probe(self, fd: int) -> None:
        """Try an xattr on the scratch file *fd* unless that is known; sidecars if it fails."""
        if self.xattrs is None:
            try:
                os.setxattr(fd, _XATTR, b"{}")
                self.xattrs = True
                return
            except (OSError, AttributeError):  # (macOS: Python has no os.setxattr)
                pass
        if not self.xattrs:
            self.use_sidecars()

    def use_sidecars(self) -> None:
        """Records go to sidecars from now on."""
        self.xattrs = False
        os.makedirs(self.sidecars.meta_dir, exist_ok=True)

    def sweep(self) -> None:
        """Collect the sidecars of writers that failed or were killed (at prepare)."""
        if self.xattrs is False:
            self.sidecars.sweep()

    def store(self, fd: int, path: str | None, meta: Meta) -> Callable[[], object] | None:
        """Give the complete temp file *fd* (named *path*, ``None``: unnamed) its record,
        before it gets its name. Returns what removes the record again if the file is
        discarded uncommitted (``None``: the record goes with the file)."""
        raw = meta.encode()
        if self.xattrs:
            try:
                os.setxattr(fd, _XATTR, raw)
                return None
            except OSError as exc:
                if exc.errno in _XATTR_UNSUPPORTED:
                    self.use_sidecars()
                elif exc.errno not in (errno.E2BIG, errno.ENOSPC, errno.ERANGE):
                    raise
                else:  # too big for an attribute: a sidecar, and a marker pointing to it
                    self.sidecars.write(fd, raw, None)  # (the marker is its identity)
                    os.setxattr(fd, _XATTR, _IN_SIDECAR)
                    return None
        # the anchor is linked from the temp file's name (an unnamed one only when xattrs
        # turned out unsupported after it was opened)
        if path is not None:
            base = self.sidecars.write(fd, raw, path)
        else:
            base = self.sidecars.write(fd, raw, f"/proc/self/fd/{fd}", follow=True)
        return lambda: self.sidecars.collect(base)

    def load(self, fd: int, st: os.stat_result, key: str) -> Meta:
        """The record of the open object *fd* (stat *st*); a default one where it has none."""
        raw: bytes | None = None
        if self.xattrs is not False:
            try:
                raw = os.getxattr(fd, _XATTR)
            except OSError:
                raw = None
            if raw == _IN_SIDECAR:
                raw = self.sidecars.read(st)
        if raw is None and self.xattrs is False:
            raw = self.sidecars.read(st)
        return Meta.decode(raw, key)

    def drop(self, st: os.stat_result | None) -> None:
        """After the file *st* lost its name: collect its sidecar unless the inode still has
        another name (whatever happened since *st* was taken: see ``sidecar.py``)."""
        if st is not None and self.xattrs is False:
            with contextlib.suppress(OSError):
                self.sidecars.drop(st)
