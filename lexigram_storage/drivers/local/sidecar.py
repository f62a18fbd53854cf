"""Metadata sidecars, for filesystems without user extended attributes (macOS, the portable
switch, some Linux filesystems).

An object's metadata record is the file ``meta/<dev>-<ino>``, named after the object's inode:
a first line ``{"size": ..., "mtime": <ns>}`` then the record. Beside it, ``meta/<dev>-<ino>.link``
is a hard link to the object's inode: the *anchor*. While the anchor exists the inode cannot be
freed, so its number cannot be reused by another file: a record can never be mistaken for the
record of a newer file, however coarse the filesystem's timestamps are.

Order of events: a writer links the anchor, then writes the record (``os.replace``), both before
the object gets its name. When an object is replaced or deleted, its sidecar is collected: the
anchor is first claimed (renamed into staging, which only one caller can do); if the inode still
has another name (a live object: the caller's view was stale) the anchor is put back, else the
record is removed and then the claimed anchor, which frees the inode. Readers never need the
anchor, so a claim never hides metadata from them.

``sweep()`` collects every anchor whose inode has no other name: those of writers killed between
linking the anchor and naming the object, and those of versions replaced in a race (a writer
cannot know which file its rename replaced when another writer renamed onto the same name in
between). It runs at ``prepare()`` and, at most once a minute, after a drop that met such a race.

Where hard links are impossible (FAT, exFAT) records have no anchor; they are recognised by
size and modification time only and removed when both still match (best effort)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from collections.abc import Callable
from typing import Literal

__all__ = ["Sidecars"]

_ANCHOR = ".link"
_SWEEP_EVERY = 60.0  # seconds between sweeps triggered by races
_NO_LINKS = {errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP,
             getattr(errno, "EOPNOTSUPP", errno.ENOTSUP)}


class Sidecars:
    """The sidecar records under *meta_dir*; *temp_name(suffix)* gives a new unique path in
    the staging directory (same filesystem) for temp files and claimed anchors."""

    def __init__(self, meta_dir: str, temp_name: Callable[[str], str]) -> None:
        self.meta_dir = meta_dir
        self._temp_name = temp_name
        self._last_sweep = -_SWEEP_EVERY

    def _base(self, st: os.stat_result) -> str:
        return f"{self.meta_dir}/{st.st_dev}-{st.st_ino}"

    def write(self, fd: int, raw: bytes, source: str | None, follow: bool = False) -> str:
        """Store *raw* as the record of the open, complete file *fd* (before it is named);
        *source* is a path that hard-links it (*follow*: a ``/proc/self/fd`` link), ``None``
        when there is none. Returns the record's base path, for ``collect`` on failure."""
        os.makedirs(self.meta_dir, exist_ok=True)
        st = os.fstat(fd)
        base = self._base(st)
        head: dict[str, int | bool] = {"size": st.st_size, "mtime": st.st_mtime_ns}
        if source is not None and self._anchor(source, follow, base, st):
            head["anchor"] = True
        record = json.dumps(head).encode() + b"\n" + raw
        tmp = self._temp_name(".meta")
        try:
            with open(tmp, "wb") as f:
                f.write(record)
            os.replace(tmp, base)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return base

    def _anchor(self, source: str, follow: bool, base: str, st: os.stat_result) -> bool:
        """Link the anchor; ``False`` where the filesystem has no hard links."""
        for _ in range(3):
            try:
                os.link(source, base + _ANCHOR, follow_symlinks=follow)
                return True
            except FileExistsError:
                # only this very inode can have this name while it lives, unless the file is
                # not an anchor at all (put there by hand): then it is replaced
                with contextlib.suppress(FileNotFoundError):
                    if os.stat(base + _ANCHOR, follow_symlinks=False).st_ino == st.st_ino:
                        return True
                    os.unlink(base + _ANCHOR)
            except OSError as exc:
                if exc.errno in _NO_LINKS:
                    return False  # a record without an anchor
                raise
        raise OSError(errno.EEXIST, "could not link the metadata anchor", base + _ANCHOR)

    def read(self, st: os.stat_result) -> bytes | None:
        """The record of the file with stat *st*, or ``None``."""
        found = self._read(self._base(st), st)
        return None if found is None else found[1]

    def _read(self, base: str, st: os.stat_result) -> tuple[dict[str, object], bytes] | None:
        try:
            with open(base, "rb") as f:
                head, _, raw = f.read().partition(b"\n")
            check = json.loads(head)
        except (OSError, ValueError):
            return None
        if (not isinstance(check, dict) or check.get("size") != st.st_size
                or check.get("mtime") != st.st_mtime_ns):
            return None  # (an anchorless leftover of a former file with the same inode number)
        return check, raw

    def drop(self, st: os.stat_result) -> None:
        """Collect the sidecar of a file that lost the name *st* was taken from (replaced or
        deleted); nothing happens while the inode still has a name."""
        base = self._base(st)
        outcome = self.collect(base)
        if outcome == "collected":
            return
        if outcome == "absent":
            self._drop_unanchored(base, st)
        # the file the caller replaced may not be the one *st* describes: sweep now and then
        now = time.monotonic()
        if now - self._last_sweep >= _SWEEP_EVERY:
            self._last_sweep = now
            self.sweep()

    def collect(self, base: str) -> Literal["collected", "live", "absent"]:
        """Remove the record *base* and its anchor if the anchor is the inode's only name
        left ("collected"); "live": the inode still has a name, "absent": no anchor to claim
        (none, or claimed by a concurrent caller, who decides)."""
        claimed = self._temp_name(".gc")
        try:
            os.rename(base + _ANCHOR, claimed)
        except FileNotFoundError:
            return "absent"
        try:
            if os.stat(claimed, follow_symlinks=False).st_nlink > 1:
                with contextlib.suppress(FileExistsError):  # still an object: put it back
                    os.link(claimed, base + _ANCHOR, follow_symlinks=False)
                return "live"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(base)  # the record first: the anchor holds the inode until then
            return "collected"
        finally:
            with contextlib.suppress(OSError):
                os.unlink(claimed)

    def _drop_unanchored(self, base: str, st: os.stat_result) -> None:
        """A record written without an anchor (no hard links, or an older version): removed
        when it matches *st* (best effort: size and mtime are no exact identity). A record
        with an anchor is only ever removed by ``collect``."""
        found = self._read(base, st)
        if found is not None and not found[0].get("anchor"):
            with contextlib.suppress(OSError):
                os.unlink(base)

    def sweep(self) -> None:
        """Collect every anchor whose inode has no other name (failed or killed writers)."""
        try:
            entries = list(os.scandir(self.meta_dir))
        except FileNotFoundError:
            return
        for entry in entries:
            if not entry.name.endswith(_ANCHOR):
                continue
            with contextlib.suppress(OSError):
                if entry.stat(follow_symlinks=False).st_nlink == 1:
                    self.collect(entry.path[:-len(_ANCHOR)])
