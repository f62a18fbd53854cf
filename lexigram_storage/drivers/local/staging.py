"""The staging area ``.lexigram/staging/``: named temp files of writes, hard links of moves,
claimed sidecar anchors and probes, all named ``<pid>-<random>-<n><suffix>`` so that no two
writers (threads, processes, drivers sharing a root) ever pick the same name, and that those
a killed process left behind can be told and removed."""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import time

from lexigram_storage.drivers.local.files import OPEN_DIR

__all__ = ["Staging"]

_STALE_AFTER = 86400.0  # seconds: a temp file this old is removed even if its writer lives
_PREFIX: tuple[int, str] = (0, "")
_counter = itertools.count()


def _process_prefix() -> str:
    """``<pid>-<random>-``: names this process's temp files (recomputed after a fork)."""
    global _PREFIX
    pid = os.getpid()
    if _PREFIX[0] != pid:
        _PREFIX = (pid, f"{pid}-{secrets.token_hex(4)}-")
    return _PREFIX[1]


def _writer_alive(name: str) -> bool:
    """Whether another live process may still be writing the staging file *name*."""
    pid_text = name.split("-", 1)[0]
    if not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():  # ours, from a former process with the same pid
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Staging:
    """The staging directory *path*, kept open: temp files are created and named relative to
    its fd (one path walk and two syscalls less per write)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None
        self._old_fds: list[int] = []  # replaced fds, maybe still in use: closed by close()

    def name(self, suffix: str) -> str:
        """A new name in staging that no other writer (thread, process, driver) uses."""
        return f"{_process_prefix()}{next(_counter)}{suffix}"

    def new_path(self, suffix: str) -> str:
        """The path of a new ``name``."""
        return f"{self.path}/{self.name(suffix)}"

    def sweep(self) -> None:
        """Create the directory; remove the temp files of dead writers (and any a day old)."""
        os.makedirs(self.path, exist_ok=True)
        now = time.time()
        with os.scandir(self.path) as entries:
            for entry in entries:
                # temp files of this process are in use; others are left by dead writers
                if entry.name.startswith(_process_prefix()):
                    continue
                with contextlib.suppress(OSError):
                    if not _writer_alive(entry.name) or now - entry.stat().st_mtime > _STALE_AFTER:
                        os.unlink(entry.path)

    def open(self) -> None:
        """Open the directory unless it is open."""
        if self._fd is None:
            self._fd = os.open(self.path, OPEN_DIR)

    def fd(self, renew: bool = False) -> int:
        """The open staging directory; *renew* after it was removed behind our back (the old
        fd may still be in use by another thread: it is closed by ``close()``)."""
        fd = self._fd
        if fd is None or renew:
            os.makedirs(self.path, exist_ok=True)
            self._fd = os.open(self.path, OPEN_DIR)
            if fd is not None:
                self._old_fds.append(fd)
            fd = self._fd
        return fd

    def close(self) -> None:
        fds, self._old_fds = self._old_fds, []
        if self._fd is not None:
            fds.append(self._fd)
            self._fd = None
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
