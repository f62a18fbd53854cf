"""What every confinement strategy of the local driver shares: its description and its error."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


class Escape(Exception):
    """A path leads outside the root, into the driver's own area, or (portable walk) through a
    symlink; or where an open file lies cannot be told. The operation is refused."""


@dataclass(frozen=True, slots=True)
class Platform:
    """How a local driver confines its paths and which kernel features it may use.

    ``fd_path`` is set where the kernel says where an open file lies: the driver opens a key's
    path (following symlinks) and refuses the fd unless that real path is inside the root. It
    is ``None`` for the portable walk, which opens one segment at a time with ``O_NOFOLLOW``
    and refuses every symlink."""

    name: str
    fd_path: Callable[[int], str] | None
    # what may be tried (where the kernel and the filesystem have it: ../fastpath.py, ../meta.py)
    tmpfile: bool = False  # O_TMPFILE: unnamed temp files, linked by /proc/self/fd/N
    xattrs: bool = False  # user extended attributes (os.setxattr) may be tried
    cached_reads: bool = False  # openat2(RESOLVE_CACHED) + preadv2(RWF_NOWAIT) on the loop
